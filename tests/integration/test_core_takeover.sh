#!/usr/bin/env bash
# test_core_takeover.sh - the plan's lock after a kill -9 (issue 15,
# "Stale lock after kill -9").
#
# 1. kill -9 of phasegate while its statement runs (pg_sleep(60)): the
#    server notices the client is gone within client_connection_check_interval
#    (phasegate sets 2s on its sessions) and the lock is free in seconds, not
#    when the statement would have ended; the next apply resumes and completes.
# 2. A holder the server does not end (a session holding the plan's lock,
#    recorded as a phasegate pid on this host that no longer runs): apply
#    exits 5 saying the holder is gone and offering --takeover; apply
#    --takeover cancels, then terminates that session and completes.
# 3. --takeover is refused when the recorded phasegate is alive (exit 5,
#    nothing changed).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_takeover
psql_q "CREATE TABLE ctl (slow boolean); INSERT INTO ctl VALUES (true);
	CREATE TABLE t (id int PRIMARY KEY)" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: takeover
phases:
  - name: one
    steps:
      - sql: { up: "SELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) THEN 60 ELSE 0 END)", down: "SELECT 1" }
  - name: two
    steps:
      - add_column: { table: t, column: c, type: int }
YAML
sleeping() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND application_name = 'phasegate' AND query LIKE '%pg_sleep(CASE%' AND state = 'active'") == 1 ]]
}
lock_free() {
	[[ $(psql_q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885890401::oid
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0 ]]
}

# ---- 1. kill -9 mid-statement: the server ends the orphan within seconds
bg_run k9 "$PHASEGATE" apply "$T/plan.yaml"
wait_for -t 20 sleeping
kill -KILL "$BG_PID"
wait "$BG_PID" 2>/dev/null || true
t0=$SECONDS
wait_for -t 15 lock_free
((SECONDS - t0 < 15)) || fail "the orphaned session held the lock for $((SECONDS - t0)) s"
psql_q "UPDATE ctl SET slow = false" >/dev/null
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'takeover' ORDER BY id DESC LIMIT 1")" "resumed and completed"
assert_exit 0 phg rollback "$T/plan.yaml"

# ---- 2. a holder the server does not end: its phasegate is gone
host=$(hostname)
sh -c 'exit 0' &
dead=$!
wait "$dead"
kill -0 "$dead" 2>/dev/null && fail "pid $dead should be gone"
# hold_lock PID: a session that takes the plan's lock, records PID on this
# host as its phasegate (what phasegate records), and sleeps -- twice: a
# cancel ends one sleep, and the session (with its lock) stays
hold_lock() {
	psql -X -q -d "$TEST_DB" -c "SELECT pg_advisory_lock(1885890401, hashtext('takeover'))" \
		-c "INSERT INTO phasegate.lock_holders (plan, backend_pid, client_pid, host) VALUES ('takeover', pg_backend_pid(), $1, '$host') ON CONFLICT (plan) DO UPDATE SET backend_pid = EXCLUDED.backend_pid, client_pid = EXCLUDED.client_pid, host = EXCLUDED.host" \
		-c "SELECT pg_sleep(600)" -c "SELECT pg_sleep(600)" >"$T/holder.out" 2>&1 &
	HOLDER=$!
	on_exit "kill $HOLDER 2>/dev/null || true"
	wait_for -t 10 held
}
held() { ! lock_free; }
hold_lock "$dead"
assert_exit 5 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "is locked by a phasegate that is gone: pid $dead on this host no longer runs"
assert_file_contains "$T/err" "--takeover"
assert_eq "" "$(cols=$(psql_q "SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'"); echo "$cols")" "nothing applied"
assert_exit 0 phg apply "$T/plan.yaml" --takeover
assert_file_contains "$T/err" "--takeover: cancelling backend pid"
# the cancel ends one sleep, but this client (unlike a dead one) keeps its
# session and its lock: 5 s later, the terminate
assert_file_contains "$T/err" "still held 5 s after the cancel: terminating backend pid"
assert_file_contains "$T/err" "the plan's lock is ours"
assert_eq "c" "$(psql_q "SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'")" "applied after the takeover"
wait "$HOLDER" 2>/dev/null || true
assert_exit 0 phg rollback "$T/plan.yaml"

# ---- 3. --takeover of a live phasegate is refused
hold_lock $$
assert_exit 5 phg apply "$T/plan.yaml" --takeover
assert_file_contains "$T/err" "--takeover refused: phasegate pid $$ on this host is alive"
held || fail "the live holder lost its lock"
kill "$HOLDER" 2>/dev/null || true
pass
