#!/usr/bin/env bash
# test_gates_watch_backfill.sh - a failing watch stops the phase at a safe
# point and the phase is rolled back (SPEC section 2 "Gates", issue 3).
#
# 1. A 100k-row backfill in batches of 500 (each batch slowed to ~40 ms by an
#    InitPlan pg_sleep) runs with `watch: [api]`; once some batches are in,
#    the fake service turns to 503.  The backfill stops right after the watch
#    fails (every batch is logged by a statement trigger: at most a couple
#    commit after the failing probe), its `down` runs (every row as before),
#    exit 3, run failed, phase rolled_back, event gate_failed, and `status`
#    shows the check's last probe: FAIL, HTTP 503.
# 2. A watch failing during a long `sql` statement (pg_sleep(20)) cancels it:
#    exit 3 long before 20 s, the phase's earlier step reverted, the earlier
#    phase kept.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || fail "FAKEHTTP is not set (build target fakehttp)"

fake_start() {
	bg_run "fake_$1" "$FAKEHTTP" --port 0 --port-file "$T/$1.port" --mode "${2:-healthy}"
	wait_for -t 10 test -s "$T/$1.port"
	FAKE_PORT=$(cat "$T/$1.port")
}
fake_mode() { curl -sS -m 5 -X PUT --data-binary "$2" "http://127.0.0.1:$1/_mode" >/dev/null; }
# python3 for JSON (a pyenv shim can take a second to start: prefer the system one)
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
py() { "$PY" -I -S -c "$@"; }
now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((10#$t / 1000))
}

new_db gates_watch_bf
fake_start api
export FAKE_PORT

# ---------------------------------------------------------------- backfill
psql_q "
CREATE TABLE bf (id int PRIMARY KEY, a int NOT NULL, b int);
INSERT INTO bf SELECT g, g, NULL FROM generate_series(1, 100000) g;
CREATE TABLE batch_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL, n int, dir text);
CREATE FUNCTION log_batch() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	INSERT INTO batch_log (at, n, dir)
	SELECT clock_timestamp(), count(*),
	       CASE WHEN bool_or(b IS NOT NULL) THEN 'up' ELSE 'down' END FROM newrows;
	RETURN NULL;
END \$\$;
CREATE TRIGGER bf_log AFTER UPDATE ON bf REFERENCING NEW TABLE AS newrows
	FOR EACH STATEMENT EXECUTE FUNCTION log_batch();
ANALYZE bf" >/dev/null
orig=$(psql_q "SELECT count(*), count(b), sum(a) FROM bf")

cat >"$T/bf.yaml" <<'EOF'
version: 1
name: gates-watch-backfill
checks:
  api:
    url: "http://127.0.0.1:${FAKE_PORT}/healthz"
    interval: 200ms
    timeout: 1s
    failures: 2
phases:
  - name: prepare
    steps:
      - add_column: { table: bf, column: c, type: int }
  - name: backfill
    watch: [api]
    steps:
      - add_column: { table: bf, column: d, type: int }
      - backfill:
          table: bf
          set: "b = a * 2 + (SELECT 0 FROM pg_sleep(0.04))"
          down: "b = NULL"
          batch_size: 500
EOF

up_batches() { psql_q "SELECT count(*) FROM batch_log WHERE dir = 'up'"; }
at_least() { (($(up_batches) >= $1)); }

bg_run apply "$PHASEGATE" apply "$T/bf.yaml"
apply_pid=$BG_PID
wait_for -t 30 at_least 15
fake_mode "$FAKE_PORT" status:503
switched=$(up_batches)
rc=0
wait "$apply_pid" || rc=$?
assert_eq 3 "$rc" "a failed watch exits 3 (stderr: $(cat "$T/apply.err"))"

# the gate failed with the check's reason; the backfill had not finished
assert_file_contains "$T/apply.err" 'check "api" failed 2 times in a row'
assert_file_contains "$T/apply.err" "503"
n_up=$(up_batches)
((n_up < 150)) || fail "the backfill ran to its end ($n_up of 200 batches) despite the failed watch"
# the failing probe that reached `failures`: batches committed after it
fail_at=$(psql_q "SELECT min(at) FROM phasegate.events WHERE kind = 'probe'
	AND data->>'gate' = 'watch' AND NOT (data->>'ok')::boolean AND (data->>'failures')::int = 2")
[[ -n $fail_at ]] || fail "no probe event with failures = 2"
after=$(psql_q "SELECT count(*) FROM batch_log WHERE dir = 'up' AND at > '$fail_at'")
((after <= 2)) || fail "$after backfill batches committed after the watch failed (want <= 2)"
printf 'backfill: %d batches when the service turned 503, %d in all, %d after the failing probe\n' \
	"$switched" "$n_up" "$after"

# rolled back: the `down` ran over every row, the phase's add_column is gone,
# the earlier phase is kept
assert_eq "$orig" "$(psql_q "SELECT count(*), count(b), sum(a) FROM bf")" "every row as before"
assert_eq 0 "$(psql_q "SELECT count(*) FROM bf WHERE b IS NOT NULL")" "no backfilled value left"
assert_eq "id,a,b,c" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'bf'::regclass AND attnum > 0 AND NOT attisdropped")" \
	"column d (the failed phase's) is gone, c (the earlier phase's) is kept"
(($(psql_q "SELECT count(*) FROM batch_log WHERE dir = 'down'") >= 1)) ||
	fail "the backfill's down never ran"

# state rows
assert_eq "failed" "$(psql_q "SELECT state FROM phasegate.runs")" "run state"
assert_eq "prepare=applied backfill=rolled_back" "$(psql_q "SELECT string_agg(name || '=' || state, ' '
	ORDER BY idx) FROM phasegate.phases")" "phase states"
assert_eq "reverted reverted" "$(psql_q "SELECT string_agg(state, ' ' ORDER BY idx)
	FROM phasegate.steps WHERE phase_idx = 1")" "the phase's steps are reverted"
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'gate_failed'
	AND phase = 'backfill'")" "one gate_failed event"
assert_contains "$(psql_q "SELECT message FROM phasegate.events WHERE kind = 'gate_failed'")" \
	'check "api" failed'

# status: the last probe of the check, failing with HTTP 503
assert_exit 0 phg status "$T/bf.yaml"
assert_file_contains "$T/out" "api"
grep -E '^check: +api +last .*FAIL, HTTP 503' "$T/out" >/dev/null ||
	fail "status does not show the failing last probe of api: $(cat "$T/out")"
assert_exit 0 phg status "$T/bf.yaml" --json
assert_eq "False 503" "$(py 'import json,sys; c = json.load(sys.stdin)["checks"]["api"]; print(c["ok"], c["status"])' <"$T/out")" \
	"status --json checks.api: the last probe failed with 503"

# ---------------------------------------------------------------- long sql
fake_mode "$FAKE_PORT" healthy
psql_q "CREATE TABLE sq (id int PRIMARY KEY)" >/dev/null
cat >"$T/sql.yaml" <<'EOF'
version: 1
name: gates-watch-sql
checks:
  api:
    url: "http://127.0.0.1:${FAKE_PORT}/healthz"
    interval: 200ms
    timeout: 1s
    failures: 2
phases:
  - name: before
    steps:
      - add_column: { table: sq, column: x, type: int }
  - name: long
    watch: [api]
    steps:
      - add_column: { table: sq, column: y, type: int }
      - sql: { up: "SELECT pg_sleep(20)", down: "SELECT 1" }
EOF
sleeping() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND state = 'active' AND query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()") == 1 ]]
}
t0=$(now_ms)
bg_run apply2 "$PHASEGATE" apply "$T/sql.yaml"
apply_pid=$BG_PID
wait_for -t 15 sleeping
fake_mode "$FAKE_PORT" status:503
rc=0
wait "$apply_pid" || rc=$?
ms=$(($(now_ms) - t0))
assert_eq 3 "$rc" "a failed watch during a long statement exits 3 (stderr: $(cat "$T/apply2.err"))"
((ms < 10000)) || fail "apply took ${ms} ms: the statement was not cancelled"
assert_file_contains "$T/apply2.err" "cancelling the running statement"
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
	AND query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()")" "no pg_sleep(20) left running"
assert_eq "id,x" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'sq'::regclass AND attnum > 0 AND NOT attisdropped")" \
	"the phase's add_column reverted, the earlier phase kept"
assert_eq "before=applied long=rolled_back" "$(psql_q "SELECT string_agg(p.name || '=' || p.state, ' '
	ORDER BY p.idx) FROM phasegate.phases p JOIN phasegate.runs r ON r.id = p.run_id
	WHERE r.plan = 'gates-watch-sql'")" "phase states"
assert_eq "failed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'gates-watch-sql'")"
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r ON r.id = e.run_id
	WHERE r.plan = 'gates-watch-sql' AND e.kind = 'gate_failed'")" "one gate_failed event"
printf 'long sql: exit 3 after %d ms\n' "$ms"

pass
