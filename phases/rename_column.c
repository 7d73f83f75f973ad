/*
 * rename_column.c - RENAME COLUMN; revert renames back.  Sync triggers that
 * name the column are removed first (and put back by the revert).
 *
 * After a drop_column of its `to` on the same table in the same phase, the
 * two steps are one atomic swap that drop_column builds at its own place
 * (kind.h): this step then has no op of its own, so at no instant is the
 * column name the app uses missing.  validate warns when steps stand in
 * between (they see the swapped names already).
 */
#include "kind.h"

#include <string.h>

extern const phg_step_kind_t phg_kind_rename_column;

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

const char *phg_rename_into(const phg_step_t *st, const char *table, const char *column)
{
	const rename_column_args_t *a = st->args;

	if (st->kind != &phg_kind_rename_column || strcmp(a->table, table) != 0 ||
	    strcmp(a->to, column) != 0)
		return NULL;
	return a->column;
}

/* The drop_column whose swap this step is part of, or NULL. */
static const phg_step_t *swap_drop(const phg_plan_t *plan, const phg_step_t *step, size_t *at)
{
	const rename_column_args_t *a = step->args;
	size_t idx;
	const phg_phase_t *ph = phg_step_phase(plan, step, &idx);

	for (size_t s = idx; ph != NULL && s-- > 0;) {
		const phg_step_t *st = &ph->steps[s];

		if (phg_drop_of(st, a->table, a->to) && phg_swap_rename(plan, st) == step) {
			*at = s;
			return st;
		}
	}
	return NULL;
}

/* Swapped into a column an earlier step hides: that step did the work. */
static int swapped(phg_build_t *b)
{
	size_t at;

	return swap_drop(b->plan, b->step, &at) != NULL;
}

static int rename_column_build(phg_build_t *b)
{
	const rename_column_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table);
	const char *c = phg_q(b, a->column), *to = phg_q(b, a->to);
	const phg_step_t *trg[MAX_TRG];
	size_t ntrg = phg_sync_triggers_naming(b->plan, b->step, a->table, a->column,
	                                       trg, MAX_TRG);
	phg_op_t *op;

	if (swapped(b))
		return 0; /* one transaction with the drop_column before it */
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

/* Swapped with a drop_column that is not the step right before: the steps
 * in between already see the swapped names. */
static int rename_column_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const rename_column_args_t *a = step->args;
	size_t at, idx;

	if (swap_drop(plan, step, &at) != NULL && phg_step_phase(plan, step, &idx) != NULL &&
	    at + 1 < idx)
		phg_diag_warn(d, step->pos,
		              "rename_column into \"%s\" is one transaction with step %zu, which hides "
		              "it: the steps in between already see \"%s\" renamed to \"%s\"",
		              a->to, at + 1, a->column, a->to);
	return 0;
}

const phg_step_kind_t phg_kind_rename_column = {
	.name = "rename_column",
	.summary = "RENAME COLUMN",
	.fields = rename_column_fields,
	.args_size = sizeof(rename_column_args_t),
	.check = rename_column_check,
	.build = rename_column_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
