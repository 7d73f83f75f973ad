-- The naive scenario of tests/bench/zero_downtime.sh: the same recipe the way
-- a plain migration tool with transactional DDL runs it (one transaction per
-- migration; the bench runs it with psql --single-transaction
-- -v ON_ERROR_STOP=1).  The ADD COLUMN takes ACCESS EXCLUSIVE on jobs and
-- the transaction keeps it to the end.  The UPDATE alone is timed (it runs
-- while the app waits, so nothing contends with it): its rows/s is the
-- baseline throughput the backfills are compared with.  Prints one line,
-- `zd_update_ms N`.
ALTER TABLE jobs ADD COLUMN new_status varchar(20);
SELECT clock_timestamp() AS zd_t0 \gset
UPDATE jobs SET new_status = status;
SELECT round(1000 * extract(epoch FROM clock_timestamp() - :'zd_t0'::timestamptz)) AS zd_update_ms \gset
\echo zd_update_ms :zd_update_ms
ALTER TABLE jobs ALTER COLUMN new_status SET NOT NULL;
ALTER TABLE jobs DROP COLUMN status;
ALTER TABLE jobs RENAME COLUMN new_status TO status;
