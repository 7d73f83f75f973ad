/*
 * sql.c - raw SQL the plan owns: `up`, and `down` to revert it (without
 * `down` the step cannot be reverted).  With transaction: true (default) the
 * SQL runs in the step's own transaction, under lock_timeout, with the
 * progress record; with transaction: false it runs on its own (for
 * statements such as CREATE INDEX CONCURRENTLY) and must be safe to run
 * again, since a crash after it and before its record re-runs it.
 * validate lints the SQL, whole statements however long, for statements that
 * take long or strong locks, and refuses transaction control (BEGIN, COMMIT,
 * ROLLBACK, SAVEPOINT...) in a transactional step.
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
	unsigned flags;      /* LR_* */
} lint_rule_t;

#define LR_NOT_IN_DOWN 0x1u /* about reverting it: nothing to say of a `down` */
#define LR_FIRST 0x2u       /* the statement's first word */

static const lint_rule_t lint_rules[] = {
	{"create index", "concurrently",
	 "CREATE INDEX without CONCURRENTLY blocks writes for the whole build; use a "
	 "create_index step", 0},
	{"create unique index", "concurrently",
	 "CREATE INDEX without CONCURRENTLY blocks writes for the whole build; use a "
	 "create_index step", 0},
	{"reindex", "concurrently", "REINDEX without CONCURRENTLY blocks writes", 0},
	{"set not null", NULL,
	 "SET NOT NULL scans the table under ACCESS EXCLUSIVE; use a set_not_null step", 0},
	{"add constraint", "valid",
	 "ADD CONSTRAINT without NOT VALID scans the table under a strong lock; use "
	 "add_check / add_foreign_key", 0},
	{"alter column type", NULL, "ALTER COLUMN ... TYPE usually rewrites the table under "
	                            "ACCESS EXCLUSIVE; expand/contract through a new column", 0},
	{"vacuum full", NULL, "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE", 0},
	{"cluster", NULL, "CLUSTER rewrites the table under ACCESS EXCLUSIVE", 0},
	{"lock table", NULL, "LOCK TABLE can queue application queries behind it", 0},
	{"drop column", NULL, "DROP COLUMN cannot be reverted; use a drop_column step",
	 LR_NOT_IN_DOWN},
	{"drop table", NULL, "DROP TABLE cannot be reverted", LR_NOT_IN_DOWN},
	{"truncate", NULL, "TRUNCATE takes ACCESS EXCLUSIVE and cannot be reverted", LR_NOT_IN_DOWN},
	{"update", "where",
	 "an UPDATE of the whole table is one long transaction holding every row's lock to its "
	 "end (and one burst of WAL); use a backfill step, which batches it",
	 LR_FIRST},
	{"delete", "where",
	 "a DELETE of the whole table is one long transaction holding every row's lock to its end; "
	 "batch it",
	 LR_FIRST},
	{"add column", NULL, "ADD COLUMN ... NOT NULL without a default fails or rewrites", 0},
	{NULL, NULL, NULL, 0},
};

/* The lower-cased words of one statement, growing as needed: the lint
 * reads whole statements, however long. */
typedef struct {
	char (*w)[32];
	size_t n, cap;
} words_t;

static void words_push(words_t *ws, const char *s, size_t n)
{
	if (ws->n == ws->cap) {
		ws->cap = ws->cap ? ws->cap * 2 : 64;
		ws->w = phg_realloc(ws->w, ws->cap * sizeof(*ws->w));
	}
	if (n > 31)
		n = 31;
	for (size_t i = 0; i < n; i++)
		ws->w[ws->n][i] = (char)tolower((unsigned char)s[i]);
	ws->w[ws->n][n] = '\0';
	ws->n++;
}

/* Length of the dollar-quote tag at @s ("$tag$" or "$$"), 0 if none. */
static size_t dollar_tag(const char *s, size_t n)
{
	size_t i = 1;

	if (n < 2 || s[0] != '$')
		return 0;
	while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_'))
		i++;
	if (i < n && s[i] == '$' && !(i > 1 && isdigit((unsigned char)s[1])))
		return i + 1;
	return 0;
}

/* Split @sql into statements at semicolons outside quotes, dollar quotes
 * and comments; call @fn with each statement's words (quoted strings and
 * comments skipped, identifiers in double quotes left out too). */
static void statements_of(const char *sql, void (*fn)(words_t *ws, void *arg), void *arg)
{
	size_t n = strlen(sql), i = 0;
	words_t ws = {0};

	while (i < n) {
		char c = sql[i];
		size_t tag;

		if (c == '\'' || c == '"') {
			for (i++; i < n; i++) {
				if (sql[i] == c && i + 1 < n && sql[i + 1] == c)
					i++; /* '' or "" inside */
				else if (sql[i] == c)
					break;
			}
			i++;
		} else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
			while (i < n && sql[i] != '\n')
				i++;
		} else if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
			const char *e = strstr(sql + i + 2, "*/");

			i = e ? (size_t)(e - sql) + 2 : n;
		} else if (c == '$' && (tag = dollar_tag(sql + i, n - i)) > 0) {
			const char *e;
			char t[80];

			if (tag >= sizeof(t)) {
				i += tag;
				continue;
			}
			memcpy(t, sql + i, tag);
			t[tag] = '\0';
			e = strstr(sql + i + tag, t);
			i = e ? (size_t)(e - sql) + tag : n;
		} else if (c == ';') {
			fn(&ws, arg);
			ws.n = 0;
			i++;
		} else if (isalpha((unsigned char)c) || c == '_') {
			size_t k = i;

			while (i < n && (isalnum((unsigned char)sql[i]) || sql[i] == '_' || sql[i] == '$'))
				i++;
			words_push(&ws, sql + k, i - k);
		} else {
			i++;
		}
	}
	if (ws.n > 0)
		fn(&ws, arg);
	free(ws.w);
}

/* TYPE text / varchar[(n)] / character varying[(n)] without USING: the
 * widening of a varchar or text column, which PostgreSQL does without a
 * rewrite (the lint cannot see the old type; from another type it would
 * rewrite -- the documented assumption). */
static int widening(const words_t *ws, size_t at)
{
	if (at >= ws->n)
		return 0;
	for (size_t i = at; i < ws->n; i++)
		if (strcmp(ws->w[i], "using") == 0)
			return 0;
	return strcmp(ws->w[at], "text") == 0 || strcmp(ws->w[at], "varchar") == 0 ||
	       (strcmp(ws->w[at], "character") == 0 && at + 1 < ws->n &&
	        strcmp(ws->w[at + 1], "varying") == 0);
}

static int rule_matches(const lint_rule_t *r, const words_t *ws)
{
	char want[8][32];
	size_t nwant = 0, k = 0;
	const char *p = r->words;

	while (*p != '\0' && nwant < 8) {
		size_t l = strcspn(p, " ");

		memcpy(want[nwant], p, l);
		want[nwant++][l] = '\0';
		p += l;
		p += strspn(p, " ");
	}
	if ((r->flags & LR_FIRST) && (ws->n == 0 || strcmp(ws->w[0], want[0]) != 0))
		return 0;
	/* "alter column type": alter ... column ... type in that order */
	for (size_t i = 0; i < ws->n && k < nwant; i++)
		if (strcmp(ws->w[i], want[k]) == 0) {
			k++;
			if (k == nwant && strcmp(r->words, "alter column type") == 0 &&
			    widening(ws, i + 1))
				return 0;
		}
	if (k < nwant)
		return 0;
	/* consecutive words required for two-word rules except the ordered one */
	if (nwant == 2 && strcmp(r->words, "alter column type") != 0) {
		int adjacent = 0;

		for (size_t i = 0; i + 1 < ws->n; i++)
			if (strcmp(ws->w[i], want[0]) == 0 && strcmp(ws->w[i + 1], want[1]) == 0)
				adjacent = 1;
		if (!adjacent)
			return 0;
	}
	if (r->unless != NULL) {
		for (size_t i = 0; i < ws->n; i++)
			if (strcmp(ws->w[i], r->unless) == 0)
				return 0;
	}
	if (strcmp(r->words, "add column") == 0) {
		/* only NOT NULL without DEFAULT */
		int notnull = 0, def = 0;

		for (size_t i = 0; i + 1 < ws->n; i++)
			if (strcmp(ws->w[i], "not") == 0 && strcmp(ws->w[i + 1], "null") == 0)
				notnull = 1;
		for (size_t i = 0; i < ws->n; i++)
			if (strcmp(ws->w[i], "default") == 0)
				def = 1;
		return notnull && !def;
	}
	return 1;
}

/* Transaction control: BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK,
 * ABORT, SAVEPOINT, RELEASE, PREPARE TRANSACTION, COMMIT/ROLLBACK
 * PREPARED.  In a transactional step it would end (or nest) the step's own
 * transaction, so the step and its record would no longer commit together. */
static const char *tx_control(const words_t *ws)
{
	static const char *const first[] = {"begin",  "commit",    "end",     "rollback",
	                                    "abort",  "savepoint", "release", NULL};

	if (ws->n == 0)
		return NULL;
	for (size_t i = 0; first[i] != NULL; i++)
		if (strcmp(ws->w[0], first[i]) == 0)
			return first[i];
	if (strcmp(ws->w[0], "start") == 0 && ws->n > 1 && strcmp(ws->w[1], "transaction") == 0)
		return "start transaction";
	if (strcmp(ws->w[0], "prepare") == 0 && ws->n > 1 && strcmp(ws->w[1], "transaction") == 0)
		return "prepare transaction";
	return NULL;
}

typedef struct {
	const phg_step_t *step;
	const char *key;
	int transaction;
	phg_diag_t *d;
	int rc;
} lint_t;

static void lint_statement(words_t *ws, void *arg)
{
	lint_t *l = arg;
	phg_pos_t pos = phg_step_field_pos(l->step, l->key);
	const char *tc = tx_control(ws);

	if (tc != NULL && l->transaction) {
		char up[32];
		size_t i;

		for (i = 0; tc[i] != '\0' && i + 1 < sizeof(up); i++)
			up[i] = (char)toupper((unsigned char)tc[i]);
		up[i] = '\0';
		phg_diag_error(l->d, pos,
		               "sql `%s` must not control the transaction (%s): the step commits "
		               "in one transaction with its progress record; use transaction: false "
		               "to run its statements on their own",
		               l->key, up);
		l->rc = PHG_EPLAN;
		return;
	}
	for (const lint_rule_t *r = lint_rules; r->words != NULL; r++) {
		if ((r->flags & LR_NOT_IN_DOWN) && strcmp(l->key, "down") == 0)
			continue;
		if (rule_matches(r, ws)) {
			phg_diag_warn(l->d, pos, "sql `%s`: %s", l->key, r->warning);
			break;
		}
	}
}

static int lint(const phg_step_t *step, const char *key, const char *sql, int transaction,
                phg_diag_t *d)
{
	lint_t l = {.step = step, .key = key, .transaction = transaction, .d = d};

	statements_of(sql, lint_statement, &l);
	return l.rc;
}

static int sql_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const sql_args_t *a = step->args;

	int rc;

	(void)plan;
	/* the step runs in its own transaction with its progress record: a
	 * COMMIT or ROLLBACK inside would break "the step and its record commit
	 * together" (transaction: false runs each statement on its own) */
	rc = lint(step, "up", a->up, a->transaction, d);
	if (a->down != NULL && lint(step, "down", a->down, a->transaction, d) != 0)
		rc = PHG_EPLAN;
	if (a->down == NULL)
		phg_diag_warn(d, step->pos,
		              "sql step without `down`: it cannot be reverted, so `rollback` (and an "
		              "automatic rollback) will refuse past it");
	return rc;
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
