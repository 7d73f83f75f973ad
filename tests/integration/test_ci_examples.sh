#!/usr/bin/env bash
# test_ci_examples.sh - examples/ci/github-actions.yml and gitlab-ci.yml run
# as their CI would (tests/support/ci_runner.py: each job's shell steps in
# order, secrets from the environment), against two databases of the
# throwaway PostgreSQL as staging and prod, so the examples cannot rot:
#  - validate, plan.sql, staging applied, the attestation signed with
#    PHASEGATE_ATTEST_KEY, prod promoted on it (the prod job's environment
#    has no staging URL at all) and recorded "by attestation";
#  - the prod job refuses (exit 6, the step's own message) a plan that
#    changed since staging, an attestation that was tampered with, or one
#    signed with another key; an invalid plan fails the validate job with
#    annotations (exit 2);
#  - the GitLab pipeline does the same on fresh databases.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

PY=/usr/bin/python3
"$PY" -c 'import yaml' 2>/dev/null || fail "python3-yaml is missing (scripts/bootstrap.sh installs it)"
RUNNER=$PHG_SOURCE_DIR/tests/support/ci_runner.py
GH=$PHG_SOURCE_DIR/examples/ci/github-actions.yml
GL=$PHG_SOURCE_DIR/examples/ci/gitlab-ci.yml
export PATH="$(dirname "$PHASEGATE"):$PATH"
command -v phasegate >/dev/null || fail "phasegate is not on PATH"

"$FAKEHTTP" --port 0 --port-file "$T/port" >"$T/fake.log" 2>&1 &
FAKE_PID=$!
on_exit "kill $FAKE_PID 2>/dev/null || true"
wait_for test -s "$T/port"
export APP_HEALTH_URL="http://127.0.0.1:$(cat "$T/port")/healthz"
export PHASEGATE_ATTEST_KEY=attest-Secret-61

seed() { # DB
	psql -X -q -d "$1" -c "CREATE TABLE jobs (id bigserial PRIMARY KEY, repo text NOT NULL,
		status varchar(20) NOT NULL DEFAULT 'queued');
		INSERT INTO jobs (repo, status) SELECT 'r' || g, (ARRAY['queued','done'])[1 + g % 2]
		FROM generate_series(1, 2000) g"
}
# workspace WS - the repository as a CI job sees it, with the shipped plan
# sped up (a short soak) so the test stays quick
workspace() {
	mkdir -p "$1/plans"
	sed -e 's/soak: 10s/soak: 200ms/' -e 's/interval: 1s/interval: 100ms/' \
		"$PHG_SOURCE_DIR/plans/005-jobs-status-rewrite.yaml" >"$1/plans/005-jobs-status-rewrite.yaml"
	grep -q "soak: 200ms" "$1/plans/005-jobs-status-rewrite.yaml" || fail "the soak override did not apply"
}
url_of() { printf 'postgresql:///%s?host=%s&port=%s&user=postgres' "$1" "$PGHOST" "$PGPORT"; }
# job CI FILE JOB... - in the current workspace; stdout+stderr in $T/job.log
job() { "$PY" "$RUNNER" "$@" >"$T/job.log" 2>&1; }
runs_of() { psql -X -A -t -d "$1" -c "SELECT coalesce(string_agg(env || ':' || state, ' ' ORDER BY id), '') FROM phasegate.runs"; }

new_db ci_staging
staging_db=$TEST_DB
new_db ci_prod
prod_db=$TEST_DB
seed "$staging_db"
seed "$prod_db"
unset DATABASE_URL

# ---- GitHub Actions -----------------------------------------------------------
mkdir -p "$T/gh"
workspace "$T/gh"
cd "$T/gh"
export STAGING_DATABASE_URL PROD_DATABASE_URL
STAGING_DATABASE_URL=$(url_of "$staging_db")
PROD_DATABASE_URL=$(url_of "$prod_db")
# the validate and staging jobs; the prod job's own environment has no
# staging URL (it promotes on the attestation)
job github "$GH" validate staging || fail "the validate and staging jobs" "$(cat "$T/job.log")"
grep -q 'ci_runner: skip validate / actions/checkout@v4' "$T/job.log" || fail "uses: steps are skipped"
grep -q "::notice file=plans/005-jobs-status-rewrite.yaml" "$T/job.log" || fail "validate annotated"
[[ -s plan.sql ]] && grep -q "ALTER TABLE" plan.sql || fail "plan.sql is the plan's SQL"
assert_eq "staging:completed" "$(runs_of "$staging_db")" "staging applied"
assert_contains "$(cat attestation.json)" '"hmac":"hmac-sha256:' "the attestation is signed"
grep -q '"kind":"exit".*"code":0' staging-events.jsonl || fail "the staging job kept the event stream"
cp attestation.json "$T/attestation.good"

# prod refuses a plan changed since staging (exit 6, the step says so)
cp plans/005-jobs-status-rewrite.yaml "$T/plan.orig"
sed -i 's/batch_size: 5000/batch_size: 4000/' plans/005-jobs-status-rewrite.yaml
rc=0
env -u STAGING_DATABASE_URL "$PY" "$RUNNER" github "$GH" prod >"$T/job.log" 2>&1 || rc=$?
assert_eq 6 "$rc" "prod refuses a changed plan" 
grep -q "::error::promotion refused" "$T/job.log" || fail "the step's own message" "$(cat "$T/job.log")"
assert_eq "" "$(psql -X -A -t -d "$prod_db" -c "SELECT to_regclass('phasegate.runs')")" "nothing touched in prod"
cp "$T/plan.orig" plans/005-jobs-status-rewrite.yaml
# ... an attestation tampered with
sed 's/"run_id":1,/"run_id":7,/' "$T/attestation.good" >attestation.json
cmp -s attestation.json "$T/attestation.good" && fail "the tamper changed nothing"
rc=0
env -u STAGING_DATABASE_URL "$PY" "$RUNNER" github "$GH" prod >"$T/job.log" 2>&1 || rc=$?
assert_eq 6 "$rc" "prod refuses a tampered attestation"
grep -q "does not verify: its HMAC does not match" prod-events.jsonl || fail "said why (in the job's event stream)" "$(cat prod-events.jsonl)"
# ... and one signed with another key
cp "$T/attestation.good" attestation.json
rc=0
PHASEGATE_ATTEST_KEY=other-key env -u STAGING_DATABASE_URL "$PY" "$RUNNER" github "$GH" prod >"$T/job.log" 2>&1 || rc=$?
assert_eq 6 "$rc" "prod refuses an attestation signed with another key"
# the good one: promoted, recorded by attestation
env -u STAGING_DATABASE_URL "$PY" "$RUNNER" github "$GH" prod >"$T/job.log" 2>&1 ||
	fail "the prod job" "$(cat "$T/job.log")"
grep -q "prod: promoted and applied" "$T/job.log" || fail "the prod job's message"
assert_eq "prod:completed" "$(runs_of "$prod_db")" "prod applied"
assert_contains "$(psql -X -A -t -d "$prod_db" -c "SELECT promoted_from FROM phasegate.runs")" \
	"staging run 1 (sha256:" "prod records its source"
assert_contains "$(psql -X -A -t -d "$prod_db" -c "SELECT promoted_from FROM phasegate.runs")" \
	"by attestation" "... by attestation"
grep -q "promoted from staging run 1" "$T/job.log" || fail "the history step shows the source"

# an invalid plan fails the validate job with annotations (exit 2)
printf 'version: 1\nname: broken\nphases: []\n' >plans/005-jobs-status-rewrite.yaml
rc=0
job github "$GH" validate || rc=$?
assert_eq 2 "$rc" "an invalid plan fails validate"
grep -q "::error file=plans/005-jobs-status-rewrite.yaml,line=" "$T/job.log" || fail "annotations" "$(cat "$T/job.log")"

# ---- GitLab CI ----------------------------------------------------------------
new_db ci_gl_staging
gl_staging=$TEST_DB
new_db ci_gl_prod
gl_prod=$TEST_DB
seed "$gl_staging"
seed "$gl_prod"
unset DATABASE_URL
mkdir -p "$T/gl"
workspace "$T/gl"
cd "$T/gl"
STAGING_DATABASE_URL=$(url_of "$gl_staging")
PROD_DATABASE_URL=$(url_of "$gl_prod")
job gitlab "$GL" validate staging || fail "the GitLab validate and staging jobs" "$(cat "$T/job.log")"
"$PY" -c 'import json,sys; o=json.load(open("validate.json")); assert o["valid"] and o["phases"] == 5, o' ||
	fail "validate.json"
assert_eq "staging:completed" "$(runs_of "$gl_staging")" "GitLab: staging applied"
grep -q "(stage staging)" "$T/job.log" || fail "stage order"
env -u STAGING_DATABASE_URL "$PY" "$RUNNER" gitlab "$GL" prod >"$T/job.log" 2>&1 ||
	fail "the GitLab prod job" "$(cat "$T/job.log")"
grep -q "(stage prod, manual)" "$T/job.log" || fail "the prod job is manual"
assert_eq "prod:completed" "$(runs_of "$gl_prod")" "GitLab: prod promoted"
pass
