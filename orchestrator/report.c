/*
 * report.c - `status` and `history`: read-only views of the state schema.
 *
 * One connection, no lock: a status read never waits for a running apply.
 * A run recorded as `running` whose plan lock nobody holds was killed; it is
 * shown as `interrupted`.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "buf.h"
#include "engine.h"
#include "log.h"
#include "pg.h"
#include "report_html.h"
#include "step.h"
#include "store.h"

typedef struct report_s report_t;
typedef void (*rk_t)(report_t *r, PGresult *res);

struct report_s {
	uv_loop_t loop;
	phg_pg_t pg;
	int pg_open;
	uv_signal_t sigint;
	const phg_plan_t *plan;
	const phg_run_opts_t *o;
	const char *schema;
	char *schema_q;
	int exit_code;
	rk_t k;
	json_t *out; /* status object / history array being built */
	long long run_id;
	int history;  /* 0 status, 1 history, 2 pause, 3 resume, 4 the last run's record,
	               * 5 events */
	uv_timer_t poll;  /* events --follow */
	long long last_event;
	int nevents;
	int quiet_polls; /* events --follow: polls with nothing new since the run ended */
	int last_look;   /* events --follow: the lock is free; one more poll, then the end */
	json_t **keep; /* status: hand the object to the caller instead of printing */
	const char *url_env; /* the variable the database comes from */
	int interrupted;     /* the run shows as interrupted: so do its running parts */
};

static void report_end(report_t *r, int code);

/* A failed connection, named like apply names it: what, and from where. */
static void report_connect_failed(report_t *r, int status, const phg_err_t *err)
{
	phg_err_t e;

	phg_err_clear(&e);
	phg_err_copy(&e, err);
	if (e.code == 0)
		phg_err_set(&e, status, "cannot connect to the database");
	phg_err_hint(&e, "The database comes from $%s (a libpq URI or conninfo), and the PG* "
	                 "variables as in psql.",
	             r->url_env);
	phg_log_err(PHG_LOG_ERROR, NULL, &e);
	report_end(r, phg_pg_connect_failure(status, &e) == PHG_CONN_INVALID ? PHG_EXIT_USAGE
	                                                                     : PHG_EXIT_RUNTIME);
}

static void report_closed(phg_pg_t *pg)
{
	report_t *r = pg->data;

	r->pg_open = 0;
}

static void report_sig_closed(uv_handle_t *h)
{
	(void)h;
}

static void report_end(report_t *r, int code)
{
	r->exit_code = code;
	if (r->pg_open)
		phg_pg_close(&r->pg, report_closed);
	if (!uv_is_closing((uv_handle_t *)&r->sigint))
		uv_close((uv_handle_t *)&r->sigint, report_sig_closed);
	if (!uv_is_closing((uv_handle_t *)&r->poll))
		uv_close((uv_handle_t *)&r->poll, report_sig_closed);
}

static void report_cb(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	report_t *r = arg;

	(void)pg;
	if (status != 0) {
		phg_log_err(PHG_LOG_ERROR, NULL, err);
		report_end(r, PHG_EXIT_RUNTIME);
		return;
	}
	r->k(r, res);
}

static void rq(report_t *r, const char *sql, int np, const char *const *p, rk_t k)
{
	r->k = k;
	if (phg_pg_query(&r->pg, sql, np, p, report_cb, r) != 0)
		report_end(r, PHG_EXIT_RUNTIME);
}

/* events and report: the run asked for is not there (exit 1) */
static void no_such_run(report_t *r)
{
	if (r->o->run > 0)
		phg_log(PHG_LOG_ERROR, NULL, "plan \"%s\" has no run %lld on this database",
		        r->plan->name, r->o->run);
	else
		phg_log(PHG_LOG_ERROR, NULL, "plan \"%s\" has never run on this database",
		        r->plan->name);
	report_end(r, PHG_EXIT_RUNTIME);
}

static json_t *jstr_or_null(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}


/* ---- status ---- */

static void status_print(report_t *r)
{
	json_t *o = r->out;

	if (r->keep != NULL) {
		*r->keep = json_incref(o);
	} else if (r->o->json) {
		char *s;

		/* an attestation for promote --attestation: signed with the key */
		if (phg_attest_sign(o) != 0)
			phg_log(PHG_LOG_WARN, NULL, "cannot sign the status with PHASEGATE_ATTEST_KEY");
		s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

		printf("%s\n", s);
		free(s);
	} else {
		size_t i;
		json_t *ph;

		printf("plan:     %s\n", json_string_value(json_object_get(o, "plan")));
		printf("checksum: %s\n", json_string_value(json_object_get(o, "checksum")));
		if (json_is_true(json_object_get(o, "drift")) &&
		    json_is_null(json_object_get(o, "file_checksum")))
			printf("          (the plan file is gone; shown: the plan as the run recorded it)\n");
		else if (json_is_true(json_object_get(o, "drift")))
			printf("          (the plan file now has %s%s)\n",
			       json_string_value(json_object_get(o, "file_checksum")),
			       r->o->file_plan ? "; shown: the plan as the run recorded it" : "");
		if (json_string_length(json_object_get(o, "env")) > 0)
			printf("env:      %s\n", json_string_value(json_object_get(o, "env")));
		printf("state:    %s", json_string_value(json_object_get(o, "state")));
		if (json_is_integer(json_object_get(o, "run_id")))
			printf(" (run %lld, %s)", (long long)json_integer_value(json_object_get(o, "run_id")),
			       json_string_value(json_object_get(o, "action")));
		printf("\n");
		if (json_is_string(json_object_get(o, "target")))
			printf("target:   %s\n", json_string_value(json_object_get(o, "target")));
		if (json_is_object(json_object_get(o, "paused")))
			printf("paused:   since %s by %s (`phasegate resume` goes on)\n",
			       json_string_value(json_object_get(json_object_get(o, "paused"), "since")),
			       json_string_value(json_object_get(json_object_get(o, "paused"), "by")));
		if (json_is_object(json_object_get(o, "held")))
			printf("held:     %s, since %s (it goes on by itself once back under)\n",
			       json_string_value(json_object_get(json_object_get(o, "held"), "why")),
			       json_string_value(json_object_get(json_object_get(o, "held"), "since")));
		if (json_is_object(json_object_get(o, "throttle"))) {
			json_t *t = json_object_get(o, "throttle");

			if (json_integer_value(json_object_get(t, "sleep_ms")) > 0)
				printf("throttle: sleeping %lld ms between batches of at most %lld rows (latency "
				       "budget: probe p99 %.2f ms, budget %.2f ms)\n",
				       (long long)json_integer_value(json_object_get(t, "sleep_ms")),
				       (long long)json_integer_value(json_object_get(t, "batch_cap")),
				       json_number_value(json_object_get(t, "p99_ms")),
				       json_number_value(json_object_get(t, "budget_ms")));
			else
				printf("throttle: none (latency budget %.2f ms, probe p99 %.2f ms)\n",
				       json_number_value(json_object_get(t, "budget_ms")),
				       json_number_value(json_object_get(t, "p99_ms")));
		}
		if (json_integer_value(json_object_get(o, "finalize_pending")) > 0)
			printf("finalize: %lld step(s) keep what they dropped until `phasegate finalize` "
			       "(rollback restores everything until then)\n",
			       (long long)json_integer_value(json_object_get(o, "finalize_pending")));
		if (json_is_string(json_object_get(o, "note")))
			printf("note:     %s\n", json_string_value(json_object_get(o, "note")));
		if (json_is_string(json_object_get(o, "error")))
			printf("error:    %s\n", json_string_value(json_object_get(o, "error")));
		{
			const char *name;
			json_t *c;

			json_object_foreach(json_object_get(o, "checks"), name, c) {
				printf("check:    %-16s last %s: %s, HTTP %lld, %lld ms%s%s\n", name,
				       json_string_value(json_object_get(c, "at")),
				       json_is_true(json_object_get(c, "ok")) ? "pass" : "FAIL",
				       (long long)json_integer_value(json_object_get(c, "status")),
				       (long long)json_integer_value(json_object_get(c, "latency_ms")),
				       json_is_true(json_object_get(c, "ok")) ? "" : ": ",
				       json_is_true(json_object_get(c, "ok"))
				           ? ""
				           : json_string_value(json_object_get(c, "reason")));
			}
		}
		printf("phases:\n");
		json_array_foreach(json_object_get(o, "phases"), i, ph) {
			json_t *st = json_object_get(ph, "started_at");
			json_t *fi = json_object_get(ph, "finished_at");
			size_t j;
			json_t *step;

			printf("  %zu. %-24s %-12s", i + 1, json_string_value(json_object_get(ph, "name")),
			       json_string_value(json_object_get(ph, "state")));
			if (json_is_string(st))
				printf(" started %s", json_string_value(st));
			if (json_is_string(fi))
				printf(" finished %s", json_string_value(fi));
			printf("\n");
			json_array_foreach(json_object_get(ph, "steps"), j, step) {
				json_t *rows = json_object_get(step, "rows");

				printf("       step %zu %-16s %s", j + 1,
				       json_string_value(json_object_get(step, "kind")),
				       json_string_value(json_object_get(step, "state")));
				if (json_is_integer(rows) && json_integer_value(rows) > 0)
					printf(" (%lld rows backfilled)", (long long)json_integer_value(rows));
				printf("\n");
			}
		}
	}
	report_end(r, PHG_EXIT_OK);
}

static void status_checks(report_t *r, PGresult *res)
{
	json_t *checks = json_object();
	json_error_t jerr;

	for (int i = 0; i < PQntuples(res); i++) {
		json_t *d = json_loads(PQgetvalue(res, i, 1), 0, &jerr);

		if (d == NULL)
			continue;
		json_object_set_new(d, "at", jstr_or_null(res, i, 2));
		json_object_set_new(checks, PQgetvalue(res, i, 0), d);
	}
	json_object_set_new(r->out, "checks", checks);
	status_print(r);
}

static void status_phases(report_t *r, PGresult *res)
{
	json_t *phases = json_object_get(r->out, "phases");
	int n = PQntuples(res);

	for (int i = 0; i < n; i++) {
		size_t pi = (size_t)phg_db_num(PQgetvalue(res, i, 0), 0, INT_MAX, (long long)INT_MAX, NULL);
		json_t *ph = json_array_get(phases, pi);
		json_t *steps;
		json_t *step;

		if (ph == NULL)
			continue;
		/* a phase is never running while its run is interrupted */
		json_object_set_new(ph, "state",
		                    json_string(r->interrupted && strcmp(PQgetvalue(res, i, 1), "running") == 0
		                                    ? "interrupted"
		                                    : PQgetvalue(res, i, 1)));
		json_object_set_new(ph, "started_at", jstr_or_null(res, i, 2));
		json_object_set_new(ph, "finished_at", jstr_or_null(res, i, 3));
		if (PQgetisnull(res, i, 4))
			continue;
		steps = json_object_get(ph, "steps");
		step = json_array_get(steps, (size_t)phg_db_num(PQgetvalue(res, i, 4), 0, INT_MAX, (long long)INT_MAX, NULL));
		if (step == NULL)
			continue;
		json_object_set_new(step, "state",
		                    json_string(r->interrupted && strcmp(PQgetvalue(res, i, 5), "running") == 0
		                                    ? "interrupted"
		                                    : PQgetvalue(res, i, 5)));
		json_object_set_new(step, "rows", strcmp(PQgetvalue(res, i, 8), "backfill") == 0
		                                      ? json_integer(phg_db_num(PQgetvalue(res, i, 6),
		                                                                LLONG_MIN, LLONG_MAX, 0, NULL))
		                                      : json_null());
		json_object_set_new(step, "updated_at", jstr_or_null(res, i, 7));
	}
	/* a completed run whose irreversible drops wait for `phasegate finalize`
	 * (0 otherwise, and before the first run: the same shape always) */
	if (strcmp(json_string_value(json_object_get(r->out, "state")), "completed") == 0) {
		size_t i, j, pending = 0;
		json_t *ph, *step;

		json_array_foreach(json_object_get(r->out, "phases"), i, ph) {
			json_array_foreach(json_object_get(ph, "steps"), j, step) {
				const phg_step_kind_t *k =
				    phg_step_kind_find(json_string_value(json_object_get(step, "kind")));

				pending += k != NULL && k->final_irreversible &&
				           strcmp(json_string_value(json_object_get(step, "state")),
				                  "applied") == 0;
			}
		}
		json_object_set_new(r->out, "finalize_pending", json_integer((json_int_t)pending));
	}
	{
		phg_buf_t b;

		phg_buf_init(&b, 4096);
		phg_store_status_checks_sql(&b, r->schema_q, r->run_id);
		rq(r, b.data, 0, NULL, status_checks);
		phg_buf_free(&b);
	}
}

static void status_run(report_t *r, PGresult *res)
{
	phg_buf_t b;
	const char *state;

	if (PQntuples(res) == 0) {
		status_print(r);
		return;
	}
	r->run_id = phg_db_num(PQgetvalue(res, 0, 0), LLONG_MIN, LLONG_MAX, 0, NULL);
	state = PQgetvalue(res, 0, 2);
	if (strcmp(state, "running") == 0 && strcmp(PQgetvalue(res, 0, 8), "f") == 0)
		state = "interrupted"; /* recorded running, but no process holds its lock */
	r->interrupted = strcmp(state, "interrupted") == 0;
	json_object_set_new(r->out, "run_id", json_integer(r->run_id));
	json_object_set_new(r->out, "checksum", json_string(PQgetvalue(res, 0, 1)));
	json_object_set_new(r->out, "drift",
	                    json_boolean(!phg_plan_checksum_is(r->o->file_plan ? r->o->file_plan : r->plan,
	                                                       PQgetvalue(res, 0, 1))));
	json_object_set_new(r->out, "env", PQgetvalue(res, 0, 3)[0] == '\0'
	                                       ? json_null() /* recorded '' : no --env */
	                                       : json_string(PQgetvalue(res, 0, 3)));
	json_object_set_new(r->out, "state", json_string(state));
	json_object_set_new(r->out, "action", json_string(PQgetvalue(res, 0, 4)));
	json_object_set_new(r->out, "started_at", jstr_or_null(res, 0, 5));
	json_object_set_new(r->out, "finished_at", jstr_or_null(res, 0, 6));
	json_object_set_new(r->out, "note", jstr_or_null(res, 0, 7));
	json_object_set_new(r->out, "error", jstr_or_null(res, 0, 9));
	json_object_set_new(r->out, "locked", json_boolean(strcmp(PQgetvalue(res, 0, 8), "t") == 0));
	json_object_set_new(r->out, "paused",
	                    PQgetisnull(res, 0, 10)
	                        ? json_null()
	                        : json_pack("{s:s,s:s}", "since", PQgetvalue(res, 0, 10), "by",
	                                    PQgetisnull(res, 0, 11) ? "?" : PQgetvalue(res, 0, 11)));
	/* a hold of the running apply's own (replica lag); a stale one of a
	 * process that is gone says nothing */
	json_object_set_new(r->out, "held",
	                    PQgetisnull(res, 0, 12) || strcmp(PQgetvalue(res, 0, 8), "t") != 0
	                        ? json_null()
	                        : json_pack("{s:s,s:s}", "why", PQgetvalue(res, 0, 12), "since",
	                                    PQgetisnull(res, 0, 13) ? "?" : PQgetvalue(res, 0, 13)));
	json_object_set_new(r->out, "target", jstr_or_null(res, 0, 15));
	/* the latency budget's last change of pace, while the apply runs */
	if (!PQgetisnull(res, 0, 14) && strcmp(PQgetvalue(res, 0, 8), "t") == 0) {
		json_error_t jerr;
		json_t *t = json_loads(PQgetvalue(res, 0, 14), 0, &jerr);

		if (json_is_object(t))
			json_object_set_new(r->out, "throttle", t);
		else
			json_decref(t);
	}
	phg_buf_init(&b, 4096);
	phg_store_status_phases_sql(&b, r->schema_q, r->run_id);
	rq(r, b.data, 0, NULL, status_phases);
	phg_buf_free(&b);
}

static void status_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	char cls[32];
	const char *p[2] = {r->plan->name, cls};

	if (PQgetisnull(res, 0, 0)) {
		status_print(r); /* never run here: not_started */
		return;
	}
	snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
	phg_buf_init(&b, 4096);
	phg_store_status_run_sql(&b, r->schema_q);
	rq(r, b.data, 2, p, status_run);
	phg_buf_free(&b);
}

/* What a person calls the step: the label of its first op ("add column
 * \"c\" to \"t\""), built offline as `plan` does; else its kind. */
static const char *step_name(const phg_plan_t *plan, const phg_step_t *step)
{
	static char name[256];
	phg_ops_t ops = {0};
	phg_err_t err;

	phg_err_clear(&err);
	snprintf(name, sizeof(name), "%s", step->kind->name);
	if (phg_step_build(plan, step, PHG_DIR_APPLY, 0, NULL, NULL, &ops, &err) == 0 && ops.n > 0)
		snprintf(name, sizeof(name), "%s", ops.v[0].label);
	phg_ops_free(&ops);
	return name;
}

static void status_start(report_t *r)
{
	json_t *phases = json_array();
	const char *p[1] = {r->schema};

	r->out = json_object();
	json_object_set_new(r->out, "plan", json_string(r->plan->name));
	json_object_set_new(r->out, "checksum", json_string(r->plan->checksum));
	json_object_set_new(r->out, "file_checksum",
	                    r->o->file_plan == NULL ? json_string(r->plan->checksum)
	                    : r->o->file_plan->stand_in ? json_null()
	                                                : json_string(r->o->file_plan->checksum));
	/* one shape before and after the first run (docs/status-json.md) */
	json_object_set_new(r->out, "env", r->o->env ? json_string(r->o->env) : json_null());
	json_object_set_new(r->out, "state", json_string("not_started"));
	json_object_set_new(r->out, "run_id", json_null());
	json_object_set_new(r->out, "drift", json_false());
	json_object_set_new(r->out, "action", json_null());
	json_object_set_new(r->out, "started_at", json_null());
	json_object_set_new(r->out, "finished_at", json_null());
	json_object_set_new(r->out, "note", json_null());
	json_object_set_new(r->out, "error", json_null());
	json_object_set_new(r->out, "locked", json_false());
	json_object_set_new(r->out, "paused", json_null());
	json_object_set_new(r->out, "held", json_null());
	json_object_set_new(r->out, "target", json_null());
	for (size_t i = 0; i < r->plan->nphases; i++) {
		json_t *ph = json_object();
		json_t *steps = json_array();

		json_object_set_new(ph, "name", json_string(r->plan->phases[i].name));
		json_object_set_new(ph, "state", json_string("pending"));
		json_object_set_new(ph, "started_at", json_null());
		json_object_set_new(ph, "finished_at", json_null());
		for (size_t s = 0; s < r->plan->phases[i].nsteps; s++) {
			json_t *st = json_object();

			json_object_set_new(st, "index", json_integer((json_int_t)s + 1));
			json_object_set_new(st, "kind", json_string(r->plan->phases[i].steps[s].kind->name));
			json_object_set_new(st, "name", json_string(step_name(r->plan, &r->plan->phases[i].steps[s])));
			json_object_set_new(st, "state", json_string("pending"));
			json_object_set_new(st, "rows", json_null());
			json_object_set_new(st, "updated_at", json_null());
			json_array_append_new(steps, st);
		}
		json_object_set_new(ph, "steps", steps);
		json_array_append_new(phases, ph);
	}
	json_object_set_new(r->out, "phases", phases);
	json_object_set_new(r->out, "checks", json_object());
	json_object_set_new(r->out, "finalize_pending", json_integer(0));
	rq(r, PHG_STORE_EXISTS_SQL, 1, p, status_schema);
}

/* ---- history ---- */

/* history of a directory: the runs of its plans only */
static int history_keeps(const report_t *r, const char *plan)
{
	if (r->o->plans == NULL)
		return 1;
	for (size_t i = 0; i < r->o->plans->n; i++)
		if (strcmp(r->o->plans->v[i], plan) == 0)
			return 1;
	return 0;
}

static void history_rows(report_t *r, PGresult *res)
{
	int n = res ? PQntuples(res) : 0; /* NULL: no state schema, no runs */
	int shown = 0;

	for (int i = 0; i < n; i++) {
		json_t *o;

		if (!history_keeps(r, PQgetvalue(res, i, 1)))
			continue;
		shown++;
		o = json_object();
		json_object_set_new(o, "run_id", json_integer(phg_db_num(PQgetvalue(res, i, 0), LLONG_MIN, LLONG_MAX, 0, NULL)));
		json_object_set_new(o, "plan", json_string(PQgetvalue(res, i, 1)));
		json_object_set_new(o, "checksum", json_string(PQgetvalue(res, i, 2)));
		json_object_set_new(o, "env", PQgetvalue(res, i, 3)[0] == '\0'
		                                  ? json_null()
		                                  : json_string(PQgetvalue(res, i, 3)));
		json_object_set_new(o, "action", json_string(PQgetvalue(res, i, 4)));
		json_object_set_new(o, "state", json_string(PQgetvalue(res, i, 5)));
		json_object_set_new(o, "started_at", jstr_or_null(res, i, 6));
		json_object_set_new(o, "finished_at", jstr_or_null(res, i, 7));
		json_object_set_new(o, "who", jstr_or_null(res, i, 8));
		json_object_set_new(o, "host", jstr_or_null(res, i, 9));
		json_object_set_new(o, "phases_applied",
		                    json_integer(phg_db_num(PQgetvalue(res, i, 10), LLONG_MIN, LLONG_MAX, 0, NULL)));
		json_object_set_new(o, "phases", json_integer(phg_db_num(PQgetvalue(res, i, 11), LLONG_MIN, LLONG_MAX, 0, NULL)));
		json_object_set_new(o, "backups", json_integer(phg_db_num(PQgetvalue(res, i, 12), LLONG_MIN, LLONG_MAX, 0, NULL)));
		json_object_set_new(o, "note", jstr_or_null(res, i, 13));
		json_object_set_new(o, "error", jstr_or_null(res, i, 14));
		json_object_set_new(o, "target", jstr_or_null(res, i, 15));
		json_object_set_new(o, "promoted_from", jstr_or_null(res, i, 16));
		json_array_append_new(r->out, o);
	}
	if (r->o->json) {
		char *s = json_dumps(r->out, JSON_COMPACT | JSON_PRESERVE_ORDER);

		printf("%s\n", s);
		free(s);
	} else if (shown == 0) {
		printf("no runs recorded\n");
	} else {
		printf("%-5s %-28s %-12s %-9s %-12s %-20s %-20s %-7s %s\n", "RUN", "PLAN", "ENV", "ACTION",
		       "STATE", "STARTED", "FINISHED", "PHASES", "WHO");
		for (int i = 0; i < n; i++) {
			if (!history_keeps(r, PQgetvalue(res, i, 1)))
				continue;
			printf("%-5s %-28s %-12s %-9s %-12s %-20s %-20s %3s/%-3s %s@%s\n",
			       PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 3),
			       PQgetvalue(res, i, 4), PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
			       PQgetisnull(res, i, 7) ? "-" : PQgetvalue(res, i, 7), PQgetvalue(res, i, 10),
			       PQgetvalue(res, i, 11), PQgetvalue(res, i, 8), PQgetvalue(res, i, 9));
			printf("      checksum %s, %s backup(s)%s%s\n", PQgetvalue(res, i, 2),
			       PQgetvalue(res, i, 12), PQgetisnull(res, i, 14) ? "" : ", error: ",
			       PQgetisnull(res, i, 14) ? "" : PQgetvalue(res, i, 14));
			if (!PQgetisnull(res, i, 15))
				printf("      target: %s\n", PQgetvalue(res, i, 15));
			if (!PQgetisnull(res, i, 16))
				printf("      promoted from %s\n", PQgetvalue(res, i, 16));
		}
	}
	report_end(r, PHG_EXIT_OK);
}

static void history_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	const char *p[2] = {r->plan && r->o->plans == NULL ? r->plan->name : NULL, r->o->env};

	if (PQgetisnull(res, 0, 0)) {
		history_rows(r, NULL);
		return;
	}
	phg_buf_init(&b, 4096);
	phg_store_history_sql(&b, r->schema_q);
	rq(r, b.data, 2, p, history_rows);
	phg_buf_free(&b);
}

static void history_start(report_t *r)
{
	const char *p[1] = {r->schema};

	r->out = json_array();
	rq(r, PHG_STORE_EXISTS_SQL, 1, p, history_schema);
}

/* ---- common ---- */

/* ---- pause / resume ---- */

static void pause_done(report_t *r, PGresult *res)
{
	int pause = r->history == 2;

	if (PQntuples(res) == 0) {
		phg_log(PHG_LOG_ERROR, NULL, "plan \"%s\" has no unfinished run to %s on this database",
		        r->plan->name, pause ? "pause" : "resume");
		phg_log_note("HINT", "`phasegate status` shows its last run.");
		report_end(r, PHG_EXIT_RUNTIME);
		return;
	}
	phg_log(PHG_LOG_INFO, NULL, "%s run %s of plan \"%s\" (%s)%s", pause ? "paused" : "resumed",
	        PQgetvalue(res, 0, 0), r->plan->name, PQgetvalue(res, 0, 1),
	        pause ? ": a running apply stops after its current batch and waits, keeping its lock"
	              : "");
	report_end(r, PHG_EXIT_OK);
}

static void pause_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	char user[128], host[256], by[400];
	const char *p[4];

	if (PQgetisnull(res, 0, 0)) {
		no_such_run(r);
		return;
	}
	phg_whoami(user, sizeof(user), host, sizeof(host));
	snprintf(by, sizeof(by), "%s@%s", user, host);
	p[0] = r->plan->name;
	p[1] = r->history == 2 ? "true" : "false";
	p[2] = by;
	p[3] = r->o->env;
	phg_buf_init(&b, 4096);
	phg_store_pause_sql(&b, r->schema_q);
	rq(r, b.data, 4, p, pause_done);
	phg_buf_free(&b);
}

/* ---- events ---- */


static void events_poll(report_t *r);

static void events_timer(uv_timer_t *t)
{
	events_poll(t->data);
}

static void event_print(report_t *r, PGresult *res, int i)
{
	const char *phase = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
	const char *step = PQgetisnull(res, i, 3) ? NULL : PQgetvalue(res, i, 3);

	if (r->o->json) {
		json_t *o = json_object(), *d = NULL;
		char *s;

		json_object_set_new(o, "ts", json_string(PQgetvalue(res, i, 1)));
		json_object_set_new(o, "type", json_string("event"));
		json_object_set_new(o, "plan", json_string(r->plan->name));
		json_object_set_new(o, "checksum", json_string(PQgetvalue(res, i, 7)));
		json_object_set_new(o, "run_id",
		                    json_integer(phg_db_num(PQgetvalue(res, i, 9), 1, LLONG_MAX, 0, NULL)));
		json_object_set_new(o, "env", PQgetvalue(res, i, 8)[0] ? json_string(PQgetvalue(res, i, 8))
		                                                       : json_null());
		json_object_set_new(o, "phase", phase ? json_string(phase) : json_null());
		json_object_set_new(o, "step", step ? json_integer(phg_db_num(step, 0, LLONG_MAX, 0, NULL))
		                                    : json_null());
		json_object_set_new(o, "kind", json_string(PQgetvalue(res, i, 4)));
		json_object_set_new(o, "message", json_string(PQgetvalue(res, i, 5)));
		if (!PQgetisnull(res, i, 6)) {
			json_error_t jerr;

			d = json_loads(PQgetvalue(res, i, 6), JSON_DECODE_ANY, &jerr);
		}
		json_object_set_new(o, "data", d ? d : json_null());
		json_object_set_new(o, "id",
		                    json_integer(phg_db_num(PQgetvalue(res, i, 0), 1, LLONG_MAX, 0, NULL)));
		s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
		json_decref(o);
	} else {
		char where[160] = "";

		if (phase != NULL)
			snprintf(where, sizeof(where), " [%s%s%s]", phase, step ? "/" : "", step ? step : "");
		printf("%s run %s%s %s: %s\n", PQgetvalue(res, i, 1), PQgetvalue(res, i, 9), where,
		       PQgetvalue(res, i, 4), PQgetvalue(res, i, 5));
	}
}

static void events_rows(report_t *r, PGresult *res)
{
	int n = PQntuples(res), got = 0;

	if (n == 0) {
		no_such_run(r);
		return;
	}
	/* the run followed stays the one found first, whatever starts later */
	r->run_id = phg_db_num(PQgetvalue(res, 0, 9), 1, LLONG_MAX, 0, NULL);
	for (int i = 0; i < n; i++) {
		if (PQgetisnull(res, i, 0))
			continue;
		event_print(r, res, i);
		r->last_event = phg_db_num(PQgetvalue(res, i, 0), 1, LLONG_MAX, 0, NULL);
		got++;
		r->nevents++;
	}
	fflush(stdout);
	if (n >= 500) {
		events_poll(r); /* more are waiting */
		return;
	}
	if (r->o->follow) {
		int running = strcmp(PQgetvalue(res, n - 1, 10), "running") == 0;
		int locked = strcmp(PQgetvalue(res, n - 1, 11), "t") == 0;

		/* A run's events are written on its second connection, so its
		 * last ones may commit after the transition that ends it, and
		 * even after the lock (held by the first) is let go: while its
		 * process holds the plan's lock, keep reading (a finished run:
		 * until 2 s pass with nothing new -- the lock may be a later
		 * run's); once the lock is free, read once more. */
		r->quiet_polls = got > 0 ? 0 : r->quiet_polls + 1;
		if (locked && (running || r->quiet_polls < 4)) {
			uv_timer_start(&r->poll, events_timer, 500, 0);
			return;
		}
		if (!locked && !r->last_look) {
			r->last_look = 1;
			uv_timer_start(&r->poll, events_timer, 300, 0);
			return;
		}
	}
	report_end(r, PHG_EXIT_OK);
}

static void events_poll(report_t *r)
{
	phg_buf_t b;
	char run[32], last[32], cls[32];
	const char *p[4] = {r->plan->name, NULL, last, cls};

	if (r->run_id > 0 || r->o->run > 0) {
		snprintf(run, sizeof(run), "%lld", r->run_id > 0 ? r->run_id : r->o->run);
		p[1] = run;
	}
	snprintf(last, sizeof(last), "%lld", r->last_event);
	snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
	phg_buf_init(&b, 4096);
	phg_store_events_sql(&b, r->schema_q);
	rq(r, b.data, 4, p, events_rows);
	phg_buf_free(&b);
}

static void events_schema(report_t *r, PGresult *res)
{
	if (PQgetisnull(res, 0, 0)) {
		no_such_run(r);
		return;
	}
	events_poll(r);
}

/* ---- report ---- */

static void report_doc(report_t *r, PGresult *res)
{
	json_error_t jerr;
	json_t *doc;
	char tmp[4096];
	FILE *f;
	int ok;

	if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
		no_such_run(r);
		return;
	}
	doc = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
	/* written beside the target, then renamed: never half a report */
	snprintf(tmp, sizeof(tmp), "%s.tmp", r->o->output);
	f = fopen(tmp, "w");
	if (f == NULL || doc == NULL) {
		phg_log(PHG_LOG_ERROR, NULL, "cannot write \"%s\": %s", tmp,
		        f == NULL ? strerror(errno) : jerr.text);
		if (f != NULL)
			fclose(f);
		json_decref(doc);
		report_end(r, PHG_EXIT_RUNTIME);
		return;
	}
	ok = phg_report_html(f, r->plan->name, doc) == 0;
	ok = (fclose(f) == 0) && ok;
	if (ok && rename(tmp, r->o->output) != 0)
		ok = 0;
	if (!ok) {
		phg_log(PHG_LOG_ERROR, NULL, "cannot write \"%s\": %s", r->o->output, strerror(errno));
		unlink(tmp);
		json_decref(doc);
		report_end(r, PHG_EXIT_RUNTIME);
		return;
	}
	printf("%s\n", r->o->output);
	phg_log(PHG_LOG_INFO, NULL, "report of run %.0f of plan \"%s\" (%zu events) written to %s",
	        json_number_value(json_object_get(json_object_get(doc, "run"), "id")), r->plan->name,
	        json_array_size(json_object_get(doc, "events")), r->o->output);
	json_decref(doc);
	report_end(r, PHG_EXIT_OK);
}

static void report_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	char run[32];
	const char *p[2] = {r->plan->name, NULL};

	if (PQgetisnull(res, 0, 0)) {
		no_such_run(r);
		return;
	}
	if (r->o->run > 0) {
		snprintf(run, sizeof(run), "%lld", r->o->run);
		p[1] = run;
	}
	phg_buf_init(&b, 8192);
	phg_store_report_sql(&b, r->schema_q);
	rq(r, b.data, 2, p, report_doc);
	phg_buf_free(&b);
}

/* ---- the last run's record: checksum and plan as applied ---- */

static void recorded_row(report_t *r, PGresult *res)
{
	if (PQntuples(res) > 0)
		*r->keep = json_pack("{s:I,s:s,s:s,s:o}", "run_id",
		                     (json_int_t)phg_db_num(PQgetvalue(res, 0, 0), 1, LLONG_MAX, 0, NULL),
		                     "checksum", PQgetvalue(res, 0, 1), "state", PQgetvalue(res, 0, 2),
		                     "plan_json", jstr_or_null(res, 0, 4));
	report_end(r, PHG_EXIT_OK);
}

static void dependents_rows(report_t *r, PGresult *res)
{
	*r->keep = json_array();
	for (int i = 0; i < PQntuples(res); i++)
		json_array_append_new(*r->keep,
		                      json_pack("{s:s,s:I,s:s}", "plan", PQgetvalue(res, i, 0), "run_id",
		                                (json_int_t)phg_db_num(PQgetvalue(res, i, 1), 1,
		                                                       LLONG_MAX, 0, NULL),
		                                "state", PQgetvalue(res, i, 2)));
	report_end(r, PHG_EXIT_OK);
}

static void dependents_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	const char *p[2] = {r->plan->name, r->o->env};

	if (PQgetisnull(res, 0, 0)) {
		report_end(r, PHG_EXIT_OK); /* nothing ever ran here */
		return;
	}
	phg_buf_init(&b, 64 * 1024);
	phg_store_dependents_sql(&b, r->schema_q);
	rq(r, b.data, 2, p, dependents_rows);
	phg_buf_free(&b);
}

static void recorded_schema(report_t *r, PGresult *res)
{
	phg_buf_t b;
	const char *p[1] = {r->plan->name};

	if (PQgetisnull(res, 0, 0)) {
		report_end(r, PHG_EXIT_OK); /* never run here */
		return;
	}
	phg_buf_init(&b, 64 * 1024);
	phg_store_last_run_sql(&b, r->schema_q);
	rq(r, b.data, 1, p, recorded_row);
	phg_buf_free(&b);
}

static void report_connected(phg_pg_t *pg, int status, const phg_err_t *err)
{
	report_t *r = pg->data;

	if (status != 0) {
		report_connect_failed(r, status, err);
		return;
	}
	if (r->history >= 2) {
		const char *p[1] = {r->schema};

		rq(r, PHG_STORE_EXISTS_SQL, 1, p,
		   r->history == 7   ? dependents_schema
		   : r->history == 6 ? report_schema
		   : r->history == 5 ? events_schema
		   : r->history == 4 ? recorded_schema
		                     : pause_schema);
	} else if (r->history) {
		history_start(r);
	} else {
		status_start(r);
	}
}

static void report_sigint(uv_signal_t *h, int signum)
{
	report_t *r = h->data;

	(void)signum;
	report_end(r, PHG_EXIT_INTERRUPTED);
}

static int report_run(const phg_plan_t *plan, const phg_run_opts_t *o, int history,
                      json_t **keep)
{
	report_t r;
	const char *env = plan ? plan->url_env : (o->db_env ? o->db_env : "DATABASE_URL");
	const char *url;
	phg_err_t err;
	phg_settings_t defaults;
	const phg_settings_t *st = &defaults;
	uint64_t timeout;
	int rc;

	phg_err_clear(&err);
	url = phg_target_url(plan, env, &err);
	if (url == NULL) {
		phg_log_err(PHG_LOG_ERROR, NULL, &err);
		return PHG_EXIT_USAGE;
	}
	/* no plan (history of every plan): the plan loader's defaults */
	phg_settings_defaults(&defaults);
	if (plan != NULL)
		st = &plan->settings;
	timeout = st->connect_timeout_ms;
	memset(&r, 0, sizeof(r));
	r.plan = plan;
	r.o = o;
	r.schema = phg_strdup(st->state_schema);
	r.schema_q = phg_asprintf("\"%s\"", r.schema);
	r.exit_code = -1;
	r.history = history;
	r.keep = keep;
	uv_loop_init(&r.loop);
	uv_signal_init(&r.loop, &r.sigint);
	r.sigint.data = &r;
	uv_signal_start(&r.sigint, report_sigint, SIGINT);
	uv_timer_init(&r.loop, &r.poll);
	r.poll.data = &r;
	phg_pg_init(&r.loop, &r.pg, "status");
	r.pg.data = &r;
	r.pg_open = 1;
	phg_err_clear(&err);
	r.url_env = env;
	if ((rc = phg_pg_connect(&r.pg, url, timeout, report_connected, &err)) != 0) {
		report_connect_failed(&r, rc, &err);
	}
	uv_run(&r.loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&r.loop);
	json_decref(r.out);
	free(r.schema_q);
	free((char *)r.schema);
	phg_settings_clear(&defaults);
	if (rc != 0)
		return PHG_EXIT_RUNTIME;
	return r.exit_code < 0 ? PHG_EXIT_RUNTIME : r.exit_code;
}

int phg_cmd_status(phg_plan_t *plan, const phg_run_opts_t *o)
{
	phg_plan_t *rec = NULL;
	phg_run_opts_t ro = *o;
	int rc = phg_plan_as_recorded(plan, o, "status", &rec);

	if (rc != 0)
		return rc;
	if (rec == NULL)
		return report_run(plan, o, 0, NULL);
	ro.file_plan = plan;
	rc = report_run(rec, &ro, 0, NULL);
	phg_plan_free(rec);
	return rc;
}

int phg_status_json(phg_plan_t *plan, const phg_run_opts_t *o, json_t **out)
{
	*out = NULL;
	return report_run(plan, o, 0, out);
}

int phg_dependents(const phg_plan_t *plan, const phg_run_opts_t *o, json_t **out)
{
	*out = NULL;
	return report_run(plan, o, 7, out);
}

int phg_last_run_record(const phg_plan_t *plan, const phg_run_opts_t *o, json_t **out)
{
	*out = NULL;
	return report_run(plan, o, 4, out);
}

int phg_cmd_report(phg_plan_t *plan, const phg_run_opts_t *o)
{
	return report_run(plan, o, 6, NULL);
}

int phg_cmd_events(phg_plan_t *plan, const phg_run_opts_t *o)
{
	return report_run(plan, o, 5, NULL);
}

int phg_cmd_history(phg_plan_t *plan, const phg_run_opts_t *o)
{
	return report_run(plan, o, 1, NULL);
}

int phg_cmd_pause(phg_plan_t *plan, const phg_run_opts_t *o, int pause)
{
	return report_run(plan, o, pause ? 2 : 3, NULL);
}
