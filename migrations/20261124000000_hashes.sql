-- The hash service: one row per accepted `POST /hash`, and one row of running stats.
--
-- The password itself is never stored: only its SHA-512, computed when the request arrived,
-- which `GET /hash/{id}` reveals from `ready_at_ms` on.

CREATE TABLE hashes (
    -- 1, 2, 3 … in the order requests were accepted; AUTOINCREMENT so an id is never reused,
    -- even if rows are deleted by hand.
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- base64 (standard alphabet, padded) of SHA-512(password).
    sha512         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ready_at_ms    INTEGER NOT NULL,
    -- Wall time of the request's handling, from arrival until this row was written.
    handling_ns    INTEGER NOT NULL CHECK (handling_ns >= 0),
    CHECK (ready_at_ms >= received_at_ms)
) STRICT;

-- Exactly one row: accepted `POST /hash` requests since the database was created, and the
-- sum of their handling times. Kept by the trigger below, inside the statement that inserts
-- the hashes, so the stats can never disagree with the rows.
CREATE TABLE hash_stats (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    total       INTEGER NOT NULL CHECK (total >= 0),
    handling_ns INTEGER NOT NULL CHECK (handling_ns >= 0)
) STRICT;

INSERT INTO hash_stats (id, total, handling_ns) VALUES (1, 0, 0);

CREATE TRIGGER hashes_count_in_stats AFTER INSERT ON hashes
BEGIN
    UPDATE hash_stats
    SET total = total + 1, handling_ns = handling_ns + NEW.handling_ns
    WHERE id = 1;
END;
