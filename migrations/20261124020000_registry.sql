-- The discovery registry: one row per registered instance of a client application.
--
-- An instance is live while `now - updated_at_ms < TTL`; every read applies that rule in its
-- query, so expiry is exact whatever the purge's timing. The purge deletes expired rows.

CREATE TABLE instances (
    -- `group` is an SQL keyword; `group_name` reads naturally in sqlite3.
    group_name    TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    -- The first heartbeat of this registration; fixed while the instance lives.
    created_at_ms INTEGER NOT NULL,
    -- The last heartbeat; strictly increases with each one.
    updated_at_ms INTEGER NOT NULL,
    -- The client's meta, a JSON object as text.
    meta          TEXT    NOT NULL DEFAULT '{}',
    PRIMARY KEY (group_name, id),
    CHECK (updated_at_ms >= created_at_ms)
) STRICT, WITHOUT ROWID;

-- No secondary index, on purpose: each would add a randomly placed page to every heartbeat's
-- commit (measured: two indexes made a batch of 30 random heartbeats 2.5x slower). Every
-- read goes by the primary key: `GET /{group}` and `GET /{group}/{id}` by prefix, `GET /`
-- by one scan in key order (already grouped), and the purge walks the key range in chunks.

-- Exactly one row: the last moment the registry was known to be running (each purge and a
-- clean shutdown record it). After an outage, instances that were live then get one TTL of
-- grace from the restart, so an outage of warden does not evict every client at once, while
-- instances that had already expired stay expired.
CREATE TABLE registry_alive (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at_ms INTEGER NOT NULL
) STRICT;
