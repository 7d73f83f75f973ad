/*
 * add_enum_value.c - ALTER TYPE ... ADD VALUE IF NOT EXISTS.
 *
 * It locks only the type, for a moment (under lock_timeout, retried), and
 * touches no table.  It runs outside a transaction block (autocommit): a
 * value added inside a transaction cannot be used before it commits, and
 * before PostgreSQL 12 ADD VALUE was refused in a transaction block at all;
 * IF NOT EXISTS makes a re-run after a crash harmless.  Whether the value
 * existed already is recorded in the step's memo first (its own
 * transaction, before the ADD).
 *
 * PostgreSQL cannot remove a value from an enum (DROP VALUE does not exist;
 * rebuilding the type rewrites every table using it).  So revert keeps the
 * value, and says so; `validate` warns that the step cannot be undone.
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *type;
	char *value;
	char *before;
	char *after;
} add_enum_value_args_t;

static const phg_field_t add_enum_value_fields[] = {
	{.key = "type", .type = PHG_FT_TABLE, .offset = offsetof(add_enum_value_args_t, type),
	 .flags = PHG_FL_REQUIRED, .what = "an enum type name (schema-qualified or not)"},
	{.key = "value", .type = PHG_FT_IDENT, .offset = offsetof(add_enum_value_args_t, value),
	 .flags = PHG_FL_REQUIRED, .what = "the new enum label"},
	{.key = "before", .type = PHG_FT_IDENT, .offset = offsetof(add_enum_value_args_t, before),
	 .what = "an existing label of the type"},
	{.key = "after", .type = PHG_FT_IDENT, .offset = offsetof(add_enum_value_args_t, after),
	 .what = "an existing label of the type"},
	{0},
};

static const char *stays(const add_enum_value_args_t *a)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "the value %s stays in %s: PostgreSQL cannot remove an enum value",
	         a->value, a->type);
	return buf;
}

static int add_enum_value_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const add_enum_value_args_t *a = step->args;

	(void)plan;
	if (a->before != NULL && a->after != NULL) {
		phg_diag_error(d, phg_step_field_pos(step, "after"),
		               "value \"%s\" of \"%s\" is given both `before` and `after`: one at most",
		               a->value, a->type);
		return PHG_EPLAN;
	}
	if ((a->before != NULL && strcmp(a->before, a->value) == 0) ||
	    (a->after != NULL && strcmp(a->after, a->value) == 0)) {
		phg_diag_error(d, phg_step_field_pos(step, a->before != NULL ? "before" : "after"),
		               "value \"%s\" of \"%s\" cannot be placed next to itself", a->value,
		               a->type);
		return PHG_EPLAN;
	}
	phg_diag_warn(d, step->pos,
	              "add_enum_value cannot be reverted: a rollback keeps the value \"%s\" in "
	              "\"%s\" (PostgreSQL cannot remove an enum value)",
	              a->value, a->type);
	return 0;
}

static int add_enum_value_build(phg_build_t *b)
{
	const add_enum_value_args_t *a = b->step->args;
	const char *ty = phg_qtable(b, a->type), *v = phg_qlit(b, a->value);
	const char *where = "";
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, 0,
		                "add value %s to enum type %s: first record whether it is there", v, ty);
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('existed', EXISTS (SELECT 1 FROM pg_catalog.pg_enum e "
		    "WHERE e.enumtypid = %s::regtype AND e.enumlabel = %s))",
		    phg_qlit(b, a->type), v);
		if (a->before != NULL)
			where = phg_bprintf(b, " BEFORE %s", phg_qlit(b, a->before));
		else if (a->after != NULL)
			where = phg_bprintf(b, " AFTER %s", phg_qlit(b, a->after));
		op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL, "add value %s to enum type %s%s", v, ty,
		                where);
		phg_op_sql(op, "ALTER TYPE %s ADD VALUE IF NOT EXISTS %s%s", ty, v, where);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		/* nothing PostgreSQL can do: said once in the log and the events */
		op = phg_op_new(b, PHG_OP_TX, 0, "keep the value %s in enum type %s: PostgreSQL cannot "
		                                 "remove an enum value",
		                v, ty);
		op->noop_sql = phg_strdup("SELECT true");
		op->noop_note = phg_strdup(stays(a));
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

static const char *add_enum_value_keeps(const phg_step_t *step)
{
	return stays(step->args);
}

/* A type is no table: nothing to back up. */
static void no_tables(const phg_step_t *step, phg_strv_t *out)
{
	(void)step;
	(void)out;
}

const phg_step_kind_t phg_kind_add_enum_value = {
	.name = "add_enum_value",
	.summary = "ALTER TYPE ADD VALUE (autocommit); revert keeps the value",
	.fields = add_enum_value_fields,
	.args_size = sizeof(add_enum_value_args_t),
	.check = add_enum_value_check,
	.build = add_enum_value_build,
	.tables = no_tables,
	.clean_on_fail = 0,
	.revert_keeps = add_enum_value_keeps,
};
