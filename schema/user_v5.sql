-- Version 5: record expiry is kept in milliseconds (it was in 10 ms units, counted from
-- the write's timestamp, which can run ahead of the clock). A record written with a ttl
-- now expires ttl seconds after the write's wall-clock time, to the millisecond.
-- Existing expiries are converted (never-expiring records keep the largest integer;
-- a value too large to convert is so far ahead that it becomes "never"). Open batches'
-- expiry (in `batch_items`, which exists only while a batch is open) is converted by
-- the storage code (SQL has no conditional UPDATE of a table that may be missing).
UPDATE bso SET expiry = CASE
        WHEN expiry <= 922337203685477579 THEN expiry * 10
        ELSE 9223372036854775807
    END
WHERE expiry < 9223372036854775807;
