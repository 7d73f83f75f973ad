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

# snap [TABLE...] - every user-visible schema object of schema public, one
# per line: columns (with attnum, type, NOT NULL, default), constraints (with
# validity), indexes (with validity), triggers, relations, the phasegate sync
# functions; and a checksum of the rows of each TABLE (one query).
snap() {
	local t data=""
	for t in "$@"; do
		data+=" UNION ALL SELECT 'rows $t ' || count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM $t x"
	done
	psql_q "SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	  SELECT format('col %s.%s #%s %s notnull=%s default=%s', c.relname, a.attname, a.attnum,
	         format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS line
	    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
	     AND a.attnum > 0 AND NOT a.attisdropped
	  UNION ALL
	  SELECT format('con %s %s %s valid=%s', conrelid::regclass, conname,
	         pg_get_constraintdef(oid), convalidated)
	    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
	  UNION ALL
	  SELECT format('idx %s %s valid=%s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid),
	         i.indisvalid)
	    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	   WHERE c.relnamespace = 'public'::regnamespace
	  UNION ALL
	  SELECT format('trg %s', pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal
	  UNION ALL
	  SELECT format('fn %s.%s', pronamespace::regnamespace, proname) FROM pg_proc
	   WHERE proname LIKE 'phg%'
	  UNION ALL
	  SELECT format('rel %s %s', relname, relkind) FROM pg_class
	   WHERE relnamespace = 'public'::regnamespace $data) s"
}

# cols TABLE - "name type [not null] [default X], ..." in column order
cols() {
	psql_q "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	          || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
	          || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum)
	        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	        WHERE a.attrelid = '$1'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
}

# st PLAN [PYEXPR] - "RUNSTATE phase=state phase=state ..." from status --json,
# then PYEXPR (over the status object s) if given.  The object is checked
# against SPEC section 3 on the way: a violation is printed instead.
st() {
	phg status "$1" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
bad = []
for k in ("plan", "checksum", "env", "state", "phases"):
    if k not in s:
        bad.append("missing key " + k)
if s.get("state") not in ("not_started", "running", "interrupted", "completed", "failed", "rolled_back"):
    bad.append("bad plan state %r" % s.get("state"))
for p in s.get("phases", []):
    if p.get("state") not in ("pending", "running", "applied", "failed", "rolled_back"):
        bad.append("bad phase state %r" % p.get("state"))
    for k in ("name", "started_at", "finished_at"):
        if k not in p:
            bad.append("phase without " + k)
    if p.get("state") == "applied" and not (p.get("started_at") and p.get("finished_at")):
        bad.append("applied phase %s without times" % p.get("name"))
    if p.get("state") == "pending" and p.get("finished_at"):
        bad.append("pending phase %s with finished_at" % p.get("name"))
out = " ".join([str(s.get("state"))] + ["%s=%s" % (p["name"], p["state"]) for p in s["phases"]])
if len(sys.argv) > 1:
    out += " " + str(eval(sys.argv[1]))
print("; ".join(bad) if bad else out)' "${@:2}"
}

plan() { cat >"$T/$1.yaml"; }
P() { printf '%s/%s.yaml' "$T" "$1"; }
contype_count() { # TABLE CONNAME
	psql_q "SELECT count(*) FROM pg_constraint WHERE conrelid = '$1'::regclass AND conname = '$2'"
}

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
