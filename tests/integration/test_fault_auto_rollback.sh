#!/usr/bin/env bash
# test_fault_auto_rollback.sh - kill -9 at every fault point of an apply
# whose gate fails and which rolls itself back (on_failure rollback-phase):
# the demo app's buggy release turns unhealthy once the dual-write flag is
# on, so the dual-write phase's verify fails and its steps (the flag, the
# sync trigger) are reverted automatically.  After a kill anywhere in that
# (also half way through the automatic rollback), `rollback` finishes the
# job: the table is as before the plan, the flag is off, every row reads
# what the app committed (fault_lib.sh).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"
# shellcheck source=tests/integration/fault_lib.sh
source "$PHG_SOURCE_DIR/tests/integration/fault_lib.sh"

fault_setup
cd "$T"
DEMO_ARGS=(--buggy)

# the clean run: exit 3, the automatic rollback completed
fault_db clean
demo_start "$T/clean.wlog"
rm -f "$T/points.raw"
rc=0
PHG_FAULT_LOG=$T/points.raw phg apply "$FAULT_PLAN" >"$T/clean.out" 2>"$T/clean.err" || rc=$?
assert_eq 3 "$rc" "the buggy release fails the gate and is rolled back"
assert_file_contains "$T/clean.err" "automatic rollback complete"
awk '{ n[$0]++; print $0 ":" n[$0] }' "$T/points.raw" >"$T/points"
demo_stop
check_values "$T/clean.wlog" "clean automatic rollback"
assert_contains "$DEMO_FLAG" '"enabled":false' "the flag is back off"
grep -q '^op:revert:dual-write:' "$T/points" || fail "no point inside the automatic rollback"
n=$(wc -l <"$T/points")

tried=0 skipped=0
while read -r point; do
	fault_db "d$tried"
	demo_start "$T/d$tried.wlog"
	rc=0
	PHG_FAULT=$point phg apply "$FAULT_PLAN" >"$T/kill.out" 2>"$T/kill.err" || rc=$?
	if [[ $rc == 137 ]]; then
		phg_dead_gone
		assert_exit 0 phg rollback "$FAULT_PLAN"
	elif [[ $rc == 3 && $point == *:batch:* ]]; then
		skipped=$((skipped + 1))
	else
		fail "apply with PHG_FAULT=$point exited $rc: $(tail -5 "$T/kill.err")"
	fi
	sleep 0.2
	demo_stop
	check_as_before "killed at $point, then rollback"
	check_values "$T/d$tried.wlog" "killed at $point, then rollback"
	tried=$((tried + 1))
done < <(fault_selected "$T/points")
printf 'tried %d of %d fault points (%d not reached)\n' "$tried" "$n" "$skipped"
((tried > skipped)) || fail "no point was reached"
pass
