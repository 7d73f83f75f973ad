#!/usr/bin/env bash
# test_fault_rollback_kill.sh - kill -9 at every fault point of a rollback
# itself, then roll back again: the table ends as before the plan, the flag
# is off, and every row reads what the app committed.  The rollback starts
# from the latest revertible state: every phase applied, the contract
# phase's verify passed, the app writing through the swapped column
# (fault_lib.sh).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"
# shellcheck source=tests/integration/fault_lib.sh
source "$PHG_SOURCE_DIR/tests/integration/fault_lib.sh"

fault_setup
cd "$T"

# the starting point, kept as a template database
fault_db late
LATE=$TEST_DB
demo_start "$T/late.wlog"
apply_killed "gate:contract:verify-passed:1"
assert_eq 1 "$KILLED" "the apply reached the end of the contract phase"
sleep 0.3 # the app writes through the swapped column
demo_stop

# the points of a clean rollback from there
fault_db clean "$LATE"
cp "$T/late.wlog" "$T/clean.wlog"
demo_start "$T/clean.wlog"
fault_points "$T/points" phg rollback "$FAULT_PLAN"
demo_stop
check_as_before "clean rollback"
check_values "$T/clean.wlog" "clean rollback"
n=$(wc -l <"$T/points")
((n >= 20)) || fail "only $n fault points in the rollback of five phases"

tried=0 skipped=0
while read -r point; do
	fault_db "c$tried" "$LATE"
	cp "$T/late.wlog" "$T/c$tried.wlog"
	demo_start "$T/c$tried.wlog"
	rc=0
	PHG_FAULT=$point phg rollback "$FAULT_PLAN" >"$T/kill.out" 2>"$T/kill.err" || rc=$?
	if [[ $rc == 137 ]]; then
		phg_dead_gone
		assert_exit 0 phg rollback "$FAULT_PLAN"
	elif [[ $rc == 0 && $point == *:batch:* ]]; then
		skipped=$((skipped + 1))
		printf 'not reached this time: %s\n' "$point"
	else
		fail "rollback with PHG_FAULT=$point exited $rc: $(tail -5 "$T/kill.err")"
	fi
	sleep 0.2
	demo_stop
	check_as_before "rollback killed at $point, run again"
	assert_eq "rolled_back" "$(psql_q "SELECT state FROM phasegate.runs")" "run state after $point"
	check_values "$T/c$tried.wlog" "rollback killed at $point, run again"
	check_app_ok "rollback killed at $point, run again"
	tried=$((tried + 1))
done < <(fault_selected "$T/points")
printf 'tried %d of %d fault points (%d not reached)\n' "$tried" "$n" "$skipped"
((tried > skipped)) || fail "no point was reached"
pass
