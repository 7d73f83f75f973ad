/*
 * engine.c - apply and rollback (and promote's apply) on one libuv loop.
 *
 * Two connections: `work` holds the plan's session advisory lock and runs
 * state transitions and the steps' ops (so a step's DDL and its progress
 * record share a transaction); `ctl` writes the event log and looks up
 * blocking sessions while a DDL statement waits.
 *
 * The engine is a chain of continuations (ek_t): every query on `work` names
 * the function to call with its result.  set_state() is the one function
 * that changes the state of a run, a phase or a step: it writes the new
 * state, and only when that committed does the continuation act on it.
 */
#include "engine.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "backup.h"
#include "buf.h"
#include "exec.h"
#include "fault.h"
#include "gate.h"
#include "http.h"
#include "log.h"
#include "pg.h"
#include "pgq.h"
#include "step.h"
#include "store.h"

#define SQL_MAX (16u * 1024 * 1024)

typedef struct engine_s engine_t;
typedef void (*ek_t)(engine_t *e);

typedef struct step_rt_s {
	int state;
	int progress;
	int revert_progress;
	int final_progress;
	int op_started;
	json_t *memo;
	int bf_pass;
	phg_strv_t bf_last;
	long long bf_rows;
	long long bf_batches;
} step_rt_t;

typedef struct phase_rt_s {
	int state;
	int backed_up;  /* a verified backup of this phase is recorded */
	int verified;   /* its verify gate passed in this process */
	step_rt_t *steps;
} phase_rt_t;

typedef enum { MODE_APPLY, MODE_ROLLBACK } engine_mode_t; /* status/history: report.c */

typedef enum { LVL_RUN, LVL_PHASE, LVL_STEP } level_t;

struct engine_s {
	uv_loop_t loop;
	engine_mode_t mode;
	phg_plan_t *plan;
	const phg_run_opts_t *o;
	const phg_settings_t *st;
	phg_logctx_t log;
	char *conninfo;
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
	int signals;
	int connect_attempt;
	phg_pg_t *connecting;
	ek_t after_connect;

	int have_schema;
	long long run_id;
	int run_state;
	char run_action[16];
	char run_checksum[80];
	phase_rt_t *ph;
	size_t nph;
	int to_idx;   /* apply: last phase to apply; rollback: keep phases <= to_idx */
	int pi, si;   /* cursor */
	int rb_lo;    /* reverting: stop when pi <= rb_lo */
	ek_t after_revert;
	int failed_status;   /* the step failure being handled */
	phg_err_t step_err;  /* its error */
	int failed_phase;
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

	PGresult *res;
	ek_t k;
	ek_t after_exec;
	phg_ops_t ops;
	uint64_t started_ms;
};

static void engine_shutdown(engine_t *e, int code);
static void drive_apply(engine_t *e);
static void drive_revert(engine_t *e);
static void finalize_next(engine_t *e);
static void gate_failed(engine_t *e);
static void watch_stop(engine_t *e, ek_t k);
static void interrupt(engine_t *e);

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000u;
}

/* ---- logging / events ---- */

static void ctx_phase(engine_t *e, int pi, int si)
{
	e->log.plan = e->plan ? e->plan->name : NULL;
	e->log.phase = pi >= 0 && e->plan && (size_t)pi < e->plan->nphases ? e->plan->phases[pi].name
	                                                                    : NULL;
	e->log.step = si >= 0 ? si + 1 : 0;
	e->log.step_kind = (pi >= 0 && si >= 0 && e->plan)
	                       ? e->plan->phases[pi].steps[si].kind->name
	                       : NULL;
}

static void event(engine_t *e, const char *kind, const char *msg, const char *data)
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
		phg_buf_printf(&b,
		               "INSERT INTO %s.events (run_id, phase, step, kind, message, data) "
		               "VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
		               e->schema_q);
		phg_pgq_query(&e->ctlq, b.data, 6, p, NULL, NULL);
		phg_buf_free(&b);
	}
}

static void exec_event(phg_exec_t *x, const char *kind, const char *message, const char *data)
{
	engine_t *e = x->data;

	event(e, kind, message, data);
}

static void report_err(engine_t *e, phg_log_level_t lvl, const phg_err_t *err)
{
	phg_log_err(lvl, &e->log, err);
}

/* ---- work-connection queries with continuations ---- */

static void fatal(engine_t *e, int code, const phg_err_t *err)
{
	if (err != NULL && err->code != 0)
		report_err(e, PHG_LOG_ERROR, err);
	if (code == PHG_EXIT_RUNTIME && e->run_id > 0)
		phg_log(PHG_LOG_ERROR, &e->log,
		        "state is saved up to the last committed step; run apply again to resume "
		        "(or rollback)");
	engine_shutdown(e, code);
}

static void eq_cb(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	ek_t k = e->k;

	(void)pg;
	e->k = NULL;
	if (status != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_copy(&tmp, err);
		if (tmp.code == 0)
			phg_err_set(&tmp, status, "%s", phg_strerror(status));
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
		return;
	}
	e->res = res;
	k(e);
	e->res = NULL;
}

static void eq(engine_t *e, const char *sql, int np, const char *const *params, ek_t k)
{
	e->k = k;
	if (phg_pg_query(&e->work, sql, np, params, eq_cb, e) != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_set(&tmp, PHG_ECONNECT, "the database connection is not usable");
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
	}
}

static void eqb(engine_t *e, phg_buf_t *b, ek_t k)
{
	if (phg_buf_error(b) != 0) {
		phg_err_t tmp;

		/* never send a statement with a piece missing */
		phg_err_clear(&tmp);
		phg_err_set(&tmp, phg_buf_error(b), "internal error: a state query does not fit in "
		                                     "%zu bytes",
		            b->max);
		phg_buf_free(b);
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
		return;
	}
	eq(e, b->data, 0, NULL, k);
	phg_buf_free(b);
}

static char *lit(engine_t *e, const char *s)
{
	char *l, *r;

	if (s == NULL)
		return phg_strdup("NULL");
	l = PQescapeLiteral(e->work.conn, s, strlen(s));
	if (l == NULL)
		return phg_strdup("NULL");
	r = phg_strdup(l);
	PQfreemem(l);
	return r;
}

/* ---- the one state-transition function ---- */

static const char *state_name(level_t lvl, int s)
{
	switch (lvl) {
	case LVL_RUN:
		return phg_run_state_name(s);
	case LVL_PHASE:
		return phg_phase_state_name(s);
	case LVL_STEP:
	default:
		return phg_step_state_name(s);
	}
}


static int *state_ref(engine_t *e, level_t lvl, int pi, int si)
{
	switch (lvl) {
	case LVL_RUN:
		return &e->run_state;
	case LVL_PHASE:
		return &e->ph[pi].state;
	case LVL_STEP:
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
	if (lvl == LVL_RUN)
		phg_fault("run:%s:%s", e->run_action, phg_run_state_name(e->tr.new_state));
	else if (lvl == LVL_PHASE)
		phg_fault("phase:%s:%s", e->plan->phases[pi].name,
		          phg_phase_state_name(e->tr.new_state));
	else
		phg_fault("step:%s:%d:%s", e->plan->phases[pi].name, si + 1,
		          phg_step_state_name(e->tr.new_state));
	*ref = e->tr.new_state;
	if (lvl == LVL_STEP) {
		step_rt_t *s = &e->ph[pi].steps[si];

		if (e->tr.new_state == PHG_STEP_RUNNING &&
		    (e->tr.old_state == PHG_STEP_PENDING || e->tr.old_state == PHG_STEP_REVERTED)) {
			s->progress = 0;
			s->revert_progress = 0;
			s->final_progress = 0;
			s->op_started = -1;
			json_decref(s->memo);
			s->memo = json_object();
			s->bf_pass = 1;
			s->bf_rows = s->bf_batches = 0;
			phg_strv_clear(&s->bf_last);
		}
		if (e->tr.new_state == PHG_STEP_FAILED && e->tr.old_state == PHG_STEP_REVERTING) {
			s->progress = 0;
			json_decref(s->memo);
			s->memo = json_object();
		}
		if (e->tr.new_state == PHG_STEP_REVERTING && e->tr.old_state != PHG_STEP_REVERTING) {
			if (s->op_started + 1 > s->progress)
				s->progress = s->op_started + 1;
			s->op_started = -1;
			s->revert_progress = 0;
			s->bf_pass = 1;
			s->bf_rows = s->bf_batches = 0;
			phg_strv_clear(&s->bf_last);
		}
	}
	if (lvl == LVL_PHASE && e->tr.new_state == PHG_PHASE_RUNNING) {
		/* a new attempt at the phase takes its own backup and verify */
		e->ph[pi].backed_up = 0;
		e->ph[pi].verified = 0;
	}
	ctx_phase(e, lvl == LVL_RUN ? -1 : pi, lvl == LVL_STEP ? si : -1);
	snprintf(msg, sizeof(msg), "%s %s -> %s",
	         lvl == LVL_RUN ? "run" : lvl == LVL_PHASE ? "phase" : "step",
	         state_name(lvl, e->tr.old_state), state_name(lvl, e->tr.new_state));
	phg_log(ll, &e->log, "%s", msg);
	event(e, lvl == LVL_RUN ? "run_state" : lvl == LVL_PHASE ? "phase_state" : "step_state", msg,
	      NULL);
	k(e);
}

/*
 * Persist the new state of a run, phase or step; then call @k.  Entering a
 * step's `running` from pending/reverted, or `reverting` from anything
 * else, resets its counters and backfill checkpoint in the same UPDATE.
 * @note (run only) may be NULL.
 */
static void set_state(engine_t *e, level_t lvl, int pi, int si, int new_state,
                      const char *note, ek_t k)
{
	phg_buf_t b;
	int old = *state_ref(e, lvl, pi, si);

	e->tr.k = k;
	e->tr.lvl = lvl;
	e->tr.pi = pi;
	e->tr.si = si;
	e->tr.new_state = new_state;
	e->tr.old_state = old;
	phg_buf_init(&b, 64 * 1024);
	switch (lvl) {
	case LVL_RUN: {
		char *n = lit(e, note);
		int final = new_state == PHG_RUN_COMPLETED || new_state == PHG_RUN_ROLLED_BACK ||
		            new_state == PHG_RUN_FAILED;

		phg_buf_printf(&b,
		               "UPDATE %s.runs SET state = '%s', action = '%s', note = %s, "
		               "error = %s, updated_at = now(), finished_at = %s WHERE id = %lld",
		               e->schema_q, phg_run_state_name(new_state), e->run_action, n,
		               new_state == PHG_RUN_FAILED ? n
		               : new_state == PHG_RUN_RUNNING ? "NULL" : "error",
		               final ? "now()" : "NULL", e->run_id);
		free(n);
		break;
	}
	case LVL_PHASE:
		phg_buf_printf(&b,
		               "UPDATE %s.phases SET state = '%s'%s%s WHERE run_id = %lld AND idx = %d",
		               e->schema_q, phg_phase_state_name(new_state),
		               new_state == PHG_PHASE_RUNNING ? ", started_at = now(), finished_at = NULL"
		                                              : "",
		               new_state == PHG_PHASE_APPLIED || new_state == PHG_PHASE_FAILED ||
		                       new_state == PHG_PHASE_ROLLED_BACK
		                   ? ", finished_at = now()"
		                   : "",
		               e->run_id, pi);
		break;
	case LVL_STEP:
		phg_buf_printf(&b, "UPDATE %s.steps SET state = '%s', updated_at = now()", e->schema_q,
		               phg_step_state_name(new_state));
		if (new_state == PHG_STEP_RUNNING &&
		    (old == PHG_STEP_PENDING || old == PHG_STEP_REVERTED))
			phg_buf_adds(&b, ", progress = 0, revert_progress = 0, final_progress = 0, "
			                 "op_started = NULL, memo = '{}', bf_pass = 1, bf_last = NULL, "
			                 "bf_rows = 0, bf_batches = 0");
		if (new_state == PHG_STEP_REVERTING && old != PHG_STEP_REVERTING)
			/* an op that was started (index build, http request) may have
			 * happened: the revert must undo it too */
			phg_buf_adds(&b, ", progress = GREATEST(progress, COALESCE(op_started + 1, 0)), "
			                 "revert_progress = 0, op_started = NULL, bf_pass = 1, "
			                 "bf_last = NULL, bf_rows = 0, bf_batches = 0");
		if (new_state == PHG_STEP_FAILED && old == PHG_STEP_REVERTING)
			/* its own partial work was undone: it starts over next time */
			phg_buf_adds(&b, ", progress = 0, memo = '{}'");
		phg_buf_printf(&b, " WHERE run_id = %lld AND phase_idx = %d AND idx = %d", e->run_id,
		               pi, si);
		break;
	}
	eqb(e, &b, set_state_done);
}

/* ---- shutdown ---- */

static void on_pg_closed(phg_pg_t *pg)
{
	engine_t *e = pg->data;

	if (pg == &e->work)
		e->work_open = 0;
	else
		e->ctl_open = 0;
}

static void on_exec_closed(phg_exec_t *x)
{
	engine_t *e = x->data;

	e->x_open = 0;
}

static void on_handle_closed(uv_handle_t *h)
{
	(void)h;
}

/* At exit the control connection first writes the events still queued, so
 * the event log holds the whole run; at most PHG_EVENT_DRAIN_MS. */
#define PHG_EVENT_DRAIN_MS 3000

static void ctl_close_now(engine_t *e)
{
	if (e->retry_open) {
		uv_close((uv_handle_t *)&e->retry_timer, on_handle_closed);
		e->retry_open = 0;
	}
	if (e->ctl_open && e->ctl.state != PHG_PG_CLOSING && e->ctl.state != PHG_PG_CLOSED) {
		phg_pg_close(&e->ctl, on_pg_closed);
		phg_pgq_discard(&e->ctlq);
	}
}

static void ctl_drained(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	(void)pg;
	(void)status;
	(void)res;
	(void)err;
	ctl_close_now(arg);
}

static void ctl_drain_timeout(uv_timer_t *t)
{
	engine_t *e = t->data;

	phg_log(PHG_LOG_WARN, NULL, "giving up writing %zu event(s) to the event log",
	        phg_pgq_pending(&e->ctlq));
	ctl_close_now(e);
}

static void engine_shutdown(engine_t *e, int code)
{
	if (e->shutting_down)
		return;
	e->shutting_down = 1;
	e->exit_code = code;
	if (e->signals_open) {
		uv_close((uv_handle_t *)&e->sigint, on_handle_closed);
		uv_close((uv_handle_t *)&e->sigterm, on_handle_closed);
		e->signals_open = 0;
	}
	if (e->watch_on) {
		phg_gate_stop(&e->watch, NULL);
		e->watch_on = 0;
	}
	if (e->verify_on) {
		phg_gate_stop(&e->verify, NULL);
		e->verify_on = 0;
	}
	if (e->backup != NULL) {
		phg_backup_cancel(e->backup);
		e->backup = NULL;
	}
	if (e->http_open) {
		phg_http_close(e->http, NULL, NULL);
		e->http_open = 0;
	}
	if (e->x_open)
		phg_exec_close(&e->x, on_exec_closed);
	if (e->work_open)
		phg_pg_close(&e->work, on_pg_closed);
	if (e->ctl_open && e->ctl.state != PHG_PG_BROKEN && e->ctl.state != PHG_PG_CONNECTING &&
	    phg_pgq_pending(&e->ctlq) > 0 && e->retry_open) {
		/* let the queued events reach the log first */
		uv_timer_stop(&e->retry_timer);
		uv_timer_start(&e->retry_timer, ctl_drain_timeout, PHG_EVENT_DRAIN_MS, 0);
		phg_pgq_query(&e->ctlq, "SELECT 1", 0, NULL, ctl_drained, e);
	} else {
		ctl_close_now(e);
	}
}

/* ---- signals: finish the current statement or batch, save, exit 130 ---- */

static void on_signal(uv_signal_t *h, int signum)
{
	engine_t *e = h->data;

	e->signals++;
	e->stop_requested = 1;
	if (e->signals == 1) {
		phg_log(PHG_LOG_WARN, &e->log,
		        "%s received: finishing the current statement or batch, then saving state "
		        "(again to cancel the running statement)",
		        signum == SIGINT ? "SIGINT" : "SIGTERM");
		/* a wait for the next attempt ends at once, not at its end */
		if (e->x_open)
			phg_exec_interrupt(&e->x);
		if (e->retry_open && !e->shutting_down && uv_is_active((uv_handle_t *)&e->retry_timer)) {
			uv_timer_stop(&e->retry_timer);
			engine_shutdown(e, PHG_EXIT_INTERRUPTED);
		}
	} else if (e->backup != NULL) {
		phg_log(PHG_LOG_WARN, &e->log, "stopping pg_dump; the backup is taken again on resume");
		phg_backup_cancel(e->backup);
		e->backup = NULL;
		interrupt(e);
	} else if (e->work_open && e->work.state == PHG_PG_BUSY) {
		phg_log(PHG_LOG_WARN, &e->log, "cancelling the running statement");
		phg_pg_cancel(&e->work);
	}
}

static int should_stop(void *arg)
{
	engine_t *e = arg;

	return e->stop_requested || e->watch_failed;
}

/* ---- connecting ---- */

static void connect_start(engine_t *e);

static void retry_fire(uv_timer_t *t)
{
	engine_t *e = t->data;

	if (e->stop_requested) {
		engine_shutdown(e, PHG_EXIT_INTERRUPTED);
		return;
	}
	connect_start(e);
}

static void connect_failed_closed(phg_pg_t *pg)
{
	engine_t *e = pg->data;
	uint64_t rng = uv_hrtime();
	uint64_t d = phg_backoff_ms(e->st->retry_backoff_ms * 2, e->st->retry_backoff_max_ms,
	                            (uint64_t)e->connect_attempt, &rng);

	if (pg == &e->work)
		e->work_open = 0;
	else
		e->ctl_open = 0;
	if (e->shutting_down)
		return;
	phg_log(PHG_LOG_INFO, &e->log, "retrying the connection in %" PRIu64 " ms", d);
	uv_timer_start(&e->retry_timer, retry_fire, d, 0);
}

static void on_connected(phg_pg_t *pg, int status, const phg_err_t *err)
{
	engine_t *e = pg->data;

	if (status == 0) {
		e->connect_attempt = 0;
		e->connecting = NULL;
		e->after_connect(e);
		return;
	}
	{
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_copy(&tmp, err);
		if (tmp.code == 0)
			phg_err_set(&tmp, status, "cannot connect to the database: %s",
			            phg_strerror(status));
		if (e->stop_requested) {
			engine_shutdown(e, PHG_EXIT_INTERRUPTED);
			return;
		}
		if ((uint64_t)e->connect_attempt >= e->st->connect_retries) {
			phg_err_hint(&tmp,
			             "The database comes from $%s (a libpq URI or conninfo), and the PG* "
			             "variables as in psql.",
			             e->url_env);
			phg_log(PHG_LOG_ERROR, &e->log, "database unreachable after %d attempt(s)",
			        e->connect_attempt);
			fatal(e, PHG_EXIT_RUNTIME, &tmp);
			return;
		}
		phg_log(PHG_LOG_WARN, &e->log, "%s (attempt %d/%" PRIu64 ")", tmp.msg,
		        e->connect_attempt, e->st->connect_retries);
		phg_pg_close(pg, connect_failed_closed);
	}
}

static void connect_start(engine_t *e)
{
	phg_pg_t *pg = e->connecting;
	phg_err_t err;

	phg_err_clear(&err);
	e->connect_attempt++;
	phg_pg_init(&e->loop, pg, pg == &e->work ? "work" : "ctl");
	pg->data = e;
	if (pg == &e->work)
		e->work_open = 1;
	else
		e->ctl_open = 1;
	if (phg_pg_connect(pg, e->conninfo, e->st->connect_timeout_ms, on_connected, &err) != 0)
		on_connected(pg, err.code ? err.code : PHG_ECONNECT, &err);
}

static void connect_pg(engine_t *e, phg_pg_t *pg, ek_t k)
{
	e->connecting = pg;
	e->after_connect = k;
	e->connect_attempt = 0;
	connect_start(e);
}

/* ---- state loading ---- */

static void rt_free(engine_t *e)
{
	for (size_t p = 0; e->ph != NULL && p < e->nph; p++) {
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++) {
			step_rt_t *st = &e->ph[p].steps[s];

			json_decref(st->memo);
			phg_strv_clear(&st->bf_last);
		}
		free(e->ph[p].steps);
	}
	free(e->ph);
	e->ph = NULL;
}

static void rt_alloc(engine_t *e)
{
	rt_free(e);
	e->nph = e->plan->nphases;
	e->ph = phg_calloc(e->nph, sizeof(*e->ph));
	for (size_t p = 0; p < e->nph; p++) {
		e->ph[p].steps = phg_calloc(e->plan->phases[p].nsteps, sizeof(step_rt_t));
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++) {
			e->ph[p].steps[s].op_started = -1;
			e->ph[p].steps[s].bf_pass = 1;
		}
	}
}

/* A counter or index the state tables hold; *bad = 1 when it is not one. */
static int state_int(const char *s, int *bad)
{
	return (int)phg_db_num(s, INT_MIN, INT_MAX, 0, bad);
}

static void strv_from_json(phg_strv_t *v, const char *text)
{
	json_error_t jerr;
	json_t *a = json_loads(text, 0, &jerr);
	size_t i;
	json_t *x;

	json_array_foreach(a, i, x) {
		phg_strv_push(v, json_is_string(x) ? json_string_value(x) : "");
	}
	json_decref(a);
}

/* Rows of: p.idx, p.state, s.idx, s.state, progress, revert_progress,
 * final_progress, op_started, bf_pass, bf_last json, bf_rows, bf_batches,
 * memo */
static int load_rows(engine_t *e, PGresult *res)
{
	int n = PQntuples(res);
	int bad = 0;

	rt_alloc(e);
	for (int r = 0; r < n; r++) {
		int pi = state_int(PQgetvalue(res, r, 0), &bad);
		int si;
		step_rt_t *s;
		json_error_t jerr;

		if (bad || pi < 0 || (size_t)pi >= e->nph)
			return PHG_ESTATE;
		e->ph[pi].state = phg_phase_state_parse(PQgetvalue(res, r, 1));
		e->ph[pi].backed_up = strcmp(PQgetvalue(res, r, 13), "t") == 0;
		if (PQgetisnull(res, r, 2))
			continue;
		si = state_int(PQgetvalue(res, r, 2), &bad);
		if (bad || si < 0 || (size_t)si >= e->plan->phases[pi].nsteps)
			return PHG_ESTATE;
		s = &e->ph[pi].steps[si];
		s->state = phg_step_state_parse(PQgetvalue(res, r, 3));
		s->progress = state_int(PQgetvalue(res, r, 4), &bad);
		s->revert_progress = state_int(PQgetvalue(res, r, 5), &bad);
		s->final_progress = state_int(PQgetvalue(res, r, 6), &bad);
		s->op_started = PQgetisnull(res, r, 7) ? -1 : state_int(PQgetvalue(res, r, 7), &bad);
		s->bf_pass = state_int(PQgetvalue(res, r, 8), &bad);
		if (!PQgetisnull(res, r, 9))
			strv_from_json(&s->bf_last, PQgetvalue(res, r, 9));
		s->bf_rows = phg_db_num(PQgetvalue(res, r, 10), 0, LLONG_MAX, 0, &bad);
		s->bf_batches = phg_db_num(PQgetvalue(res, r, 11), 0, LLONG_MAX, 0, &bad);
		s->memo = json_loads(PQgetvalue(res, r, 12), 0, &jerr);
		if (e->ph[pi].state < 0 || s->state < 0 || bad)
			return PHG_ESTATE;
	}
	return 0;
}

static void load_state_sql(engine_t *e, phg_buf_t *b)
{
	phg_buf_printf(b,
	               "SELECT p.idx, p.state, s.idx, s.state, s.progress, s.revert_progress, "
	               "s.final_progress, s.op_started, s.bf_pass, array_to_json(s.bf_last)::text, "
	               "s.bf_rows, s.bf_batches, s.memo::text, EXISTS (SELECT 1 FROM %s.backups b "
	               "WHERE b.run_id = p.run_id AND b.phase = p.name AND "
	               "b.taken_at >= p.started_at) "
	               "FROM %s.phases p LEFT JOIN %s.steps s ON s.run_id = p.run_id AND "
	               "s.phase_idx = p.idx WHERE p.run_id = %lld ORDER BY p.idx, s.idx",
	               e->schema_q, e->schema_q, e->schema_q, e->run_id);
}

/* ---- building and running a step's ops ---- */

static void ops_clear(engine_t *e)
{
	phg_ops_free(&e->ops);
}

static int build_ops(engine_t *e, int pi, int si, phg_dir_t dir, phg_err_t *err)
{
	step_rt_t *s = &e->ph[pi].steps[si];
	/* a started op (index build, http request) may have happened: a revert
	 * counts it as done */
	int done = s->progress > s->op_started + 1 ? s->progress : s->op_started + 1;

	ops_clear(e);
	return phg_step_build(e->plan, &e->plan->phases[pi].steps[si], dir, (size_t)done, s->memo,
	                      e->work.conn, &e->ops, err);
}

static void exec_done(phg_exec_t *x, int status)
{
	engine_t *e = x->data;
	step_rt_t *s = &e->ph[e->pi].steps[e->si];

	/* mirror what the executor committed */
	switch (x->dir) {
	case PHG_DIR_APPLY:
		s->progress = (int)x->next;
		break;
	case PHG_DIR_REVERT:
		s->revert_progress = (int)x->next;
		break;
	case PHG_DIR_FINALIZE:
		s->final_progress = (int)x->next;
		break;
	}
	s->op_started = x->op_started;
	s->bf_rows = x->bf_rows;
	s->bf_batches = x->bf_batches;
	s->bf_pass = x->bf_pass;
	phg_strv_clear(&s->bf_last);
	s->bf_last = x->bf_last; /* the executor's latest checkpoint moves here */
	x->bf_last.v = NULL;
	x->bf_last.n = 0;
	e->failed_status = status;
	if (status != 0) {
		phg_err_clear(&e->step_err);
		phg_err_copy(&e->step_err, &x->err);
		if (e->stop_requested && e->step_err.sqlstate[0] != '\0' &&
		    strcmp(e->step_err.sqlstate, "57014") == 0)
			e->failed_status = PHG_EINTERRUPTED;
	}
	phg_exec_reset(x);
	e->after_exec(e);
}

static void run_ops(engine_t *e, int pi, int si, phg_dir_t dir, ek_t k)
{
	step_rt_t *s = &e->ph[pi].steps[si];
	phg_exec_t *x = &e->x;

	e->pi = pi;
	e->si = si;
	e->after_exec = k;
	ctx_phase(e, pi, si);
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
	x->should_stop = should_stop;
	x->stop_arg = e;
	x->on_event = exec_event;
	x->data = e;
	if (phg_exec_run(x, exec_done) != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_set(&tmp, PHG_ECONNECT, "the database connection is not usable");
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
	}
}

/* ---- the end of a command ---- */

static void exit_with(engine_t *e, int code)
{
	engine_shutdown(e, code);
}

static void exit_ok(engine_t *e)
{
	exit_with(e, PHG_EXIT_OK);
}

static void exit_rolled_back(engine_t *e)
{
	exit_with(e, PHG_EXIT_ROLLED_BACK);
}

static void exit_rollback_failed(engine_t *e)
{
	exit_with(e, PHG_EXIT_ROLLBACK_FAILED);
}

static void exit_interrupted(engine_t *e)
{
	phg_log(PHG_LOG_WARN, &e->log,
	        "interrupted: state saved; run apply (or rollback) again to continue");
	exit_with(e, PHG_EXIT_INTERRUPTED);
}

static void interrupt(engine_t *e)
{
	ctx_phase(e, -1, -1);
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, "interrupted by a signal", exit_interrupted);
}

static const char *step_label(engine_t *e, int pi, int si, char *buf, size_t n)
{
	snprintf(buf, n, "step %d (%s) of phase \"%s\"", si + 1,
	         e->plan->phases[pi].steps[si].kind->name, e->plan->phases[pi].name);
	return buf;
}

/* ---- reverting (rollback command and on_failure) ---- */

/* Its irreversible finalize op committed: made permanent, whether or not the
 * `finalized` transition was written before a crash. */
static int step_is_final(engine_t *e, int pi, int si)
{
	const step_rt_t *s = &e->ph[pi].steps[si];

	return s->state == PHG_STEP_FINALIZED ||
	       (s->final_progress > 0 && e->plan->phases[pi].steps[si].kind->final_irreversible);
}

static int step_needs_revert(const step_rt_t *s)
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

			if (!step_needs_revert(s))
				continue;
			step_label(e, pi, si, lbl, sizeof(lbl));
			if (step_is_final(e, pi, si)) {
				phg_err_set(err, PHG_EIRREVERSIBLE, "cannot revert %s", lbl);
				phg_err_detail(err, "Its change was made permanent when the plan completed "
				                    "(a hidden column is dropped for good at that point).");
				phg_err_hint(err, "Nothing was changed. Restore the data from a backup if it "
				                  "is needed, or write a new plan that undoes the change.");
				return PHG_EIRREVERSIBLE;
			}
			phg_err_clear(&berr);
			rc = build_ops(e, pi, si, PHG_DIR_REVERT, &berr);
			ops_clear(e);
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
	ctx_phase(e, e->pi, e->si);
	report_err(e, PHG_LOG_ERROR, cause);
	phg_buf_init(&left, 64 * 1024);
	for (int pi = e->pi; pi > e->rb_lo; pi--) {
		for (int si = (int)e->plan->phases[pi].nsteps - 1; si >= 0; si--) {
			if (step_needs_revert(&e->ph[pi].steps[si]))
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
	ctx_phase(e, -1, -1);
	report_err(e, PHG_LOG_ERROR, &err);
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_FAILED, err.msg, exit_rollback_failed);
}

static void step_reverted(engine_t *e)
{
	if (e->failed_status == PHG_EINTERRUPTED) {
		interrupt(e);
		return;
	}
	if (e->failed_status == PHG_ECONNECT) {
		fatal(e, PHG_EXIT_ROLLBACK_FAILED, &e->step_err);
		return;
	}
	if (e->failed_status != 0) {
		revert_failed(e, &e->step_err);
		return;
	}
	ctx_phase(e, e->pi, e->si);
	phg_log(PHG_LOG_INFO, &e->log, "reverted");
	set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_REVERTED, NULL, drive_revert);
}

static void revert_memo_loaded(engine_t *e)
{
	step_rt_t *s = &e->ph[e->pi].steps[e->si];
	phg_err_t err;
	json_error_t jerr;

	int bad = 0;

	if (PQntuples(e->res) == 1) {
		json_decref(s->memo);
		s->memo = json_loads(PQgetvalue(e->res, 0, 0), 0, &jerr);
		s->progress = state_int(PQgetvalue(e->res, 0, 1), &bad);
		s->op_started = PQgetisnull(e->res, 0, 2) ? -1 : state_int(PQgetvalue(e->res, 0, 2), &bad);
	}
	phg_err_clear(&err);
	if (bad) {
		phg_err_set(&err, PHG_ESTATE, "the recorded progress of the step is not a number");
		revert_failed(e, &err);
		return;
	}
	if (build_ops(e, e->pi, e->si, PHG_DIR_REVERT, &err) != 0) {
		revert_failed(e, &err);
		return;
	}
	ctx_phase(e, e->pi, e->si);
	if (e->ops.n > 0)
		phg_log(PHG_LOG_INFO, &e->log, "reverting: %s", e->ops.v[0].label);
	run_ops(e, e->pi, e->si, PHG_DIR_REVERT, step_reverted);
}

static void phase_rolled_back(engine_t *e)
{
	ctx_phase(e, e->pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "phase rolled back");
	e->pi--;
	drive_revert(e);
}

static void drive_revert(engine_t *e)
{
	phg_buf_t b;

	if (e->stop_requested) {
		interrupt(e);
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
		if (step_needs_revert(&e->ph[e->pi].steps[e->si]))
			break;
	if (e->si < 0) {
		set_state(e, LVL_PHASE, e->pi, 0, PHG_PHASE_ROLLED_BACK, NULL, phase_rolled_back);
		return;
	}
	if (e->ph[e->pi].steps[e->si].state != PHG_STEP_REVERTING) {
		set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_REVERTING, NULL, drive_revert);
		return;
	}
	phg_buf_init(&b, 4096);
	phg_buf_printf(&b,
	               "SELECT memo::text, progress, op_started FROM %s.steps WHERE run_id = %lld "
	               "AND phase_idx = %d AND idx = %d",
	               e->schema_q, e->run_id, e->pi, e->si);
	eqb(e, &b, revert_memo_loaded);
}

/* ---- apply ---- */

static void on_failure_done(engine_t *e)
{
	ctx_phase(e, -1, -1);
	if (e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN) {
		phg_log(PHG_LOG_WARN, &e->log,
		        "automatic rollback complete: every phase of this run was reverted");
		set_state(e, LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, e->step_err.msg, exit_rolled_back);
		return;
	}
	phg_log(PHG_LOG_WARN, &e->log,
	        "automatic rollback complete: phase \"%s\" was reverted; the database is as it "
	        "was before it",
	        e->plan->phases[e->failed_phase].name);
	snprintf(e->run_action, sizeof(e->run_action), "apply");
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg, exit_rolled_back);
}

static void on_failure(engine_t *e)
{
	phg_err_t err;
	int lo;

	ctx_phase(e, -1, -1);
	if (e->st->on_failure == PHG_ON_FAILURE_STOP) {
		/* nothing was rolled back: exit 4, "an operator must look" (3
		 * promises the rollback completed) */
		phg_log(PHG_LOG_ERROR, &e->log,
		        "on_failure is \"stop\": phase \"%s\" is left as it is (state failed), "
		        "nothing was rolled back; an operator must look: fix the cause and run "
		        "apply to retry the phase, or rollback to undo it",
		        e->plan->phases[e->failed_phase].name);
		exit_with(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	lo = e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? -1 : e->failed_phase - 1;
	phg_err_clear(&err);
	if (precheck_revert(e, e->failed_phase, lo, &err) != 0) {
		report_err(e, PHG_LOG_ERROR, &err);
		phg_log(PHG_LOG_ERROR, &e->log, "the automatic rollback is impossible; the run is "
		                                "left failed for an operator to look at");
		exit_with(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	phg_log(PHG_LOG_WARN, &e->log, "on_failure %s: rolling back automatically",
	        e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? "rollback-plan" : "rollback-phase");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	e->rb_lo = lo;
	e->pi = e->failed_phase;
	e->after_revert = on_failure_done;
	drive_revert(e);
}

static void run_marked_failed(engine_t *e)
{
	on_failure(e);
}

static void phase_marked_failed(engine_t *e)
{
	ctx_phase(e, -1, -1);
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg, run_marked_failed);
}

static void step_marked_failed(engine_t *e)
{
	set_state(e, LVL_PHASE, e->failed_phase, 0, PHG_PHASE_FAILED, NULL, phase_marked_failed);
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
	set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_FAILED, NULL, step_marked_failed);
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
		set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_REVERTING, NULL, step_clean_start);
		return;
	}
	set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_FAILED, NULL, step_marked_failed);
}

static void step_failed(engine_t *e)
{
	char lbl[256];

	ctx_phase(e, e->pi, e->si);
	e->failed_phase = e->pi;
	report_err(e, PHG_LOG_ERROR, &e->step_err);
	phg_log(PHG_LOG_ERROR, &e->log, "%s failed", step_label(e, e->pi, e->si, lbl, sizeof(lbl)));
	event(e, "step_failed", e->step_err.msg, NULL);
	e->watch_failed = 0; /* the rollback that follows must not be stopped by it */
	watch_stop(e, step_failed_stopped);
}

static void step_ran(engine_t *e)
{
	if (e->watch_failed && !e->stop_requested &&
	    (e->failed_status == PHG_EINTERRUPTED ||
	     (e->failed_status == PHG_ESTEP && strcmp(e->step_err.sqlstate, "57014") == 0))) {
		gate_failed(e); /* the watch stopped the step at a safe point */
		return;
	}
	switch (e->failed_status) {
	case 0:
		phg_log(PHG_LOG_INFO, &e->log, "applied");
		set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_APPLIED, NULL, drive_apply);
		return;
	case PHG_EINTERRUPTED:
		interrupt(e);
		return;
	case PHG_ECONNECT:
		fatal(e, PHG_EXIT_RUNTIME, &e->step_err);
		return;
	default:
		step_failed(e);
		return;
	}
}

static void run_completed(engine_t *e)
{
	double secs = (double)(now_ms() - e->started_ms) / 1000.0;

	ctx_phase(e, -1, -1);
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
		interrupt(e);
		return;
	}
	if (e->failed_status != 0) {
		ctx_phase(e, e->pi, e->si);
		report_err(e, PHG_LOG_ERROR, &e->step_err);
		phg_log(PHG_LOG_ERROR, &e->log,
		        "completing the plan failed; every phase is applied; run apply again to "
		        "finish");
		exit_with(e, PHG_EXIT_RUNTIME);
		return;
	}
	if (!e->plan->phases[e->pi].steps[e->si].kind->final_irreversible) {
		finalize_advance(e); /* e.g. a sync trigger's unused function: still revertible */
		return;
	}
	set_state(e, LVL_STEP, e->pi, e->si, PHG_STEP_FINALIZED, NULL, finalize_advance);
}

static void finalize_next(engine_t *e)
{
	phg_err_t err;

	for (;;) {
		if (e->stop_requested) {
			interrupt(e);
			return;
		}
		if ((size_t)e->pi >= e->plan->nphases) {
			set_state(e, LVL_RUN, 0, 0, PHG_RUN_COMPLETED, NULL, run_completed);
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
				report_err(e, PHG_LOG_ERROR, &err);
				exit_with(e, PHG_EXIT_RUNTIME);
				return;
			}
			if (e->ops.n > 0) {
				ctx_phase(e, e->pi, e->si);
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
	ctx_phase(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log,
	        "stopped after phase \"%s\" as asked (--to); run apply again to continue",
	        e->plan->phases[e->to_idx].name);
	exit_ok(e);
}


/* ---- gates: backup before the steps, watch throughout, verify after ---- */

static void gate_failed(engine_t *e);

static const phg_check_t **checks_of(engine_t *e, const phg_strv_t *names)
{
	const phg_check_t **v = phg_calloc(names->n + 1, sizeof(*v));

	for (size_t i = 0; i < names->n; i++)
		v[i] = phg_plan_find_check(e->plan, names->v[i]);
	return v;
}

static void gate_probe(phg_gate_t *g, const phg_probe_t *p)
{
	engine_t *e = g->data;
	json_t *d = json_object();
	char *text;
	char msg[768];

	json_object_set_new(d, "gate", json_string(g == &e->watch ? "watch" : "verify"));
	json_object_set_new(d, "check", json_string(p->check));
	json_object_set_new(d, "ok", json_boolean(p->ok));
	json_object_set_new(d, "status", json_integer(p->status));
	json_object_set_new(d, "latency_ms", json_integer((json_int_t)p->latency_ms));
	json_object_set_new(d, "reason", json_string(p->reason ? p->reason : ""));
	json_object_set_new(d, "successes", json_integer((json_int_t)p->successes));
	json_object_set_new(d, "failures", json_integer((json_int_t)p->failures));
	text = json_dumps(d, JSON_COMPACT);
	snprintf(msg, sizeof(msg), "%s check \"%s\": %s (HTTP %ld, %" PRIu64 " ms)%s%s",
	         g == &e->watch ? "watch" : "verify", p->check, p->ok ? "pass" : "FAIL", p->status,
	         p->latency_ms, p->ok ? "" : ": ", p->ok ? "" : p->reason);
	event(e, "probe", msg, text);
	free(text);
	json_decref(d);
}

static void watch_closed(phg_gate_t *g)
{
	engine_t *e = g->data;
	ek_t k = e->after_gate_stop;

	e->watch_on = 0;
	e->after_gate_stop = NULL;
	if (k != NULL && !e->shutting_down)
		k(e);
}

/* Stop the phase's watch (if any), then @k. */
static void watch_stop(engine_t *e, ek_t k)
{
	if (!e->watch_on) {
		k(e);
		return;
	}
	e->after_gate_stop = k;
	phg_gate_stop(&e->watch, watch_closed);
}

static void watch_done(phg_gate_t *g, int status, const phg_err_t *err)
{
	engine_t *e = g->data;

	(void)status;
	if (e->watch_failed || e->shutting_down)
		return;
	e->watch_failed = 1;
	phg_err_clear(&e->gate_err);
	phg_err_copy(&e->gate_err, err);
	if (e->gate_err.code == 0)
		phg_err_set(&e->gate_err, PHG_EGATE, "watch gate failed");
	ctx_phase(e, e->watch_phase, -1);
	phg_log(PHG_LOG_WARN, &e->log, "%s: stopping the phase at a safe point", e->gate_err.msg);
	if (e->backup != NULL) {
		phg_backup_cancel(e->backup);
		e->backup = NULL;
		gate_failed(e);
	} else if (e->verify_on) {
		/* verify_done/closed will not run: handle it here */
		e->verify_on = 0;
		phg_gate_stop(&e->verify, NULL);
		gate_failed(e);
	} else if (e->x.st != PHG_X_IDLE && e->x.st != PHG_X_DONE && e->work.state == PHG_PG_BUSY &&
	           e->x.next < e->ops.n && e->ops.v[e->x.next].kind != PHG_OP_BACKFILL) {
		/* a long statement: cancel it (a backfill stops between batches) */
		phg_log(PHG_LOG_WARN, &e->log, "cancelling the running statement");
		phg_pg_cancel(&e->work);
	}
}

static int watch_start(engine_t *e, int pi)
{
	const phg_phase_t *ph = &e->plan->phases[pi];
	const phg_check_t **v;
	phg_err_t err;
	int rc;

	if (ph->watch.n == 0 || e->watch_on)
		return 0;
	v = checks_of(e, &ph->watch);
	memset(&e->watch, 0, sizeof(e->watch));
	e->watch.data = e;
	e->watch.on_probe = gate_probe;
	e->watch.logctx = &e->log;
	phg_err_clear(&err);
	rc = phg_gate_start(&e->watch, &e->loop, e->http, PHG_GATE_WATCH, v, ph->watch.n, watch_done,
	                    &err);
	free(v);
	if (rc != 0) {
		e->gate_err = err;
		return rc;
	}
	e->watch_on = 1;
	e->watch_phase = pi;
	e->watch_failed = 0;
	ctx_phase(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "watching %zu check(s) while the phase runs", ph->watch.n);
	return 0;
}

static void verify_closed(phg_gate_t *g)
{
	engine_t *e = g->data;

	if (!e->verify_on)
		return; /* abandoned when the watch failed: gate_failed() took over */
	e->verify_on = 0;
	if (e->shutting_down)
		return;
	if (e->verify_status == 0) {
		phg_fault("gate:%s:verify-passed", e->plan->phases[e->pi].name);
		e->ph[e->pi].verified = 1;
		drive_apply(e);
	} else {
		gate_failed(e);
	}
}

static void verify_done(phg_gate_t *g, int status, const phg_err_t *err)
{
	engine_t *e = g->data;

	e->verify_status = status;
	ctx_phase(e, e->pi, -1);
	if (status == 0) {
		phg_log(PHG_LOG_INFO, &e->log, "verify gate passed");
		event(e, "gate_passed", "verify gate passed", NULL);
	} else {
		phg_err_clear(&e->gate_err);
		phg_err_copy(&e->gate_err, err);
		if (e->gate_err.code == 0)
			phg_err_set(&e->gate_err, PHG_EGATE, "verify gate failed");
	}
	phg_gate_stop(&e->verify, verify_closed);
}

static void verify_start(engine_t *e, int pi)
{
	const phg_phase_t *ph = &e->plan->phases[pi];
	const phg_check_t **v = checks_of(e, &ph->verify);
	phg_err_t err;
	int rc;

	memset(&e->verify, 0, sizeof(e->verify));
	e->verify.data = e;
	e->verify.on_probe = gate_probe;
	e->verify.logctx = &e->log;
	phg_err_clear(&err);
	ctx_phase(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "verify gate: %zu check(s)", ph->verify.n);
	rc = phg_gate_start(&e->verify, &e->loop, e->http, PHG_GATE_VERIFY, v, ph->verify.n,
	                    verify_done, &err);
	free(v);
	if (rc != 0) {
		e->gate_err = err;
		gate_failed(e);
		return;
	}
	e->verify_on = 1;
}

static void backup_recorded(engine_t *e)
{
	phg_fault("gate:%s:backup-recorded", e->plan->phases[e->pi].name);
	e->ph[e->pi].backed_up = 1;
	drive_apply(e);
}

static void backup_cb(phg_backup_job_t *job, int status, const phg_backup_result_t *res,
                      const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	const phg_phase_t *ph = &e->plan->phases[e->pi];
	phg_buf_t b;
	char *l_path, *l_phase, *l_sum;

	e->backup = NULL;
	ctx_phase(e, e->pi, -1);
	if (status != 0) {
		phg_err_clear(&e->gate_err);
		phg_err_copy(&e->gate_err, err);
		if (e->gate_err.code == 0)
			phg_err_set(&e->gate_err, PHG_EGATE, "backup failed");
		phg_backup_free(job);
		phg_log(PHG_LOG_ERROR, &e->log, "backup gate failed: no step of the phase runs");
		gate_failed(e);
		return;
	}
	e->log.pid = res->pid;
	phg_log(PHG_LOG_INFO, &e->log, "backup verified: %s (%" PRIu64 " bytes, %s, %" PRIu64 " ms)",
	        res->path, res->size, res->sha256, res->duration_ms);
	e->log.pid = 0;
	{
		char msg[1024];

		snprintf(msg, sizeof(msg), "backup %s (%" PRIu64 " bytes, %s)", res->path, res->size,
		         res->sha256);
		event(e, "backup", msg, NULL);
	}
	l_path = lit(e, res->path);
	l_phase = lit(e, ph->name);
	l_sum = lit(e, res->sha256);
	phg_buf_init(&b, 64 * 1024);
	phg_buf_printf(&b,
	               "INSERT INTO %s.backups (run_id, phase, path, scope, size, sha256, duration_ms) "
	               "VALUES (%lld, %s, %s, '%s', %" PRIu64 ", %s, %" PRIu64 ")",
	               e->schema_q, e->run_id, l_phase, l_path,
	               e->plan->backup.scope == PHG_BACKUP_SCOPE_DATABASE ? "database" : "tables",
	               res->size, l_sum, res->duration_ms);
	free(l_path);
	free(l_phase);
	free(l_sum);
	phg_backup_free(job);
	eqb(e, &b, backup_recorded);
}

static void backup_start(engine_t *e, int pi)
{
	const phg_phase_t *ph = &e->plan->phases[pi];
	phg_strv_t tables = {0};
	phg_backup_opts_t o;
	phg_err_t err;
	char *stem;
	int rc;

	if (e->plan->backup.scope != PHG_BACKUP_SCOPE_DATABASE) {
		for (size_t i = 0; i < ph->nsteps; i++) {
			phg_strv_t t = {0};

			ph->steps[i].kind->tables(&ph->steps[i], &t);
			for (size_t j = 0; j < t.n; j++) {
				size_t k;

				for (k = 0; k < tables.n; k++)
					if (strcmp(tables.v[k], t.v[j]) == 0)
						break;
				if (k == tables.n)
					phg_strv_push(&tables, t.v[j]);
			}
			phg_strv_clear(&t);
		}
	}
	stem = phg_asprintf("%s-run%lld-%s", e->plan->name, e->run_id, ph->name);
	for (char *p = stem; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '_' || *p == '.'))
			*p = '_';
	memset(&o, 0, sizeof(o));
	o.conninfo = e->conninfo;
	o.dir = e->plan->backup.dir;
	o.file_stem = stem;
	o.tables = tables.n > 0 ? &tables : NULL;
	o.compress = e->plan->backup.compress;
	o.timeout_ms = e->plan->backup.timeout_ms;
	phg_err_clear(&err);
	ctx_phase(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "backup gate: pg_dump of %s into %s",
	        tables.n > 0 ? "the tables the phase touches" : "the whole database",
	        e->plan->backup.dir);
	rc = phg_backup_start(&e->loop, &o, backup_cb, e, &e->backup, &err);
	free(stem);
	phg_strv_clear(&tables);
	if (rc != 0) {
		e->backup = NULL;
		e->gate_err = err;
		gate_failed(e);
	}
}

static void gate_failed_stopped(engine_t *e)
{
	set_state(e, LVL_PHASE, e->failed_phase, 0, PHG_PHASE_FAILED, NULL, phase_marked_failed);
}

static void gate_failed(engine_t *e)
{
	e->failed_phase = e->pi;
	ctx_phase(e, e->pi, -1);
	e->step_err = e->gate_err;
	if (e->step_err.code == 0)
		phg_err_set(&e->step_err, PHG_EGATE, "gate failed");
	e->failed_status = PHG_EGATE;
	report_err(e, PHG_LOG_ERROR, &e->step_err);
	event(e, "gate_failed", e->step_err.msg, NULL);
	e->watch_failed = 0; /* from here on the rollback must not be stopped by it */
	watch_stop(e, gate_failed_stopped);
}

static void drive_apply(engine_t *e)
{
	int pi, si;
	phg_err_t err;

	if (e->watch_failed) {
		gate_failed(e);
		return;
	}
	if (e->stop_requested) {
		interrupt(e);
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
			set_state(e, LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, paused);
		}
		return;
	}
	e->pi = pi;
	ctx_phase(e, pi, -1);
	if (e->ph[pi].state != PHG_PHASE_RUNNING) {
		phg_log(PHG_LOG_INFO, &e->log, "phase %d/%zu \"%s\": starting (%zu step(s))", pi + 1,
		        e->plan->nphases, e->plan->phases[pi].name, e->plan->phases[pi].nsteps);
		set_state(e, LVL_PHASE, pi, 0, PHG_PHASE_RUNNING, NULL, drive_apply);
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
		if (watch_start(e, pi) != 0) {
			gate_failed(e);
			return;
		}
		if (e->plan->phases[pi].backup && !e->ph[pi].backed_up) {
			int started = 0;

			/* a step that left something behind: the backup would not show
			 * the database as it was before the phase any more */
			for (int k = 0; (size_t)k < e->plan->phases[pi].nsteps; k++)
				if (step_needs_revert(&e->ph[pi].steps[k]))
					started = 1;
			if (!started) {
				backup_start(e, pi);
				return;
			}
		}
	}
	if ((size_t)si == e->plan->phases[pi].nsteps) {
		if (e->plan->phases[pi].verify.n > 0 && !e->ph[pi].verified) {
			verify_start(e, pi);
			return;
		}
		if (e->watch_on) {
			watch_stop(e, drive_apply);
			return;
		}
		phg_log(PHG_LOG_INFO, &e->log, "phase \"%s\" applied", e->plan->phases[pi].name);
		set_state(e, LVL_PHASE, pi, 0, PHG_PHASE_APPLIED, NULL, drive_apply);
		return;
	}
	e->si = si;
	if (e->ph[pi].steps[si].state != PHG_STEP_RUNNING) {
		set_state(e, LVL_STEP, pi, si, PHG_STEP_RUNNING, NULL, drive_apply);
		return;
	}
	phg_err_clear(&err);
	ctx_phase(e, pi, si);
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
	int rc = load_rows(e, e->res);

	if (rc != 0) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of run %lld does not match plan \"%s\"",
		            e->run_id, e->plan->name);
		fatal(e, PHG_EXIT_RUNTIME, &err);
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
		report_err(e, PHG_LOG_ERROR, &err);
		engine_shutdown(e, PHG_EXIT_RUNTIME);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "resuming run %lld (was %s)", e->run_id,
	        phg_run_state_name(e->run_state));
	snprintf(e->run_action, sizeof(e->run_action), "apply");
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, drive_apply);
}

static void who(char *user, size_t un, char *host, size_t hn)
{
	const char *u = getenv("USER");
	size_t n = hn;

	uv_passwd_t pw;

	if (u == NULL || *u == '\0')
		u = getenv("LOGNAME");
	if ((u == NULL || *u == '\0') && uv_os_get_passwd(&pw) == 0) {
		snprintf(user, un, "%s", pw.username);
		uv_os_free_passwd(&pw);
	} else {
		snprintf(user, un, "%s", u ? u : "?");
	}
	if (uv_os_gethostname(host, &n) != 0)
		snprintf(host, hn, "?");
}

static void new_run_created(engine_t *e)
{
	int bad = 0;

	e->run_id = phg_db_num(PQgetvalue(e->res, 0, 0), 1, LLONG_MAX, 0, &bad);
	if (bad) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the new run has no valid id");
		fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	phg_fault("run:created");
	rt_alloc(e);
	e->run_state = PHG_RUN_RUNNING;
	ctx_phase(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log, "run %lld started: %zu phase(s), checksum %s%s%s", e->run_id,
	        e->plan->nphases, e->plan->checksum, e->o->env ? ", env " : "",
	        e->o->env ? e->o->env : "");
	event(e, "run_started", "run started", NULL);
	drive_apply(e);
}

static void create_run(engine_t *e)
{
	phg_buf_t b;
	char user[128], host[256];
	char *l_plan = lit(e, e->plan->name), *l_sum = lit(e, e->plan->checksum);
	char *l_env = lit(e, e->o->env ? e->o->env : ""), *l_user, *l_host;

	snprintf(e->run_action, sizeof(e->run_action), "apply");
	who(user, sizeof(user), host, sizeof(host));
	l_user = lit(e, user);
	l_host = lit(e, host);
	phg_buf_init(&b, SQL_MAX);
	phg_buf_printf(&b,
	               "BEGIN; WITH r AS (INSERT INTO %s.runs (plan, checksum, env, action, state, who, "
	               "host, pid, version) VALUES (%s, %s, %s, 'apply', 'running', %s, %s, %d, '%s') "
	               "RETURNING id), p AS (INSERT INTO %s.phases (run_id, idx, name, checksum, state) "
	               "SELECT r.id, v.idx, v.name, v.sum, 'pending' FROM r, (VALUES ",
	               e->schema_q, l_plan, l_sum, l_env, l_user, l_host, (int)getpid(), PHG_VERSION,
	               e->schema_q);
	for (size_t p = 0; p < e->plan->nphases; p++) {
		char *n = lit(e, e->plan->phases[p].name), *c = lit(e, e->plan->phases[p].checksum);

		phg_buf_printf(&b, "%s(%zu, %s, %s)", p ? ", " : "", p, n, c);
		free(n);
		free(c);
	}
	phg_buf_printf(&b, ") AS v(idx, name, sum) RETURNING run_id) INSERT INTO %s.steps (run_id, "
	                   "phase_idx, idx, kind, state) SELECT r.id, v.p, v.s, v.kind, 'pending' FROM "
	                   "r, (VALUES ",
	               e->schema_q);
	{
		int first = 1;

		for (size_t p = 0; p < e->plan->nphases; p++)
			for (size_t s = 0; s < e->plan->phases[p].nsteps; s++) {
				phg_buf_printf(&b, "%s(%zu, %zu, '%s')", first ? "" : ", ", p, s,
				               e->plan->phases[p].steps[s].kind->name);
				first = 0;
			}
	}
	phg_buf_printf(&b, ") AS v(p, s, kind) WHERE (SELECT count(*) FROM p) >= 0; "
	                   "COMMIT; SELECT max(id) FROM %s.runs WHERE plan = %s",
	               e->schema_q, l_plan);
	free(l_plan);
	free(l_sum);
	free(l_env);
	free(l_user);
	free(l_host);
	eqb(e, &b, new_run_created);
}

static void drift(engine_t *e, const char *what)
{
	phg_err_t err;

	phg_err_clear(&err);
	phg_err_set(&err, PHG_EDRIFT, "plan \"%s\" changed since run %lld %s", e->plan->name,
	            e->run_id, what);
	phg_err_detail(&err, "The run was recorded with checksum %s; the file has %s.",
	               e->run_checksum, e->plan->checksum);
	phg_err_hint(&err, "Restore the plan file as it was, or roll the run back first. A new "
	                   "change to an applied plan needs a plan of its own (a new name).");
	fatal(e, PHG_EXIT_USAGE, &err);
}

static int last_run_read(engine_t *e)
{
	if (PQntuples(e->res) == 0) {
		e->run_id = 0;
		e->run_state = PHG_RUN_NOT_STARTED;
		return 0;
	}
	e->run_id = phg_db_num(PQgetvalue(e->res, 0, 0), 1, LLONG_MAX, 0, NULL);
	snprintf(e->run_checksum, sizeof(e->run_checksum), "%s", PQgetvalue(e->res, 0, 1));
	e->run_state = phg_run_state_parse(PQgetvalue(e->res, 0, 2));
	snprintf(e->run_action, sizeof(e->run_action), "%s", PQgetvalue(e->res, 0, 3));
	return 1;
}

static void last_run_sql(engine_t *e, phg_buf_t *b)
{
	phg_buf_printf(b,
	               "SELECT id, checksum, state, action FROM %s.runs WHERE plan = $1 "
	               "ORDER BY id DESC LIMIT 1",
	               e->schema_q);
}

static void apply_have_run(engine_t *e)
{
	phg_buf_t b;

	if (!last_run_read(e) || e->run_state == PHG_RUN_ROLLED_BACK) {
		create_run(e);
		return;
	}
	ctx_phase(e, -1, -1);
	if (strcmp(e->run_checksum, e->plan->checksum) != 0) {
		drift(e, e->run_state == PHG_RUN_COMPLETED ? "completed" : "started");
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
	load_state_sql(e, &b);
	eqb(e, &b, apply_state_loaded);
}

static void rollback_have_run(engine_t *e);

static void schema_ready(engine_t *e)
{
	phg_buf_t b;
	const char *p[1] = {e->plan->name};

	e->have_schema = 1;
	phg_buf_init(&b, 4096);
	last_run_sql(e, &b);
	eq(e, b.data, 1, p, e->mode == MODE_APPLY ? apply_have_run : rollback_have_run);
	phg_buf_free(&b);
}

static void lock_holder_run(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                            void *arg)
{
	engine_t *e = arg;
	phg_err_t out;

	(void)pg;
	(void)err;
	phg_err_clear(&out);
	phg_err_set(&out, PHG_ELOCKED, "plan \"%s\" is being run by another phasegate on this database",
	            e->plan->name);
	if (status == 0 && res != NULL && PQntuples(res) > 0)
		phg_err_detail(&out, "The plan's lock is held by run %s (%s, started %s by %s on %s, pid %s)%s",
		               PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
		               PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 5),
		               e->lock_holder);
	else if (e->lock_holder[0] != '\0')
		phg_err_detail(&out, "The plan's lock is held%s", e->lock_holder);
	phg_err_hint(&out, "Wait for it to finish, or use `phasegate status` to see where it is.");
	ctx_phase(e, -1, -1);
	report_err(e, PHG_LOG_ERROR, &out);
	engine_shutdown(e, PHG_EXIT_LOCKED);
}

static void lock_holder(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	const char *p[1] = {e->plan->name};
	phg_buf_t b;

	(void)pg;
	(void)err;
	e->lock_holder[0] = '\0';
	if (status == 0 && PQntuples(res) > 0)
		snprintf(e->lock_holder, sizeof(e->lock_holder),
		         " through backend pid %s (%s, connected since %s).", PQgetvalue(res, 0, 0),
		         PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
	else
		snprintf(e->lock_holder, sizeof(e->lock_holder), ".");
	/* which run: the newest unfinished one of this plan (the state schema
	 * may not exist yet: then the query fails and only the session is named) */
	phg_buf_init(&b, 4096);
	phg_buf_printf(&b,
	               "SELECT id, state, date_trunc('second', started_at)::text, coalesce(who, '?'), "
	               "coalesce(host, '?'), coalesce(pid::text, '?') FROM %s.runs WHERE plan = $1 "
	               "ORDER BY id DESC LIMIT 1",
	               e->schema_q);
	phg_pgq_query(&e->ctlq, b.data, 1, p, lock_holder_run, e);
	phg_buf_free(&b);
}

static void lock_taken(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	phg_buf_t b;

	(void)pg;
	if (status != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_copy(&tmp, err);
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		const char *p[1] = {e->plan->name};
		char cls[32];
		const char *p2[2] = {cls, e->plan->name};

		(void)p;
		snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
		phg_pgq_query(&e->ctlq,
		              "SELECT a.pid, coalesce(nullif(a.application_name, ''), '?') || "
		              "coalesce(' from ' || a.client_addr::text, ''), "
		              "date_trunc('second', a.backend_start)::text "
		              "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
		              "WHERE " PHG_PLAN_LOCK_HELD("$1", "$2"),
		              2, p2, lock_holder, e);
		return;
	}
	phg_log(PHG_LOG_DEBUG, &e->log, "plan lock taken");
	phg_buf_init(&b, 64 * 1024);
	phg_store_schema_sql(&b, e->schema_q);
	eqb(e, &b, schema_ready);
}

static void take_lock(engine_t *e)
{
	char cls[32];
	const char *p[2] = {cls, e->plan->name};

	phg_pgq_init(&e->ctlq, &e->ctl);
	snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
	/* on `work`: the session that writes the state holds the lock, so
	 * losing it (fatal for the run anyway) is the only way to lose the lock */
	if (phg_pg_query(&e->work, "SELECT pg_try_advisory_lock($1::int, hashtext($2))", 2, p,
	                 lock_taken, e) != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_set(&tmp, PHG_ECONNECT, "the database connection is not usable");
		fatal(e, PHG_EXIT_RUNTIME, &tmp);
	}
}

static void work_connected(engine_t *e)
{
	phg_log(PHG_LOG_DEBUG, &e->log, "connected (work pid %d, ctl pid %d)", e->work.backend_pid,
	        e->ctl.backend_pid);
	take_lock(e);
}

static void ctl_connected(engine_t *e)
{
	connect_pg(e, &e->work, work_connected);
}

/* ---- rollback ---- */

static void rollback_done(engine_t *e)
{
	ctx_phase(e, -1, -1);
	if (e->rb_lo < 0) {
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: every phase reverted");
		set_state(e, LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back", exit_ok);
	} else {
		char note[256];

		snprintf(note, sizeof(note), "rolled back to phase \"%s\"",
		         e->plan->phases[e->rb_lo].name);
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: %s", note);
		set_state(e, LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, exit_ok);
	}
}

static void rollback_go(engine_t *e)
{
	e->pi = (int)e->plan->nphases - 1;
	e->after_revert = rollback_done;
	drive_revert(e);
}

static void rollback_state_loaded(engine_t *e)
{
	phg_err_t err;
	int hi;

	if (load_rows(e, e->res) != 0) {
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of run %lld does not match plan \"%s\"",
		            e->run_id, e->plan->name);
		fatal(e, PHG_EXIT_RUNTIME, &err);
		return;
	}
	e->rb_lo = e->to_idx;
	for (hi = (int)e->nph - 1; hi > e->rb_lo; hi--)
		if (e->ph[hi].state != PHG_PHASE_PENDING && e->ph[hi].state != PHG_PHASE_ROLLED_BACK)
			break;
	ctx_phase(e, -1, -1);
	if (hi <= e->rb_lo) {
		phg_log(PHG_LOG_INFO, &e->log, "nothing to roll back%s",
		        e->rb_lo >= 0 ? " after that phase" : "");
		if (e->rb_lo < 0) {
			/* a run that never got past its start: it is over */
			snprintf(e->run_action, sizeof(e->run_action), "rollback");
			set_state(e, LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back (nothing applied)",
			          exit_ok);
			return;
		}
		exit_ok(e);
		return;
	}
	phg_err_clear(&err);
	if (precheck_revert(e, hi, e->rb_lo, &err) != 0) {
		report_err(e, PHG_LOG_ERROR, &err);
		exit_with(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "rolling back run %lld: phases \"%s\" down to %s%s%s", e->run_id,
	        e->plan->phases[hi].name, e->rb_lo >= 0 ? "after \"" : "the first",
	        e->rb_lo >= 0 ? e->plan->phases[e->rb_lo].name : "", e->rb_lo >= 0 ? "\"" : "");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	set_state(e, LVL_RUN, 0, 0, PHG_RUN_RUNNING, NULL, rollback_go);
}

static void rollback_have_run(engine_t *e)
{
	phg_buf_t b;

	ctx_phase(e, -1, -1);
	if (!last_run_read(e)) {
		phg_log(PHG_LOG_INFO, &e->log, "nothing to roll back: plan \"%s\" has no run on this "
		                               "database",
		        e->plan->name);
		exit_ok(e);
		return;
	}
	if (strcmp(e->run_checksum, e->plan->checksum) != 0) {
		drift(e, "was applied");
		return;
	}
	if (e->run_state == PHG_RUN_ROLLED_BACK) {
		phg_log(PHG_LOG_INFO, &e->log, "run %lld is already rolled back", e->run_id);
		exit_ok(e);
		return;
	}
	phg_buf_init(&b, 4096);
	load_state_sql(e, &b);
	eqb(e, &b, rollback_state_loaded);
}

/* ---- common set-up ---- */

static int engine_init(engine_t *e, engine_mode_t mode, phg_plan_t *plan,
                       const phg_run_opts_t *o)
{
	const char *url;
	char *q;

	memset(e, 0, sizeof(*e));
	e->mode = mode;
	e->plan = plan;
	e->o = o;
	e->started_ms = now_ms();
	e->pi = e->si = -1;
	if (uv_loop_init(&e->loop) != 0)
		return PHG_ENOMEM;
	if (plan != NULL) {
		e->st = &plan->settings;
		e->url_env = plan->url_env;
		e->log.plan = plan->name;
	} else {
		static phg_settings_t defaults = {
		    .lock_timeout_ms = 2000,
		    .lock_retries = 20,
		    .retry_backoff_ms = 200,
		    .retry_backoff_max_ms = 10000,
		    .connect_timeout_ms = 10000,
		    .connect_retries = 3,
		};

		defaults.state_schema = (char *)"phasegate";
		e->st = &defaults;
		e->url_env = o->db_env ? o->db_env : "DATABASE_URL";
	}
	url = getenv(e->url_env);
	e->conninfo = phg_strdup(url ? url : "");
	/* the state schema name is a validated identifier */
	q = phg_asprintf("\"%s\"", e->st->state_schema);
	e->schema_q = q;
	uv_signal_init(&e->loop, &e->sigint);
	uv_signal_init(&e->loop, &e->sigterm);
	e->sigint.data = e->sigterm.data = e;
	uv_signal_start(&e->sigint, on_signal, SIGINT);
	uv_signal_start(&e->sigterm, on_signal, SIGTERM);
	e->signals_open = 1;
	uv_timer_init(&e->loop, &e->retry_timer);
	e->retry_timer.data = e;
	e->retry_open = 1;
	if (phg_http_init(&e->loop, &e->http) == 0)
		e->http_open = 1;
	phg_exec_init(&e->loop, &e->x);
	e->x.data = e;
	e->x_open = 1;
	e->to_idx = plan ? (int)plan->nphases - 1 : -1;
	e->exit_code = PHG_EXIT_RUNTIME;
	return 0;
}

static int engine_run(engine_t *e)
{
	int rc;

	uv_run(&e->loop, UV_RUN_DEFAULT);
	ops_clear(e);
	rt_free(e);
	rc = uv_loop_close(&e->loop);
	if (rc != 0) {
		phg_log(PHG_LOG_ERROR, NULL, "internal error: the event loop still has handles (%s)",
		        uv_strerror(rc));
		if (e->exit_code == 0)
			e->exit_code = PHG_EXIT_RUNTIME;
	}
	free(e->conninfo);
	free(e->schema_q);
	return e->exit_code;
}

static int to_phase_index(phg_plan_t *plan, const char *name, int *out)
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

/* Every ${VAR} the run may need (check URLs and headers, http steps and
 * their reverts) must be set before anything is touched: exit 2 otherwise. */
static int expand_ok(const char *s, const char *where, const char *name)
{
	phg_buf_t b;
	phg_err_t err;
	int rc;

	if (s == NULL)
		return 0;
	phg_buf_init(&b, 1024 * 1024);
	phg_err_clear(&err);
	rc = phg_expand_env(s, &b, &err);
	phg_buf_free(&b);
	if (rc != 0) {
		phg_log(PHG_LOG_ERROR, NULL, "%s", err.msg);
		fprintf(stderr, "  DETAIL: In %s \"%s\". Nothing was changed.\n", where, name);
	}
	return rc;
}

static int env_preflight(const phg_plan_t *plan)
{
	int bad = 0;

	for (size_t i = 0; i < plan->nchecks; i++) {
		const phg_check_t *c = &plan->checks[i];

		bad |= expand_ok(c->url, "the url of check", c->name) != 0;
		for (size_t h = 0; h < c->headers.n; h++) {
			char where[256];

			snprintf(where, sizeof(where), "header \"%s\" of check", c->headers.v[h].key);
			bad |= expand_ok(c->headers.v[h].value, where, c->name) != 0;
		}
	}
	for (size_t p = 0; p < plan->nphases; p++) {
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			const phg_step_t *step = &plan->phases[p].steps[s];

			for (int dir = PHG_DIR_APPLY; dir <= PHG_DIR_REVERT; dir++) {
				phg_ops_t ops = {0};
				phg_err_t err;

				phg_err_clear(&err);
				phg_step_build(plan, step, (phg_dir_t)dir, 1, NULL, NULL, &ops, &err);
				for (size_t k = 0; k < ops.n; k++) {
					const phg_http_spec_t *h = ops.v[k].http;

					if (h == NULL)
						continue;
					bad |= expand_ok(h->url, "the url of the http step of phase",
					                 plan->phases[p].name) != 0;
					for (size_t j = 0; j < h->headers.n; j++) {
						char where[256];

						snprintf(where, sizeof(where),
						         "header \"%s\" of the http step of phase",
						         h->headers.v[j].key);
						bad |= expand_ok(h->headers.v[j].value, where,
						                 plan->phases[p].name) != 0;
					}
				}
				phg_ops_free(&ops);
			}
		}
	}
	return bad ? PHG_EINVAL : 0;
}

int phg_cmd_apply(phg_plan_t *plan, const phg_run_opts_t *o)
{
	engine_t e;
	int to = (int)plan->nphases - 1;

	if (o->to_phase != NULL && to_phase_index(plan, o->to_phase, &to) != 0)
		return PHG_EXIT_USAGE;
	if (env_preflight(plan) != 0)
		return PHG_EXIT_USAGE;
	if (engine_init(&e, MODE_APPLY, plan, o) != 0)
		return PHG_EXIT_RUNTIME;
	e.to_idx = to;
	connect_pg(&e, &e.ctl, ctl_connected);
	return engine_run(&e);
}

int phg_cmd_rollback(phg_plan_t *plan, const phg_run_opts_t *o)
{
	engine_t e;
	int to = -1;

	if (o->to_phase != NULL && to_phase_index(plan, o->to_phase, &to) != 0)
		return PHG_EXIT_USAGE;
	if (env_preflight(plan) != 0)
		return PHG_EXIT_USAGE;
	if (engine_init(&e, MODE_ROLLBACK, plan, o) != 0)
		return PHG_EXIT_RUNTIME;
	e.to_idx = to;
	connect_pg(&e, &e.ctl, ctl_connected);
	return engine_run(&e);
}

int phg_cmd_promote(phg_plan_t *plan, const char *from, const char *to)
{
	phg_run_opts_t o;
	phg_err_t err;
	json_t *st = NULL;
	const char *state, *sum;
	int rc;

	memset(&o, 0, sizeof(o));
	phg_err_clear(&err);
	if (phg_plan_select_env(plan, from, &err) != 0 || phg_plan_select_env(plan, to, &err) != 0) {
		fprintf(stderr, "phasegate: %s\n", err.msg);
		if (err.detail[0])
			fprintf(stderr, "DETAIL: %s\n", err.detail);
		return PHG_EXIT_USAGE;
	}
	phg_plan_select_env(plan, from, &err);
	o.env = from;
	rc = phg_status_json(plan, &o, &st);
	if (rc != 0 || st == NULL) {
		phg_log(PHG_LOG_ERROR, NULL, "cannot read the state of environment \"%s\"", from);
		json_decref(st);
		return rc ? rc : PHG_EXIT_RUNTIME;
	}
	state = json_string_value(json_object_get(st, "state"));
	sum = json_string_value(json_object_get(st, "checksum"));
	if (strcmp(state, "completed") != 0 || strcmp(sum, plan->checksum) != 0) {
		json_t *id = json_object_get(st, "run_id");

		phg_log(PHG_LOG_ERROR, NULL, "promotion of plan \"%s\" from \"%s\" to \"%s\" refused",
		        plan->name, from, to);
		if (!json_is_integer(id))
			fprintf(stderr, "  DETAIL: Environment \"%s\" has no run of this plan.\n", from);
		else if (strcmp(sum, plan->checksum) != 0)
			fprintf(stderr,
			        "  DETAIL: The last run in \"%s\" (run %lld, %s) was of checksum %s; this "
			        "file has %s.\n",
			        from, (long long)json_integer_value(id), state, sum, plan->checksum);
		else
			fprintf(stderr,
			        "  DETAIL: The last run in \"%s\" (run %lld) is %s, not completed.\n", from,
			        (long long)json_integer_value(id), state);
		fprintf(stderr, "  HINT: Apply this exact plan file to \"%s\" first.\n", from);
		json_decref(st);
		return PHG_EXIT_PROMOTE_REFUSED;
	}
	phg_log(PHG_LOG_INFO, NULL, "environment \"%s\" completed run %lld of checksum %s: promoting to \"%s\"",
	        from, (long long)json_integer_value(json_object_get(st, "run_id")), sum, to);
	json_decref(st);
	phg_plan_select_env(plan, to, &err);
	o.env = to;
	return phg_cmd_apply(plan, &o);
}
