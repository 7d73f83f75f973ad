/*
 * engine_alembic.c - Alembic interop: a plan that says
 * `alembic: { requires: REV, stamps: REV, table: alembic_version }` agrees
 * with Alembic on where the database stands.
 *
 * Before the run touches anything, the version table must hold `requires`
 * (exit 2 otherwise, naming both revisions).  The transition that records
 * the run completed also writes `stamps` in place of `requires`, and the
 * transition that takes a completed run back (a rollback starting) writes
 * `requires` back: one statement each, so the state and the revision never
 * disagree, whatever is killed when.  Alembic's own table is only read and
 * updated, never created.
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "schema"."name" of the version table (a validated name or schema.name) */
static void alembic_table(const phg_plan_t *plan, phg_buf_t *b)
{
	const char *t = plan->alembic.table, *dot = strchr(t, '.');

	if (dot != NULL)
		phg_buf_printf(b, "\"%.*s\".\"%s\"", (int)(dot - t), t, dot + 1);
	else
		phg_buf_printf(b, "\"%s\"", t);
}

static void alembic_fail(engine_t *e, const char *holds)
{
	phg_err_t err;

	phg_err_clear(&err);
	phg_err_set(&err, PHG_EINVAL, "plan \"%s\" requires Alembic revision \"%s\", but %s %s",
	            e->plan->name, e->alembic_want, e->plan->alembic.table, holds);
	if (strcmp(e->alembic_want, e->plan->alembic.requires) == 0)
		phg_err_hint(&err, "Bring the database to revision \"%s\" first (`alembic upgrade "
		                   "%s`), then apply the plan, which stamps \"%s\". Nothing was "
		                   "changed.",
		             e->plan->alembic.requires, e->plan->alembic.requires,
		             e->plan->alembic.stamps);
	else
		phg_err_hint(&err, "The completed plan stamped \"%s\"; Alembic has moved since. Bring "
		                   "it back to \"%s\" (`alembic downgrade %s`) before rolling the plan "
		                   "back. Nothing was changed.",
		             e->plan->alembic.stamps, e->plan->alembic.stamps, e->plan->alembic.stamps);
	phg_eng_fatal(e, PHG_EXIT_USAGE, &err);
}

static void alembic_rows(engine_t *e)
{
	PGresult *res = e->res;
	const char *holds = PQgetvalue(res, 0, 0);
	char what[512];

	if (strcmp(PQgetvalue(res, 0, 1), "t") != 0 && strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
		/* a finalize cut short: the plan had completed and stamped */
		e->alembic_want = e->alembic_also;
	} else if (strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
		if (holds[0] == '\0')
			snprintf(what, sizeof(what), "is empty (no revision)");
		else
			snprintf(what, sizeof(what), "holds \"%s\"", holds);
		alembic_fail(e, what);
		return;
	}
	phg_log(PHG_LOG_INFO, &e->log, "Alembic: %s holds \"%s\", as the plan requires",
	        e->plan->alembic.table, e->alembic_want);
	e->alembic_k(e);
}

static void alembic_exists(engine_t *e)
{
	phg_buf_t b;
	const char *p[2] = {e->alembic_want, e->alembic_also ? e->alembic_also : ""};

	if (strcmp(PQgetvalue(e->res, 0, 0), "t") != 0) {
		alembic_fail(e, "does not exist on this database");
		return;
	}
	phg_buf_init(&b, 4096);
	phg_buf_adds(&b, "SELECT coalesce(string_agg(version_num::text, ', ' ORDER BY version_num), "
	                 "''), coalesce(bool_or(version_num = $1), false), coalesce(bool_or(version_num = $2), "
	                 "false) FROM ");
	alembic_table(e->plan, &b);
	phg_eng_query(e, b.data, 2, p, alembic_rows);
	phg_buf_free(&b);
}

void phg_eng_alembic_check(engine_t *e, alembic_want_t want, ek_t k)
{
	phg_buf_t b;
	const char *p[1];

	if (e->plan->alembic.stamps == NULL) {
		k(e);
		return;
	}
	e->alembic_want = want == ALEMBIC_STAMPS ? e->plan->alembic.stamps : e->plan->alembic.requires;
	e->alembic_also = want == ALEMBIC_EITHER ? e->plan->alembic.stamps : NULL;
	e->alembic_k = k;
	phg_buf_init(&b, 4096);
	alembic_table(e->plan, &b);
	p[0] = b.data;
	phg_eng_query(e, "SELECT to_regclass($1) IS NOT NULL", 1, p, alembic_exists);
	phg_buf_free(&b);
}

void phg_eng_alembic_cte(engine_t *e, int old_state, int new_state, phg_buf_t *b)
{
	const phg_alembic_t *a = &e->plan->alembic;
	const char *to, *from;
	char *lt, *lf;

	if (a->stamps == NULL || old_state == new_state)
		return;
	if (new_state == PHG_RUN_COMPLETED) {
		from = a->requires;
		to = a->stamps;
	} else if (old_state == PHG_RUN_COMPLETED && strcmp(e->run_action, "rollback") == 0) {
		from = a->stamps;
		to = a->requires;
	} else {
		return;
	}
	lt = phg_eng_lit(e, to);
	lf = phg_eng_lit(e, from);
	phg_buf_adds(b, "WITH phg_alembic AS (UPDATE ");
	alembic_table(e->plan, b);
	phg_buf_printf(b, " SET version_num = %s WHERE version_num = %s RETURNING 1) ", lt, lf);
	free(lt);
	free(lf);
}
