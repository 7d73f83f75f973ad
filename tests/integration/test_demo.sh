#!/usr/bin/env bash
# test_demo.sh - the quickstart's demo service (examples/demo) against a real
# PostgreSQL: /healthz counts jobs, flags toggle, --buggy turns unhealthy
# once dual_write is on, --write-rate inserts rows (dual-writing new_status,
# falling back when it is gone), /stats counts, SIGTERM exits 0, and a
# restarted database is reconnected to.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

DEMO=${PHG_DEMO:-${PHG_BUILD_DIR:?}/examples/phasegate-demo}
[[ -x $DEMO ]] || fail "no demo binary at $DEMO"

new_db demo
psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, repo text NOT NULL,
	status varchar(20) NOT NULL DEFAULT 'queued',
	created_at timestamptz NOT NULL DEFAULT now());
	INSERT INTO jobs (repo) SELECT 'loom/seed-' || i FROM generate_series(1, 3) i" >/dev/null

# start_demo NAME ARGS... - run the demo in the background; sets PID, URL.
start_demo() {
	local name=$1
	shift
	bg_run "$name" "$DEMO" --port 0 --port-file "$T/$name.port" "$@"
	PID=$BG_PID
	wait_for -t 10 test -s "$T/$name.port"
	URL="http://127.0.0.1:$(cat "$T/$name.port")"
}

# stop_demo NAME - SIGTERM; it must exit 0 having closed everything.
stop_demo() {
	local rc=0
	kill -TERM "$PID"
	wait "$PID" || rc=$?
	assert_eq 0 "$rc" "$1: exit status after SIGTERM"
	assert_file_not_contains "$T/$1.err" "handles left open" "$1: clean loop close"
}

get() { curl -sS -m 5 "$@"; }
code() { curl -sS -m 5 -o /dev/null -w '%{http_code}' "$@" || true; }
put_flag() { # NAME JSON
	curl -sS -m 5 -X PUT -H 'Content-Type: application/json' --data-binary "$2" \
		"$URL/flags/$1"
}
healthy() { [[ $(code "$URL/healthz") == 200 ]]; }
# wait_for re-runs these, so they query afresh each time
sql_ge() { [[ $(psql_q "$1") -ge $2 ]]; }          # SQL N
sql_gt() { [[ $(psql_q "$1") -gt $2 ]]; }          # SQL N
stat_of() { get "$URL/stats" | sed -E "s/.*\"$1\":([0-9]+).*/\1/"; }
stat_gt() { [[ $(stat_of "$1") -gt $2 ]]; }        # FIELD N
http_is() { [[ $(code "$2") == "$1" ]]; }           # CODE URL
body_is() { [[ $(get "$2") == "$1" ]]; }            # BODY URL

# ---- a correct release
start_demo demo --write-rate 20
assert_file_contains "$T/demo.out" "listening on 127.0.0.1:$(cat "$T/demo.port")"
wait_for -t 10 healthy
body=$(get "$URL/healthz")
assert_contains "$body" '"status":"ok"' "healthz body"
assert_contains "$body" '"dual_write":false' "healthz shows the flag"
[[ $body =~ \"jobs\":([0-9]+) ]] || fail "no job count in '$body'"
((BASH_REMATCH[1] >= 3)) || fail "job count ${BASH_REMATCH[1]} < 3 in '$body'"

# flags
assert_eq '{"name":"dual_write","enabled":false}' "$(get "$URL/flags/dual_write")" "unknown flag is off"
assert_eq '{"name":"dual_write","enabled":true}' "$(put_flag dual_write '{"enabled": true}')" "flag on"
assert_eq '{"name":"dual_write","enabled":true}' "$(get "$URL/flags/dual_write")" "flag reads back"
assert_file_contains "$T/demo.out" "flag dual_write -> on"
assert_eq 400 "$(code -X PUT --data-binary '{"enabled": ' "$URL/flags/dual_write")" "bad JSON"
assert_eq 400 "$(code -X PUT --data-binary '{"enabled": "yes"}' "$URL/flags/dual_write")" "non-boolean"
assert_eq 404 "$(code "$URL/nope")" "unknown path"
assert_contains "$(get "$URL/healthz")" '"dual_write":true' "healthz shows the flag on"

# the background writer: plain inserts, then (no new_status yet) dual writes
# fall back on SQLSTATE 42703; add the column and dual writes fill it
before=$(psql_q "SELECT count(*) FROM jobs")
wait_for -t 10 sql_ge "SELECT count(*) FROM jobs" $((before + 10))
psql_q "ALTER TABLE jobs ADD COLUMN new_status varchar(20)" >/dev/null
wait_for -t 10 sql_ge "SELECT count(*) FROM jobs WHERE new_status = 'queued'" 5
put_flag dual_write '{"enabled": false}' >/dev/null
assert_file_contains "$T/demo.out" "flag dual_write -> off"
n=$(psql_q "SELECT count(*) FROM jobs WHERE new_status IS NULL")
wait_for -t 10 sql_gt "SELECT count(*) FROM jobs WHERE new_status IS NULL" "$n"
assert_ne 0 "$(psql_q "SELECT count(*) FROM jobs WHERE status = 'done'")" "updates ran"

stats=$(get "$URL/stats")
assert_contains "$stats" '"writes_failed":0,' "no write failed"
[[ $stats =~ \"writes_ok\":([0-9]+) ]] || fail "no writes_ok in '$stats'"
((BASH_REMATCH[1] >= 20)) || fail "writes_ok ${BASH_REMATCH[1]} < 20 in '$stats'"

# the database goes away (a restart drops every connection) and comes back
killed=$(psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE application_name = 'phasegate-demo' AND datname = current_database()")
assert_eq 2 "$killed" "the demo's two connections were dropped"
wait_for -t 10 healthy
ok1=$(stat_of writes_ok)
wait_for -t 10 stat_gt writes_ok "$ok1"
stop_demo demo

# a broken database: healthz answers 503 quickly, with the reason
bg_run bad "$DEMO" --port 0 --port-file "$T/bad.port" \
	--db "postgresql:///no_such_db_$$?host=${PGHOST}&port=${PGPORT}&user=postgres"
PID=$BG_PID
wait_for -t 10 test -s "$T/bad.port"
URL="http://127.0.0.1:$(cat "$T/bad.port")"
wait_for -t 10 http_is 503 "$URL/healthz"
assert_contains "$(get "$URL/healthz")" '"status":"error"' "503 body"
assert_contains "$(get "$URL/healthz")" "no_such_db_$$" "503 names the cause"
stop_demo bad

# ---- the buggy release: fine until dual_write is switched on
start_demo buggy --buggy --write-rate 10
wait_for -t 10 healthy
put_flag dual_write '{"enabled": true}' >/dev/null
assert_eq 500 "$(code "$URL/healthz")" "buggy release breaks"
assert_eq '{"status":"error","error":"dual-write bug: new_status writes fail"}' \
	"$(get "$URL/healthz")" "buggy body"
wait_for -t 10 stat_gt writes_failed 0
assert_contains "$(get "$URL/stats")" "dual-write bug" "stats shows the failure"
put_flag dual_write '{"enabled": false}' >/dev/null
wait_for -t 5 healthy
stop_demo buggy

# ---- flags kept in the table feature_flags
psql_q "CREATE TABLE feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL DEFAULT false)" >/dev/null
start_demo flagtab --flags-table
wait_for -t 10 healthy
psql_q "INSERT INTO feature_flags VALUES ('dual_write', true)" >/dev/null
wait_for -t 5 body_is '{"name":"dual_write","enabled":true}' "$URL/flags/dual_write"
assert_eq '{"name":"dual_write","enabled":false}' "$(put_flag dual_write '{"enabled": false}')" "PUT with the table"
assert_eq f "$(psql_q "SELECT enabled FROM feature_flags WHERE name = 'dual_write'")" "PUT wrote the table"
stop_demo flagtab

pass
