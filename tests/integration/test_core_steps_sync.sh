#!/usr/bin/env bash
# test_core_steps_sync.sh - sync_trigger and sql steps against a real
# PostgreSQL: apply, then the triggers and the rows they keep in step (both
# ways with down_expr); a later drop_column of `from` removes the trigger
# first (writes keep working) and its revert (rollback --to) puts it back;
# rollback leaves the database exactly as before; apply again.  sql: up and
# down; without down, rollback refuses before touching anything (exit 4,
# naming the step), and rollback --to below it still works.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps_sync

# ---------------------------------------------------------------- helpers

# shellcheck source=/dev/null
source "$PHG_SOURCE_DIR/tests/integration/steps_lib.sh"

# ================================================================ sync_trigger
psql_q "CREATE TABLE stt (id int PRIMARY KEY, status text, new_status text, code int, code2 int);
	INSERT INTO stt VALUES (1, 'old', NULL, 1, NULL)" >/dev/null
plan stt <<'EOF'
version: 1
name: steps-sync-trigger
phases:
  - name: dual
    steps:
      - sync_trigger: { table: stt, from: status, to: new_status }
      - sync_trigger: { table: stt, from: code, to: code2, expr: "code * 10", down_expr: "code2 / 10" }
  - name: contract
    steps:
      - drop_column: { table: stt, column: status }
  - name: finish
    steps:
      - sql: { up: "SELECT 1", down: "SELECT 1" }
EOF
trg() { psql_q "SELECT coalesce(string_agg(tgname, ',' ORDER BY tgname), '') FROM pg_trigger
	WHERE tgrelid = 'stt'::regclass AND NOT tgisinternal"; }
before=$(snap stt)
assert_exit 0 phg apply "$(P stt)" --to dual
assert_eq "phg_sync_code_code2,phg_sync_status_new_status" "$(trg)" "sync_trigger: both triggers"
# each write and the row it produced, in one session
w() { psql_q "$1; SELECT concat_ws('|', status, new_status, code, code2) FROM stt WHERE id = $2"; }
assert_eq "a|a" "$(w "INSERT INTO stt (id, status) VALUES (2, 'a')" 2)" "an INSERT of from fills to"
assert_eq "b|b" "$(w "UPDATE stt SET status = 'b' WHERE id = 2" 2)" "an UPDATE of from fills to"
assert_eq "3|30" "$(w "INSERT INTO stt (id, code) VALUES (3, 3)" 3)" "expr: to = code * 10"
assert_eq "5|50" "$(w "INSERT INTO stt (id, code2) VALUES (4, 50)" 4)" "down_expr: an INSERT of only to fills from"
assert_eq "7|70" "$(w "UPDATE stt SET code2 = 70 WHERE id = 4" 4)" "down_expr: an UPDATE of only to fills from"
assert_eq "8|80" "$(w "UPDATE stt SET code = 8 WHERE id = 4" 4)" "an UPDATE of from still fills to"

# drop_column of `from`: the trigger goes first, app inserts keep working
assert_exit 0 phg apply "$(P stt)" --to contract
assert_eq "phg_sync_code_code2" "$(trg)" "drop_column of from removed its sync trigger"
assert_contains "$(cols stt)" "_phg_dropped_status text" "status hidden"
assert_eq "n5" "$(psql_q "INSERT INTO stt (id, new_status) VALUES (5, 'n5');
	SELECT new_status FROM stt WHERE id = 5")" "an insert works with status hidden"
assert_eq "n2" "$(psql_q "UPDATE stt SET new_status = 'n2' WHERE id = 2;
	SELECT new_status FROM stt WHERE id = 2")" "an update works with status hidden"
s=$(st "$(P stt)")
assert_contains "$s" "dual=applied contract=applied finish=pending" "status after --to contract"

# rollback --to dual: status back, and its trigger with it
assert_exit 0 phg rollback "$(P stt)" --to dual
assert_eq "phg_sync_code_code2,phg_sync_status_new_status" "$(trg)" "reverting drop_column restored the trigger"
assert_contains "$(cols stt)" "status text, new_status text" "status restored"
assert_eq "z|z" "$(w "INSERT INTO stt (id, status) VALUES (6, 'z')" 6)" "the restored trigger works"
assert_contains "$(st "$(P stt)")" "dual=applied contract=rolled_back finish=pending" "status after rollback --to dual"

assert_exit 0 phg rollback "$(P stt)"
psql_q "DELETE FROM stt WHERE id > 1" >/dev/null
assert_eq "$before" "$(snap stt)" "sync_trigger rollback: schema and rows as before"
assert_exit 0 phg apply "$(P stt)" --to dual
assert_eq "s7|s7|9|90" "$(w "INSERT INTO stt (id, status, code2) VALUES (7, 's7', 90)" 7)" "sync triggers applied again"

# ================================================================ sql
psql_q "CREATE TABLE sqt (id int PRIMARY KEY)" >/dev/null
plan sq <<'EOF'
version: 1
name: steps-sql
phases:
  - name: one
    steps:
      - sql: { up: "CREATE TABLE sq_made (id int PRIMARY KEY); INSERT INTO sq_made VALUES (1), (2)", down: "DROP TABLE sq_made" }
EOF
plan sqn <<'EOF'
version: 1
name: steps-sql-nodown
phases:
  - name: one
    steps:
      - sql: { up: "CREATE TABLE sq_once (id int PRIMARY KEY); INSERT INTO sq_once VALUES (1)" }
  - name: two
    steps:
      - add_column: { table: sqt, column: c, type: int }
EOF
before=$(snap)
assert_exit 0 phg apply "$(P sq)"
assert_eq "1,2" "$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM sq_made")" "sql up ran"
assert_exit 0 phg rollback "$(P sq)"
assert_eq "$before" "$(snap)" "sql down ran: schema as before"
assert_exit 0 phg apply "$(P sq)"
assert_eq 2 "$(psql_q "SELECT count(*) FROM sq_made")" "sql up ran again"
# no down: rollback refuses, naming the step, before touching anything (not
# even phase two, which could be reverted)
assert_exit 0 phg apply "$(P sqn)"
before=$(snap sq_once)
assert_exit 4 phg rollback "$(P sqn)"
assert_file_contains "$T/err" 'step 1 (sql) of phase "one"' "the refusal names the step"
assert_file_contains "$T/err" "down"
assert_eq "$before" "$(snap sq_once)" "refused sql rollback changed nothing (phase two kept too)"
assert_eq "completed one=applied two=applied" "$(st "$(P sqn)")" "refused sql rollback left the run completed"
# rollback --to one does not need to revert the sql step
assert_exit 0 phg rollback "$(P sqn)" --to one
assert_eq "id integer not null" "$(cols sqt)" "rollback --to one reverted phase two"
assert_eq "interrupted one=applied two=rolled_back" "$(st "$(P sqn)")" "status after rollback --to one"

pass
