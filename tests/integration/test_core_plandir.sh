#!/usr/bin/env bash
# test_core_plandir.sh - a directory of plans (issue 16): plans run in
# file-name order; apply DIR applies each plan that is not completed and
# stops at the first failure with its exit code (a completed plan is never
# re-run, even when a later one fails); --to NAME and --to NAME:PHASE stop
# there; rollback DIR --to NAME reverts later plans in reverse order;
# status/current/history cover the directory; `requires` is checked for
# order (validate DIR) and, for one plan file, against the database; two
# plans of one name are refused; a completed plan whose file changed is
# drift (exit 2), not re-applied.  The application writes throughout and
# sees no failed statement.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_plandir
psql_q "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)" >/dev/null
D=$T/plans
mkdir -p "$D"
cat >"$D/001-profiles.yaml" <<'YAML'
version: 1
name: profiles
settings: { lock_timeout: 200ms }
phases:
  - name: expand
    steps:
      - sql: { up: "CREATE TABLE profiles (id bigint PRIMARY KEY, bio text)", down: "DROP TABLE profiles" }
  - name: column
    steps:
      - add_column: { table: accounts, column: nickname, type: text }
YAML
cat >"$D/002-status.yaml" <<'YAML'
version: 1
name: status
requires: [profiles]
settings: { lock_timeout: 200ms }
phases:
  - name: add
    steps:
      - add_column: { table: accounts, column: status, type: text }
  - name: default
    steps:
      - set_default: { table: accounts, column: status, default: "'active'" }
YAML
cat >"$D/003-audit.yaml" <<'YAML'
version: 1
name: audit
requires: [status]
settings: { lock_timeout: 200ms }
phases:
  - name: table
    steps:
      - sql: { up: "CREATE TABLE audit (id bigint PRIMARY KEY, at timestamptz)", down: "DROP TABLE audit" }
YAML
# not a plan: ignored
echo "notes" >"$D/README.txt"

# ---- validate and plan of a directory
assert_exit 0 phg validate "$D"
assert_file_contains "$T/out" "$D/001-profiles.yaml: ok: plan \"profiles\""
assert_file_contains "$T/out" "$D: ok: 3 plan(s) in order, head \"audit\""
assert_exit 0 phg validate --format json "$D"
assert_eq "true 3 audit" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(str(d["valid"]).lower(), len(d["plans"]), d["plans"][-1]["plan"])' "$T/out")" \
	"validate --format json of a directory"
assert_exit 0 phg plan "$D"
assert_file_contains "$T/out" "-- ===== plan 2/3: $D/002-status.yaml ====="
assert_file_contains "$T/out" "-- requires the completed plans: profiles"

# ---- the application writes throughout
app_start "INSERT INTO accounts (email) VALUES ('a@b')"

assert_exit 0 phg current "$D"
assert_file_contains "$T/out" "current: none"
assert_file_contains "$T/out" "head:    audit ($D/003-audit.yaml): 3 plan(s) to apply"

# one plan file whose `requires` is not completed: refused, nothing changed
assert_exit 2 phg apply "$D/002-status.yaml"
assert_file_contains "$T/err" "plan \"status\" requires plan \"profiles\", which is not applied on this database"
assert_eq "0" "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'status'" 2>/dev/null || echo 0)" \
	"a refused requires creates no run"

# ---- --to NAME:PHASE, then --to NAME, then the rest
assert_exit 0 phg apply "$D" --to status:add
assert_file_contains "$T/err" "applied up to phase \"add\" of plan \"status\""
assert_eq "completed interrupted" \
	"$(psql_q "SELECT string_agg(state, ' ' ORDER BY id) FROM phasegate.runs WHERE plan IN ('profiles','status')" |
		sed 's/running/interrupted/')" "profiles completed, status stopped after its first phase"
assert_exit 0 phg status "$D"
assert_file_contains "$T/out" "profiles                     completed"
assert_file_contains "$T/out" "<- current"
assert_file_contains "$T/out" "current: profiles; head: audit (2 plan(s) to apply)"
assert_exit 0 phg current --json "$D"
assert_eq "profiles audit 2" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["current"], d["head"], d["behind"])' "$T/out")" \
	"current --json"
assert_exit 0 phg apply "$D" --to status
assert_file_contains "$T/err" "plan \"profiles\" ($D/001-profiles.yaml) is completed (run"
assert_not_contains "$(psql_q "SELECT string_agg(plan, ',') FROM phasegate.runs")" "audit" "--to status stops before audit"
assert_exit 0 phg apply "$D"
assert_exit 0 phg current "$D"
assert_file_contains "$T/out" "current: audit ($D/003-audit.yaml), completed in run"
assert_file_contains "$T/out" "(head)"
assert_eq "1|1|1" "$(psql_q "SELECT count(*) FILTER (WHERE plan='profiles'), count(*) FILTER (WHERE plan='status'), count(*) FILTER (WHERE plan='audit') FROM phasegate.runs")" \
	"each plan ran once"
# again: nothing to do, nothing re-run
assert_exit 0 phg apply "$D"
assert_eq "3" "$(psql_q "SELECT count(*) FROM phasegate.runs")" "a completed directory applies nothing"

# ---- history covers the directory (and only it)
psql_q "CREATE SCHEMA other" >/dev/null
assert_exit 0 phg history "$D" --json
assert_eq "audit,profiles,status" "$(python3 -c 'import json,sys; print(",".join(sorted({r["plan"] for r in json.load(open(sys.argv[1]))})))' "$T/out")" \
	"history DIR lists the runs of its plans"

# ---- one plan file that an applied plan requires: its rollback is refused
assert_exit 2 phg rollback "$D/002-status.yaml"
assert_file_contains "$T/err" "plan \"status\" cannot be rolled back: plan \"audit\" requires it and is still applied"
assert_eq "1" "$(psql_q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'status'")" \
	"nothing was changed"

# ---- rollback DIR --to NAME: later plans, in reverse order
assert_exit 0 phg rollback "$D" --to profiles
assert_file_contains "$T/err" "rolling back plan 3/3: \"audit\""
assert_file_contains "$T/err" "rolling back plan 2/3: \"status\""
a=$(grep -n 'rolling back plan 3/3' "$T/err" | cut -d: -f1)
b=$(grep -n 'rolling back plan 2/3' "$T/err" | cut -d: -f1)
[[ $a -lt $b ]] || fail "rollback DIR reverts later plans first (audit at line $a, status at $b)"
assert_eq "|0" "$(psql_q "SELECT coalesce(to_regclass('audit')::text, '') || '|' || count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'status'")" \
	"audit and status are reverted"
assert_eq "profiles" "$(psql_q "SELECT to_regclass('profiles')")" "profiles stays"
assert_exit 0 phg current "$D"
assert_file_contains "$T/out" "current: profiles"

# ---- a later failure stops the directory; completed plans stay
cat >"$D/004-broken.yaml" <<'YAML'
version: 1
name: broken
phases:
  - name: fails
    steps:
      - sql: { up: "SELECT 1/0", down: "SELECT 1" }
YAML
assert_exit 3 phg apply "$D"
assert_file_contains "$T/err" "apply of the directory stopped at plan \"broken\""
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'audit' ORDER BY id DESC LIMIT 1")" \
	"the plans before the failure are completed"
assert_eq "1" "$(psql_q "SELECT count(*) FROM phasegate.runs WHERE plan = 'profiles'")" "profiles never re-ran"
rm "$D/004-broken.yaml"

# ---- a completed plan whose file changed: drift, not re-applied
cp "$D/001-profiles.yaml" "$T/profiles.orig"
sed -i 's/bio text/bio text, born date/' "$D/001-profiles.yaml"
assert_exit 2 phg apply "$D"
assert_file_contains "$T/err" "plan \"profiles\" changed since run"
assert_exit 0 phg status "$D"
assert_file_contains "$T/out" "DRIFT"
cp "$T/profiles.orig" "$D/001-profiles.yaml"

# ---- the directory's own rules
R=$T/rules
mkdir -p "$R"
cp "$D/001-profiles.yaml" "$R/010-profiles.yaml"
cp "$D/002-status.yaml" "$R/005-status.yaml"
cp "$D/003-audit.yaml" "$R/020-audit.yaml"
sed 's/name: profiles/name: status/' "$D/001-profiles.yaml" >"$R/030-again.yaml"
assert_exit 2 phg validate "$R"
assert_file_contains "$T/err" "plan \"status\" requires plan \"profiles\", but $R/010-profiles.yaml comes after it in file-name order"
assert_file_contains "$T/err" "$R/030-again.yaml: plan name \"status\" is also the name of $R/005-status.yaml"
assert_exit 2 phg validate --format json "$R"
assert_eq "False 2" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["valid"], len(d["diagnostics"]))' "$T/out")" \
	"validate --format json DIR: the directory's own errors in its document"
assert_exit 2 phg validate --format github "$R"
assert_file_contains "$T/out" "::error file=$R/030-again.yaml::plan name \"status\" is also the name of"
assert_exit 2 phg apply "$R"
assert_file_contains "$T/err" "comes after it in file-name order"
sed -i 's/requires: \[status\]/requires: [nowhere]/' "$R/020-audit.yaml"
assert_exit 2 phg validate "$R"
assert_file_contains "$T/err" "requires plan \"nowhere\", which is not in the directory"
mkdir -p "$T/empty"
assert_exit 2 phg apply "$T/empty"
assert_file_contains "$T/err" "holds no plan"
assert_exit 2 phg apply "$D" --to nosuch
assert_file_contains "$T/err" "--to \"nosuch\": no plan \"nosuch\" in the directory"
assert_file_contains "$T/err" "Its plans, in order: profiles, status, audit"

# ---- events, report, pause of a directory: its newest run
assert_exit 0 phg events "$D"
assert_file_contains "$T/err" "events of plan \"audit\""
assert_file_contains "$T/out" "run running -> completed"
assert_exit 1 phg pause "$D"
assert_file_contains "$T/err" "has an unfinished run"
assert_exit 2 phg events "$D" --run 1
assert_file_contains "$T/err" "--run N needs the plan file"

# ---- promote a directory: each plan, in order, from one environment to another
E=$T/envs
mkdir -p "$E"
for n in 1 2; do
	cat >"$E/00$n-p$n.yaml" <<YAML
version: 1
name: promo-$n
environments: { stage: { url_env: STAGE_URL }, live: { url_env: LIVE_URL } }
phases:
  - name: one
    steps:
      - sql: { up: "CREATE TABLE promo_$n (id int)", down: "DROP TABLE promo_$n" }
YAML
done
live_db=${TEST_DB}_live
createdb "$live_db"
on_exit "PGOPTIONS='-c client_min_messages=warning' dropdb --if-exists --force '$live_db' >/dev/null 2>&1 || true"
export STAGE_URL=$DATABASE_URL
export LIVE_URL="postgresql:///${live_db}?host=${PGHOST}&port=${PGPORT}&user=postgres"
assert_exit 6 phg promote "$E" --from stage --to live
assert_file_contains "$T/err" "promotion of plan \"promo-1\" from \"stage\" to \"live\" refused"
assert_exit 0 phg apply "$E" --env stage
assert_exit 0 phg promote "$E" --from stage --to live
assert_eq "promo_1 promo_2" "$(psql -X -A -t -d "$live_db" -c "SELECT string_agg(relname, ' ' ORDER BY relname) FROM pg_class WHERE relname LIKE 'promo%'")" \
	"promote DIR applied each plan to the other environment"
assert_exit 2 phg promote "$E" --attestation "$T/none.json" --to live
assert_file_contains "$T/err" "an attestation is of one plan"

# ---- a plan that cannot be rolled back: the directory's rollback is refused
# before any plan is touched (the later, revertible one stays applied)
I=$T/irrev
mkdir -p "$I"
cat >"$I/001-oneway.yaml" <<'YAML'
version: 1
name: oneway
phases:
  - name: one
    steps:
      - sql: { up: "CREATE TABLE oneway (id int)" }
YAML
cat >"$I/002-twoway.yaml" <<'YAML'
version: 1
name: twoway
phases:
  - name: one
    steps:
      - sql: { up: "CREATE TABLE twoway (id int)", down: "DROP TABLE twoway" }
YAML
assert_exit 0 phg apply "$I"
assert_exit 4 phg rollback "$I"
assert_file_contains "$T/err" "rollback of the directory refused: plan \"oneway\" ($I/001-oneway.yaml) cannot be rolled back (exit 4); no plan was touched"
assert_eq "twoway" "$(psql_q "SELECT to_regclass('twoway')")" "the later plan was not rolled back"
assert_eq "completed" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'twoway' ORDER BY id DESC LIMIT 1")" \
	"and its run is still completed"
assert_exit 0 phg rollback "$I" --to oneway
assert_eq "" "$(psql_q "SELECT to_regclass('twoway')")" "--to oneway reverts only the later plan"

# ---- rollback of the whole directory
assert_exit 0 phg rollback "$D"
assert_eq "" "$(psql_q "SELECT to_regclass('profiles')")" "rollback DIR reverts every plan"

app_stop
pass
