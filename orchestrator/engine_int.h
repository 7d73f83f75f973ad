/*
 * engine_int.h - what the parts of an engine share (engine.c, reconcile.c,
 * session.c, engine_gates.c, engine_state.c, commands.c); other modules use
 * engine.h.
 *
 * An engine_t is one run of one plan against one database, with its own
 * connections, executor, gates and signal handlers, on a loop it is given.
 * Its handles are closed by phg_eng_shutdown(); once the loop has run out,
 * phg_eng_release() frees what it holds.
 */
#ifndef PHG_ENGINE_INT_H
#define PHG_ENGINE_INT_H

#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <uv.h>

#include "backup.h"
#include "buf.h"
#include "engine.h"
#include "exec.h"
#include "fault.h"
#include "gate.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "pg.h"
#include "pgq.h"
#include "step.h"
#include "store.h"
#include "transition.h"

#define SQL_MAX (16u * 1024 * 1024)

typedef struct engine_s engine_t;
typedef void (*ek_t)(engine_t *e);

/* A step's row as it committed (store.h): reloaded after every transition
 * and after every run of its ops, never updated by hand. */
typedef phg_step_row_t step_rt_t;

typedef struct phase_rt_s {
	int state;
	int backed_up;  /* a verified backup of this phase is recorded */
	int verified;   /* its verify gate passed in this process */
	step_rt_t *steps;
} phase_rt_t;

typedef phg_engine_mode_t engine_mode_t; /* status/history: report.c */
#define MODE_APPLY PHG_ENGINE_APPLY
#define MODE_ROLLBACK PHG_ENGINE_ROLLBACK

typedef phg_level_t level_t;

/* What the reconciler works toward (engine.c). */
typedef enum {
	GOAL_APPLY,    /* every phase up to --to applied; then finalize (or stop, --to) */
	GOAL_FINALIZE, /* the plan's finalize ops; then the run completed */
	GOAL_FAIL,     /* a step or gate failure recorded (step, phase, run); then on_failure */
	GOAL_REVERT,   /* the phases after rb_lo reverted; then rb_end */
	GOAL_END,      /* the run's last transition is written; nothing more to decide */
} goal_t;

typedef enum {
	END_ROLLBACK, /* the `rollback` command: run rolled_back, or interrupted with --to */
	END_AUTO,     /* on_failure: run failed (rollback-phase) or rolled_back (-plan); exit 3 */
} revert_end_t;

/* What the engine is doing right now; changed only by phg_eng_act(), which
 * allows idle -> any, any -> idle and any -> done: one action at a time. */
typedef enum {
	ACT_STARTING,   /* connecting, locking, loading the run */
	ACT_IDLE,       /* deciding (the reconciler) */
	ACT_TRANSITION, /* a state transition being written */
	ACT_STEP,       /* a step's ops running, then its row read back */
	ACT_RELOAD,     /* a step's row being read back before its revert */
	ACT_BACKUP,     /* the backup gate */
	ACT_VERIFY,     /* the verify gate */
	ACT_WATCH_STOP, /* the watch being stopped */
	ACT_DONE,       /* shutting down */
	ACT__N
} act_t;

struct engine_s {
	uv_loop_t *loop; /* the caller's: several engines may share one */
	engine_mode_t mode;
	phg_plan_t *plan;
	const phg_run_opts_t *o;
	const phg_settings_t *st;
	phg_settings_t own_settings; /* no plan: the defaults (st points here) */
	phg_logctx_t log;
	char *conninfo;
	char target[512];  /* where the work connection is, as printed and recorded */
	const char *url_env;
	char *schema_q;

	phg_pg_t work, ctl;
	phg_pgq_t ctlq;
	int work_open, ctl_open;
	phg_exec_t x;
	int x_open;
	uv_signal_t sigint, sigterm;
	int signals_open;
	uv_timer_t retry_timer;
	int retry_open;
	int stop_requested;
	int conn_lost;       /* the run ended because the connection was lost */
	int signals;
	int connect_attempt;
	phg_pg_t *connecting;
	ek_t after_connect;

	int have_schema;
	long long run_id;
	int run_state;
	char run_action[16];
	char run_checksum[80];
	char *run_plan;   /* the plan as the run recorded it (canonical), or NULL */
	struct phg_notifier_s *notify; /* the plan's webhooks (notify.c), or NULL */
	uv_timer_t gate_timer; /* the verify gate's deadline (settings.gate_timeout) */
	int verify_stopping;   /* the verify gate has its verdict (or was ended): closing */
	int gate_timer_open;
	phase_rt_t *ph;
	size_t nph;
	int to_idx;   /* apply: last phase to apply; rollback: keep phases <= to_idx */
	int pi, si;   /* cursor */
	int rb_lo;    /* reverting: stop when pi <= rb_lo */
	goal_t goal;
	revert_end_t rb_end;
	act_t act;
	int fail_si;       /* GOAL_FAIL: the failed step, -1 for a gate */
	int fail_cleaned;  /* GOAL_FAIL: its own partial work was undone (this process) */
	int failed_status;   /* the step failure being handled */
	phg_err_t step_err;  /* its error */
	int failed_phase;
	int kept;            /* reverted steps that left data deliberately (revert_keeps) */
	char kept_what[256]; /* the first of them, for the final message: "the updates of
	                      * backfill step 1 of phase \"fill\" were" */
	char kept_why[128];  /* and why: " (no `down`)" */
	int exit_code;
	int shutting_down;

	/* gates */
	phg_http_t *http;
	int http_open;
	phg_gate_t watch;
	int watch_on;
	int watch_phase;
	int watch_failed;
	phg_err_t gate_err;
	phg_gate_t verify;
	int verify_on;
	ek_t after_gate_stop;
	phg_backup_job_t *backup;

	/* the transition being written by set_state() */
	struct {
		ek_t k;
		level_t lvl;
		int pi, si, new_state, old_state;
	} tr;
	int verify_status;
	char lock_holder[512]; /* the session holding the plan lock (exit 5) */
	int holder_backend;    /* its backend pid */
	int takeover_tries;    /* --takeover: lock attempts since the cancel */

	/* alembic: { requires, stamps }: the revision the version table must
	 * hold before the run goes on (engine_alembic.c), and what then */
	const char *alembic_want;
	const char *alembic_also; /* or this one (a resume), or NULL */
	ek_t alembic_k;
	size_t final_deferred;    /* irreversible finalize steps left for `finalize` */

	PGresult *res;
	ek_t k;
	ek_t after_exec;
	phg_ops_t ops;
	uint64_t started_ms;
};

/* ---- engine_alembic.c ---- */
/* Before the run touches anything: the plan's Alembic version table must
 * hold the revision @want says, else exit 2 naming both; then @k.  No
 * `alembic:`: @k at once. */
typedef enum {
	ALEMBIC_REQUIRES, /* a new run */
	ALEMBIC_STAMPS,   /* a completed run: rolled back, or finalized */
	ALEMBIC_EITHER,   /* the resume of an unfinished one (a finalize may have been cut short) */
} alembic_want_t;
void phg_eng_alembic_check(engine_t *e, alembic_want_t want, ek_t k);
/* A WITH clause for the run's transition from @old_state to @new_state:
 * completing writes `stamps`, a rollback leaving completed writes
 * `requires` back, in the statement -- the transaction -- that
 * records the transition.  Nothing without `alembic:`. */
void phg_eng_alembic_cte(engine_t *e, int old_state, int new_state, phg_buf_t *b);

/* ---- engine.c ---- */
/* Change what the engine is doing; an illegal change is an internal error
 * (logged; the run stops with exit 1, its state as recorded). */
void phg_eng_act(engine_t *e, act_t a);
uint64_t phg_eng_now_ms(void);
/* The log context (and the events' phase and step) of phase @pi, step @si
 * (-1: none). */
void phg_eng_ctx(engine_t *e, int pi, int si);
/* Queue an event on the control connection (never waits for it). */
void phg_eng_event(engine_t *e, const char *kind, const char *msg, const char *data);
/* The same with the data as a JSON object (taken; may be NULL). */
void phg_eng_event_json(engine_t *e, const char *kind, const char *msg, json_t *data);
/* An error as event data: {error, sqlstate, detail, hint}. */
json_t *phg_eng_err_json(const phg_err_t *err);
void phg_eng_report(engine_t *e, phg_log_level_t lvl, const phg_err_t *err);
/* The one transition function: check, persist, reload, fault point, @k. */
void phg_eng_set_state(engine_t *e, level_t lvl, int pi, int si, int new_state,
                       const char *note, ek_t k);
void phg_eng_ops_clear(engine_t *e);
/* The step executor's glue: build the ops of step @si of phase @pi for
 * @dir from its recorded row into e->ops; run them, read the step's row
 * back, then call @k (e->failed_status, e->step_err say how it went). */
int phg_eng_build_ops(engine_t *e, int pi, int si, phg_dir_t dir, phg_err_t *err);
void phg_eng_run_ops(engine_t *e, int pi, int si, phg_dir_t dir, ek_t k);
void phg_eng_exit(engine_t *e, int code);
void phg_eng_exit_ok(engine_t *e);
/* Record the run interrupted, exit 130. */
void phg_eng_interrupt(engine_t *e);
void phg_eng_run_created(engine_t *e);
void phg_eng_drift(engine_t *e, const char *what);
/* The state schema is there and the plan is locked: load the run. */
void phg_eng_ready(engine_t *e);
int phg_eng_to_phase(phg_plan_t *plan, const char *name, int *out);

/* ---- reconcile.c ---- */
/* Decide and start the next action. */
void phg_eng_reconcile(engine_t *e);
/* A step (@si >= 0) or a gate (@si < 0) of phase @pi failed with e->step_err:
 * record it and let on_failure decide. */
void phg_eng_fail(engine_t *e, int pi, int si);
/* Can every step of phases (@lo, @hi] be reverted?  0, or the reason. */
int phg_eng_precheck_revert(engine_t *e, int hi, int lo, phg_err_t *err);
/* Made permanent (its irreversible finalize op committed). */
int phg_eng_step_is_final(engine_t *e, int pi, int si);
/* Left something a revert must undo. */
int phg_eng_step_needs_revert(const step_rt_t *s);

/* ---- session.c ---- */
void phg_eng_fatal(engine_t *e, int code, const phg_err_t *err);
void phg_eng_query(engine_t *e, const char *sql, int np, const char *const *params, ek_t k);
void phg_eng_queryb(engine_t *e, phg_buf_t *b, ek_t k);
char *phg_eng_lit(engine_t *e, const char *s);
void phg_eng_shutdown(engine_t *e, int code);
int phg_eng_should_stop(void *arg);
void phg_eng_connect(engine_t *e, phg_pg_t *pg, ek_t k);
void phg_eng_ctl_connected(engine_t *e);
int phg_eng_init(engine_t *e, uv_loop_t *loop, engine_mode_t mode, phg_plan_t *plan,
                 const phg_run_opts_t *o);
/* After the loop ran out (every handle of @e closed): free what @e holds,
 * return its exit code. */
int phg_eng_release(engine_t *e);

/* ---- engine_gates.c ---- */
void phg_eng_watch_stop(engine_t *e, ek_t k);
int phg_eng_watch_start(engine_t *e, int pi);
void phg_eng_verify_start(engine_t *e, int pi);
/* SIGINT/SIGTERM while a verify gate probes: it stops at once, and the run
 * is saved interrupted (exit 130); no-op when no gate runs. */
void phg_eng_verify_interrupt(engine_t *e);
void phg_eng_backup_start(engine_t *e, int pi);
void phg_eng_gate_failed(engine_t *e);

/* ---- engine_state.c ---- */
void phg_eng_rt_free(engine_t *e);
void phg_eng_rt_alloc(engine_t *e);
int phg_eng_load_rows(engine_t *e, PGresult *res);
void phg_eng_load_state_sql(engine_t *e, phg_buf_t *b);
void phg_eng_create_run(engine_t *e);
int phg_eng_last_run_read(engine_t *e);
void phg_eng_last_run_sql(engine_t *e, phg_buf_t *b);

#endif /* PHG_ENGINE_INT_H */
