#!/usr/bin/env bash
# test_gates_http_step.sh - `http` steps: flags flipped exactly once, and
# flipped back exactly once (SPEC section 2 step table, issue 3 "Flag
# steps": "a resumed run never flips a flag twice and a rollback always
# flips it back").  The flag service is a fake HTTP service whose request log
# is the truth; a second one plays the application's health endpoint.
#
# 1. on_failure rollback-plan: the flag PUT arrives once with its body; a
#    later phase's verify fails -> the revert PUT arrives once with the
#    revert body, every phase reverted, exit 3.  Apply again once healthy:
#    one more PUT (enabled), the plan completes.
# 2. A flag service answering 500: the step fails, exit 3, the earlier
#    phase stays applied; one request (an answer is not retried).
# 3. An http step without `revert`: `rollback` exits 4 naming the step and
#    touches nothing (no request, the schema and the run state unchanged).
# 4. kill -9 while the step after the http step runs: resume does not send
#    the request again.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || fail "FAKEHTTP is not set (build target fakehttp)"

fake_start() {
	bg_run "fake_$1" "$FAKEHTTP" --port 0 --port-file "$T/$1.port" --mode "${2:-healthy}"
	wait_for -t 10 test -s "$T/$1.port"
	FAKE_PORT=$(cat "$T/$1.port")
}
fake_mode() { curl -sS -m 5 -X PUT --data-binary "$2" "http://127.0.0.1:$1/_mode" >/dev/null; }
fake_clear() { curl -sS -m 5 -X DELETE "http://127.0.0.1:$1/_requests" >/dev/null; }
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
# flag_log PORT - the requests the service got, one line each: METHOD PATH BODY
flag_log() {
	curl -sS -m 5 "http://127.0.0.1:$1/_requests" | "$PY" -I -S -c '
import json, sys
for r in json.load(sys.stdin):
    print(r["method"], r["path"], r["body"])'
}
cols() {
	psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
		WHERE attrelid = '$1'::regclass AND attnum > 0 AND NOT attisdropped"
}
plan_states() {
	psql_q "SELECT r.state || ' ' || string_agg(p.name || '=' || p.state, ' ' ORDER BY p.idx)
		FROM phasegate.runs r JOIN phasegate.phases p ON p.run_id = r.id
		WHERE r.plan = '$1' GROUP BY r.id, r.state ORDER BY r.id DESC LIMIT 1"
}

new_db gates_http_step
fake_start flags
FLAG_PORT=$FAKE_PORT
fake_start health status:503
HEALTH_PORT=$FAKE_PORT
export FLAG_PORT HEALTH_PORT

ON='PUT /flags/dual_write {"enabled": true}'
OFF='PUT /flags/dual_write {"enabled": false}'

# ---------------------------------------------------------------- 1. rollback-plan
psql_q "CREATE TABLE hf (id int PRIMARY KEY); INSERT INTO hf VALUES (1)" >/dev/null
cat >"$T/flag.yaml" <<'EOF'
version: 1
name: http-flag
settings: { on_failure: rollback-plan }
checks:
  health: { url: "http://127.0.0.1:${HEALTH_PORT}/healthz", interval: 200ms, failures: 2, successes: 2 }
phases:
  - name: expand
    steps:
      - add_column: { table: hf, column: a, type: int }
  - name: flag
    steps:
      - http:
          method: PUT
          url: "http://127.0.0.1:${FLAG_PORT}/flags/dual_write"
          body: '{"enabled": true}'
          headers: { Content-Type: application/json }
          revert: { body: '{"enabled": false}' }
  - name: later
    steps:
      - add_column: { table: hf, column: b, type: int }
    verify: [health]
EOF
assert_exit 3 phg apply "$T/flag.yaml"
assert_file_contains "$T/err" 'check "health" failed'
assert_eq "$ON"$'\n'"$OFF" "$(flag_log "$FLAG_PORT")" \
	"the flag went on once, and back off once (the revert body, the step's method and url)"
ct=$(curl -sS -m 5 "http://127.0.0.1:$FLAG_PORT/_requests" | "$PY" -I -S -c '
import json, sys
print(" ".join(r["headers"].get("Content-Type", "-") for r in json.load(sys.stdin)))')
assert_eq "application/json application/json" "$ct" "the step's headers go with both requests"
assert_eq "id" "$(cols hf)" "rollback-plan: every phase reverted"
assert_eq "rolled_back expand=rolled_back flag=rolled_back later=rolled_back" \
	"$(plan_states http-flag)" "rollback-plan: states"
assert_eq "reverted" "$(psql_q "SELECT s.state FROM phasegate.steps s JOIN phasegate.runs r
	ON r.id = s.run_id WHERE r.plan = 'http-flag' AND s.kind = 'http'")" "the http step is reverted"

# fixed: apply again -> a new run flips the flag on again, once
fake_mode "$HEALTH_PORT" healthy
assert_exit 0 phg apply "$T/flag.yaml"
assert_eq "$ON"$'\n'"$OFF"$'\n'"$ON" "$(flag_log "$FLAG_PORT")" "apply again: one more PUT (on)"
assert_eq "id,a,b" "$(cols hf)" "the plan completed"
assert_eq "completed expand=applied flag=applied later=applied" "$(plan_states http-flag)"
# and nothing more is sent by an apply of a completed plan
assert_exit 0 phg apply "$T/flag.yaml"
assert_eq 3 "$(flag_log "$FLAG_PORT" | wc -l)" "a completed plan sends nothing"

# ---------------------------------------------------------------- 2. answered 500
fake_clear "$FLAG_PORT"
fake_mode "$FLAG_PORT" status:500
psql_q "CREATE TABLE h5 (id int PRIMARY KEY)" >/dev/null
cat >"$T/h500.yaml" <<'EOF'
version: 1
name: http-500
phases:
  - name: before
    steps:
      - add_column: { table: h5, column: a, type: int }
  - name: flip
    steps:
      - add_column: { table: h5, column: b, type: int }
      - http:
          method: PUT
          url: "http://127.0.0.1:${FLAG_PORT}/flags/f500"
          body: '{"enabled": true}'
          revert: { body: '{"enabled": false}' }
EOF
assert_exit 3 phg apply "$T/h500.yaml"
assert_file_contains "$T/err" "HTTP 500"
assert_eq "id,a" "$(cols h5)" "500: the phase's add_column reverted, the earlier phase kept"
assert_eq "failed before=applied flip=rolled_back" "$(plan_states http-500)" "500: states"
assert_eq 'PUT /flags/f500 {"enabled": true}' "$(flag_log "$FLAG_PORT" | head -n 1)" \
	"500: the request was sent once"
assert_eq 1 "$(flag_log "$FLAG_PORT" | grep -c 'true}$')" "500: one request, not retried"
printf '500: requests seen: %s\n' "$(flag_log "$FLAG_PORT" | tr '\n' ';')"

# ---------------------------------------------------------------- 3. no revert
fake_clear "$FLAG_PORT"
fake_mode "$FLAG_PORT" healthy
psql_q "CREATE TABLE hn (id int PRIMARY KEY)" >/dev/null
cat >"$T/norev.yaml" <<'EOF'
version: 1
name: http-norevert
phases:
  - name: one
    steps:
      - add_column: { table: hn, column: a, type: int }
  - name: two
    steps:
      - http: { method: POST, url: "http://127.0.0.1:${FLAG_PORT}/flags/once", body: "on" }
EOF
assert_exit 0 phg apply "$T/norev.yaml"
assert_eq "POST /flags/once on" "$(flag_log "$FLAG_PORT")" "no revert: sent once"
before=$(psql_q "SELECT s.state || ':' || s.updated_at FROM phasegate.steps s JOIN phasegate.runs r
	ON r.id = s.run_id WHERE r.plan = 'http-norevert' ORDER BY s.phase_idx, s.idx")
assert_exit 4 phg rollback "$T/norev.yaml"
assert_file_contains "$T/err" 'step 1 (http) of phase "two"' "rollback names the step"
assert_eq "POST /flags/once on" "$(flag_log "$FLAG_PORT")" "no revert: rollback sent nothing"
assert_eq "id,a" "$(cols hn)" "no revert: rollback touched nothing"
assert_eq "completed one=applied two=applied" "$(plan_states http-norevert)" "no revert: states unchanged"
assert_eq "$before" "$(psql_q "SELECT s.state || ':' || s.updated_at FROM phasegate.steps s
	JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'http-norevert'
	ORDER BY s.phase_idx, s.idx")" "no revert: no step row changed"

# ---------------------------------------------------------------- 4. kill -9, resume
fake_clear "$FLAG_PORT"
psql_q "CREATE TABLE hk (id int PRIMARY KEY)" >/dev/null
cat >"$T/kill.yaml" <<'EOF'
version: 1
name: http-kill
phases:
  - name: flip
    steps:
      - http:
          method: PUT
          url: "http://127.0.0.1:${FLAG_PORT}/flags/k"
          body: '{"enabled": true}'
          revert: { body: '{"enabled": false}' }
      - sql: { up: "SELECT pg_sleep(8)", down: "SELECT 1" }
      - add_column: { table: hk, column: a, type: int }
EOF
sleeper() {
	psql_q "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
		AND state = 'active' AND query LIKE '%pg_sleep(8)%' AND pid <> pg_backend_pid()"
}
sleeping() { [[ -n $(sleeper) ]]; }
bg_run kill_apply "$PHASEGATE" apply "$T/kill.yaml"
apply_pid=$BG_PID
wait_for -t 15 sleeping
assert_eq 'PUT /flags/k {"enabled": true}' "$(flag_log "$FLAG_PORT")" "kill: the request was sent"
assert_eq "applied running" "$(psql_q "SELECT string_agg(s.state, ' ' ORDER BY s.idx)
	FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id
	WHERE r.plan = 'http-kill' AND s.idx < 2")" "kill: the http step is recorded as applied"
kill -KILL "$apply_pid"
wait "$apply_pid" 2>/dev/null || true
# the orphaned statement would run on for its 8 s: end it
pid=$(sleeper)
[[ -z $pid ]] || psql_q "SELECT pg_terminate_backend($pid)" >/dev/null
assert_exit 0 phg apply "$T/kill.yaml"
assert_eq 'PUT /flags/k {"enabled": true}' "$(flag_log "$FLAG_PORT")" "kill: resume did not send it again"
assert_eq "id,a" "$(cols hk)" "kill: the rest of the phase ran"
assert_eq "completed flip=applied" "$(plan_states http-kill)"

pass
