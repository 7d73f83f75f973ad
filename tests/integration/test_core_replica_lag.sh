#!/usr/bin/env bash
# test_core_replica_lag.sh - max_replica_lag with a real streaming replica
# (tests/harness/pg.sh replica, on a primary of this test's own).  Its replay
# is paused, so its replay lag in pg_stat_replication grows: the backfill
# waits between batches once the lag passes max_replica_lag -- no batch
# while it waits, the hold recorded in runs.held and shown by `status`, a
# `replica_lag` event -- and goes on by itself once replay resumes and the
# lag is back under (`replica_lag_ok`), completing with every row right on
# the primary and, after replay, on the replica.  With max_replica_lag: 0
# the replicas are not looked at.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

pgsh=$PHG_SOURCE_DIR/tests/harness/pg.sh
state=$T/pg.state
on_exit "bash '$pgsh' stop '$state' >/dev/null"
assert_exit 0 env PHG_TEST_PGPORT="${PHG_TEST_LAG_PGPORT:-55433}" bash "$pgsh" start "$state"
assert_exit 0 bash "$pgsh" replica "$state"
# this test's own cluster from here on
# shellcheck source=/dev/null
source "$state"
rport=$PHG_TEST_REPLICA_PORT
new_db replica_lag
on_replica() { psql -X -A -t -q -p "$rport" -d "$TEST_DB" -c "$1"; }
replay() { psql -X -A -t -q -p "$rport" -d postgres -c "SELECT pg_wal_replay_$1()" >/dev/null; }
on_exit "psql -X -q -p $rport -d postgres -c 'SELECT pg_wal_replay_resume()' >/dev/null 2>&1 || true"

psql_q "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO t SELECT g, g FROM generate_series(1, 60000) g" >/dev/null
slow_updates t 0.02
replica_has() { [[ $(on_replica "$1" 2>/dev/null) == "$2" ]]; }
wait_for -t 30 replica_has "SELECT count(*) FROM t" 60000
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: lagging
settings: { max_replica_lag: 1s, throttle: off }
phases:
  - name: fill
    steps:
      - backfill: { table: t, set: "v2 = v * 2", batch_size: 500 }
YAML
ev() { psql_q "SELECT count(*) FROM phasegate.events WHERE kind = '$1'"; }
has_ev() { [[ $(ev "$1") -gt 0 ]]; }

bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 20 bf_batches_ge 3
replay pause
wait_for -t 30 has_ev replica_lag
assert_file_contains "$T/apply.err" "replica phg_replica is"
assert_file_contains "$T/apply.err" "the backfill waits between batches until it is back under"
b1=$(bf_batches)
sleep 1.5
assert_eq "$b1" "$(bf_batches)" "no batch while the replica is behind"
assert_contains "$(psql_q "SELECT held FROM phasegate.runs")" "replica lag over max_replica_lag" "the hold is recorded"
assert_exit 0 phg status "$T/plan.yaml"
assert_file_contains "$T/out" "held:     replica lag over max_replica_lag"
assert_exit 0 phg status "$T/plan.yaml" --json
assert_contains "$(cat "$T/out")" '"held":{"why":"replica lag over max_replica_lag' "status --json shows the hold"
lag=$(psql_q "SELECT (data->>'lag_ms')::int FROM phasegate.events WHERE kind = 'replica_lag'")
[[ $lag -gt 1000 ]] || fail "the recorded lag ($lag ms) is over max_replica_lag"
replay resume
rc=0
wait "$pid" || rc=$?
assert_eq 0 "$rc" "the backfill completed once the replica caught up"
assert_eq "1" "$(ev replica_lag_ok)" "the end of the hold is an event"
assert_file_contains "$T/apply.err" "back under max_replica_lag"
assert_eq "" "$(psql_q "SELECT held FROM phasegate.runs")" "the hold is cleared"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS DISTINCT FROM v * 2")" "every row"
wait_for -t 30 replica_has "SELECT count(*) FROM t WHERE v2 = v * 2" 60000

# max_replica_lag: 0 -- not looked at, however far behind
psql_q "SET client_min_messages = warning; DROP SCHEMA phasegate CASCADE; UPDATE t SET v2 = NULL" >/dev/null
sed -i 's/max_replica_lag: 1s/max_replica_lag: 0/' "$T/plan.yaml"
replay pause
sleep 2.5
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "0" "$(ev replica_lag)" "no hold with max_replica_lag: 0"
replay resume
pass
