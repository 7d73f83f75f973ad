#!/usr/bin/env bash
# test_core_steps.sh - the column step kinds (add_column, drop_column,
# rename_column, set_not_null; test_core_steps_sync.sh has sync_trigger and
# sql, test_core_steps_scans.sh the kinds that scan rows) against a real
# PostgreSQL: apply, then the schema and data each must produce (catalog
# queries); rollback, then the database exactly as it was before (catalog
# snapshot + row checksums); apply again.  Also the paths that must refuse or
# stop cleanly (a dropped column finalized, NOT NULL that cannot come back),
# `apply --to`, `rollback --to` and `status --json` (SPEC section 3).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps

# ---------------------------------------------------------------- helpers

# shellcheck source=/dev/null
source "$PHG_SOURCE_DIR/tests/integration/steps_lib.sh"

# ================================================================ add_column
psql_q "CREATE TABLE ac (id int PRIMARY KEY, name text NOT NULL);
	INSERT INTO ac SELECT g, 'n' || g FROM generate_series(1, 3) g" >/dev/null
plan ac <<'EOF'
version: 1
name: steps-add-column
phases:
  - name: expand
    steps:
      - add_column: { table: ac, column: note, type: text }
      - add_column: { table: ac, column: qty, type: integer, default: "42" }
      - add_column: { table: ac, column: flag, type: boolean, default: "false", nullable: false }
      - add_column: { table: ac, column: label, type: "varchar(20)", default: "'new'", nullable: false }
  - name: more
    steps:
      - add_column: { table: ac, column: extra, type: bigint }
EOF
assert_exit 0 phg validate "$(P ac)"
checksum=$(sed -n 's/.*checksum \(sha256:[0-9a-f]*\).*/\1/p' "$T/out")
[[ $checksum == sha256:* ]] || fail "validate printed no checksum: $(cat "$T/out")"

assert_eq "not_started expand=pending more=pending" "$(st "$(P ac)")" "status before any run"
before=$(snap ac)
filenode=$(psql_q "SELECT pg_relation_filenode('ac')")

assert_exit 0 phg apply "$(P ac)" --to expand
assert_eq "id integer not null, name text not null, note text, qty integer default 42, flag boolean not null default false, label character varying(20) not null default 'new'::character varying" \
	"$(cols ac)" "add_column: the four columns"
# existing rows show the constant defaults, the table was not rewritten, and
# an app insert that does not name the new columns gets the defaults
assert_eq "3|$filenode|42|f|new" "$(psql_q "INSERT INTO ac (id, name) VALUES (100, 'app');
	SELECT (SELECT count(*) FROM ac WHERE note IS NULL AND qty = 42 AND NOT flag AND label = 'new' AND id < 100),
	       pg_relation_filenode('ac'), qty, flag, label FROM ac WHERE id = 100")" \
	"add_column: constant defaults, no rewrite"
psql_q "DELETE FROM ac WHERE id = 100" >/dev/null
# --to: the run stops after "expand", "more" untouched
s=$(st "$(P ac)" "s['checksum'], s['plan']")
assert_contains "$s" "expand=applied more=pending ('$checksum', 'steps-add-column')" "status after --to"
assert_not_contains "$s" "completed" "a plan stopped with --to is not completed"

assert_exit 0 phg apply "$(P ac)"
assert_eq "completed expand=applied more=applied" "$(st "$(P ac)")" "status after the whole plan"
assert_contains "$(cols ac)" "extra bigint" "phase more applied"
assert_eq 1 "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'steps-add-column'")" \
	"--to then apply is one run"
# again: completed, nothing to do
assert_exit 0 phg apply "$(P ac)"
assert_file_contains "$T/err" "nothing to do"

assert_exit 0 phg rollback "$(P ac)"
assert_eq "$before" "$(snap ac)" "add_column rollback: schema and rows exactly as before"
assert_eq "rolled_back expand=rolled_back more=rolled_back" "$(st "$(P ac)")" "status after rollback"
assert_exit 0 phg rollback "$(P ac)"
assert_file_contains "$T/err" "already rolled back"

assert_exit 0 phg apply "$(P ac)"
assert_eq "completed expand=applied more=applied" "$(st "$(P ac)")" "status after the second apply"
assert_contains "$(cols ac)" "label character varying(20) not null default 'new'::character varying, extra bigint" \
	"second apply: columns again"
assert_eq 2 "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'steps-add-column'")" \
	"an apply after a rollback is a new run"

# rollback --to: only the phases after "expand" are reverted
assert_exit 0 phg rollback "$(P ac)" --to expand
assert_not_contains "$(cols ac)" "extra" "rollback --to expand reverted phase more"
assert_contains "$(cols ac)" "qty integer default 42" "rollback --to expand kept phase expand"
s=$(st "$(P ac)")
assert_contains "$s" "expand=applied more=rolled_back" "status after rollback --to"
assert_exit 0 phg apply "$(P ac)"
assert_eq "completed expand=applied more=applied" "$(st "$(P ac)")" "apply after rollback --to"
assert_contains "$(cols ac)" "extra bigint" "phase more re-applied"
assert_exit 2 phg apply "$(P ac)" --to no_such_phase
assert_file_contains "$T/err" "no_such_phase"

# a column that already exists: the step fails, and the revert must not drop
# the column it did not add
psql_q "CREATE TABLE ace (id int PRIMARY KEY, c int); INSERT INTO ace VALUES (1, 5)" >/dev/null
plan ace <<'EOF2'
version: 1
name: steps-add-column-exists
phases:
  - name: expand
    steps:
      - add_column: { table: ace, column: c, type: int }
EOF2
before=$(snap ace)
assert_exit 3 phg apply "$(P ace)"
assert_file_contains "$T/err" "already exists"
assert_eq "$before" "$(snap ace)" "add_column of an existing column: that column and its data are kept"

# ================================================================ drop_column
psql_q "CREATE TABLE dc (id serial PRIMARY KEY, keep text NOT NULL,
	  gone integer NOT NULL DEFAULT 9, opt text DEFAULT 'o');
	INSERT INTO dc (keep, gone, opt) SELECT 'k' || g, g * 10, 'v' || g FROM generate_series(1, 5) g" >/dev/null
plan dc <<'EOF'
version: 1
name: steps-drop-column
phases:
  - name: contract
    steps:
      - drop_column: { table: dc, column: gone }
  - name: finish
    steps:
      - sql: { up: "SELECT 1", down: "SELECT 1" }
EOF
before=$(snap dc)

assert_exit 0 phg apply "$(P dc)" --to contract
assert_eq "id integer not null default nextval('dc_id_seq'::regclass), keep text not null, _phg_dropped_gone integer, opt text default 'o'::text" \
	"$(cols dc)" "drop_column: tombstone, NOT NULL and default relaxed"
assert_eq 5 "$(psql_q "SELECT count(*) FROM dc WHERE _phg_dropped_gone = id * 10")" "the hidden data is kept"
# the application, which no longer names the column, keeps writing
psql_q "INSERT INTO dc (keep) VALUES ('hidden1'), ('hidden2')" >/dev/null
assert_eq "true|9" "$(psql_q "SELECT memo->>'notnull', memo->>'default' FROM phasegate.steps s
	JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'steps-drop-column' AND s.kind = 'drop_column'")" \
	"drop_column memo records NOT NULL and the default"

assert_exit 0 phg rollback "$(P dc)"
assert_eq "9,9" "$(psql_q "SELECT string_agg(gone::text, ',') FROM dc WHERE keep LIKE 'hidden%'")" \
	"rows written while the column was hidden got its default"
psql_q "DELETE FROM dc WHERE keep LIKE 'hidden%'" >/dev/null
assert_eq "$before" "$(snap dc)" \
	"drop_column rollback: name, NOT NULL, default, data back; no phg_nn_ check left"
assert_eq "rolled_back contract=rolled_back finish=pending" "$(st "$(P dc)")" "status after rollback"

assert_exit 0 phg apply "$(P dc)" --to contract
assert_contains "$(cols dc)" "_phg_dropped_gone integer," "second apply hides the column again"
psql_q "INSERT INTO dc (keep) VALUES ('hidden3')" >/dev/null
# completing the plan drops the tombstone for good ...
assert_exit 0 phg apply "$(P dc)"
assert_eq "id integer not null default nextval('dc_id_seq'::regclass), keep text not null, opt text default 'o'::text" \
	"$(cols dc)" "the plan completed: the hidden column is dropped for good"
# ... after which it cannot be reverted: refused before touching anything
before=$(snap dc)
assert_exit 4 phg rollback "$(P dc)"
assert_file_contains "$T/err" 'step 1 (drop_column) of phase "contract"' "the refusal names the step"
assert_eq "$before" "$(snap dc)" "refused rollback changed nothing"
assert_eq "completed contract=applied finish=applied finalized" \
	"$(st "$(P dc)" "s['phases'][0]['steps'][0]['state']")" "refused rollback left the run completed"

# NOT NULL without a default: rows written while hidden have no value, so
# NOT NULL cannot come back: the revert stops (exit 4) and says why; once the
# operator fills them, rollback finishes the job
psql_q "CREATE TABLE dn (id int PRIMARY KEY, gone int NOT NULL, k text);
	INSERT INTO dn VALUES (1, 10, 'a'), (2, 20, 'b')" >/dev/null
plan dn <<'EOF2'
version: 1
name: steps-drop-column-nodefault
phases:
  - name: contract
    steps:
      - drop_column: { table: dn, column: gone }
  - name: finish
    steps:
      - sql: { up: "SELECT 1", down: "SELECT 1" }
EOF2
before=$(snap dn)
assert_exit 0 phg apply "$(P dn)" --to contract
psql_q "INSERT INTO dn (id, k) VALUES (3, 'hidden')" >/dev/null
psql_q "INSERT INTO dn (id, k) VALUES (4, 'hidden too')" >/dev/null
assert_exit 4 phg rollback "$(P dn)"
assert_file_contains "$T/err" 'step 1 (drop_column) of phase "contract"' "the failed revert names the step"
assert_file_contains "$T/err" '2 row(s) of "dn" written while "gone" was hidden have no value: its NOT NULL cannot come back' \
	"the failed revert says why, and how many rows"
assert_file_contains "$T/err" 'SELECT * FROM "dn" WHERE "gone" IS NULL' "the message says how to find them"
assert_file_contains "$T/err" "run rollback again" "the message says how to finish"
assert_eq "failed contract=applied finish=pending" "$(st "$(P dn)")" "status after the failed revert"
assert_contains "$(cols dn)" "gone integer," "the column is back, without NOT NULL for now"
# the app is no worse off than before the revert: no NOT VALID check is
# left, so its inserts that omit the column still work
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_constraint WHERE conrelid = 'dn'::regclass AND contype = 'c'")" \
	"no NOT VALID check left by the stopped revert"
psql_q "INSERT INTO dn (id, k) VALUES (5, 'after the stop')" >/dev/null
psql_q "UPDATE dn SET gone = 30 WHERE id IN (3, 4, 5)" >/dev/null
assert_exit 0 phg rollback "$(P dn)"
assert_eq "rolled_back contract=rolled_back finish=pending" "$(st "$(P dn)")" "status after the finished rollback"
psql_q "DELETE FROM dn WHERE id IN (3, 4, 5)" >/dev/null
assert_eq "$before" "$(snap dn)" "finished rollback: NOT NULL back, no phg_nn_ check left"

# ================================================================ rename_column
psql_q "CREATE TABLE rn (id int PRIMARY KEY, old_name text);
	INSERT INTO rn SELECT g, 'x' || g FROM generate_series(1, 4) g" >/dev/null
plan rn <<'EOF'
version: 1
name: steps-rename-column
phases:
  - name: rename
    steps:
      - rename_column: { table: rn, column: old_name, to: new_name }
EOF
before=$(snap rn)
assert_exit 0 phg apply "$(P rn)"
assert_eq "id integer not null, new_name text" "$(cols rn)" "rename_column"
assert_eq "x1,x2,x3,x4" "$(psql_q "SELECT string_agg(new_name, ',' ORDER BY id) FROM rn")" "renamed column keeps data"
assert_exit 0 phg rollback "$(P rn)"
assert_eq "$before" "$(snap rn)" "rename_column rollback: schema and rows as before"
assert_exit 0 phg apply "$(P rn)"
assert_eq "id integer not null, new_name text" "$(cols rn)" "rename_column applied again"

# ================================================================ set_not_null
psql_q "CREATE TABLE snn (id int PRIMARY KEY, v int);
	INSERT INTO snn SELECT g, g FROM generate_series(1, 100) g;
	CREATE TABLE snf (id int PRIMARY KEY, v int);
	INSERT INTO snf SELECT g, nullif(g, 50) FROM generate_series(1, 100) g" >/dev/null
plan snn <<'EOF'
version: 1
name: steps-set-not-null
phases:
  - name: enforce
    steps:
      - set_not_null: { table: snn, column: v }
EOF
plan snf <<'EOF'
version: 1
name: steps-set-not-null-fail
phases:
  - name: enforce
    steps:
      - set_not_null: { table: snf, column: v }
EOF
before=$(snap)
assert_exit 0 phg apply "$(P snn)"
assert_eq t "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'snn'::regclass AND attname = 'v'")" \
	"set_not_null: NOT NULL"
assert_eq 0 "$(contype_count snn phg_nn_v)" "set_not_null: no leftover phg_nn_v check"
assert_exit 0 phg rollback "$(P snn)"
assert_eq f "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'snn'::regclass AND attname = 'v'")" \
	"set_not_null rollback: NOT NULL dropped"
assert_eq "$before" "$(snap)" "set_not_null rollback: schema as before"
assert_exit 0 phg apply "$(P snn)"
assert_eq t "$(psql_q "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'snn'::regclass AND attname = 'v'")" \
	"set_not_null applied again"
# a NULL: VALIDATE fails, the phase is rolled back, no NOT VALID check is left
before=$(snap)
assert_exit 3 phg apply "$(P snf)"
assert_file_contains "$T/err" "snf"
assert_eq "$before" "$(snap)" "failed set_not_null left nothing behind"
assert_eq 0 "$(contype_count snf phg_nn_v)" "no phg_nn_v left on snf"
assert_eq "failed enforce=rolled_back" "$(st "$(P snf)")" "status after the failed set_not_null"

# a column that was NOT NULL already: the rollback leaves it NOT NULL
psql_q "CREATE TABLE snk (id int PRIMARY KEY, v int NOT NULL); INSERT INTO snk VALUES (1, 1)" >/dev/null
plan snk <<'EOF2'
version: 1
name: steps-set-not-null-kept
phases:
  - name: enforce
    steps:
      - set_not_null: { table: snk, column: v }
EOF2
before=$(snap snk)
assert_exit 0 phg apply "$(P snk)"
assert_exit 0 phg rollback "$(P snk)"
assert_eq "$before" "$(snap snk)" "set_not_null rollback keeps a NOT NULL it did not add"

# ================================================================ drop_column, nullable
# SPEC section 2, drop_column reverts: "restores name, default, data; rows
# written while it was hidden get its default" - for every column, not only
# NOT NULL ones (docs/plan-format.md says such rows keep NULL for a nullable
# column, which the SPEC does not allow).  Last in the file, so that the
# checks above run whatever the outcome.
psql_q "CREATE TABLE dcn (id int PRIMARY KEY, opt text DEFAULT 'o');
	INSERT INTO dcn VALUES (1, 'v1'), (2, NULL)" >/dev/null
plan dcn <<'EOF'
version: 1
name: steps-drop-column-nullable
phases:
  - name: contract
    steps:
      - drop_column: { table: dcn, column: opt }
  - name: finish
    steps:
      - sql: { up: "SELECT 1", down: "SELECT 1" }
EOF
assert_exit 0 phg apply "$(P dcn)" --to contract
psql_q "INSERT INTO dcn (id) VALUES (3)" >/dev/null
assert_exit 0 phg rollback "$(P dcn)"
assert_eq "id integer not null, opt text default 'o'::text" "$(cols dcn)" "nullable drop_column rollback: name and default"
assert_eq "1:v1,2:NULL,3:o" "$(psql_q "SELECT string_agg(id || ':' || coalesce(opt, 'NULL'), ',' ORDER BY id) FROM dcn")" \
	"nullable drop_column rollback: old rows keep their data (NULL too); the row written while hidden gets the default"

pass
