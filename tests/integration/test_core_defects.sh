#!/usr/bin/env bash
# test_core_defects.sh - defects found building the fault matrix, kept fixed:
#  1. reverting a contract phase (drop_column status + rename_column
#     new_status -> status) keeps what the app wrote through the swapped
#     column: it reads back through the old name, in both columns (the
#     sync trigger came back before the fill and the fill overwrote it);
#  2. a sync trigger put back by a revert after the plan's finalize dropped
#     its function (a kill between the two finalize ops) is recreated with
#     its function;
#  3. rollback of a run that applied nothing marks the run rolled back;
#  4. SIGINT while a DDL waits for its next attempt (lock retry backoff of
#     20 s) ends the wait at once: exit 130 in well under the wait, state
#     saved, and apply afterwards completes;
#  5. `plan` prints the very statement a backfill batch runs (it used to
#     print a different one than the executor built);
#  6. SIGTERM while the automatic rollback waits for a lock ends it with
#     exit 130 (the failed run is recorded interrupted), and rollback
#     finishes it;
#  7. apply after a rollback that stopped between two steps of a phase
#     refuses (it would have skipped the reverted step and completed);
#  8. a drop_column revert fills only from a column its recorded sync
#     trigger linked (two dropped columns of one trigger: the other one is
#     hidden too).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db defects

no_phasegate_session() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND application_name = 'phasegate'") == 0 ]]
}

# ---------------------------------------------------------------- 1
psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, status varchar(20) NOT NULL DEFAULT 'queued');
        INSERT INTO jobs (status) SELECT (ARRAY['queued','running'])[1 + g % 2] FROM generate_series(1, 50) g" >/dev/null
cat >"$T/expand.yaml" <<'YAML'
version: 1
name: defect-swap-revert
phases:
  - name: expand
    steps:
      - add_column: { table: jobs, column: new_status, type: "varchar(20)" }
      - sync_trigger: { table: jobs, from: status, to: new_status }
      - backfill: { table: jobs, set: "new_status = status", where: "new_status IS DISTINCT FROM status" }
      - set_not_null: { table: jobs, column: new_status }
YAML
cat "$T/expand.yaml" - >"$T/swap.yaml" <<'YAML'
  - name: contract
    steps:
      - drop_column: { table: jobs, column: status }
      - rename_column: { table: jobs, column: new_status, to: status }
      # the app, writing through the swapped column
      - sql: { up: "UPDATE jobs SET status = 'done' WHERE id IN (1, 2, 3)", down: "SELECT 1" }
      - sql: { up: "INSERT INTO jobs (status) VALUES ('failed')", down: "SELECT 1" }
      # then something fails: the phase is rolled back automatically
      - sql: { up: "SELECT 1 / 0", down: "SELECT 1" }
YAML
assert_exit 3 phg apply "$T/swap.yaml"
assert_file_contains "$T/err" "automatic rollback complete"
assert_eq "done,done,done" "$(psql_q "SELECT string_agg(status, ',' ORDER BY id) FROM jobs WHERE id IN (1, 2, 3)")" \
	"the app's writes through the swapped column read back through the old name"
assert_eq "done,done,done" "$(psql_q "SELECT string_agg(new_status, ',' ORDER BY id) FROM jobs WHERE id IN (1, 2, 3)")" \
	"and the new column keeps them"
assert_eq "failed|failed" "$(psql_q "SELECT status, new_status FROM jobs WHERE id = 51")" \
	"a row inserted while swapped"
assert_eq "0" "$(psql_q "SELECT count(*) FROM jobs WHERE status IS DISTINCT FROM new_status")" "columns in step"
assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal")" \
	"the sync trigger is back"
psql_q "UPDATE jobs SET status = 'running' WHERE id = 4" >/dev/null
assert_eq "running" "$(psql_q "SELECT new_status FROM jobs WHERE id = 4")" "and it syncs"
assert_eq "t" "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attname = 'status'")" \
	"NOT NULL restored"

# ---------------------------------------------------------------- 2
# the finalize of the sync trigger (drop its function once unused) ran, the
# drop_column's did not: the rollback puts the trigger back with its function
psql_q "SET client_min_messages = warning; DROP TABLE jobs; DROP SCHEMA phasegate CASCADE;
        CREATE TABLE jobs (id bigserial PRIMARY KEY, status varchar(20) NOT NULL DEFAULT 'queued');
        INSERT INTO jobs (status) SELECT 'queued' FROM generate_series(1, 20)" >/dev/null
cat "$T/expand.yaml" - >"$T/fin.yaml" <<'YAML'
  - name: contract
    steps:
      - drop_column: { table: jobs, column: status }
      - rename_column: { table: jobs, column: new_status, to: status }
YAML
sed -i 's/^name: .*/name: defect-finalize-kill/' "$T/fin.yaml"
assert_file_contains "$T/fin.yaml" "name: defect-finalize-kill"
rc=0
PHG_FAULT=op:finalize:expand:2:0:committed phg apply "$T/fin.yaml" >"$T/out" 2>"$T/err" || rc=$?
assert_eq 137 "$rc" "killed between the two finalize ops"
wait_for -t 20 no_phasegate_session
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_proc WHERE proname LIKE 'phg_sync_%'")" "the function was dropped"
assert_exit 0 phg rollback "$T/fin.yaml"
assert_eq "id,status" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped")" "the table is as before"
assert_eq "rolled_back" "$(psql_q "SELECT state FROM phasegate.runs")" "run rolled back"

# ---------------------------------------------------------------- 3
psql_q "SET client_min_messages = warning; DROP SCHEMA phasegate CASCADE" >/dev/null
rc=0
PHG_FAULT=run:created phg apply "$T/fin.yaml" >"$T/out" 2>"$T/err" || rc=$?
assert_eq 137 "$rc" "killed right after the run was created"
wait_for -t 20 no_phasegate_session
assert_exit 0 phg rollback "$T/fin.yaml"
assert_file_contains "$T/err" "nothing to roll back"
assert_eq "rolled_back" "$(psql_q "SELECT state FROM phasegate.runs")" "the run is over"

# ---------------------------------------------------------------- 4
now_ms() { local t=${EPOCHREALTIME//[.,]/}; printf '%s\n' $((10#$t / 1000)); }
psql_q "CREATE TABLE locked (id int PRIMARY KEY)" >/dev/null
cat >"$T/backoff.yaml" <<'YAML'
version: 1
name: defect-sigint-backoff
settings:
  lock_timeout: 100ms
  lock_retries: 10
  retry_backoff: 20s
  retry_backoff_max: 20s
phases:
  - name: expand
    steps:
      - add_column: { table: locked, column: c, type: int }
YAML
# a transaction holding a lock on the table for as long as the test needs
bg_run blocker psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE locked IN ACCESS SHARE MODE; SELECT pg_sleep(60)"
blocked() { [[ $(psql_q "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'locked' AND l.granted") -ge 1 ]]; }
wait_for -t 10 blocked
bg_run backoff "$PHASEGATE" apply "$T/backoff.yaml"
pid=$BG_PID
wait_for -t 20 grep -q "retrying in" "$T/backoff.err"
t0=$(now_ms)
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
elapsed=$(($(now_ms) - t0))
assert_eq 130 "$rc" "SIGINT during the backoff"
((elapsed < 5000)) || fail "SIGINT during a 20 s backoff (10 s or more before the fix) took ${elapsed} ms to exit"
assert_file_contains "$T/backoff.err" "interrupted: state saved"
assert_eq "interrupted" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'defect-sigint-backoff'")" "state saved"
psql_q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()
	AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()" >/dev/null
assert_exit 0 phg apply "$T/backoff.yaml"
assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'locked'::regclass AND attname = 'c'")" "applied after"

# ---------------------------------------------------------------- 5
# a statement trigger records the text of each statement that updates the
# table (current_query(): what the client sent)
psql_q "CREATE TABLE bf (id int PRIMARY KEY, v int, w int);
	INSERT INTO bf SELECT g, g FROM generate_series(1, 250) g;
	CREATE TABLE seen (q text);
	CREATE FUNCTION seen_rec() RETURNS trigger LANGUAGE plpgsql AS
	  \$\$ BEGIN INSERT INTO seen VALUES (current_query()); RETURN NULL; END \$\$;
	CREATE TRIGGER seen_rec AFTER UPDATE ON bf FOR EACH STATEMENT EXECUTE FUNCTION seen_rec()" >/dev/null
cat >"$T/bf.yaml" <<'YAML'
version: 1
name: defect-plan-is-what-runs
phases:
  - name: fill
    steps:
      - backfill: { table: bf, set: "w = v + 1", where: "w IS NULL", batch_size: 100, key: [id] }
YAML
assert_exit 0 phg plan "$T/bf.yaml"
# the statement as printed: from WITH to the closing ';', without it
awk '/^WITH batch/ { on = 1 } on { print } on && /;$/ { exit }' "$T/out" | sed '$ s/;$//' >"$T/printed.sql"
[[ -s $T/printed.sql ]] || fail "plan printed no batch statement"
assert_exit 0 phg apply "$T/bf.yaml"
assert_eq "0" "$(psql_q "SELECT count(*) FROM bf WHERE w IS DISTINCT FROM v + 1")" "backfilled"
assert_eq "1" "$(psql_q "SELECT count(DISTINCT q) FROM seen")" "every batch ran the same statement text"
n=$(psql_q "SELECT count(*) FROM seen")
((n >= 3)) || fail "only $n batch statements were seen"
psql -X -A -t -q -d "$TEST_DB" -c "SELECT DISTINCT q FROM seen" >"$T/ran.sql"
if ! diff -u "$T/printed.sql" "$T/ran.sql" >"$T/diff"; then
	fail "the batch statement that ran is not the one plan printed: $(cat "$T/diff")"
fi

# ---------------------------------------------------------------- 6
psql_q "CREATE TABLE ar (id int PRIMARY KEY)" >/dev/null
cat >"$T/ar.yaml" <<'YAML'
version: 1
name: defect-sigterm-auto-rollback
settings: { lock_timeout: 100ms, lock_retries: 10, retry_backoff: 20s, retry_backoff_max: 20s }
phases:
  - name: p
    steps:
      - add_column: { table: ar, column: c, type: int }
      # time for the test to take a lock, then the step fails: the phase is
      # rolled back, and DROP COLUMN waits behind that lock
      - sql: { up: "SELECT pg_sleep(1.5); SELECT 1 / 0", down: "SELECT 1" }
YAML
bg_run ar "$PHASEGATE" apply "$T/ar.yaml"
pid=$BG_PID
col_there() { [[ $(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = '$1'::regclass AND attname = '$2' AND NOT attisdropped") == 1 ]]; }
wait_for -t 20 col_there ar c
bg_run arlock psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE ar IN ACCESS SHARE MODE; SELECT pg_sleep(60)"
wait_for -t 20 grep -q "retrying in" "$T/ar.err"
assert_file_contains "$T/ar.err" "rolling back automatically"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
assert_eq 130 "$rc" "SIGTERM during the automatic rollback"
assert_file_not_contains "$T/ar.err" "illegal transition"
assert_eq "interrupted" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'defect-sigterm-auto-rollback'")" "recorded"
psql_q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()
	AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()" >/dev/null
assert_exit 0 phg rollback "$T/ar.yaml"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'ar'::regclass AND attname = 'c' AND NOT attisdropped")" "reverted"

# ---------------------------------------------------------------- 7
psql_q "CREATE TABLE two (id int PRIMARY KEY)" >/dev/null
cat >"$T/two.yaml" <<'YAML'
version: 1
name: defect-half-rolled-back
phases:
  - name: p
    steps:
      - add_column: { table: two, column: a, type: int }
      - add_column: { table: two, column: b, type: int }
YAML
assert_exit 0 phg apply "$T/two.yaml"
rc=0
PHG_FAULT=step:p:2:reverted phg rollback "$T/two.yaml" >"$T/out" 2>"$T/err" || rc=$?
assert_eq 137 "$rc" "killed after the first step was reverted"
wait_for -t 20 no_phasegate_session
assert_exit 1 phg apply "$T/two.yaml"
assert_file_contains "$T/err" "was interrupted"
assert_eq "a" "$(psql_q "SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'two'::regclass AND attnum > 1 AND NOT attisdropped")" \
	"apply did not build on the half-rolled-back phase"
assert_exit 0 phg rollback "$T/two.yaml"
assert_eq "" "$(psql_q "SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'two'::regclass AND attnum > 1 AND NOT attisdropped")" "rolled back"

# ---------------------------------------------------------------- 8
psql_q "CREATE TABLE pair (id int PRIMARY KEY, a text DEFAULT 'x', b text);
	INSERT INTO pair (id, a, b) SELECT g, 'x', 'x' FROM generate_series(1, 10) g" >/dev/null
cat >"$T/pair.yaml" <<'YAML'
version: 1
name: defect-two-dropped
phases:
  - name: p
    steps:
      - sync_trigger: { table: pair, from: a, to: b }
      - drop_column: { table: pair, column: b }
      - drop_column: { table: pair, column: a }
      - sql: { up: "SELECT 1 / 0", down: "SELECT 1" }
YAML
assert_exit 3 phg apply "$T/pair.yaml"
assert_file_contains "$T/err" "automatic rollback complete"
assert_eq "id,a,b" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'pair'::regclass AND attnum > 0 AND NOT attisdropped")" \
	"both columns are back"
assert_eq "10" "$(psql_q "SELECT count(*) FROM pair WHERE a = 'x' AND b = 'x'")" "with their values"
pass
