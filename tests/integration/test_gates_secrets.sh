#!/usr/bin/env bash
# test_gates_secrets.sh - no reflected secret (issue 15): a server that
# echoes the request headers in its error body puts an expanded ${TOKEN} in
# what a failing http step reports.  Every value expanded from a ${VAR} is
# masked ("***") in the log (text and --log-format json), the events, the
# run's recorded error, status, history, events and the report -- while the
# request itself still carried the real value.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

fake_http fake echo:500
port=$FAKE_PORT
export PHG_SECRET_TOKEN=tok-Secret-4711-xyz

new_db gates_secrets
psql_q "CREATE TABLE s (id int PRIMARY KEY)" >/dev/null
cat >"$T/plan.yaml" <<YAML
version: 1
name: secrets
phases:
  - name: expand
    steps:
      - add_column: { table: s, column: c, type: int }
  - name: flag
    steps:
      - http:
          method: PUT
          url: "http://127.0.0.1:$port/flags/x"
          headers: { Authorization: "Bearer \${PHG_SECRET_TOKEN}" }
          body: '{"enabled": true}'
YAML
no_secret() { # WHAT FILE
	grep -q "$PHG_SECRET_TOKEN" "$2" && fail "$1 shows the secret" "$(grep -n "$PHG_SECRET_TOKEN" "$2" | head -3)"
	return 0
}
assert_exit 3 phg apply "$T/plan.yaml"
no_secret "the text log" "$T/err"
assert_file_contains "$T/err" "Bearer ***" "the echoed header is there, masked"
# the server did get the real value
curl -sS -m 5 "http://127.0.0.1:$port/_requests" | grep -q "Bearer $PHG_SECRET_TOKEN" ||
	fail "the request did not carry the token"

sed -i 's/name: secrets/name: secrets2/; s/column: c,/column: c2,/' "$T/plan.yaml"
"$PHASEGATE" --log-format json apply "$T/plan.yaml" 2>"$T/json.err" && fail "the failing step passed"
no_secret "the JSON log" "$T/json.err"
grep -q 'Bearer \*\*\*' "$T/json.err" || fail "the JSON log lost the masked echo"

assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.events WHERE message LIKE '%$PHG_SECRET_TOKEN%' OR data::text LIKE '%$PHG_SECRET_TOKEN%'")" \
	"no event holds the secret"
assert_eq 0 "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE coalesce(error, '') || coalesce(note, '') LIKE '%$PHG_SECRET_TOKEN%'")" \
	"no run's error or note holds the secret"
for cmd in "status $T/plan.yaml" "status $T/plan.yaml --json" "history --json" "events $T/plan.yaml --json"; do
	# shellcheck disable=SC2086
	phg $cmd >"$T/out" 2>"$T/err" || true
	no_secret "$cmd" "$T/out"
	no_secret "$cmd (stderr)" "$T/err"
done
assert_exit 0 phg report "$T/plan.yaml" -o "$T/r.html"
no_secret "the report" "$T/r.html"
pass
