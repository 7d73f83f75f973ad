#!/usr/bin/env bash
# test_fault_rollback.sh - kill -9 at every fault point of an apply, then
# roll back: the table ends as before the plan, the flag is off, and every
# row reads what the app committed (also what it wrote through the swapped
# column of the contract phase).  Once the plan completed, the hidden
# column is gone for good and rollback refuses (exit 4) without touching
# anything (fault_lib.sh).
# shellcheck source=/dev/null
source "$PHG_TEST_LIB"
# shellcheck source=tests/integration/fault_lib.sh
source "$PHG_SOURCE_DIR/tests/integration/fault_lib.sh"

fault_setup
cd "$T"

fault_db clean
demo_start "$T/clean.wlog"
fault_points "$T/points" phg apply "$FAULT_PLAN"
demo_stop
n=$(wc -l <"$T/points")

tried=0 skipped=0 refused=0 final=0
while read -r point; do
	fault_db "b$tried"
	demo_start "$T/b$tried.wlog"
	apply_killed "$point"
	if [[ $KILLED == 0 ]]; then
		skipped=$((skipped + 1))
		printf 'not reached this time: %s\n' "$point"
	fi
	# is the hidden column already dropped for good (its finalize op
	# committed, whether or not the step's `finalized` state was written)?
	final=$(psql_q "SELECT count(*) > 0 FROM phasegate.steps WHERE kind = 'drop_column'
		AND (state = 'finalized' OR final_progress > 0)")
	if [[ $KILLED == 1 && $final == f ]]; then
		assert_exit 0 phg rollback "$FAULT_PLAN"
		sleep 0.2 # the app writes on after the rollback
		demo_stop
		check_as_before "rollback after a kill at $point"
		assert_eq "rolled_back" "$(psql_q "SELECT state FROM phasegate.runs")" "run state after $point"
	elif [[ $KILLED == 1 ]]; then
		before=$(catalog_of "$TEST_DB")
		assert_exit 4 phg rollback "$FAULT_PLAN"
		assert_file_contains "$T/err" "cannot revert" "rollback after $point refuses"
		assert_eq "$before" "$(catalog_of "$TEST_DB")" "a refused rollback changes nothing"
		refused=$((refused + 1))
		demo_stop
	else
		demo_stop
	fi
	check_values "$T/b$tried.wlog" "rollback after a kill at $point"
	check_app_ok "rollback after a kill at $point"
	tried=$((tried + 1))
done < <(fault_selected "$T/points")
printf 'tried %d of %d fault points (%d not reached, %d refused as irreversible)\n' \
	"$tried" "$n" "$skipped" "$refused"
((tried > skipped)) || fail "no point was reached"
pass
