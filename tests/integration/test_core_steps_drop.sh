#!/usr/bin/env bash
# test_core_steps_drop.sh - drop_index, drop_constraint and rename_table
# (issue 16, "Step kinds the Loom schema needs") on a real PostgreSQL, while
# the application inserts and updates through the table's old name all
# along: a held lock makes a drop wait and retry; apply drops the index and
# the constraints and leaves a view of the old name; rollback rebuilds them
# concurrently and renames the table back, exactly as they were
# (pg_get_indexdef, pg_get_constraintdef, validity, comments), an INVALID
# leftover under an index's name dropped first; a complete
# apply drops the view (finalize), and a rollback after that still restores
# everything.  An index that backs a constraint is refused before anything
# is dropped.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"
source "$PHG_SOURCE_DIR/tests/integration/steps_lib.sh"

new_db core_steps_drop
psql_q "CREATE TABLE users (id bigint PRIMARY KEY);
	INSERT INTO users VALUES (1);
	CREATE TABLE tags (id int PRIMARY KEY, label text);
	CREATE TABLE jobs (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'new',
		owner_id bigint, note text, code text,
		CONSTRAINT jobs_state_ck CHECK (state <> ''),
		CONSTRAINT jobs_owner_fk FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE SET NULL,
		CONSTRAINT jobs_code_uq UNIQUE (code) DEFERRABLE INITIALLY DEFERRED);
	ALTER TABLE jobs ADD CONSTRAINT jobs_note_ck CHECK (note <> 'bad') NOT VALID;
	CREATE INDEX jobs_note_idx ON jobs (lower(note)) INCLUDE (state) WHERE note IS NOT NULL;
	COMMENT ON INDEX jobs_note_idx IS 'for the search page';
	COMMENT ON CONSTRAINT jobs_state_ck ON jobs IS 'no empty state';
	DO \$\$BEGIN CREATE ROLE phg_drop_app; EXCEPTION WHEN duplicate_object THEN NULL; END\$\$;
	GRANT SELECT, INSERT, UPDATE ON jobs TO phg_drop_app;
	GRANT USAGE ON SEQUENCE jobs_id_seq TO phg_drop_app;
	INSERT INTO jobs (state, owner_id, note) SELECT 'old', 1, 'n' || g FROM generate_series(1, 500) g" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: drops
settings: { lock_timeout: 200ms }
phases:
  - name: one
    steps:
      - drop_constraint: { table: jobs, constraint: jobs_state_ck }
      - drop_index: { index: public.jobs_note_idx, table: jobs }
      - drop_constraint: { table: jobs, constraint: jobs_owner_fk }
      - drop_constraint: { table: jobs, constraint: jobs_code_uq }
      - drop_constraint: { table: jobs, constraint: jobs_note_ck }
      - drop_constraint: { table: tags, constraint: tags_pkey }
      - rename_table: { table: jobs, to: tasks }
  - name: two
    steps:
      - add_column: { table: tasks, column: extra, type: text }
YAML
comments() {
	psql_q "SELECT coalesce(obj_description(to_regclass('jobs_note_idx'), 'pg_class'), '-') || '|' ||
		coalesce((SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint
		          WHERE conname = 'jobs_state_ck'), '-')"
}
before=$(snap)
assert_contains "$before" "idx jobs_note_idx CREATE INDEX jobs_note_idx ON public.jobs USING btree (lower(note)) INCLUDE (state) WHERE (note IS NOT NULL) valid=t"
assert_contains "$before" "con jobs jobs_note_ck CHECK ((note <> 'bad'::text)) NOT VALID valid=f"
assert_eq "for the search page|no empty state" "$(comments)" "the comments before"

# the application, through the old name, as a role with grants on it: no
# statement may fail at any instant until the plan completes
writer() {
	while :; do
		psql -X -q -v ON_ERROR_STOP=1 -d "$TEST_DB" -c "SET ROLE phg_drop_app" \
			-c "INSERT INTO jobs (state, owner_id, note) VALUES ('w', 1, 'w')" \
			-c "UPDATE jobs SET note = 'u' WHERE id = (SELECT max(id) FROM jobs)" \
			-c "SELECT count(*) FROM jobs WHERE lower(note) = 'u'" >/dev/null 2>>"$T/writer.err" ||
			echo "a statement failed" >>"$T/writer.err"
		sleep 0.02
	done
}
writer &
wpid=$!
on_exit "kill $wpid 2>/dev/null || true"
stop_writer() {
	kill "$wpid" 2>/dev/null || true
	wait "$wpid" 2>/dev/null || true
	if [[ -s $T/writer.err ]]; then
		fail "the application's statements failed: $(head -5 "$T/writer.err")"
	fi
}

# a transaction holding a lock on jobs for 1 s: the first drop times out and retries
psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE jobs IN ACCESS SHARE MODE; SELECT pg_sleep(1); COMMIT" >/dev/null &
locker=$!
sleep 0.2
assert_exit 0 phg apply "$T/plan.yaml" --to one
assert_file_contains "$T/err" "retrying in"
wait "$locker"

# the catalog after apply: gone, the table renamed, a view of the old name
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_constraint WHERE conname IN
	('jobs_state_ck', 'jobs_owner_fk', 'jobs_code_uq', 'jobs_note_ck', 'tags_pkey')")" "constraints dropped"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_class WHERE relname IN ('jobs_note_idx', 'jobs_code_uq', 'tags_pkey')")" \
	"indexes dropped"
assert_eq "r v" "$(psql_q "SELECT (SELECT relkind::text FROM pg_class WHERE relname = 'tasks') || ' ' ||
	(SELECT relkind::text FROM pg_class WHERE relname = 'jobs')")" "tasks is the table, jobs a view of it"
assert_eq "t" "$(psql_q "SELECT has_table_privilege('phg_drop_app', 'jobs', 'INSERT')")" "the view has the table's grants"
psql_q "INSERT INTO jobs (state, owner_id, note, code) VALUES ('', NULL, 'v', 'c1') RETURNING state" >/dev/null
assert_eq "1" "$(psql_q "SELECT count(*) FROM tasks WHERE code = 'c1' AND state = ''")" \
	"an insert through the old name lands in the table (the check is gone)"
psql_q "DELETE FROM jobs WHERE code = 'c1'" >/dev/null
assert_ne "0" "$(psql_q "SELECT count(*) FROM tasks WHERE state = 'w'")" "the application wrote through the old name"
sleep 0.3

# an INVALID leftover under the index's name (a concurrent build that
# failed, as an interrupted rebuild leaves one): the revert drops it first
psql -X -q -d "$TEST_DB" -c "CREATE UNIQUE INDEX CONCURRENTLY jobs_note_idx ON tasks (state)" >/dev/null 2>&1 &&
	fail "the unique build should have failed on duplicates"
assert_eq "f" "$(psql_q "SELECT indisvalid FROM pg_index WHERE indexrelid = 'jobs_note_idx'::regclass")" "an INVALID leftover"

assert_exit 0 phg rollback "$T/plan.yaml"
assert_file_contains "$T/err" "an INVALID leftover exists"
assert_eq "$before" "$(snap)" "rollback restores every index and constraint exactly, and the table's name"
assert_eq "for the search page|no empty state" "$(comments)" "the comments are restored"
assert_eq "t" "$(psql_q "SELECT condeferred FROM pg_constraint WHERE conname = 'jobs_code_uq'")" \
	"the unique constraint is back DEFERRABLE INITIALLY DEFERRED"

# an index that backs a constraint is refused before anything is dropped
cat >"$T/pk.yaml" <<'YAML'
version: 1
name: drop-pk-index
phases:
  - name: one
    steps:
      - drop_index: { index: jobs_pkey }
YAML
assert_exit 3 phg apply "$T/pk.yaml"
assert_file_contains "$T/err" "backs primary key jobs_pkey of jobs"
assert_file_contains "$T/err" "drop_constraint"
assert_eq "$before" "$(snap)" "nothing was dropped"

# apply to the end: the view goes when the plan completes (the old release
# is gone by then, and the new one names tasks)
stop_writer
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "tasks r|" "$(psql_q "SELECT string_agg(relname || ' ' || relkind::text, ',') FROM pg_class
	WHERE relname IN ('jobs', 'tasks')")|$(psql_q "SELECT to_regclass('jobs')")" "finalize dropped the view"
assert_eq "completed one=applied two=applied" "$(st "$T/plan.yaml")" "the plan completed"
assert_exit 0 phg rollback "$T/plan.yaml"
assert_eq "$before" "$(snap)" "a rollback after completion restores everything too"
psql_q "DROP OWNED BY phg_drop_app; DROP ROLE phg_drop_app" >/dev/null
pass
