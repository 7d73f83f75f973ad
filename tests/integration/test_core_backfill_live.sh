#!/usr/bin/env bash
# test_core_backfill_live.sh - a backfill while the application writes: rows
# the application inserts during the backfill, before and after the cursor,
# are all covered (the final sweep of a `where` backfill catches those
# inserted behind the cursor), and the application's inserts are never held
# up for long (SPEC: "no batch holds row locks for long; app writes keep
# flowing").
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_backfill_live

N=20000
psql_q "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO t (id, v) SELECT g * 2, g FROM generate_series(1, $N) g;
	ANALYZE t;
	-- every batch takes at least 20 ms: the backfill outlasts the app's inserts
	CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql
	  AS \$\$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END \$\$;
	CREATE TRIGGER slow_batch AFTER UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()" >/dev/null

cat >"$T/plan.yaml" <<'EOF'
version: 1
name: backfill-live
phases:
  - name: backfill
    steps:
      - backfill: { table: t, set: "v2 = v * 2", where: "v2 IS NULL", batch_size: 200 }
EOF

batches_gt() {
	local b
	b=$(psql_q "SELECT coalesce(max(bf_batches), 0) FROM phasegate.steps") || return 1
	[[ $b -gt $1 ]]
}

bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
APPLY_PID=$BG_PID
wait_for -t 30 batches_gt 10

# the application: 40 inserts, each its own transaction, odd ids spread over
# the whole key range (behind the cursor and ahead of it), timed
{
	printf '%s\n' '\timing on'
	for i in $(seq 1 40); do
		id=$((i * N / 20 - 1))
		echo "INSERT INTO t (id, v) VALUES ($id, $id);"
	done
} >"$T/app.sql"
cursor_before=$(psql_q "SELECT bf_last[1] FROM phasegate.steps")
psql -X -q -d "$TEST_DB" -v ON_ERROR_STOP=1 -f "$T/app.sql" >"$T/app.out"
pass_after=$(psql_q "SELECT bf_pass FROM phasegate.steps")
assert_eq 1 "$pass_after" "the app's inserts happened during the first pass (else the test proves little)"
behind=$(psql_q "SELECT count(*) FROM t WHERE id % 2 = 1 AND id < $cursor_before")
((behind >= 3)) || fail "only $behind inserts landed behind the cursor ($cursor_before)"

rc=0
wait "$APPLY_PID" || rc=$?
assert_eq 0 "$rc" "the backfill completed"
assert_eq "0|40" "$(psql_q "SELECT count(*) FILTER (WHERE v2 IS DISTINCT FROM v * 2),
	count(*) FILTER (WHERE id % 2 = 1) FROM t")" "every row, the app's included, is backfilled"
# (the step's cursor is reset when its op commits, so the sweep shows in the
# log and the event log, not in the checkpoint left behind)
assert_eq "completed" "$(psql_q "SELECT r.state FROM phasegate.runs r")" "the run completed"
assert_file_contains "$T/apply.err" "final sweep from the start" "the final sweep ran"
assert_eq "1" "$(psql_q "SELECT count(*) FROM phasegate.events WHERE kind = 'backfill_sweep'")" \
	"the final sweep is in the event log"

# the app's inserts were not held up
n=$(grep -c '^Time:' "$T/app.out")
assert_eq 40 "$n" "40 timed inserts"
max=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' "$T/app.out" | sort -n | tail -n 1)
max=${max%.*}
((max < 1000)) || fail "an application insert took ${max} ms during the backfill"

pass
