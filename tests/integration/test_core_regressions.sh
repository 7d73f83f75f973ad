#!/usr/bin/env bash
# test_core_regressions.sh - defects a review of the engine found, kept fixed:
#  1. create_index over an index that existed before the run fails (exit 3)
#     and never drops that index;
#  2. an http request in flight when phasegate is killed is reverted by
#     `rollback` (its effect is unknown, so the revert request is sent);
#  3. losing the control connection does not release the plan's lock: a
#     second apply still exits 5;
#  4. a phase applied again after an automatic rollback takes a new backup;
#  5. a completed plan with a sync_trigger (and no dropped column) rolls back.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db regressions

# ---------------------------------------------------------------- 1
psql_q "CREATE TABLE ix (id int PRIMARY KEY, b int);
        INSERT INTO ix SELECT g, g FROM generate_series(1, 100) g;
        CREATE UNIQUE INDEX ix_b_idx ON ix (b)" >/dev/null
cat >"$T/ix.yaml" <<'EOF'
version: 1
name: reg-preexisting-index
phases:
  - name: idx
    steps:
      - create_index: { table: ix, columns: [b], name: ix_b_idx }
EOF
assert_exit 3 phg apply "$T/ix.yaml"
assert_contains "$(cat "$T/err")" "already exists" "names the existing index"
assert_eq "1|t" "$(psql_q "SELECT count(*), bool_and(indisunique) FROM pg_index WHERE indexrelid = 'ix_b_idx'::regclass")" \
	"the index that existed before is still there, still unique"

# ---------------------------------------------------------------- 2
"$FAKEHTTP" --port 0 --port-file "$T/port" --mode slow:4000 >"$T/fake.log" 2>&1 &
FAKE=$!
on_exit "kill $FAKE 2>/dev/null || true"
wait_for test -s "$T/port"
export FLAG_PORT
FLAG_PORT=$(cat "$T/port")
cat >"$T/flag.yaml" <<'EOF'
version: 1
name: reg-http-killed
phases:
  - name: flip
    steps:
      - http:
          method: PUT
          url: "http://127.0.0.1:${FLAG_PORT}/flags/x"
          body: '{"enabled": true}'
          revert: { body: '{"enabled": false}' }
EOF
"$PHASEGATE" apply "$T/flag.yaml" >"$T/flag.out" 2>&1 &
PID=$!
# the request is marked started, then sent; the service holds it 4 s
http_started() {
	[[ $(psql_q "SELECT count(*) FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'reg-http-killed' AND s.op_started = 0") == 1 ]]
}
wait_for -t 20 http_started
sleep 1
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
# the killed process's sessions end when the server sees the socket close
no_lock() { [[ $(psql_q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0 ]]; }
wait_for -t 20 no_lock
assert_eq "running|0|0" "$(psql_q "SELECT s.state, s.progress, s.op_started FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'reg-http-killed'")" \
	"the request was marked started, not done"
curl -s -X PUT --data healthy "http://127.0.0.1:$FLAG_PORT/_mode" >/dev/null
assert_exit 0 phg rollback "$T/flag.yaml"
reverts=$(curl -s "http://127.0.0.1:$FLAG_PORT/_requests" | python3 -c '
import json, sys
print(sum(1 for r in json.load(sys.stdin) if r["method"] == "PUT" and "false" in r["body"]))')
assert_eq 1 "$reverts" "the revert request was sent once"

# ---------------------------------------------------------------- 3
psql_q "CREATE TABLE big (id int PRIMARY KEY, v int, w int);
        INSERT INTO big SELECT g, g FROM generate_series(1, 3000) g;
        CREATE FUNCTION slow_id(int) RETURNS int LANGUAGE plpgsql VOLATILE
          AS \$\$ BEGIN PERFORM pg_sleep(0.002); RETURN \$1; END \$\$" >/dev/null
cat >"$T/lock.yaml" <<'EOF'
version: 1
name: reg-lock
phases:
  - name: fill
    steps:
      - backfill: { table: big, set: "w = slow_id(v)", batch_size: 50 }
EOF
"$PHASEGATE" apply "$T/lock.yaml" >"$T/lock.out" 2>&1 &
PID=$!
on_exit "kill $PID 2>/dev/null || true"
some_batches() {
	(($(psql_q "SELECT coalesce(max(bf_batches), 0) FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'reg-lock'") >= 2))
}
wait_for -t 20 some_batches
# end every session of that run but the one holding the lock (the control
# connection writes events; losing it must not free the lock)
psql_q "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
        WHERE a.datname = current_database() AND a.application_name = 'phasegate'
          AND a.pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)" >/dev/null
assert_exit 5 phg apply "$T/lock.yaml"
kill -INT "$PID"
wait "$PID" 2>/dev/null || true
assert_exit 0 phg apply "$T/lock.yaml"
assert_eq 0 "$(psql_q "SELECT count(*) FROM big WHERE w IS DISTINCT FROM v")" "completed after the interruption"

# ---------------------------------------------------------------- 4
psql_q "CREATE TABLE bk (id int PRIMARY KEY, v int); INSERT INTO bk VALUES (1, 1)" >/dev/null
cat >"$T/bk.yaml" <<EOF
version: 1
name: reg-backup-again
backup: { dir: $T/backups }
phases:
  - name: change
    backup: true
    steps:
      - add_check: { table: bk, name: bk_v_pos, check: "v > 0" }
EOF
psql_q "INSERT INTO bk VALUES (2, -1)" >/dev/null
assert_exit 3 phg apply "$T/bk.yaml"
psql_q "UPDATE bk SET v = 5 WHERE id = 2" >/dev/null
assert_exit 0 phg apply "$T/bk.yaml"
assert_eq 2 "$(psql_q "SELECT count(*) FROM phasegate.backups b JOIN phasegate.runs r ON r.id = b.run_id WHERE r.plan = 'reg-backup-again'")" \
	"the second attempt at the phase took its own backup"

# ---------------------------------------------------------------- 5
psql_q "CREATE TABLE sy (id int PRIMARY KEY, a text)" >/dev/null
cat >"$T/sy.yaml" <<'EOF'
version: 1
name: reg-sync-rollback
phases:
  - name: expand
    steps:
      - add_column: { table: sy, column: b, type: text }
      - sync_trigger: { table: sy, from: a, to: b }
EOF
assert_exit 0 phg apply "$T/sy.yaml"
assert_exit 0 phg rollback "$T/sy.yaml"
assert_eq "0|0" "$(psql_q "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sy'::regclass AND NOT tgisinternal), (SELECT count(*) FROM information_schema.columns WHERE table_name = 'sy' AND column_name = 'b')")" \
	"trigger and column gone after rolling back a completed plan"

pass
