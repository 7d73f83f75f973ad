/*
 * engine.h - the commands that talk to the database: apply, rollback,
 * status, history.  Each runs its own libuv loop to completion and returns
 * the process exit code of SPEC section 1 (0, 1, 2, 3, 4, 5, 6, 130).
 *
 * One state machine for run -> phase -> step; each transition is written to
 * the state schema before the action it announces (engine.c set_state()).
 */
#ifndef PHG_ENGINE_H
#define PHG_ENGINE_H

#include "plan.h"

enum {
	PHG_EXIT_OK = 0,
	PHG_EXIT_RUNTIME = 1,
	PHG_EXIT_USAGE = 2,
	PHG_EXIT_ROLLED_BACK = 3,
	PHG_EXIT_ROLLBACK_FAILED = 4,
	PHG_EXIT_LOCKED = 5,
	PHG_EXIT_PROMOTE_REFUSED = 6,
	PHG_EXIT_INTERRUPTED = 130,
};

typedef struct phg_run_opts_s {
	const char *env;      /* --env, NULL = none (already selected in the plan) */
	const char *to_phase; /* --to */
	int dry_run;          /* apply --dry-run */
	int json;             /* status/history --json */
	const char *db_env;   /* history without a plan: variable holding the URL */
} phg_run_opts_t;

int phg_cmd_apply(phg_plan_t *plan, const phg_run_opts_t *o);
int phg_cmd_rollback(phg_plan_t *plan, const phg_run_opts_t *o);
int phg_cmd_status(phg_plan_t *plan, const phg_run_opts_t *o);
/* status as a JSON object (the caller json_decref()s it); exit code. */
struct json_t;
int phg_status_json(phg_plan_t *plan, const phg_run_opts_t *o, struct json_t **out);
/* Apply to environment @to only if environment @from holds a completed run
 * of this plan's checksum (exit 6 otherwise). */
int phg_cmd_promote(phg_plan_t *plan, const char *from, const char *to);
/* @plan may be NULL: then the database comes from o->db_env (DATABASE_URL). */
int phg_cmd_history(phg_plan_t *plan, const phg_run_opts_t *o);

#endif /* PHG_ENGINE_H */
