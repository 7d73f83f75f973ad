#!/usr/bin/env bash
# test_core_throttle.sh - the latency budget (settings.throttle) on a real
# server.  A backfill measures its probe's baseline before the first batch
# (a key lookup on its own connection, seen in pg_stat_activity); when a
# CPU-heavy load is added afterwards, the probe's p99 goes over budget and
# the backfill visibly throttles -- the sleeps between batches and the
# smaller batches are recorded as `throttle` events and in the progress
# events -- and still completes with every row right.  `throttle: off` runs
# no probe.  A probe that cannot run fails the step before any batch, with
# the server's error, and nothing is lost.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_throttle
seed() {
	psql_q "DROP TABLE IF EXISTS t; DROP SCHEMA IF EXISTS phasegate CASCADE;
		CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, v2 int);
		INSERT INTO t SELECT g, g % 1000 FROM generate_series(1, $1) g;
		ANALYZE t" >/dev/null 2>&1
}
write_plan() { # FILE SETTINGS
	cat >"$1" <<YAML
version: 1
name: throttled
settings: { $2 }
phases:
  - name: fill
    steps:
      - backfill: { table: t, set: "v2 = v + 1", batch_time: 50ms }
YAML
}
ev() { psql_q "SELECT count(*) FROM phasegate.events WHERE kind = '$1' ${2:+AND $2}"; }
has_ev() { [[ $(ev "$@") -gt 0 ]]; }
hog_off() {
	psql -X -q -d "$TEST_DB" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'phg_hog'" >/dev/null 2>&1 || true
}
on_exit hog_off

# ---- the budget throttles when a CPU-heavy load comes ----------------
seed 500000
write_plan "$T/plan.yaml" "throttle: { budget: 2x, floor: 1ms }"
bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 30 has_ev throttle_baseline
# the probe runs on a connection of its own while the batches run
probe_seen() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT 1 FROM %t% WHERE (%id%) >= (\$1)%'") -gt 0 ]]
}
wait_for -t 10 probe_seen
# one spinning backend: a core of the two taken, the backfill's batches
# now compete with the application's queries
PGAPPNAME=phg_hog PGOPTIONS='-c statement_timeout=120s' \
	psql -X -q -d "$TEST_DB" -c "SELECT count(*) FROM generate_series(1, 10000000000)" \
	>/dev/null 2>&1 &
on_exit "kill $! 2>/dev/null || true"
wait_for -t 60 has_ev throttle "(data->>'sleep_ms')::int > 0"
hog_off
# the load is gone: the pace recovers and the backfill ends
gone() { ! kill -0 "$pid" 2>/dev/null; }
wait_for -t 120 gone
rc=0
wait "$pid" || rc=$?
assert_eq 0 "$rc" "the throttled backfill completed"
assert_file_contains "$T/apply.err" "latency budget: the probe's p99 before the first batch is"
assert_file_contains "$T/apply.err" "over budget"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS DISTINCT FROM v + 1")" "every row"
# the decisions, as recorded: a sleep, a smaller batch, the figures behind them
assert_eq "t" "$(psql_q "SELECT bool_and((data->>'budget_ms')::numeric > 0 AND (data->>'samples')::int >= 20)
	FROM phasegate.events WHERE kind = 'throttle'")" "every decision says what it saw"
assert_eq "t" "$(psql_q "SELECT min((data->>'batch_cap')::int) < 1000000 FROM phasegate.events WHERE kind = 'throttle'")" \
	"batches were made smaller"
baseline=$(psql_q "SELECT (data->>'baseline_ms')::numeric > 0 AND (data->>'budget_ms')::numeric >= 1
	FROM phasegate.events WHERE kind = 'throttle_baseline'")
assert_eq "t" "$baseline" "the baseline and its budget (floor 1ms) are recorded"

# ---- throttle: off ---------------------------------------------------
seed 20000
write_plan "$T/off.yaml" "throttle: off"
assert_exit 0 phg apply "$T/off.yaml"
assert_eq "0" "$(ev throttle_baseline)" "no probe with throttle: off"
assert_file_not_contains "$T/err" "latency budget"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS DISTINCT FROM v + 1")" "every row (off)"

# ---- a probe that cannot run: the step fails before any batch --------
seed 20000
write_plan "$T/bad.yaml" "throttle: { probe: \"SELECT 1 FROM no_such_table\" }"
assert_exit 3 phg apply "$T/bad.yaml"
assert_file_contains "$T/err" "the latency probe failed"
assert_file_contains "$T/err" "no_such_table"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE v2 IS NOT NULL")" "no batch ran"
pass
