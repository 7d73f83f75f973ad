#!/usr/bin/env bash
# test_core_cli.sh - the command line contract (SPEC section 1): --version,
# --help, COMMAND --help, exit 2 for bad invocations, validate, `plan`
# without any database, an unreachable database (exit 1, clear message, the
# password never printed), apply --dry-run changing nothing, history --json,
# --env, and promote (refused with exit 6 until the source environment has a
# completed run of the same checksum).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

SECRET=Sup3rSecret
# no_secret - neither stdout nor stderr of the last assert_exit shows it
no_secret() {
	assert_file_not_contains "$T/out" "$SECRET" "${1:-}: password on stdout"
	assert_file_not_contains "$T/err" "$SECRET" "${1:-}: password on stderr"
}

cat >"$T/plan.yaml" <<'EOF'
version: 1
name: cli-plan
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int, default: "0" }
  - name: index
    steps:
      - create_index: { table: t, columns: [c], name: t_c_idx }
EOF
cat >"$T/bad.yaml" <<'EOF'
version: 1
name: cli-bad
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int, nullable: false }
EOF

# ---------------------------------------------------------------- no database needed
assert_exit 0 phg --version
[[ $(cat "$T/out") =~ ^phasegate\ [0-9]+\.[0-9]+\.[0-9]+ ]] || fail "--version printed '$(cat "$T/out")'"
assert_exit 0 phg --help
for w in validate plan apply status rollback promote history "Exit codes"; do
	assert_file_contains "$T/out" "$w" "--help mentions $w"
done
assert_exit 0 phg apply --help
assert_file_contains "$T/out" "--to PHASE"
assert_file_contains "$T/out" "--dry-run"
assert_exit 0 phg promote --help
assert_file_contains "$T/out" "--from ENV"

assert_exit 2 phg
assert_exit 2 phg frobnicate "$T/plan.yaml"
assert_file_contains "$T/err" "frobnicate"
assert_exit 2 phg apply "$T/plan.yaml" --bogus
assert_file_contains "$T/err" "--bogus"
assert_exit 2 phg status "$T/plan.yaml" --dry-run
assert_exit 2 phg apply
assert_file_contains "$T/err" "PLAN"
assert_exit 2 phg apply "$T/no-such-plan.yaml"
assert_file_contains "$T/err" "no-such-plan.yaml"
assert_exit 2 phg apply "$T/plan.yaml" --to
assert_exit 2 phg promote "$T/plan.yaml" --from staging

assert_exit 0 phg validate "$T/plan.yaml"
assert_file_contains "$T/out" "ok"
assert_exit 2 phg validate "$T/bad.yaml"
grep -Eq "^$T/bad.yaml:[0-9]+:[0-9]+: " "$T/err" || fail "validate error not as FILE:LINE:COL: $(cat "$T/err")"

# plan: every statement, under lock_timeout, and no connection at all
export DATABASE_URL="postgresql://u:$SECRET@/nodb?host=/nonexistent/socket/dir"
assert_exit 0 phg plan "$T/plan.yaml"
assert_file_contains "$T/out" "SET LOCAL lock_timeout = '2000ms';"
assert_file_contains "$T/out" 'ALTER TABLE "t" ADD COLUMN "c" int DEFAULT 0'
assert_file_contains "$T/out" 'CREATE INDEX CONCURRENTLY "t_c_idx" ON "t"'
assert_file_not_contains "$T/err" "connect"
no_secret plan

# ---------------------------------------------------------------- unreachable database
# (a connection string libpq cannot parse is exit 2 at once, not retried)
for url in "1 postgresql://u:$SECRET@/db?host=/nonexistent" \
	"1 host=/nonexistent user=u password=$SECRET dbname=db" \
	"2 postgresql://u:$SECRET@/db?host=/nonexistent&no_such_option=1" \
	"2 postgresql://u:$SECRET@/db?host=/nonexistent&sslmode=$SECRET"; do
	want=${url%% *}
	url=${url#* }
	export DATABASE_URL=$url
	assert_exit "$want" phg apply "$T/plan.yaml"
	if [[ $want == 1 ]]; then
		assert_file_contains "$T/err" "database unreachable"
	else
		assert_file_contains "$T/err" "invalid " # connection string, sslmode value, ...
		assert_file_not_contains "$T/err" "attempt 1/"
	fi
	no_secret "apply, $url"
	assert_exit "$want" phg status "$T/plan.yaml"
	[[ $want == 2 ]] || assert_file_contains "$T/err" 'The database comes from $DATABASE_URL'
	no_secret "status, $url"
	assert_exit "$want" phg history --json
	no_secret "history, $url"
	assert_exit "$want" phg rollback "$T/plan.yaml" -v
	no_secret "rollback -v, $url"
done

# ---------------------------------------------------------------- a real database
new_db core_cli
psql_q "CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g" >/dev/null
# the password (ignored by the trust-auth test cluster) is never printed
export DATABASE_URL="postgresql://postgres:$SECRET@/$TEST_DB?host=$PGHOST&port=$PGPORT"
table_state() {
	psql_q "SELECT (SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
		WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped)
		|| ' ' || (SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass)
		|| ' ' || (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t)
		|| ' ' || coalesce(to_regnamespace('phasegate')::text, 'no-state-schema')"
}
before=$(table_state)
assert_contains "$before" "no-state-schema"
assert_exit 0 phg history --json
assert_eq "[]" "$(cat "$T/out")" "history --json of a database without runs"

# dry run: shows what would run, changes nothing (not even the state schema)
assert_exit 0 phg apply "$T/plan.yaml" --dry-run
assert_file_contains "$T/out" "dry run"
assert_file_contains "$T/out" 'ALTER TABLE "t" ADD COLUMN "c"'
no_secret "dry run"
assert_eq "$before" "$(table_state)" "--dry-run changed nothing"

assert_exit 0 phg apply "$T/plan.yaml" -v
no_secret "apply -v"
assert_eq "id,v,c 2" "$(psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) || ' ' ||
	(SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass)
	FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped")" "applied"
assert_exit 0 phg status "$T/plan.yaml"
assert_file_contains "$T/out" "completed"
no_secret status
assert_exit 0 phg apply "$T/plan.yaml" --dry-run
assert_file_contains "$T/out" "completed"
assert_exit 0 phg rollback "$T/plan.yaml"
no_secret rollback
assert_exit 0 phg apply "$T/plan.yaml" --to expand

# history --json: every run, oldest first
assert_exit 0 phg history --json
no_secret history
hist=$(python3 -I -S -c '
import json, sys
h = json.load(open(sys.argv[1]))
print(" ".join("%s:%s:%s:%s" % (r["run_id"], r["plan"], r["action"], r["state"]) for r in h))' "$T/out")
assert_eq "1:cli-plan:apply:completed 1:cli-plan:rollback:rolled_back 2:cli-plan:apply:interrupted" "$hist" "history --json: the apply and its rollback are entries of their own"
assert_exit 0 phg history "$T/plan.yaml"
assert_file_contains "$T/out" "cli-plan"

# --env with no such environment
assert_exit 2 phg apply "$T/plan.yaml" --env nosuch
assert_exit 2 phg status "$T/plan.yaml" --env nosuch
assert_exit 2 phg plan "$T/plan.yaml" --env nosuch

# ---------------------------------------------------------------- log levels
# -v is what phasegate decides and sends; -vv adds every state change; off a
# terminal a line starts with an ISO 8601 time with its offset
new_db core_cli_log
psql_q "CREATE TABLE lg (id int PRIMARY KEY)" >/dev/null
cat >"$T/log.yaml" <<'YAML'
version: 1
name: cli-log
phases:
  - name: one
    steps:
      - add_column: { table: lg, column: c, type: int }
YAML
assert_exit 0 phg apply "$T/log.yaml" -v
assert_file_not_contains "$T/err" "connection state"
grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}[+-][0-9]{2}:[0-9]{2} phasegate' "$T/err" ||
	fail "no ISO 8601 time stamp off a terminal"
v_lines=$(wc -l <"$T/err")
assert_exit 0 phg rollback "$T/log.yaml" -vv
assert_file_contains "$T/err" "connection state"
[[ $(wc -l <"$T/err") -gt $v_lines ]] || fail "-vv says more than -v"

# ---------------------------------------------------------------- promote
new_db core_cli_staging
export STAGING_DATABASE_URL=$DATABASE_URL
staging_db=$TEST_DB
new_db core_cli_prod
export PROD_DATABASE_URL=$DATABASE_URL
prod_db=$TEST_DB
unset DATABASE_URL
for db in "$staging_db" "$prod_db"; do
	psql -X -q -d "$db" -c "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)"
done
cat >"$T/promote.yaml" <<'EOF'
version: 1
name: cli-promote
environments:
  staging: { url_env: STAGING_DATABASE_URL }
  prod: { url_env: PROD_DATABASE_URL }
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int, default: "7" }
EOF
has_c() { # DB
	psql -X -A -t -d "$1" -c "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'"
}
state_schema() { # DB
	psql -X -A -t -d "$1" -c "SELECT coalesce(to_regnamespace('phasegate')::text, 'none')"
}

assert_exit 2 phg apply "$T/promote.yaml" --env nosuch
assert_file_contains "$T/err" "nosuch"
assert_exit 2 phg promote "$T/promote.yaml" --from staging --to nosuch
assert_exit 2 phg promote "$T/promote.yaml" --from staging --to staging
assert_file_contains "$T/err" 'cannot promote from "staging" to itself'
# GNU-style options: anywhere, --opt=value, -vv, and -- ends them
assert_exit 0 phg -v status "$T/promote.yaml" --env=staging
assert_exit 0 phg status --env staging -- "$T/promote.yaml"
assert_exit 2 phg status "$T/promote.yaml" --env
assert_file_contains "$T/err" 'option "--env" needs a value'
assert_exit 2 phg validate "$T/promote.yaml" --json
assert_file_contains "$T/err" 'option "--json" is not valid here'
# `help CMD` is `CMD --help`
assert_exit 0 phg help rollback
assert_file_contains "$T/out" "usage: phasegate rollback PLAN.yaml"
assert_file_contains "$T/out" "Exit codes: 0 done"
assert_file_contains "$T/out" "-v/--verbose"
assert_exit 0 phg status --help
assert_file_contains "$T/out" "--json"
assert_exit 0 phg --help
assert_file_contains "$T/out" "  rollback   revert applied phases in reverse order"
assert_exit 2 phg help nosuch
assert_file_contains "$T/err" 'unknown command "nosuch"'

# staging has no run: refused, prod untouched
assert_exit 6 phg promote "$T/promote.yaml" --from staging --to prod
assert_file_contains "$T/err" "refused"
assert_eq "0 none" "$(has_c "$prod_db") $(state_schema "$prod_db")" "refused promotion touched nothing in prod"

# apply to staging
assert_exit 0 phg apply "$T/promote.yaml" --env staging
assert_eq "1|staging|completed" "$(psql -X -A -t -d "$staging_db" -c "SELECT count(*), max(env), max(state) FROM phasegate.runs")" \
	"staging run recorded with its environment"

# a different checksum (the plan changed since staging ran it): refused
cp "$T/promote.yaml" "$T/promote.orig"
sed -i 's/default: "7"/default: "8"/' "$T/promote.yaml"
assert_exit 6 phg promote "$T/promote.yaml" --from staging --to prod
assert_file_contains "$T/err" "checksum"
assert_eq "0 none" "$(has_c "$prod_db") $(state_schema "$prod_db")" "refused promotion (checksum) touched nothing"
cp "$T/promote.orig" "$T/promote.yaml"

# the same plan, re-spelled (a comment, CRLF line endings, other quoting): the
# checksum is that of the parsed plan, so promotion goes ahead
{ printf '# edited after staging: comments do not count\n'; sed "s/default: \"7\"/default: '7'/" "$T/promote.orig"; } |
	sed 's/$/\r/' >"$T/promote.yaml"
assert_exit 0 phg validate "$T/promote.yaml"
assert_file_contains "$T/out" "$(psql -X -A -t -d "$staging_db" -c "SELECT checksum FROM phasegate.runs")"
assert_exit 0 phg promote "$T/promote.yaml" --from staging --to prod
assert_eq 1 "$(has_c "$prod_db")" "promoted to prod"
assert_eq "$(psql -X -A -t -d "$staging_db" -c "SELECT checksum FROM phasegate.runs")|prod|completed" \
	"$(psql -X -A -t -d "$prod_db" -c "SELECT checksum, env, state FROM phasegate.runs")" \
	"prod run: same checksum, env prod, completed"
st=$(phg status "$T/promote.yaml" --env prod --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(s["env"], s["state"], s["phases"][0]["state"])')
assert_eq "prod completed applied" "$st" "status --env prod"
# the promoted run records its source; history shows it
src_sum=$(psql -X -A -t -d "$staging_db" -c "SELECT checksum FROM phasegate.runs")
assert_eq "staging run 1 ($src_sum)" "$(psql -X -A -t -d "$prod_db" -c "SELECT promoted_from FROM phasegate.runs")" \
	"the prod run records where it was promoted from"
assert_exit 0 phg history "$T/promote.yaml" --env prod
assert_file_contains "$T/out" "promoted from staging run 1 ($src_sum)"
assert_exit 0 phg history "$T/promote.yaml" --env prod --json
assert_contains "$(cat "$T/out")" "\"promoted_from\":\"staging run 1" "history --json has the source"
assert_exit 0 phg history "$T/promote.yaml" --env staging --json
assert_eq "staging completed" "$(python3 -I -S -c '
import json, sys
h = json.load(open(sys.argv[1]))
print(" ".join("%s %s" % (r["env"], r["state"]) for r in h))' "$T/out")" "history --env staging"

pass
