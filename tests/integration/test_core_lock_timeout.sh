#!/usr/bin/env bash
# test_core_lock_timeout.sh - a long application transaction delays the plan
# instead of freezing the application.  A session holds ACCESS SHARE on t for
# ~4 s; phasegate's ADD COLUMN (lock_timeout 300ms, 30 retries, backoff
# 100..500 ms) retries until it ends, logging each retry with the blocking
# pid and recording lock_retry events, and completes.  Meanwhile a reader
# queries t every 100 ms: none waits much longer than lock_timeout (they
# queue behind the waiting ALTER for one attempt at most).  A blocker that
# never ends: after lock_retries (3) attempts apply gives up, names the
# blocker, rolls the phase back and exits 3; once the blocker is gone, apply
# again completes.  CREATE INDEX CONCURRENTLY kept waiting by an old snapshot
# gives up the same way and leaves no INVALID index behind.  A backfill batch
# waits for a row lock at most lock_timeout, is retried, and completes with
# every row updated once.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_lock_timeout
psql_q "CREATE TABLE t (id int PRIMARY KEY, v int);
	INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;
	CREATE TABLE t2 (id int PRIMARY KEY)" >/dev/null

cat >"$T/plan.yaml" <<'EOF'
version: 1
name: lock-timeout
settings:
  lock_timeout: 300ms
  lock_retries: 30
  retry_backoff: 100ms
  retry_backoff_max: 500ms
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int }
EOF
cat >"$T/giveup.yaml" <<'EOF'
version: 1
name: lock-giveup
settings:
  lock_timeout: 300ms
  lock_retries: 3
  retry_backoff: 100ms
  retry_backoff_max: 500ms
phases:
  - name: expand
    steps:
      - add_column: { table: t2, column: c, type: int }
EOF

now_ms() { local t=${EPOCHREALTIME//[.,]/}; printf '%s\n' $((10#$t / 1000)); }

# holds_lock APPNAME TABLE - that session holds a granted lock on TABLE
holds_lock() {
	[[ $(psql_q "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE a.application_name = '$1' AND l.relation = '$2'::regclass AND l.granted") -ge 1 ]]
}
app_pid() { # APPNAME - its backend pid
	psql_q "SELECT pid FROM pg_stat_activity WHERE application_name = '$1'"; }

# the application: a short query on t every 100 ms, its duration as psql
# measures it (\timing), one line each, until $T/stop_reader exists
reader_loop() {
	local out
	while [[ ! -e $T/stop_reader ]]; do
		if out=$(PGAPPNAME=core_reader psql -X -A -t -q -d "$TEST_DB" -c '\timing on' \
			-c 'SELECT count(*) FROM t' 2>&1); then
			if [[ $out =~ Time:\ ([0-9.]+)\ ms ]]; then
				echo "${BASH_REMATCH[1]}"
			else
				echo "NOTIME $out"
			fi
		else
			echo "ERR $out"
		fi
		sleep 0.1
	done
}

# ---- a blocker that ends after ~4 s
bg_run blocker env PGAPPNAME=core_blocker psql -X -q -d "$TEST_DB" \
	-c "BEGIN; LOCK TABLE t IN ACCESS SHARE MODE; SELECT pg_sleep(4); COMMIT"
wait_for -t 10 holds_lock core_blocker t
blocker=$(app_pid core_blocker)
[[ $blocker =~ ^[0-9]+$ ]] || fail "blocker pid: '$blocker'"

bg_run reader reader_loop
READER_PID=$BG_PID
t0=$(now_ms)
assert_exit 0 phg apply "$T/plan.yaml"
elapsed=$(($(now_ms) - t0))
sleep 0.5
touch "$T/stop_reader"
cp "$T/err" "$T/apply.err"

assert_eq 1 "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'")" \
	"the column was added once the blocker ended"
((elapsed >= 1500)) || fail "apply finished after ${elapsed} ms: it did not wait for the blocker (~4 s)"
assert_file_contains "$T/apply.err" "blocked by pid $blocker" "a retry line names the blocking pid"
assert_file_contains "$T/apply.err" "retrying in"
retries=$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'lock_retry'")
((retries >= 2)) || fail "expected lock_retry events, found $retries"
assert_eq t "$(psql_q "SELECT count(*) > 0 FROM phasegate.events WHERE kind = 'lock_retry'
	AND message LIKE '%pid $blocker %'")" "a lock_retry event names the blocking pid"
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'lock-timeout'")" "run completed"

# the application was never frozen: no query waited much over lock_timeout
reader_done() { ! kill -0 "$READER_PID" 2>/dev/null; }
wait_for -t 10 reader_done
assert_file_not_contains "$T/reader.out" "ERR" "every application query succeeded"
assert_file_not_contains "$T/reader.out" "NOTIME"
samples=$(wc -l <"$T/reader.out")
((samples >= 4)) || fail "only $samples application queries ran during the apply"
max=$(sort -n "$T/reader.out" | tail -n 1)
max=${max%.*}
((max < 1500)) || fail "an application query waited ${max} ms (lock_timeout is 300 ms): $(tr '\n' ' ' <"$T/reader.out")"

# ---- a blocker that never ends: give up after lock_retries, roll back, exit 3
bg_run blocker2 env PGAPPNAME=core_blocker2 psql -X -q -d "$TEST_DB" \
	-c "BEGIN; LOCK TABLE t2 IN ACCESS SHARE MODE; SELECT pg_sleep(120); COMMIT"
wait_for -t 10 holds_lock core_blocker2 t2
blocker2=$(app_pid core_blocker2)
t0=$(now_ms)
assert_exit 3 phg apply "$T/giveup.yaml"
elapsed=$(($(now_ms) - t0))
assert_file_contains "$T/err" "gave up after 3 attempts"
assert_file_contains "$T/err" "pid $blocker2" "the give-up message names the blocker"
((elapsed < 15000)) || fail "giving up took ${elapsed} ms"
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 't2'::regclass AND attname = 'c'")" \
	"nothing was added to t2"
state=$(phg status "$T/giveup.yaml" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(s["state"], s["phases"][0]["state"])')
assert_eq "failed rolled_back" "$state" "status after giving up"
assert_eq 2 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r ON r.id = e.run_id
	WHERE r.plan = 'lock-giveup' AND e.kind = 'lock_retry'")" "3 attempts: 2 retries recorded"

# the blocker goes away: apply again completes
assert_eq t "$(psql_q "SELECT pg_terminate_backend($blocker2)")"
assert_exit 0 phg apply "$T/giveup.yaml"
assert_eq 1 "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 't2'::regclass AND attname = 'c'")" \
	"applied once the blocker is gone"

# ---- CREATE INDEX CONCURRENTLY waits for every older snapshot: each attempt
# times out, apply gives up, and no INVALID index is left behind
cat >"$T/cic.yaml" <<'EOF'
version: 1
name: lock-cic
settings:
  lock_timeout: 300ms
  lock_retries: 3
  retry_backoff: 100ms
  retry_backoff_max: 200ms
phases:
  - name: index
    steps:
      - create_index: { table: t, columns: [v], name: t_v_idx }
EOF
psql_q "CREATE TABLE snap_src (id int)" >/dev/null
bg_run oldsnap env PGAPPNAME=core_oldsnap psql -X -q -d "$TEST_DB" \
	-c "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM snap_src; SELECT pg_sleep(120); COMMIT"
oldsnap_open() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'core_oldsnap'
		AND backend_xmin IS NOT NULL AND state = 'active'") == 1 ]]
}
wait_for -t 10 oldsnap_open
assert_exit 3 phg apply "$T/cic.yaml"
assert_file_contains "$T/err" "gave up after 3 attempts"
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_class WHERE relname = 't_v_idx'")" \
	"a build that timed out left no (INVALID) index"
assert_eq t "$(psql_q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'core_oldsnap'")"
assert_exit 0 phg apply "$T/cic.yaml"
assert_eq t "$(psql_q "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_v_idx'::regclass")" \
	"built once the old snapshot is gone"

# ---- a backfill batch meets a row locked by the application
psql_q "CREATE TABLE rows_t (id int PRIMARY KEY, v int NOT NULL, v2 int, n int NOT NULL DEFAULT 0);
	INSERT INTO rows_t (id, v) SELECT g, g FROM generate_series(1, 5000) g" >/dev/null
cat >"$T/rows.yaml" <<'EOF'
version: 1
name: lock-rows
settings:
  lock_timeout: 300ms
  lock_retries: 30
  retry_backoff: 100ms
  retry_backoff_max: 500ms
phases:
  - name: backfill
    steps:
      - backfill: { table: rows_t, set: "v2 = v * 2, n = n + 1", batch_size: 500 }
EOF
bg_run rowlock env PGAPPNAME=core_rowlock psql -X -q -d "$TEST_DB" \
	-c "BEGIN; SELECT id FROM rows_t WHERE id = 2222 FOR UPDATE; SELECT pg_sleep(2.5); COMMIT"
wait_for -t 10 holds_lock core_rowlock rows_t
rowlocker=$(app_pid core_rowlock)
assert_exit 0 phg apply "$T/rows.yaml"
assert_file_contains "$T/err" "blocked by pid $rowlocker" "the batch's retry names the session holding the row"
assert_eq "0|0|5000" "$(psql_q "SELECT count(*) FILTER (WHERE v2 IS DISTINCT FROM v * 2), count(*) FILTER (WHERE n <> 1),
	(SELECT s.bf_rows FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'lock-rows')
	FROM rows_t")" "the retried batch applied once; every row right"
retries=$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r ON r.id = e.run_id
	WHERE r.plan = 'lock-rows' AND e.kind = 'lock_retry'")
((retries >= 1)) || fail "no lock_retry event for the blocked batch"

pass
