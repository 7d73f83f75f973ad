#!/usr/bin/env bash
# test_core_status_json.sh - `status --json` has one shape (docs/status-json.md)
# before the first run and after it: the same keys at every level, env null
# without --env, every step with index, kind, name, state, rows and
# updated_at.  After a kill -9 the run is `interrupted` and so is the phase
# that was running: never `running` under an interrupted run.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db status_json
psql_q "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, v2 int);
	INSERT INTO t SELECT g, g FROM generate_series(1, 3000) g" >/dev/null
slow_updates t 0.05
cat >"$T/plan.yaml" <<'YAML'
version: 1
name: status-shape
settings: { throttle: off }
phases:
  - name: expand
    steps:
      - add_column: { table: t, column: c, type: int }
  - name: fill
    steps:
      - backfill: { table: t, set: "v2 = v", batch_size: 50 }
YAML
shape() { # FILE -> the key paths, one per line
	python3 -I -S -c '
import json, sys
def walk(o, p):
    if isinstance(o, dict):
        for k, v in o.items():
            if p == "" and k == "throttle":
                continue
            walk(v, p + "." + k)
    elif isinstance(o, list):
        for v in o:
            walk(v, p + "[]")
    print(p)
walk(json.load(open(sys.argv[1])), "")' "$1" | sort -u
}
assert_exit 0 phg status "$T/plan.yaml" --json
cp "$T/out" "$T/before.json"
assert_eq "None" "$(python3 -I -S -c 'import json,sys; print(json.load(open(sys.argv[1]))["env"])' "$T/before.json")" "env is null"
python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
st = s["phases"][0]["steps"][0]
assert (st["index"], st["kind"], st["state"], st["rows"], st["updated_at"]) == (1, "add_column", "pending", None, None), st
assert st["name"] == "add column \"c\" to \"t\"", st["name"]
assert s["checks"] == {} and s["run_id"] is None and s["locked"] is False, s' "$T/before.json" ||
	fail "status --json before the first run"

# kill -9 mid-backfill: the run and its running phase are interrupted
bg_run apply "$PHASEGATE" apply "$T/plan.yaml"
pid=$BG_PID
wait_for -t 20 bf_batches_ge 2
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
# the server notices the closed socket, and with it the plan's lock
# (pg_locks is the cluster's: only this database's, other tests run beside)
unlocked() {
	[[ $(psql_q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0 ]]
}
wait_for -t 10 unlocked
assert_exit 0 phg status "$T/plan.yaml" --json
cp "$T/out" "$T/killed.json"
assert_eq "interrupted interrupted applied" "$(python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["state"], s["phases"][1]["state"], s["phases"][0]["state"])' "$T/killed.json")" \
	"no phase is running under an interrupted run"
assert_exit 0 phg status "$T/plan.yaml"
assert_file_not_contains "$T/out" "running"

assert_exit 0 phg apply "$T/plan.yaml"
assert_exit 0 phg status "$T/plan.yaml" --json
cp "$T/out" "$T/after.json"
assert_eq "$(shape "$T/before.json")" "$(shape "$T/after.json")" "the same shape before and after"
assert_eq "$(shape "$T/before.json")" "$(shape "$T/killed.json")" "the same shape when interrupted"
python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
st = s["phases"][1]["steps"][0]
assert st["kind"] == "backfill" and st["rows"] == 3000 and st["updated_at"].endswith("Z"), st
assert s["phases"][0]["steps"][0]["rows"] is None, s
assert s["state"] == "completed" and s["target"].startswith("database ") and s["env"] is None, s' "$T/after.json" ||
	fail "status --json after the run"

# a state schema an older phasegate made (no apply has upgraded it yet):
# status and history read it without changing it
psql_q "ALTER TABLE phasegate.runs DROP COLUMN target, DROP COLUMN promoted_from,
	DROP COLUMN held, DROP COLUMN held_at" >/dev/null
assert_exit 0 phg status "$T/plan.yaml" --json
assert_eq "completed None" "$(python3 -I -S -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["state"], s["target"])' "$T/out")" "status on an older state schema"
assert_exit 0 phg history "$T/plan.yaml"
assert_file_contains "$T/out" "completed"
assert_eq "0" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'phasegate.runs'::regclass
	AND attname = 'target'")" "status and history did not change the schema"
# the next apply upgrades it
assert_exit 0 phg apply "$T/plan.yaml"
assert_eq "1" "$(psql_q "SELECT count(*) FROM pg_attribute WHERE attrelid = 'phasegate.runs'::regclass
	AND attname = 'target'")" "apply upgraded the state schema"
pass
