/*
 * add_foreign_key.c - FOREIGN KEY added NOT VALID, then VALIDATEd; a failed
 * VALIDATE drops the NOT VALID constraint again (clean_on_fail).
 */
#include "kind.h"

typedef struct {
	char *table;
	phg_strv_t columns;
} fk_ref_t;

typedef struct {
	char *table;
	char *name;
	phg_strv_t columns;
	fk_ref_t references;
	int on_delete;
} add_foreign_key_args_t;

static const char *const on_delete_values[] = {"no action", "restrict", "cascade",
                                               "set null", "set default", NULL};

static const phg_field_t fk_ref_fields[] = {
	{.key = "table", .type = PHG_FT_TABLE, .offset = offsetof(fk_ref_t, table),
	 .flags = PHG_FL_REQUIRED, .what = "the referenced table"},
	{.key = "columns", .type = PHG_FT_IDENT_LIST, .offset = offsetof(fk_ref_t, columns),
	 .flags = PHG_FL_REQUIRED, .what = "the referenced columns"},
	{0},
};

static const phg_field_t add_foreign_key_fields[] = {
	PHG_ARG_TABLE(add_foreign_key_args_t),
	{.key = "name", .type = PHG_FT_IDENT, .offset = offsetof(add_foreign_key_args_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a constraint name"},
	{.key = "columns", .type = PHG_FT_IDENT_LIST,
	 .offset = offsetof(add_foreign_key_args_t, columns), .flags = PHG_FL_REQUIRED,
	 .what = "the referencing columns"},
	{.key = "references", .type = PHG_FT_MAP,
	 .offset = offsetof(add_foreign_key_args_t, references), .flags = PHG_FL_REQUIRED,
	 .sub = fk_ref_fields, .what = "a mapping {table, columns}"},
	{.key = "on_delete", .type = PHG_FT_ENUM, .offset = offsetof(add_foreign_key_args_t, on_delete),
	 .flags = PHG_FL_ANYCASE, .enum_values = on_delete_values, .def = "no action",
	 .what = "a referential action"},
	{0},
};

static void column_list(phg_build_t *b, const phg_strv_t *cols, phg_buf_t *out)
{
	for (size_t i = 0; i < cols->n; i++)
		phg_buf_printf(out, "%s%s", i ? ", " : "", phg_q(b, cols->v[i]));
}

static int add_foreign_key_build(phg_build_t *b)
{
	const add_foreign_key_args_t *a = b->step->args;
	phg_buf_t from, to;
	const char *def;

	phg_buf_init(&from, 64 * 1024);
	phg_buf_init(&to, 64 * 1024);
	column_list(b, &a->columns, &from);
	column_list(b, &a->references.columns, &to);
	def = phg_bprintf(b, "FOREIGN KEY (%s) REFERENCES %s (%s) ON DELETE %s", from.data,
	                  phg_qtable(b, a->references.table), to.data,
	                  on_delete_values[a->on_delete]);
	phg_buf_free(&from);
	phg_buf_free(&to);
	return phg_constraint_build(b, a->table, a->name, def);
}

static int add_foreign_key_check(const phg_plan_t *plan, const phg_step_t *step,
                                 phg_diag_t *d)
{
	const add_foreign_key_args_t *a = step->args;

	(void)plan;
	if (a->columns.n != a->references.columns.n) {
		phg_diag_error(d, phg_step_field_pos(step, "references"),
		               "foreign key \"%s\" has %zu column(s) but references %zu",
		               a->name, a->columns.n, a->references.columns.n);
		return PHG_EPLAN;
	}
	return 0;
}

static void add_foreign_key_tables(const phg_step_t *step, phg_strv_t *out)
{
	const add_foreign_key_args_t *a = step->args;

	phg_strv_push(out, a->table);
	phg_strv_push(out, a->references.table);
}

const phg_step_kind_t phg_kind_add_foreign_key = {
	.name = "add_foreign_key",
	.summary = "FOREIGN KEY: NOT VALID, then VALIDATE",
	.fields = add_foreign_key_fields,
	.args_size = sizeof(add_foreign_key_args_t),
	.check = add_foreign_key_check,
	.build = add_foreign_key_build,
	.tables = add_foreign_key_tables,
	.clean_on_fail = 1,
};
