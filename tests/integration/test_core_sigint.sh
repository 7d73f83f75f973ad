#!/usr/bin/env bash
# test_core_sigint.sh - SIGINT, then SIGTERM, in the middle of a long
# backfill (batches of 100): phasegate finishes the current batch, saves
# state and exits 130 promptly; the run is recorded `interrupted`; the
# checkpoint counts exactly the rows updated (a key prefix, whole batches);
# apply again resumes and completes with every row right and updated once.
# SIGINT while an `sql` statement runs: the statement finishes and is
# recorded, the next phase does not start, exit 130; apply does not run it
# again.
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"

new_db core_sigint

ROWS=60000
now_ms() { local t=${EPOCHREALTIME//[.,]/}; printf '%s\n' $((10#$t / 1000)); }

# interrupt_case SIG TABLE - the whole scenario for one signal
interrupt_case() {
	local sig=$1 tbl=$2 plan=$T/$2.yaml pid rc t0 elapsed
	local ck_rows ck_batches ck_last done_rows twice bad after gap wrong not_once

	psql_q "CREATE TABLE $tbl (id int PRIMARY KEY, v int NOT NULL, v2 int, n int NOT NULL DEFAULT 0);
		INSERT INTO $tbl (id, v) SELECT g, g % 777 FROM generate_series(1, $ROWS) g;
		ANALYZE $tbl;
		CREATE TRIGGER slow_batch AFTER UPDATE ON $tbl FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()" >/dev/null
	cat >"$plan" <<EOF
version: 1
name: sig-$tbl
phases:
  - name: backfill
    steps:
      - backfill: { table: $tbl, set: "v2 = v * 2 + 1, n = n + 1", batch_size: 100 }
EOF
	bg_run "apply_$tbl" "$PHASEGATE" apply "$plan"
	pid=$BG_PID
	wait_for -t 60 batches_gt "sig-$tbl" 5
	t0=$(now_ms)
	kill "-$sig" "$pid"
	rc=0
	wait "$pid" || rc=$?
	elapsed=$(($(now_ms) - t0))
	assert_eq 130 "$rc" "$sig: exit status"
	((elapsed < 5000)) || fail "$sig: phasegate took ${elapsed} ms to stop"
	assert_file_contains "$T/apply_$tbl.err" "$sig received"
	assert_file_contains "$T/apply_$tbl.err" "interrupted: state saved"

	# recorded interrupted (not only shown so: nobody holds the lock either)
	assert_eq "interrupted" "$(psql_q "SELECT state FROM phasegate.runs WHERE plan = 'sig-$tbl'")" \
		"$sig: the run is recorded interrupted"
	assert_eq "interrupted" "$(phg status "$plan" --json | python3 -I -S -c '
import json, sys
print(json.load(sys.stdin)["state"])')" "$sig: status"

	# the checkpoint is consistent with the table
	IFS='|' read -r ck_rows ck_batches ck_last <<<"$(psql_q "SELECT s.bf_rows, s.bf_batches, s.bf_last[1]
		FROM phasegate.steps s JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'sig-$tbl'")"
	IFS='|' read -r done_rows twice bad after gap <<<"$(psql_q "SELECT
		count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1),
		count(*) FILTER (WHERE n = 1 AND v2 IS DISTINCT FROM v * 2 + 1),
		count(*) FILTER (WHERE n <> 0 AND id > $ck_last),
		count(*) FILTER (WHERE n = 0 AND id <= $ck_last) FROM $tbl")"
	[[ $done_rows -lt $ROWS ]] || fail "$sig: the backfill finished before the signal"
	assert_eq "$done_rows" "$ck_rows" "$sig: checkpoint rows = rows updated"
	assert_eq $((ck_batches * 100)) "$ck_rows" "$sig: whole batches"
	assert_eq "$ck_rows" "$ck_last" "$sig: the checkpoint's key ends the updated prefix"
	assert_eq "0|0|0|0" "$twice|$bad|$after|$gap" "$sig: no row twice, none wrong, none after, no gap"

	# resume (at full speed)
	psql_q "DROP TRIGGER slow_batch ON $tbl" >/dev/null
	assert_exit 0 phg apply "$plan"
	assert_file_contains "$T/err" "resuming run"
	assert_file_contains "$T/err" "resuming backfill of $tbl after $ck_rows rows"
	IFS='|' read -r wrong not_once <<<"$(psql_q "SELECT count(*) FILTER (WHERE v2 IS DISTINCT FROM v * 2 + 1),
		count(*) FILTER (WHERE n <> 1) FROM $tbl")"
	assert_eq "0|0" "$wrong|$not_once" "$sig: after the resume every row is right and updated once"
	assert_eq "$ROWS|completed" "$(psql_q "SELECT s.bf_rows, r.state FROM phasegate.steps s
		JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = 'sig-$tbl'")" "$sig: recorded rows, completed"
}

batches_gt() { # PLAN N
	local b
	b=$(psql_q "SELECT coalesce(max(s.bf_batches), 0) FROM phasegate.steps s
		JOIN phasegate.runs r ON r.id = s.run_id WHERE r.plan = '$1'") || return 1
	[[ $b -gt $2 ]]
}

# every batch takes at least 10 ms, so the signal lands mid-backfill
psql_q "CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql
	AS \$\$ BEGIN PERFORM pg_sleep(0.01); RETURN NULL; END \$\$" >/dev/null

interrupt_case INT bf_int
interrupt_case TERM bf_term

# ---- SIGINT while a statement runs
psql_q "CREATE TABLE cnt (n int); INSERT INTO cnt VALUES (0)" >/dev/null
cat >"$T/stmt.yaml" <<'EOF'
version: 1
name: sig-stmt
phases:
  - name: one
    steps:
      # cnt has one row: the whole-table UPDATE is acknowledged
      - sql: { up: "SELECT pg_sleep(2); UPDATE cnt SET n = n + 1 /* phasegate:safety_assured */", down: "UPDATE cnt SET n = n - 1 /* phasegate:safety_assured */" }
  - name: two
    steps:
      - sql: { up: "UPDATE cnt SET n = n + 10 /* phasegate:safety_assured */", down: "UPDATE cnt SET n = n - 10 /* phasegate:safety_assured */" }
EOF
stmt_running() {
	[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND application_name = 'phasegate' AND query LIKE '%pg_sleep(2)%' AND state = 'active'") == 1 ]]
}
bg_run stmt "$PHASEGATE" apply "$T/stmt.yaml"
pid=$BG_PID
wait_for -t 20 stmt_running
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
assert_eq 130 "$rc" "SIGINT during a statement: exit status"
assert_eq "1|interrupted|applied" "$(psql_q "SELECT (SELECT n FROM cnt), r.state, s.state
	FROM phasegate.runs r JOIN phasegate.steps s ON s.run_id = r.id
	WHERE r.plan = 'sig-stmt' AND s.phase_idx = 0")" \
	"the running statement finished and was recorded; phase two did not start"
assert_exit 0 phg apply "$T/stmt.yaml"
assert_eq 11 "$(psql_q "SELECT n FROM cnt")" "apply continued with phase two, without re-running phase one"

pass
