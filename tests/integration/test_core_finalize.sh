#!/usr/bin/env bash
# test_core_finalize.sh - settings.finalize: manual (issue 16: the Loom
# directory round-trips): a completed plan keeps what its drop_column hid
# until `phasegate finalize`; until then status says so and rollback
# restores the column with its data; finalize drops it for good (then a
# rollback past it is refused, exit 4); finalize of a plan that is not
# completed is exit 2 and changes nothing.  The application writes
# throughout and sees no failed statement.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_finalize
psql_q "CREATE TABLE jobs (id bigserial PRIMARY KEY, legacy text DEFAULT 'l', note text);
	INSERT INTO jobs (legacy, note) SELECT 'v' || g, 'n' FROM generate_series(1, 500) g" >/dev/null
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: finalize-later
settings: { lock_timeout: 200ms, finalize: manual }
phases:
  - name: contract
    steps:
      - drop_column: { table: jobs, column: legacy }
YAML
cols() { psql_q "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped"; }

app_start "INSERT INTO jobs (note) VALUES ('w')"

assert_exit 2 phg finalize "$T/plan.yaml"
assert_file_contains "$T/err" "plan \"finalize-later\" cannot be finalized: it has no run on this database"

assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "1 step(s) keep what they dropped until \`phasegate finalize\`"
[[ $(cols) =~ ^id,_phg_[0-9a-f]{8}_legacy,note$ ]] ||
	fail "the column is hidden (under a name of its plan's: finalize: manual), not dropped: $(cols)"
assert_exit 0 phg status "$T/plan.yaml"
assert_file_contains "$T/out" "state:    completed"
assert_file_contains "$T/out" "finalize: 1 step(s) keep what they dropped"
assert_exit 0 phg status --json "$T/plan.yaml"
assert_eq "1" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["finalize_pending"])' "$T/out")" "finalize_pending"

# completed, yet rollback restores everything
assert_exit 0 phg rollback "$T/plan.yaml"
assert_eq "id,note,legacy" "$(cols | sed 's/,legacy,note/,note,legacy/')" "rollback restores the column"
assert_eq "v1|v500" "$(psql_q "SELECT min(legacy) FILTER (WHERE id = 1) || '|' || min(legacy) FILTER (WHERE id = 500) FROM jobs")" \
	"with its data"
assert_exit 2 phg finalize "$T/plan.yaml"
assert_file_contains "$T/err" "its last run was rolled back"

# apply again, finalize: dropped for good, no rollback past it
assert_exit 0 phg apply "$T/plan.yaml"
assert_exit 0 phg finalize "$T/plan.yaml"
assert_file_contains "$T/err" "plan finalized"
assert_eq "id,note" "$(cols)" "finalize drops the hidden column"
assert_exit 0 phg status --json "$T/plan.yaml"
assert_eq "0 completed" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["finalize_pending"], d["state"])' "$T/out")" \
	"nothing pending, still completed"
assert_exit 0 phg finalize "$T/plan.yaml" # nothing left: done at once
assert_exit 4 phg rollback "$T/plan.yaml"
assert_file_contains "$T/err" "made permanent"

app_stop
pass
