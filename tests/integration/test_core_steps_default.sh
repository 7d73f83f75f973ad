#!/usr/bin/env bash
# test_core_steps_default.sh - set_default and drop_default (issue 16, "Step
# kinds the Loom schema needs"): apply sets or drops the default under
# lock_timeout, while the application inserts; revert puts back exactly the
# default the column had (an expression, or none); a held lock makes the
# step wait and retry, not the application queue behind it.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_steps_default
psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, state text DEFAULT 'new', note text,
	made timestamptz DEFAULT now() - interval '1 day')" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: defaults
settings: { lock_timeout: 200ms }
phases:
  - name: one
    steps:
      - set_default: { table: jobs, column: state, default: "'queued'" }
      - set_default: { table: jobs, column: note, default: "'(' || current_user || ')'" }
      - drop_default: { table: jobs, column: made }
YAML
defaults() {
	psql_q "SELECT string_agg(attname || '=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), ' ' ORDER BY attnum)
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 1 AND NOT a.attisdropped"
}
before=$(defaults)
assert_eq "state='new'::text note=- made=(now() - '1 day'::interval)" "$before" "the defaults before"

# the application inserts throughout (rows that omit every column)
writer() {
	while :; do
		psql -X -q -d "$TEST_DB" -c "INSERT INTO jobs DEFAULT VALUES" >/dev/null 2>>"$T/writer.err" ||
			echo "insert failed" >>"$T/writer.err"
		sleep 0.02
	done
}
writer &
wpid=$!
on_exit "kill $wpid 2>/dev/null || true"

# a transaction holding a lock on jobs for 1 s: the step times out, retries, succeeds
psql -X -q -d "$TEST_DB" -c "BEGIN; LOCK TABLE jobs IN ACCESS SHARE MODE; SELECT pg_sleep(1); COMMIT" >/dev/null &
locker=$!
sleep 0.2
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "retrying in"
wait "$locker"
assert_eq "state='queued'::text note=(('('::text || (CURRENT_USER)::text) || ')'::text) made=-" "$(defaults)" "after apply"
psql_q "INSERT INTO jobs DEFAULT VALUES" >/dev/null
assert_eq "queued|(postgres)|t" "$(psql_q "SELECT state, note, made IS NULL FROM jobs ORDER BY id DESC LIMIT 1")" \
	"a row inserted after apply gets the new defaults"

assert_exit 0 phg rollback "$T/plan.yaml"
assert_eq "$before" "$(defaults)" "rollback restores exactly the defaults recorded at apply"
psql_q "INSERT INTO jobs DEFAULT VALUES" >/dev/null
assert_eq "new|t|t" "$(psql_q "SELECT state, note IS NULL, made < now() - interval '23 hours' FROM jobs ORDER BY id DESC LIMIT 1")" \
	"a row inserted after the rollback gets the old defaults"
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "state='queued'::text note=(('('::text || (CURRENT_USER)::text) || ')'::text) made=-" "$(defaults)" "apply again"

kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
if [[ -s $T/writer.err ]]; then
	fail "the application's inserts failed while the defaults changed: $(head -5 "$T/writer.err")"
fi
pass
