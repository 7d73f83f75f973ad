#!/usr/bin/env bash
# Every plan shipped in plans/ and examples/ validates; plans/005 applies
# against a real database behind a healthy fake service, rolls back phase
# by phase down to its first phase, and is finalized (finalize: manual).
# The whole directory round-trips in test_loom_plans.sh.
set -euo pipefail
# shellcheck disable=SC1090
source "$PHG_TEST_LIB"

for f in "$PHG_SOURCE_DIR"/plans/*.yaml "$PHG_SOURCE_DIR"/examples/quickstart/plan.yaml; do
	assert_exit 0 phg validate "$f"
	assert_exit 0 phg plan "$f"
	assert_contains "$(cat "$T/out")" "SET LOCAL lock_timeout" "plan output of $f"
done

new_db shipped
psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, repo text NOT NULL, status varchar(20) NOT NULL DEFAULT 'queued');
        INSERT INTO jobs (repo, status) SELECT 'r' || g, (ARRAY['queued','done'])[1 + g % 2] FROM generate_series(1, 20000) g" >/dev/null

"$FAKEHTTP" --port 0 --port-file "$T/port" >"$T/fake.log" 2>&1 &
FAKE_PID=$!
on_exit "kill $FAKE_PID 2>/dev/null || true"
wait_for test -s "$T/port"
export APP_HEALTH_URL="http://127.0.0.1:$(cat "$T/port")/healthz"

# a short soak so the test stays quick: an env override of the check
sed -e 's/soak: 10s/soak: 200ms/' -e 's/interval: 1s/interval: 100ms/' \
	"$PHG_SOURCE_DIR/plans/005-jobs-status-rewrite.yaml" >"$T/plan.yaml"
# a plan edit that makes the sed do nothing must fail here, not slow the test
assert_file_contains "$T/plan.yaml" "soak: 200ms" "the soak override applied"
assert_file_contains "$T/plan.yaml" "interval: 100ms" "the interval override applied"
assert_file_not_contains "$T/plan.yaml" "soak: 10s" "no check kept the long soak"
cd "$T"
assert_exit 0 phg apply "$T/plan.yaml" --to enforce
assert_eq "0" "$(psql_q "SELECT count(*) FROM jobs WHERE new_status IS DISTINCT FROM status")" "backfilled"
assert_eq "NO" "$(psql_q "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'jobs' AND column_name = 'new_status'")" "enforced"
assert_exit 0 phg rollback "$T/plan.yaml" --to expand
assert_eq "1" "$(psql_q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'jobs' AND column_name = 'new_status'")" "expand kept"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal")" "trigger removed"
assert_exit 0 phg apply "$T/plan.yaml"
# finalize: manual: the old column stays hidden until `phasegate finalize`
assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attname LIKE '\_phg\_%\_status' AND NOT attisdropped")" "the old column hidden"
assert_exit 0 phg finalize "$T/plan.yaml"
assert_eq "status" "$(psql_q "SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_name = 'jobs' AND column_name LIKE '%status%'")" "contracted"
assert_eq "1" "$(psql_q "SELECT count(*) FROM phasegate.backups")" "contract backup recorded"
pass
