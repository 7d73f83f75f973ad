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
 * Every statement that reads or writes the state schema is built here
 * (phg_store_*_sql append it to a buffer; the engine, the executor and the
 * reports run them).  A step's row is read back into a phg_step_row_t by one
 * function, from the row a transition or a progress write RETURNs or a
 * SELECT of it: memory holds what committed, never a second copy of the
 * rules.  Identifiers: @schema_q is the quoted state schema; run ids, phase
 * and step indexes are numbers phasegate made, printed into the SQL.
 */
#ifndef PHG_STORE_H
#define PHG_STORE_H

#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "buf.h"
#include "plan.h"

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

/* ---- a step's row ---- */

typedef struct phg_step_row_s {
	int state;            /* phg_step_state_t */
	int progress;         /* apply ops committed */
	int revert_progress;  /* revert ops committed */
	int final_progress;   /* finalize ops committed */
	int op_started;       /* a non-transactional op started, not recorded; -1: none */
	json_t *memo;         /* what apply recorded (owned; never NULL once read) */
	int bf_pass;          /* backfill: 1, or 2 for the final sweep */
	phg_strv_t bf_last;   /* backfill: the last key done (text), empty: none */
	int bf_high_set;      /* backfill: the high-water mark is recorded */
	phg_strv_t bf_high;   /* backfill: the last key it covers (empty: the table was) */
	long long bf_rows;
	long long bf_batches;
} phg_step_row_t;

/* The defaults of a step nobody has touched (state pending, no op started,
 * backfill pass 1): the only place they are written down in C; the schema's
 * column defaults say the same. */
void phg_step_row_init(phg_step_row_t *r);
void phg_step_row_clear(phg_step_row_t *r);

/* Append the step columns, each prefixed with @alias ("s." or ""), in the
 * order phg_store_step_read() reads them (PHG_STORE_STEP_NCOLS of them). */
void phg_store_step_cols(phg_buf_t *out, const char *alias);
#define PHG_STORE_STEP_NCOLS 11
/* Read the step columns from row @row, starting at column @col.  0, or
 * PHG_ESTATE when a value is not what the schema holds (@out keeps the rest). */
int phg_store_step_read(const PGresult *res, int row, int col, phg_step_row_t *out);

/* SELECT the step columns of one step. */
void phg_store_step_select_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                               int si);

/* ---- transitions (each RETURNs the row it wrote) ---- */

/* A run's new state; @note_lit is an SQL literal (or NULL for NULL).  A
 * failed run keeps the note as its error; running clears the error.  When
 * @action is rollback and the run's was apply, the apply's outcome is kept
 * (apply_outcome) and the rollback's start, by @who_lit @host_lit
 * (rollback_start): history shows them as two entries. */
void phg_store_run_state_sql(phg_buf_t *out, const char *schema_q, long long run, int state,
                             const char *action, const char *note_lit, const char *who_lit,
                             const char *host_lit);
/* A phase's new state; RETURNs state and whether a verified backup of this
 * attempt at the phase is recorded. */
void phg_store_phase_state_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                               int state);
/* A step's new state from @old, with what the transition resets (a fresh
 * attempt starts from nothing; entering reverting counts a started op as
 * done and restarts the revert's counters; a failed step whose own partial
 * work was undone starts over); RETURNs the step columns. */
void phg_store_step_state_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, int old, int state);

/* ---- the executor's records (inside or beside an op) ---- */

/* The counter of @dir: 0 apply, 1 revert, 2 finalize (phg_dir_t order). */
const char *phg_store_counter_column(int dir);
/* "<counter> = @value, op_started = NULL": an op of @dir committed; its
 * backfill cursor (pass, last key) is reset for the step's next op (rows
 * and batches keep counting). */
void phg_store_progress_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si,
                            int dir, size_t value);
/* Merge the jsonb value of @memo_sql into the step's memo. */
void phg_store_memo_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si,
                        const char *memo_sql);
/* op_started = @op (before a non-transactional op runs), or NULL (@op < 0:
 * it definitely did not happen). */
void phg_store_op_started_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, long op);
/* Record the high-water mark of a backfill: the last key the value of
 * @max_key_sql (an array of text, NULL for an empty table) names; the key
 * range is fixed from then on.  RETURNs it as a JSON array (empty: none),
 * and the value of @count_sql (NULL: not asked) -- the rows in the range,
 * for the progress of a table never analysed. */
void phg_store_high_water_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, const char *max_key_sql, const char *count_sql);
/* A backfill starts its final sweep from the start: pass 2, no last key. */
void phg_store_sweep_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si);

/* ---- runs ---- */

/* The newest run of plan $1: id, checksum, state, action, the plan as
 * applied (canonical form; NULL for runs of an older phasegate). */
void phg_store_last_run_sql(phg_buf_t *out, const char *schema_q);
/* The plans applied on the database ($2: its environment, NULL none)
 * whose newest run is not rolled back and requires plan $1: plan, id,
 * state. */
void phg_store_dependents_sql(phg_buf_t *out, const char *schema_q);
/* Every phase of @run with its steps: p.idx, p.state, s.idx, the step
 * columns, and whether a verified backup of the phase's attempt exists. */
void phg_store_load_run_sql(phg_buf_t *out, const char *schema_q, long long run);
#define PHG_STORE_LOAD_BACKED_UP_COL (3 + PHG_STORE_STEP_NCOLS)
/* A new run of @plan (state running) with its phases and steps pending, in
 * one transaction; the last statement returns its id.  Values are SQL
 * literals made by the caller. */
void phg_store_create_run_sql(phg_buf_t *out, const char *schema_q, const phg_plan_t *plan,
                              const char *plan_lit, const char *sum_lit, const char *env_lit,
                              const char *user_lit, const char *host_lit,
                              const char *target_lit, const char *from_lit,
                              const char *canon_lit, int pid,
                              const char *const *phase_name_lits,
                              const char *const *phase_sum_lits);
/* The newest run of plan $1, for the message of a locked plan: id, state,
 * started, who, host, pid; then the phasegate pid and host recorded for
 * the lock's holder, backend pid $2 (NULL: not recorded). */
void phg_store_lock_holder_run_sql(phg_buf_t *out, const char *schema_q);
/* Record this session as the holder of plan $1's lock: $2 our pid, $3 our
 * host (the lock_holders table). */
void phg_store_lock_holder_set_sql(phg_buf_t *out, const char *schema_q);

/* ---- events and backups ---- */

/* INSERT an event: $1 run, $2 phase, $3 step, $4 kind, $5 message, $6 data (jsonb text). */
void phg_store_event_sql(phg_buf_t *out, const char *schema_q);
/* INSERT a verified backup of phase @phase_lit of @run. */
void phg_store_backup_sql(phg_buf_t *out, const char *schema_q, long long run,
                          const char *phase_lit, const char *path_lit, int whole_database,
                          uint64_t size, const char *sum_lit, uint64_t duration_ms);

/* ---- what status and history read (report.c) ---- */

/* Is the state schema $1 there (a non-NULL regclass of its runs table)? */
#define PHG_STORE_EXISTS_SQL "SELECT to_regclass(quote_ident($1) || '.runs')"
/* The newest run of plan $1: id, checksum, state, env, action, started,
 * finished (UTC, ISO 8601), note, whether lock class $2 of the plan is held
 * now, error, paused since (NULL: not paused), paused by, held (why the
 * run waits by itself: replica lag; NULL: it does not), held since, the
 * data of its last `throttle` event (NULL: none), its target (the
 * database it ran on, phg_pg_describe). */
void phg_store_status_run_sql(phg_buf_t *out, const char *schema_q);
/* Phases and steps of @run: p.idx, p.state, started, finished, s.idx,
 * s.state, s.bf_rows, s.updated_at, s.kind. */
void phg_store_status_phases_sql(phg_buf_t *out, const char *schema_q, long long run);
/* The newest probe of each check of @run: check, data, at. */
void phg_store_status_checks_sql(phg_buf_t *out, const char *schema_q, long long run);
/* The events of run $2 of plan $1 (NULL: its newest run) after event id $3,
 * oldest first, at most 500: id, at (UTC, ms), phase, step, kind, message,
 * data (jsonb text), the run's checksum, env, id and state, and whether lock
 * class $4 of the plan is held now. */
void phg_store_events_sql(phg_buf_t *out, const char *schema_q);
/* Everything `report` shows of run $2 of plan $1 (NULL: its newest run), as
 * one JSON document (report_html.h): the run, its events, its backups. */
void phg_store_report_sql(phg_buf_t *out, const char *schema_q);
/* Every run (of plan $1 and env $2 when not NULL): id, plan, checksum, env,
 * action, state, started, finished, who, host, phases applied, phases,
 * backups, note, error, target, promoted from. */
void phg_store_history_sql(phg_buf_t *out, const char *schema_q);

/* ---- pause and resume (recorded in runs: paused_at, paused_by) ---- */

/* Whether run $@p is paused, as an SQL expression (for a batch's result). */
void phg_store_paused_expr(phg_buf_t *out, const char *schema_q, int p);
/* Pause ($2 true, by $3) or resume ($2 false) the newest unfinished run of
 * plan $1 (of env $4 when not NULL); RETURNs its id and state (no row: none). */
void phg_store_pause_sql(phg_buf_t *out, const char *schema_q);
/* Is @run paused, and by whom. */
void phg_store_paused_sql(phg_buf_t *out, const char *schema_q, long long run);

/* The streaming replicas' replay lag, and the hold it puts on run $1
 * (runs.held = $3 while the lag is over $2 ms, NULL once under; written
 * only when that changes): the worst lag in ms, replicas, replicas whose
 * lag this role may not see (pg_monitor is needed), the worst one's name,
 * and whether the hold changed. */
void phg_store_replica_lag_sql(phg_buf_t *out, const char *schema_q);

/* The checkpoint of a backfill batch, as the CTE `ck` of the batch's one
 * statement (phg_backfill_batch_sql): from the CTEs `batch` (the rows of the
 * batch), `upd` (those updated) and `last` (k: the last key, text[]), it
 * records the last key and counts rows and batches of the step given by
 * parameters $@p (run id), $@p+1 (phase index), $@p+2 (step index).  Nothing
 * is written for an empty batch. */
void phg_store_checkpoint_cte(phg_buf_t *out, const char *schema_q, int p);

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
