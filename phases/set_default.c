/*
 * set_default.c - ALTER COLUMN ... SET DEFAULT, and the building block
 * drop_default.c shares (kind.h: phg_default_build).
 *
 * A default applies to rows inserted from then on: no rewrite, no scan,
 * only a brief ACCESS EXCLUSIVE lock, taken under lock_timeout and retried
 * (even a volatile default such as now() or gen_random_uuid() is fine here,
 * unlike in ADD COLUMN).  The default the column had before -- its
 * expression as pg_get_expr prints it, or none -- is recorded in the step's
 * memo in the same transaction, and revert puts exactly that back.
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <string.h>

typedef struct {
	char *table;
	char *column;
	char *def;
} set_default_args_t;

static const phg_field_t set_default_fields[] = {
	PHG_ARG_TABLE(set_default_args_t),
	PHG_ARG_COLUMN(set_default_args_t),
	{.key = "default", .type = PHG_FT_SQL, .offset = offsetof(set_default_args_t, def),
	 .sql = PHG_SQLF_DEFAULT, .flags = PHG_FL_REQUIRED,
	 .what = "an SQL expression such as 'pending' or now()"},
	{0},
};

int phg_default_build(phg_build_t *b, const char *table, const char *column, const char *def)
{
	const char *t = phg_qtable(b, table), *c = phg_q(b, column), *was;
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		if (def != NULL)
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "set the default of %s of %s to %s", c,
			                t, def);
		else
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop the default of %s of %s", c, t);
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('default', pg_get_expr(d.adbin, d.adrelid)) "
		    "FROM pg_attribute a LEFT JOIN pg_attrdef d "
		    "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
		    "WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped",
		    phg_regclass(b, table), phg_qlit(b, column));
		if (def != NULL)
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", t, c, def);
		else
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT", t, c);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		/* offline (no memo): what a column without a default gets back */
		was = phg_memo_str(b->memo, "default");
		if (was != NULL) {
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore the default of %s of %s (%s)",
			                c, t, was);
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", t, c, was);
		} else {
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
			                "restore the default of %s of %s as recorded (none: no default)",
			                c, t);
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT", t, c);
		}
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

static int set_default_build(phg_build_t *b)
{
	const set_default_args_t *a = b->step->args;

	return phg_default_build(b, a->table, a->column, a->def);
}

const phg_step_kind_t phg_kind_set_default = {
	.name = "set_default",
	.summary = "ALTER COLUMN SET DEFAULT under lock_timeout; revert restores the recorded one",
	.fields = set_default_fields,
	.args_size = sizeof(set_default_args_t),
	.check = NULL, /* `default` is parsed in place by the loader */
	.build = set_default_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
};
