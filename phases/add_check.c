/*
 * add_check.c - CHECK constraint added NOT VALID, then VALIDATEd; a failed
 * VALIDATE drops the NOT VALID constraint again (clean_on_fail).
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

typedef struct {
	char *table;
	char *name;
	char *check;
} add_check_args_t;

static const phg_field_t add_check_fields[] = {
	PHG_ARG_TABLE(add_check_args_t),
	{.key = "name", .type = PHG_FT_IDENT, .offset = offsetof(add_check_args_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a constraint name"},
	{.key = "check", .type = PHG_FT_SQL, .offset = offsetof(add_check_args_t, check),
	 .sql = PHG_SQLF_CHECK,
	 .flags = PHG_FL_REQUIRED, .what = "a boolean SQL expression"},
	{0},
};

static int add_check_build(phg_build_t *b)
{
	const add_check_args_t *a = b->step->args;

	return phg_constraint_build(b, a->table, a->name, phg_bprintf(b, "CHECK (%s)", a->check));
}

const phg_step_kind_t phg_kind_add_check = {
	.name = "add_check",
	.summary = "CHECK constraint: NOT VALID, then VALIDATE",
	.fields = add_check_fields,
	.args_size = sizeof(add_check_args_t),
	.build = add_check_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
