/*
 * sql.c - raw SQL the plan owns: `up`, and `down` to revert it (without
 * `down` the step cannot be reverted).  With transaction: true (default) the
 * SQL runs in the step's own transaction, under lock_timeout, with the
 * progress record; with transaction: false it runs on its own (for
 * statements such as CREATE INDEX CONCURRENTLY) and must be safe to run
 * again, since a crash after it and before its record re-runs it.
 * validate parses the SQL with PostgreSQL's parser and lints the parse tree
 * (sqlparse.c) for statements that take long or strong locks, and refuses
 * transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT...) in a
 * transactional step.  `-- phasegate:safety_assured` in a statement
 * acknowledges it.
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <string.h>

typedef struct {
	char *up;
	char *down;
	int transaction;
} sql_args_t;

static const phg_field_t sql_fields[] = {
	{.key = "up", .type = PHG_FT_SQL, .offset = offsetof(sql_args_t, up),
	 .flags = PHG_FL_REQUIRED, .what = "SQL statements"},
	{.key = "down", .type = PHG_FT_SQL, .offset = offsetof(sql_args_t, down),
	 .what = "SQL statements that undo `up`"},
	{.key = "transaction", .type = PHG_FT_BOOL, .offset = offsetof(sql_args_t, transaction),
	 .def = "true", .what = "true or false"},
	{0},
};

static void sql_op(phg_build_t *b, const char *label, const char *sql, int tx)
{
	phg_op_t *op = phg_op_new(b, tx ? PHG_OP_TX : PHG_OP_STMT, PHG_OPF_DDL, "%s", label);

	phg_op_sql(op, "%s", sql);
}

static int sql_build(phg_build_t *b)
{
	const sql_args_t *a = b->step->args;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		sql_op(b, "sql up", a->up, a->transaction);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (a->down == NULL) {
			b->irreversible = 1;
			return phg_err_set(b->err, PHG_EIRREVERSIBLE, "sql step has no `down`");
		}
		sql_op(b, "sql down", a->down, a->transaction);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

/* ---- lint: on the parse tree (orchestrator/sqlparse.c) ---- */

/* A string argument of another step, by key (NULL when absent). */
static const char *str_arg(const phg_step_t *st, const char *key)
{
	for (const phg_field_t *f = st->kind->fields; f->key != NULL; f++)
		if (strcmp(f->key, key) == 0)
			return *(char *const *)((const char *)st->args + f->offset);
	return NULL;
}

typedef struct {
	const phg_step_t *step;
	const char *key;
	phg_diag_t *d;
} lint_at_t;

static void lint_report(void *arg, phg_lint_sev_t sev, size_t off, const char *msg)
{
	lint_at_t *at = arg;
	phg_pos_t pos = phg_diag_scalar_pos(at->d, phg_step_field_pos(at->step, at->key), off);

	if (sev == PHG_LINT_ERROR)
		phg_diag_error(at->d, pos, "sql `%s`: %s", at->key, msg);
	else
		phg_diag_warn(at->d, pos, "sql `%s`: %s", at->key, msg);
}

static int lint(const phg_plan_t *plan, const phg_step_t *step, const char *key, const char *sql,
                int transaction, phg_diag_t *d)
{
	lint_at_t at = {.step = step, .key = key, .d = d};
	size_t idx = 0;
	const phg_phase_t *ph = phg_step_phase(plan, step, &idx);
	unsigned flags = (transaction ? PHG_LINT_TX : 0u) |
	                 (strcmp(key, "down") == 0 ? PHG_LINT_REVERT : 0u) |
	                 (ph != NULL && phg_phase_is_contract(ph) ? PHG_LINT_CONTRACT : 0u);
	phg_lint_t l;

	phg_lint_init(&l, flags, lint_report, &at);
	/* the NOT NULL checks earlier add_check steps validated */
	for (size_t p = 0; ph != NULL && p <= ph->index; p++)
		for (size_t i = 0; i < plan->phases[p].nsteps && (p < ph->index || i < idx); i++) {
			const phg_step_t *st = &plan->phases[p].steps[i];
			const char *table, *check;

			/* a step the loader refused has no kind or no arguments */
			if (st->kind == NULL || st->args == NULL || strcmp(st->kind->name, "add_check") != 0)
				continue;
			table = str_arg(st, "table");
			check = str_arg(st, "check");
			if (table != NULL && check != NULL)
				phg_lint_known_check(&l, table, check);
		}
	phg_lint_sql(&l, sql);
	phg_lint_free(&l);
	return l.errors ? PHG_EPLAN : 0;
}

static int sql_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const sql_args_t *a = step->args;

	int rc;

	/* the step runs in its own transaction with its progress record: a
	 * COMMIT or ROLLBACK inside would break "the step and its record commit
	 * together" (transaction: false runs each statement on its own) */
	rc = lint(plan, step, "up", a->up, a->transaction, d);
	if (a->down != NULL && lint(plan, step, "down", a->down, a->transaction, d) != 0)
		rc = PHG_EPLAN;
	if (a->down == NULL)
		phg_diag_warn(d, step->pos,
		              "sql step without `down`: it cannot be reverted, so `rollback` (and an "
		              "automatic rollback) will refuse past it");
	return rc;
}

static void sql_tables(const phg_step_t *step, phg_strv_t *out)
{
	(void)step;
	(void)out;
}

const phg_step_kind_t phg_kind_sql = {
	.name = "sql",
	.summary = "raw SQL with an optional `down`; linted for lock-unsafe statements",
	.fields = sql_fields,
	.args_size = sizeof(sql_args_t),
	.check = sql_check,
	.build = sql_build,
	.tables = sql_tables,
	.clean_on_fail = 0,
};
