/*
 * sql.c - raw SQL the plan owns: `up`, and `down` to revert it (without
 * `down` the step cannot be reverted).  With transaction: true (default) the
 * SQL runs in the step's own transaction, under lock_timeout, with the
 * progress record; with transaction: false it runs on its own (for
 * statements such as CREATE INDEX CONCURRENTLY) and must be safe to run
 * again, since a crash after it and before its record re-runs it.
 * validate lints the SQL for statements that take long or strong locks.
 */
#include "kind.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

typedef struct {
	char *up;
	char *down;
	int transaction;
} sql_args_t;

static const phg_field_t sql_fields[] = {
	{.key = "up", .type = PHG_FT_SQL, .offset = offsetof(sql_args_t, up),
	 .flags = PHG_FL_REQUIRED, .what = "SQL statements"},
	{.key = "down", .type = PHG_FT_SQL, .offset = offsetof(sql_args_t, down),
	 .what = "SQL statements that undo `up`"},
	{.key = "transaction", .type = PHG_FT_BOOL, .offset = offsetof(sql_args_t, transaction),
	 .def = "true", .what = "true or false"},
	{0},
};

static void sql_op(phg_build_t *b, const char *label, const char *sql, int tx)
{
	phg_op_t *op = phg_op_new(b, tx ? PHG_OP_TX : PHG_OP_STMT, PHG_OPF_DDL, "%s", label);

	phg_op_sql(op, "%s", sql);
}

static int sql_build(phg_build_t *b)
{
	const sql_args_t *a = b->step->args;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		sql_op(b, "sql up", a->up, a->transaction);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (a->down == NULL) {
			b->irreversible = 1;
			return phg_err_set(b->err, PHG_EIRREVERSIBLE, "sql step has no `down`");
		}
		sql_op(b, "sql down", a->down, a->transaction);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

/* ---- lint ---- */

typedef struct {
	const char *words;   /* space-separated words that must follow in order */
	const char *unless;  /* a word that makes it safe when present in the statement */
	const char *warning;
} lint_rule_t;

static const lint_rule_t lint_rules[] = {
	{"create index", "concurrently",
	 "CREATE INDEX without CONCURRENTLY blocks writes for the whole build; use a "
	 "create_index step"},
	{"create unique index", "concurrently",
	 "CREATE INDEX without CONCURRENTLY blocks writes for the whole build; use a "
	 "create_index step"},
	{"reindex", "concurrently", "REINDEX without CONCURRENTLY blocks writes"},
	{"set not null", NULL,
	 "SET NOT NULL scans the table under ACCESS EXCLUSIVE; use a set_not_null step"},
	{"add constraint", "valid",
	 "ADD CONSTRAINT without NOT VALID scans the table under a strong lock; use "
	 "add_check / add_foreign_key"},
	{"alter column type", NULL, "ALTER COLUMN ... TYPE usually rewrites the table under "
	                            "ACCESS EXCLUSIVE; expand/contract through a new column"},
	{"vacuum full", NULL, "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"},
	{"cluster", NULL, "CLUSTER rewrites the table under ACCESS EXCLUSIVE"},
	{"lock table", NULL, "LOCK TABLE can queue application queries behind it"},
	{"drop column", NULL, "DROP COLUMN cannot be reverted; use a drop_column step"},
	{"drop table", NULL, "DROP TABLE cannot be reverted"},
	{"truncate", NULL, "TRUNCATE takes ACCESS EXCLUSIVE and cannot be reverted"},
	{"add column", NULL, "ADD COLUMN ... NOT NULL without a default fails or rewrites"},
	{NULL, NULL, NULL},
};

/* Lower-cased words of one statement; quoted strings and comments skipped. */
static size_t words_of(const char *s, size_t n, char words[][32], size_t max)
{
	size_t nw = 0;

	for (size_t i = 0; i < n;) {
		if (s[i] == '\'') {
			for (i++; i < n && s[i] != '\''; i++)
				;
			i++;
		} else if (s[i] == '-' && i + 1 < n && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
		} else if (isalpha((unsigned char)s[i]) || s[i] == '_') {
			size_t k = 0;

			while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_')) {
				if (k < 31 && nw < max)
					words[nw][k++] = (char)tolower((unsigned char)s[i]);
				i++;
			}
			if (nw < max) {
				words[nw][k] = '\0';
				nw++;
			}
		} else {
			i++;
		}
	}
	return nw;
}

static int rule_matches(const lint_rule_t *r, char words[][32], size_t nw)
{
	char want[8][32];
	size_t nwant = words_of(r->words, strlen(r->words), want, 8);
	size_t k = 0;

	/* "alter column type": alter ... column ... type in that order */
	for (size_t i = 0; i < nw && k < nwant; i++)
		if (strcmp(words[i], want[k]) == 0)
			k++;
	if (k < nwant)
		return 0;
	/* consecutive words required for two-word rules except the ordered one */
	if (nwant == 2 && strcmp(r->words, "alter column type") != 0) {
		int adjacent = 0;

		for (size_t i = 0; i + 1 < nw; i++)
			if (strcmp(words[i], want[0]) == 0 && strcmp(words[i + 1], want[1]) == 0)
				adjacent = 1;
		if (!adjacent)
			return 0;
	}
	if (r->unless != NULL) {
		for (size_t i = 0; i < nw; i++)
			if (strcmp(words[i], r->unless) == 0)
				return 0;
	}
	if (strcmp(r->words, "add column") == 0) {
		/* only NOT NULL without DEFAULT */
		int notnull = 0, def = 0;

		for (size_t i = 0; i + 1 < nw; i++)
			if (strcmp(words[i], "not") == 0 && strcmp(words[i + 1], "null") == 0)
				notnull = 1;
		for (size_t i = 0; i < nw; i++)
			if (strcmp(words[i], "default") == 0)
				def = 1;
		return notnull && !def;
	}
	return 1;
}

static void lint(const phg_step_t *step, const char *key, const char *sql, phg_diag_t *d)
{
	const char *p = sql;
	phg_pos_t pos = phg_step_field_pos(step, key);

	while (*p != '\0') {
		const char *end = strchr(p, ';');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		char words[64][32];
		size_t nw = words_of(p, n, words, 64);

		for (const lint_rule_t *r = lint_rules; r->words != NULL; r++) {
			if (rule_matches(r, words, nw)) {
				phg_diag_warn(d, pos, "sql `%s`: %s", key, r->warning);
				break;
			}
		}
		p += n;
		if (*p == ';')
			p++;
	}
}

static int sql_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const sql_args_t *a = step->args;

	(void)plan;
	lint(step, "up", a->up, d);
	if (a->down != NULL)
		lint(step, "down", a->down, d);
	return 0;
}

static void sql_tables(const phg_step_t *step, phg_strv_t *out)
{
	(void)step;
	(void)out;
}

const phg_step_kind_t phg_kind_sql = {
	.name = "sql",
	.summary = "raw SQL with an optional `down`; linted for lock-unsafe statements",
	.fields = sql_fields,
	.args_size = sizeof(sql_args_t),
	.check = sql_check,
	.build = sql_build,
	.tables = sql_tables,
	.clean_on_fail = 0,
};
