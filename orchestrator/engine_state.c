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



void phg_eng_rt_free(engine_t *e)
{
	for (size_t p = 0; e->ph != NULL && p < e->nph; p++) {
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++)
			phg_step_row_clear(&e->ph[p].steps[s]);
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
		for (size_t s = 0; s < e->plan->phases[p].nsteps; s++)
			phg_step_row_init(&e->ph[p].steps[s]);
	}
}

/* Rows of phg_store_load_run_sql(): p.idx, p.state, s.idx, the step
 * columns, backed_up. */
int phg_eng_load_rows(engine_t *e, PGresult *res)
{
	int n = PQntuples(res);
	int bad = 0;

	phg_eng_rt_alloc(e);
	for (int r = 0; r < n; r++) {
		int pi = (int)phg_db_num(PQgetvalue(res, r, 0), 0, INT_MAX, -1, &bad);
		int si;

		if (bad || pi < 0 || (size_t)pi >= e->nph)
			return PHG_ESTATE;
		e->ph[pi].state = phg_phase_state_parse(PQgetvalue(res, r, 1));
		e->ph[pi].backed_up =
		    strcmp(PQgetvalue(res, r, PHG_STORE_LOAD_BACKED_UP_COL), "t") == 0;
		if (e->ph[pi].state < 0)
			return PHG_ESTATE;
		if (PQgetisnull(res, r, 2))
			continue;
		si = (int)phg_db_num(PQgetvalue(res, r, 2), 0, INT_MAX, -1, &bad);
		if (bad || si < 0 || (size_t)si >= e->plan->phases[pi].nsteps)
			return PHG_ESTATE;
		if (phg_store_step_read(res, r, 3, &e->ph[pi].steps[si]) != 0)
			return PHG_ESTATE;
	}
	return 0;
}

void phg_eng_load_state_sql(engine_t *e, phg_buf_t *b)
{
	phg_store_load_run_sql(b, e->schema_q, e->run_id);
}

void phg_eng_create_run(engine_t *e)
{
	phg_buf_t b;
	char user[128], host[256];
	char *l_plan = phg_eng_lit(e, e->plan->name), *l_sum = phg_eng_lit(e, e->plan->checksum);
	char *l_env = phg_eng_lit(e, e->o->env ? e->o->env : ""), *l_user, *l_host;
	char *l_target = phg_eng_lit(e, e->target);
	char *l_from = e->o->promoted_from ? phg_eng_lit(e, e->o->promoted_from) : phg_strdup("NULL");
	char *l_canon = phg_eng_lit(e, e->plan->canonical);
	char **names, **sums;

	snprintf(e->run_action, sizeof(e->run_action), "apply");
	phg_whoami(user, sizeof(user), host, sizeof(host));
	l_user = phg_eng_lit(e, user);
	l_host = phg_eng_lit(e, host);
	names = phg_calloc(e->plan->nphases, sizeof(*names));
	sums = phg_calloc(e->plan->nphases, sizeof(*sums));
	for (size_t p = 0; p < e->plan->nphases; p++) {
		names[p] = phg_eng_lit(e, e->plan->phases[p].name);
		sums[p] = phg_eng_lit(e, e->plan->phases[p].checksum);
	}
	phg_buf_init(&b, SQL_MAX);
	phg_store_create_run_sql(&b, e->schema_q, e->plan, l_plan, l_sum, l_env, l_user, l_host,
	                         l_target, l_from, l_canon, (int)getpid(), (const char *const *)names,
	                         (const char *const *)sums);
	for (size_t p = 0; p < e->plan->nphases; p++) {
		free(names[p]);
		free(sums[p]);
	}
	free(names);
	free(sums);
	free(l_plan);
	free(l_sum);
	free(l_env);
	free(l_user);
	free(l_host);
	free(l_target);
	free(l_from);
	free(l_canon);
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
	free(e->run_plan);
	e->run_plan = PQgetisnull(e->res, 0, 4) ? NULL : phg_strdup(PQgetvalue(e->res, 0, 4));
	phg_log_set_run(e->plan->name, e->run_checksum, e->run_id, e->o->env);
	return 1;
}

void phg_eng_last_run_sql(engine_t *e, phg_buf_t *b)
{
	phg_store_last_run_sql(b, e->schema_q);
}
