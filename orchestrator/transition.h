/*
 * transition.h - the table of legal state transitions of runs, phases and
 * steps (states in store.h).
 *
 * The engine changes a state in exactly one function (engine.c
 * set_state()), which asks phg_transition_legal() first: a transition that
 * is not in the table is an internal error (the run stops with exit 1, the
 * state as it was), never a silent jump.  docs/fault-points.md names a fault
 * point after every legal transition.
 */
#ifndef PHG_TRANSITION_H
#define PHG_TRANSITION_H

typedef enum phg_level_e {
	PHG_LVL_RUN,
	PHG_LVL_PHASE,
	PHG_LVL_STEP,
} phg_level_t;

/* 1 if @lvl may go from state @from to state @to, else 0 (also for a state
 * out of range).  Only a run may "change" to the state it has (a new note,
 * or a run recorded running resumed after a crash). */
int phg_transition_legal(phg_level_t lvl, int from, int to);

/* "run", "phase", "step". */
const char *phg_level_name(phg_level_t lvl);

/* The state's name at @lvl ("?" when out of range). */
const char *phg_level_state_name(phg_level_t lvl, int s);

#endif /* PHG_TRANSITION_H */
