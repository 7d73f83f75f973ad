/*
 * store.h - run state kept in the target database (SPEC section 3).
 *
 * Schema `state_schema` (default "phasegate"), created on first use:
 *   runs     one row per run of a plan: checksum, env, action, state, who
 *   phases   one row per phase of a run: state, times, the phase checksum
 *   steps    one row per step: state, ops committed (apply / revert /
 *            finalize), the memo apply recorded, the backfill checkpoint
 *   events   the event log
 *   backups  verified pg_dump files (path, size, sha256)
 * This header names the states and gives the SQL; the engine runs it.
 */
#ifndef PHG_STORE_H
#define PHG_STORE_H

#include "buf.h"

typedef enum phg_run_state_e {
	PHG_RUN_NOT_STARTED = 0,
	PHG_RUN_RUNNING,
	PHG_RUN_INTERRUPTED,
	PHG_RUN_COMPLETED,
	PHG_RUN_FAILED,
	PHG_RUN_ROLLED_BACK,
	PHG_RUN__N
} phg_run_state_t;

typedef enum phg_phase_state_e {
	PHG_PHASE_PENDING = 0,
	PHG_PHASE_RUNNING,
	PHG_PHASE_APPLIED,
	PHG_PHASE_FAILED,
	PHG_PHASE_ROLLED_BACK,
	PHG_PHASE__N
} phg_phase_state_t;

typedef enum phg_step_state_e {
	PHG_STEP_PENDING = 0,
	PHG_STEP_RUNNING,   /* apply ops under way (progress = ops committed) */
	PHG_STEP_APPLIED,
	PHG_STEP_FAILED,    /* apply failed; its own partial ops undone if clean_on_fail */
	PHG_STEP_REVERTING, /* revert ops under way (revert_progress) */
	PHG_STEP_REVERTED,
	PHG_STEP_FINALIZED, /* applied, and finalize ops ran when the plan completed */
	PHG_STEP__N
} phg_step_state_t;

const char *phg_run_state_name(int s);
const char *phg_phase_state_name(int s);
const char *phg_step_state_name(int s);
/* -1 when unknown */
int phg_run_state_parse(const char *s);
int phg_phase_state_parse(const char *s);
int phg_step_state_parse(const char *s);

/* The DDL that creates the state schema (idempotent; run in one
 * transaction under a global advisory lock).  @schema_q is quoted. */
void phg_store_schema_sql(phg_buf_t *out, const char *schema_q);

/* Key of the session advisory lock a run holds on its plan:
 * pg_try_advisory_lock(PHG_LOCK_CLASS, hashtext(plan name)). */
#define PHG_LOCK_CLASS 0x70686761 /* "phga" */

/* A condition on pg_locks `l`: the plan's lock is held in the current
 * database.  @cls and @plan are SQL expressions (parameters such as "$1")
 * for PHG_LOCK_CLASS and the plan name. */
#define PHG_PLAN_LOCK_HELD(cls, plan)                                             \
	"l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.database = "  \
	"(SELECT oid FROM pg_database WHERE datname = current_database()) AND "       \
	"l.classid = " cls "::bigint::oid AND "                                       \
	"l.objid = mod(hashtext(" plan ")::bigint + 4294967296, 4294967296)::oid"

#endif /* PHG_STORE_H */
