#!/usr/bin/env bash
# test_fault_apply.sh - kill -9 at every fault point of an apply, then apply
# again: the plan completes, every row reads what the app committed, no
# phase is applied twice, the flag service saw one change (fault_lib.sh).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"
# shellcheck source=tests/integration/fault_lib.sh
source "$PHG_SOURCE_DIR/tests/integration/fault_lib.sh"

fault_setup
cd "$T"

# the points of a clean run (the app writing, as in every trial)
fault_db clean
demo_start "$T/clean.wlog"
fault_points "$T/points" phg apply "$FAULT_PLAN"
demo_stop
check_completed "clean run"
check_values "$T/clean.wlog" "clean run"
check_app_ok "clean run"
n=$(wc -l <"$T/points")
((n >= 40)) || fail "only $n fault points in a five-phase plan"

tried=0 skipped=0
while read -r point; do
	fault_db "a$tried"
	demo_start "$T/a$tried.wlog"
	apply_killed "$point"
	if [[ $KILLED == 0 ]]; then
		skipped=$((skipped + 1))
		printf 'not reached this time: %s\n' "$point"
	else
		assert_exit 0 phg apply "$FAULT_PLAN"
		grep -qE "plan completed|plan already completed" "$T/err" ||
			fail "apply after $point did not complete: $(tail -3 "$T/err")"
	fi
	sleep 0.2 # the app writes on after the plan
	demo_stop
	check_completed "killed at $point"
	check_values "$T/a$tried.wlog" "killed at $point"
	check_app_ok "killed at $point"
	tried=$((tried + 1))
done < <(fault_selected "$T/points")
printf 'tried %d of %d fault points (%d not reached)\n' "$tried" "$n" "$skipped"
((tried > skipped)) || fail "no point was reached"
pass
