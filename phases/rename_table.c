/*
 * rename_table.c - rename a table without breaking the release that still
 * names it: the old name becomes a view of the new one until the plan
 * completes.
 *
 * Apply is one transaction under lock_timeout (a brief ACCESS EXCLUSIVE
 * lock, retried): ALTER TABLE t RENAME TO new, CREATE VIEW t AS SELECT *
 * FROM new, and the table's owner and grants copied to the view (the
 * application's role keeps the privileges it had on t).  A view of one
 * table that selects its columns is automatically updatable, so the old
 * release's SELECT, INSERT (the table's defaults apply), UPDATE, DELETE
 * and INSERT ... ON CONFLICT keep working through it; a statement waiting
 * for the lock resolves the name again once it has it, and finds the view.
 * Not through a view: COPY ... FROM, TRUNCATE, ALTER TABLE, and columns
 * added to the table after the rename (SELECT * was expanded when the view
 * was made).  When the plan completes (finalize) the view is dropped: by
 * then no release names t.  Revert, before or after that, is the mirror in
 * one transaction: drop the view (if it is there), rename new back to t.
 *
 * From this step on the plan names the table by its new name (validate
 * refuses a later step on t, which is a view by then), and no step before
 * it may have work left on t for when the plan completes (a drop_column's
 * physical drop): finalize runs in plan order, after the rename.
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *table;
	char *to;
} rename_table_args_t;

static const phg_field_t rename_table_fields[] = {
	PHG_ARG_TABLE(rename_table_args_t),
	{.key = "to", .type = PHG_FT_IDENT, .offset = offsetof(rename_table_args_t, to),
	 .flags = PHG_FL_REQUIRED, .what = "the new table name (same schema)"},
	{0},
};

/* Refuse what is not a table; then give the view the table's owner and
 * grants (run after the rename: the table is @nl by then). */
static const char *refuse_sql(phg_build_t *b, const rename_table_args_t *a)
{
	const char *tl = phg_qlit(b, phg_qtable(b, a->table));
	const char *body = phg_bprintf(
	    b,
	    "BEGIN "
	    "IF to_regclass(%s) IS NULL THEN RAISE EXCEPTION 'table %% does not exist', %s; END IF; "
	    "IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(%s) AND relkind IN "
	    "('r', 'p')) THEN RAISE EXCEPTION 'relation %% is not a table', %s USING HINT = "
	    "'rename_table renames tables (and leaves a view of the old name).'; END IF; "
	    "END",
	    tl, tl, tl, tl);

	return phg_bprintf(b, "DO %s", phg_qlit(b, body));
}

static const char *grants_sql(phg_build_t *b, const char *view, const char *table)
{
	const char *vl = phg_qlit(b, view), *tl = phg_qlit(b, table);
	const char *body = phg_bprintf(
	    b,
	    "DECLARE r record; o name; "
	    "BEGIN "
	    "SELECT pg_get_userbyid(relowner) INTO o FROM pg_class WHERE oid = to_regclass(%s); "
	    "IF o <> current_user THEN EXECUTE format('ALTER VIEW %%s OWNER TO %%I', %s, o); END IF; "
	    "FOR r IN SELECT a.privilege_type AS p, a.is_grantable AS g, "
	    "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END "
	    "AS who FROM pg_class c, aclexplode(c.relacl) a "
	    "WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner LOOP "
	    "EXECUTE format('GRANT %%s ON %%s TO %%s%%s', r.p, %s, r.who, "
	    "CASE WHEN r.g THEN ' WITH GRANT OPTION' ELSE '' END); "
	    "END LOOP; "
	    "END",
	    tl, vl, tl, vl);

	return phg_bprintf(b, "DO %s", phg_qlit(b, body));
}

static int rename_table_build(phg_build_t *b)
{
	const rename_table_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *to = phg_q(b, a->to);
	const char *nt = phg_qsibling(b, a->table, a->to);
	const char *dot = strchr(a->table, '.');
	const char *base = phg_q(b, dot != NULL ? dot + 1 : a->table);
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "rename table %s to %s, and keep %s working as a view of it, in one "
		                "transaction",
		                t, to, t);
		phg_op_sql(op, "%s", refuse_sql(b, a));
		/* one string: the lint sees the view that keeps the old name */
		phg_op_sql(op, "ALTER TABLE %s RENAME TO %s;\nCREATE VIEW %s AS SELECT * FROM %s", t, to,
		           t, nt);
		phg_op_sql(op, "%s", grants_sql(b, t, nt));
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "drop the view %s and rename table %s back to %s, in one transaction",
		                t, nt, t);
		phg_op_sql(op, "DROP VIEW IF EXISTS %s", t);
		phg_op_sql(op, "ALTER TABLE %s RENAME TO %s", nt, base);
		break;
	case PHG_DIR_FINALIZE:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "drop the view %s that kept the old name of %s working", t, nt);
		phg_op_sql(op, "DROP VIEW IF EXISTS %s", t);
		break;
	}
	return 0;
}

/* 1 when @st names @table (its tables(), as written in the plan). */
static int names_table(const phg_step_t *st, const char *table)
{
	phg_strv_t tabs = {0};
	int hit = 0;

	if (st->kind->tables != NULL)
		st->kind->tables(st, &tabs);
	for (size_t i = 0; i < tabs.n; i++)
		hit |= strcmp(tabs.v[i], table) == 0;
	phg_strv_clear(&tabs);
	return hit;
}

/* 1 when @st has ops for when the plan completes. */
static int has_finalize(const phg_plan_t *plan, const phg_step_t *st)
{
	phg_ops_t ops = {0};
	phg_err_t err;
	int n;

	phg_err_clear(&err);
	phg_step_build(plan, st, PHG_DIR_FINALIZE, 0, NULL, NULL, &ops, &err);
	n = ops.n > 0;
	phg_ops_free(&ops);
	return n;
}

static int rename_table_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const rename_table_args_t *a = step->args;
	const char *dot = strchr(a->table, '.');
	int after = 0, rc = 0;

	if (strcmp(dot != NULL ? dot + 1 : a->table, a->to) == 0) {
		phg_diag_error(d, phg_step_field_pos(step, "to"),
		               "rename_table of \"%s\" to its own name", a->table);
		return PHG_EPLAN;
	}

	for (size_t p = 0; p < plan->nphases; p++) {
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			const phg_step_t *st = &plan->phases[p].steps[s];

			if (st == step) {
				after = 1;
				continue;
			}
			/* a step the loader refused has no kind or no arguments */
			if (st->kind == NULL || st->args == NULL || !names_table(st, a->table))
				continue;
			if (after) {
				phg_diag_error(d, st->pos,
				               "%s step names table \"%s\", which the rename_table step of "
				               "phase \"%s\" renames to \"%s\" before it: \"%s\" is a view "
				               "from then on; name the table \"%s\"",
				               st->kind->name, a->table, step->phase->name, a->to, a->table,
				               a->to);
				rc = PHG_EPLAN;
			} else if (has_finalize(plan, st)) {
				phg_diag_error(d, st->pos,
				               "%s step on table \"%s\" has work for when the plan completes, "
				               "which runs after the rename_table step of phase \"%s\" renamed "
				               "the table to \"%s\"; rename the table in a later plan",
				               st->kind->name, a->table, step->phase->name, a->to);
				rc = PHG_EPLAN;
			}
		}
	}
	return rc;
}

static void rename_table_tables(const phg_step_t *step, phg_strv_t *out)
{
	const rename_table_args_t *a = step->args;

	phg_strv_push(out, a->table);
}

const phg_step_kind_t phg_kind_rename_table = {
	.name = "rename_table",
	.summary = "RENAME a table, the old name kept as an updatable view until the plan completes",
	.fields = rename_table_fields,
	.args_size = sizeof(rename_table_args_t),
	.check = rename_table_check,
	.build = rename_table_build,
	.tables = rename_table_tables,
	.clean_on_fail = 0,
	.final_irreversible = 0,
};
