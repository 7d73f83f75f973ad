#!/usr/bin/env bash
# test_core_swap.sh - the atomic swap: a drop_column of X right before a
# rename_column of Y to X commit as one transaction, so an application that
# names X in every statement never fails -- also when a transaction of its
# own holds the table and the swap has to wait and retry, and when the
# phase fails after the swap and is rolled back (the mirror, also one
# transaction).  The app is pgbench: 4 clients, a read and an update of
# `status` by id; a statement that fails aborts its client (exit 2).
# `plan` shows the swap as one transaction; validate warns when steps stand
# between the two (they see the swapped names already).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_swap
command -v pgbench >/dev/null || fail "no pgbench (PHG_TEST_PGBIN)"

seed() { # TABLE
	psql_q "CREATE TABLE $1 (id int PRIMARY KEY, status varchar(20) NOT NULL DEFAULT 'queued');
		INSERT INTO $1 SELECT g, (ARRAY['queued','running','done'])[1 + g % 3] FROM generate_series(1, 2000) g" >/dev/null
}

plan() { # TABLE NAME [extra contract steps...]
	local t=$1 name=$2
	shift 2
	cat <<YAML
version: 1
name: $name
settings: { lock_timeout: 100ms, lock_retries: 100, retry_backoff: 50ms, retry_backoff_max: 200ms }
phases:
  - name: expand
    steps:
      - add_column: { table: $t, column: new_status, type: "varchar(20)" }
      - sync_trigger: { table: $t, from: status, to: new_status }
      - backfill: { table: $t, set: "new_status = status", where: "new_status IS DISTINCT FROM status", batch_size: 500 }
      - set_not_null: { table: $t, column: new_status }
  - name: contract
    steps:
      - drop_column: { table: $t, column: status }
      - rename_column: { table: $t, column: new_status, to: status }
YAML
	for s in "$@"; do
		printf '      - %s\n' "$s"
	done
}

# app TABLE SECONDS - pgbench in the background; sets APP_PID
app() {
	cat >"$T/$1.bench" <<SQL
\set id random(1, 2000)
SELECT status FROM $1 WHERE id = :id;
UPDATE $1 SET status = 'done' WHERE id = :id;
SQL
	bg_run "app_$1" pgbench -n -c 4 -j 2 -T "$2" -f "$T/$1.bench" "$TEST_DB"
	APP_PID=$BG_PID
}

app_clean() { # TABLE - pgbench ended with no failed statement
	local rc=0
	wait "$APP_PID" || rc=$?
	assert_eq 0 "$rc" "pgbench exit status (2: a client aborted on an error)"
	assert_file_not_contains "$T/app_$1.err" "aborted" "no application statement failed"
	assert_file_not_contains "$T/app_$1.err" "does not exist" "the column never went missing"
	grep -Eq 'number of transactions actually processed: [1-9]' "$T/app_$1.out" ||
		fail "the app did not run: $(cat "$T/app_$1.out")"
}

# hold TABLE SECONDS - a transaction of the app's that holds the table
hold() {
	bg_run "hold_$1" psql -X -q -d "$TEST_DB" -c "BEGIN; SELECT count(*) FROM $1; SELECT pg_sleep($2); COMMIT"
}

# ---- plan shows one transaction; non-adjacent steps are warned about
seed jobs
plan jobs swap-apply >"$T/apply.yaml"
assert_exit 0 phg plan "$T/apply.yaml"
assert_file_contains "$T/out" 'hide it as "_phg_dropped_status" and rename "new_status" to "status", in one transaction'
assert_file_contains "$T/out" "nothing of its own: it runs in the transaction of the drop_column above, the swap"
sed -e 's/^      - rename_column: .*$/      - sql: { up: "SELECT 1", down: "SELECT 1" }\n&/' "$T/apply.yaml" >"$T/apart.yaml"
assert_file_contains "$T/apart.yaml" 'up: "SELECT 1"'
assert_exit 0 phg validate "$T/apart.yaml"
assert_file_contains "$T/err" "is one transaction with step 1, which hides it: the steps in between already see"

# ---- the swap under the app, with a blocking app transaction
assert_exit 0 phg apply "$T/apply.yaml" --to expand
app jobs 6
sleep 1
hold jobs 1.5
sleep 0.2
assert_exit 0 phg apply "$T/apply.yaml"
assert_file_contains "$T/err" "retrying in" "the swap waited for the app's transaction"
app_clean jobs
assert_eq "id,status" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped")" "swapped, then dropped for good"
assert_eq "0" "$(psql_q "SELECT count(*) FROM jobs WHERE status IS NULL")" "every row has its value"

# ---- the phase fails after the swap: the mirror, under the app
seed jobs2
plan jobs2 swap-revert 'sql: { up: "SELECT pg_sleep(1); SELECT 1 / 0", down: "SELECT 1" }' >"$T/revert.yaml"
assert_exit 0 phg apply "$T/revert.yaml" --to expand
app jobs2 6
sleep 1
assert_exit 3 phg apply "$T/revert.yaml"
assert_file_contains "$T/err" "swap back column"
assert_file_contains "$T/err" "automatic rollback complete"
app_clean jobs2
assert_eq "id,status,new_status" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'jobs2'::regclass AND attnum > 0 AND NOT attisdropped")" "as before the contract phase"
assert_eq "0" "$(psql_q "SELECT count(*) FROM jobs2 WHERE status IS DISTINCT FROM new_status")" \
	"what the app wrote through the swapped column reads back through both names"
pass
