/*
 * rename_column.c - RENAME COLUMN; revert renames back.  Sync triggers that
 * name the column are removed first (and put back by the revert).
 */
#include "kind.h"

typedef struct {
	char *table;
	char *column;
	char *to;
} rename_column_args_t;

static const phg_field_t rename_column_fields[] = {
	PHG_ARG_TABLE(rename_column_args_t),
	PHG_ARG_COLUMN(rename_column_args_t),
	{.key = "to", .type = PHG_FT_IDENT, .offset = offsetof(rename_column_args_t, to),
	 .flags = PHG_FL_REQUIRED, .what = "the new column name"},
	{0},
};

#define MAX_TRG 16

static int rename_column_build(phg_build_t *b)
{
	const rename_column_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table);
	const char *c = phg_q(b, a->column), *to = phg_q(b, a->to);
	const phg_step_t *trg[MAX_TRG];
	size_t ntrg = phg_sync_triggers_naming(b->plan, b->step, a->table, a->column,
	                                       trg, MAX_TRG);
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "rename column %s of %s to %s", c, t, to);
		if (ntrg > 0) {
			op->memo_sql = phg_asprintf("SELECT jsonb_build_object('triggers', %s)",
			                            phg_sync_triggers_memo(b, a->table, trg, ntrg));
			phg_sync_triggers_drop(b, a->table, trg, ntrg, op);
		}
		phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, c, to);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "rename column %s of %s back to %s",
		                to, t, c);
		phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, to, c);
		phg_sync_triggers_restore(b, trg, ntrg, op);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_rename_column = {
	.name = "rename_column",
	.summary = "RENAME COLUMN",
	.fields = rename_column_fields,
	.args_size = sizeof(rename_column_args_t),
	.build = rename_column_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
