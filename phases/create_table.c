/*
 * create_table.c - CREATE TABLE with its columns, keys and checks; revert
 * drops it, only if this run created it.
 *
 * A new table is empty and nobody uses it yet, so its primary key, unique
 * constraints and checks cost nothing to build.  The one lock that reaches
 * the application is a foreign key's: CREATE TABLE ... REFERENCES takes a
 * brief SHARE ROW EXCLUSIVE lock on the referenced table (to add the
 * constraint's triggers; there is nothing to validate), which waits for
 * the application's open write transactions and makes new writes queue
 * behind it.  So the op runs under lock_timeout and a timeout is retried
 * with backoff (PHG_OPF_DDL), like every DDL: the application is delayed by
 * at most one lock_timeout, never failed.
 *
 * The step's memo records, in the transaction that creates the table, that
 * it did not exist before (to_regclass() IS NULL); a table of that name that
 * exists already (one this run did not create) is refused with a clear
 * error and nothing is done.  A crash before the commit leaves neither the
 * table nor the record, so the resumed run creates it; after the commit the
 * step is recorded done and is not run again.  Revert drops the table only
 * when the memo says this run created it (the rows the new release wrote in
 * it go with it; DROP TABLE of a table with a foreign key briefly locks the
 * referenced table too, under lock_timeout as well).
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
	char *name;
	char *type;
	int not_null;
	char *def;
	int identity;
	char *references; /* "table(column)" */
	int on_delete;
} column_t;

typedef struct {
	char *table;
	phg_maplist_t columns;
	phg_strv_t primary_key;
	phg_strvv_t unique;
	phg_strv_t checks;
} create_table_args_t;

static const char *const on_delete_values[] = {"no action", "restrict", "cascade",
                                               "set null", "set default", NULL};

static const phg_field_t column_fields[] = {
	{.key = "name", .type = PHG_FT_IDENT, .offset = offsetof(column_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a column name"},
	{.key = "type", .type = PHG_FT_SQLTYPE, .offset = offsetof(column_t, type),
	 .flags = PHG_FL_REQUIRED, .what = "a type name such as bigint or varchar(20)"},
	{.key = "not_null", .type = PHG_FT_BOOL, .offset = offsetof(column_t, not_null),
	 .def = "false", .what = "true or false"},
	{.key = "default", .type = PHG_FT_SQL, .offset = offsetof(column_t, def),
	 .sql = PHG_SQLF_DEFAULT, .what = "an SQL expression such as 'pending' or now()"},
	{.key = "identity", .type = PHG_FT_BOOL, .offset = offsetof(column_t, identity),
	 .def = "false", .what = "true or false"},
	{.key = "references", .type = PHG_FT_STRING, .offset = offsetof(column_t, references),
	 .what = "the referenced table and column, as table(column)"},
	{.key = "on_delete", .type = PHG_FT_ENUM, .offset = offsetof(column_t, on_delete),
	 .flags = PHG_FL_ANYCASE, .enum_values = on_delete_values, .def = "no action",
	 .what = "a referential action"},
	{0},
};

static const phg_field_t create_table_fields[] = {
	PHG_ARG_TABLE(create_table_args_t),
	{.key = "columns", .type = PHG_FT_MAP_LIST, .offset = offsetof(create_table_args_t, columns),
	 .flags = PHG_FL_REQUIRED, .sub = column_fields, .sub_size = sizeof(column_t),
	 .what = "a list of columns {name, type, ...}"},
	{.key = "primary_key", .type = PHG_FT_IDENT_LIST,
	 .offset = offsetof(create_table_args_t, primary_key), .what = "a list of column names"},
	{.key = "unique", .type = PHG_FT_IDENT_LISTS, .offset = offsetof(create_table_args_t, unique),
	 .what = "a list of column lists"},
	{.key = "checks", .type = PHG_FT_SQL_LIST, .offset = offsetof(create_table_args_t, checks),
	 .sql = PHG_SQLF_CHECK, .what = "a list of CHECK expressions"},
	{0},
};

extern const phg_step_kind_t phg_kind_create_table;

/* `table(column)` or `schema.table(column)`, blanks allowed around the
 * names: 0 with the parts in @t and @c (the caller frees them), else -1. */
static int ref_parse(const char *s, char **t, char **c)
{
	const char *open = strchr(s, '('), *close = open ? strchr(open, ')') : NULL;
	const char *a = s, *ae = open, *b = open ? open + 1 : NULL, *be = close;

	*t = *c = NULL;
	if (open == NULL || close == NULL || close[strspn(close + 1, " ") + 1] != '\0')
		return -1;
	while (*a == ' ')
		a++;
	while (ae > a && ae[-1] == ' ')
		ae--;
	while (*b == ' ')
		b++;
	while (be > b && be[-1] == ' ')
		be--;
	*t = phg_asprintf("%.*s", (int)(ae - a), a);
	*c = phg_asprintf("%.*s", (int)(be - b), b);
	if (phg_table_ok(*t) && phg_ident_ok(*c))
		return 0;
	free(*t);
	free(*c);
	*t = *c = NULL;
	return -1;
}

static const column_t *column_at(const create_table_args_t *a, size_t i)
{
	return (const column_t *)a->columns.v + i;
}

static const column_t *column_named(const create_table_args_t *a, const char *name)
{
	for (size_t i = 0; i < a->columns.n; i++)
		if (strcmp(column_at(a, i)->name, name) == 0)
			return column_at(a, i);
	return NULL;
}

static phg_pos_t col_pos(const create_table_args_t *a, size_t i, const char *key)
{
	phg_pos_t p = phg_maplist_field_pos(column_fields, &a->columns, i, key);

	return p.line ? p : a->columns.pos[i];
}

/* The integer types an identity column may have. */
static int integer_type(const char *t)
{
	static const char *const ints[] = {"smallint", "int2", "integer", "int", "int4",
	                                   "bigint",   "int8", NULL};

	for (size_t i = 0; ints[i] != NULL; i++)
		if (strcasecmp(t, ints[i]) == 0)
			return 1;
	return 0;
}

/* The names of @cols are columns of the table, each once.  @what: "primary
 * key", "unique constraint 2". */
static int check_names(const create_table_args_t *a, const phg_strv_t *cols, const char *what,
                       phg_pos_t pos, phg_diag_t *d)
{
	int rc = 0;

	for (size_t i = 0; i < cols->n; i++) {
		if (column_named(a, cols->v[i]) == NULL) {
			phg_diag_error(d, pos, "%s of table \"%s\" names column \"%s\", which is not one of "
			               "its columns",
			               what, a->table, cols->v[i]);
			rc = PHG_EPLAN;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(cols->v[i], cols->v[j]) == 0) {
				phg_diag_error(d, pos, "%s of table \"%s\" names column \"%s\" twice", what,
				               a->table, cols->v[i]);
				rc = PHG_EPLAN;
				break;
			}
	}
	return rc;
}

/* An earlier create_table of @table with no drop_table of it since. */
static const phg_step_t *created_before(const phg_plan_t *plan, const phg_step_t *step,
                                        const char *table)
{
	const phg_step_t *found = NULL;

	for (size_t p = 0; p < plan->nphases; p++)
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			const phg_step_t *st = &plan->phases[p].steps[s];

			if (st == step)
				return found;
			/* only these two kinds: their first argument is the table */
			if (st->kind == NULL || st->args == NULL ||
			    (st->kind != &phg_kind_create_table &&
			     strcmp(st->kind->name, "drop_table") != 0) ||
			    *(char *const *)st->args == NULL ||
			    strcmp(*(char *const *)st->args, table) != 0)
				continue;
			if (st->kind == &phg_kind_create_table)
				found = st;
			else if (strcmp(st->kind->name, "drop_table") == 0)
				found = NULL;
		}
	return NULL;
}

static int create_table_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const create_table_args_t *a = step->args;
	const phg_step_t *twice = created_before(plan, step, a->table);
	phg_pos_t pos;
	int rc = 0;

	if (twice != NULL) {
		phg_diag_error(d, phg_step_field_pos(step, "table"),
		               "table \"%s\" is already created by the create_table step of phase "
		               "\"%s\" (line %d)",
		               a->table, twice->phase->name, twice->pos.line);
		rc = PHG_EPLAN;
	}
	for (size_t i = 0; i < a->columns.n; i++) {
		const column_t *c = column_at(a, i);
		char *rt, *rc_col;

		for (size_t j = 0; j < i; j++)
			if (strcmp(column_at(a, j)->name, c->name) == 0) {
				phg_diag_error(d, col_pos(a, i, "name"),
				               "column \"%s\" of table \"%s\" is listed twice (first at line %d)",
				               c->name, a->table, col_pos(a, j, "name").line);
				rc = PHG_EPLAN;
				break;
			}
		if (c->identity && c->def != NULL) {
			phg_diag_error(d, col_pos(a, i, "default"),
			               "column \"%s\" is an identity column and has a default: its values "
			               "come from its sequence; give it one or the other",
			               c->name);
			rc = PHG_EPLAN;
		}
		if (c->identity && !integer_type(c->type)) {
			phg_diag_error(d, col_pos(a, i, "type"),
			               "identity column \"%s\" has type \"%s\": an identity column is "
			               "smallint, integer or bigint",
			               c->name, c->type);
			rc = PHG_EPLAN;
		}
		pos = phg_maplist_field_pos(column_fields, &a->columns, i, "on_delete");
		if (c->references == NULL && pos.line > 0) {
			phg_diag_error(d, pos,
			               "column \"%s\" has on_delete but no references: on_delete is the "
			               "action of its foreign key",
			               c->name);
			rc = PHG_EPLAN;
		}
		if (c->references != NULL && strcmp(on_delete_values[c->on_delete], "set null") == 0 &&
		    (c->not_null || c->identity)) {
			phg_diag_error(d, pos.line ? pos : col_pos(a, i, "references"),
			               "column \"%s\" is NOT NULL, but its foreign key's on_delete is set "
			               "null: deleting a referenced row would fail",
			               c->name);
			rc = PHG_EPLAN;
		}
		if (c->references == NULL)
			continue;
		if (ref_parse(c->references, &rt, &rc_col) != 0) {
			phg_diag_error(d, col_pos(a, i, "references"),
			               "invalid value \"%s\" for \"references\" of column \"%s\": expected "
			               "table(column) or schema.table(column)",
			               c->references, c->name);
			rc = PHG_EPLAN;
			continue;
		}
		if (strcmp(rt, a->table) == 0 && column_named(a, rc_col) == NULL) {
			phg_diag_error(d, col_pos(a, i, "references"),
			               "column \"%s\" references column \"%s\" of its own table \"%s\", "
			               "which is not one of its columns",
			               c->name, rc_col, a->table);
			rc = PHG_EPLAN;
		}
		free(rt);
		free(rc_col);
	}
	pos = phg_step_field_pos(step, "primary_key");
	if (pos.line > 0 && a->primary_key.n == 0) {
		phg_diag_error(d, pos, "empty primary_key of table \"%s\": name its column(s), or leave "
		               "primary_key out",
		               a->table);
		rc = PHG_EPLAN;
	}
	if (check_names(a, &a->primary_key, "the primary key", pos, d) != 0)
		rc = PHG_EPLAN;
	pos = phg_step_field_pos(step, "unique");
	if (pos.line > 0 && a->unique.n == 0) {
		phg_diag_error(d, pos, "empty unique of table \"%s\": list the column lists, or leave "
		               "unique out",
		               a->table);
		rc = PHG_EPLAN;
	}
	for (size_t i = 0; i < a->unique.n; i++) {
		char what[64];

		snprintf(what, sizeof(what), "unique constraint %zu", i + 1);
		if (check_names(a, &a->unique.v[i], what, a->unique.pos[i], d) != 0)
			rc = PHG_EPLAN;
	}
	return rc;
}

static void column_list(phg_build_t *b, const phg_strv_t *cols, phg_buf_t *out)
{
	for (size_t i = 0; i < cols->n; i++)
		phg_buf_printf(out, "%s%s", i ? ", " : "", phg_q(b, cols->v[i]));
}

/* A dollar-quoting tag that does not occur in @body. */
static const char *dollar_tag(phg_build_t *b, const char *body)
{
	const char *tag = "$phg$";

	for (int i = 1; strstr(body, tag) != NULL; i++)
		tag = phg_bprintf(b, "$phg%d$", i);
	return tag;
}

static int create_table_build(phg_build_t *b)
{
	const create_table_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *lit = phg_qlit(b, phg_qtable(b, a->table));
	const char *body, *tag;
	phg_buf_t def;
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "create table %s", t);
		op->memo_sql = phg_asprintf("SELECT jsonb_build_object('created', to_regclass(%s) IS NULL)",
		                            lit);
		/* a relation of that name this run did not create: refused, not taken over */
		body = phg_bprintf(
		    b,
		    "BEGIN IF to_regclass(%s) IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = "
		    "'duplicate_table', MESSAGE = %s, DETAIL = %s, HINT = %s; END IF; END",
		    lit, phg_qlit(b, phg_bprintf(b, "table %s already exists, and this run did not create it", t)),
		    phg_qlit(b, "create_table creates a new table; it does not take over one that is "
		                "already there, nor drop it on rollback."),
		    phg_qlit(b, "Use another name, or drop or rename the existing table first if it is "
		                "really unused."));
		tag = dollar_tag(b, body);
		phg_op_sql(op, "DO %s %s %s", tag, body, tag);
		phg_buf_init(&def, 1024 * 1024);
		for (size_t i = 0; i < a->columns.n; i++) {
			const column_t *c = column_at(a, i);

			phg_buf_printf(&def, "%s\n  %s %s", i ? "," : "", phg_q(b, c->name), c->type);
			if (c->identity)
				phg_buf_adds(&def, " GENERATED BY DEFAULT AS IDENTITY");
			if (c->not_null)
				phg_buf_adds(&def, " NOT NULL");
			if (c->def != NULL)
				phg_buf_printf(&def, " DEFAULT %s", c->def);
			if (c->references != NULL) {
				char *rt, *rc;

				if (ref_parse(c->references, &rt, &rc) != 0) { /* validate refused it */
					phg_buf_free(&def);
					return phg_err_set(b->err, PHG_EPLAN, "invalid references \"%s\"",
					                   c->references);
				}
				phg_buf_printf(&def, " REFERENCES %s (%s) ON DELETE %s", phg_qtable(b, rt),
				               phg_q(b, rc), on_delete_values[c->on_delete]);
				free(rt);
				free(rc);
			}
		}
		if (a->primary_key.n > 0) {
			phg_buf_adds(&def, ",\n  PRIMARY KEY (");
			column_list(b, &a->primary_key, &def);
			phg_buf_adds(&def, ")");
		}
		for (size_t i = 0; i < a->unique.n; i++) {
			phg_buf_adds(&def, ",\n  UNIQUE (");
			column_list(b, &a->unique.v[i], &def);
			phg_buf_adds(&def, ")");
		}
		for (size_t i = 0; i < a->checks.n; i++)
			phg_buf_printf(&def, ",\n  CHECK (%s)", a->checks.v[i]);
		phg_op_sql(op, "CREATE TABLE %s (%s\n)", t, def.data);
		phg_buf_free(&def);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		/* offline (no memo): what a run that created it does */
		if (phg_memo_bool(b->memo, "created") == 0)
			break; /* never: the apply refuses a table that exists */
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop table %s, created by this run", t);
		phg_op_sql(op, "DROP TABLE IF EXISTS %s", t);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

/* The tables a backup before the step can hold: the referenced ones (the
 * foreign keys add triggers to them); the new table does not exist yet. */
static void create_table_tables(const phg_step_t *step, phg_strv_t *out)
{
	const create_table_args_t *a = step->args;

	for (size_t i = 0; i < a->columns.n; i++) {
		const column_t *c = column_at(a, i);
		char *rt, *rc;
		size_t k;

		if (c->references == NULL || ref_parse(c->references, &rt, &rc) != 0)
			continue;
		for (k = 0; k < out->n && strcmp(out->v[k], rt) != 0; k++)
			;
		if (k == out->n && strcmp(rt, a->table) != 0)
			phg_strv_push(out, rt);
		free(rt);
		free(rc);
	}
}

const phg_step_kind_t phg_kind_create_table = {
	.name = "create_table",
	.summary = "CREATE TABLE with keys, foreign keys and checks; revert drops it if this run "
	           "created it",
	.fields = create_table_fields,
	.args_size = sizeof(create_table_args_t),
	.check = create_table_check,
	.build = create_table_build,
	.tables = create_table_tables,
	.clean_on_fail = 1,
};
