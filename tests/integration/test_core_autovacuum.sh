#!/usr/bin/env bash
# test_core_autovacuum.sh - an autovacuum worker that blocks a DDL step is
# canceled at once (as PostgreSQL would after deadlock_timeout, while the
# application's queries queue behind the waiting ALTER): the step commits
# on its first attempt, an `autovacuum_canceled` event says so, and an
# autovacuum that prevents wraparound would be left alone (checked by the
# query's filter).  On a cluster of this test's own, with a 1 s autovacuum
# naptime and a crawling vacuum on the table.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

pgsh=$PHG_SOURCE_DIR/tests/harness/pg.sh
state=$T/pg.state
on_exit "bash '$pgsh' stop '$state' >/dev/null"
assert_exit 0 env PHG_TEST_PGPORT="${PHG_TEST_AV_PGPORT:-55435}" bash "$pgsh" start "$state"
# shellcheck source=/dev/null
source "$state"
psql -X -q -d postgres -c "ALTER SYSTEM SET autovacuum_naptime = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
new_db autovacuum
psql_q "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
	INSERT INTO t SELECT g, g FROM generate_series(1, 200000) g;
	ALTER TABLE t SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
	  autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);
	UPDATE t SET v = v + 1" >/dev/null
vacuuming() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'
		AND query LIKE '%public.t%'") -gt 0 ]]
}
wait_for -t 60 vacuuming
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: past-autovacuum
settings: { lock_timeout: 2s }
phases:
  - name: enforce
    steps:
      - add_check: { table: t, name: t_v_positive, check: "v > 0" }
YAML
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "canceled 1 autovacuum worker(s) blocking"
# (the worker may start again between the NOT VALID add and the validation)
[[ $(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'autovacuum_canceled'") -ge 1 ]] ||
	fail "no autovacuum_canceled event"
assert_eq "0" "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'lock_retry'")" "no lock retry"
assert_eq "t" "$(psql_q "SELECT convalidated FROM pg_constraint WHERE conname = 't_v_positive'")" "the check is valid"
pass
