/*
 * add_column.c - ALTER TABLE ... ADD COLUMN, never rewriting the table.
 *
 * PostgreSQL 11+ adds a column with a non-volatile default without
 * rewriting; a volatile default (random(), clock_timestamp(), nextval ...)
 * rewrites the whole table under ACCESS EXCLUSIVE, and NOT NULL without a
 * default fails on a non-empty table.  validate refuses both: the default
 * must be a constant (literals, casts, and now()/CURRENT_* which are stable).
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

typedef struct {
	char *table;
	char *column;
	char *type;
	char *def;
	int nullable;
} add_column_args_t;

static const phg_field_t add_column_fields[] = {
	PHG_ARG_TABLE(add_column_args_t),
	PHG_ARG_COLUMN(add_column_args_t),
	{.key = "type", .type = PHG_FT_SQLTYPE, .offset = offsetof(add_column_args_t, type),
	 .flags = PHG_FL_REQUIRED, .what = "a type name such as varchar(20)"},
	{.key = "default", .type = PHG_FT_SQL, .offset = offsetof(add_column_args_t, def),
	 .sql = PHG_SQLF_DEFAULT,
	 .what = "a constant SQL expression"},
	{.key = "nullable", .type = PHG_FT_BOOL, .offset = offsetof(add_column_args_t, nullable),
	 .def = "true", .what = "true or false"},
	{0},
};

static const char *const stable_words[] = {
	"true", "false", "null", "current_timestamp", "current_date", "current_time",
	"localtimestamp", "localtime", "now", "current_user", "session_user", NULL,
};

static int is_stable_word(const char *s, size_t n)
{
	for (size_t i = 0; stable_words[i] != NULL; i++)
		if (strlen(stable_words[i]) == n && strncasecmp(stable_words[i], s, n) == 0)
			return 1;
	return 0;
}

/*
 * 1 if @e is a constant expression: literals ('..', E'..', numbers), the
 * stable words above (now() with its empty parentheses), casts with
 * ::type, unary signs and parentheses.  Anything else - a function call, an
 * operator, a sub-select - may be volatile and is refused.
 */
static int default_is_constant(const char *e)
{
	const char *p = e;
	int after_cast = 0; /* words after :: are type names */

	while (*p != '\0') {
		/* operators over constants: now() + interval '1 day' */
		if (isspace((unsigned char)*p) || *p == '(' || *p == ')' || *p == '+' ||
		    *p == '-' || *p == '*' || *p == '/' || *p == '%' || *p == '|' || *p == '[' ||
		    *p == ']' || *p == ',') {
			p++;
			continue;
		}
		if (p[0] == ':' && p[1] == ':') {
			p += 2;
			after_cast = 1;
			continue;
		}
		if (*p == '\'' || ((*p == 'E' || *p == 'e') && p[1] == '\'')) {
			/* backslash escapes exist in this literal only if it is E'..' */
			int escapes = *p != '\'';

			if (escapes)
				p++;
			p++;
			for (;;) {
				if (*p == '\0')
					return 0;
				if (*p == '\\' && p[1] != '\0' && escapes) {
					p += 2;
					continue;
				}
				if (*p == '\'' && p[1] == '\'') {
					p += 2;
					continue;
				}
				if (*p == '\'')
					break;
				p++;
			}
			p++;
			after_cast = 0;
			continue;
		}
		if (isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))) {
			while (isalnum((unsigned char)*p) || *p == '.')
				p++;
			continue;
		}
		if (isalpha((unsigned char)*p) || *p == '_' || *p == '"') {
			const char *w = p;
			size_t n;
			const char *q;

			if (*p == '"') {
				if (!after_cast)
					return 0;
				p = strchr(p + 1, '"');
				if (p == NULL)
					return 0;
				p++;
				continue;
			}
			while (isalnum((unsigned char)*p) || *p == '_' || *p == '.')
				p++;
			n = (size_t)(p - w);
			if (after_cast)
				continue; /* type name, possibly several words */
			q = p;
			while (isspace((unsigned char)*q))
				q++;
			if (*q == '\'' || ((*q == 'E' || *q == 'e') && q[1] == '\''))
				continue; /* a typed literal: interval '1 day', date '2024-01-01' */
			if (!is_stable_word(w, n))
				return 0;
			q = p;
			while (isspace((unsigned char)*q))
				q++;
			if (*q == '(') { /* only now() with nothing inside */
				q++;
				while (isspace((unsigned char)*q))
					q++;
				if (*q != ')' || n != 3)
					return 0;
				p = q + 1;
			}
			continue;
		}
		return 0;
	}
	return 1;
}

/* The word of @type that fills every existing row, or NULL. */
static const char *type_fills_rows(const char *type, const char **why)
{
	static const char *const serials[] = {"serial",  "serial4",     "bigserial", "serial8",
	                                      "smallserial", "serial2", NULL};
	const char *p = type;
	int first = 1;

	while (*p != '\0') {
		const char *w;
		size_t n;

		while (*p != '\0' && !isalnum((unsigned char)*p) && *p != '_')
			p++;
		w = p;
		while (isalnum((unsigned char)*p) || *p == '_')
			p++;
		n = (size_t)(p - w);
		if (n == 0)
			break;
		for (int i = 0; first && serials[i] != NULL; i++)
			if (strlen(serials[i]) == n && strncasecmp(serials[i], w, n) == 0) {
				*why = "fills every existing row from a sequence";
				return serials[i];
			}
		if (n == 9 && strncasecmp(w, "generated", 9) == 0) {
			*why = "fills every existing row (GENERATED ... AS IDENTITY or ... STORED)";
			return "GENERATED";
		}
		if (n == 7 && strncasecmp(w, "default", 7) == 0) {
			*why = "has a DEFAULT inside it";
			return "DEFAULT";
		}
		first = 0;
	}
	return NULL;
}

/* An earlier add_column of the same column, with no drop or rename of it
 * in between: the step that added it, or NULL. */
static const phg_step_t *added_before(const phg_plan_t *plan, const phg_step_t *step,
                                      size_t *phase)
{
	const add_column_args_t *a = step->args;
	const phg_step_t *found = NULL;

	for (size_t p = 0; p < plan->nphases; p++)
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			const phg_step_t *st = &plan->phases[p].steps[s];
			const phg_table_column_args_t *o = st->args;
			const char *k = st->kind != NULL ? st->kind->name : "";

			if (st == step)
				return found;
			/* only these kinds' args begin with table and column */
			if (strcmp(k, "add_column") != 0 && strcmp(k, "drop_column") != 0 &&
			    strcmp(k, "rename_column") != 0)
				continue;
			if (o == NULL || o->table == NULL || o->column == NULL ||
			    strcmp(o->table, a->table) != 0 || strcmp(o->column, a->column) != 0)
				continue;
			if (strcmp(k, "add_column") == 0) {
				found = st;
				*phase = p;
			} else if (strcmp(k, "drop_column") == 0 || strcmp(k, "rename_column") == 0) {
				found = NULL;
			}
		}
	return NULL;
}

static int add_column_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const add_column_args_t *a = step->args;
	const phg_step_t *twice;
	const char *word, *why = "";
	size_t ph = 0;
	int rc = 0;

	if (a->def != NULL && !default_is_constant(a->def)) {
		phg_diag_error(d, phg_step_field_pos(step, "default"),
		               "default of column \"%s\" is not a constant expression: a volatile "
		               "default rewrites the whole table under ACCESS EXCLUSIVE; add the column "
		               "without it (or with a constant), then set it for new rows and backfill",
		               a->column);
		rc = PHG_EPLAN;
	}
	word = type_fills_rows(a->type, &why);
	if (word != NULL && strcmp(word, "DEFAULT") == 0) {
		phg_diag_error(d, phg_step_field_pos(step, "type"),
		               "type \"%s\" of column \"%s\" has a DEFAULT inside it: a volatile one "
		               "would rewrite table \"%s\" under ACCESS EXCLUSIVE, and validate only "
		               "checks the step's `default`; write it there",
		               a->type, a->column, a->table);
		rc = PHG_EPLAN;
	} else if (word != NULL) {
		phg_diag_error(d, phg_step_field_pos(step, "type"),
		               "type \"%s\" of column \"%s\" %s: ADD COLUMN would rewrite table \"%s\" "
		               "under ACCESS EXCLUSIVE; add it as a plain type (e.g. bigint), give new rows "
		               "their value with a `sql` step (ALTER COLUMN ... SET DEFAULT nextval(...)) "
		               "and fill the existing ones with a backfill",
		               a->type, a->column, why, a->table);
		rc = PHG_EPLAN;
	}
	twice = added_before(plan, step, &ph);
	if (twice != NULL) {
		phg_diag_error(d, phg_step_field_pos(step, "column"),
		               "column \"%s\" of \"%s\" is already added by the add_column step of "
		               "phase \"%s\" (line %d)",
		               a->column, a->table, plan->phases[ph].name, twice->pos.line);
		rc = PHG_EPLAN;
	}
	if (!a->nullable && a->def == NULL) {
		phg_pos_t pos = phg_step_field_pos(step, "nullable");

		phg_diag_error(d, pos.line ? pos : step->pos,
		               "column \"%s\" is NOT NULL without a default: adding it "
		               "cannot be done without downtime; give it a constant "
		               "default, or add it nullable and enforce it later with "
		               "set_not_null",
		               a->column);
		rc = PHG_EPLAN;
	}
	return rc;
}

static int add_column_build(phg_build_t *b)
{
	const add_column_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *c = phg_q(b, a->column);
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "add column %s to %s", c, t);
		phg_op_sql(op, "ALTER TABLE %s ADD COLUMN %s %s%s%s%s", t, c, a->type,
		           a->def ? " DEFAULT " : "", a->def ? a->def : "",
		           a->nullable ? "" : " NOT NULL");
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop column %s added to %s", c, t);
		phg_op_sql(op, "ALTER TABLE %s DROP COLUMN IF EXISTS %s", t, c);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_add_column = {
	.name = "add_column",
	.summary = "ADD COLUMN without rewriting the table",
	.fields = add_column_fields,
	.args_size = sizeof(add_column_args_t),
	.check = add_column_check,
	.build = add_column_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
