-- The replica-lag sampler of tests/bench/zero_downtime.sh, run against the
-- primary with psql -At -F ' ' until the bench stops it: every 250 ms, the
-- largest replay lag of any standby in seconds and in bytes (0 when none).
SELECT coalesce(max(extract(epoch FROM replay_lag)), 0),
       coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)
  FROM pg_stat_replication \watch 0.25
