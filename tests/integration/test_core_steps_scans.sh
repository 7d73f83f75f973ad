#!/usr/bin/env bash
# test_core_steps_scans.sh - the step kinds that scan or rewrite rows
# (backfill, create_index, add_check, add_foreign_key; test_core_steps.sh and
# test_core_steps_sync.sh have the others) against a real PostgreSQL: apply,
# then the schema and data they must produce (catalog queries); rollback,
# then the database exactly as it was before (catalog snapshot + row
# checksums); apply again.  Also the failures that must leave nothing
# behind: a unique index build on duplicates, a failed VALIDATE, a backfill
# without a (unique) key; and an INVALID leftover index dropped and rebuilt.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps_scans

# ---------------------------------------------------------------- helpers

# shellcheck source=/dev/null
source "$PHG_SOURCE_DIR/tests/integration/steps_lib.sh"

# ================================================================ backfill
psql_q "CREATE TABLE bf (id int PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO bf SELECT g, g FROM generate_series(1, 1000) g;
	CREATE TABLE bfk (a int NOT NULL, b int NOT NULL, v int, w int, UNIQUE (a, b));
	INSERT INTO bfk SELECT g % 7, g, g, NULL FROM generate_series(1, 50) g;
	CREATE TABLE bfn (a int, v int, w int);
	INSERT INTO bfn SELECT g, g FROM generate_series(1, 10) g" >/dev/null
plan bf <<'EOF'
version: 1
name: steps-backfill
phases:
  - name: backfill
    steps:
      - backfill: { table: bf, set: "v2 = v * 2", where: "v2 IS NULL", batch_size: 100, down: "v2 = NULL" }
EOF
plan bfk <<'EOF'
version: 1
name: steps-backfill-key
phases:
  - name: backfill
    steps:
      - backfill: { table: bfk, set: "w = v + 1", key: [a, b], batch_size: 7 }
EOF
plan bfn <<'EOF'
version: 1
name: steps-backfill-nokey
phases:
  - name: backfill
    steps:
      - backfill: { table: bfn, set: "w = v" }
EOF
before=$(snap bf)
assert_exit 0 phg apply "$(P bf)"
assert_eq "0|1000|t" "$(psql_q "SELECT (SELECT count(*) FROM bf WHERE v2 IS DISTINCT FROM v * 2),
	s.bf_rows, s.bf_batches >= 10 FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id
	WHERE r.plan = 'steps-backfill' ORDER BY r.id DESC LIMIT 1")" \
	"backfill set every row, 1000 rows recorded, in batches of 100"
assert_eq "completed backfill=applied 1000" "$(st "$(P bf)" "s['phases'][0]['steps'][0]['rows']")" \
	"status shows the rows backfilled"
assert_exit 0 phg rollback "$(P bf)"
assert_eq "$before" "$(snap bf)" "backfill rollback: down restored every row"
assert_exit 0 phg apply "$(P bf)"
assert_eq 0 "$(psql_q "SELECT count(*) FROM bf WHERE v2 IS DISTINCT FROM v * 2")" "backfill applied again"
# key: a composite unique key on a table without a primary key
assert_exit 0 phg apply "$(P bfk)"
assert_eq 0 "$(psql_q "SELECT count(*) FROM bfk WHERE w IS DISTINCT FROM v + 1")" "backfill by key (a, b): every row"
assert_eq 50 "$(psql_q "SELECT s.bf_rows FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id
	WHERE r.plan = 'steps-backfill-key'")" "backfill by key: 50 rows, each once"
# no primary key and no key: a clear failure, nothing updated
assert_exit 3 phg apply "$(P bfn)"
assert_file_contains "$T/err" 'table "bfn" has no primary key'
assert_file_contains "$T/err" "key"
assert_eq 0 "$(psql_q "SELECT count(*) FROM bfn WHERE w IS NOT NULL")" "failed backfill updated nothing"
# a key that is not unique could skip or repeat rows: refused
plan bfu <<'EOF'
version: 1
name: steps-backfill-nonunique-key
phases:
  - name: backfill
    steps:
      - backfill: { table: bfk, set: "w = 0", key: [a] }
EOF
assert_exit 3 phg apply "$(P bfu)"
assert_file_contains "$T/err" "not covered by a unique index"
assert_eq 0 "$(psql_q "SELECT count(*) FROM bfk WHERE w = 0")" "refused backfill updated nothing"

# ================================================================ create_index
psql_q "CREATE TABLE ci (id int PRIMARY KEY, email text, n int);
	INSERT INTO ci SELECT g, 'u' || g || '@x', g FROM generate_series(1, 200) g;
	CREATE TABLE cu (id int PRIMARY KEY, email text);
	INSERT INTO cu SELECT g, 'dup' || (g % 10) FROM generate_series(1, 50) g" >/dev/null
plan ci <<'EOF'
version: 1
name: steps-create-index
phases:
  - name: index
    steps:
      - create_index: { table: ci, columns: [email], name: ci_email_idx, unique: true }
      - create_index: { table: ci, columns: [n], name: ci_n_part_idx, where: "n > 100" }
EOF
plan cu <<'EOF'
version: 1
name: steps-create-index-dup
phases:
  - name: index
    steps:
      - create_index: { table: cu, columns: [email], name: cu_email_key, unique: true }
EOF
assert_exit 0 phg plan "$(P ci)"
assert_file_contains "$T/out" 'CREATE UNIQUE INDEX CONCURRENTLY "ci_email_idx" ON "ci"'
assert_file_contains "$T/out" 'CREATE INDEX CONCURRENTLY "ci_n_part_idx" ON "ci" USING btree ("n") WHERE n > 100'
before=$(snap)
assert_exit 0 phg apply "$(P ci)"
assert_file_contains "$T/err" 'build index "ci_email_idx" on "ci" concurrently'
assert_eq "ci_email_idx|true|true,ci_n_part_idx|true|false" "$(psql_q "SELECT string_agg(c.relname || '|' || i.indisvalid || '|' || i.indisunique, ',' ORDER BY c.relname)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'ci'::regclass AND NOT i.indisprimary")" \
	"create_index: both valid, one unique"
assert_contains "$(psql_q "SELECT pg_get_indexdef('ci_n_part_idx'::regclass)")" "WHERE (n > 100)" "partial index"
assert_exit 0 phg rollback "$(P ci)"
assert_eq "$before" "$(snap)" "create_index rollback: indexes gone"
assert_exit 0 phg apply "$(P ci)"
assert_eq 2 "$(psql_q "SELECT count(*) FROM pg_index WHERE indrelid = 'ci'::regclass AND indisvalid AND NOT indisprimary")" \
	"create_index applied again"
# duplicates: the unique build fails, no INVALID index remains, exit 3
before=$(snap)
assert_exit 3 phg apply "$(P cu)"
assert_eq 0 "$(psql_q "SELECT count(*) FROM pg_class WHERE relname = 'cu_email_key'")" \
	"failed unique build left no (INVALID) index"
assert_eq "$before" "$(snap)" "failed create_index left nothing behind"
assert_eq "failed index=rolled_back" "$(st "$(P cu)")" "status after the failed index build"

# an INVALID leftover of the same name (a failed CREATE INDEX CONCURRENTLY by
# someone else, or a crashed build) is dropped and the index built again
psql_q "CREATE TABLE cl (id int PRIMARY KEY, email text);
	INSERT INTO cl SELECT g, 'd' || (g % 3) FROM generate_series(1, 30) g" >/dev/null
assert_exit '!' psql -X -q -d "$TEST_DB" -c "CREATE UNIQUE INDEX CONCURRENTLY cl_email_key ON cl (email)"
assert_eq f "$(psql_q "SELECT indisvalid FROM pg_index WHERE indexrelid = 'cl_email_key'::regclass")" \
	"an INVALID leftover exists"
psql_q "UPDATE cl SET email = 'u' || id" >/dev/null
plan cl <<'EOF2'
version: 1
name: steps-create-index-leftover
phases:
  - name: index
    steps:
      - create_index: { table: cl, columns: [email], name: cl_email_key, unique: true }
EOF2
assert_exit 0 phg apply "$(P cl)"
assert_file_contains "$T/err" "INVALID leftover"
assert_eq "t|t|1" "$(psql_q "SELECT indisvalid, indisunique, (SELECT count(*) FROM pg_class WHERE relname = 'cl_email_key')
	FROM pg_index WHERE indexrelid = 'cl_email_key'::regclass")" "the leftover was replaced by a valid index"

# ================================================================ add_check
psql_q "CREATE TABLE ck (id int PRIMARY KEY, qty int);
	INSERT INTO ck SELECT g, g FROM generate_series(0, 20) g;
	CREATE TABLE ckf (id int PRIMARY KEY, qty int);
	INSERT INTO ckf VALUES (1, 1), (2, -1)" >/dev/null
plan ck <<'EOF'
version: 1
name: steps-add-check
phases:
  - name: check
    steps:
      - add_check: { table: ck, name: ck_qty_nonneg, check: "qty >= 0" }
EOF
plan ckf <<'EOF'
version: 1
name: steps-add-check-fail
phases:
  - name: check
    steps:
      - add_check: { table: ckf, name: ckf_qty_nonneg, check: "qty >= 0" }
EOF
before=$(snap)
assert_exit 0 phg apply "$(P ck)"
assert_eq "CHECK ((qty >= 0))|true" "$(psql_q "SELECT pg_get_constraintdef(oid) || '|' || convalidated FROM pg_constraint
	WHERE conrelid = 'ck'::regclass AND conname = 'ck_qty_nonneg'")" "add_check: validated constraint"
assert_exit '!' psql -X -q -d "$TEST_DB" -v ON_ERROR_STOP=1 -c "INSERT INTO ck VALUES (100, -5)"
assert_file_contains "$T/err" "ck_qty_nonneg"
assert_exit 0 phg rollback "$(P ck)"
assert_eq "$before" "$(snap)" "add_check rollback: constraint gone"
assert_exit 0 phg apply "$(P ck)"
assert_eq 1 "$(contype_count ck ck_qty_nonneg)" "add_check applied again"
before=$(snap)
assert_exit 3 phg apply "$(P ckf)"
assert_eq 0 "$(contype_count ckf ckf_qty_nonneg)" "failed VALIDATE left no NOT VALID constraint"
assert_eq "$before" "$(snap)" "failed add_check left nothing behind"

# ================================================================ add_foreign_key
psql_q "CREATE TABLE fkp (id int PRIMARY KEY);
	INSERT INTO fkp SELECT generate_series(1, 5);
	CREATE TABLE fkc (id int PRIMARY KEY, p_id int);
	INSERT INTO fkc SELECT g, g % 5 + 1 FROM generate_series(1, 20) g;
	CREATE TABLE fko (id int PRIMARY KEY, p_id int);
	INSERT INTO fko VALUES (1, 1), (2, 99)" >/dev/null
plan fk <<'EOF'
version: 1
name: steps-add-foreign-key
phases:
  - name: fk
    steps:
      - add_foreign_key: { table: fkc, name: fkc_p_fk, columns: [p_id], references: { table: fkp, columns: [id] }, on_delete: cascade }
EOF
plan fko <<'EOF'
version: 1
name: steps-add-foreign-key-fail
phases:
  - name: fk
    steps:
      - add_foreign_key: { table: fko, name: fko_p_fk, columns: [p_id], references: { table: fkp, columns: [id] } }
EOF
before=$(snap)
assert_exit 0 phg apply "$(P fk)"
assert_eq "FOREIGN KEY (p_id) REFERENCES fkp(id) ON DELETE CASCADE|true" \
	"$(psql_q "SELECT pg_get_constraintdef(oid) || '|' || convalidated FROM pg_constraint
	WHERE conrelid = 'fkc'::regclass AND conname = 'fkc_p_fk'")" "add_foreign_key: validated FK"
assert_exit 0 phg rollback "$(P fk)"
assert_eq "$before" "$(snap)" "add_foreign_key rollback: FK gone"
assert_exit 0 phg apply "$(P fk)"
assert_eq 1 "$(contype_count fkc fkc_p_fk)" "add_foreign_key applied again"
before=$(snap)
assert_exit 3 phg apply "$(P fko)"
assert_eq 0 "$(contype_count fko fko_p_fk)" "failed FK VALIDATE left no NOT VALID constraint"
assert_eq "$before" "$(snap)" "failed add_foreign_key left nothing behind"

pass
