/*
 * drop_table.c - hide a table, drop it for good when the plan completes.
 *
 * DROP TABLE cannot be undone, so apply only renames the table to a
 * tombstone in its schema (_phg_dropped_<name>, the scheme drop_column uses
 * for its columns): one brief ACCESS EXCLUSIVE lock, taken under
 * lock_timeout and retried (PHG_OPF_DDL), no rewrite.  The table's oid and
 * the tombstone's name are recorded in the step's memo in the same
 * transaction.  Revert renames it back: the very same table, with its rows,
 * indexes, constraints, triggers, sequences and grants, exactly as it was.
 * When the plan completes, finalize drops the tombstone for good, after
 * which the step can no longer be reverted.
 *
 * A foreign key of another table referencing it, or a view on it, would
 * keep using the tombstone and make the final DROP fail when the plan
 * completes: apply refuses them up front, naming the object (a tombstone
 * referencing it is fine: that table is being dropped too, and finalize
 * drops in plan order).  The application must no longer name the table,
 * so the step belongs in a contract phase; validate warns elsewhere.
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *table;
} drop_table_args_t;

static const phg_field_t drop_table_fields[] = {
	PHG_ARG_TABLE(drop_table_args_t),
	{0},
};

/* The tombstone's name (unquoted, in the table's schema). */
static const char *tombstone(phg_build_t *b, const char *table)
{
	const char *dot = strchr(table, '.');

	return phg_tombstone_name(b, dot != NULL ? dot + 1 : table);
}

static int drop_table_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const drop_table_args_t *a = step->args;
	size_t idx;
	const phg_phase_t *ph = phg_step_phase(plan, step, &idx);

	if (ph != NULL && !phg_phase_is_contract(ph))
		phg_diag_warn(d, step->pos,
		              "drop_table of \"%s\" outside a contract phase: the application still "
		              "running the old release names it, and its queries fail once it is "
		              "hidden; put it in a contract phase (one with backup: true) after the "
		              "release that stops using it",
		              a->table);
	return 0;
}

static int drop_table_build(phg_build_t *b)
{
	const drop_table_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *name = tombstone(b, a->table);
	const char *tomb = phg_qsibling(b, a->table, name), *rel = phg_regclass(b, a->table);
	const char *body, *tag = "$phg$";
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "hide table %s as %s", t, tomb);
		op->memo_sql = phg_asprintf("SELECT jsonb_build_object('oid', %s::oid::text, "
		                            "'tombstone', %s)",
		                            rel, phg_qlit(b, name));
		/* what would keep using the tombstone and make the final DROP fail */
		body = phg_bprintf(
		    b,
		    "DECLARE dep text; BEGIN "
		    "SELECT format('foreign key %%I of table %%s', c.conname, c.conrelid::regclass) "
		    "INTO dep FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
		    "WHERE c.contype = 'f' AND c.confrelid = %s AND c.conrelid <> %s "
		    "AND NOT starts_with(r.relname, '_phg_') ORDER BY 1 LIMIT 1; "
		    "IF dep IS NULL THEN "
		    "SELECT format('view %%s', v.ev_class::regclass) INTO dep FROM pg_depend d "
		    "JOIN pg_rewrite v ON v.oid = d.objid WHERE d.classid = 'pg_rewrite'::regclass "
		    "AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s "
		    "AND v.ev_class <> %s ORDER BY 1 LIMIT 1; END IF; "
		    "IF dep IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = "
		    "'dependent_objects_still_exist', MESSAGE = format(%s, dep), HINT = %s; END IF; "
		    "END",
		    rel, rel, rel, rel, phg_qlit(b, phg_bprintf(b, "table %s is still used by %%s", t)),
		    phg_qlit(b, "Drop or change it first (in an earlier step): it would keep using the "
		                "hidden table, whose final DROP would then fail when the plan "
		                "completes."));
		for (int i = 1; strstr(body, tag) != NULL; i++)
			tag = phg_bprintf(b, "$phg%d$", i);
		phg_op_sql(op, "DO %s %s %s", tag, body, tag);
		phg_op_sql(op, "ALTER TABLE %s RENAME TO %s", t, phg_q(b, name));
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore table %s (hidden as %s)", t, tomb);
		phg_op_sql(op, "ALTER TABLE %s RENAME TO %s", tomb,
		           phg_q(b, strchr(a->table, '.') ? strchr(a->table, '.') + 1 : a->table));
		break;
	case PHG_DIR_FINALIZE:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop hidden table %s for good", tomb);
		phg_op_sql(op, "DROP TABLE IF EXISTS %s", tomb);
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_drop_table = {
	.name = "drop_table",
	.summary = "hide a table (tombstone); dropped for good when the plan completes",
	.fields = drop_table_fields,
	.args_size = sizeof(drop_table_args_t),
	.check = drop_table_check,
	.build = drop_table_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
	.final_irreversible = 1,
};
