# shellcheck shell=bash
# fault_lib.sh - the kill-at-every-point matrix (test_fault_*.sh).
#
# The quickstart's five-phase plan (examples/quickstart/plan.yaml: health
# checks, an http flag, a sync trigger, a backfill under a watch,
# set_not_null, a backup, drop + rename) runs against a seeded jobs table
# while the demo application keeps writing and records every write it
# committed (--write-log).  phasegate is made to die as `kill -9` would at a
# named fault point (PHG_FAULT, orchestrator/fault.h); the points come from
# a clean run with PHG_FAULT_LOG, so a new transition is covered without
# editing the tests.
#
# Under a sanitizer build (PHG_SANITIZED=1) every PHG_FAULT_STRIDE-th point
# is tried (default 3), so the suite stays within its time; the plain build
# tries every point.  PHG_FAULT_RESIDUES="1 2" (with PHG_FAULT_STRIDE=3)
# tries the points whose index modulo the stride is one of those instead:
# CI gives the plain build the points the sanitizer build does not try
# (scripts/test.sh), so every point is tried once per CI run.
# FAULT_ONLY=REGEX tries only the matching points (for debugging by hand).
#
# Provided (after source "$PHG_TEST_LIB"; source fault_lib.sh):
#   fault_setup              template database, plan copy, demo binary
#   fault_points FILE CMD... a clean run of CMD, listing "NAME:N" per point
#   fault_selected FILE      the points to try (stride, FAULT_ONLY)
#   fault_db NAME [TEMPLATE] a fresh database copied from TEMPLATE
#                            (default: the seeded one); sets DATABASE_URL
#   demo_start NAME          the demo app writing into $DATABASE_URL
#   demo_stop                SIGTERM, and its stats in DEMO_STATS
#   phg_dead_gone            wait until the killed run's sessions are gone
#   check_values WLOG        every row reads what was seeded, overlaid by the
#                            app's committed writes in WLOG
#   check_completed / check_as_before   the schema at the end
#   check_app_ok WHAT        no write of the app failed

FAULT_ROWS=2000
DEMO_ARGS=()   # more arguments for the demo app (e.g. --buggy)
DEMO=${PHG_DEMO:-${PHG_BUILD_DIR:?}/examples/phasegate-demo}
[[ -x $DEMO ]] || fail "no demo binary at $DEMO"

# seed_sql - the jobs table before the plan; the seeded value of row ID is
# seed_value ID (kept in step with the SQL).
seed_sql() {
	cat <<SQL
CREATE TABLE jobs (
  id bigserial PRIMARY KEY,
  repo text NOT NULL,
  status varchar(20) NOT NULL DEFAULT 'queued',
  created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO jobs (repo, status)
SELECT 'github.com/loom/repo-' || (g % 500),
       (ARRAY['queued', 'running', 'done', 'failed'])[1 + g % 4]
FROM generate_series(1, $FAULT_ROWS) g;
ANALYZE jobs;
SQL
}

fault_setup() {
	new_db fault_seed
	FAULT_TEMPLATE=$TEST_DB
	psql_q "$(seed_sql)" >/dev/null
	# the catalog of the table before the plan, to compare with at the end
	BEFORE_CATALOG=$(catalog_of "$FAULT_TEMPLATE")
	# the quickstart plan with short gates and small batches; every change
	# must apply (a plan edit that makes one do nothing fails here)
	local src=$PHG_SOURCE_DIR/examples/quickstart/plan.yaml
	FAULT_PLAN=$T/plan.yaml
	sed -e 's/soak: 1s/soak: 150ms/' -e 's/interval: 250ms/interval: 50ms/' \
		-e 's/successes: 3/successes: 2/' -e 's/batch_size: 5000/batch_size: 700/' \
		-e 's|dir: ./backups|dir: '"$T"'/backups|' "$src" >"$FAULT_PLAN"
	local want
	for want in 'soak: 150ms' 'interval: 50ms' 'successes: 2' 'batch_size: 700' "dir: $T/backups"; do
		grep -qF -- "$want" "$FAULT_PLAN" || fail "the plan copy lacks '$want' (did $src change?)"
	done
	assert_exit 0 phg validate "$FAULT_PLAN"
}

# catalog_of DB - columns, constraints, triggers and indexes of jobs.
catalog_of() {
	psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
SELECT 'col ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' ||
       a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated
FROM pg_constraint WHERE conrelid = 'jobs'::regclass
UNION ALL
SELECT 'trg ' || tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal
UNION ALL
SELECT 'idx ' || indexrelid::regclass::text || ' ' || indisvalid
FROM pg_index WHERE indrelid = 'jobs'::regclass
ORDER BY 1
SQL
}

# fault_points OUT CMD... - run CMD (a phasegate command) with PHG_FAULT_LOG;
# OUT gets one "NAME:N" line per point reached, N its occurrence.
fault_points() {
	local out=$1 log=$T/points.raw
	shift
	rm -f "$log"
	PHG_FAULT_LOG=$log "$@" >"$T/points.out" 2>"$T/points.err" ||
		fail "the clean run for the fault points failed: $(tail -5 "$T/points.err")"
	[[ -s $log ]] || fail "no fault point was reached"
	awk '{ n[$0]++; print $0 ":" n[$0] }' "$log" >"$out"
}

# fault_selected FILE - the points of FILE to try.
fault_selected() {
	local stride=1
	if [[ ${PHG_SANITIZED:-0} == 1 ]]; then
		stride=${PHG_FAULT_STRIDE:-3}
	elif [[ -n ${PHG_FAULT_RESIDUES:-} ]]; then
		stride=${PHG_FAULT_STRIDE:-3}
	fi
	awk -v s="$stride" -v only="${FAULT_ONLY:-}" -v res="${PHG_FAULT_RESIDUES:-0}" \
		'BEGIN { n = split(res, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
		 (only == "" || $0 ~ only) && (s == 1 || ((NR - 1) % s) in keep)' "$1"
}

# fault_db NAME [TEMPLATE] - a fresh database from TEMPLATE.
fault_db() {
	local db="t_f_${1//[^a-z0-9_]/_}_$$"
	db=${db:0:60}
	PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force "$db" >/dev/null
	createdb -T "${2:-$FAULT_TEMPLATE}" "$db" || fail "createdb $db failed"
	on_exit "PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force '$db' >/dev/null 2>&1 || true"
	TEST_DB=$db
	DATABASE_URL="postgresql:///${db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
	export TEST_DB DATABASE_URL
	rm -rf "$T/backups"
}

demo_healthy() {
	[[ $(curl -sS -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DEMO_PORT/healthz" || true) == 200 ]]
}

# demo_start WLOG - the demo app writing 40 times a second; its committed
# writes are appended to WLOG.
demo_start() {
	rm -f "$T/demo.port"
	"$DEMO" --port 0 --port-file "$T/demo.port" --db "$DATABASE_URL" \
		--write-rate 40 --write-log "$1" "${DEMO_ARGS[@]}" >"$T/demo.out" 2>"$T/demo.err" &
	DEMO_PID=$!
	on_exit "kill -KILL $DEMO_PID 2>/dev/null || true"
	wait_for -t 10 test -s "$T/demo.port"
	DEMO_PORT=$(cat "$T/demo.port")
	export DEMO_PORT
	wait_for -t 10 demo_healthy
}

demo_stop() {
	local rc=0
	DEMO_STATS=$(curl -sS -m 5 "http://127.0.0.1:$DEMO_PORT/stats")
	DEMO_FLAG=$(curl -sS -m 5 "http://127.0.0.1:$DEMO_PORT/flags/dual_write")
	kill -TERM "$DEMO_PID"
	wait "$DEMO_PID" || rc=$?
	assert_eq 0 "$rc" "the demo app exits cleanly"
}

demo_stat() { # FIELD -> its number in DEMO_STATS
	local re="\"$1\":([0-9]+)"
	[[ $DEMO_STATS =~ $re ]] || fail "no $1 in '$DEMO_STATS'"
	printf '%s\n' "${BASH_REMATCH[1]}"
}

phg_sessions() {
	psql -X -A -t -q -d postgres -c "SELECT count(*) FROM pg_stat_activity
		WHERE datname = '$TEST_DB' AND application_name = 'phasegate'"
}

# phg_dead_gone - the killed phasegate's server sessions have ended (the
# server notices the closed socket), so its plan lock is free again.
no_phg_session() { [[ $(phg_sessions) == 0 ]]; }
phg_dead_gone() {
	wait_for -t 20 no_phg_session # (re-run each time: a command, not its output)
}

# apply_killed POINT - apply, to die at POINT (exit 137 = SIGKILL).  Sets
# KILLED=1, or 0 when the run ended before reaching it (only a backfill
# batch point may do so: their number follows the rows the app inserts).
apply_killed() {
	local rc=0
	PHG_FAULT=$1 phg apply "$FAULT_PLAN" >"$T/kill.out" 2>"$T/kill.err" || rc=$?
	if [[ $rc -eq 137 ]]; then
		KILLED=1
		phg_dead_gone
		return 0
	fi
	KILLED=0
	if [[ $rc -eq 0 && $1 == *:batch:* ]]; then
		return 0
	fi
	fail "apply with PHG_FAULT=$1 exited $rc, not killed: $(tail -5 "$T/kill.err")"
}

# check_values WLOG - every row of jobs reads what it was seeded with,
# overlaid by the app's committed writes in WLOG (in order); no row lost,
# none made up.
check_values() {
	local wlog=$1 what=$2
	psql -X -A -t -q -F ' ' -v ON_ERROR_STOP=1 -d "$TEST_DB" \
		-c "SELECT id, status FROM jobs ORDER BY id" >"$T/actual"
	awk -v rows="$FAULT_ROWS" '
		BEGIN { split("queued running done failed", v, " ");
		        for (i = 1; i <= rows; i++) val[i] = v[1 + i % 4] }
		{ val[$2] = $3 }
		END { for (k in val) print k, val[k] }' "$wlog" | sort -n >"$T/expected"
	if ! cmp -s "$T/expected" "$T/actual"; then
		local diffs
		diffs=$(diff "$T/expected" "$T/actual" | head -20 || true)
		fail "$what: rows differ from the seed overlaid by the app's writes
$diffs"
	fi
}

# check_app_ok WHAT - no write of the app failed (the column it names never
# went missing, not even across the contract phase's swap)
check_app_ok() {
	assert_eq "0" "$(demo_stat writes_failed)" "$1: failed app writes ($DEMO_STATS)"
}

# check_completed WHAT - the plan completed once: status is the new column,
# NOT NULL and checked; no old column, no tombstone, no trigger; one run,
# each phase applied, one backup, one flag change.
check_completed() {
	local what=$1
	assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs")" "$what: one run, completed"
	assert_eq "applied,applied,applied,applied,applied" \
		"$(psql_q "SELECT string_agg(state, ',' ORDER BY idx) FROM phasegate.phases")" "$what: phases"
	assert_eq "status" "$(psql_q "SELECT string_agg(attname, ',') FROM pg_attribute
		WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped
		AND attname LIKE '%status%'")" "$what: columns"
	assert_eq "t" "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'jobs'::regclass
		AND attname = 'status'")" "$what: NOT NULL"
	assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass
		AND NOT tgisinternal")" "$what: no trigger left"
	assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_constraint WHERE conrelid = 'jobs'::regclass
		AND conname = 'jobs_new_status_valid' AND convalidated")" "$what: the check"
	assert_eq "1" "$(psql_q "SELECT count(*) FROM phasegate.backups")" "$what: one backup"
	# no phase applied twice: at most one recorded "-> applied" per phase (an
	# event queued when the process died may be missing, never doubled)
	assert_eq "0" "$(psql_q "SELECT count(*) FROM (SELECT phase FROM phasegate.events
		WHERE kind = 'phase_state' AND message LIKE '% -> applied' GROUP BY phase
		HAVING count(*) > 1) x")" "$what: a phase applied twice"
	assert_eq "1" "$(demo_stat flag_changes)" "$what: the flag service saw one change"
	assert_contains "$DEMO_FLAG" '"enabled":true' "$what: flag on"
}

# check_as_before WHAT - the schema is as before the plan, the flag is off.
check_as_before() {
	local what=$1 now
	now=$(catalog_of "$TEST_DB")
	if [[ $now != "$BEFORE_CATALOG" ]]; then
		fail "$what: the table is not as before the plan
$(diff <(printf '%s\n' "$BEFORE_CATALOG") <(printf '%s\n' "$now"))"
	fi
	assert_contains "$DEMO_FLAG" '"enabled":false' "$what: flag off"
	local changes
	changes=$(demo_stat flag_changes)
	[[ $changes == 0 || $changes == 2 ]] || fail "$what: $changes flag changes (0 or 2 expected)"
}
