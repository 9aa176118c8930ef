//! What a job request may ask of its process's surroundings: environment variables and a
//! working directory. Checked when the job is queued, so a refused request is a 400 and
//! nothing is queued.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The most variables a request may set.
pub const MAX_VARIABLES: usize = 256;
/// The longest variable name.
const MAX_NAME: usize = 256;

/// Variables a request may not set: warden's own (its settings, and the marker of a job's
/// processes) and those that change how programs are loaded or linked, which would make
/// even a trusted program do what the request says (glibc ignores them in setuid programs
/// for the same reason).
const REFUSED_PREFIXES: [&str; 3] = ["WARDEN_", "LD_", "DYLD_"];
const REFUSED_NAMES: [&str; 11] = [
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "GLIBC_TUNABLES",
];

/// 400 unless every variable of `env` may be set for a job.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    let bad = |message: String| Err(Error::BadRequest(message));
    if env.len() > MAX_VARIABLES {
        return bad(format!("`env` may set at most {MAX_VARIABLES} variables"));
    }
    for (name, value) in env {
        let mut chars = name.chars();
        let well_formed = chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|char| char.is_ascii_alphanumeric() || char == '_')
            && name.len() <= MAX_NAME;
        if !well_formed {
            return bad(format!(
                "`env` name {:?} is not a variable name: letters, digits and `_`, not starting \
                 with a digit, at most {MAX_NAME} characters",
                truncated(name)
            ));
        }
        let upper = name.to_ascii_uppercase();
        if REFUSED_PREFIXES
            .iter()
            .any(|prefix| upper.starts_with(prefix))
            || REFUSED_NAMES.contains(&upper.as_str())
        {
            return bad(format!(
                "`env` may not set {name}: warden's own variables and those that change how \
                 programs are loaded are refused"
            ));
        }
        if value.contains('\0') {
            return bad(format!("`env` value of {name} must not contain NUL bytes"));
        }
    }
    Ok(())
}

/// 400 unless `cwd` is an absolute path to an existing directory outside `data_dir` (both
/// compared with every symlink resolved). The lookup runs off the runtime's threads: a slow
/// or hung filesystem holds up this request only.
pub async fn check_cwd(cwd: &str, data_dir: &Path) -> Result<()> {
    let bad = |message: String| Err(Error::BadRequest(message));
    if !cwd.starts_with('/') || cwd.contains('\0') || cwd.len() > 4096 {
        return bad("`cwd` must be an absolute path of at most 4096 bytes, without NUL".to_owned());
    }
    let resolved = match tokio::fs::canonicalize(cwd).await {
        Ok(resolved)
            if tokio::fs::metadata(&resolved)
                .await
                .is_ok_and(|meta| meta.is_dir()) =>
        {
            resolved
        }
        Ok(_) => return bad(format!("`cwd` {:?} is not a directory", truncated(cwd))),
        Err(error) => {
            return bad(format!(
                "`cwd` {:?} cannot be used: {error}",
                truncated(cwd)
            ));
        }
    };
    if resolved.starts_with(data_dir) {
        return bad(format!(
            "`cwd` {:?} is inside warden's data dir, which jobs may not reach",
            truncated(cwd)
        ));
    }
    Ok(())
}

/// At most the first 64 characters of `text`, for an error message.
fn truncated(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(at, _)| &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn ordinary_variables_pass_and_loader_and_warden_ones_do_not() {
        check_env(&env(&[("GREETING", "hi"), ("_x1", ""), ("PATH", "/bin")])).unwrap();
        for name in [
            "LD_PRELOAD",
            "ld_library_path",
            "WARDEN_TOKEN",
            "WARDEN_JOB",
            "GCONV_PATH",
        ] {
            assert!(check_env(&env(&[(name, "x")])).is_err(), "{name}");
        }
        for name in ["", "1A", "A-B", "A=B", "Ä"] {
            assert!(check_env(&env(&[(name, "x")])).is_err(), "{name:?}");
        }
        assert!(check_env(&env(&[("A", "a\0b")])).is_err());
    }

    #[tokio::test]
    async fn a_working_directory_must_exist_outside_the_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("pki")).unwrap();
        let data = std::fs::canonicalize(&data).unwrap();
        check_cwd(root.path().to_str().unwrap(), &data)
            .await
            .unwrap();
        for cwd in [
            data.join("pki").to_str().unwrap().to_owned(),
            format!("{}/../data", data.join("pki").display()),
            "relative".to_owned(),
            root.path().join("missing").to_str().unwrap().to_owned(),
        ] {
            assert!(check_cwd(&cwd, &data).await.is_err(), "{cwd}");
        }
    }
}
