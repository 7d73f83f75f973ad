#!/usr/bin/env bash
# test_core_events.sh - the event stream (issue 14, first slice).
#  1. `--log-format json`: every line on stderr of a real run (a backup, a
#     backfill long enough to report progress, a DDL statement that waits
#     for a lock an app session holds, verify gates probing a real HTTP
#     service, then a release whose gate fails and is rolled back) is one
#     JSON object that validates against docs/events.schema.json; the kinds
#     the issue lists are there with their data; the last line is the exit.
#  2. `events PLAN`: the recorded events, as text and --json (same schema);
#     --run N; --follow started before a run ends when the run does, having
#     printed its completion.
#  3. Plan diagnostics: in JSON on --log-format json; `validate --format
#     github` annotations and `--format json`.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

PY=/usr/bin/python3
"$PY" -c 'import jsonschema' 2>/dev/null || fail "python3-jsonschema is missing (scripts/bootstrap.sh installs it)"
SCHEMA=$PHG_SOURCE_DIR/docs/events.schema.json

# validate_lines FILE - every line is one object valid against the schema;
# prints the kinds seen (type:kind or type:level), one per line
validate_lines() {
	"$PY" - "$SCHEMA" "$1" <<'PYEOF'
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
seen = []
for n, line in enumerate(open(sys.argv[2]), 1):
    try:
        o = json.loads(line)
    except ValueError as e:
        sys.exit("line %d is not JSON (%s): %r" % (n, e, line[:200]))
    errs = sorted(v.iter_errors(o), key=lambda e: e.path)
    if errs:
        sys.exit("line %d does not match the schema: %s\n%s" % (n, errs[0].message, line[:400]))
    seen.append(o["type"] + ":" + (o.get("kind") or o.get("level")))
print("\n".join(seen))
PYEOF
}

fake_http fake healthy
port=$FAKE_PORT

new_db core_events
psql_q "CREATE TABLE ev (id int PRIMARY KEY, a int); INSERT INTO ev SELECT g, g FROM generate_series(1, 3000) g" >/dev/null
slow_updates ev 0.4
cat >"$T/plan.yaml" <<YAML
version: 1
name: events-plan
settings: { lock_timeout: 200ms, lock_retries: 30, throttle: off }
checks:
  api: { url: "http://127.0.0.1:$port/healthz", interval: 100ms, successes: 1 }
backup: { dir: "$T/backups" }
phases:
  - name: expand
    backup: true
    steps:
      - add_column: { table: ev, column: b, type: int }
    verify: [api]
  - name: fill
    steps:
      - backfill: { table: ev, set: "b = a", batch_size: 300 }
    verify: [api]
YAML

# an app transaction holds a lock on the table when the apply starts: the
# add_column waits (lock retries, naming the blocker), then goes on
bg_run locker psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE ev IN ACCESS SHARE MODE; SELECT pg_sleep(1.5); COMMIT"
locked() { [[ $(psql_q "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'ev' AND l.mode = 'AccessShareLock' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())") -ge 1 ]]; }
wait_for -t 10 locked

# events --follow from before the run is there: it waits for nothing, so
# start it once the run exists
bg_run apply "$PHASEGATE" --log-format json apply "$T/plan.yaml"
apply_pid=$BG_PID
run_exists() { [[ $(psql_q "SELECT coalesce(to_regclass('phasegate.runs')::text, '')") != "" && $(psql_q "SELECT count(*) FROM phasegate.runs") -ge 1 ]]; }
wait_for -t 20 run_exists
"$PHASEGATE" events "$T/plan.yaml" --follow >"$T/follow.out" 2>"$T/follow.err" &
follow_pid=$!
rc=0
wait "$apply_pid" || rc=$?
assert_eq 0 "$rc" "the apply succeeded"
rc=0
wait "$follow_pid" || rc=$?
assert_eq 0 "$rc" "events --follow ended with the run"
assert_file_contains "$T/follow.out" "run_state: run running -> completed"
assert_eq completed "$(psql_q "SELECT state FROM phasegate.runs")" "the run completed"

stream=$T/apply.err
kinds=$(validate_lines "$stream") || fail "the --log-format json stream: $kinds"
for k in event:run_started event:run_state event:phase_state event:step_state event:probe \
	event:gate_passed event:backup event:lock_retry event:backfill_progress event:backfill_done \
	event:exit log:info log:warning; do
	grep -qx "$k" <<<"$kinds" || fail "the stream has no $k" "$(sort <<<"$kinds" | uniq -c)"
done
assert_eq "event:exit" "$(tail -1 <<<"$kinds")" "the exit is the last line"
"$PY" - "$stream" <<'PYEOF' || fail "the data of the events"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ev = {}
for o in lines:
    if o["type"] == "event":
        ev.setdefault(o["kind"], []).append(o)
assert ev["exit"][-1]["data"] == {"code": 0, "outcome": "success"}, ev["exit"]
assert all(o["plan"] == "events-plan" and o["run_id"] == 1 and o["checksum"].startswith("sha256:")
           for o in lines if o["type"] == "event" and o["kind"] != "exit"), "every event names its run"
lr = ev["lock_retry"][0]["data"]
assert lr["attempt"] >= 1 and any(b["application_name"] == "psql" for b in lr["blockers"]), lr
assert lr["waited_ms"] >= 150, lr  # the attempt waited its lock_timeout (200ms)
p = ev["backfill_progress"][0]["data"]
assert p["rows"] > 0 and p["batch_size"] > 0 and p["rows_per_s"] >= 0, p
assert p["high_water"] == ["3000"] and p["estimate"] == 3000, p  # the key range fixed at the start
d = ev["backfill_done"][0]["data"]
assert d["rows"] == 3000 and d["percent"] == 100, d
b = ev["backup"][0]["data"]
assert b["size"] > 0 and b["sha256"].startswith("sha256:"), b
pr = ev["probe"][0]["data"]
assert pr["check"] == "api" and pr["ok"] is True and pr["status"] == 200 and "soak_left_ms" in pr, pr
st = [o for o in ev["step_state"] if o["phase"] == "fill"]
assert st[0]["step"] == 1 and st[0]["step_kind"] == "backfill" and st[0]["data"]["to"] == "running", st[0]
PYEOF

# events: text, --json (the same schema), --run
assert_exit 0 phg events "$T/plan.yaml"
assert_file_contains "$T/out" "run 1 [expand] phase_state: phase pending -> running"
assert_file_contains "$T/out" "lock_retry: lock not available"
assert_exit 0 phg events "$T/plan.yaml" --json --run 1
cp "$T/out" "$T/events.jsonl"
kinds=$(validate_lines "$T/events.jsonl") || fail "events --json: $kinds"
grep -qx "event:backfill_progress" <<<"$kinds" || fail "events --json has the progress"
assert_eq "$(grep -c '"type":"event"' "$stream" | xargs)" "$(($(wc -l <"$T/events.jsonl") + 1))" \
	"events --json has every event the stream had (but the exit)"
assert_exit 1 phg events "$T/plan.yaml" --run 99
assert_file_contains "$T/err" "has no run 99"
assert_exit 2 phg events "$T/plan.yaml" --run x

# a release whose gate fails: gate_failed, the rollback, exit 3 as the last line
curl -sS -m 5 -X PUT --data 'status:503' "http://127.0.0.1:$port/_mode" >/dev/null
sed -e 's/name: events-plan/name: events-fail/' -e 's/column: b/column: c/' -e 's/b = a/c = a/' \
	-e 's/backup: true/backup: false/' "$T/plan.yaml" >"$T/fail.yaml"
"$PHASEGATE" --log-format json apply "$T/fail.yaml" 2>"$T/fail.jsonl" && fail "a failing gate passed"
kinds=$(validate_lines "$T/fail.jsonl") || fail "the failing run's stream: $kinds"
grep -qx "event:gate_failed" <<<"$kinds" || fail "no gate_failed event"
assert_contains "$(tail -1 "$T/fail.jsonl")" '"data":{"code":3,"outcome":"rolled_back"}' "the exit says rolled back"

# plan diagnostics: JSON on --log-format json; validate --format github|json
printf 'version: 1\nname: bad\nphases:\n  - name: one\n    steps:\n      - add_column: { table: t, column: c }\n' >"$T/bad.yaml"
"$PHASEGATE" --log-format json validate "$T/bad.yaml" 2>"$T/bad.jsonl" && fail "an invalid plan validated"
kinds=$(validate_lines "$T/bad.jsonl") || fail "diagnostics in JSON: $kinds"
assert_contains "$(head -1 "$T/bad.jsonl")" '"line":6' "a diagnostic carries its line"
assert_exit 2 phg validate "$T/bad.yaml" --format github
assert_file_contains "$T/out" "::error file=$T/bad.yaml,line=6,col="
assert_file_contains "$T/out" 'missing required key "type"'
assert_exit 0 phg validate "$T/plan.yaml" --format github
assert_file_contains "$T/out" "::notice file="
assert_exit 2 phg validate "$T/bad.yaml" --format json
"$PY" -c '
import json, sys
o = json.load(open(sys.argv[1]))
assert o["valid"] is False and o["diagnostics"][0]["line"] == 6 and o["diagnostics"][0]["severity"] == "error", o' "$T/out" ||
	fail "validate --format json"
assert_exit 2 phg validate "$T/plan.yaml" --format yaml
assert_exit 2 phg status "$T/plan.yaml" --format json
assert_file_contains "$T/err" "not valid here"
pass
