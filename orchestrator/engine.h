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

#include <uv.h>

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
	int yes;              /* --yes: a protected environment without asking */
	int takeover;         /* --takeover: end the server session of a phasegate that
	                       * is gone (kill -9) and still holds the plan's lock */
	const char *promoted_from; /* promote: the source run, recorded with the new one */
	long long run;        /* events --run N (0: the newest run) */
	int follow;           /* events --follow */
	const char *output;   /* report -o FILE */
	const phg_plan_t *file_plan; /* status: the plan file, when the plan shown is the
	                              * recorded one (drift, or the file is gone) */
	const phg_strv_t *plans; /* history of a directory: only the runs of these plans */
	int finalize;         /* `phasegate finalize`: the completed run's deferred
	                       * finalize ops (settings.finalize: manual) */
	const phg_strv_t *reverting; /* rollback DIR: the plans this command reverts
	                              * (their requiring another is no obstacle) */
	int check_only;       /* rollback: check that it can be done (the lock, the
	                       * Alembic revision, every step revertible), change
	                       * nothing, exit 0 or the code the rollback would have */
} phg_run_opts_t;

/*
 * An engine: one run (apply or rollback) of one plan against the database
 * its plan (and --env) names, with its own connections, executor, gates and
 * signal handlers, on the caller's loop.  Several engines may share a loop
 * (one process driving several databases):
 *
 *	e = phg_engine_new(loop, PHG_ENGINE_APPLY, plan, &opts, &code);
 *	phg_engine_start(e);             returns at once; the run is on the loop
 *	uv_run(loop, UV_RUN_DEFAULT);    returns when every engine closed all
 *	code = phg_engine_free(e);       the exit code of SPEC section 1
 *
 * phg_engine_new() returns NULL with *@exit_code set (2: an unknown --to
 * phase, or an environment selected whose database variable is unset) and
 * touches nothing then.  @plan and @o must outlive the engine.
 * Nothing is called back: the engine is done when the loop has nothing of
 * it left.
 */
typedef struct engine_s phg_engine_t;
typedef enum phg_engine_mode_e { PHG_ENGINE_APPLY, PHG_ENGINE_ROLLBACK } phg_engine_mode_t;
phg_engine_t *phg_engine_new(uv_loop_t *loop, phg_engine_mode_t mode, phg_plan_t *plan,
                             const phg_run_opts_t *o, int *exit_code);
void phg_engine_start(phg_engine_t *e);
int phg_engine_free(phg_engine_t *e);
/* After the loop: 1 when the run ended (exit 1, state saved) because the
 * connection to the database was lost mid-run -- a server restart, say --
 * so that a new engine can reconnect and resume it. */
int phg_engine_conn_lost(const phg_engine_t *e);

int phg_cmd_apply(phg_plan_t *plan, const phg_run_opts_t *o);
int phg_cmd_rollback(phg_plan_t *plan, const phg_run_opts_t *o);
int phg_cmd_status(phg_plan_t *plan, const phg_run_opts_t *o);
/* status as a JSON object (the caller json_decref()s it); exit code. */
struct json_t;
int phg_status_json(phg_plan_t *plan, const phg_run_opts_t *o, struct json_t **out);
/* The newest run of the plan on its database: {run_id, checksum, state,
 * plan_json (the plan as applied, or null)}; *out NULL when it never ran. */
int phg_last_run_record(const phg_plan_t *plan, const phg_run_opts_t *o, struct json_t **out);
/* rollback and status: the plan as the last run recorded it, in *rec, when
 * the file differs from it or is gone (plan->stand_in); *rec NULL when the
 * file is that plan (or there is no run, or it has no recorded plan).  Says
 * which plan @what ("rollback") works from.  0, or an exit code. */
int phg_plan_as_recorded(const phg_plan_t *plan, const phg_run_opts_t *o, const char *what,
                         phg_plan_t **rec);
/* Apply to environment @to only if environment @from holds a completed run
 * of this plan's checksum (exit 6 otherwise). */
int phg_cmd_promote(phg_plan_t *plan, const char *from, const char *to, int yes,
                    const char *attestation);
/* Sign a status object (status --json) as an attestation when
 * PHASEGATE_ATTEST_KEY is set: an "hmac" member.  0 or -1. */
struct json_t;
int phg_attest_sign(struct json_t *st);
/* @plan may be NULL: then the database comes from o->db_env (DATABASE_URL). */
int phg_cmd_history(phg_plan_t *plan, const phg_run_opts_t *o);
/* `events`: the recorded events of a run, oldest first; --follow polls
 * until the run is no longer running. */
int phg_cmd_events(phg_plan_t *plan, const phg_run_opts_t *o);
/* `report -o FILE`: the run as one self-contained HTML page. */
int phg_cmd_report(phg_plan_t *plan, const phg_run_opts_t *o);
/* Pause (@pause 1) or resume the newest unfinished run of @plan: recorded in
 * the state schema; a running apply stops after its current backfill batch
 * and waits, keeping its lock, until resumed.  Exit 0, or 1 when there is no
 * such run. */
int phg_cmd_pause(phg_plan_t *plan, const phg_run_opts_t *o, int pause);
/* The plans applied on @plan's database (and environment) that require it
 * (`requires:`, as their newest run recorded it), not rolled back: a JSON
 * array of {plan, run_id, state} in *@out (NULL when none ever ran).  0, or
 * an exit code. */
int phg_dependents(const phg_plan_t *plan, const phg_run_opts_t *o, struct json_t **out);
/* A plan's `requires:` (plan names): each must be completed on the plan's
 * database.  0, or exit 2 after saying which is not (and its state). */
int phg_requires_check(const phg_plan_t *plan, const phg_run_opts_t *o);

#endif /* PHG_ENGINE_H */
