/*
 * engine.c - the engine core: what a run does next, from its recorded
 * state.
 *
 * It owns the run -> phase -> step state machine: phg_eng_set_state() is
 * the one function that changes a state; it checks the transition against
 * the table in transition.c, persists it, reaches the fault point named
 * after it (fault.h), and only then acts on it.  Apply (drive_apply),
 * revert (drive_revert: the rollback command and on_failure), finalize when
 * the plan completes, resume after a crash, and the step executor's glue
 * (build a step's ops, run them, mirror what committed) live here.
 *
 * The engine is a chain of continuations (ek_t): every query on `work`
 * names the function to call with its result.  Its other parts:
 * session.c (connections, the plan lock, signals, shutdown), engine_gates.c
 * (backup, watch, verify), engine_state.c (loading and creating runs),
 * commands.c (the CLI front-ends).  Shared declarations: engine_int.h.
 */
#include "engine_int.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void exec_event(phg_exec_t *x, const char *kind, const char *message, const char *data);
static int *state_ref(engine_t *e, level_t lvl, int pi, int si);
static void set_state_done(engine_t *e);
static int build_ops(engine_t *e, int pi, int si, phg_dir_t dir, phg_err_t *err);
static void exec_done(phg_exec_t *x, int status);
static void step_reloaded(engine_t *e);
static void run_ops(engine_t *e, int pi, int si, phg_dir_t dir, ek_t k);
static void exit_ok(engine_t *e);
static void exit_rolled_back(engine_t *e);
static void exit_rollback_failed(engine_t *e);
static void exit_interrupted(engine_t *e);
static const char *step_label(engine_t *e, int pi, int si, char *buf, size_t n);
static int precheck_revert(engine_t *e, int hi, int lo, phg_err_t *err);
static void revert_failed(engine_t *e, const phg_err_t *cause);
static void step_reverted(engine_t *e);
static void revert_memo_loaded(engine_t *e);
static void phase_rolled_back(engine_t *e);
static void on_failure_done(engine_t *e);
static void on_failure(engine_t *e);
static void run_marked_failed(engine_t *e);
static void step_marked_failed(engine_t *e);
static void step_cleaned(engine_t *e);
static void step_clean_start(engine_t *e);
static void step_failed_stopped(engine_t *e);
static void step_failed(engine_t *e);
static void step_ran(engine_t *e);
static void run_completed(engine_t *e);
static void finalize_advance(engine_t *e);
static void finalize_ran(engine_t *e);
static void finalize_next(engine_t *e);
static void paused(engine_t *e);
static int any_step_in(engine_t *e, int state);
static void apply_state_loaded(engine_t *e);
static void apply_have_run(engine_t *e);
static void rollback_done(engine_t *e);
static void rollback_go(engine_t *e);
static void rollback_state_loaded(engine_t *e);
static void rollback_have_run(engine_t *e);

uint64_t phg_eng_now_ms(void)
{
	return uv_hrtime() / 1000000u;
}

void phg_eng_ctx(engine_t *e, int pi, int si)
{
	e->log.plan = e->plan ? e->plan->name : NULL;
	e->log.phase = pi >= 0 && e->plan && (size_t)pi < e->plan->nphases ? e->plan->phases[pi].name
	                                                                    : NULL;
	e->log.step = si >= 0 ? si + 1 : 0;
	e->log.step_kind = (pi >= 0 && si >= 0 && e->plan)
	                       ? e->plan->phases[pi].steps[si].kind->name
	                       : NULL;
}

void phg_eng_event(engine_t *e, const char *kind, const char *msg, const char *data)
{
	char run[32], step[16];
	const char *p[6];

	if (!e->have_schema || e->run_id <= 0 || !e->ctl_open || e->ctl.state == PHG_PG_BROKEN)
		return;
	snprintf(run, sizeof(run), "%lld", e->run_id);
	snprintf(step, sizeof(step), "%ld", e->log.step);
	p[0] = run;
	p[1] = e->log.phase;
	p[2] = e->log.step > 0 ? step : NULL;
	p[3] = kind;
	p[4] = msg;
	p[5] = data;
	{
		phg_buf_t b;

		phg_buf_init(&b, 4096);
		phg_store_event_sql(&b, e->schema_q);
		phg_pgq_query(&e->ctlq, b.data, 6, p, NULL, NULL);
		phg_buf_free(&b);
	}
}

static void exec_event(phg_exec_t *x, const char *kind, const char *message, const char *data)
{
	engine_t *e = x->data;

	phg_eng_event(e, kind, message, data);
}

void phg_eng_report(engine_t *e, phg_log_level_t lvl, const phg_err_t *err)
{
	phg_log_err(lvl, &e->log, err);
}

static int *state_ref(engine_t *e, level_t lvl, int pi, int si)
{
	switch (lvl) {
	case PHG_LVL_RUN:
		return &e->run_state;
	case PHG_LVL_PHASE:
		return &e->ph[pi].state;
	case PHG_LVL_STEP:
	default:
		return &e->ph[pi].steps[si].state;
	}
}

static void set_state_done(engine_t *e)
{
	ek_t k = e->tr.k;
	level_t lvl = e->tr.lvl;
	int pi = e->tr.pi, si = e->tr.si;
	int *ref = state_ref(e, lvl, pi, si);
	phg_log_level_t ll = PHG_LOG_DEBUG; /* the callers log what a person reads */
	char msg[256];

	/* committed: a crash from here on must resume from the new state */
	if (lvl == PHG_LVL_RUN)
		phg_fault("run:%s:%s", e->run_action, phg_run_state_name(e->tr.new_state));
	else if (lvl == PHG_LVL_PHASE)
		phg_fault("phase:%s:%s", e->plan->phases[pi].name,
		          phg_phase_state_name(e->tr.new_state));
	else
		phg_fault("step:%s:%d:%s", e->plan->phases[pi].name, si + 1,
		          phg_step_state_name(e->tr.new_state));
	/* memory is what committed: the row the transition RETURNed */
	if (PQntuples(e->res) != 1) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the %s row of run %lld is missing", phg_level_name(lvl),
		            e->run_id);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	*ref = e->tr.new_state;
	if (lvl == PHG_LVL_STEP &&
	    phg_store_step_read(e->res, 0, 0, &e->ph[pi].steps[si]) != 0) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of step %d of phase \"%s\" is not "
		                              "valid",
		            si + 1, e->plan->phases[pi].name);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	if (lvl == PHG_LVL_PHASE) {
		e->ph[pi].backed_up = strcmp(PQgetvalue(e->res, 0, 1), "t") == 0;
		/* a new attempt at the phase takes its own verify (in this process) */
		if (e->tr.new_state == PHG_PHASE_RUNNING)
			e->ph[pi].verified = 0;
	}
	phg_eng_ctx(e, lvl == PHG_LVL_RUN ? -1 : pi, lvl == PHG_LVL_STEP ? si : -1);
	snprintf(msg, sizeof(msg), "%s %s -> %s",
	         lvl == PHG_LVL_RUN ? "run" : lvl == PHG_LVL_PHASE ? "phase" : "step",
	         phg_level_state_name(lvl, e->tr.old_state), phg_level_state_name(lvl, e->tr.new_state));
	phg_log(ll, &e->log, "%s", msg);
	phg_eng_event(e, lvl == PHG_LVL_RUN ? "run_state" : lvl == PHG_LVL_PHASE ? "phase_state" : "step_state", msg,
	      NULL);
	k(e);
}

/*
 * Persist the new state of a run, phase or step; then call @k.  The
 * transition must be in the table of transition.c.  What it resets (a
 * step's counters and checkpoint on a fresh attempt or on entering
 * reverting) is in the UPDATE (store.c), and memory is reloaded from the row
 * it RETURNs.  @note (run only) may be NULL.
 */
void phg_eng_set_state(engine_t *e, level_t lvl, int pi, int si, int new_state,
                      const char *note, ek_t k)
{
	phg_buf_t b;
	int old = *state_ref(e, lvl, pi, si);

	if (!phg_transition_legal(lvl, old, new_state)) {
		phg_err_t err;

		/* a bug, not a state to act on: stop with the state as it was */
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "internal error: illegal transition of %s %s -> %s",
		            phg_level_name(lvl), phg_level_state_name(lvl, old),
		            phg_level_state_name(lvl, new_state));
		phg_err_detail(&err, "Nothing was changed by it; the recorded state is as before.");
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	e->tr.k = k;
	e->tr.lvl = lvl;
	e->tr.pi = pi;
	e->tr.si = si;
	e->tr.new_state = new_state;
	e->tr.old_state = old;
	phg_buf_init(&b, 64 * 1024);
	switch (lvl) {
	case PHG_LVL_RUN: {
		char *n = note != NULL ? phg_eng_lit(e, note) : NULL;

		phg_store_run_state_sql(&b, e->schema_q, e->run_id, new_state, e->run_action, n);
		free(n);
		break;
	}
	case PHG_LVL_PHASE:
		phg_store_phase_state_sql(&b, e->schema_q, e->run_id, pi, new_state);
		break;
	case PHG_LVL_STEP:
		phg_store_step_state_sql(&b, e->schema_q, e->run_id, pi, si, old, new_state);
		break;
	}
	phg_eng_queryb(e, &b, set_state_done);
}

void phg_eng_ops_clear(engine_t *e)
{
	phg_ops_free(&e->ops);
}

static int build_ops(engine_t *e, int pi, int si, phg_dir_t dir, phg_err_t *err)
{
	step_rt_t *s = &e->ph[pi].steps[si];
	/* a started op (index build, http request) may have happened: a revert
	 * counts it as done */
	int done = s->progress > s->op_started + 1 ? s->progress : s->op_started + 1;

	phg_eng_ops_clear(e);
	return phg_step_build(e->plan, &e->plan->phases[pi].steps[si], dir, (size_t)done, s->memo,
	                      e->work.conn, &e->ops, err);
}

/* The step's row after its ops ran: memory is what committed. */
static void step_reloaded(engine_t *e)
{
	if (PQntuples(e->res) != 1 ||
	    phg_store_step_read(e->res, 0, 0, &e->ph[e->pi].steps[e->si]) != 0) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of step %d of phase \"%s\" is not "
		                              "valid",
		            e->si + 1, e->plan->phases[e->pi].name);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	e->after_exec(e);
}

static void exec_done(phg_exec_t *x, int status)
{
	engine_t *e = x->data;
	phg_buf_t b;

	e->failed_status = status;
	if (status != 0) {
		phg_err_clear(&e->step_err);
		phg_err_copy(&e->step_err, &x->err);
		if (e->stop_requested && e->step_err.sqlstate[0] != '\0' &&
		    strcmp(e->step_err.sqlstate, "57014") == 0)
			e->failed_status = PHG_EINTERRUPTED;
	}
	phg_exec_reset(x);
	if (status == PHG_ECONNECT) {
		e->after_exec(e); /* nothing to read back from: the caller ends the run */
		return;
	}
	phg_buf_init(&b, 4096);
	phg_store_step_select_sql(&b, e->schema_q, e->run_id, e->pi, e->si);
	phg_eng_queryb(e, &b, step_reloaded);
}

static void run_ops(engine_t *e, int pi, int si, phg_dir_t dir, ek_t k)
{
	step_rt_t *s = &e->ph[pi].steps[si];
	phg_exec_t *x = &e->x;

	e->pi = pi;
	e->si = si;
	e->after_exec = k;
	phg_eng_ctx(e, pi, si);
	x->work = &e->work;
	x->ctl = &e->ctlq;
	x->http = e->http;
	x->settings = e->st;
	x->schema_q = e->schema_q;
	x->run_id = e->run_id;
	x->phase_idx = pi;
	x->step_idx = si;
	x->dir = dir;
	x->ops = &e->ops;
	x->next = (size_t)(dir == PHG_DIR_APPLY    ? s->progress
	                   : dir == PHG_DIR_REVERT ? s->revert_progress
	                                           : s->final_progress);
	x->op_started = s->op_started;
	x->bf_pass = s->bf_pass;
	x->bf_rows = s->bf_rows;
	x->bf_batches = s->bf_batches;
	for (size_t i = 0; i < s->bf_last.n; i++)
		phg_strv_push(&x->bf_last, s->bf_last.v[i]);
	x->log = e->log;
	x->should_stop = phg_eng_should_stop;
	x->stop_arg = e;
	x->on_event = exec_event;
	x->data = e;
	if (phg_exec_run(x, exec_done) != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_set(&tmp, PHG_ECONNECT, "the database connection is not usable");
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
	}
}

void phg_eng_exit(engine_t *e, int code)
{
	phg_eng_shutdown(e, code);
}

static void exit_ok(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_OK);
}

static void exit_rolled_back(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_ROLLED_BACK);
}

static void exit_rollback_failed(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
}

static void exit_interrupted(engine_t *e)
{
	phg_log(PHG_LOG_WARN, &e->log,
	        "interrupted: state saved; run apply (or rollback) again to continue");
	phg_eng_exit(e, PHG_EXIT_INTERRUPTED);
}

void phg_eng_interrupt(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, "interrupted by a signal", exit_interrupted);
}

static const char *step_label(engine_t *e, int pi, int si, char *buf, size_t n)
{
	snprintf(buf, n, "step %d (%s) of phase \"%s\"", si + 1,
	         e->plan->phases[pi].steps[si].kind->name, e->plan->phases[pi].name);
	return buf;
}

/* Its irreversible finalize op committed: made permanent, whether or not the
 * `finalized` transition was written before a crash. */
int phg_eng_step_is_final(engine_t *e, int pi, int si)
{
	const step_rt_t *s = &e->ph[pi].steps[si];

	return s->state == PHG_STEP_FINALIZED ||
	       (s->final_progress > 0 && e->plan->phases[pi].steps[si].kind->final_irreversible);
}

int phg_eng_step_needs_revert(const step_rt_t *s)
{
	switch (s->state) {
	case PHG_STEP_RUNNING:
	case PHG_STEP_APPLIED:
	case PHG_STEP_REVERTING:
	case PHG_STEP_FINALIZED:
		return 1;
	case PHG_STEP_FAILED:
		return s->progress > 0 || s->op_started >= 0 || s->bf_batches > 0;
	default:
		return 0;
	}
}

/* Before touching anything: can every step of phases (lo, hi] be reverted? */
static int precheck_revert(engine_t *e, int hi, int lo, phg_err_t *err)
{
	char lbl[256];

	for (int pi = hi; pi > lo; pi--) {
		for (int si = (int)e->plan->phases[pi].nsteps - 1; si >= 0; si--) {
			step_rt_t *s = &e->ph[pi].steps[si];
			phg_err_t berr;
			int rc;

			if (!phg_eng_step_needs_revert(s))
				continue;
			step_label(e, pi, si, lbl, sizeof(lbl));
			if (phg_eng_step_is_final(e, pi, si)) {
				phg_err_set(err, PHG_EIRREVERSIBLE, "cannot revert %s", lbl);
				phg_err_detail(err, "Its change was made permanent when the plan completed "
				                    "(a hidden column is dropped for good at that point).");
				phg_err_hint(err, "Nothing was changed. Restore the data from a backup if it "
				                  "is needed, or write a new plan that undoes the change.");
				return PHG_EIRREVERSIBLE;
			}
			phg_err_clear(&berr);
			rc = build_ops(e, pi, si, PHG_DIR_REVERT, &berr);
			phg_eng_ops_clear(e);
			if (rc == PHG_EIRREVERSIBLE) {
				phg_err_set(err, PHG_EIRREVERSIBLE, "cannot revert %s: %s", lbl, berr.msg);
				phg_err_detail(err, "Nothing was changed.");
				phg_err_hint(err, "Give the step a way back (`down` for sql, `revert` for "
				                  "http), or undo it by hand and mark the run with a new plan.");
				return rc;
			}
			if (rc != 0) {
				phg_err_copy(err, &berr);
				return rc;
			}
		}
	}
	return 0;
}

static void revert_failed(engine_t *e, const phg_err_t *cause)
{
	char lbl[256];
	phg_buf_t left;
	phg_err_t err;

	step_label(e, e->pi, e->si, lbl, sizeof(lbl));
	phg_eng_ctx(e, e->pi, e->si);
	phg_eng_report(e, PHG_LOG_ERROR, cause);
	phg_buf_init(&left, 64 * 1024);
	for (int pi = e->pi; pi > e->rb_lo; pi--) {
		for (int si = (int)e->plan->phases[pi].nsteps - 1; si >= 0; si--) {
			if (phg_eng_step_needs_revert(&e->ph[pi].steps[si]))
				phg_buf_printf(&left, "%s\"%s\" step %d (%s)", left.len ? ", " : "",
				               e->plan->phases[pi].name, si + 1,
				               e->plan->phases[pi].steps[si].kind->name);
		}
	}
	phg_err_clear(&err);
	phg_err_set(&err, PHG_EROLLBACK, "rollback failed at %s", lbl);
	phg_err_detail(&err, "Not reverted yet: %s. Everything after it in the plan was reverted.",
	               left.len ? left.data : "nothing");
	phg_err_hint(&err, "Fix the cause above, then run `phasegate rollback %s` to finish; "
	                   "`phasegate status` shows each step.",
	               e->plan->file);
	phg_buf_free(&left);
	phg_eng_ctx(e, -1, -1);
	phg_eng_report(e, PHG_LOG_ERROR, &err);
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, err.msg, exit_rollback_failed);
}

static void step_reverted(engine_t *e)
{
	if (e->failed_status == PHG_EINTERRUPTED) {
		phg_eng_interrupt(e);
		return;
	}
	if (e->failed_status == PHG_ECONNECT) {
		phg_eng_fatal(e, PHG_EXIT_ROLLBACK_FAILED, &e->step_err);
		return;
	}
	if (e->failed_status != 0) {
		revert_failed(e, &e->step_err);
		return;
	}
	phg_eng_ctx(e, e->pi, e->si);
	phg_log(PHG_LOG_INFO, &e->log, "reverted");
	phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_REVERTED, NULL, phg_eng_drive_revert);
}

static void revert_memo_loaded(engine_t *e)
{
	step_rt_t *s = &e->ph[e->pi].steps[e->si];
	phg_err_t err;

	if (PQntuples(e->res) != 1 || phg_store_step_read(e->res, 0, 0, s) != 0) {
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of the step is not valid");
		revert_failed(e, &err);
		return;
	}
	phg_err_clear(&err);
	if (build_ops(e, e->pi, e->si, PHG_DIR_REVERT, &err) != 0) {
		revert_failed(e, &err);
		return;
	}
	phg_eng_ctx(e, e->pi, e->si);
	if (e->ops.n > 0)
		phg_log(PHG_LOG_INFO, &e->log, "reverting: %s", e->ops.v[0].label);
	run_ops(e, e->pi, e->si, PHG_DIR_REVERT, step_reverted);
}

static void phase_rolled_back(engine_t *e)
{
	phg_eng_ctx(e, e->pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "phase rolled back");
	e->pi--;
	phg_eng_drive_revert(e);
}

void phg_eng_drive_revert(engine_t *e)
{
	phg_buf_t b;

	if (e->stop_requested) {
		phg_eng_interrupt(e);
		return;
	}
	while (e->pi > e->rb_lo &&
	       (e->ph[e->pi].state == PHG_PHASE_PENDING || e->ph[e->pi].state == PHG_PHASE_ROLLED_BACK))
		e->pi--;
	if (e->pi <= e->rb_lo) {
		e->after_revert(e);
		return;
	}
	for (e->si = (int)e->plan->phases[e->pi].nsteps - 1; e->si >= 0; e->si--)
		if (phg_eng_step_needs_revert(&e->ph[e->pi].steps[e->si]))
			break;
	if (e->si < 0) {
		phg_eng_set_state(e, PHG_LVL_PHASE, e->pi, 0, PHG_PHASE_ROLLED_BACK, NULL, phase_rolled_back);
		return;
	}
	if (e->ph[e->pi].steps[e->si].state != PHG_STEP_REVERTING) {
		phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_REVERTING, NULL, phg_eng_drive_revert);
		return;
	}
	phg_buf_init(&b, 4096);
	phg_store_step_select_sql(&b, e->schema_q, e->run_id, e->pi, e->si);
	phg_eng_queryb(e, &b, revert_memo_loaded);
}

static void on_failure_done(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	if (e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN) {
		phg_log(PHG_LOG_WARN, &e->log,
		        "automatic rollback complete: every phase of this run was reverted");
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, e->step_err.msg, exit_rolled_back);
		return;
	}
	phg_log(PHG_LOG_WARN, &e->log,
	        "automatic rollback complete: phase \"%s\" was reverted; the database is as it "
	        "was before it",
	        e->plan->phases[e->failed_phase].name);
	snprintf(e->run_action, sizeof(e->run_action), "apply");
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg, exit_rolled_back);
}

static void on_failure(engine_t *e)
{
	phg_err_t err;
	int lo;

	phg_eng_ctx(e, -1, -1);
	if (e->st->on_failure == PHG_ON_FAILURE_STOP) {
		/* nothing was rolled back: exit 4, "an operator must look" (3
		 * promises the rollback completed) */
		phg_log(PHG_LOG_ERROR, &e->log,
		        "on_failure is \"stop\": phase \"%s\" is left as it is (state failed), "
		        "nothing was rolled back; an operator must look: fix the cause and run "
		        "apply to retry the phase, or rollback to undo it",
		        e->plan->phases[e->failed_phase].name);
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	lo = e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? -1 : e->failed_phase - 1;
	phg_err_clear(&err);
	if (precheck_revert(e, e->failed_phase, lo, &err) != 0) {
		phg_eng_report(e, PHG_LOG_ERROR, &err);
		phg_log(PHG_LOG_ERROR, &e->log, "the automatic rollback is impossible; the run is "
		                                "left failed for an operator to look at");
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	phg_log(PHG_LOG_WARN, &e->log, "on_failure %s: rolling back automatically",
	        e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? "rollback-plan" : "rollback-phase");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	e->rb_lo = lo;
	e->pi = e->failed_phase;
	e->after_revert = on_failure_done;
	phg_eng_drive_revert(e);
}

static void run_marked_failed(engine_t *e)
{
	on_failure(e);
}

void phg_eng_phase_failed(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg, run_marked_failed);
}

static void step_marked_failed(engine_t *e)
{
	phg_eng_set_state(e, PHG_LVL_PHASE, e->failed_phase, 0, PHG_PHASE_FAILED, NULL, phg_eng_phase_failed);
}

static void step_cleaned(engine_t *e)
{
	if (e->failed_status != 0) {
		phg_err_t cause = e->step_err;

		e->rb_lo = e->pi - 1;
		revert_failed(e, &cause);
		return;
	}
	/* keep the original failure as the reason */
	e->failed_status = PHG_ESTEP;
	phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_FAILED, NULL, step_marked_failed);
}

static void step_clean_start(engine_t *e)
{
	phg_err_t err;

	phg_err_clear(&err);
	if (build_ops(e, e->pi, e->si, PHG_DIR_REVERT, &err) != 0) {
		e->rb_lo = e->pi - 1;
		revert_failed(e, &err);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "undoing the failed step's own partial work");
	run_ops(e, e->pi, e->si, PHG_DIR_REVERT, step_cleaned);
}

static void step_failed_stopped(engine_t *e)
{
	const phg_step_t *step = &e->plan->phases[e->pi].steps[e->si];
	step_rt_t *s = &e->ph[e->pi].steps[e->si];

	if (step->kind->clean_on_fail && (s->progress > 0 || s->op_started >= 0)) {
		phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_REVERTING, NULL, step_clean_start);
		return;
	}
	phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_FAILED, NULL, step_marked_failed);
}

static void step_failed(engine_t *e)
{
	char lbl[256];

	phg_eng_ctx(e, e->pi, e->si);
	e->failed_phase = e->pi;
	phg_eng_report(e, PHG_LOG_ERROR, &e->step_err);
	phg_log(PHG_LOG_ERROR, &e->log, "%s failed", step_label(e, e->pi, e->si, lbl, sizeof(lbl)));
	phg_eng_event(e, "step_failed", e->step_err.msg, NULL);
	e->watch_failed = 0; /* the rollback that follows must not be stopped by it */
	phg_eng_watch_stop(e, step_failed_stopped);
}

static void step_ran(engine_t *e)
{
	if (e->watch_failed && !e->stop_requested &&
	    (e->failed_status == PHG_EINTERRUPTED ||
	     (e->failed_status == PHG_ESTEP && strcmp(e->step_err.sqlstate, "57014") == 0))) {
		phg_eng_gate_failed(e); /* the watch stopped the step at a safe point */
		return;
	}
	switch (e->failed_status) {
	case 0:
		phg_log(PHG_LOG_INFO, &e->log, "applied");
		phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_APPLIED, NULL, phg_eng_drive_apply);
		return;
	case PHG_EINTERRUPTED:
		phg_eng_interrupt(e);
		return;
	case PHG_ECONNECT:
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &e->step_err);
		return;
	default:
		step_failed(e);
		return;
	}
}

static void run_completed(engine_t *e)
{
	double secs = (double)(phg_eng_now_ms() - e->started_ms) / 1000.0;

	phg_eng_ctx(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log, "plan completed: %zu phase(s) applied in %.1f s",
	        e->plan->nphases, secs);
	exit_ok(e);
}

static void finalize_advance(engine_t *e)
{
	e->si++;
	finalize_next(e);
}

static void finalize_ran(engine_t *e)
{
	if (e->failed_status == PHG_EINTERRUPTED) {
		phg_eng_interrupt(e);
		return;
	}
	if (e->failed_status != 0) {
		phg_eng_ctx(e, e->pi, e->si);
		phg_eng_report(e, PHG_LOG_ERROR, &e->step_err);
		phg_log(PHG_LOG_ERROR, &e->log,
		        "completing the plan failed; every phase is applied; run apply again to "
		        "finish");
		phg_eng_exit(e, PHG_EXIT_RUNTIME);
		return;
	}
	if (!e->plan->phases[e->pi].steps[e->si].kind->final_irreversible) {
		finalize_advance(e); /* e.g. a sync trigger's unused function: still revertible */
		return;
	}
	phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_FINALIZED, NULL, finalize_advance);
}

static void finalize_next(engine_t *e)
{
	phg_err_t err;

	for (;;) {
		if (e->stop_requested) {
			phg_eng_interrupt(e);
			return;
		}
		if ((size_t)e->pi >= e->plan->nphases) {
			phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_COMPLETED, NULL, run_completed);
			return;
		}
		if ((size_t)e->si >= e->plan->phases[e->pi].nsteps) {
			e->pi++;
			e->si = 0;
			continue;
		}
		if (e->ph[e->pi].steps[e->si].state == PHG_STEP_APPLIED) {
			phg_err_clear(&err);
			if (build_ops(e, e->pi, e->si, PHG_DIR_FINALIZE, &err) != 0) {
				phg_eng_report(e, PHG_LOG_ERROR, &err);
				phg_eng_exit(e, PHG_EXIT_RUNTIME);
				return;
			}
			if (e->ops.n > 0) {
				phg_eng_ctx(e, e->pi, e->si);
				phg_log(PHG_LOG_INFO, &e->log, "plan complete: %s", e->ops.v[0].label);
				run_ops(e, e->pi, e->si, PHG_DIR_FINALIZE, finalize_ran);
				return;
			}
		}
		e->si++;
	}
}

static void paused(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log,
	        "stopped after phase \"%s\" as asked (--to); run apply again to continue",
	        e->plan->phases[e->to_idx].name);
	exit_ok(e);
}

void phg_eng_drive_apply(engine_t *e)
{
	int pi, si;
	phg_err_t err;

	if (e->watch_failed) {
		phg_eng_gate_failed(e);
		return;
	}
	if (e->stop_requested) {
		phg_eng_interrupt(e);
		return;
	}
	for (pi = 0; pi <= e->to_idx; pi++)
		if (e->ph[pi].state != PHG_PHASE_APPLIED)
			break;
	if (pi > e->to_idx) {
		if ((size_t)e->to_idx + 1 == e->plan->nphases) {
			e->pi = 0;
			e->si = 0;
			finalize_next(e);
		} else {
			char note[256];

			snprintf(note, sizeof(note), "stopped after phase \"%s\" (--to)",
			         e->plan->phases[e->to_idx].name);
			phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, paused);
		}
		return;
	}
	e->pi = pi;
	phg_eng_ctx(e, pi, -1);
	if (e->ph[pi].state != PHG_PHASE_RUNNING) {
		phg_log(PHG_LOG_INFO, &e->log, "phase %d/%zu \"%s\": starting (%zu step(s))", pi + 1,
		        e->plan->nphases, e->plan->phases[pi].name, e->plan->phases[pi].nsteps);
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_RUNNING, NULL, phg_eng_drive_apply);
		return;
	}
	for (si = 0; (size_t)si < e->plan->phases[pi].nsteps; si++) {
		int s = e->ph[pi].steps[si].state;

		if (s != PHG_STEP_APPLIED && s != PHG_STEP_FINALIZED)
			break;
	}
	if ((size_t)si < e->plan->phases[pi].nsteps) {
		/* steps remain: the watch runs while they do; the backup gate
		 * comes before the first of them */
		if (phg_eng_watch_start(e, pi) != 0) {
			phg_eng_gate_failed(e);
			return;
		}
		if (e->plan->phases[pi].backup && !e->ph[pi].backed_up) {
			int started = 0;

			/* a step that left something behind: the backup would not show
			 * the database as it was before the phase any more */
			for (int k = 0; (size_t)k < e->plan->phases[pi].nsteps; k++)
				if (phg_eng_step_needs_revert(&e->ph[pi].steps[k]))
					started = 1;
			if (!started) {
				phg_eng_backup_start(e, pi);
				return;
			}
		}
	}
	if ((size_t)si == e->plan->phases[pi].nsteps) {
		if (e->plan->phases[pi].verify.n > 0 && !e->ph[pi].verified) {
			phg_eng_verify_start(e, pi);
			return;
		}
		if (e->watch_on) {
			phg_eng_watch_stop(e, phg_eng_drive_apply);
			return;
		}
		phg_log(PHG_LOG_INFO, &e->log, "phase \"%s\" applied", e->plan->phases[pi].name);
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_APPLIED, NULL, phg_eng_drive_apply);
		return;
	}
	e->si = si;
	if (e->ph[pi].steps[si].state != PHG_STEP_RUNNING) {
		phg_eng_set_state(e, PHG_LVL_STEP, pi, si, PHG_STEP_RUNNING, NULL, phg_eng_drive_apply);
		return;
	}
	phg_err_clear(&err);
	phg_eng_ctx(e, pi, si);
	if (build_ops(e, pi, si, PHG_DIR_APPLY, &err) != 0) {
		e->step_err = err;
		e->failed_status = PHG_ESTEP;
		step_failed(e);
		return;
	}
	{
		size_t done = (size_t)e->ph[pi].steps[si].progress;

		if (done < e->ops.n)
			phg_log(PHG_LOG_INFO, &e->log, "%s%s", e->ops.v[done].label,
			        done > 0 ? " (resuming)" : "");
	}
	run_ops(e, pi, si, PHG_DIR_APPLY, step_ran);
}

/* After a crash the run row may still say "running". */
static int any_step_in(engine_t *e, int state)
{
	for (size_t p = 0; p < e->nph; p++)
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++)
			if (e->ph[p].steps[s].state == state)
				return 1;
	return 0;
}

static void apply_state_loaded(engine_t *e)
{
	int rc = phg_eng_load_rows(e, e->res);

	if (rc != 0) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of run %lld does not match plan \"%s\"",
		            e->run_id, e->plan->name);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	if (any_step_in(e, PHG_STEP_REVERTING)) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "a rollback of plan \"%s\" was interrupted", e->plan->name);
		phg_err_detail(&err, "Some steps are half reverted; applying on top of them is not safe.");
		phg_err_hint(&err, "Run `phasegate rollback %s` to finish the rollback (with --to to "
		                   "keep earlier phases), then apply.",
		             e->plan->file);
		phg_eng_report(e, PHG_LOG_ERROR, &err);
		phg_eng_shutdown(e, PHG_EXIT_RUNTIME);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "resuming run %lld (was %s)", e->run_id,
	        phg_run_state_name(e->run_state));
	snprintf(e->run_action, sizeof(e->run_action), "apply");
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, phg_eng_drive_apply);
}

void phg_eng_run_created(engine_t *e)
{
	int bad = 0;

	e->run_id = phg_db_num(PQgetvalue(e->res, 0, 0), 1, LLONG_MAX, 0, &bad);
	if (bad) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the new run has no valid id");
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	phg_fault("run:created");
	phg_eng_rt_alloc(e);
	e->run_state = PHG_RUN_RUNNING;
	phg_eng_ctx(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log, "run %lld started: %zu phase(s), checksum %s%s%s", e->run_id,
	        e->plan->nphases, e->plan->checksum, e->o->env ? ", env " : "",
	        e->o->env ? e->o->env : "");
	phg_eng_event(e, "run_started", "run started", NULL);
	phg_eng_drive_apply(e);
}

void phg_eng_drift(engine_t *e, const char *what)
{
	phg_err_t err;

	phg_err_clear(&err);
	phg_err_set(&err, PHG_EDRIFT, "plan \"%s\" changed since run %lld %s", e->plan->name,
	            e->run_id, what);
	phg_err_detail(&err, "The run was recorded with checksum %s; the file has %s.",
	               e->run_checksum, e->plan->checksum);
	phg_err_hint(&err, "Restore the plan file as it was, or roll the run back first. A new "
	                   "change to an applied plan needs a plan of its own (a new name).");
	phg_eng_fatal(e, PHG_EXIT_USAGE, &err);
}

static void apply_have_run(engine_t *e)
{
	phg_buf_t b;

	if (!phg_eng_last_run_read(e) || e->run_state == PHG_RUN_ROLLED_BACK) {
		phg_eng_create_run(e);
		return;
	}
	phg_eng_ctx(e, -1, -1);
	if (strcmp(e->run_checksum, e->plan->checksum) != 0) {
		phg_eng_drift(e, e->run_state == PHG_RUN_COMPLETED ? "completed" : "started");
		return;
	}
	if (e->run_state == PHG_RUN_COMPLETED) {
		phg_log(PHG_LOG_INFO, &e->log, "plan already completed on this database (run %lld); "
		                               "nothing to do",
		        e->run_id);
		exit_ok(e);
		return;
	}
	phg_buf_init(&b, 4096);
	phg_eng_load_state_sql(e, &b);
	phg_eng_queryb(e, &b, apply_state_loaded);
}

void phg_eng_ready(engine_t *e)
{
	phg_buf_t b;
	const char *p[1] = {e->plan->name};

	e->have_schema = 1;
	phg_buf_init(&b, 4096);
	phg_eng_last_run_sql(e, &b);
	phg_eng_query(e, b.data, 1, p, e->mode == MODE_APPLY ? apply_have_run : rollback_have_run);
	phg_buf_free(&b);
}

static void rollback_done(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	if (e->rb_lo < 0) {
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: every phase reverted");
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back", exit_ok);
	} else {
		char note[256];

		snprintf(note, sizeof(note), "rolled back to phase \"%s\"",
		         e->plan->phases[e->rb_lo].name);
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: %s", note);
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, exit_ok);
	}
}

static void rollback_go(engine_t *e)
{
	e->pi = (int)e->plan->nphases - 1;
	e->after_revert = rollback_done;
	phg_eng_drive_revert(e);
}

static void rollback_state_loaded(engine_t *e)
{
	phg_err_t err;
	int hi;

	if (phg_eng_load_rows(e, e->res) != 0) {
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of run %lld does not match plan \"%s\"",
		            e->run_id, e->plan->name);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	e->rb_lo = e->to_idx;
	for (hi = (int)e->nph - 1; hi > e->rb_lo; hi--)
		if (e->ph[hi].state != PHG_PHASE_PENDING && e->ph[hi].state != PHG_PHASE_ROLLED_BACK)
			break;
	phg_eng_ctx(e, -1, -1);
	if (hi <= e->rb_lo) {
		phg_log(PHG_LOG_INFO, &e->log, "nothing to roll back%s",
		        e->rb_lo >= 0 ? " after that phase" : "");
		if (e->rb_lo < 0) {
			/* a run that never got past its start: it is over */
			snprintf(e->run_action, sizeof(e->run_action), "rollback");
			phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back (nothing applied)",
			          exit_ok);
			return;
		}
		exit_ok(e);
		return;
	}
	phg_err_clear(&err);
	if (precheck_revert(e, hi, e->rb_lo, &err) != 0) {
		phg_eng_report(e, PHG_LOG_ERROR, &err);
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "rolling back run %lld: phases \"%s\" down to %s%s%s", e->run_id,
	        e->plan->phases[hi].name, e->rb_lo >= 0 ? "after \"" : "the first",
	        e->rb_lo >= 0 ? e->plan->phases[e->rb_lo].name : "", e->rb_lo >= 0 ? "\"" : "");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, rollback_go);
}

static void rollback_have_run(engine_t *e)
{
	phg_buf_t b;

	phg_eng_ctx(e, -1, -1);
	if (!phg_eng_last_run_read(e)) {
		phg_log(PHG_LOG_INFO, &e->log, "nothing to roll back: plan \"%s\" has no run on this "
		                               "database",
		        e->plan->name);
		exit_ok(e);
		return;
	}
	if (strcmp(e->run_checksum, e->plan->checksum) != 0) {
		phg_eng_drift(e, "was applied");
		return;
	}
	if (e->run_state == PHG_RUN_ROLLED_BACK) {
		phg_log(PHG_LOG_INFO, &e->log, "run %lld is already rolled back", e->run_id);
		exit_ok(e);
		return;
	}
	phg_buf_init(&b, 4096);
	phg_eng_load_state_sql(e, &b);
	phg_eng_queryb(e, &b, rollback_state_loaded);
}

int phg_eng_to_phase(phg_plan_t *plan, const char *name, int *out)
{
	for (size_t i = 0; i < plan->nphases; i++) {
		if (strcmp(plan->phases[i].name, name) == 0) {
			*out = (int)i;
			return 0;
		}
	}
	phg_log(PHG_LOG_ERROR, NULL, "unknown phase \"%s\" for --to", name);
	fputs("  HINT: The plan's phases are:", stderr);
	for (size_t i = 0; i < plan->nphases; i++)
		fprintf(stderr, "%s \"%s\"", i ? "," : "", plan->phases[i].name);
	fputs(".\n", stderr);
	return PHG_EUSAGE;
}
