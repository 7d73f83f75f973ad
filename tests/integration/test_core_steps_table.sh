#!/usr/bin/env bash
# test_core_steps_table.sh - create_table and drop_table (issue 16, "Step
# kinds the Loom schema needs").  create_table builds a table with identity,
# NOT NULL, defaults, a primary key, a unique constraint, a check and a
# foreign key, checked in the catalog; its foreign key's brief lock on the
# referenced table waits behind a long application transaction, times out
# and retries while the application keeps writing that table, none of its
# statements failing; phasegate killed right after the table's transaction
# committed resumes without failing; rollback drops the table (and the
# foreign key's triggers on the referenced table), and a table this run did
# not create is refused and left alone.  drop_table hides a table: rollback
# gives back the same table with its rows and index; a completed plan drops
# the tombstone for good; a foreign key still referencing it is refused.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps_table
psql_q "CREATE TABLE repositories (id bigint PRIMARY KEY, name text NOT NULL);
	INSERT INTO repositories SELECT g, 'repo-' || g FROM generate_series(1, 100) g" >/dev/null
cat >"$T/create.yaml" <<'YAML'
version: 1
name: create-reviews
settings: { lock_timeout: 200ms }
phases:
  - name: expand
    steps:
      - create_table:
          table: reviews
          columns:
            - { name: id, type: bigint, identity: true }
            - { name: repository_id, type: bigint, not_null: true, references: repositories(id), on_delete: cascade }
            - { name: status, type: text, not_null: true, default: "'pending'" }
            - { name: created_at, type: timestamptz, not_null: true, default: now() }
            - { name: note, type: "varchar(200)" }
          primary_key: [id]
          unique: [[repository_id, status]]
          checks: ["status <> ''"]
  - name: later
    steps:
      - set_default: { table: reviews, column: note, default: "'none'" }
YAML

# the application writes to the referenced table throughout (new rows and
# updates; none may fail)
writer() {
	local i=1000
	while :; do
		i=$((i + 1))
		psql -X -q -d "$TEST_DB" -v ON_ERROR_STOP=1 -c "INSERT INTO repositories VALUES ($i, 'new-$i');
			UPDATE repositories SET name = name || '.' WHERE id = $((i % 50 + 2))" >/dev/null 2>>"$T/writer.err" ||
			echo "write failed" >>"$T/writer.err"
		sleep 0.02
	done
}
writer &
wpid=$!
on_exit "kill $wpid 2>/dev/null || true"

# a long application transaction writing repositories (ROW EXCLUSIVE) for
# 1 s: the foreign key's SHARE ROW EXCLUSIVE lock times out and is retried.
# phasegate is killed as by kill -9 right after the table's transaction
# committed, before anything else is recorded.
psql -X -q -d "$TEST_DB" -c "BEGIN; UPDATE repositories SET name = name WHERE id = 1; SELECT pg_sleep(1); COMMIT" >/dev/null &
locker=$!
sleep 0.2
PHG_FAULT=op:apply:expand:1:0:committed bg_run killed "$PHASEGATE" apply "$T/create.yaml"
rc=0
wait "$BG_PID" 2>/dev/null || rc=$?
wait "$locker"
assert_eq 137 "$rc" "phasegate died at the fault point (SIGKILL)"
assert_file_contains "$T/killed.err" "retrying in"
assert_eq "t" "$(psql_q "SELECT to_regclass('reviews') IS NOT NULL")" "the table committed before the kill"
# the resumed apply does not create it again (nor fail on it): the step is done
assert_exit 0 phg apply "$T/create.yaml"
assert_file_not_contains "$T/err" "already exists"

assert_eq "id bigint not_null identity=d default=-
repository_id bigint not_null default=-
status text not_null default='pending'::text
created_at timestamp with time zone not_null default=now()
note character varying(200) null default='none'::character varying" \
	"$(psql_q "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' ||
		CASE WHEN attnotnull THEN 'not_null' ELSE 'null' END ||
		CASE WHEN attidentity <> '' THEN ' identity=' || attidentity::text ELSE '' END ||
		' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), E'\n' ORDER BY attnum)
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = 'reviews'::regclass AND a.attnum > 0 AND NOT a.attisdropped")" \
	"the columns of the created table"
assert_eq "reviews_pkey PRIMARY KEY (id)
reviews_repository_id_fkey FOREIGN KEY (repository_id) REFERENCES repositories(id) ON DELETE CASCADE
reviews_repository_id_status_key UNIQUE (repository_id, status)
reviews_status_check CHECK ((status <> ''::text))" \
	"$(psql_q "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\n' ORDER BY conname)
		FROM pg_constraint WHERE conrelid = 'reviews'::regclass")" \
	"the constraints of the created table"
psql_q "INSERT INTO reviews (repository_id) VALUES (5), (6); INSERT INTO reviews (repository_id, status) VALUES (5, 'done')" >/dev/null
assert_eq "1|5|pending|none 2|6|pending|none 3|5|done|none" \
	"$(psql_q "SELECT string_agg(id || '|' || repository_id || '|' || status || '|' || note, ' ' ORDER BY id) FROM reviews")" \
	"identity, defaults"
assert_exit 1 psql -X -q -v ON_ERROR_STOP=1 -d "$TEST_DB" -c "INSERT INTO reviews (repository_id) VALUES (5)"
assert_file_contains "$T/err" "reviews_repository_id_status_key"
assert_exit 1 psql -X -q -v ON_ERROR_STOP=1 -d "$TEST_DB" -c "INSERT INTO reviews (repository_id) VALUES (99999)"
assert_file_contains "$T/err" "reviews_repository_id_fkey"
psql_q "DELETE FROM repositories WHERE id = 6" >/dev/null
assert_eq "2" "$(psql_q "SELECT count(*) FROM reviews")" "ON DELETE CASCADE"

# rollback drops the table this run created, and with it its foreign key's
# triggers on repositories
assert_exit 0 phg rollback "$T/create.yaml"
assert_eq "t" "$(psql_q "SELECT to_regclass('reviews') IS NULL")" "rollback dropped the table"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'repositories'::regclass")" \
	"no trigger of the foreign key is left on the referenced table"

kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
if [[ -s $T/writer.err ]]; then
	fail "the application's writes failed while the table was created: $(head -5 "$T/writer.err")"
fi

# a table of that name this run did not create: refused, and left as it is
psql_q "CREATE TABLE reviews (id int); INSERT INTO reviews VALUES (7)" >/dev/null
assert_exit 3 phg apply "$T/create.yaml"
assert_file_contains "$T/err" 'table "reviews" already exists, and this run did not create it'
assert_eq "7" "$(psql_q "SELECT string_agg(id::text, ',') FROM reviews")" "the existing table is untouched"
assert_exit 0 phg rollback "$T/create.yaml"
assert_eq "7" "$(psql_q "SELECT string_agg(id::text, ',') FROM reviews")" "and rollback leaves it alone"

# ---- drop_table
psql_q "CREATE TABLE legacy (id int PRIMARY KEY, note text NOT NULL DEFAULT 'x');
	CREATE INDEX legacy_note_idx ON legacy (note);
	INSERT INTO legacy (id) SELECT generate_series(1, 500)" >/dev/null
oid=$(psql_q "SELECT 'legacy'::regclass::oid")
cat >"$T/drop.yaml" <<'YAML'
version: 1
name: drop-legacy
settings: { lock_timeout: 200ms }
phases:
  - name: contract
    steps:
      - drop_table: { table: legacy }
  - name: after
    steps:
      - set_default: { table: repositories, column: name, default: "'?'" }
YAML
assert_exit 0 phg validate "$T/drop.yaml"
assert_file_not_contains "$T/err" "warning"
assert_exit 0 phg apply "$T/drop.yaml" --to contract
assert_eq "t|500" "$(psql_q "SELECT to_regclass('legacy') IS NULL, (SELECT count(*) FROM _phg_dropped_legacy)")" \
	"the table is hidden as its tombstone, rows and all"
assert_exit 0 phg rollback "$T/drop.yaml"
assert_eq "$oid|500|legacy_note_idx|legacy_pkey" \
	"$(psql_q "SELECT 'legacy'::regclass::oid, (SELECT count(*) FROM legacy),
		(SELECT string_agg(indexrelid::regclass::text, '|' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 'legacy'::regclass)")" \
	"rollback gives back the same table with its rows and indexes"
assert_exit 0 phg apply "$T/drop.yaml"
assert_eq "t|t" "$(psql_q "SELECT to_regclass('legacy') IS NULL, to_regclass('_phg_dropped_legacy') IS NULL")" \
	"the completed plan dropped the tombstone for good"

# a foreign key still referencing the table: refused before anything is hidden
psql_q "CREATE TABLE legacy (id int PRIMARY KEY); CREATE TABLE users (id int, legacy_id int REFERENCES legacy)" >/dev/null
sed 's/drop-legacy/drop-legacy-2/' "$T/drop.yaml" >"$T/drop2.yaml"
assert_exit 3 phg apply "$T/drop2.yaml"
assert_file_contains "$T/err" 'table "legacy" is still used by foreign key users_legacy_id_fkey of table users'
assert_eq "f" "$(psql_q "SELECT to_regclass('legacy') IS NULL")" "the table is still there"
pass
