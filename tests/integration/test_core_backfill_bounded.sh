#!/usr/bin/env bash
# test_core_backfill_bounded.sh - a backfill always ends: its key range is
# fixed when it starts (the high-water mark, recorded with the checkpoint),
# so 4 clients inserting 50-row batches faster than it updates cannot keep
# it going; rows inserted after the start are left to the sync trigger.
# Progress shows a percentage and an ETA of that fixed range at the pace of
# the recent batches, also for a table never analysed.  A kill -9 mid-way
# and a resume keep the same high-water mark.  With batch_time the batch
# size adapts: slow batches shrink it, fast ones grow it.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db backfill_bounded
command -v pgbench >/dev/null || fail "no pgbench (PHG_TEST_PGBIN)"
ROWS=5000

# never analysed (autovacuum is off in the test cluster): reltuples is -1;
# a statement trigger makes every batch take ~100 ms so progress is logged
psql_q "CREATE TABLE t (id bigserial PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO t (v) SELECT g FROM generate_series(1, $ROWS) g;
	CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
	  \$\$ BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END \$\$;
	CREATE TRIGGER slow AFTER UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION slow()" >/dev/null
assert_eq "-1" "$(psql_q "SELECT reltuples::bigint FROM pg_class WHERE relname = 't'")" "never analysed"

cat >"$T/plan.yaml" <<'YAML'
version: 1
name: bounded
phases:
  - name: fill
    steps:
      - backfill: { table: t, set: "v2 = v * 2", batch_size: 100 }
YAML

# the app: 4 clients inserting 50 rows at a time, 3,000 rows/s in all --
# three times what the backfill (100 rows per ~100 ms batch) gets through
printf '%s\n' 'INSERT INTO t (v) SELECT g FROM generate_series(1, 50) g;' >"$T/ins.sql"
bg_run app pgbench -n -c 4 -j 2 -R 60 -T 120 -f "$T/ins.sql" "$TEST_DB"
APP=$BG_PID
sleep 0.3

# killed after its third batch: the high-water mark is recorded
rc=0
PHG_FAULT=op:apply:fill:1:0:batch:3 phg apply "$T/plan.yaml" >"$T/kill.out" 2>"$T/kill.err" || rc=$?
assert_eq 137 "$rc" "killed after three batches"
high=$(psql_q "SELECT bf_high[1] FROM phasegate.steps")
[[ -n $high ]] || fail "no high-water mark recorded"
((high >= ROWS)) || fail "high-water mark $high below the seeded rows"
no_session() { [[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'phasegate'") == 0 ]]; }
wait_for -t 20 no_session

# resumed while the inserts go on: it ends, and keeps the same range
assert_exit 0 phg apply "$T/plan.yaml"
after=$(psql_q "SELECT count(*) FROM t")
kill -TERM "$APP" 2>/dev/null || true
wait "$APP" 2>/dev/null || true
assert_file_contains "$T/err" "resuming backfill"
assert_file_not_contains "$T/err" "key range fixed" "the resumed run kept the recorded range"
((after > high + 1000)) || fail "the app inserted only $((after - high)) rows during the backfill: the test proves little"
assert_eq "0" "$(psql_q "SELECT count(*) FROM t WHERE id <= $high AND v2 IS DISTINCT FROM v * 2")" \
	"every row of the fixed range is backfilled"
assert_eq "$high" "$(psql_q "SELECT bf_rows FROM phasegate.steps")" "each row of the range updated once, no row past it"
# progress: a percentage and an ETA, with the table never analysed
assert_file_contains "$T/err" "%) in"
assert_file_contains "$T/err" "ETA"
assert_file_contains "$T/kill.err" "key range fixed up to ($high)"

# ---- batch_time: ~100 ms batches against a 20 ms target shrink the size,
# fast batches against a 500 ms target grow it
psql_q "CREATE TABLE slow_t (id int PRIMARY KEY, v int, v2 int);
	INSERT INTO slow_t SELECT g, g FROM generate_series(1, 600) g;
	CREATE TRIGGER slow AFTER UPDATE ON slow_t FOR EACH STATEMENT EXECUTE FUNCTION slow();
	CREATE TABLE fast_t (id int PRIMARY KEY, v int, v2 int);
	INSERT INTO fast_t SELECT g, g FROM generate_series(1, 50000) g" >/dev/null
cat >"$T/adapt.yaml" <<'YAML'
version: 1
name: adaptive
phases:
  - name: fill
    steps:
      - backfill: { table: slow_t, set: "v2 = v", batch_size: 200, batch_time: 20ms }
      - backfill: { table: fast_t, set: "v2 = v", batch_size: 100, batch_time: 500ms }
YAML
assert_exit 0 phg plan "$T/adapt.yaml"
assert_file_contains "$T/out" "the batch size adapts so one batch takes about 20 ms"
assert_exit 0 phg apply "$T/adapt.yaml" -v
assert_file_contains "$T/err" "batch of 200 rows took"
assert_file_contains "$T/err" "(target 20 ms): next 100"
assert_file_contains "$T/err" "batch of 100 rows took"
assert_file_contains "$T/err" "(target 500 ms): next 200"
assert_eq "0|0" "$(psql_q "SELECT (SELECT count(*) FROM slow_t WHERE v2 IS DISTINCT FROM v),
	(SELECT count(*) FROM fast_t WHERE v2 IS DISTINCT FROM v)")" "both backfilled"
pass
