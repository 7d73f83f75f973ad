/*
 * transition.c - the one table of legal transitions (see transition.h).
 *
 * Each row: a state, and the states it may go to, with why.
 */
#include "transition.h"

#include "store.h"

#define B(s) (1u << (s))

static const unsigned run_next[PHG_RUN__N] = {
	/* a run row is created `running` */
	[PHG_RUN_NOT_STARTED] = B(PHG_RUN_RUNNING),
	/* resumed after a crash (recorded running), --to, a signal, the end,
	 * a failure, or a rollback that found nothing to revert */
	[PHG_RUN_RUNNING] = B(PHG_RUN_RUNNING) | B(PHG_RUN_INTERRUPTED) | B(PHG_RUN_COMPLETED) |
	                    B(PHG_RUN_FAILED) | B(PHG_RUN_ROLLED_BACK),
	/* apply or rollback continues; rollback --to ends interrupted again */
	[PHG_RUN_INTERRUPTED] = B(PHG_RUN_RUNNING) | B(PHG_RUN_INTERRUPTED) | B(PHG_RUN_ROLLED_BACK),
	/* a rollback of a completed plan (nothing final in it) */
	[PHG_RUN_COMPLETED] = B(PHG_RUN_RUNNING),
	/* retried by apply or rollback; the automatic rollback records its
	 * outcome on the failed run, or is interrupted by a signal */
	[PHG_RUN_FAILED] = B(PHG_RUN_RUNNING) | B(PHG_RUN_FAILED) | B(PHG_RUN_ROLLED_BACK) |
	                   B(PHG_RUN_INTERRUPTED),
	/* over: the next apply creates a new run */
	[PHG_RUN_ROLLED_BACK] = 0,
};

static const unsigned phase_next[PHG_PHASE__N] = {
	[PHG_PHASE_PENDING] = B(PHG_PHASE_RUNNING),
	[PHG_PHASE_RUNNING] = B(PHG_PHASE_APPLIED) | B(PHG_PHASE_FAILED) | B(PHG_PHASE_ROLLED_BACK),
	[PHG_PHASE_APPLIED] = B(PHG_PHASE_ROLLED_BACK),
	/* retried by apply, or reverted */
	[PHG_PHASE_FAILED] = B(PHG_PHASE_RUNNING) | B(PHG_PHASE_ROLLED_BACK),
	/* applied again after a rollback --to */
	[PHG_PHASE_ROLLED_BACK] = B(PHG_PHASE_RUNNING),
};

static const unsigned step_next[PHG_STEP__N] = {
	[PHG_STEP_PENDING] = B(PHG_STEP_RUNNING),
	/* done, failed, or reverted while partial (its own clean-up after a
	 * failure, or a rollback after a crash) */
	[PHG_STEP_RUNNING] = B(PHG_STEP_APPLIED) | B(PHG_STEP_FAILED) | B(PHG_STEP_REVERTING),
	/* reverted, or made permanent when the plan completes */
	[PHG_STEP_APPLIED] = B(PHG_STEP_REVERTING) | B(PHG_STEP_FINALIZED),
	/* retried by apply, or reverted (what it left) */
	[PHG_STEP_FAILED] = B(PHG_STEP_RUNNING) | B(PHG_STEP_REVERTING),
	/* done; or its own clean-up after a failure finished: failed */
	[PHG_STEP_REVERTING] = B(PHG_STEP_REVERTED) | B(PHG_STEP_FAILED),
	/* applied again */
	[PHG_STEP_REVERTED] = B(PHG_STEP_RUNNING),
	/* permanent: rollback refuses it before touching anything */
	[PHG_STEP_FINALIZED] = 0,
};

int phg_transition_legal(phg_level_t lvl, int from, int to)
{
	const unsigned *next;
	int n;

	switch (lvl) {
	case PHG_LVL_RUN:
		next = run_next;
		n = PHG_RUN__N;
		break;
	case PHG_LVL_PHASE:
		next = phase_next;
		n = PHG_PHASE__N;
		break;
	case PHG_LVL_STEP:
		next = step_next;
		n = PHG_STEP__N;
		break;
	default:
		return 0;
	}
	if (from < 0 || from >= n || to < 0 || to >= n)
		return 0;
	return (next[from] & B(to)) != 0;
}

const char *phg_level_name(phg_level_t lvl)
{
	return lvl == PHG_LVL_RUN ? "run" : lvl == PHG_LVL_PHASE ? "phase" : "step";
}

const char *phg_level_state_name(phg_level_t lvl, int s)
{
	switch (lvl) {
	case PHG_LVL_RUN:
		return phg_run_state_name(s);
	case PHG_LVL_PHASE:
		return phg_phase_state_name(s);
	case PHG_LVL_STEP:
	default:
		return phg_step_state_name(s);
	}
}
