-- A stored chunk of output moves its job's `output_bytes` on inside the statement that stores
-- it, so a batch of chunks is one statement: one round trip to SQLite's thread per commit
-- instead of one per chunk, on the one serial write path. The count can never disagree with
-- the chunks that are stored.

CREATE TRIGGER job_output_moves_output_bytes AFTER INSERT ON job_output
BEGIN
    UPDATE jobs
    SET output_bytes = max(output_bytes, NEW.start_offset + length(NEW.bytes))
    WHERE seq = NEW.job_seq;
END;
