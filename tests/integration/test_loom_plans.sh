#!/usr/bin/env bash
# test_loom_plans.sh - the Loom directory (plans/, issue 16) round-trips on a
# real PostgreSQL: apply it all while the application writes, roll every
# plan back (the later ones while the application still writes), apply it
# all again, finalize, and compare the schema with the expected
# `pg_dump --schema-only` kept in plans/schema.sql.  The application's
# statements never fail while its tables exist.
#
# PHG_LOOM_UPDATE=1 rewrites plans/schema.sql from this run instead.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db loom
cd "$T"
# the plans with a short soak, as test_shipped_plans does
mkdir -p plans
for f in "$PHG_SOURCE_DIR"/plans/*.yaml; do
	sed -e 's/soak: 10s/soak: 200ms/' -e 's/interval: 1s/interval: 100ms/' "$f" >"plans/$(basename "$f")"
done
grep -q "soak: 10s" plans/*.yaml && fail "a plan kept the long soak"

"$FAKEHTTP" --port 0 --port-file "$T/port" >"$T/fake.log" 2>&1 &
FAKE_PID=$!
on_exit "kill $FAKE_PID 2>/dev/null || true"
wait_for test -s "$T/port"
export APP_HEALTH_URL="http://127.0.0.1:$(cat "$T/port")/healthz"

assert_exit 0 phg validate plans
assert_file_contains "$T/out" "plans: ok: 6 plan(s) in order, head \"loom-job-status-enum\""

schema() {
	pg_dump --schema-only --no-owner --no-privileges -N phasegate -d "$TEST_DB" |
		sed -e '/^--/d' -e '/^\\restrict/d' -e '/^\\unrestrict/d' -e '/^SET /d' \
			-e '/^SELECT pg_catalog.set_config/d' | cat -s
}

# ---- the initial schema, then the application
assert_exit 0 phg apply plans --to loom-initial
psql_q "INSERT INTO repositories (full_name) VALUES ('loom/app');
	INSERT INTO jobs (repository_id, kind, status) SELECT 1, 'review', (ARRAY['queued','done'])[1 + g % 2] FROM generate_series(1, 3000) g" >/dev/null
app_start "INSERT INTO jobs (repository_id, kind, status) VALUES (1, 'review', 'queued')" \
	"UPDATE jobs SET status = 'done', finished_at = now() WHERE id = (SELECT max(id) FROM jobs)" \
	"SELECT count(*) FROM repositories WHERE full_name = 'loom/app'"

# ---- apply all
assert_exit 0 phg apply plans
assert_exit 0 phg current plans
assert_file_contains "$T/out" "current: loom-job-status-enum (plans/006-job-status-enum.yaml), completed in run"
assert_file_contains "$T/out" "(head)"
assert_eq "job_status" "$(psql_q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attname = 'status'")" \
	"jobs.status is the enum"
assert_eq "character varying(255)" "$(psql_q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'repositories'::regclass AND attname = 'full_name'")" \
	"full_name widened"
assert_exit 0 phg status plans
assert_file_contains "$T/out" "current: loom-job-status-enum (head)"

# ---- roll back to the initial schema while the application writes
assert_exit 0 phg rollback plans --to loom-initial
assert_eq "character varying(20)" "$(psql_q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attname = 'status'")" \
	"jobs.status is varchar(20) again"
assert_eq "" "$(psql_q "SELECT to_regtype('job_status')")" "the enum type is dropped"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped AND attname LIKE '%phg%'")" \
	"no hidden column left"
app_stop
assert_eq "t" "$(psql_q "SELECT count(*) > 3000 FROM jobs")" "the application's rows are there"

# ---- roll everything back: an empty database
assert_exit 0 phg rollback plans
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'")" \
	"every relation of the directory is gone"
assert_exit 0 phg current plans
assert_file_contains "$T/out" "current: none"

# ---- apply all again, finalize, and compare with the expected schema
assert_exit 0 phg apply plans
assert_exit 0 phg status plans/005-jobs-status-rewrite.yaml
assert_file_contains "$T/out" "finalize: 1 step(s) keep what they dropped"
assert_exit 0 phg finalize plans
assert_exit 0 phg status --json plans
assert_eq "0" "$(python3 -c 'import json,sys; print(sum(p.get("finalize_pending", 0) for p in json.load(open(sys.argv[1]))["plans"]))' "$T/out")" \
	"nothing left to finalize"
schema >"$T/schema.sql"
if [[ ${PHG_LOOM_UPDATE:-0} == 1 ]]; then
	cp "$T/schema.sql" "$PHG_SOURCE_DIR/plans/schema.sql"
	printf 'updated plans/schema.sql\n'
fi
diff -u "$PHG_SOURCE_DIR/plans/schema.sql" "$T/schema.sql" >"$T/schema.diff" ||
	fail "the schema differs from plans/schema.sql (PHG_LOOM_UPDATE=1 rewrites it):" "$(head -60 "$T/schema.diff")"
pass
