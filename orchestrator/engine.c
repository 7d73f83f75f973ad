/*
 * engine.c - the engine core: what a run does next, from its recorded
 * state.
 *
 * phg_eng_reconcile() (reconcile.c, "the reconciler") is the one function
 * that decides the next action: from the goal (apply, finalize, record a
 * failure, revert), the recorded run/phase/step states, and the in-memory
 * result of what just finished, it starts exactly one action, whose
 * completion calls it again.  phg_eng_set_state() is the one function that
 * changes a state: it checks the transition against the table in
 * transition.c, persists it, reloads the row it RETURNs, reaches the fault
 * point named after it (fault.h), and only then hands over.  What the
 * engine is doing at any moment is e->act (phg_eng_act(): one action at a
 * time, checked).  The executor's glue (build a step's ops, run them, read
 * the step's row back) lives here too.
 *
 * Its other parts: reconcile.c (the reconciler and the continuations that
 * end its actions), session.c (connections, the plan lock, signals,
 * shutdown), engine_gates.c (backup, watch, verify), engine_state.c
 * (loading and creating runs), commands.c (the CLI front-ends); shared
 * declarations in engine_int.h; every statement on the state schema in
 * store.c.
 */
#include "engine_int.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void phg_eng_event_json(engine_t *e, const char *kind, const char *msg, json_t *data)
{
	char *text = data != NULL ? json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;

	phg_eng_event(e, kind, msg, text);
	free(text);
	json_decref(data);
}

json_t *phg_eng_err_json(const phg_err_t *err)
{
	json_t *o = json_object();

	json_object_set_new(o, "error", json_string(err->msg));
	json_object_set_new(o, "sqlstate", err->sqlstate[0] ? json_string(err->sqlstate) : json_null());
	json_object_set_new(o, "detail", err->detail[0] ? json_string(err->detail) : json_null());
	json_object_set_new(o, "hint", err->hint[0] ? json_string(err->hint) : json_null());
	return o;
}

static void exec_event(phg_exec_t *x, const char *kind, const char *message, const char *data);
static int *state_ref(engine_t *e, level_t lvl, int pi, int si);
static void set_state_done(engine_t *e);
static void exec_done(phg_exec_t *x, int status);
static void step_reloaded(engine_t *e);
static void exit_interrupted(engine_t *e);
static int any_step_in(engine_t *e, int state);
static int applied_phase_with_undone_step(engine_t *e);
static void apply_state_loaded(engine_t *e);
static void apply_have_run(engine_t *e);
static void rollback_state_loaded(engine_t *e);
static void rollback_have_run(engine_t *e);

static const char *const act_names[ACT__N] = {
	"starting", "idle", "transition", "step", "reload", "backup", "verify", "watch-stop", "done",
};

void phg_eng_act(engine_t *e, act_t a)
{
	act_t old = e->act;

	if (old == a)
		return;
	if (a != ACT_DONE && old != ACT_IDLE && a != ACT_IDLE && old != ACT_STARTING) {
		phg_err_t err;

		/* two actions at once: a bug; stop with the state as recorded */
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "internal error: the engine started \"%s\" while "
		                              "\"%s\" was under way",
		            act_names[a], act_names[old]);
		e->act = ACT_DONE;
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	if (phg_log_get_level() <= PHG_LOG_TRACE)
		phg_log(PHG_LOG_TRACE, &e->log, "engine %s -> %s", act_names[old], act_names[a]);
	e->act = a;
}

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

static void event_masked(engine_t *e, const char *kind, const char *msg, const char *data)
{
	char run[32], step[16];
	const char *p[6];

	phg_log_event(&e->log, kind, msg, data); /* --log-format json */
	if (e->notify != NULL) {
		const char *point = phg_notify_point(kind, data, e->run_state == PHG_RUN_FAILED);

		if (point != NULL) {
			json_t *ev = phg_log_event_json(&e->log, kind, msg, data);

			phg_notify_send(e->notify, point, e->o->env, e->target, ev);
			json_decref(ev);
		}
	}
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

/* An event: streamed (--log-format json), told to the webhooks, recorded;
 * never with a secret in it (log.h). */
void phg_eng_event(engine_t *e, const char *kind, const char *msg, const char *data)
{
	char *m = phg_masked(msg), *d = phg_masked(data);

	event_masked(e, kind, m != NULL ? m : msg, data != NULL && d != NULL ? d : data);
	free(m);
	free(d);
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
	{
		char data[160];

		snprintf(data, sizeof(data), "{\"from\": \"%s\", \"to\": \"%s\", \"action\": \"%s\"}",
		         phg_level_state_name(lvl, e->tr.old_state),
		         phg_level_state_name(lvl, e->tr.new_state), e->run_action);
		phg_eng_event(e, lvl == PHG_LVL_RUN     ? "run_state"
		                 : lvl == PHG_LVL_PHASE ? "phase_state"
		                                        : "step_state",
		              msg, data);
	}
	phg_eng_act(e, ACT_IDLE);
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
	phg_eng_act(e, ACT_TRANSITION);
	if (e->act != ACT_TRANSITION)
		return; /* refused: the engine is stopping */
	e->tr.k = k;
	e->tr.lvl = lvl;
	e->tr.pi = pi;
	e->tr.si = si;
	e->tr.new_state = new_state;
	e->tr.old_state = old;
	phg_buf_init(&b, 64 * 1024);
	switch (lvl) {
	case PHG_LVL_RUN: {
		char *mn = phg_masked(note); /* a run's note and error never hold a secret */
		char *n = mn != NULL ? phg_eng_lit(e, mn) : NULL, *lw = NULL, *lh = NULL;

		free(mn);

		if (strcmp(e->run_action, "rollback") == 0) {
			char user[128], host[256];

			phg_whoami(user, sizeof(user), host, sizeof(host));
			lw = phg_eng_lit(e, user);
			lh = phg_eng_lit(e, host);
		}
		phg_eng_alembic_cte(e, old, new_state, &b);
		phg_store_run_state_sql(&b, e->schema_q, e->run_id, new_state, e->run_action, n, lw, lh);
		free(n);
		free(lw);
		free(lh);
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

int phg_eng_build_ops(engine_t *e, int pi, int si, phg_dir_t dir, phg_err_t *err)
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
	phg_eng_act(e, ACT_IDLE);
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
		phg_eng_act(e, ACT_IDLE);
		e->after_exec(e); /* nothing to read back from: the caller ends the run */
		return;
	}
	phg_buf_init(&b, 4096);
	phg_store_step_select_sql(&b, e->schema_q, e->run_id, e->pi, e->si);
	phg_eng_queryb(e, &b, step_reloaded);
}

void phg_eng_run_ops(engine_t *e, int pi, int si, phg_dir_t dir, ek_t k)
{
	step_rt_t *s = &e->ph[pi].steps[si];
	phg_exec_t *x = &e->x;

	phg_eng_act(e, ACT_STEP);
	if (e->act != ACT_STEP)
		return;
	e->pi = pi;
	e->si = si;
	e->after_exec = k;
	phg_eng_ctx(e, pi, si);
	x->work = &e->work;
	x->ctl = &e->ctlq;
	x->conninfo = e->conninfo;
	x->watch_interval_ms = 0;
	if (e->watch_on && e->watch_phase == pi) {
		const phg_strv_t *w = &e->plan->phases[pi].watch;

		for (size_t i = 0; i < w->n; i++) {
			const phg_check_t *c = phg_plan_find_check(e->plan, w->v[i]);

			if (c != NULL && (x->watch_interval_ms == 0 || c->interval_ms < x->watch_interval_ms))
				x->watch_interval_ms = c->interval_ms;
		}
	}
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
	x->bf_high_set = s->bf_high_set;
	for (size_t i = 0; i < s->bf_high.n; i++)
		phg_strv_push(&x->bf_high, s->bf_high.v[i]);
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

void phg_eng_exit_ok(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_OK);
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

/* After a crash the run row may still say "running". */
static int any_step_in(engine_t *e, int state)
{
	for (size_t p = 0; p < e->nph; p++)
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++)
			if (e->ph[p].steps[s].state == state)
				return 1;
	return 0;
}

/* A rollback stopped between two steps of a phase leaves the phase
 * recorded applied with a step reverted: applying on top would skip it. */
static int applied_phase_with_undone_step(engine_t *e)
{
	for (size_t p = 0; p < e->nph; p++) {
		if (e->ph[p].state != PHG_PHASE_APPLIED)
			continue;
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++) {
			int st = e->ph[p].steps[s].state;

			if (st != PHG_STEP_APPLIED && st != PHG_STEP_FINALIZED)
				return 1;
		}
	}
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
	if (any_step_in(e, PHG_STEP_REVERTING) || applied_phase_with_undone_step(e)) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "a rollback of plan \"%s\" was interrupted", e->plan->name);
		phg_err_detail(&err, "Some steps are reverted or half reverted while their phase is still applied; "
		                     "applying on top of them is not safe.");
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
	e->goal = GOAL_APPLY;
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, phg_eng_reconcile);
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
	phg_log_set_run(e->plan->name, e->plan->checksum, e->run_id, e->o->env);
	phg_eng_rt_alloc(e);
	e->run_state = PHG_RUN_RUNNING;
	phg_eng_ctx(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log, "run %lld started: %zu phase(s), checksum %s%s%s", e->run_id,
	        e->plan->nphases, e->plan->checksum, e->o->env ? ", env " : "",
	        e->o->env ? e->o->env : "");
	phg_eng_event(e, "run_started", "run started", NULL);
	e->goal = GOAL_APPLY;
	phg_eng_reconcile(e);
}

void phg_eng_drift(engine_t *e, const char *what)
{
	phg_err_t err, lerr;
	phg_plan_t *was = NULL;
	phg_buf_t b;

	phg_err_clear(&err);
	phg_err_clear(&lerr);
	phg_buf_init(&b, 64 * 1024);
	phg_err_set(&err, PHG_EDRIFT, "plan \"%s\" changed since run %lld %s", e->plan->name,
	            e->run_id, what);
	if (phg_plan_load_recorded(e->run_plan, e->run_id, NULL, &was, &lerr) == 0 &&
	    phg_plan_diff_phases(was, e->plan, &b) > 0)
		phg_err_detail(&err, "Phases that differ from the plan as applied: %s. The run was "
		                     "recorded with checksum %s; the file has %s.",
		               b.data, e->run_checksum, e->plan->checksum);
	else
		phg_err_detail(&err, "%sThe run was recorded with checksum %s; the file has %s.",
		               was != NULL ? "No phase differs: the order of the phases or the rest of "
		                             "the plan (settings, checks, environments) changed. "
		                           : "",
		               e->run_checksum, e->plan->checksum);
	if (e->run_state == PHG_RUN_COMPLETED)
		phg_err_hint(&err, "The run is completed: a new change needs a plan of its own (a new "
		                   "name). To undo the applied one, `phasegate rollback` works from the "
		                   "plan as recorded.");
	else
		phg_err_hint(&err, "To continue this run, restore the plan file as it was applied (the "
		                   "checksum above). Or roll it back first: `phasegate rollback` works "
		                   "from the plan as recorded, whatever the file says now; then apply "
		                   "the new file.");
	phg_plan_free(was);
	phg_buf_free(&b);
	phg_eng_fatal(e, PHG_EXIT_USAGE, &err);
}

static void apply_resume(engine_t *e)
{
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	phg_eng_load_state_sql(e, &b);
	phg_eng_queryb(e, &b, apply_state_loaded);
}

/* `phasegate finalize` of a plan that is not completed: nothing to do yet */
static void finalize_refused(engine_t *e, const char *why)
{
	phg_err_t err;

	phg_err_clear(&err);
	phg_err_set(&err, PHG_EINVAL, "plan \"%s\" cannot be finalized: %s", e->plan->name, why);
	phg_err_hint(&err, "`phasegate finalize` runs the irreversible drops a completed plan with "
	                   "`finalize: manual` left; apply the plan to completion first. Nothing "
	                   "was changed.");
	phg_eng_fatal(e, PHG_EXIT_USAGE, &err);
}

static void apply_have_run(engine_t *e)
{
	int have = phg_eng_last_run_read(e);

	if (e->o->finalize && (!have || e->run_state != PHG_RUN_COMPLETED)) {
		finalize_refused(e, !have ? "it has no run on this database"
		                    : e->run_state == PHG_RUN_ROLLED_BACK ? "its last run was rolled back"
		                                                          : "its run is not completed");
		return;
	}
	if (!have || e->run_state == PHG_RUN_ROLLED_BACK) {
		phg_eng_alembic_check(e, ALEMBIC_REQUIRES, phg_eng_create_run);
		return;
	}
	phg_eng_ctx(e, -1, -1);
	if (!phg_plan_checksum_is(e->plan, e->run_checksum)) {
		phg_eng_drift(e, e->run_state == PHG_RUN_COMPLETED ? "completed" : "started");
		return;
	}
	if (e->run_state == PHG_RUN_COMPLETED && e->o->finalize) {
		/* the completed run again, through GOAL_FINALIZE, with every op */
		phg_log(PHG_LOG_INFO, &e->log, "finalizing run %lld", e->run_id);
		phg_eng_alembic_check(e, ALEMBIC_STAMPS, apply_resume);
		return;
	}
	if (e->run_state == PHG_RUN_COMPLETED) {
		phg_log(PHG_LOG_INFO, &e->log, "plan already completed on this database (run %lld); "
		                               "nothing to do",
		        e->run_id);
		phg_eng_exit_ok(e);
		return;
	}
	phg_eng_alembic_check(e, ALEMBIC_EITHER, apply_resume);
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
		if (e->rb_lo < 0 && !e->o->check_only) {
			/* a run that never got past its start: it is over */
			snprintf(e->run_action, sizeof(e->run_action), "rollback");
			phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back (nothing applied)",
			          phg_eng_exit_ok);
			return;
		}
		phg_eng_exit_ok(e);
		return;
	}
	phg_err_clear(&err);
	if (phg_eng_precheck_revert(e, hi, e->rb_lo, &err) != 0) {
		phg_eng_report(e, PHG_LOG_ERROR, &err);
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	if (e->o->check_only) {
		phg_log(PHG_LOG_DEBUG, &e->log, "run %lld can be rolled back", e->run_id);
		phg_eng_exit_ok(e);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "rolling back run %lld: phases \"%s\" down to %s%s%s", e->run_id,
	        e->plan->phases[hi].name, e->rb_lo >= 0 ? "after \"" : "the first",
	        e->rb_lo >= 0 ? e->plan->phases[e->rb_lo].name : "", e->rb_lo >= 0 ? "\"" : "");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	e->goal = GOAL_REVERT;
	e->rb_end = END_ROLLBACK;
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, phg_eng_reconcile);
}

static void rollback_resume(engine_t *e)
{
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	phg_eng_load_state_sql(e, &b);
	phg_eng_queryb(e, &b, rollback_state_loaded);
}

static void rollback_have_run(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	if (!phg_eng_last_run_read(e)) {
		phg_log(PHG_LOG_INFO, &e->log, "nothing to roll back: plan \"%s\" has no run on this "
		                               "database",
		        e->plan->name);
		phg_eng_exit_ok(e);
		return;
	}
	if (!phg_plan_checksum_is(e->plan, e->run_checksum)) {
		phg_eng_drift(e, "was applied");
		return;
	}
	if (e->run_state == PHG_RUN_ROLLED_BACK) {
		phg_log(PHG_LOG_INFO, &e->log, "run %lld is already rolled back", e->run_id);
		phg_eng_exit_ok(e);
		return;
	}
	phg_eng_alembic_check(e, e->run_state == PHG_RUN_COMPLETED ? ALEMBIC_STAMPS : ALEMBIC_REQUIRES,
	                      rollback_resume);
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
	{
		phg_buf_t b;

		phg_buf_init(&b, 64 * 1024);
		for (size_t i = 0; i < plan->nphases; i++)
			phg_buf_printf(&b, "%s \"%s\"", i ? "," : "", plan->phases[i].name);
		phg_log_note("HINT", "The plan's phases are:%s.", b.data);
		phg_buf_free(&b);
	}
	return PHG_EUSAGE;
}
