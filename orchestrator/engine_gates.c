/*
 * engine_gates.c - an engine's gates around a phase: the backup before its
 * steps (pg_dump, verified, recorded), the watch while they run (a failure
 * stops them at a safe point), the verify after them; a failed gate hands
 * over to on_failure.
 */
#include "engine_int.h"
#include "throttle.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const phg_check_t **checks_of(engine_t *e, const phg_strv_t *names);
static void gate_probe(phg_gate_t *g, const phg_probe_t *p);
static void watch_closed(phg_gate_t *g);
static void watch_done(phg_gate_t *g, int status, const phg_err_t *err);
static void verify_closed(phg_gate_t *g);
static void verify_done(phg_gate_t *g, int status, const phg_err_t *err);
static void backup_recorded(engine_t *e);
static void backup_cb(phg_backup_job_t *job, int status, const phg_backup_result_t *res,
                      const phg_err_t *err, void *arg);

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

	/* what the application's health checks feel counts in the latency budget */
	if (g == &e->watch && p->ok && e->act == ACT_STEP)
		phg_throttle_watch(e->x.thr, p->latency_ms);
	json_object_set_new(d, "gate", json_string(g == &e->watch ? "watch" : "verify"));
	json_object_set_new(d, "check", json_string(p->check));
	json_object_set_new(d, "ok", json_boolean(p->ok));
	json_object_set_new(d, "status", json_integer(p->status));
	json_object_set_new(d, "latency_ms", json_integer((json_int_t)p->latency_ms));
	json_object_set_new(d, "reason", json_string(p->reason ? p->reason : ""));
	json_object_set_new(d, "successes", json_integer((json_int_t)p->successes));
	json_object_set_new(d, "failures", json_integer((json_int_t)p->failures));
	if (g == &e->verify)
		json_object_set_new(d, "soak_left_ms", json_integer((json_int_t)p->soak_left_ms));
	text = json_dumps(d, JSON_COMPACT);
	snprintf(msg, sizeof(msg), "%s check \"%s\": %s (HTTP %ld, %" PRIu64 " ms)%s%s",
	         g == &e->watch ? "watch" : "verify", p->check, p->ok ? "pass" : "FAIL", p->status,
	         p->latency_ms, p->ok ? "" : ": ", p->ok ? "" : p->reason);
	phg_eng_event(e, "probe", msg, text);
	free(text);
	json_decref(d);
	/* a terminal's live line: the verify gate's way to its verdict (a watch
	 * gate runs beside the steps, whose line it leaves alone) */
	if (g == &e->verify) {
		const phg_check_t *c = phg_plan_find_check(e->plan, p->check);
		char soak[48] = "";

		if (p->ok) {
			if (p->soak_left_ms > 0)
				snprintf(soak, sizeof(soak), ", soak %.1f s left",
				         (double)p->soak_left_ms / 1000.0);
			phg_log_status(PHG_TONE_OK, "verify gate: check \"%s\" passes %" PRIu64 "/%" PRIu64
			               " in a row (HTTP %ld, %" PRIu64 " ms)%s",
			               p->check, (uint64_t)p->successes, c ? c->successes : 0, p->status,
			               p->latency_ms, soak);
		} else {
			phg_log_status(PHG_TONE_FAIL, "verify gate: check \"%s\" fails %" PRIu64 "/%" PRIu64
			               " in a row: %s",
			               p->check, (uint64_t)p->failures, c ? c->failures : 0,
			               p->reason ? p->reason : "");
		}
	}
}

static void watch_closed(phg_gate_t *g)
{
	engine_t *e = g->data;
	ek_t k = e->after_gate_stop;

	e->watch_on = 0;
	e->after_gate_stop = NULL;
	if (k != NULL && !e->shutting_down) {
		phg_eng_act(e, ACT_IDLE);
		k(e);
	}
}

/* Stop the phase's watch (if any), then @k. */
void phg_eng_watch_stop(engine_t *e, ek_t k)
{
	if (!e->watch_on) {
		k(e);
		return;
	}
	phg_eng_act(e, ACT_WATCH_STOP);
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
	phg_eng_ctx(e, e->watch_phase, -1);
	phg_log(PHG_LOG_WARN, &e->log, "%s: stopping the phase at a safe point", e->gate_err.msg);
	if (e->backup != NULL) {
		phg_backup_cancel(e->backup);
		e->backup = NULL;
		phg_eng_act(e, ACT_IDLE); /* the backup is abandoned */
		phg_eng_gate_failed(e);
	} else if (e->verify_on) {
		/* verify_done/closed will not run: handle it here */
		e->verify_on = 0;
		phg_gate_stop(&e->verify, NULL);
		phg_eng_act(e, ACT_IDLE); /* the verify is abandoned */
		phg_eng_gate_failed(e);
	} else if (e->x.st != PHG_X_IDLE && e->x.st != PHG_X_DONE && e->work.state == PHG_PG_BUSY &&
	           e->x.next < e->ops.n && e->ops.v[e->x.next].kind != PHG_OP_BACKFILL) {
		/* a long statement: cancel it (a backfill stops between batches) */
		phg_log(PHG_LOG_WARN, &e->log, "cancelling the running statement");
		phg_pg_cancel(&e->work);
	}
}

int phg_eng_watch_start(engine_t *e, int pi)
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
	rc = phg_gate_start(&e->watch, e->loop, e->http, PHG_GATE_WATCH, v, ph->watch.n, watch_done,
	                    &err);
	free(v);
	if (rc != 0) {
		e->gate_err = err;
		return rc;
	}
	e->watch_on = 1;
	e->watch_phase = pi;
	e->watch_failed = 0;
	phg_eng_ctx(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "watching %zu check(s) while the phase runs", ph->watch.n);
	return 0;
}

static void verify_closed(phg_gate_t *g)
{
	engine_t *e = g->data;

	if (!e->verify_on)
		return; /* abandoned when the watch failed: phg_eng_gate_failed() took over */
	e->verify_on = 0;
	if (e->gate_timer_open)
		uv_timer_stop(&e->gate_timer);
	if (e->shutting_down)
		return;
	phg_eng_act(e, ACT_IDLE);
	if (e->verify_status == PHG_EINTERRUPTED) {
		/* SIGINT/SIGTERM: the gate ends at once; it is probed again on resume */
		phg_eng_interrupt(e);
		return;
	}
	if (e->verify_status == 0) {
		phg_fault("gate:%s:verify-passed", e->plan->phases[e->pi].name);
		e->ph[e->pi].verified = 1;
		phg_eng_reconcile(e);
	} else {
		phg_eng_gate_failed(e);
	}
}

static void verify_done(phg_gate_t *g, int status, const phg_err_t *err)
{
	engine_t *e = g->data;

	e->verify_status = status;
	e->verify_stopping = 1;
	phg_log_status_clear();
	phg_eng_ctx(e, e->pi, -1);
	if (status == 0) {
		phg_log(PHG_LOG_INFO, &e->log, "verify gate passed");
		phg_eng_event_json(e, "gate_passed", "verify gate passed",
		                   json_pack("{s:s}", "gate", "verify"));
	} else {
		phg_err_clear(&e->gate_err);
		phg_err_copy(&e->gate_err, err);
		if (e->gate_err.code == 0)
			phg_err_set(&e->gate_err, PHG_EGATE, "verify gate failed");
	}
	phg_gate_stop(&e->verify, verify_closed);
}

/* The gate had no verdict within gate_timeout: a check flapping between
 * answers never reaches `successes` nor `failures` in a row. */
static void gate_deadline(uv_timer_t *t)
{
	engine_t *e = t->data;

	if (!e->verify_on || e->verify_stopping)
		return;
	e->verify_stopping = 1;
	phg_log_status_clear();
	phg_eng_ctx(e, e->pi, -1);
	phg_err_clear(&e->gate_err);
	phg_err_set(&e->gate_err, PHG_EGATE, "verify gate: no verdict within gate_timeout (%.0f s)",
	            (double)e->st->gate_timeout_ms / 1000.0);
	phg_err_detail(&e->gate_err, "No check reached its successes (or failures) in a row: a check "
	                             "that flaps between answers never decides.");
	phg_err_hint(&e->gate_err, "Look at the checks' answers (`phasegate events`), or raise "
	                           "settings.gate_timeout.");
	e->verify_status = PHG_EGATE;
	phg_gate_stop(&e->verify, verify_closed);
}

void phg_eng_verify_interrupt(engine_t *e)
{
	if (!e->verify_on || e->verify_stopping)
		return;
	e->verify_stopping = 1;
	phg_log_status_clear();
	phg_log(PHG_LOG_WARN, &e->log, "the verify gate is ended by the stop request; it runs again "
	                               "when apply resumes");
	e->verify_status = PHG_EINTERRUPTED;
	phg_gate_stop(&e->verify, verify_closed);
}

void phg_eng_verify_start(engine_t *e, int pi)
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
	phg_eng_ctx(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "verify gate: %zu check(s)", ph->verify.n);
	rc = phg_gate_start(&e->verify, e->loop, e->http, PHG_GATE_VERIFY, v, ph->verify.n,
	                    verify_done, &err);
	free(v);
	if (rc != 0) {
		e->gate_err = err;
		phg_eng_gate_failed(e);
		return;
	}
	e->verify_on = 1;
	e->verify_status = 0;
	e->verify_stopping = 0;
	if (e->gate_timer_open)
		uv_timer_start(&e->gate_timer, gate_deadline, e->st->gate_timeout_ms, 0);
	phg_eng_act(e, ACT_VERIFY);
}

static void backup_recorded(engine_t *e)
{
	phg_fault("gate:%s:backup-recorded", e->plan->phases[e->pi].name);
	e->ph[e->pi].backed_up = 1;
	phg_eng_act(e, ACT_IDLE);
	phg_eng_reconcile(e);
}

static void backup_cb(phg_backup_job_t *job, int status, const phg_backup_result_t *res,
                      const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	const phg_phase_t *ph = &e->plan->phases[e->pi];
	phg_buf_t b;
	char *l_path, *l_phase, *l_sum;

	e->backup = NULL;
	phg_eng_ctx(e, e->pi, -1);
	if (status != 0) {
		phg_err_clear(&e->gate_err);
		phg_err_copy(&e->gate_err, err);
		if (e->gate_err.code == 0)
			phg_err_set(&e->gate_err, PHG_EGATE, "backup failed");
		phg_backup_free(job);
		phg_log(PHG_LOG_ERROR, &e->log, "backup gate failed: no step of the phase runs");
		phg_eng_gate_failed(e);
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
		phg_eng_event_json(e, "backup", msg,
		                   json_pack("{s:s,s:I,s:s,s:I,s:b}", "path", res->path, "size",
		                             (json_int_t)res->size, "sha256", res->sha256, "duration_ms",
		                             (json_int_t)res->duration_ms, "whole_database",
		                             e->plan->backup.scope == PHG_BACKUP_SCOPE_DATABASE));
	}
	l_path = phg_eng_lit(e, res->path);
	l_phase = phg_eng_lit(e, ph->name);
	l_sum = phg_eng_lit(e, res->sha256);
	phg_buf_init(&b, 64 * 1024);
	phg_store_backup_sql(&b, e->schema_q, e->run_id, l_phase, l_path,
	                     e->plan->backup.scope == PHG_BACKUP_SCOPE_DATABASE, res->size, l_sum,
	                     res->duration_ms);
	free(l_path);
	free(l_phase);
	free(l_sum);
	phg_backup_free(job);
	phg_eng_queryb(e, &b, backup_recorded);
}

void phg_eng_backup_start(engine_t *e, int pi)
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
	phg_eng_ctx(e, pi, -1);
	phg_log(PHG_LOG_INFO, &e->log, "backup gate: pg_dump of %s into %s",
	        tables.n > 0 ? "the tables the phase touches" : "the whole database",
	        e->plan->backup.dir);
	rc = phg_backup_start(e->loop, &o, backup_cb, e, &e->backup, &err);
	free(stem);
	phg_strv_clear(&tables);
	if (rc != 0) {
		e->backup = NULL;
		e->gate_err = err;
		phg_eng_gate_failed(e);
		return;
	}
	phg_eng_act(e, ACT_BACKUP);
}

void phg_eng_gate_failed(engine_t *e)
{
	e->failed_phase = e->pi;
	phg_eng_ctx(e, e->pi, -1);
	e->step_err = e->gate_err;
	if (e->step_err.code == 0)
		phg_err_set(&e->step_err, PHG_EGATE, "gate failed");
	e->failed_status = PHG_EGATE;
	phg_eng_report(e, PHG_LOG_ERROR, &e->step_err);
	phg_eng_event_json(e, "gate_failed", e->step_err.msg, phg_eng_err_json(&e->step_err));
	phg_eng_fail(e, e->pi, -1);
}
