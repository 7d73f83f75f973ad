#!/usr/bin/env bash
# test_core_steps_types.sh - alter_column_type, create_enum and
# add_enum_value (issue 16, "Step kinds the Loom schema needs").
#
# alter_column_type: every allowed change keeps the table's and its
# indexes' relfilenode (no rewrite, no index rebuild) and scans nothing,
# while the application inserts (no statement may fail) and a held lock
# makes the step time out and retry; a rollback restores the old type where
# the way back is rewrite-free too (text -> varchar -> text) and keeps the
# wider one where it is not (varchar(50) -> varchar(200)), saying so; a
# change that would rewrite is refused by validate (exit 2) when it can tell,
# else by the catalog check at apply time, before anything changed.
# create_enum: created, recorded, dropped by the rollback; add_enum_value:
# added outside a transaction, kept by the rollback with the log line.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps_types
psql_q "CREATE TABLE items (id bigserial PRIMARY KEY, name varchar(50), body text, note varchar,
	code varchar(10) DEFAULT 'x', price numeric(8,2), bits varbit(5), made timestamp(0), net cidr,
	total int, tag varchar(10) CHECK (tag <> ''), part varchar(10));
	CREATE INDEX items_name ON items (name); CREATE INDEX items_body ON items (body);
	CREATE INDEX items_note ON items (note); CREATE INDEX items_price ON items (price);
	CREATE INDEX items_net ON items (net); CREATE INDEX items_part ON items (part) WHERE part <> '';
	INSERT INTO items (name, body, note, price, bits, made, net, total)
	SELECT 'n' || g, 'b' || g, 'o' || g, g, B'101', now(), '10.0.0.0/8', g FROM generate_series(1, 2000) g;
	CREATE TYPE app_mood AS ENUM ('calm', 'angry');
	ANALYZE items" >/dev/null

# the files of the table and of every index on it: a rewrite or an index
# rebuild gives a new relfilenode
files() {
	psql_q "SELECT string_agg(c.relname || '=' || c.relfilenode, ' ' ORDER BY c.relname) FROM pg_class c
		WHERE c.oid = 'items'::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'items'::regclass)"
}
types() {
	psql_q "SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ' ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 1 AND NOT attisdropped"
}
before_files=$(files)
before_types=$(types)
assert_eq "name:character varying(50) body:text note:character varying code:character varying(10) price:numeric(8,2) bits:bit varying(5) made:timestamp(0) without time zone net:cidr total:integer tag:character varying(10) part:character varying(10)" \
	"$before_types" "the types before"

cat >"$T/plan.yaml" <<'YAML'
version: 1
name: types
settings: { lock_timeout: 200ms }
phases:
  - name: widen
    steps:
      - alter_column_type: { table: items, column: name, type: "varchar(200)", from: "varchar(50)" }
      - alter_column_type: { table: items, column: body, type: varchar }
      - alter_column_type: { table: items, column: note, type: text }
      - alter_column_type: { table: items, column: code, type: "character varying" }
      - alter_column_type: { table: items, column: price, type: "numeric(12,2)" }
      - alter_column_type: { table: items, column: bits, type: "bit varying(10)" }
      - alter_column_type: { table: items, column: made, type: "timestamp(3)" }
      - alter_column_type: { table: items, column: net, type: inet }
      - create_enum: { name: public.item_state, values: [new, done] }
      - add_enum_value: { type: public.item_state, value: running, before: done }
      - add_enum_value: { type: app_mood, value: sad }
YAML
assert_exit 0 phg validate "$T/plan.yaml"
assert_file_contains "$T/err" 'a rollback keeps column "name" of "items" as varchar(200)'
assert_file_contains "$T/err" 'add_enum_value cannot be reverted: a rollback keeps the value "sad" in "app_mood"'

# the application inserts throughout
writer() {
	while :; do
		psql -X -q -d "$TEST_DB" -c "INSERT INTO items (name, body, note, price, net) VALUES ('w', 'w', 'w', 1.5, '10.1.0.0/16')" \
			>/dev/null 2>>"$T/writer.err" || echo "insert failed" >>"$T/writer.err"
		sleep 0.02
	done
}
writer &
wpid=$!
on_exit "kill $wpid 2>/dev/null || true"

# a transaction holding a lock on items for 1 s: the step times out, retries, succeeds
psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE items IN ACCESS SHARE MODE; SELECT pg_sleep(1); COMMIT" >/dev/null &
locker=$!
sleep 0.2
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "retrying in"
wait "$locker"
assert_eq "name:character varying(200) body:character varying note:text code:character varying price:numeric(12,2) bits:bit varying(10) made:timestamp(3) without time zone net:inet total:integer tag:character varying(10) part:character varying(10)" \
	"$(types)" "the types after apply"
assert_eq "$before_files" "$(files)" "no rewrite of the table and no index rebuilt (the same relfilenodes)"
assert_eq "{new,running,done}" "$(psql_q "SELECT enum_range(NULL::item_state)")" "the enum type, the value before done"
assert_eq "{calm,angry,sad}" "$(psql_q "SELECT enum_range(NULL::app_mood)")" "the value added to the existing type"
assert_eq "character varying(50)|false" "$(psql_q "SELECT memo->>'type', memo->>'back' FROM phasegate.steps WHERE run_id = 1 AND idx = 0")" \
	"the old type recorded, and that going back would rewrite"
assert_eq "text|true" "$(psql_q "SELECT memo->>'type', memo->>'back' FROM phasegate.steps WHERE run_id = 1 AND idx = 1")" \
	"text -> varchar: going back is rewrite-free"
assert_eq "false|false" "$(psql_q "SELECT memo->>'existed', (SELECT memo->>'existed' FROM phasegate.steps WHERE run_id = 1 AND idx = 9) FROM phasegate.steps WHERE run_id = 1 AND idx = 8")" \
	"create_enum recorded the type was not there; add_enum_value that the value was not"
assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_stats WHERE tablename = 'items' AND attname = 'price'")" \
	"the column's statistics are back (ANALYZE after the change)"
psql_q "INSERT INTO items (name, price) VALUES (repeat('x', 150), 1234567890.12)" >/dev/null

assert_exit 0 phg rollback "$T/plan.yaml"
assert_file_contains "$T/err" "the value sad stays in app_mood: PostgreSQL cannot remove an enum value"
assert_file_contains "$T/err" "deliberately not undone (the value sad stays in app_mood"
assert_file_not_contains "$T/err" "no \`down\`"
assert_file_contains "$T/err" 'keep type varchar(200) of column "name" of "items": going back to character varying(50) would rewrite'
assert_eq "name:character varying(200) body:text note:character varying code:character varying price:numeric(12,2) bits:bit varying(10) made:timestamp(3) without time zone net:inet total:integer tag:character varying(10) part:character varying(10)" \
	"$(types)" "rollback: exact restore where the way back is rewrite-free, the wider type kept elsewhere"
assert_eq "$before_files" "$(files)" "the rollback rewrote nothing either"
assert_eq "" "$(psql_q "SELECT to_regtype('item_state')")" "the enum type this run created is dropped"
assert_eq "{calm,angry,sad}" "$(psql_q "SELECT enum_range(NULL::app_mood)")" "the enum value stays"

assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "name:character varying(200) body:character varying note:text code:character varying price:numeric(12,2) bits:bit varying(10) made:timestamp(3) without time zone net:inet total:integer tag:character varying(10) part:character varying(10)" \
	"$(types)" "apply again"
assert_eq "$before_files" "$(files)" "apply again: still no rewrite"

kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
if [[ -s $T/writer.err ]]; then
	fail "the application's inserts failed while the types changed: $(head -5 "$T/writer.err")"
fi

# ---- refused by validate (exit 2), when it can tell
cat >"$T/bad.yaml" <<'YAML'
version: 1
name: types-bad
phases:
  - name: one
    steps:
      - alter_column_type: { table: items, column: total, type: bigint }
      - alter_column_type: { table: items, column: name, type: "varchar(100)", from: "varchar(255)" }
YAML
assert_exit 2 phg validate "$T/bad.yaml"
assert_file_contains "$T/err" 'changing column "total" of "items" to type "bigint" rewrites the table'
assert_file_contains "$T/err" 'from varchar(255) to varchar(100) rewrites the table under ACCESS EXCLUSIVE (it narrows it)'

# ---- refused at apply, before anything changed: the catalog says what validate could not
refused() { # COLUMN TYPE MESSAGE
	local files_was types_was
	files_was=$(files)
	types_was=$(types)
	cat >"$T/r.yaml" <<YAML
version: 1
name: types-refused-$1
phases:
  - name: one
    steps:
      - alter_column_type: { table: items, column: $1, type: "$2" }
YAML
	assert_exit 3 phg apply "$T/r.yaml"
	assert_file_contains "$T/err" "$3"
	assert_file_contains "$T/err" "expand/contract through a new column"
	assert_eq "$files_was" "$(files)" "refused $1 -> $2: nothing rewritten"
	assert_eq "$types_was" "$(types)" "refused $1 -> $2: the type is as it was"
}
refused code "varchar(5)" 'changing column "code" of "items" from character varying to character varying(5) rewrites the table'
refused price "numeric(12,3)" 'from numeric(12,2) to numeric(12,3) rewrites the table'
refused tag "varchar(20)" 're-checks its CHECK constraint against every row'
refused part "varchar(20)" 'rebuilds an index on it'
refused total "numeric" 'from integer to numeric rewrites the table'
pass
