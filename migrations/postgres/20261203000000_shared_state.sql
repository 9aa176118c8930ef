-- The state many warden nodes share on one Postgres: the hash service and the registry.
-- (Jobs stay in each node's own SQLite file: a job runs on the machine that started it.)
--
-- Every time here is milliseconds since the Unix epoch by the database's clock
-- (`warden_now_ms()`), never a node's: nodes whose clocks disagree still agree on when a hash
-- is ready and who is live.

-- The database's clock. `frozen_ms` is NULL, and stays NULL in production: time is Postgres's
-- own. Tests set it to drive the clock by hand (Postgres's own cannot be), as a manual clock
-- drives a node's on SQLite; while it is set, time stands still at it for every node.
CREATE TABLE warden_clock (
    id        integer PRIMARY KEY CHECK (id = 1),
    frozen_ms bigint
);
INSERT INTO warden_clock (id, frozen_ms) VALUES (1, NULL);

-- The statement's start by the database's clock: one instant for a whole statement, so a
-- batch of heartbeats or hashes shares one "now", as it does on SQLite.
CREATE FUNCTION warden_now_ms() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(frozen_ms, (extract(epoch FROM statement_timestamp()) * 1000)::bigint)
    FROM warden_clock WHERE id = 1
$$;

-- Hashes: one row per accepted `POST /hash`. The password itself is never stored.
-- Ids come from this sequence, drawn in request order within a group commit: unique and
-- increasing across nodes, but a failed commit leaves a gap, and ids are in commit order only
-- per node (two nodes' commits interleave).
CREATE SEQUENCE hash_ids AS bigint;

CREATE TABLE hashes (
    id             bigint PRIMARY KEY,
    -- base64 (standard alphabet, padded) of SHA-512(password).
    sha512         text   NOT NULL,
    received_at_ms bigint NOT NULL,
    ready_at_ms    bigint NOT NULL,
    -- Wall time of the request's handling on its node, from arrival until the row was written.
    handling_ns    bigint NOT NULL CHECK (handling_ns >= 0),
    CHECK (ready_at_ms >= received_at_ms)
);

-- The stats, spread over a few rows summed on read: each node adds its commits to the slot it
-- drew at start, inside the statement that inserts the hashes, so the total is exact under
-- any number of nodes while no single row serialises them all.
CREATE TABLE hash_stats (
    slot        smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 63),
    total       bigint   NOT NULL CHECK (total >= 0),
    handling_ns bigint   NOT NULL CHECK (handling_ns >= 0)
);

-- The registry: one row per registered instance. Names compare byte by byte ("C"), so every
-- listing is in the same order as on SQLite whatever the database's locale.
CREATE TABLE instances (
    group_name    text COLLATE "C" NOT NULL,
    id            text COLLATE "C" NOT NULL,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    -- The client's meta, a JSON object as compact text; NULL while it has sent none, which
    -- reads as `{}` (so one upsert can tell "keep the meta" from "the meta is `{}`").
    meta          text,
    PRIMARY KEY (group_name, id),
    CHECK (updated_at_ms >= created_at_ms)
);
-- No index on the heartbeat time, as on SQLite: it would make every heartbeat an update of
-- two indexes (and never a HOT update); the purge walks the primary key in chunks instead.

-- One row: the registry's start-up grace, shared by every node. `alive_at_ms` is the last
-- moment any node was known to be running (each records it every third of a TTL). A node that
-- starts when no node has been alive for a TTL starts the registry again: it sets
-- `started_at_ms`, and `previous_alive_ms` to when the registry was last alive, and for one TTL
-- from then every node keeps live what was live before the outage. A node that joins a running
-- registry changes nothing here.
CREATE TABLE registry_grace (
    id                integer PRIMARY KEY CHECK (id = 1),
    alive_at_ms       bigint  NOT NULL,
    started_at_ms     bigint  NOT NULL,
    previous_alive_ms bigint
);
INSERT INTO registry_grace (id, alive_at_ms, started_at_ms, previous_alive_ms) VALUES (1, 0, 0, NULL);

-- The liveness cutoff at `now_ms` for a TTL of `ttl_ms`: an instance is live iff its
-- `updated_at_ms` is greater. During the grace, whatever was live when the registry was last
-- alive stays live.
CREATE FUNCTION registry_live_after(now_ms bigint, ttl_ms bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE
               WHEN previous_alive_ms IS NOT NULL AND now_ms < started_at_ms + ttl_ms
                   THEN least(now_ms - ttl_ms, previous_alive_ms - ttl_ms)
               ELSE now_ms - ttl_ms
           END
    FROM registry_grace WHERE id = 1
$$;
