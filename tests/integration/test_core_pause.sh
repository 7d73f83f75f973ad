#!/usr/bin/env bash
# test_core_pause.sh - an operator pauses and resumes a running apply from a
# second process: `phasegate pause` is recorded in the state schema, the
# backfill stops after its current batch and waits (no batch while paused,
# the plan lock kept: a second apply still exits 5), `status` shows who
# paused it and since when, `phasegate resume` lets it go on, and it
# completes with every row right.  SIGTERM while paused exits 130 at once.
# Pausing a plan with no unfinished run is an error (exit 1).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_pause
psql_q "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO t SELECT g, g FROM generate_series(1, 3000) g" >/dev/null
slow_updates t 0.05
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: pausable
phases:
  - name: fill
    steps:
      - backfill: { table: t, set: "v2 = v * 2", batch_size: 50 }
YAML

assert_exit 1 phg pause "$T/plan.yaml"
assert_file_contains "$T/err" "has never run on this database"

bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 20 bf_batches_ge 3
assert_exit 0 phg pause "$T/plan.yaml"
assert_file_contains "$T/err" "paused run 1 of plan \"pausable\""
wait_for -t 10 grep -q "paused by" "$T/apply.err"
b1=$(bf_batches)
sleep 1.2
assert_eq "$b1" "$(bf_batches)" "no batch while paused"
assert_exit 0 phg status "$T/plan.yaml"
assert_file_contains "$T/out" "paused:   since"
assert_exit 0 phg status "$T/plan.yaml" --json
assert_contains "$(cat "$T/out")" '"paused":{"since":' "status --json shows the pause"
assert_exit 5 phg apply "$T/plan.yaml"
assert_exit 0 phg resume "$T/plan.yaml"
rc=0
wait "$pid" || rc=$?
assert_eq 0 "$rc" "the apply completed after resume"
assert_file_contains "$T/apply.err" "resumed: going on"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS DISTINCT FROM v * 2")" "every row"
assert_eq "2" "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind IN ('paused', 'resumed')")" "recorded as events"
assert_exit 1 phg pause "$T/plan.yaml"
assert_file_contains "$T/err" "has no unfinished run to pause"

# SIGTERM while paused: exit 130 at once, state saved
psql_q "SET client_min_messages = warning; DROP SCHEMA phasegate CASCADE; UPDATE t SET v2 = NULL" >/dev/null
bg_run apply2 "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 20 bf_batches_ge 2
assert_exit 0 phg pause "$T/plan.yaml"
wait_for -t 10 grep -q "paused by" "$T/apply2.err"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
assert_eq 130 "$rc" "SIGTERM while paused"
assert_eq "interrupted" "$(psql_q "SELECT state FROM phasegate.runs")" "state saved"
assert_exit 0 phg resume "$T/plan.yaml"
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS DISTINCT FROM v * 2")" "every row after the resume"
pass
