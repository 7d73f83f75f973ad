#!/usr/bin/env bash
# test_core_concurrent.sh - one plan, one database, two runs: while an apply
# runs (an `sql` step sleeping 6 s), a second apply (and a rollback) of the
# same plan exits 5 at once, naming the session that holds the plan's lock,
# and records nothing; another plan on the same database is not blocked;
# status shows the run `running`; when the first finishes, apply again exits
# 0 quickly with nothing to do.  The same plan running at the same time on
# another database of the cluster is a different run: it is not the one named.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_concurrent_other
OTHER_DB=$TEST_DB
OTHER_URL=$DATABASE_URL
new_db core_concurrent
psql_q "CREATE TABLE other (id int PRIMARY KEY)" >/dev/null

cat >"$T/slow.yaml" <<'EOF'
version: 1
name: concurrent-slow
phases:
  - name: slow
    steps:
      - sql: { up: "SELECT pg_sleep(6); CREATE TABLE slow_done (id int)", down: "SELECT 1" }
EOF
cat >"$T/other.yaml" <<'EOF'
version: 1
name: concurrent-other
phases:
  - name: expand
    steps:
      - add_column: { table: other, column: c, type: int }
EOF

# now_ms - wall clock in milliseconds
now_ms() { local t=${EPOCHREALTIME//[.,]/}; printf '%s\n' $((10#$t / 1000)); }

sql_step_running() {
	[[ $(psql_q "SELECT state FROM phasegate.steps WHERE kind = 'sql'") == running ]]
}

# the same plan, on the other database, started first
bg_run other env DATABASE_URL="$OTHER_URL" "$PHASEGATE" apply "$T/slow.yaml"
OTHER_PID=$BG_PID
other_running() {
	[[ $(psql -X -A -t -d "$OTHER_DB" -c "SELECT state FROM phasegate.steps WHERE kind = 'sql'" 2>/dev/null) == running ]]
}
wait_for -t 20 other_running
other_holder=$(psql -X -A -t -d "$OTHER_DB" -c "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
	  AND a.application_name = 'phasegate'")
[[ $other_holder =~ ^[0-9]+$ ]] || fail "no single session holds the plan lock on the other database: '$other_holder'"

bg_run slow "$PHASEGATE" apply "$T/slow.yaml"
SLOW_PID=$BG_PID
wait_for -t 20 sql_step_running
holder=$(psql_q "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
	  AND a.application_name = 'phasegate'")
[[ $holder =~ ^[0-9]+$ ]] || fail "no single session holds the plan lock: '$holder'"

# a second apply of the same plan: exit 5 at once, naming the holder (the
# run id is checked at the end)
t0=$(now_ms)
assert_exit 5 phg apply "$T/slow.yaml"
elapsed=$(($(now_ms) - t0))
((elapsed < 2000)) || fail "the second apply took ${elapsed} ms to refuse (want < 2000)"
assert_file_contains "$T/err" 'plan "concurrent-slow" is being run by another phasegate'
cp "$T/err" "$T/refused.err"  # who it names is checked at the end
kill -0 "$SLOW_PID" 2>/dev/null || fail "the first apply ended before the second was refused"

# so does a rollback
assert_exit 5 phg rollback "$T/slow.yaml"
assert_file_contains "$T/err" 'plan "concurrent-slow" is being run by another phasegate'

# status reads without waiting, and shows the run running
t0=$(now_ms)
assert_exit 0 phg status "$T/slow.yaml" --json
elapsed=$(($(now_ms) - t0))
state=$(python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["state"], s["phases"][0]["state"])' "$T/out")
assert_eq "running running" "$state" "status during the run"
((elapsed < 2000)) || fail "status waited ${elapsed} ms for the running apply"

kill -0 "$SLOW_PID" 2>/dev/null || fail "the first apply ended too early for the checks above to mean anything"

# another plan is not blocked by this plan's lock
assert_exit 0 phg apply "$T/other.yaml"
assert_eq 1 "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'other'::regclass AND attname = 'c'")" \
	"the other plan applied"

# the refused runs recorded nothing
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'concurrent-slow'")" \
	"the refused apply created no run"

rc=0
wait "$SLOW_PID" || rc=$?
assert_eq 0 "$rc" "the first apply completed"
assert_eq 1 "$(psql_q "SELECT count(*) FROM pg_class WHERE relname = 'slow_done'")" "its sql step ran once"

# again: nothing to do, quickly
t0=$(now_ms)
assert_exit 0 phg apply "$T/slow.yaml"
elapsed=$(($(now_ms) - t0))
assert_file_contains "$T/err" "nothing to do"
((elapsed < 2000)) || fail "apply of a completed plan took ${elapsed} ms"
assert_eq "1|completed" "$(psql_q "SELECT count(*), max(state) FROM phasegate.runs WHERE plan = 'concurrent-slow'")" \
	"still one run, completed"

rc=0
wait "$OTHER_PID" || rc=$?
assert_eq 0 "$rc" "the run on the other database completed"

# the session named is the one holding the lock on this database, not the
# run of the same plan on the other database
assert_file_contains "$T/refused.err" "pid $holder" "the refusal names the session holding the lock"
assert_file_not_contains "$T/refused.err" "pid $other_holder" \
	"the refusal names a session of another database ($OTHER_DB) that holds no lock here"

# the refusal names the other *run* (its id, as recorded in phasegate.runs
# and shown by status/history), not only the database session
run_id=$(psql_q "SELECT id FROM phasegate.runs WHERE plan = 'concurrent-slow'")
assert_file_contains "$T/refused.err" "run $run_id" "the refusal names the run that holds the lock"

pass
