#!/usr/bin/env bash
# test_harness.sh - the test harness itself works: a fresh database in the
# throwaway cluster, psql_q, the assertions (both when they hold and when
# they fail), on_exit cleanups, bg_run and wait_for.
# shellcheck source=/dev/null
source "${PHG_TEST_LIB:?run through ctest, or set PHG_TEST_LIB=tests/lib.sh}"

new_db harness
assert_contains "$TEST_DB" "t_harness_" "database name"
assert_contains "$DATABASE_URL" "postgresql:///$TEST_DB?host=$PGHOST&port=$PGPORT&user=postgres" \
	"DATABASE_URL"

# The cluster is the throwaway one, on its private socket.
assert_eq "$PGHOST" "$(psql_q 'SHOW unix_socket_directories')" "socket directory"
assert_eq "" "$(psql_q 'SHOW listen_addresses')" "no TCP listener"
assert_eq "off" "$(psql_q 'SHOW fsync')" "fsync"
assert_eq "$TEST_DB" "$(psql_q 'SELECT current_database()')" "current database"

psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, status text NOT NULL)" >/dev/null
psql_q "INSERT INTO jobs (status) SELECT 'queued' FROM generate_series(1, 3)" >/dev/null
count=$(psql_q "SELECT count(*) FROM jobs")
assert_eq 3 "$count" "rows after insert"
assert_eq "1|queued" "$(psql_q 'SELECT id, status FROM jobs ORDER BY id LIMIT 1')" "first row"

# The same database through DATABASE_URL, as phasegate will use it.
assert_exit 0 psql -X -A -t -d "$DATABASE_URL" -c "SELECT count(*) FROM jobs"
assert_file_contains "$T/out" 3 "count through DATABASE_URL"
assert_exit '!' psql -X -d "$DATABASE_URL" -v ON_ERROR_STOP=1 -c "SELECT * FROM no_such_table"
assert_file_contains "$T/err" 'relation "no_such_table" does not exist'
assert_eq "" "$(cat "$T/out")" "a failed query prints no result"

# A failing assertion exits 1 and prints both sides and the caller's line;
# the failing test's own database and temp dir are cleaned up.
cat >"$T/failing.sh" <<'EOF'
source "$PHG_TEST_LIB"
new_db inner
echo "inner db: $TEST_DB"
assert_eq "expected-value" "actual-value" "a deliberate failure"
echo "not reached"
EOF
assert_exit 1 env TMPDIR="$T" bash "$T/failing.sh"
assert_file_contains "$T/err" "FAIL failing: a deliberate failure (failing.sh:4)"
assert_file_contains "$T/err" "expected: 'expected-value'"
assert_file_contains "$T/err" "actual:   'actual-value'"
assert_file_not_contains "$T/out" "not reached"
inner_db=$(sed -n 's/^inner db: //p' "$T/out")
assert_contains "$inner_db" "t_inner_"
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_database WHERE datname = '$inner_db'")" \
	"the failed test's database was dropped"

# The other assertions fail too when they do not hold, naming both sides.
cat >"$T/failing_ne.sh" <<'EOF'
source "$PHG_TEST_LIB"
assert_ne "same" "same" "equal values"
EOF
assert_exit 1 env TMPDIR="$T" bash "$T/failing_ne.sh"
assert_file_contains "$T/err" "FAIL failing_ne: equal values (failing_ne.sh:2)"
assert_file_contains "$T/err" "expected anything but: 'same'"
cat >"$T/failing_contains.sh" <<'EOF'
source "$PHG_TEST_LIB"
assert_not_contains "an ERROR here" "ERROR" "error text"
EOF
assert_exit 1 env TMPDIR="$T" bash "$T/failing_contains.sh"
assert_file_contains "$T/err" "FAIL failing_contains: error text (failing_contains.sh:2)"

# A command that fails under set -e is reported with its line.
cat >"$T/erroring.sh" <<'EOF'
source "$PHG_TEST_LIB"
false
EOF
assert_exit 1 env TMPDIR="$T" bash "$T/erroring.sh"
assert_file_contains "$T/err" "command failed with exit 1 at erroring.sh:2: false"

# on_exit cleanups all run, last registered first, and keep the exit code.
cat >"$T/cleanups.sh" <<'EOF'
source "$PHG_TEST_LIB"
on_exit 'echo first-registered'
on_exit 'echo second-registered'
exit 7
EOF
assert_exit 7 env TMPDIR="$T" bash "$T/cleanups.sh"
assert_eq "second-registered
first-registered" "$(cat "$T/out")" "cleanup order"

# bg_run + wait_for; the background process is killed at exit.
# shellcheck disable=SC2016  # $1 is the inner shell's
bg_run sleeper bash -c 'echo ready >"$1"; exec sleep 300' _ "$T/ready"
sleeper=$BG_PID
wait_for -t 10 test -s "$T/ready"
wait_for kill -0 "$sleeper"
assert_file_contains "$T/ready" ready
cat >"$T/waiting.sh" <<'EOF'
source "$PHG_TEST_LIB"
wait_for -t 1 false
EOF
assert_exit 1 env TMPDIR="$T" bash "$T/waiting.sh"
assert_file_contains "$T/err" "timed out after 1s waiting for: false"

pass
