-- Jobs are contained: each one has its own environment, working directory and limits, and
-- the queue takes turns across owners.

-- What the request asked of the job's process, as it runs: its extra environment (a JSON
-- object of strings), its working directory, and its limits (NULL: none). `cpu_limit` is a
-- share of one core (0.5 is half a core).
ALTER TABLE jobs ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN cwd TEXT;
ALTER TABLE jobs ADD COLUMN memory_limit_bytes INTEGER;
ALTER TABLE jobs ADD COLUMN cpu_limit REAL;
ALTER TABLE jobs ADD COLUMN pids_limit INTEGER;
ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER;

-- One row per owner with queued jobs: how many it has queued (for --max-queued-per-user) and
-- its turn, which moves past every other owner's each time one of its jobs starts, and is
-- the last one when the owner joins the queue. Workers take the owner with the lowest turn
-- next, so owners take turns (round-robin) while jobs of one owner run in submission order. Kept by the triggers below, so no path that changes a
-- job's status (the API, recovery, or a hand edit in `sqlite3`) can put it out of step; the
-- row goes when its owner has nothing queued, so the table holds only waiting owners.
CREATE TABLE job_turns (
    owner  TEXT    PRIMARY KEY,
    queued INTEGER NOT NULL CHECK (queued > 0),
    turn   INTEGER NOT NULL
) STRICT;

CREATE INDEX job_turns_next ON job_turns (turn, owner);

-- The next queued job of an owner, without walking its finished ones.
CREATE INDEX jobs_queued_by_owner ON jobs (owner, seq) WHERE status = 'queued';

-- (Each trigger deletes an owner's last count before it lowers a larger one, so that one
-- change is never counted twice.)

-- An owner joining the queue (new, or back with nothing queued since its last start) takes
-- its turn after every owner already waiting has had one: coming back with one job at a
-- time never jumps a queue.
CREATE TRIGGER job_turns_count_a_queued_job AFTER INSERT ON jobs WHEN NEW.status = 'queued'
BEGIN
    INSERT INTO job_turns (owner, queued, turn)
    VALUES (NEW.owner, 1, (SELECT coalesce(max(turn), 0) + 1 FROM job_turns))
    ON CONFLICT (owner) DO UPDATE SET queued = queued + 1;
END;

CREATE TRIGGER job_turns_count_a_job_leaving_the_queue
AFTER UPDATE OF status ON jobs WHEN OLD.status = 'queued' AND NEW.status <> 'queued'
BEGIN
    DELETE FROM job_turns WHERE owner = OLD.owner AND queued = 1;
    UPDATE job_turns
    SET queued = queued - 1,
        turn = CASE WHEN NEW.status = 'running'
                    THEN (SELECT max(turn) FROM job_turns) + 1
                    ELSE turn END
    WHERE owner = OLD.owner;
END;

CREATE TRIGGER job_turns_count_a_job_back_in_the_queue
AFTER UPDATE OF status ON jobs WHEN OLD.status <> 'queued' AND NEW.status = 'queued'
BEGIN
    INSERT INTO job_turns (owner, queued, turn)
    VALUES (NEW.owner, 1, (SELECT coalesce(max(turn), 0) + 1 FROM job_turns))
    ON CONFLICT (owner) DO UPDATE SET queued = queued + 1;
END;

CREATE TRIGGER job_turns_count_a_queued_job_deleted AFTER DELETE ON jobs
WHEN OLD.status = 'queued'
BEGIN
    DELETE FROM job_turns WHERE owner = OLD.owner AND queued = 1;
    UPDATE job_turns SET queued = queued - 1 WHERE owner = OLD.owner;
END;

-- The jobs already queued when this migration runs.
INSERT INTO job_turns (owner, queued, turn)
SELECT owner, count(*), 0 FROM jobs WHERE status = 'queued' GROUP BY owner;
