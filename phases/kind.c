/*
 * kind.c - helpers shared by the step kind files.
 */
#include "kind.h"

#include <string.h>

const char *phg_regclass(phg_build_t *b, const char *table)
{
	return phg_bprintf(b, "%s::regclass", phg_qlit(b, phg_qtable(b, table)));
}

const char *phg_table_schema(phg_build_t *b, const char *table)
{
	const char *dot = strchr(table, '.');

	if (dot == NULL)
		return "";
	return phg_bprintf(b, "%.*s", (int)(dot - table), table);
}

const char *phg_qsibling(phg_build_t *b, const char *table, const char *name)
{
	const char *schema = phg_table_schema(b, table);

	if (schema[0] == '\0')
		return phg_q(b, name);
	return phg_bprintf(b, "%s.%s", phg_q(b, schema), phg_q(b, name));
}

void phg_tables_first_arg(const phg_step_t *step, phg_strv_t *out)
{
	phg_strv_push(out, *(char *const *)step->args);
}

void phg_constraint_add(phg_build_t *b, const char *table, const char *name,
                        const char *definition)
{
	const char *t = phg_qtable(b, table), *k = phg_q(b, name);
	phg_op_t *op;

	op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "add constraint %s to %s NOT VALID", k, t);
	phg_op_sql(op, "ALTER TABLE %s ADD CONSTRAINT %s %s NOT VALID", t, k, definition);
	op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL | PHG_OPF_SCAN,
	                "validate constraint %s: scans %s, writes continue", k, t);
	phg_op_sql(op, "ALTER TABLE %s VALIDATE CONSTRAINT %s", t, k);
	op->observe_sql = phg_asprintf("SELECT 1 FROM %s LIMIT 1", t);
}

int phg_constraint_build(phg_build_t *b, const char *table, const char *name,
                         const char *definition)
{
	const char *t = phg_qtable(b, table), *k = phg_q(b, name);
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		phg_constraint_add(b, table, name, definition);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop constraint %s of %s", k, t);
		phg_op_sql(op, "ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", t, k);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}
