-- The job runner: jobs, their output, and the key that signs bearer tokens.

CREATE TABLE jobs (
    -- Submission order: the queue runs jobs in this order.
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The job's public id, a UUID.
    id                 TEXT    NOT NULL UNIQUE,
    name               TEXT,
    command            TEXT    NOT NULL,
    -- The arguments, a JSON array of strings.
    args               TEXT    NOT NULL DEFAULT '[]',
    -- The user who submitted it.
    owner              TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'stopped', 'interrupted')),
    exit_code          INTEGER,
    -- The signal that ended the process, if one did.
    signal             INTEGER,
    -- Why the job failed or was cut short, in words.
    error              TEXT,
    created_at_ms      INTEGER NOT NULL,
    started_at_ms      INTEGER,
    finished_at_ms     INTEGER,
    -- Bytes of output committed so far.
    output_bytes       INTEGER NOT NULL DEFAULT 0,
    -- 1 once output past --job-output-limit was dropped.
    output_truncated   INTEGER NOT NULL DEFAULT 0 CHECK (output_truncated IN (0, 1)),
    stop_requested_at_ms INTEGER,
    -- The running process (its group has the same id), and what makes it recognisable after
    -- a crash of warden: the kernel's boot id and the process's start time in clock ticks.
    pid                INTEGER,
    pid_boot_id        TEXT,
    pid_start_ticks    INTEGER
) STRICT;

-- Claiming the next queued job; listing a user's jobs newest first.
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_owner ON jobs (owner, seq);

-- A job's output as captured, stdout and stderr interleaved in arrival order, in chunks.
CREATE TABLE job_output (
    job_seq      INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    -- The chunk's first byte, as an offset into the job's whole output.
    start_offset INTEGER NOT NULL,
    bytes        BLOB    NOT NULL,
    PRIMARY KEY (job_seq, start_offset)
) STRICT;

-- Exactly one row: the HMAC key of bearer tokens, made on first start.
CREATE TABLE token_signing_key (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    secret        BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
