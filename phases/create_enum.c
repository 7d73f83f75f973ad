/*
 * create_enum.c - CREATE TYPE ... AS ENUM (...).
 *
 * A new type is no table: nothing the application uses is locked, and
 * nothing uses the type until a later step (add_column) does.  Whether the
 * type existed is recorded in the step's memo in the same transaction as
 * the CREATE, so a resumed run never takes someone else's type for its own:
 * one that exists already with the same values in the same order is a
 * recorded no-op (kept by a rollback); with other values, CREATE fails and
 * says so.  Revert drops the type only if this run created it, after the
 * later steps' reverts have dropped what used it (DROP TYPE without
 * CASCADE: a column still of the type makes it fail rather than vanish).
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *name;
	phg_strv_t values;
} create_enum_args_t;

static const phg_field_t create_enum_fields[] = {
	{.key = "name", .type = PHG_FT_TABLE, .offset = offsetof(create_enum_args_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a type name (schema-qualified or not)"},
	{.key = "values", .type = PHG_FT_IDENT_LIST, .offset = offsetof(create_enum_args_t, values),
	 .flags = PHG_FL_REQUIRED, .what = "a list of enum labels such as [queued, running, done]"},
	{0},
};

static int create_enum_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const create_enum_args_t *a = step->args;
	int rc = 0;

	(void)plan;
	if (a->values.n == 0) {
		phg_diag_error(d, phg_step_field_pos(step, "values"),
		               "enum type \"%s\" needs at least one value", a->name);
		return PHG_EPLAN;
	}
	for (size_t i = 1; i < a->values.n; i++)
		for (size_t k = 0; k < i; k++)
			if (strcmp(a->values.v[i], a->values.v[k]) == 0) {
				phg_diag_error(d, phg_step_field_pos(step, "values"),
				               "value \"%s\" of enum type \"%s\" is listed twice",
				               a->values.v[i], a->name);
				rc = PHG_EPLAN;
			}
	return rc;
}

static int create_enum_build(phg_build_t *b)
{
	const create_enum_args_t *a = b->step->args;
	const char *ty = phg_qtable(b, a->name), *lit = phg_qlit(b, a->name);
	phg_buf_t vals, arr;
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		phg_buf_init(&vals, 64 * 1024);
		phg_buf_init(&arr, 64 * 1024);
		for (size_t i = 0; i < a->values.n; i++) {
			phg_buf_printf(&vals, "%s%s", i ? ", " : "", phg_qlit(b, a->values.v[i]));
			phg_buf_printf(&arr, "%s%s", i ? ", " : "", phg_qlit(b, a->values.v[i]));
		}
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "create enum type %s", ty);
		op->memo_sql = phg_asprintf("SELECT jsonb_build_object('existed', to_regtype(%s) IS "
		                            "NOT NULL)",
		                            lit);
		/* there already, with the same labels in the same order */
		op->noop_sql = phg_asprintf(
		    "SELECT coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) = "
		    "ARRAY[%s]::text[] FROM pg_catalog.pg_enum e WHERE e.enumtypid = to_regtype(%s)), "
		    "false)",
		    arr.data ? arr.data : "", lit);
		op->noop_note = phg_asprintf("enum type %s exists already with these values: nothing "
		                             "to do; a rollback keeps it",
		                             ty);
		phg_op_sql(op, "CREATE TYPE %s AS ENUM (%s)", ty, vals.data ? vals.data : "");
		phg_buf_free(&vals);
		phg_buf_free(&arr);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (phg_memo_bool(b->memo, "existed") == 1) {
			phg_op_new(b, PHG_OP_TX, 0,
			           "keep enum type %s: it existed before the plan", ty);
			break;
		}
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop enum type %s created by the plan", ty);
		phg_op_sql(op, "DROP TYPE IF EXISTS %s", ty);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

/* A type is no table: nothing to back up. */
static void no_tables(const phg_step_t *step, phg_strv_t *out)
{
	(void)step;
	(void)out;
}

const phg_step_kind_t phg_kind_create_enum = {
	.name = "create_enum",
	.summary = "CREATE TYPE AS ENUM; revert drops it if this run created it",
	.fields = create_enum_fields,
	.args_size = sizeof(create_enum_args_t),
	.check = create_enum_check,
	.build = create_enum_build,
	.tables = no_tables,
	.clean_on_fail = 0,
};
