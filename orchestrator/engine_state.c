/*
 * engine_state.c - an engine's run as recorded in the state schema:
 * the newest run of the plan, loading its phase and step rows into memory,
 * and creating a new run with its phases and steps in one transaction.
 */
#include "engine_int.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static void strv_from_json(phg_strv_t *v, const char *text);
static void who(char *user, size_t un, char *host, size_t hn);

void phg_eng_rt_free(engine_t *e)
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

void phg_eng_rt_alloc(engine_t *e)
{
	phg_eng_rt_free(e);
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
int phg_eng_state_int(const char *s, int *bad)
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
int phg_eng_load_rows(engine_t *e, PGresult *res)
{
	int n = PQntuples(res);
	int bad = 0;

	phg_eng_rt_alloc(e);
	for (int r = 0; r < n; r++) {
		int pi = phg_eng_state_int(PQgetvalue(res, r, 0), &bad);
		int si;
		step_rt_t *s;
		json_error_t jerr;

		if (bad || pi < 0 || (size_t)pi >= e->nph)
			return PHG_ESTATE;
		e->ph[pi].state = phg_phase_state_parse(PQgetvalue(res, r, 1));
		e->ph[pi].backed_up = strcmp(PQgetvalue(res, r, 13), "t") == 0;
		if (PQgetisnull(res, r, 2))
			continue;
		si = phg_eng_state_int(PQgetvalue(res, r, 2), &bad);
		if (bad || si < 0 || (size_t)si >= e->plan->phases[pi].nsteps)
			return PHG_ESTATE;
		s = &e->ph[pi].steps[si];
		s->state = phg_step_state_parse(PQgetvalue(res, r, 3));
		s->progress = phg_eng_state_int(PQgetvalue(res, r, 4), &bad);
		s->revert_progress = phg_eng_state_int(PQgetvalue(res, r, 5), &bad);
		s->final_progress = phg_eng_state_int(PQgetvalue(res, r, 6), &bad);
		s->op_started = PQgetisnull(res, r, 7) ? -1 : phg_eng_state_int(PQgetvalue(res, r, 7), &bad);
		s->bf_pass = phg_eng_state_int(PQgetvalue(res, r, 8), &bad);
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

void phg_eng_load_state_sql(engine_t *e, phg_buf_t *b)
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

void phg_eng_create_run(engine_t *e)
{
	phg_buf_t b;
	char user[128], host[256];
	char *l_plan = phg_eng_lit(e, e->plan->name), *l_sum = phg_eng_lit(e, e->plan->checksum);
	char *l_env = phg_eng_lit(e, e->o->env ? e->o->env : ""), *l_user, *l_host;

	snprintf(e->run_action, sizeof(e->run_action), "apply");
	who(user, sizeof(user), host, sizeof(host));
	l_user = phg_eng_lit(e, user);
	l_host = phg_eng_lit(e, host);
	phg_buf_init(&b, SQL_MAX);
	phg_buf_printf(&b,
	               "BEGIN; WITH r AS (INSERT INTO %s.runs (plan, checksum, env, action, state, who, "
	               "host, pid, version) VALUES (%s, %s, %s, 'apply', 'running', %s, %s, %d, '%s') "
	               "RETURNING id), p AS (INSERT INTO %s.phases (run_id, idx, name, checksum, state) "
	               "SELECT r.id, v.idx, v.name, v.sum, 'pending' FROM r, (VALUES ",
	               e->schema_q, l_plan, l_sum, l_env, l_user, l_host, (int)getpid(), PHG_VERSION,
	               e->schema_q);
	for (size_t p = 0; p < e->plan->nphases; p++) {
		char *n = phg_eng_lit(e, e->plan->phases[p].name), *c = phg_eng_lit(e, e->plan->phases[p].checksum);

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
	phg_eng_queryb(e, &b, phg_eng_run_created);
}

int phg_eng_last_run_read(engine_t *e)
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

void phg_eng_last_run_sql(engine_t *e, phg_buf_t *b)
{
	phg_buf_printf(b,
	               "SELECT id, checksum, state, action FROM %s.runs WHERE plan = $1 "
	               "ORDER BY id DESC LIMIT 1",
	               e->schema_q);
}
