#!/usr/bin/env bash
# test_core_reconnect.sh - PostgreSQL restarted or stopped mid-run (issue 15).
#
# On a private cluster of its own (a restart must not touch the other tests'):
# 1. restart (pg_ctl restart -m fast) while a backfill runs: phasegate says the
#    connection was lost, reconnects with backoff, resumes the same run from
#    its last committed batch and completes (exit 0) -- every row, one run.
# 2. stop mid-run: the reconnect attempts fail (connect_retries), exit 1 with
#    the state saved; once the server is back, apply resumes and completes.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

bash "$PHG_SOURCE_DIR/tests/harness/pg.sh" start "$T/own.state" >"$T/own.log" 2>&1 ||
	fail "could not start a private cluster: $(cat "$T/own.log")"
on_exit "bash '$PHG_SOURCE_DIR/tests/harness/pg.sh' stop '$T/own.state' >/dev/null 2>&1"
source "$T/own.state"
pgctl() { runuser -u postgres -- "$PHG_TEST_PGBIN/pg_ctl" -D "$PHG_TEST_PGDATA" "$@" >>"$T/own.log" 2>&1; }

new_db core_reconnect
psql_q "CREATE TABLE big (id int PRIMARY KEY, v int, w int);
	INSERT INTO big SELECT g, g, NULL FROM generate_series(1, 200000) g" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: reconnect
settings: { connect_retries: 5 }
phases:
  - name: one
    steps:
      - add_column: { table: big, column: x, type: int }
  - name: two
    steps:
      - backfill: { table: big, set: "w = v * 2", batch_size: 1000, batch_time: 0 }
  - name: three
    steps:
      - add_column: { table: big, column: y, type: int }
YAML
bf_started() {
	[[ $(psql_q "SELECT coalesce(max(bf_batches), 0) > 3 FROM phasegate.steps" 2>/dev/null) == t ]]
}

# ---- 1. restart mid-backfill
bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 60 bf_started
pgctl restart -m fast -w || fail "pg_ctl restart failed: $(tail -5 "$T/own.log")"
rc=0
wait "$pid" || rc=$?
out="$T/apply.err"
assert_eq 0 "$rc" "apply across a server restart: exit status ($(tail -5 "$out"))"
assert_file_contains "$out" "the connection to the database was lost mid-run"
assert_file_contains "$out" "reconnecting to resume the run"
assert_file_contains "$out" "resuming run 1"
assert_file_contains "$out" "plan completed"
assert_eq "1|completed" "$(psql_q "SELECT count(*), max(state) FROM phasegate.runs")" "one run, resumed and completed"
assert_eq "200000|200000" "$(psql_q "SELECT count(*) FILTER (WHERE w = v * 2), count(*) FROM big")" "every row backfilled"
assert_eq "y" "$(psql_q "SELECT attname FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'y'")" "the last phase ran"

# ---- 2. stopped mid-run: exit 1, state saved; resumed once it is back
assert_exit 0 phg rollback "$T/plan.yaml"
psql_q "UPDATE big SET w = NULL WHERE id % 2 = 0" >/dev/null
bg_run apply2 "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 60 bf_started
pgctl stop -m fast -w || fail "pg_ctl stop failed"
rc=0
wait "$pid" || rc=$?
out="$T/apply2.err"
assert_eq 1 "$rc" "apply with the server stopped: exit status ($(tail -5 "$out"))"
assert_file_contains "$out" "reconnecting to resume the run"
assert_file_contains "$out" "database unreachable after 5 attempt(s)"
assert_file_contains "$out" "state is saved up to the last committed step"
pgctl start -w -o "-c listen_addresses= -c unix_socket_directories=$PHG_TEST_PGDIR -c port=$PGPORT -c fsync=off" ||
	fail "pg_ctl start failed: $(tail -5 "$T/own.log")"
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "resuming run"
assert_eq "200000" "$(psql_q "SELECT count(*) FILTER (WHERE w = v * 2) FROM big")" "every row backfilled after the resume"
pass
