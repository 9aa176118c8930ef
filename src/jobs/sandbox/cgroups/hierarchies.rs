//! Where the cgroup trees are, and warden's place in them: the v2 tree and the v1
//! hierarchies from `/proc/self/mountinfo`, warden's own cgroup in each from
//! `/proc/self/cgroup`, and the directories of its job cgroups there.

use std::fs;
use std::path::{Path, PathBuf};

use super::{make_dir, write};

/// A mount of `/proc/self/mountinfo`: its root within its tree, where it is mounted, its
/// type and its options.
struct Mount<'a> {
    root: &'a str,
    point: String,
    kind: &'a str,
    options: &'a str,
}

fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let kind = after.next()?;
        let options = after.nth(1)?;
        Some(Mount {
            root: fields.get(3)?,
            point: unescape(fields.get(4)?),
            kind,
            options,
        })
    })
}

/// A mount point as `mountinfo` writes it: space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|octal| u8::from_str_radix(octal, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The directory of `path` (a cgroup's path in its tree) under `mount`.
fn dir_under(mount: &Mount<'_>, path: &str) -> PathBuf {
    let inside = path.strip_prefix(mount.root).unwrap_or(path);
    Path::new(&mount.point).join(inside.trim_start_matches('/'))
}

/// warden's own directory in the v2 tree.
pub(super) fn own_v2_dir(mountinfo: &str, memberships: &str) -> Option<PathBuf> {
    let path = memberships
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?;
    let mount = mounts(mountinfo).find(|mount| mount.kind == "cgroup2")?;
    Some(dir_under(&mount, path))
}

/// Enables `controller` for the job cgroups under `parent` in the v2 tree, if the host
/// lets warden: it must be available to warden's own cgroup `own`. A cgroup with processes
/// of its own cannot pass controllers on (except the root), so warden first moves itself
/// into a leaf beside the jobs, as systemd's `Delegate=yes` expects.
pub(super) fn enable_v2(own: &Path, parent: &Path, controller: &str) -> bool {
    let has = |file: &Path| {
        fs::read_to_string(file)
            .map(|names| names.split_whitespace().any(|name| name == controller))
            .unwrap_or(false)
    };
    if !has(&own.join("cgroup.controllers")) {
        return false;
    }
    let enable = |dir: &Path| {
        write(
            &dir.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        )
    };
    if !has(&own.join("cgroup.subtree_control")) && enable(own).is_err() {
        let leaf = own.join("warden-supervisor");
        let moved = make_dir(&leaf)
            .and_then(|()| write(&leaf.join("cgroup.procs"), &std::process::id().to_string()));
        if moved.is_err() || enable(own).is_err() {
            return false;
        }
    }
    has(&parent.join("cgroup.subtree_control")) || enable(parent).is_ok()
}

/// This warden's directory of job cgroups in the v1 hierarchy of `controller`, made if
/// need be; `None` if there is no such hierarchy or warden cannot write it.
pub(super) fn v1_parent(
    mountinfo: &str,
    memberships: &str,
    controller: &str,
    instance: &str,
) -> Option<PathBuf> {
    let has = |list: &str| list.split(',').any(|name| name == controller);
    let mount = mounts(mountinfo).find(|mount| mount.kind == "cgroup" && has(mount.options))?;
    let path = memberships.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        has(fields.next()?).then_some(())?;
        fields.next()
    })?;
    let parent = dir_under(&mount, path).join(format!("warden-{instance}"));
    make_dir(&parent).ok()?;
    Some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 /inner /mnt/my\\040pids rw - cgroup cgroup rw,pids";

    const CGROUP: &str = "\
5:pids:/inner/box
4:memory:/process_api/7
2:cpu,cpuacct:/
0::/system.slice/warden.service";

    #[test]
    fn a_hybrid_hosts_trees_are_found_where_warden_is_in_them() {
        assert_eq!(
            own_v2_dir(MOUNTINFO, CGROUP),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/warden.service"
            ))
        );
        let mounts: Vec<_> = mounts(MOUNTINFO).collect();
        let pids = mounts
            .iter()
            .find(|mount| mount.options.contains("pids"))
            .unwrap();
        assert_eq!(pids.point, "/mnt/my pids");
        assert_eq!(
            dir_under(pids, "/inner/box"),
            PathBuf::from("/mnt/my pids/box")
        );
        let cpu = mounts
            .iter()
            .find(|mount| mount.options.contains("cpu,"))
            .unwrap();
        assert_eq!(
            dir_under(cpu, "/"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn no_v2_tree_is_no_containment() {
        let v1_only = MOUNTINFO
            .lines()
            .filter(|line| !line.contains("cgroup2"))
            .collect::<Vec<_>>();
        assert_eq!(own_v2_dir(&v1_only.join("\n"), CGROUP), None);
    }
}
