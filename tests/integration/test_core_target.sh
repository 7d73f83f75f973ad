#!/usr/bin/env bash
# test_core_target.sh - never the wrong database (issue 13, first slice).
# With --env, the environment's variable must be set: unset or empty is
# exit 2 naming it -- also when PGDATABASE names another database, which is
# left untouched -- for apply, rollback, status, history and promote.
# Without --env, an unset DATABASE_URL falls back to the PG* variables as
# psql does.  apply prints its target first (database, socket or host and
# port, user, server version, environment; never a password), records it
# with the run, and status and history show it.  An environment marked
# `protected: true` needs --yes without a terminal (exit 2, nothing
# touched) and its name typed on one.  An unset ${VAR} is reported once.
# An invalid connection string is exit 2, an unknown database or role
# exit 1, a wrong password exit 1, none retried; a password is never shown.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_target_other
other_db=$TEST_DB
new_db core_target_staging
staging_db=$TEST_DB
for db in "$other_db" "$staging_db"; do
	psql -X -q -d "$db" -c "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"
done
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: target-safety
environments:
  staging: { url_env: STAGING_DATABASE_URL }
  prod: { url_env: PROD_DATABASE_URL, protected: true }
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int }
YAML
untouched() { # DB
	[[ $(psql -X -A -t -d "$1" -c "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass
		AND attname = 'c'")$(psql -X -A -t -d "$1" -c "SELECT to_regnamespace('phasegate') IS NULL") == 0t ]]
}

# --env with its variable unset: exit 2, named; the PG* variables are never used
unset DATABASE_URL STAGING_DATABASE_URL
export PGDATABASE=$other_db
for cmd in apply rollback status history; do
	assert_exit 2 phg "$cmd" "$T/plan.yaml" --env staging
	assert_file_contains "$T/err" 'environment "staging" takes its database from $STAGING_DATABASE_URL, which is not set'
	assert_file_contains "$T/err" "never falls back to the PG* variables"
done
assert_exit 2 phg promote "$T/plan.yaml" --from staging --to staging
export STAGING_DATABASE_URL=""
assert_exit 2 phg apply "$T/plan.yaml" --env staging
assert_file_contains "$T/err" "which is empty"
untouched "$other_db" || fail "the database of PGDATABASE was touched"

# set: the target is printed first and recorded
export STAGING_DATABASE_URL="postgresql:///${staging_db}?host=${PGHOST}&port=${PGPORT}&user=postgres&password=s3cret-pw"
assert_exit 0 phg apply "$T/plan.yaml" --env staging
assert_file_contains "$T/err" "target: database \"$staging_db\" on socket $PGHOST/.s.PGSQL.$PGPORT as postgres, PostgreSQL"
assert_file_contains "$T/err" 'environment "staging"'
assert_file_not_contains "$T/err" "s3cret-pw"
untouched "$other_db" || fail "the other database was touched"
target=$(psql -X -A -t -d "$staging_db" -c "SELECT target FROM phasegate.runs")
assert_contains "$target" "database \"$staging_db\" on socket" "the run records its target"
assert_exit 0 phg status "$T/plan.yaml" --env staging
assert_file_contains "$T/out" "target:   database \"$staging_db\""
assert_exit 0 phg status "$T/plan.yaml" --env staging --json
assert_contains "$(cat "$T/out")" "\"target\":\"database" "status --json has the target"
assert_exit 0 phg history "$T/plan.yaml" --env staging
assert_file_contains "$T/out" "target: database \"$staging_db\""
assert_exit 0 phg history "$T/plan.yaml" --env staging --json
assert_contains "$(cat "$T/out")" "\"target\":\"database" "history --json has the target"
grep -rq "s3cret-pw" "$T"/out "$T"/err && fail "the password appeared in the output"
[[ $(psql -X -A -t -d "$staging_db" -c "SELECT count(*) FROM phasegate.runs WHERE target LIKE '%s3cret%'
	OR env LIKE '%s3cret%'") == 0 ]] || fail "the password is in the state"

# without --env, an unset DATABASE_URL means the PG* variables, as psql
unset STAGING_DATABASE_URL DATABASE_URL
export PGDATABASE=$other_db
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "target: database \"$other_db\""
[[ $(psql -X -A -t -d "$other_db" -c "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass
	AND attname = 'c'") == 1 ]] || fail "the PG* database was not the target"

# a protected environment: --yes, or its name typed on a terminal
new_db core_target_prod
prod_db=$TEST_DB
psql -X -q -d "$prod_db" -c "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"
export PROD_DATABASE_URL="postgresql:///${prod_db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
assert_exit 2 phg apply "$T/plan.yaml" --env prod </dev/null
assert_file_contains "$T/err" 'environment "prod" is protected: apply needs --yes without a terminal'
assert_file_contains "$T/err" "Target: database \"$prod_db\" on socket $PGHOST/.s.PGSQL.$PGPORT as postgres"
untouched "$prod_db" || fail "an unconfirmed apply touched prod"
export STAGING_DATABASE_URL="postgresql:///${staging_db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
assert_exit 2 phg promote "$T/plan.yaml" --from staging --to prod </dev/null
assert_file_contains "$T/err" 'environment "prod" is protected'
untouched "$prod_db" || fail "an unconfirmed promotion touched prod"
# on a terminal (script(1) gives it one): the wrong name is refused
printf 'staging\n' | script -qec "'$PHASEGATE' apply '$T/plan.yaml' --env prod" /dev/null >"$T/tty.out" 2>&1 || true
assert_file_contains "$T/tty.out" "Type the environment's name to go on"
assert_file_contains "$T/tty.out" "not confirmed: nothing was changed"
untouched "$prod_db" || fail "a refused confirmation touched prod"
printf 'prod\n' | script -qec "'$PHASEGATE' apply '$T/plan.yaml' --env prod" /dev/null >"$T/tty.out" 2>&1
assert_file_contains "$T/tty.out" "plan completed"
assert_exit 0 phg rollback "$T/plan.yaml" --env prod --yes </dev/null
assert_eq "rolled_back" "$(psql -X -A -t -d "$prod_db" -c "SELECT state FROM phasegate.runs ORDER BY id DESC LIMIT 1")" \
	"rollback --yes on prod"
assert_exit 0 phg apply "$T/plan.yaml" --env prod --yes </dev/null
assert_exit 2 phg status "$T/plan.yaml" --yes
assert_file_contains "$T/err" "not valid here"

# connection failures that another attempt cannot fix are not retried
export DATABASE_URL="postgresql://[bad"
assert_exit 2 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "invalid connection string"
assert_file_not_contains "$T/err" "attempt 1/"
assert_exit 2 phg status "$T/plan.yaml"
export DATABASE_URL="postgresql:///t_no_such_db_$$?host=${PGHOST}&port=${PGPORT}&user=postgres"
assert_exit 1 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "does not exist"
assert_file_not_contains "$T/err" "attempt 1/"
export DATABASE_URL="postgresql:///${other_db}?host=${PGHOST}&port=${PGPORT}&user=phg_no_such_role"
assert_exit 1 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" 'role "phg_no_such_role" does not exist'
assert_file_not_contains "$T/err" "attempt 1/"
# a wrong password (28P01; the harness makes members of phg_pw_users log in
# with scram-sha-256): said as what it is, not retried, never printed; the
# right one works
pw_role="phg_pw_$$"
psql -X -q -d postgres -c "DO \$\$ BEGIN CREATE ROLE phg_pw_users NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" \
	-c "CREATE ROLE $pw_role LOGIN SUPERUSER PASSWORD 'right-Secret-42' IN ROLE phg_pw_users"
on_exit "psql -X -q -d postgres -c 'DROP ROLE IF EXISTS $pw_role' >/dev/null 2>&1"
export DATABASE_URL="postgresql://${pw_role}:wrong-Secret-17@/${other_db}?host=${PGHOST}&port=${PGPORT}"
assert_exit 1 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "password authentication failed"
assert_file_not_contains "$T/err" "attempt 1/"
assert_file_not_contains "$T/err" "wrong-Secret-17"
assert_exit 1 phg status "$T/plan.yaml"
assert_file_contains "$T/err" "password authentication failed"
assert_file_not_contains "$T/err" "wrong-Secret-17"
export DATABASE_URL="postgresql://${pw_role}:right-Secret-42@/${other_db}?host=${PGHOST}&port=${PGPORT}"
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "as ${pw_role}"
assert_file_not_contains "$T/err" "right-Secret-42"
assert_exit 0 phg history "$T/plan.yaml" --json
assert_file_not_contains "$T/out" "right-Secret-42"
assert_exit 0 phg rollback "$T/plan.yaml"
assert_file_not_contains "$T/err" "right-Secret-42"
[[ $(psql -X -A -t -d "$other_db" -c "SELECT count(*) FROM phasegate.runs WHERE target LIKE '%Secret%' OR who LIKE '%Secret%'") == 0 ]] ||
	fail "a password reached the state tables"
# the backup gate under password authentication: the real pg_dump logs in
# through the password file phasegate gives it (never PGPASSWORD)
cat >"$T/bk.yaml" <<YAML
version: 1
name: target-backup-pw
backup: { dir: "$T/bk" }
phases:
  - name: expand
    backup: true
    steps:
      - add_column: { table: t, column: c2, type: int }
YAML
assert_exit 0 phg apply "$T/bk.yaml"
assert_file_not_contains "$T/err" "right-Secret-42"
[[ $(psql -X -A -t -d "$other_db" -c "SELECT count(*) FROM phasegate.backups b JOIN phasegate.runs r ON r.id = b.run_id WHERE r.plan = 'target-backup-pw'") == 1 ]] ||
	fail "no backup recorded under password authentication"
[[ $(find "$T/bk" -name '*.dump' -size +0 | wc -l) == 1 ]] || fail "no backup file in $T/bk"
unset DATABASE_URL

# an unset ${VAR} is reported once, with every place that uses it
cat >"$T/unset.yaml" <<'YAML'
version: 1
name: unset-var
checks:
  api: { url: "http://127.0.0.1:${PHG_NOPE_PORT}/healthz" }
  api2: { url: "http://127.0.0.1:${PHG_NOPE_PORT}/other" }
phases:
  - name: one
    steps:
      - http: { url: "http://127.0.0.1:${PHG_NOPE_PORT}/f", revert: { url: "http://127.0.0.1:${PHG_NOPE_PORT}/g" } }
    verify: [api]
YAML
unset PHG_NOPE_PORT
assert_exit 2 phg apply "$T/unset.yaml"
assert_eq 1 "$(grep -c 'environment variable "PHG_NOPE_PORT" is not set' "$T/err")" "reported once"
assert_file_contains "$T/err" 'In the url of check "api", the url of check "api2" and the url of the http step of phase "one". Nothing was changed.'
pass
