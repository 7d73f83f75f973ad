#!/usr/bin/env bash
# test_gates_notify.sh - `notify:` webhooks (issue 14), against the fake HTTP
# service as the receiver.
#  1. start and completed reach the webhook as POSTs a Slack incoming
#     webhook takes (text, attachments with fields) with the event attached,
#     headers with ${VAR} expanded (the token never printed); `events`
#     filters; a second webhook that refuses connections is retried, logged
#     and does not fail the run.
#  2. a failing gate: gate_failed and rollback are sent; exit 3 as before.
#  3. a webhook that hangs (timeout) or answers 500 (retries, bounded) never
#     blocks or fails the run.
#  4. bad notify config is refused by validate; an unset ${VAR} is a warning.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

PY=/usr/bin/python3
fake_http hook healthy
HOOK_PORT=$FAKE_PORT
fake_http api healthy
API_PORT=$FAKE_PORT
# a port nothing listens on
DEAD_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
export HOOK_PORT HOOK_TOKEN=hook-Secret-93
hook_mode() { curl -sS -m 5 -X PUT --data "$1" "http://127.0.0.1:$HOOK_PORT/_mode" >/dev/null; }
hook_clear() { curl -sS -m 5 -X DELETE "http://127.0.0.1:$HOOK_PORT/_requests" >/dev/null; }
hook_requests() { curl -sS -m 5 "http://127.0.0.1:$HOOK_PORT/_requests"; }

new_db gates_notify
psql_q "CREATE TABLE n (id int PRIMARY KEY, a int); INSERT INTO n SELECT g, g FROM generate_series(1, 100) g" >/dev/null
plan() { # NAME COLUMN NOTIFY_YAML
	cat >"$T/$1.yaml" <<YAML
version: 1
name: $1
checks:
  api: { url: "http://127.0.0.1:$API_PORT/healthz", interval: 100ms, successes: 1, failures: 1 }
notify:
$3
phases:
  - name: expand
    steps:
      - add_column: { table: n, column: $2, type: int }
    verify: [api]
YAML
}

# ---- 1. start and completed, Slack's shape, headers, events filter, a dead hook
plan ok c1 "  - url: \"http://127.0.0.1:\${HOOK_PORT}/hook\"
    headers: { Authorization: \"Bearer \${HOOK_TOKEN}\" }
    events: [start, completed, gate_failed, rollback]
  - url: \"http://127.0.0.1:$DEAD_PORT/dead\"
    retries: 1
    timeout: 1s"
assert_exit 0 phg validate "$T/ok.yaml"
assert_exit 0 phg apply "$T/ok.yaml"
assert_file_contains "$T/err" "notification \"start\" to notify item 2 (http://127.0.0.1:$DEAD_PORT)"
assert_file_contains "$T/err" "not sent"
assert_file_not_contains "$T/err" "$HOOK_TOKEN"
hook_requests >"$T/hook.json"
"$PY" - "$T/hook.json" <<'PYEOF' || fail "what the webhook received" "$(cat "$T/hook.json")"
import json, sys
reqs = [r for r in json.load(open(sys.argv[1])) if r["path"] == "/hook"]
assert [r["method"] for r in reqs] == ["POST", "POST"], reqs
bodies = [json.loads(r["body"]) for r in reqs]
kinds = [b["phasegate"]["kind"] for b in bodies]
assert kinds == ["run_started", "run_state"], kinds
for r, b in zip(reqs, bodies):
    h = {k.lower(): v for k, v in r["headers"].items()}
    assert h["authorization"] == "Bearer hook-Secret-93", h
    assert h["content-type"].startswith("application/json"), h
    assert b["text"].startswith("phasegate: "), b["text"]
    f = {x["title"]: x["value"] for x in b["attachments"][0]["fields"]}
    assert f["plan"] == "ok" and f["run"] == "1", f
    assert b["phasegate"]["plan"] == "ok" and b["phasegate"]["run_id"] == 1, b["phasegate"]
assert "start of plan" in bodies[0]["text"] and bodies[0]["attachments"][0]["color"] == "good"
assert "completed of plan" in bodies[1]["text"] and bodies[1]["phasegate"]["data"]["to"] == "completed"
PYEOF

# ---- 2. a failing gate: gate_failed and rollback are sent, exit 3 --------
hook_clear
curl -sS -m 5 -X PUT --data 'status:503' "http://127.0.0.1:$API_PORT/_mode" >/dev/null
plan bad c2 "  - url: \"http://127.0.0.1:\${HOOK_PORT}/hook\"
    events: [gate_failed, rollback, failed]"
assert_exit 3 phg apply "$T/bad.yaml"
hook_requests >"$T/hook2.json"
assert_eq "gate_failed failed rollback" "$("$PY" -c '
import json, sys
reqs = [json.loads(r["body"]) for r in json.load(open(sys.argv[1])) if r["path"] == "/hook"]
print(" ".join(b["text"].split()[1] for b in reqs))' "$T/hook2.json")" "gate_failed, the run failed, then its automatic rollback"
assert_contains "$(cat "$T/hook2.json")" '\"color\":\"danger\"' "a failure is red"
curl -sS -m 5 -X PUT --data 'healthy' "http://127.0.0.1:$API_PORT/_mode" >/dev/null

# ---- 3. a hook that hangs, one that answers 500: bounded, the run goes on
hook_clear
hook_mode hang
plan hang c3 "  - url: \"http://127.0.0.1:\${HOOK_PORT}/hook\"
    timeout: 300ms
    retries: 0"
assert_exit 0 phg apply "$T/hang.yaml"
assert_file_contains "$T/err" "not sent"
assert_eq 1 "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'n'::regclass AND attname = 'c3'")" "applied despite a hanging hook"
hook_clear
hook_mode status:500
plan e500 c4 "  - url: \"http://127.0.0.1:\${HOOK_PORT}/hook\"
    events: [completed]
    retries: 2"
assert_exit 0 phg apply "$T/e500.yaml"
assert_file_contains "$T/err" "retrying in"
assert_file_contains "$T/err" "not sent: HTTP 500"
assert_eq 3 "$(hook_requests | "$PY" -c 'import json,sys; print(len([r for r in json.load(sys.stdin) if r["path"] == "/hook"]))')" \
	"one attempt and two retries"
hook_mode healthy

# ---- 4. bad config refused; an unset variable warned about --------------
plan badev c5 "  - url: \"http://127.0.0.1:\${HOOK_PORT}/hook\"
    events: [started]"
assert_exit 2 phg validate "$T/badev.yaml"
assert_file_contains "$T/err" 'unknown event "started" in notify item 1: expected one of start, gate_failed'
plan badurl c5 "  - url: \"ftp://example/hook\""
assert_exit 2 phg validate "$T/badurl.yaml"
assert_file_contains "$T/err" 'invalid url "ftp://example/hook" in notify item 1'
plan unset c5 "  - url: \"http://127.0.0.1:\${PHG_NO_SUCH_HOOK_PORT}/hook\""
assert_exit 0 phg apply "$T/unset.yaml"
assert_file_contains "$T/err" 'notify item 1 will not be sent: environment variable "PHG_NO_SUCH_HOOK_PORT" is not set'
pass
