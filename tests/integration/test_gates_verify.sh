#!/usr/bin/env bash
# test_gates_verify.sh - a failing verify gate rolls its phase back (SPEC
# section 2 "Gates", docs/plan-format.md "checks").
#
# Phase "one" adds column a; phase "two" adds column b and is verified by a
# check that fails in one way per case: HTTP 503, a hang past `timeout`, a
# connection reset, a closed port, an answer slower than `max_latency`, an
# `expect_json` mismatch, and an `expect_body` mismatch.  Each: exit 3, b is
# gone, a is kept, run failed, phase two rolled_back, the reason logged.
#
# Headers: `Authorization: "Bearer ${PHG_TEST_TOKEN}"` arrives expanded at
# the service; the token is in no output of phasegate (apply, plan, status,
# status --json) and nowhere in the state schema.  An unset variable in a
# header fails with an error naming the variable (and the header).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || fail "FAKEHTTP is not set (build target fakehttp)"

fake_start() {
	bg_run "fake_$1" "$FAKEHTTP" --port 0 --port-file "$T/$1.port" --mode "${2:-healthy}"
	wait_for -t 10 test -s "$T/$1.port"
	FAKE_PORT=$(cat "$T/$1.port")
}
fake_mode() { curl -sS -m 5 -X PUT --data-binary "$2" "http://127.0.0.1:$1/_mode" >/dev/null; }
fake_get() { curl -sS -m 5 "http://127.0.0.1:$1$2"; }
# python3 for JSON (a pyenv shim can take a second to start: prefer the system one)
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
py() { "$PY" -I -S -c "$@"; }
now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((10#$t / 1000))
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

new_db gates_verify
fake_start api
API_PORT=$FAKE_PORT
# a closed port: a fake service's, after it stopped
fake_start gone
CLOSED_PORT=$FAKE_PORT
_phg_kill "$BG_PID"
export API_PORT CLOSED_PORT

# case NAME MODE CHECK_YAML REASON... - phase two verified by CHECK_YAML
# (`url` is added) against the fake service in MODE: exit 3 with each REASON
# in stderr, b reverted, a kept.
case_fails() {
	local name=$1 mode=$2 check=$3 tbl=v_$1 url t0 ms
	shift 3
	url="http://127.0.0.1:\${API_PORT}/healthz"
	if [[ $mode == closed ]]; then
		url="http://127.0.0.1:\${CLOSED_PORT}/healthz"
	else
		fake_mode "$API_PORT" "$mode"
	fi
	psql_q "CREATE TABLE $tbl (id int PRIMARY KEY); INSERT INTO $tbl VALUES (1), (2)" >/dev/null
	cat >"$T/$name.yaml" <<EOF
version: 1
name: verify-$name
checks:
  chk: { url: "$url", interval: 200ms, failures: 2, $check }
phases:
  - name: one
    steps:
      - add_column: { table: $tbl, column: a, type: int }
  - name: two
    steps:
      - add_column: { table: $tbl, column: b, type: int, default: "7" }
    verify: [chk]
EOF
	t0=$(now_ms)
	assert_exit 3 phg apply "$T/$name.yaml"
	ms=$(($(now_ms) - t0))
	for r in "$@"; do
		assert_file_contains "$T/err" "$r" "$name: the reason is logged"
	done
	assert_eq "id,a" "$(cols "$tbl")" "$name: phase two's column reverted, phase one's kept"
	assert_eq 2 "$(psql_q "SELECT count(*) FROM $tbl")" "$name: rows untouched"
	assert_eq "failed one=applied two=rolled_back" "$(plan_states "verify-$name")" "$name: states"
	assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r
		ON r.id = e.run_id WHERE r.plan = 'verify-$name' AND e.kind = 'gate_failed'")" \
		"$name: one gate_failed event"
	assert_eq "2" "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r
		ON r.id = e.run_id WHERE r.plan = 'verify-$name' AND e.kind = 'probe'
		AND NOT (e.data->>'ok')::boolean")" "$name: failures: 2 -> two failed probes, then the gate fails"
	printf '%-10s exit 3 after %5d ms\n' "$name" "$ms"
	LAST_MS=$ms
}

case_fails status503 status:503 "timeout: 1s" 'check "chk" failed 2 times in a row' "HTTP 503"
case_fails hang hang "timeout: 300ms" 'check "chk" failed 2 times in a row' "timed out after 300 ms"
# two probes of at most 300 ms each: not the default timeout (2 s each)
((LAST_MS < 3500)) || fail "hang: the gate took ${LAST_MS} ms with timeout 300ms"
case_fails reset reset "timeout: 1s" 'check "chk" failed 2 times in a row' "connection reset"
case_fails closed closed "timeout: 1s" 'check "chk" failed 2 times in a row' "connection refused"
case_fails slow slow:600 "timeout: 2s, max_latency: 200ms" "too slow" "max_latency 200 ms"
case_fails json 'body:{"status":"degraded"}' "expect_json: { status: ok }" \
	'expect_json "status": got "degraded", want "ok"'
case_fails body 'body:{"status":"degraded"}' "expect_body: '\"status\":\"ok\"'" "body does not contain"

# ---------------------------------------------------------------- headers
fake_mode "$API_PORT" healthy
curl -sS -m 5 -X DELETE "http://127.0.0.1:$API_PORT/_requests" >/dev/null
PHG_TEST_TOKEN="s3cr3t-$RANDOM-tok3n"
export PHG_TEST_TOKEN
psql_q "CREATE TABLE h (id int PRIMARY KEY)" >/dev/null
cat >"$T/hdr.yaml" <<'EOF'
version: 1
name: verify-headers
checks:
  chk:
    url: "http://127.0.0.1:${API_PORT}/healthz"
    headers: { Authorization: "Bearer ${PHG_TEST_TOKEN}", X-Plain: plain }
    interval: 200ms
    successes: 2
phases:
  - name: one
    steps:
      - add_column: { table: h, column: a, type: int }
    verify: [chk]
EOF
assert_exit 0 phg apply "$T/hdr.yaml"
cat "$T/out" "$T/err" >"$T/hdr.outputs"
reqs=$(fake_get "$API_PORT" /_requests)
assert_eq "2 Bearer $PHG_TEST_TOKEN|plain" "$(py '
import json, sys
reqs = [r for r in json.loads(sys.argv[1]) if r["path"] == "/healthz"]
auth = {r["headers"].get("Authorization") for r in reqs}
print(len(reqs), "|".join(sorted(auth)) + "|" + reqs[0]["headers"].get("X-Plain", "?"))' "$reqs")" \
	"the header arrives expanded with every probe"
# now a failing verify (its reason and detail are printed and stored)
psql_q "CREATE TABLE h2 (id int PRIMARY KEY)" >/dev/null
sed -e 's/verify-headers/verify-headers-fail/' -e 's/table: h,/table: h2,/' "$T/hdr.yaml" >"$T/hdr2.yaml"
fake_mode "$API_PORT" status:401
assert_exit 3 phg apply "$T/hdr2.yaml"
cat "$T/out" "$T/err" >>"$T/hdr.outputs"
for f in hdr hdr2; do
	assert_exit 0 phg status "$T/$f.yaml"
	cat "$T/out" "$T/err" >>"$T/hdr.outputs"
	assert_exit 0 phg status "$T/$f.yaml" --json
	cat "$T/out" "$T/err" >>"$T/hdr.outputs"
	assert_exit 0 phg plan "$T/$f.yaml"
	cat "$T/out" "$T/err" >>"$T/hdr.outputs"
done
assert_exit 0 phg history
cat "$T/out" "$T/err" >>"$T/hdr.outputs"
assert_file_contains "$T/hdr.outputs" "verify-headers-fail" "the outputs were collected"
assert_file_not_contains "$T/hdr.outputs" "$PHG_TEST_TOKEN" "the token is in phasegate's output"
psql_q "SELECT e::text FROM phasegate.events e" >"$T/events.txt"
psql_q "SELECT r::text FROM phasegate.runs r" >>"$T/events.txt"
psql_q "SELECT s::text FROM phasegate.steps s" >>"$T/events.txt"
assert_file_contains "$T/events.txt" "HTTP 401" "the failing probes are in the event log"
assert_file_not_contains "$T/events.txt" "$PHG_TEST_TOKEN" "the token is in the state schema"
assert_eq "id,a" "$(cols h)" "headers: phase applied"
assert_eq "id" "$(cols h2)" "headers: failed phase reverted"

# ---------------------------------------------------------------- unset variable
fake_mode "$API_PORT" healthy
psql_q "CREATE TABLE u (id int PRIMARY KEY)" >/dev/null
sed -e 's/verify-headers/verify-unset/' -e 's/table: h,/table: u,/' \
	-e 's/PHG_TEST_TOKEN/PHG_TEST_UNSET_VAR/' "$T/hdr.yaml" >"$T/unset.yaml"
unset PHG_TEST_UNSET_VAR
assert_exit '!' phg apply "$T/unset.yaml"
unset_exit=$LAST_EXIT
assert_file_contains "$T/err" "PHG_TEST_UNSET_VAR" "the error names the variable"
assert_file_contains "$T/err" "Authorization" "the error names the header"
printf 'unset header variable: exit %d: %s\n' "$unset_exit" "$(grep -m1 PHG_TEST_UNSET_VAR "$T/err")"
# refused before anything is touched: exit 2, no run recorded, no step ran
assert_eq 2 "$unset_exit" "an unset header variable is refused up front: exit 2"
assert_eq "id" "$(cols u)" "unset variable: nothing of the phase ran"
assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'verify-unset'")" \
	"unset variable: no run recorded"

pass
