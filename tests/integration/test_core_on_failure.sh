#!/usr/bin/env bash
# test_core_on_failure.sh - what a failed step leaves behind under each
# `on_failure` setting, and the exit code CI reads (SPEC section 1: 3 means
# "the automatic rollback completed: the database is as it was before the
# failed phase").  Phase two = add_column + an add_check whose VALIDATE fails.
#   rollback-phase: phase two reverted, phase one kept, exit 3
#   rollback-plan:  every phase reverted, run rolled_back, exit 3
#   stop:           phase two left as it is (failed) for an operator: its
#                   add_column stays, so exit 3 would be a lie: exit 4; the
#                   failed step's own NOT VALID constraint is gone; once the
#                   data is fixed, apply retries the phase and completes
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_on_failure

cols() {
	psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
		WHERE attrelid = '$1'::regclass AND attnum > 0 AND NOT attisdropped"
}
st() {
	phg status "$1" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(" ".join([s["state"]] + ["%s=%s" % (p["name"], p["state"]) for p in s["phases"]]))'
}
# mkplan MODE TABLE
mkplan() {
	psql_q "CREATE TABLE $2 (id int PRIMARY KEY, q int); INSERT INTO $2 VALUES (1, 1), (2, -1)" >/dev/null
	cat >"$T/$2.yaml" <<EOF
version: 1
name: on-failure-$1
settings: { on_failure: $1 }
phases:
  - name: one
    steps:
      - add_column: { table: $2, column: a, type: int }
  - name: two
    steps:
      - add_column: { table: $2, column: b, type: int }
      - add_check: { table: $2, name: ${2}_q_pos, check: "q > 0" }
EOF
}
nconstraints() { psql_q "SELECT count(*) FROM pg_constraint WHERE conrelid = '$1'::regclass AND contype = 'c'"; }

# ---- rollback-phase (the default)
mkplan rollback-phase rp
assert_exit 3 phg apply "$T/rp.yaml"
assert_file_contains "$T/err" "violated"
assert_eq "id,q,a" "$(cols rp)" "rollback-phase: phase two reverted, phase one kept"
assert_eq 0 "$(nconstraints rp)" "rollback-phase: no NOT VALID constraint left"
assert_eq "failed one=applied two=rolled_back" "$(st "$T/rp.yaml")" "rollback-phase: status"

# ---- rollback-plan
mkplan rollback-plan rpl
assert_exit 3 phg apply "$T/rpl.yaml"
assert_eq "id,q" "$(cols rpl)" "rollback-plan: every phase reverted"
assert_eq 0 "$(nconstraints rpl)" "rollback-plan: no NOT VALID constraint left"
assert_eq "rolled_back one=rolled_back two=rolled_back" "$(st "$T/rpl.yaml")" "rollback-plan: status"

# ---- stop
mkplan stop stp
assert_exit '!' phg apply "$T/stp.yaml"
stop_exit=$LAST_EXIT
cp "$T/err" "$T/stop.err"
assert_eq "id,q,a,b" "$(cols stp)" "stop: phase two is left as it is"
assert_eq 0 "$(nconstraints stp)" "stop: the failed step's own NOT VALID constraint is gone"
assert_eq "failed one=applied two=failed" "$(st "$T/stp.yaml")" "stop: status"
assert_file_contains "$T/stop.err" "stop"
# fix the data, apply again: the failed phase is retried and the plan completes
psql_q "UPDATE stp SET q = 2 WHERE q < 0" >/dev/null
assert_exit 0 phg apply "$T/stp.yaml"
assert_eq "completed one=applied two=applied" "$(st "$T/stp.yaml")" "stop: apply after the fix"
assert_eq "id,q,a,b|1" "$(cols stp)|$(nconstraints stp)" "stop: the retried phase applied"

# exit 3 promises "the automatic rollback completed: the database is as it
# was before the failed phase"; `stop` rolls nothing back, so it exits 4 ("an
# operator must look", SPEC section 1) and the log says what is left
assert_eq 4 "$stop_exit" "on_failure stop exits 4 with the run failed"
assert_file_contains "$T/stop.err" "left as it is"
assert_file_contains "$T/stop.err" "an operator must look"

# set_not_null over NULLs says which column and how to find the rows, not
# only phasegate's internal constraint name
psql_q "CREATE TABLE nn (id int PRIMARY KEY, v int); INSERT INTO nn VALUES (1, 1), (2, NULL)" >/dev/null
cat >"$T/nn.yaml" <<'YAML'
version: 1
name: on-failure-nn
phases:
  - name: enforce
    steps:
      - set_not_null: { table: nn, column: v }
YAML
assert_exit 3 phg apply "$T/nn.yaml"
assert_file_contains "$T/err" 'column "v" of "nn" has 1 NULL value(s): NOT NULL cannot be enforced'
assert_file_contains "$T/err" 'SELECT count(*) FROM "nn" WHERE "v" IS NULL'
assert_file_contains "$T/err" "The server said:"
assert_eq 0 "$(nconstraints nn)" "set_not_null over NULLs: no NOT VALID check left"

# set_not_null of a column that is NOT NULL already: a recorded no-op (no
# CHECK, no scan: the sequential-scan counter of the table does not move),
# and its rollback keeps NOT NULL without claiming to relax it
psql_q "CREATE TABLE nn2 (id int PRIMARY KEY, v int NOT NULL); INSERT INTO nn2 SELECT g, g FROM generate_series(1, 100) g" >/dev/null
sed -e 's/table: nn,/table: nn2,/' -e 's/name: on-failure-nn/name: on-failure-nn2/' "$T/nn.yaml" >"$T/nn2.yaml"
assert_exit 0 phg plan "$T/nn2.yaml"
assert_file_contains "$T/out" "when true, the step is recorded done and nothing below runs"
psql_q "SELECT pg_stat_force_next_flush()" >/dev/null
scans_before=$(psql_q "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'nn2'")
assert_exit 0 phg apply "$T/nn2.yaml"
assert_file_contains "$T/err" 'column "v" of "nn2" is already NOT NULL: nothing to do (no check, no scan)'
assert_file_not_contains "$T/err" "validate"
assert_eq "applied 3 true" "$(psql_q "SELECT s.state, s.progress, s.memo->>'was_notnull' FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'on-failure-nn2'" | tr '|' ' ')" \
	"the no-op is recorded: the step applied, every op done, NOT NULL was there"
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.events e JOIN phasegate.runs r ON r.id = e.run_id WHERE r.plan = 'on-failure-nn2' AND e.kind = 'step_noop'")" \
	"a step_noop event"
psql_q "SELECT pg_stat_force_next_flush()" >/dev/null
assert_eq "$scans_before" "$(psql_q "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'nn2'")" \
	"no scan of the table"
assert_exit 0 phg rollback "$T/nn2.yaml"
assert_file_contains "$T/err" 'keep NOT NULL on "v" of "nn2": it was NOT NULL before the plan'
assert_file_not_contains "$T/err" "relax"
assert_eq "t" "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'nn2'::regclass AND attname = 'v'")" \
	"the rollback kept NOT NULL"

# a backfill without `down`: the rollback says its updates were not undone
psql_q "CREATE TABLE bk (id int PRIMARY KEY, v int NOT NULL, v2 int); INSERT INTO bk SELECT g, g FROM generate_series(1, 50) g" >/dev/null
cat >"$T/bk.yaml" <<'YAML'
version: 1
name: on-failure-bk
phases:
  - name: fill
    steps:
      - backfill: { table: bk, set: "v2 = v * 2" }
      - add_check: { table: bk, name: bk_neg, check: "v2 < 0" }
YAML
assert_exit 3 phg apply "$T/bk.yaml"
assert_file_contains "$T/err" 'reverted, deliberately not undone: its updates were not undone (it has no `down`)'
assert_file_contains "$T/err" 'except that the updates of backfill step 1 of phase "fill" were not undone (no `down`)'
assert_eq 50 "$(psql_q "SELECT count(*) FROM bk WHERE v2 = v * 2")" "the backfill's values stayed"
sed -i -e '/add_check/d' -e 's/name: on-failure-bk/name: on-failure-bk2/' "$T/bk.yaml"
assert_exit 0 phg apply "$T/bk.yaml"
assert_exit 0 phg rollback "$T/bk.yaml"
assert_file_contains "$T/err" 'rollback complete: every phase reverted; the updates of backfill step 1 of phase "fill" were deliberately not undone (no `down`)'

pass
