/*
 * test_transition.c - the table of legal transitions (transition.h): every
 * path the engine takes is in it, and the jumps it must never take are not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "store.h"
#include "transition.h"

typedef struct {
	phg_level_t lvl;
	int from, to;
} tr_t;

static void check(const tr_t *v, size_t n, int want)
{
	for (size_t i = 0; i < n; i++) {
		int got = phg_transition_legal(v[i].lvl, v[i].from, v[i].to);

		if (got != want)
			fail_msg("%s %s -> %s: legal %d, want %d", phg_level_name(v[i].lvl),
			         phg_level_state_name(v[i].lvl, v[i].from),
			         phg_level_state_name(v[i].lvl, v[i].to), got, want);
	}
}

static void test_paths_the_engine_takes(void **state)
{
	static const tr_t legal[] = {
	    /* apply: the plan runs through */
	    {PHG_LVL_PHASE, PHG_PHASE_PENDING, PHG_PHASE_RUNNING},
	    {PHG_LVL_STEP, PHG_STEP_PENDING, PHG_STEP_RUNNING},
	    {PHG_LVL_STEP, PHG_STEP_RUNNING, PHG_STEP_APPLIED},
	    {PHG_LVL_PHASE, PHG_PHASE_RUNNING, PHG_PHASE_APPLIED},
	    {PHG_LVL_STEP, PHG_STEP_APPLIED, PHG_STEP_FINALIZED},
	    {PHG_LVL_RUN, PHG_RUN_RUNNING, PHG_RUN_COMPLETED},
	    /* resume after a crash, a signal, --to */
	    {PHG_LVL_RUN, PHG_RUN_RUNNING, PHG_RUN_RUNNING},
	    {PHG_LVL_RUN, PHG_RUN_RUNNING, PHG_RUN_INTERRUPTED},
	    {PHG_LVL_RUN, PHG_RUN_INTERRUPTED, PHG_RUN_RUNNING},
	    /* a step fails, cleans up after itself, the phase is rolled back */
	    {PHG_LVL_STEP, PHG_STEP_RUNNING, PHG_STEP_REVERTING},
	    {PHG_LVL_STEP, PHG_STEP_REVERTING, PHG_STEP_FAILED},
	    {PHG_LVL_STEP, PHG_STEP_RUNNING, PHG_STEP_FAILED},
	    {PHG_LVL_PHASE, PHG_PHASE_RUNNING, PHG_PHASE_FAILED},
	    {PHG_LVL_RUN, PHG_RUN_RUNNING, PHG_RUN_FAILED},
	    {PHG_LVL_STEP, PHG_STEP_APPLIED, PHG_STEP_REVERTING},
	    {PHG_LVL_STEP, PHG_STEP_FAILED, PHG_STEP_REVERTING},
	    {PHG_LVL_STEP, PHG_STEP_REVERTING, PHG_STEP_REVERTED},
	    {PHG_LVL_PHASE, PHG_PHASE_FAILED, PHG_PHASE_ROLLED_BACK},
	    {PHG_LVL_PHASE, PHG_PHASE_APPLIED, PHG_PHASE_ROLLED_BACK},
	    {PHG_LVL_RUN, PHG_RUN_FAILED, PHG_RUN_FAILED},
	    {PHG_LVL_RUN, PHG_RUN_FAILED, PHG_RUN_ROLLED_BACK},
	    /* a signal during the automatic rollback */
	    {PHG_LVL_RUN, PHG_RUN_FAILED, PHG_RUN_INTERRUPTED},
	    /* retried, applied again after a rollback --to */
	    {PHG_LVL_STEP, PHG_STEP_FAILED, PHG_STEP_RUNNING},
	    {PHG_LVL_STEP, PHG_STEP_REVERTED, PHG_STEP_RUNNING},
	    {PHG_LVL_PHASE, PHG_PHASE_FAILED, PHG_PHASE_RUNNING},
	    {PHG_LVL_PHASE, PHG_PHASE_ROLLED_BACK, PHG_PHASE_RUNNING},
	    {PHG_LVL_RUN, PHG_RUN_FAILED, PHG_RUN_RUNNING},
	    /* rollback of a completed plan, of one that applied nothing */
	    {PHG_LVL_RUN, PHG_RUN_COMPLETED, PHG_RUN_RUNNING},
	    {PHG_LVL_RUN, PHG_RUN_RUNNING, PHG_RUN_ROLLED_BACK},
	    {PHG_LVL_RUN, PHG_RUN_INTERRUPTED, PHG_RUN_ROLLED_BACK},
	};

	(void)state;
	check(legal, sizeof(legal) / sizeof(legal[0]), 1);
}

static void test_jumps_that_are_refused(void **state)
{
	static const tr_t illegal[] = {
	    /* skipping running: a phase or step is never applied unseen */
	    {PHG_LVL_PHASE, PHG_PHASE_PENDING, PHG_PHASE_APPLIED},
	    {PHG_LVL_STEP, PHG_STEP_PENDING, PHG_STEP_APPLIED},
	    {PHG_LVL_STEP, PHG_STEP_REVERTED, PHG_STEP_APPLIED},
	    /* a finalized step is permanent, a rolled-back run is over */
	    {PHG_LVL_STEP, PHG_STEP_FINALIZED, PHG_STEP_REVERTING},
	    {PHG_LVL_STEP, PHG_STEP_FINALIZED, PHG_STEP_RUNNING},
	    {PHG_LVL_RUN, PHG_RUN_ROLLED_BACK, PHG_RUN_RUNNING},
	    {PHG_LVL_RUN, PHG_RUN_COMPLETED, PHG_RUN_COMPLETED},
	    {PHG_LVL_RUN, PHG_RUN_COMPLETED, PHG_RUN_ROLLED_BACK},
	    /* reverting is entered once; an applied phase is not re-run */
	    {PHG_LVL_STEP, PHG_STEP_REVERTING, PHG_STEP_REVERTING},
	    {PHG_LVL_STEP, PHG_STEP_REVERTING, PHG_STEP_APPLIED},
	    {PHG_LVL_PHASE, PHG_PHASE_APPLIED, PHG_PHASE_RUNNING},
	    {PHG_LVL_PHASE, PHG_PHASE_RUNNING, PHG_PHASE_RUNNING},
	    {PHG_LVL_PHASE, PHG_PHASE_PENDING, PHG_PHASE_ROLLED_BACK},
	    {PHG_LVL_RUN, PHG_RUN_NOT_STARTED, PHG_RUN_COMPLETED},
	    /* out of range */
	    {PHG_LVL_STEP, -1, PHG_STEP_RUNNING},
	    {PHG_LVL_STEP, PHG_STEP_RUNNING, PHG_STEP__N},
	    {PHG_LVL_RUN, PHG_RUN__N, PHG_RUN_RUNNING},
	};

	(void)state;
	check(illegal, sizeof(illegal) / sizeof(illegal[0]), 0);
	assert_int_equal(phg_transition_legal((phg_level_t)7, 0, 1), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_paths_the_engine_takes),
	    cmocka_unit_test(test_jumps_that_are_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
