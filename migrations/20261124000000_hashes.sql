-- The hash service: one row per accepted `POST /hash`, and one row of running stats.
--
-- The password itself is never stored: only its SHA-512, computed when the request arrived,
-- which `GET /hash/{id}` reveals from `ready_at_ms` on.

CREATE TABLE hashes (
    -- 1, 2, 3 … in the order requests were accepted; assigned by the writer, never reused.
    id             INTEGER PRIMARY KEY,
    -- base64 (standard alphabet, padded) of SHA-512(password).
    sha512         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ready_at_ms    INTEGER NOT NULL,
    CHECK (ready_at_ms >= received_at_ms)
) STRICT;

-- Exactly one row. `total` counts accepted `POST /hash` requests since the database was
-- created (it is also the highest id handed out); `handling_ns` sums their handling times.
CREATE TABLE hash_stats (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    total       INTEGER NOT NULL CHECK (total >= 0),
    handling_ns INTEGER NOT NULL CHECK (handling_ns >= 0)
) STRICT;

INSERT INTO hash_stats (id, total, handling_ns) VALUES (1, 0, 0);
