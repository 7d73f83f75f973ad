/*
 * drop_default.c - ALTER COLUMN ... DROP DEFAULT under lock_timeout; the
 * default it had is recorded, and revert restores it (set_default.c).
 * Inserts that omit the column get NULL from then on: drop the default
 * only once no release relies on it.
 */
#include "kind.h"

typedef struct {
	char *table;
	char *column;
} drop_default_args_t;

static const phg_field_t drop_default_fields[] = {
	PHG_ARG_TABLE(drop_default_args_t),
	PHG_ARG_COLUMN(drop_default_args_t),
	{0},
};

static int drop_default_build(phg_build_t *b)
{
	const drop_default_args_t *a = b->step->args;

	return phg_default_build(b, a->table, a->column, NULL);
}

const phg_step_kind_t phg_kind_drop_default = {
	.name = "drop_default",
	.summary = "ALTER COLUMN DROP DEFAULT under lock_timeout; revert restores the recorded one",
	.fields = drop_default_fields,
	.args_size = sizeof(drop_default_args_t),
	.check = NULL,
	.build = drop_default_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
};
