#!/usr/bin/env bash
# test_core_resume_kill.sh - kill -9 in the middle of a backfill of 200k rows:
# the run stays recorded `running` and status shows it `interrupted` (nobody
# holds its lock); the checkpoint counts exactly the rows that were updated
# (no batch half-applied: every row up to the checkpoint's key is done, none
# after it); apply again resumes from the checkpoint, says so, and ends with
# every row right and updated exactly once (a counter column proves no batch
# ran twice) and the recorded row count equal to the table's.  Status is
# per database: a run of the same plan holding its lock on another database
# of the cluster does not make the killed run look alive.  Then kill -9 while
# CREATE INDEX CONCURRENTLY waits: the INVALID index it leaves is dropped and
# built again by the resumed apply.  And kill -9 during a rollback (a
# backfill's `down` in batches): apply refuses to run on a half-reverted
# plan, rollback resumes from its checkpoint, every row reverted once.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_resume_kill_other
OTHER_DB=$TEST_DB
OTHER_URL=$DATABASE_URL
new_db core_resume_kill

ROWS=200000
psql_q "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, v2 int, n int NOT NULL DEFAULT 0);
	INSERT INTO big (id, v) SELECT g, g % 1000 FROM generate_series(1, $ROWS) g;
	ANALYZE big;
	-- every batch (one UPDATE statement) takes at least 15 ms: the kill
	-- lands in the middle of the backfill, not after it
	CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql
	  AS \$\$ BEGIN PERFORM pg_sleep(0.015); RETURN NULL; END \$\$;
	CREATE TRIGGER slow_batch AFTER UPDATE ON big FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()" >/dev/null

cat >"$T/plan.yaml" <<'EOF'
version: 1
name: resume-kill
phases:
  - name: backfill
    steps:
      - backfill: { table: big, set: "v2 = v * 2 + 1, n = n + 1", batch_size: 1000 }
EOF

# batches_gt N - the checkpoint shows more than N batches done
batches_gt() {
	local b
	b=$(psql_q "SELECT coalesce(max(bf_batches), 0) FROM phasegate.steps") || return 1
	[[ $b -gt $1 ]]
}
# no_phasegate_sessions - the killed process's backends are gone (the work
# connection finishes its statement first)
no_phasegate_sessions() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND application_name = 'phasegate'") -eq 0 ]]
}

bg_run apply "$PHASEGATE" apply "$T/plan.yaml"   # not the phg function: $! must be phasegate itself
APPLY_PID=$BG_PID
wait_for -t 60 batches_gt 3
kill -KILL "$APPLY_PID"
wait "$APPLY_PID" 2>/dev/null || true
wait_for -t 20 no_phasegate_sessions

# the run is recorded running; status shows it interrupted
assert_eq "running" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'resume-kill'")" \
	"the killed run is recorded running"
status=$(phg status "$T/plan.yaml" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(s["state"], s["phases"][0]["state"])')
# (its phase, recorded running, is shown interrupted too: never running
# under an interrupted run)
assert_eq "interrupted interrupted" "$status" "status of a killed run (nobody holds its lock)"

# the same plan running on another database of the cluster holds a lock of
# the same name there: it says nothing about this database (checked at the
# end, after the resume)
psql -X -q -d "$OTHER_DB" -c "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, v2 int, n int NOT NULL DEFAULT 0);
	INSERT INTO big (id, v) VALUES (1, 1);
	CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql
	  AS \$\$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END \$\$;
	CREATE TRIGGER slow_batch AFTER UPDATE ON big FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()"
bg_run other env DATABASE_URL="$OTHER_URL" "$PHASEGATE" apply "$T/plan.yaml"
OTHER_PID=$BG_PID
other_running() {
	[[ $(psql -X -A -t -d "$OTHER_DB" -c "SELECT count(*) FROM phasegate.steps WHERE state = 'running'" 2>/dev/null) == 1 ]]
}
wait_for -t 20 other_running
status_while_other=$(phg status "$T/plan.yaml" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(s["state"], s["phases"][0]["state"])')
rc=0
wait "$OTHER_PID" || rc=$?
assert_eq 0 "$rc" "the run on the other database completed"

# the checkpoint equals what was done: whole batches, a prefix of the key
IFS='|' read -r ck_rows ck_batches ck_last <<<"$(psql_q "SELECT bf_rows, bf_batches, bf_last[1]
	FROM phasegate.steps WHERE kind = 'backfill'")"
IFS='|' read -r done_rows twice bad_value done_after gap_before <<<"$(psql_q "SELECT
	count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1),
	count(*) FILTER (WHERE n = 1 AND v2 IS DISTINCT FROM v * 2 + 1),
	count(*) FILTER (WHERE n <> 0 AND id > $ck_last),
	count(*) FILTER (WHERE n = 0 AND id <= $ck_last) FROM big")"
[[ $done_rows -gt 3000 ]] || fail "fewer rows than 3 batches done before the kill: $done_rows"
[[ $done_rows -lt $ROWS ]] || fail "the backfill finished before the kill; the test proves nothing"
assert_eq "$done_rows" "$ck_rows" "checkpoint rows = rows actually updated"
assert_eq $((ck_batches * 1000)) "$ck_rows" "the checkpoint counts whole batches of 1000"
assert_eq "$ck_rows" "$ck_last" "the checkpoint's last key ends the updated prefix"
assert_eq 0 "$twice" "no row updated twice"
assert_eq 0 "$bad_value" "updated rows are right"
assert_eq 0 "$done_after" "no row after the checkpoint is updated (no half batch)"
assert_eq 0 "$gap_before" "every row up to the checkpoint is updated"

# apply again (at full speed): resumes from the checkpoint and completes
psql_q "DROP TRIGGER slow_batch ON big" >/dev/null
assert_exit 0 phg apply "$T/plan.yaml"
assert_file_contains "$T/err" "resuming run"
assert_file_contains "$T/err" "resuming backfill of big after $ck_rows rows"
assert_file_contains "$T/err" "backfill of big done: $ROWS rows"
IFS='|' read -r wrong not_once <<<"$(psql_q "SELECT count(*) FILTER (WHERE v2 IS DISTINCT FROM v * 2 + 1),
	count(*) FILTER (WHERE n <> 1) FROM big")"
assert_eq 0 "$wrong" "every row is right after the resume"
assert_eq 0 "$not_once" "every row was updated exactly once"
assert_eq "$ROWS|completed|1" "$(psql_q "SELECT s.bf_rows, r.state, (SELECT count(*) FROM phasegate.runs)
	FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id")" \
	"recorded rows = table rows; the same run completed"
status=$(phg status "$T/plan.yaml" --json | python3 -I -S -c '
import json, sys
s = json.load(sys.stdin)
print(s["state"], s["phases"][0]["state"], s["phases"][0]["steps"][0]["rows"])')
assert_eq "completed applied $ROWS" "$status" "status after the resumed run"

# ---- kill -9 while CREATE INDEX CONCURRENTLY waits for an old snapshot
cat >"$T/index.yaml" <<'EOF'
version: 1
name: resume-kill-index
settings: { lock_timeout: 60s }
phases:
  - name: index
    steps:
      - create_index: { table: big, columns: [v2], name: big_v2_idx }
EOF
psql_q "CREATE TABLE snap_src (id int)" >/dev/null
bg_run oldsnap env PGAPPNAME=core_oldsnap psql -X -q -d "$TEST_DB" \
	-c "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM snap_src; SELECT pg_sleep(60); COMMIT"
oldsnap_open() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'core_oldsnap'
		AND backend_xmin IS NOT NULL AND state = 'active'") == 1 ]]
}
wait_for -t 10 oldsnap_open
bg_run index "$PHASEGATE" apply "$T/index.yaml"
INDEX_PID=$BG_PID
cic_waiting() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND application_name = 'phasegate' AND query LIKE 'CREATE INDEX CONCURRENTLY%'
		AND wait_event_type = 'Lock'") == 1 ]]
}
wait_for -t 20 cic_waiting
kill -KILL "$INDEX_PID"
wait "$INDEX_PID" 2>/dev/null || true
# the server side of the killed build is still waiting: end it (as a
# crashed client's session eventually is), then the old snapshot (in that
# order: the other way round the build could still finish)
psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE datname = current_database() AND application_name = 'phasegate'" >/dev/null
wait_for -t 20 no_phasegate_sessions
psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE application_name = 'core_oldsnap'" >/dev/null
assert_eq "f|0" "$(psql_q "SELECT i.indisvalid, s.op_started FROM pg_index i, phasegate.steps s
	JOIN phasegate.runs r ON r.id = s.run_id
	WHERE i.indexrelid = 'big_v2_idx'::regclass AND r.plan = 'resume-kill-index'")" \
	"the killed build left an INVALID index, its op recorded as started"
assert_exit 0 phg apply "$T/index.yaml"
assert_file_contains "$T/err" "INVALID leftover"
assert_eq "t|1" "$(psql_q "SELECT indisvalid, (SELECT count(*) FROM pg_class WHERE relname = 'big_v2_idx')
	FROM pg_index WHERE indexrelid = 'big_v2_idx'::regclass")" "the resumed apply rebuilt a valid index"

# ---- kill -9 during a rollback
psql_q "CREATE TABLE rb (id int PRIMARY KEY, v int NOT NULL, v2 int, n int NOT NULL DEFAULT 0);
	INSERT INTO rb (id, v) SELECT g, g FROM generate_series(1, 20000) g" >/dev/null
cat >"$T/rb.yaml" <<'EOF'
version: 1
name: resume-kill-rollback
phases:
  - name: expand
    steps:
      - add_column: { table: rb, column: c, type: int }
  - name: backfill
    steps:
      - backfill: { table: rb, set: "v2 = v * 2, n = n + 1", batch_size: 100, down: "v2 = NULL, n = n + 100" }
EOF
assert_exit 0 phg apply "$T/rb.yaml"
psql_q "CREATE TRIGGER slow_batch AFTER UPDATE ON rb FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()" >/dev/null
revert_batches_gt() {
	local b
	b=$(psql_q "SELECT coalesce(max(s.bf_batches), 0) FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id
		WHERE r.plan = 'resume-kill-rollback' AND s.state = 'reverting'") || return 1
	[[ $b -gt $1 ]]
}
bg_run rollback "$PHASEGATE" rollback "$T/rb.yaml"
RB_PID=$BG_PID
wait_for -t 60 revert_batches_gt 3
kill -KILL "$RB_PID"
wait "$RB_PID" 2>/dev/null || true
wait_for -t 20 no_phasegate_sessions
IFS='|' read -r ck_rows ck_last <<<"$(psql_q "SELECT s.bf_rows, s.bf_last[1] FROM phasegate.steps s
	JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'resume-kill-rollback' AND s.kind = 'backfill'")"
assert_eq "$ck_rows|$ck_rows|0|0" "$(psql_q "SELECT count(*) FILTER (WHERE n = 101), max(id) FILTER (WHERE n = 101),
	count(*) FILTER (WHERE n = 101 AND id > $ck_last), count(*) FILTER (WHERE n NOT IN (1, 101)) FROM rb")" \
	"the revert checkpoint matches the rows reverted (a key prefix, each once)"
((ck_rows < 20000)) || fail "the rollback finished before the kill"
assert_exit 1 phg apply "$T/rb.yaml"
assert_file_contains "$T/err" "rollback" "apply refuses to run on a half-reverted plan"
assert_eq "$ck_rows" "$(psql_q "SELECT count(*) FROM rb WHERE n = 101")" "the refused apply changed nothing"
psql_q "DROP TRIGGER slow_batch ON rb" >/dev/null
assert_exit 0 phg rollback "$T/rb.yaml"
assert_file_contains "$T/err" "resuming backfill of rb after $ck_rows rows"
assert_eq "20000|0|0" "$(psql_q "SELECT count(*) FILTER (WHERE n = 101), count(v2),
	(SELECT count(*) FROM pg_attribute WHERE attrelid = 'rb'::regclass AND attname = 'c') FROM rb")" \
	"the resumed rollback reverted every row exactly once, and the added column"

# (from above) a lock of the same plan on another database is not this run's
assert_eq "interrupted interrupted" "$status_while_other" \
	"status of the killed run while the same plan runs on another database"

pass
