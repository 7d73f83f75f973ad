#!/usr/bin/env bash
# test_gates_status_events.sh - every probe's outcome and latency goes to the
# event log, and `status` shows the last result per check (issue 3, "HTTP
# health checks").
#
# Plan "se-pass": check api against a fake service answering after 150 ms,
# check db against a fast one; phase watched by api, verified by both.
#   - each probe is an event kind 'probe' whose data holds check, gate, ok,
#     status, latency_ms; one event per request the services answered (a
#     request cut short when its gate stopped has none);
#   - latency_ms is the service's: >= 150 for api, small for db;
#   - status --json: checks.<name> = the last probe event of that check;
#     `status` prints a line per check.
# Plan "se-fail": db answers 500, gone is a closed port: the failing results
# (HTTP 500 with its reason; no answer: status 0, connection refused) are in
# the events and in both status outputs.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || fail "FAKEHTTP is not set (build target fakehttp)"

fake_start() {
	bg_run "fake_$1" "$FAKEHTTP" --port 0 --port-file "$T/$1.port" --mode "${2:-healthy}"
	wait_for -t 10 test -s "$T/$1.port"
	FAKE_PORT=$(cat "$T/$1.port")
}
fake_mode() { curl -sS -m 5 -X PUT --data-binary "$2" "http://127.0.0.1:$1/_mode" >/dev/null; }
fake_count() { curl -sS -m 5 "http://127.0.0.1:$1/_count"; }
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
py() { "$PY" -I -S -c "$@"; }

new_db gates_status_events
fake_start api slow:150
API_PORT=$FAKE_PORT
fake_start db
DB_PORT=$FAKE_PORT
fake_start gone
GONE_PORT=$FAKE_PORT
_phg_kill "$BG_PID"
export API_PORT DB_PORT GONE_PORT
psql_q "CREATE TABLE se (id int PRIMARY KEY)" >/dev/null

cat >"$T/pass.yaml" <<'EOF'
version: 1
name: se-pass
checks:
  api: { url: "http://127.0.0.1:${API_PORT}/healthz", interval: 200ms, timeout: 2s, successes: 3 }
  db: { url: "http://127.0.0.1:${DB_PORT}/healthz", interval: 200ms, successes: 3 }
phases:
  - name: one
    watch: [api]
    steps:
      - sql: { up: "SELECT pg_sleep(1)", down: "SELECT 1" }
      - add_column: { table: se, column: a, type: int }
    verify: [api, db]
EOF
assert_exit 0 phg apply "$T/pass.yaml"

# probe events of a plan's last run: one line per event
probes() {
	psql_q "SELECT concat_ws(' ', e.data->>'check', e.data->>'gate', e.data->>'ok',
		e.data->>'status', e.data->>'latency_ms', e.data ? 'reason')
		FROM phasegate.events e WHERE e.kind = 'probe' AND e.run_id = (SELECT max(id)
		FROM phasegate.runs WHERE plan = '$1') ORDER BY e.id"
}
probes se-pass >"$T/pass.probes"
n_api=$(grep -c '^api ' "$T/pass.probes" || true)
n_db=$(grep -c '^db ' "$T/pass.probes" || true)
((n_api >= 3 + 3)) || fail "only $n_api probe events of api (a 1 s watch and a verify of 3)"
assert_eq 3 "$n_db" "db: verify passes on its 3rd success, one event each"
# one event per answered request: a probe in flight when its gate stopped
# (at most one per gate) is the only one without an event
c_api=$(fake_count "$API_PORT")
((c_api >= n_api && c_api <= n_api + 2)) ||
	fail "api: the service answered $c_api probes, the event log has $n_api"
assert_eq "$n_db" "$(fake_count "$DB_PORT")" "db: one event per probe"
# every field, every event
while read -r check gate ok status lat has_reason; do
	[[ $gate == watch || $gate == verify ]] || fail "probe event with gate '$gate'"
	assert_eq "true 200 t" "$ok $status $has_reason" "probe event of $check: ok, status, reason key"
	[[ $lat =~ ^[0-9]+$ ]] || fail "probe event of $check: latency_ms '$lat'"
	if [[ $check == api ]]; then
		((lat >= 140 && lat < 2000)) || fail "api answers after 150 ms, its event says $lat ms"
	else
		((lat < 140)) || fail "db answers at once, its event says $lat ms"
	fi
done <"$T/pass.probes"
grep -q '^api watch ' "$T/pass.probes" || fail "no watch probe of api"
grep -q '^api verify ' "$T/pass.probes" || fail "no verify probe of api"
# the event's message says it too
assert_contains "$(psql_q "SELECT message FROM phasegate.events WHERE kind = 'probe'
	AND data->>'check' = 'db' ORDER BY id DESC LIMIT 1")" 'check "db": pass (HTTP 200'

# ---- status --json and status: the last probe of each check
last_event() {
	psql_q "SELECT concat_ws(' ', e.data->>'ok', e.data->>'status', e.data->>'latency_ms')
		FROM phasegate.events e WHERE e.kind = 'probe' AND e.data->>'check' = '$2'
		AND e.run_id = (SELECT max(id) FROM phasegate.runs WHERE plan = '$1')
		ORDER BY e.id DESC LIMIT 1"
}
json_check() { # FILE CHECK -> "ok status latency_ms" as in the events
	py 'import json, sys
c = json.load(open(sys.argv[1]))["checks"][sys.argv[2]]
assert c.get("at"), c
print(str(c["ok"]).lower(), c["status"], c["latency_ms"])' "$1" "$2"
}
assert_exit 0 phg status "$T/pass.yaml" --json
cp "$T/out" "$T/pass.json"
for c in api db; do
	assert_eq "$(last_event se-pass "$c")" "$(json_check "$T/pass.json" "$c")" \
		"status --json checks.$c is its last probe event"
done
assert_exit 0 phg status "$T/pass.yaml"
read -r _ _ lat < <(last_event se-pass api)
grep -E "^check: +api +last .*: pass, HTTP 200, $lat ms" "$T/out" >/dev/null ||
	fail "status does not show api's last probe (pass, HTTP 200, $lat ms): $(cat "$T/out")"
grep -E '^check: +db +last .*: pass, HTTP 200, [0-9]+ ms' "$T/out" >/dev/null ||
	fail "status does not show db's last probe: $(cat "$T/out")"

# ---------------------------------------------------------------- failing
fake_mode "$DB_PORT" status:500
cat >"$T/fail.yaml" <<'EOF'
version: 1
name: se-fail
checks:
  db: { url: "http://127.0.0.1:${DB_PORT}/healthz", interval: 200ms, failures: 3 }
  gone: { url: "http://127.0.0.1:${GONE_PORT}/healthz", interval: 200ms, failures: 3 }
phases:
  - name: one
    steps:
      - add_column: { table: se, column: b, type: int }
    verify: [db, gone]
EOF
assert_exit 3 phg apply "$T/fail.yaml"
psql_q "SELECT concat_ws(' ', data->>'check', data->>'ok', data->>'status', data->>'reason')
	FROM phasegate.events WHERE kind = 'probe' AND run_id = (SELECT max(id) FROM phasegate.runs
	WHERE plan = 'se-fail') ORDER BY id" >"$T/fail.probes"
grep -q '^db false 500 HTTP 500, want 2xx$' "$T/fail.probes" ||
	fail "no event of db's failing probe (false 500 'HTTP 500, want 2xx'): $(cat "$T/fail.probes")"
grep -q '^gone false 0 .*refused' "$T/fail.probes" ||
	fail "no event of gone's failing probe (false 0 'connection refused'): $(cat "$T/fail.probes")"
if grep -q ' true ' "$T/fail.probes"; then
	fail "a probe of se-fail passed: $(cat "$T/fail.probes")"
fi
assert_exit 0 phg status "$T/fail.yaml" --json
cp "$T/out" "$T/fail.json"
assert_eq "false 500 HTTP 500, want 2xx" "$(py 'import json, sys
c = json.load(open(sys.argv[1]))["checks"]["db"]
print(str(c["ok"]).lower(), c["status"], c["reason"])' "$T/fail.json")" "status --json checks.db"
assert_eq "false 0 yes" "$(py 'import json, sys
c = json.load(open(sys.argv[1]))["checks"]["gone"]
print(str(c["ok"]).lower(), c["status"], "yes" if "refused" in c["reason"] else c["reason"])' "$T/fail.json")" \
	"status --json checks.gone"
assert_exit 0 phg status "$T/fail.yaml"
grep -E '^check: +db +last .*: FAIL, HTTP 500, [0-9]+ ms: HTTP 500, want 2xx' "$T/out" >/dev/null ||
	fail "status does not show db's failing probe: $(cat "$T/out")"
grep -E '^check: +gone +last .*: FAIL, .*refused' "$T/out" >/dev/null ||
	fail "status does not show gone's failing probe: $(cat "$T/out")"
# the passing plan's status still shows its own checks
assert_exit 0 phg status "$T/pass.yaml" --json
assert_eq "$(json_check "$T/pass.json" db)" "$(json_check "$T/out" db)" \
	"status of se-pass is not affected by se-fail's probes"

# ---------------------------------------------------------------- a slow event log
# Events are written on the second connection, one INSERT per event, queued
# behind each other; with a database 50 ms away (here: a trigger that makes
# each insert take 50 ms) that queue lags behind the run.  When phasegate
# exits, every event of the run is in the log all the same: nothing queued
# is dropped.
psql_q "CREATE TABLE se2 (id int PRIMARY KEY);
	CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS
	\$\$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END \$\$;
	CREATE TRIGGER slow_event BEFORE INSERT ON phasegate.events
	FOR EACH ROW EXECUTE FUNCTION slow_event()" >/dev/null
fake_mode "$DB_PORT" status:503
cat >"$T/slowlog.yaml" <<'EOF'
version: 1
name: se-slowlog
checks:
  db: { url: "http://127.0.0.1:${DB_PORT}/healthz", interval: 200ms, failures: 2 }
phases:
  - name: one
    steps:
      - add_column: { table: se2, column: a, type: int }
    verify: [db]
EOF
c0=$(fake_count "$DB_PORT")
assert_exit 3 phg apply "$T/slowlog.yaml"
n_probes=$(($(fake_count "$DB_PORT") - c0))
psql_q "SELECT e.kind || ': ' || e.message FROM phasegate.events e
	WHERE e.run_id = (SELECT max(id) FROM phasegate.runs WHERE plan = 'se-slowlog')
	ORDER BY e.id" >"$T/slowlog.events"
assert_eq "$n_probes" "$(grep -c '^probe: ' "$T/slowlog.events" || true)" \
	"slow event log: one probe event per probe (events: $(tr '\n' ';' <"$T/slowlog.events"))"
assert_file_contains "$T/slowlog.events" "gate_failed: " "slow event log: gate_failed"
assert_file_contains "$T/slowlog.events" "phase_state: phase failed -> rolled_back" \
	"slow event log: the phase's rollback"
tail -n 1 "$T/slowlog.events" | grep -E '^run_state: run .* -> failed$' >/dev/null ||
	fail "slow event log: the last event is not the run's final state: $(tail -n 3 "$T/slowlog.events")"

pass
