# shellcheck shell=bash
# tests/lib.sh - library for the shell integration tests.
#
# A test is tests/integration/test_NAME.sh; ctest runs it as `bash FILE` with
#   PHG_TEST_STATE  state file of the throwaway cluster (tests/harness/pg.sh)
#   PHASEGATE       the phasegate binary
#   PHG_TEST_LIB    this file
#   PHG_SOURCE_DIR  the repository root,  PHG_BUILD_DIR  the build directory
#
#   #!/usr/bin/env bash
#   source "$PHG_TEST_LIB"
#   new_db orders                       # exports TEST_DB and DATABASE_URL
#   psql_q "CREATE TABLE t (id int)"
#   assert_exit 0 phg apply "$PHG_SOURCE_DIR/plans/x.yaml"
#   assert_file_contains "$T/err" "applied"
#   assert_eq 1 "$(psql_q 'SELECT count(*) FROM t')" "one row"
#   pass
#
# Manual run:  bash tests/harness/pg.sh start /tmp/pg.state
#              PHG_TEST_STATE=/tmp/pg.state PHASEGATE=build/phasegate \
#                PHG_TEST_LIB=tests/lib.sh bash tests/integration/test_x.sh
#              bash tests/harness/pg.sh stop /tmp/pg.state
#
# Provided: T (per-test temp dir, removed when the test exits 0, kept and
# printed otherwise), TEST_NAME, on_exit, new_db, psql_q, phg, bg_run,
# wait_for, assert_eq, assert_ne, assert_contains, assert_not_contains,
# assert_exit, assert_file_contains, assert_file_not_contains, fail, pass.
# Never set your own EXIT trap: register cleanups with on_exit.

if [[ -n ${_PHG_LIB_LOADED:-} ]]; then
	return 0
fi
_PHG_LIB_LOADED=1

set -euo pipefail
set -o errtrace
shopt -s inherit_errexit

TEST_NAME=${TEST_NAME:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}

# ---------------------------------------------------------------- failure

# _phg_where - "file:line" from which the function calling _phg_where was
# called (run it as $(_phg_where): the subshell keeps the call stack).
_phg_where() {
	printf '%s:%s' "${BASH_SOURCE[2]##*/}" "${BASH_LINENO[1]}"
}

# _phg_fail WHERE MESSAGE [DETAIL_LINE...] - report and exit 1.
_phg_fail() {
	local where=$1 msg=$2 line
	shift 2
	{
		printf 'FAIL %s: %s (%s)\n' "$TEST_NAME" "$msg" "$where"
		for line in "$@"; do
			printf '  %s\n' "$line"
		done
	} >&2
	exit 1
}

# fail MESSAGE - fail the test here.
fail() {
	_phg_fail "$(_phg_where)" "${1:-failed}"
}

_phg_on_err() {
	local rc=$1 line=$2 cmd=$3
	# Report once, in the test's own shell (not again in each subshell).
	if [[ $BASH_SUBSHELL -eq 0 ]]; then
		printf 'FAIL %s: command failed with exit %s at %s:%s: %s\n' \
			"$TEST_NAME" "$rc" "${BASH_SOURCE[1]##*/}" "$line" "$cmd" >&2
	fi
}
trap '_phg_on_err $? $LINENO "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------- cleanup

_PHG_CLEANUPS=()

# on_exit 'COMMAND' - run COMMAND (eval'd) when the test exits, whatever the
# outcome; cleanups run last-registered first.
on_exit() {
	_PHG_CLEANUPS+=("$1")
}

_phg_exit() {
	local rc=$? i
	trap - ERR
	set +e
	for ((i = ${#_PHG_CLEANUPS[@]} - 1; i >= 0; i--)); do
		eval "${_PHG_CLEANUPS[i]}" ||
			printf 'lib.sh: cleanup failed: %s\n' "${_PHG_CLEANUPS[i]}" >&2
	done
	if [[ -n ${T:-} && -d $T ]]; then
		if [[ $rc -eq 0 ]]; then
			rm -rf -- "$T"
		else
			printf 'lib.sh: %s exited %d; its files are kept in %s\n' \
				"$TEST_NAME" "$rc" "$T" >&2
		fi
	fi
	exit "$rc"
}
trap _phg_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T=$(mktemp -d "${TMPDIR:-/tmp}/phg-test-${TEST_NAME//[^A-Za-z0-9_.-]/_}.XXXXXX")
export T

# ---------------------------------------------------------------- environment

PHG_SOURCE_DIR=${PHG_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PHG_SOURCE_DIR

# Variables that would send libpq somewhere else than the test cluster.
unset PGDATABASE PGHOSTADDR PGSERVICE PGSERVICEFILE PGOPTIONS PGPASSWORD \
	PGSSLMODE PGREQUIRESSL PGTARGETSESSIONATTRS

if [[ -n ${PHG_TEST_STATE:-} ]]; then
	if [[ ! -r $PHG_TEST_STATE ]]; then
		_phg_fail "lib.sh" "no cluster state file '$PHG_TEST_STATE'" \
			"run the test through ctest (fixture pg_start), or start one with" \
			"tests/harness/pg.sh start STATE_FILE"
	fi
	# shellcheck source=/dev/null
	source "$PHG_TEST_STATE"
	export PGHOST PGPORT PGUSER PHG_TEST_PGDIR PHG_TEST_PGBIN
	# psql, createdb, pg_dump, pg_restore of the server's version first.
	if [[ -n ${PHG_TEST_PGBIN:-} ]]; then
		export PATH="$PHG_TEST_PGBIN:$PATH"
	fi
fi

if [[ -z ${PHASEGATE:-} && -n ${PHG_BUILD_DIR:-} && -x ${PHG_BUILD_DIR}/phasegate ]]; then
	PHASEGATE=$PHG_BUILD_DIR/phasegate
fi
export PHASEGATE=${PHASEGATE:-}

# phg ARGS... - run the phasegate binary.
phg() {
	[[ -n $PHASEGATE ]] || _phg_fail "$(_phg_where)" "PHASEGATE is not set"
	"$PHASEGATE" "$@"
}

# ---------------------------------------------------------------- database

# dropdb without the "does not exist, skipping" notice.
_phg_dropdb() {
	PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force "$1" >/dev/null
}

_phg_drop_db() {
	_phg_dropdb "$1" ||
		printf 'lib.sh: could not drop database %s\n' "$1" >&2
}

# new_db NAME - create a fresh database t_NAME_PID (dropped at exit unless
# KEEP_DB=1); exports TEST_DB and DATABASE_URL.
new_db() {
	local where name db
	where=$(_phg_where)
	name=${1:?new_db NAME}
	[[ -n ${PGHOST:-} && -n ${PGPORT:-} ]] ||
		_phg_fail "$where" "new_db: no test cluster (PHG_TEST_STATE is not set)"
	name=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9_' '_')
	db="t_${name:0:40}_$$"
	_phg_dropdb "$db" ||
		_phg_fail "$where" "new_db: cannot drop old database $db"
	createdb "$db" || _phg_fail "$where" "new_db: createdb $db failed"
	if [[ ${KEEP_DB:-0} == 1 ]]; then
		on_exit "printf 'lib.sh: KEEP_DB=1: kept database %s\\n' '$db' >&2"
	else
		on_exit "_phg_drop_db '$db'"
	fi
	TEST_DB=$db
	DATABASE_URL="postgresql:///${db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
	export TEST_DB DATABASE_URL
}

# psql_q SQL [PSQL_ARGS...] - run SQL in TEST_DB, print the result unaligned,
# tuples only, trimmed.  Use as  x=$(psql_q ...)  so a failure stops the test.
psql_q() {
	local sql=${1:?psql_q SQL} out rc=0 where
	shift
	[[ -n ${TEST_DB:-} ]] || _phg_fail "$(_phg_where)" "psql_q: call new_db first"
	out=$(psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$TEST_DB" "$@" -c "$sql") || rc=$?
	if [[ $rc -ne 0 ]]; then
		where=$(_phg_where)
		printf 'psql_q failed (exit %d) at %s: %s\n' "$rc" "$where" "$sql" >&2
		return "$rc"
	fi
	out=${out#"${out%%[![:space:]]*}"}
	out=${out%"${out##*[![:space:]]}"}
	printf '%s\n' "$out"
}

# slow_updates TABLE SECONDS - every UPDATE statement on TABLE in TEST_DB
# takes SECONDS longer (an AFTER ... FOR EACH STATEMENT trigger that sleeps):
# a backfill's batches become slow enough to act between them.
slow_updates() {
	local t=${1:?slow_updates TABLE SECONDS} secs=${2:?slow_updates TABLE SECONDS}
	psql_q "CREATE FUNCTION slow_$t() RETURNS trigger LANGUAGE plpgsql AS
		\$\$ BEGIN PERFORM pg_sleep($secs); RETURN NULL; END \$\$;
		CREATE TRIGGER slow_$t AFTER UPDATE ON $t FOR EACH STATEMENT EXECUTE FUNCTION slow_$t()" >/dev/null
}

# bf_batches - the backfill batches recorded in TEST_DB's state schema;
# bf_batches_ge N - at least N (for wait_for).
bf_batches() { psql_q "SELECT coalesce(max(bf_batches), 0) FROM phasegate.steps"; }
bf_batches_ge() { [[ $(bf_batches) -ge $1 ]]; }

# ---------------------------------------------------------------- processes

_phg_kill() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# bg_run NAME CMD... - start CMD in the background, output in $T/NAME.out and
# $T/NAME.err; sets BG_PID.  Killed (TERM, then KILL) at exit if still alive.
bg_run() {
	local name=${1:?bg_run NAME CMD...}
	shift
	"$@" >"$T/$name.out" 2>"$T/$name.err" &
	BG_PID=$!
	on_exit "_phg_kill $BG_PID"
}

# app_start SQL... - the application: a background loop that runs the SQL
# statements (each a psql -c, ON_ERROR_STOP) in TEST_DB every 20 ms and
# records each failed round in $T/app.err; APP_PID.  app_stop ends it and
# fails the test if any statement failed (killed at exit in any case).
app_start() {
	[[ $# -gt 0 ]] || _phg_fail "$(_phg_where)" "app_start: no statement"
	local args=() sql
	for sql in "$@"; do args+=(-c "$sql"); done
	: >"$T/app.err"
	(
		while :; do
			psql -X -q -d "$TEST_DB" -v ON_ERROR_STOP=1 "${args[@]}" >/dev/null 2>>"$T/app.err" ||
				echo "a statement of the application failed" >>"$T/app.err"
			sleep 0.02
		done
	) &
	APP_PID=$!
	on_exit "_phg_kill $APP_PID"
}

app_stop() {
	kill "$APP_PID" 2>/dev/null || true
	wait "$APP_PID" 2>/dev/null || true
	[[ ! -s $T/app.err ]] ||
		_phg_fail "$(_phg_where)" "the application saw failed statements:" "$(head -20 "$T/app.err")"
}

# fake_http NAME MODE - start the fake HTTP service (FAKEHTTP) in MODE in the
# background (killed at exit); its port in FAKE_PORT.
fake_http() {
	local name=${1:?fake_http NAME MODE} mode=${2:?fake_http NAME MODE}
	[[ -n ${FAKEHTTP:-} && -x $FAKEHTTP ]] || _phg_fail "$(_phg_where)" "FAKEHTTP is not set (build target fakehttp)"
	bg_run "$name" "$FAKEHTTP" --port 0 --port-file "$T/$name.port" --mode "$mode"
	wait_for -t 10 test -s "$T/$name.port"
	FAKE_PORT=$(cat "$T/$name.port")
}

_phg_now_us() {
	local t=${EPOCHREALTIME//[.,]/}
	printf '%s\n' "$((10#$t))"
}

# wait_for [-t SECONDS] CMD... - run CMD every 0.1 s until it succeeds; fail
# the test after SECONDS (default WAIT_TIMEOUT or 30), showing CMD's output.
wait_for() {
	local timeout=${WAIT_TIMEOUT:-30} where deadline
	where=$(_phg_where)
	if [[ ${1:-} == -t ]]; then
		timeout=$2
		shift 2
	fi
	[[ $# -gt 0 ]] || _phg_fail "$where" "wait_for: no command"
	deadline=$(($(_phg_now_us) + timeout * 1000000))
	until "$@" >/dev/null 2>&1; do
		if [[ $(_phg_now_us) -ge $deadline ]]; then
			local rc=0 out
			out=$("$@" 2>&1) || rc=$?
			_phg_fail "$where" "timed out after ${timeout}s waiting for: $*" \
				"last exit: $rc" "last output: $out"
		fi
		sleep 0.1
	done
}

# ---------------------------------------------------------------- assertions

assert_eq() {
	[[ $# -ge 2 ]] || _phg_fail "$(_phg_where)" "assert_eq EXPECTED ACTUAL [MESSAGE]"
	if [[ $1 != "$2" ]]; then
		_phg_fail "$(_phg_where)" "${3:-values differ}" \
			"expected: '$1'" "actual:   '$2'"
	fi
}

assert_ne() {
	[[ $# -ge 2 ]] || _phg_fail "$(_phg_where)" "assert_ne UNEXPECTED ACTUAL [MESSAGE]"
	if [[ $1 == "$2" ]]; then
		_phg_fail "$(_phg_where)" "${3:-values are equal}" \
			"expected anything but: '$1'" "actual:                 '$2'"
	fi
}

assert_contains() {
	[[ $# -ge 2 ]] || _phg_fail "$(_phg_where)" "assert_contains HAYSTACK NEEDLE [MESSAGE]"
	if [[ $1 != *"$2"* ]]; then
		_phg_fail "$(_phg_where)" "${3:-text not found}" \
			"expected to contain: '$2'" "actual:              '$1'"
	fi
}

assert_not_contains() {
	[[ $# -ge 2 ]] || _phg_fail "$(_phg_where)" "assert_not_contains HAYSTACK NEEDLE [MESSAGE]"
	if [[ $1 == *"$2"* ]]; then
		_phg_fail "$(_phg_where)" "${3:-unexpected text found}" \
			"expected not to contain: '$2'" "actual:                  '$1'"
	fi
}

_phg_show_file() {
	local f=$1 label=$2
	if [[ ! -e $f ]]; then
		printf '%s: (missing)\n' "$label"
	elif [[ ! -s $f ]]; then
		printf '%s: (empty)\n' "$label"
	else
		printf '%s:\n' "$label"
		head -n 200 -- "$f" | sed 's/^/    | /'
	fi
}

# assert_exit CODE CMD... - run CMD with stdout in $T/out and stderr in
# $T/err and check its exit code.  CODE is a number, or '!' for any non-zero.
# Sets LAST_EXIT.
assert_exit() {
	local want=${1:?assert_exit CODE CMD...} rc=0 where
	shift
	where=$(_phg_where)
	[[ $# -gt 0 ]] || _phg_fail "$where" "assert_exit: no command"
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	# shellcheck disable=SC2034  # for the tests
	LAST_EXIT=$rc
	if [[ $want == '!' && $rc -ne 0 ]] || [[ $want == "$rc" ]]; then
		return 0
	fi
	local cmd
	cmd=$(printf '%q ' "$@")
	_phg_fail "$where" "wrong exit code from: ${cmd% }" \
		"expected exit: $([[ $want == '!' ]] && echo 'non-zero' || echo "$want")" \
		"actual exit:   $rc" \
		"$(_phg_show_file "$T/out" stdout)" \
		"$(_phg_show_file "$T/err" stderr)"
}

assert_file_contains() {
	local f=${1:?assert_file_contains FILE NEEDLE [MESSAGE]} needle=${2-}
	if [[ ! -f $f ]] || ! grep -F -q -e "$needle" -- "$f"; then
		_phg_fail "$(_phg_where)" "${3:-file does not contain the text}" \
			"expected $f to contain: '$needle'" "$(_phg_show_file "$f" "$f")"
	fi
}

assert_file_not_contains() {
	local f=${1:?assert_file_not_contains FILE NEEDLE [MESSAGE]} needle=${2-}
	[[ -f $f ]] || _phg_fail "$(_phg_where)" "${3:-file is missing}" "no file $f"
	if grep -F -q -e "$needle" -- "$f"; then
		_phg_fail "$(_phg_where)" "${3:-file contains unexpected text}" \
			"expected $f not to contain: '$needle'" "$(_phg_show_file "$f" "$f")"
	fi
}

# pass - the last line of a test.
pass() {
	printf 'PASS %s\n' "$TEST_NAME"
}
