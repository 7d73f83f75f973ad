/*
 * sqlparse.c - the plan's SQL through PostgreSQL's own parser; see
 * sqlparse.h.
 *
 * libpg_query gives the parse tree as JSON (its node names are those of
 * PostgreSQL's parsenodes.h: AlterTableStmt, AlterTableCmd, Constraint...),
 * read here with jansson.  Locations in the tree are byte offsets; the
 * cursor position of a syntax error counts characters, as PostgreSQL's
 * error position does.
 */
#include "sqlparse.h"

#include <jansson.h>
#include <pg_query.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "typechange.h"

#define ASSURED "phasegate:safety_assured"

/* ---- small JSON helpers ---- */

/* The one key of a node object {"IndexStmt": {...}}, and its body. */
static const char *node_type(json_t *node, json_t **body)
{
	const char *k;
	json_t *v;

	*body = NULL;
	if (!json_is_object(node) || json_object_size(node) != 1)
		return "";
	json_object_foreach(node, k, v)
	{
		*body = v;
		return k;
	}
	return "";
}

static json_t *node_of(json_t *node, const char *type)
{
	json_t *body;

	return strcmp(node_type(node, &body), type) == 0 ? body : NULL;
}

static const char *jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s != NULL ? s : "";
}

static int jtrue(json_t *o, const char *key)
{
	return json_is_true(json_object_get(o, key));
}

/* The value of a String node {"String": {"sval": "x"}}. */
static const char *sval(json_t *node)
{
	return jstr(node_of(node, "String"), "sval");
}

/* The last name of a qualified name list (pg_catalog.int4 -> int4). */
static const char *last_name(json_t *names)
{
	size_t n = json_array_size(names);

	return n ? sval(json_array_get(names, n - 1)) : "";
}

/* "schema.table" or "table" of a RangeVar body. */
static char *rel_name(json_t *rv)
{
	const char *schema = jstr(rv, "schemaname");

	return *schema ? phg_asprintf("%s.%s", schema, jstr(rv, "relname"))
	               : phg_strdup(jstr(rv, "relname"));
}

static int strv_has(const phg_strv_t *v, const char *s)
{
	for (size_t i = 0; i < v->n; i++)
		if (strcmp(v->v[i], s) == 0)
			return 1;
	return 0;
}

/* Byte offset of the character @chars (1-based) of @s, clamped. */
static size_t char_to_byte(const char *s, int chars)
{
	size_t i = 0;

	for (int c = 1; s[i] != '\0' && c < chars; c++) {
		i++;
		while (((unsigned char)s[i] & 0xC0u) == 0x80u)
			i++;
	}
	return i;
}

/* ---- syntax of a fragment in its place ---- */

typedef struct {
	const char *pre, *post;
	const char *what; /* "is not ... " */
} place_t;

static const place_t places[] = {
	[PHG_SQLF_STATEMENTS] = {"", "", "SQL statements"},
	[PHG_SQLF_QUERY] = {"", "", "one SELECT query"},
	[PHG_SQLF_SET] = {"UPDATE phg_t SET ", "",
	                  "the SET list of one UPDATE (column = expression, ...), nothing after it"},
	[PHG_SQLF_WHERE] = {"SELECT 1 WHERE ", "", "one boolean expression"},
	[PHG_SQLF_EXPR] = {"SELECT ", "", "one expression"},
	[PHG_SQLF_CHECK] = {"ALTER TABLE phg_t ADD CONSTRAINT phg_c CHECK (", ") NOT VALID",
	                    "one boolean expression (the body of CHECK (...))"},
	[PHG_SQLF_DEFAULT] = {"ALTER TABLE phg_t ADD COLUMN phg_c int DEFAULT ", "",
	                      "one expression (what follows DEFAULT)"},
};

/* 1 when the object @o has no key outside @allowed (NULL-terminated). */
static int only_keys(json_t *o, const char *const *allowed)
{
	const char *k;
	json_t *v;

	json_object_foreach(o, k, v)
	{
		size_t i;

		for (i = 0; allowed[i] != NULL; i++)
			if (strcmp(k, allowed[i]) == 0)
				break;
		if (allowed[i] == NULL)
			return 0;
	}
	return 1;
}

/* The tree of a parsed fragment has the shape of its place. */
static int shape_ok(phg_sqlf_t kind, json_t *stmts)
{
	static const char *const where_keys[] = {"targetList", "whereClause", "limitOption",
	                                         "op", NULL};
	static const char *const expr_keys[] = {"targetList", "limitOption", "op", NULL};
	static const char *const set_keys[] = {"relation", "targetList", NULL};
	json_t *st, *b;

	if (kind == PHG_SQLF_STATEMENTS)
		return json_array_size(stmts) > 0;
	if (json_array_size(stmts) != 1)
		return 0;
	st = json_object_get(json_array_get(stmts, 0), "stmt");
	switch (kind) {
	case PHG_SQLF_STATEMENTS:
		return 1;
	case PHG_SQLF_QUERY:
		return node_of(st, "SelectStmt") != NULL;
	case PHG_SQLF_SET:
		b = node_of(st, "UpdateStmt");
		return b != NULL && only_keys(b, set_keys);
	case PHG_SQLF_WHERE:
		b = node_of(st, "SelectStmt");
		return b != NULL && only_keys(b, where_keys) &&
		       strcmp(jstr(b, "op"), "SETOP_NONE") == 0 &&
		       json_array_size(json_object_get(b, "targetList")) == 1;
	case PHG_SQLF_EXPR: {
		json_t *rt;

		b = node_of(st, "SelectStmt");
		if (b == NULL || !only_keys(b, expr_keys) || strcmp(jstr(b, "op"), "SETOP_NONE") != 0 ||
		    json_array_size(json_object_get(b, "targetList")) != 1)
			return 0;
		/* "a b" parses as `a AS b`: an alias is not part of an expression */
		rt = node_of(json_array_get(json_object_get(b, "targetList"), 0), "ResTarget");
		return rt != NULL && json_object_get(rt, "name") == NULL;
	}
	case PHG_SQLF_CHECK:
		b = node_of(st, "AlterTableStmt");
		return b != NULL && json_array_size(json_object_get(b, "cmds")) == 1;
	case PHG_SQLF_DEFAULT: {
		json_t *cmd, *col;

		b = node_of(st, "AlterTableStmt");
		if (b == NULL || json_array_size(json_object_get(b, "cmds")) != 1)
			return 0;
		cmd = node_of(json_array_get(json_object_get(b, "cmds"), 0), "AlterTableCmd");
		col = node_of(json_object_get(cmd, "def"), "ColumnDef");
		return col != NULL && json_array_size(json_object_get(col, "constraints")) == 1;
	}
	}
	return 0;
}

int phg_sql_syntax(phg_sqlf_t kind, const char *frag, size_t *at, char *msg)
{
	const place_t *p = &places[(size_t)kind < sizeof(places) / sizeof(places[0]) ? kind : 0];
	size_t flen = strlen(frag), plen = strlen(p->pre);
	char *text = phg_asprintf("%s%s%s", p->pre, frag, p->post);
	PgQueryParseResult r = pg_query_parse(text);
	int rc = 0;

	*at = 0;
	msg[0] = '\0';
	if (r.error != NULL) {
		size_t b = r.error->cursorpos > 0 ? char_to_byte(text, r.error->cursorpos) : flen + plen;

		size_t end = flen;

		/* "at end of input": just after the fragment's last token */
		while (end > 0 && strchr(" \t\r\n", frag[end - 1]) != NULL)
			end--;
		*at = b < plen ? 0 : (b - plen > end ? end : b - plen);
		snprintf(msg, PHG_SQL_MSG_MAX, "%s", r.error->message);
		rc = -1;
	} else {
		json_t *tree = json_loads(r.parse_tree, 0, NULL);

		if (!shape_ok(kind, json_object_get(tree, "stmts"))) {
			snprintf(msg, PHG_SQL_MSG_MAX, "%s%s",
			         kind == PHG_SQLF_STATEMENTS ? "no SQL statement: expected " : "expected ",
			         p->what);
			rc = -1;
		}
		json_decref(tree);
	}
	pg_query_free_parse_result(r);
	free(text);
	return rc;
}

/* ---- the lint ---- */

typedef struct {
	phg_lint_t *l;
	const char *sql;
	size_t off;  /* the statement's first token */
	int assured; /* the statement carries phasegate:safety_assured */
	int silent;  /* a table this sequence created: record, report nothing */
	json_t *stmts; /* every statement of the text, and this one's index */
	size_t at;
} stmt_t;

/* A later statement of the same text creates a view named @rel: a table
 * renamed away keeps its old name working (rename_table). */
static int view_follows(const stmt_t *s, const char *rel)
{
	for (size_t i = s->at + 1; i < json_array_size(s->stmts); i++) {
		json_t *v = node_of(json_object_get(json_array_get(s->stmts, i), "stmt"), "ViewStmt");
		char *name;
		int same;

		if (v == NULL)
			continue;
		name = rel_name(json_object_get(v, "view"));
		same = strcmp(name, rel) == 0;
		free(name);
		if (same)
			return 1;
	}
	return 0;
}

static void finding(stmt_t *s, phg_lint_sev_t sev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finding(stmt_t *s, phg_lint_sev_t sev, const char *fmt, ...)
{
	char msg[PHG_SQL_MSG_MAX];
	va_list ap;

	if (s->silent)
		return;
	if (s->assured) {
		s->l->assured++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (sev == PHG_LINT_ERROR)
		s->l->errors++;
	else
		s->l->warnings++;
	if (s->l->report != NULL)
		s->l->report(s->l->arg, sev, s->off, msg);
}

void phg_lint_init(phg_lint_t *l, unsigned flags, phg_lint_report_fn report, void *arg)
{
	memset(l, 0, sizeof(*l));
	l->flags = flags;
	l->report = report;
	l->arg = arg;
}

void phg_lint_free(phg_lint_t *l)
{
	phg_strv_clear(&l->created_);
	phg_strv_clear(&l->checks_);
	phg_strv_clear(&l->proven_);
}

/* A table this sequence created: nobody else uses it yet. */
static int created(const phg_lint_t *l, const char *rel)
{
	return strv_has(&l->created_, rel);
}

static void prove(phg_lint_t *l, const char *rel, const char *col)
{
	char *k = phg_asprintf("%s\n%s", rel, col);

	if (!strv_has(&l->proven_, k))
		phg_strv_push(&l->proven_, k);
	free(k);
}

/* The column of a CHECK body `column IS NOT NULL`, or NULL. */
static const char *not_null_column(json_t *expr)
{
	json_t *nt = node_of(expr, "NullTest"), *cr, *fields;

	if (nt == NULL || strcmp(jstr(nt, "nulltesttype"), "IS_NOT_NULL") != 0)
		return NULL;
	cr = node_of(json_object_get(nt, "arg"), "ColumnRef");
	fields = json_object_get(cr, "fields");
	if (json_array_size(fields) != 1)
		return NULL;
	return sval(json_array_get(fields, 0));
}

/* Functions whose value differs per row: as a column DEFAULT, PostgreSQL
 * must compute it for every existing row, rewriting the table. */
static const char *const volatile_funcs[] = {
	"random",          "clock_timestamp", "timeofday",       "gen_random_uuid",
	"uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "nextval",
	"txid_current",    "setseed",         NULL,
};

/* The name of a volatile function called anywhere in @expr, or NULL. */
static const char *volatile_call(json_t *expr)
{
	const char *k;
	json_t *v;
	size_t i;

	if (json_is_array(expr)) {
		for (i = 0; i < json_array_size(expr); i++) {
			const char *f = volatile_call(json_array_get(expr, i));

			if (f != NULL)
				return f;
		}
		return NULL;
	}
	if (!json_is_object(expr))
		return NULL;
	if (json_object_size(expr) == 1) {
		json_t *fc = node_of(expr, "FuncCall");

		if (fc != NULL) {
			const char *name = last_name(json_object_get(fc, "funcname"));

			for (i = 0; volatile_funcs[i] != NULL; i++)
				if (strcmp(name, volatile_funcs[i]) == 0)
					return volatile_funcs[i];
		}
	}
	json_object_foreach(expr, k, v)
	{
		const char *f = volatile_call(v);

		if (f != NULL)
			return f;
	}
	return NULL;
}

static int serial_type(const char *t)
{
	static const char *const serials[] = {"serial", "bigserial", "smallserial", "serial2",
	                                      "serial4", "serial8", NULL};

	for (size_t i = 0; serials[i] != NULL; i++)
		if (strcmp(t, serials[i]) == 0)
			return 1;
	return 0;
}

/* DROP or RENAME of a table or column: cannot be reverted, and breaks the
 * application's queries that still name it. */
static void drop_or_rename(stmt_t *s, const char *what, const char *name, const char *alt)
{
	phg_lint_t *l = s->l;

	if (l->flags & PHG_LINT_REVERT)
		return; /* a `down` undoing what `up` created */
	if (l->flags & PHG_LINT_CONTRACT)
		finding(s, PHG_LINT_WARN, "%s %s cannot be reverted; %s", what, name, alt);
	else
		finding(s, PHG_LINT_ERROR,
		        "%s %s outside a contract phase: the application still running the old "
		        "release names it, and it cannot be reverted; %s, in a contract phase "
		        "(one with backup: true) after the release that stops using it",
		        what, name, alt);
}

static const char *unique_word(const char *contype)
{
	return strcmp(contype, "CONSTR_UNIQUE") == 0 ? "UNIQUE" : "PRIMARY KEY";
}

static void lint_add_column(stmt_t *s, json_t *col)
{
	json_t *cons = json_object_get(col, "constraints");
	const char *name = jstr(col, "colname");
	const char *type = last_name(json_object_get(json_object_get(col, "typeName"), "names"));
	int notnull = 0, def = 0;

	if (serial_type(type))
		finding(s, PHG_LINT_ERROR,
		        "ADD COLUMN \"%s\" %s fills every existing row from a sequence, rewriting the "
		        "table under ACCESS EXCLUSIVE; add a plain integer column, then a default "
		        "and a backfill",
		        name, type);
	for (size_t i = 0; i < json_array_size(cons); i++) {
		json_t *c = node_of(json_array_get(cons, i), "Constraint");
		const char *ct = jstr(c, "contype");
		const char *vf;

		if (strcmp(ct, "CONSTR_NOTNULL") == 0) {
			notnull = 1;
		} else if (strcmp(ct, "CONSTR_DEFAULT") == 0) {
			def = 1;
			vf = volatile_call(json_object_get(c, "raw_expr"));
			if (vf != NULL)
				finding(s, PHG_LINT_ERROR,
				        "ADD COLUMN \"%s\" with the volatile default %s() rewrites the table "
				        "under ACCESS EXCLUSIVE; add the column without it (or with a "
				        "constant), then set the default and backfill",
				        name, vf);
		} else if (strcmp(ct, "CONSTR_GENERATED") == 0) {
			finding(s, PHG_LINT_ERROR,
			        "ADD COLUMN \"%s\" GENERATED ... STORED computes every row, rewriting the "
			        "table under ACCESS EXCLUSIVE; add a plain column, a sync_trigger and a "
			        "backfill",
			        name);
		} else if (strcmp(ct, "CONSTR_IDENTITY") == 0) {
			finding(s, PHG_LINT_ERROR,
			        "ADD COLUMN \"%s\" GENERATED AS IDENTITY fills every row, rewriting the "
			        "table under ACCESS EXCLUSIVE; add a plain column and backfill it",
			        name);
		} else if (strcmp(ct, "CONSTR_PRIMARY") == 0 || strcmp(ct, "CONSTR_UNIQUE") == 0) {
			finding(s, PHG_LINT_ERROR,
			        "ADD COLUMN \"%s\" %s builds its index under ACCESS EXCLUSIVE; add the "
			        "column, then a create_index step (unique: true)",
			        name, unique_word(ct));
		} else if (strcmp(ct, "CONSTR_FOREIGN") == 0) {
			finding(s, PHG_LINT_WARN,
			        "ADD COLUMN \"%s\" REFERENCES locks the referenced table too; add the "
			        "column, then an add_foreign_key step (NOT VALID, then VALIDATE)",
			        name);
		}
	}
	if (notnull && !def)
		finding(s, PHG_LINT_ERROR,
		        "ADD COLUMN \"%s\" NOT NULL without a default fails on a table with rows; add "
		        "it nullable, backfill, then a set_not_null step",
		        name);
}

static void lint_add_constraint(stmt_t *s, const char *rel, json_t *c)
{
	const char *ct = jstr(c, "contype"), *name = jstr(c, "conname");
	int valid = !jtrue(c, "skip_validation");

	if (strcmp(ct, "CONSTR_CHECK") == 0) {
		const char *col = not_null_column(json_object_get(c, "raw_expr"));

		if (col != NULL) {
			char *k = phg_asprintf("%s\n%s\n%s", rel, name, col);

			phg_strv_push(&s->l->checks_, k);
			free(k);
			if (valid)
				prove(s->l, rel, col);
		}
		if (valid)
			finding(s, PHG_LINT_ERROR,
			        "ADD CONSTRAINT %s CHECK without NOT VALID scans the whole table under "
			        "ACCESS EXCLUSIVE; use an add_check step (NOT VALID, then VALIDATE while "
			        "writes go on)",
			        name);
	} else if (strcmp(ct, "CONSTR_FOREIGN") == 0) {
		if (valid)
			finding(s, PHG_LINT_ERROR,
			        "ADD CONSTRAINT %s FOREIGN KEY without NOT VALID scans the table under a "
			        "lock that blocks writes on both tables; use an add_foreign_key step",
			        name);
	} else if (strcmp(ct, "CONSTR_UNIQUE") == 0 || strcmp(ct, "CONSTR_PRIMARY") == 0) {
		if (*jstr(c, "indexname") == '\0')
			finding(s, PHG_LINT_ERROR,
			        "ADD CONSTRAINT %s %s builds its index under ACCESS EXCLUSIVE; build it "
			        "with a create_index step (unique: true), then ADD CONSTRAINT ... USING "
			        "INDEX",
			        name, unique_word(ct));
	} else if (strcmp(ct, "CONSTR_EXCLUSION") == 0) {
		finding(s, PHG_LINT_ERROR,
		        "ADD CONSTRAINT %s EXCLUDE builds its index and checks every row under ACCESS "
		        "EXCLUSIVE, and has no NOT VALID form; do it in a maintenance window, or "
		        "acknowledge it with -- " ASSURED,
		        name);
	}
}

static void lint_validate(stmt_t *s, const char *rel, const char *name)
{
	size_t rl = strlen(rel), nl = strlen(name);

	for (size_t i = 0; i < s->l->checks_.n; i++) {
		const char *k = s->l->checks_.v[i];

		if (strncmp(k, rel, rl) == 0 && k[rl] == '\n' && strncmp(k + rl + 1, name, nl) == 0 &&
		    k[rl + 1 + nl] == '\n')
			prove(s->l, rel, k + rl + 1 + nl + 1);
	}
}

static void lint_alter_type(stmt_t *s, const char *col, json_t *def)
{
	json_t *cd = node_of(def, "ColumnDef");
	const char *type = last_name(json_object_get(json_object_get(cd, "typeName"), "names"));
	phg_sqltype_t ty;
	int known = phg_sqltype_builtin(type, &ty);

	if (json_object_get(cd, "raw_default") != NULL)
		finding(s, PHG_LINT_ERROR,
		        "ALTER COLUMN \"%s\" TYPE ... USING rewrites the table under ACCESS EXCLUSIVE; "
		        "expand/contract through a new column (add_column, sync_trigger, backfill, "
		        "drop_column + rename_column)",
		        col);
	/* to varchar or text: taken as a widening, which does not rewrite (the
	 * lint cannot see the old type; from another type it would: the
	 * documented assumption) */
	else if (known && (strcmp(ty.typname, "text") == 0 || strcmp(ty.typname, "varchar") == 0))
		return;
	else if (known && ty.reachable)
		finding(s, PHG_LINT_ERROR,
		        "ALTER COLUMN \"%s\" TYPE %s rewrites the table under ACCESS EXCLUSIVE unless the "
		        "column's type now is binary coercible to it (a widening), which the lint cannot "
		        "see; use an alter_column_type step, which checks it on the catalog first, or "
		        "expand/contract through a new column",
		        col, type);
	else
		finding(s, PHG_LINT_ERROR,
		        "ALTER COLUMN \"%s\" TYPE %s rewrites the table under ACCESS EXCLUSIVE%s; "
		        "expand/contract through a new column (add_column, sync_trigger, backfill, "
		        "drop_column + rename_column)",
		        col, type, known ? " (no type changes into it without a rewrite)"
		                         : " (unless binary-coercible)");
}

static void lint_alter_table(stmt_t *s, json_t *b)
{
	json_t *cmds = json_object_get(b, "cmds");
	char *rel = rel_name(json_object_get(b, "relation"));
	int fresh = created(s->l, rel);

	for (size_t i = 0; i < json_array_size(cmds); i++) {
		json_t *c = node_of(json_array_get(cmds, i), "AlterTableCmd");
		const char *sub = jstr(c, "subtype"), *name = jstr(c, "name");
		json_t *def = json_object_get(c, "def");

		if (strcmp(sub, "AT_AddConstraint") == 0) {
			stmt_t q = *s;

			q.silent = fresh; /* a new table: record the check, say nothing */
			lint_add_constraint(&q, rel, node_of(def, "Constraint"));
			continue;
		}
		if (strcmp(sub, "AT_ValidateConstraint") == 0) {
			lint_validate(s, rel, name);
			continue;
		}
		if (fresh)
			continue;
		if (strcmp(sub, "AT_AddColumn") == 0) {
			lint_add_column(s, node_of(def, "ColumnDef"));
		} else if (strcmp(sub, "AT_SetNotNull") == 0) {
			char *k = phg_asprintf("%s\n%s", rel, name);

			if (!strv_has(&s->l->proven_, k))
				finding(s, PHG_LINT_ERROR,
				        "SET NOT NULL of \"%s\" without a validated CHECK (\"%s\" IS NOT NULL) "
				        "scans the table under ACCESS EXCLUSIVE; use a set_not_null step",
				        name, name);
			free(k);
		} else if (strcmp(sub, "AT_AlterColumnType") == 0) {
			lint_alter_type(s, name, def);
		} else if (strcmp(sub, "AT_DropColumn") == 0) {
			char *what = phg_asprintf("of column \"%s\" of %s", name, rel);

			drop_or_rename(s, "DROP", what,
			               "use a drop_column step (hidden until the plan completes, so it can "
			               "be restored)");
			free(what);
		} else if (strcmp(sub, "AT_SetLogged") == 0 || strcmp(sub, "AT_SetUnLogged") == 0 ||
		           strcmp(sub, "AT_SetTableSpace") == 0) {
			finding(s, PHG_LINT_ERROR,
			        "ALTER TABLE %s SET %s rewrites the table under ACCESS EXCLUSIVE", rel,
			        strcmp(sub, "AT_SetTableSpace") == 0 ? "TABLESPACE"
			        : strcmp(sub, "AT_SetLogged") == 0   ? "LOGGED"
			                                             : "UNLOGGED");
		}
	}
	free(rel);
}

static const char *tx_word(const char *kind)
{
	static const char *const map[][2] = {
		{"TRANS_STMT_BEGIN", "BEGIN"},
		{"TRANS_STMT_START", "START TRANSACTION"},
		{"TRANS_STMT_COMMIT", "COMMIT"},
		{"TRANS_STMT_ROLLBACK", "ROLLBACK"},
		{"TRANS_STMT_SAVEPOINT", "SAVEPOINT"},
		{"TRANS_STMT_RELEASE", "RELEASE"},
		{"TRANS_STMT_ROLLBACK_TO", "ROLLBACK TO"},
		{"TRANS_STMT_PREPARE", "PREPARE TRANSACTION"},
		{"TRANS_STMT_COMMIT_PREPARED", "COMMIT PREPARED"},
		{"TRANS_STMT_ROLLBACK_PREPARED", "ROLLBACK PREPARED"},
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(kind, map[i][0]) == 0)
			return map[i][1];
	return "transaction control";
}

static int has_option(json_t *opts, const char *name)
{
	for (size_t i = 0; i < json_array_size(opts); i++)
		if (strcmp(jstr(node_of(json_array_get(opts, i), "DefElem"), "defname"), name) == 0)
			return 1;
	return 0;
}

static void lint_drop(stmt_t *s, json_t *b)
{
	const char *rt = jstr(b, "removeType");
	json_t *objs = json_object_get(b, "objects");

	if (strcmp(rt, "OBJECT_INDEX") == 0 && !jtrue(b, "concurrent")) {
		finding(s, PHG_LINT_WARN,
		        "DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on its table until the "
		        "transaction ends; run DROP INDEX CONCURRENTLY in a step with transaction: "
		        "false");
	} else if (strcmp(rt, "OBJECT_TABLE") == 0) {
		for (size_t i = 0; i < json_array_size(objs); i++) {
			json_t *items = json_object_get(node_of(json_array_get(objs, i), "List"), "items");
			phg_buf_t name;

			phg_buf_init(&name, 1024);
			for (size_t k = 0; k < json_array_size(items); k++)
				phg_buf_printf(&name, "%s%s", k ? "." : "", sval(json_array_get(items, k)));
			if (!created(s->l, name.data ? name.data : "")) {
				char *what = phg_asprintf("of table %s", name.data ? name.data : "");

				drop_or_rename(s, "DROP", what,
				               "rename it out of the way first and drop it once nothing "
				               "uses it");
				free(what);
			}
			phg_buf_free(&name);
		}
	}
}

static void lint_stmt(stmt_t *s, json_t *st)
{
	phg_lint_t *l = s->l;
	json_t *b;
	const char *type = node_type(st, &b);
	char *rel = NULL;

	if (strcmp(type, "TransactionStmt") == 0) {
		if (l->flags & PHG_LINT_TX)
			finding(s, PHG_LINT_ERROR,
			        "%s must not control the transaction: the step commits in one "
			        "transaction with its progress record; use transaction: false to run "
			        "its statements on their own",
			        tx_word(jstr(b, "kind")));
		return;
	}
	if (strcmp(type, "CreateStmt") == 0) {
		rel = rel_name(json_object_get(b, "relation"));
		phg_strv_push(&l->created_, rel);
	} else if (strcmp(type, "CreateTableAsStmt") == 0) {
		rel = rel_name(json_object_get(node_of(json_object_get(b, "into"), "IntoClause"), "rel"));
		phg_strv_push(&l->created_, rel);
	} else if (strcmp(type, "IndexStmt") == 0) {
		rel = rel_name(json_object_get(b, "relation"));
		if (!jtrue(b, "concurrent") && !created(l, rel))
			finding(s, PHG_LINT_ERROR,
			        "CREATE INDEX without CONCURRENTLY blocks writes to %s for the whole build; "
			        "use a create_index step (CONCURRENTLY, resumed safely)",
			        rel);
	} else if (strcmp(type, "DropStmt") == 0) {
		lint_drop(s, b);
	} else if (strcmp(type, "RenameStmt") == 0) {
		const char *rt = jstr(b, "renameType");

		rel = rel_name(json_object_get(b, "relation"));
		if (!created(l, rel) && strcmp(rt, "OBJECT_COLUMN") == 0) {
			char *what = phg_asprintf("of column \"%s\" of %s", jstr(b, "subname"), rel);

			drop_or_rename(s, "RENAME", what,
			               "use a rename_column step (with a sync_trigger while both "
			               "releases run)");
			free(what);
		} else if (!created(l, rel) && strcmp(rt, "OBJECT_TABLE") == 0 && !view_follows(s, rel)) {
			char *what = phg_asprintf("of table %s", rel);

			drop_or_rename(s, "RENAME", what,
			               "keep the old name working (a view) until the old release is gone");
			free(what);
		}
	} else if (strcmp(type, "AlterTableStmt") == 0) {
		if (strcmp(jstr(b, "objtype"), "OBJECT_TABLE") == 0)
			lint_alter_table(s, b);
	} else if (strcmp(type, "VacuumStmt") == 0) {
		if (has_option(json_object_get(b, "options"), "full"))
			finding(s, PHG_LINT_ERROR,
			        "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE; use pg_repack, or a "
			        "maintenance window");
	} else if (strcmp(type, "ClusterStmt") == 0) {
		finding(s, PHG_LINT_ERROR,
		        "CLUSTER rewrites the table under ACCESS EXCLUSIVE; use pg_repack, or a "
		        "maintenance window");
	} else if (strcmp(type, "ReindexStmt") == 0) {
		if (!has_option(json_object_get(b, "params"), "concurrently"))
			finding(s, PHG_LINT_ERROR,
			        "REINDEX without CONCURRENTLY blocks writes for the whole build; use "
			        "REINDEX ... CONCURRENTLY in a step with transaction: false");
	} else if (strcmp(type, "LockStmt") == 0) {
		/* modes: 1 ACCESS SHARE .. 5 SHARE (blocks writes) .. 8 ACCESS EXCLUSIVE */
		if (json_integer_value(json_object_get(b, "mode")) >= 5)
			finding(s, PHG_LINT_ERROR,
			        "LOCK TABLE in a mode that blocks writes: the application queues behind it "
			        "until the step's transaction ends; let each statement take the lock it "
			        "needs under lock_timeout");
	} else if (strcmp(type, "TruncateStmt") == 0) {
		finding(s, (l->flags & PHG_LINT_REVERT) ? PHG_LINT_WARN : PHG_LINT_ERROR,
		        "TRUNCATE takes ACCESS EXCLUSIVE and cannot be reverted");
	} else if (strcmp(type, "UpdateStmt") == 0 || strcmp(type, "DeleteStmt") == 0) {
		int upd = type[0] == 'U';

		rel = rel_name(json_object_get(b, "relation"));
		if (json_object_get(b, "whereClause") == NULL && !created(l, rel))
			finding(s, PHG_LINT_ERROR,
			        "%s of the whole of %s is one long transaction holding every row's lock to "
			        "its end (and one burst of WAL); %s",
			        upd ? "an UPDATE" : "a DELETE", rel,
			        upd ? "use a backfill step, which batches it" : "batch it");
	}
	free(rel);
}

/* Skip blanks and comments from @i: the statement's first token. */
static size_t first_token(const char *sql, size_t i, size_t end)
{
	while (i < end) {
		if (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r') {
			i++;
		} else if (sql[i] == '-' && i + 1 < end && sql[i + 1] == '-') {
			while (i < end && sql[i] != '\n')
				i++;
		} else if (sql[i] == '/' && i + 1 < end && sql[i + 1] == '*') {
			const char *e = strstr(sql + i + 2, "*/");

			i = e != NULL ? (size_t)(e - sql) + 2 : end;
		} else {
			break;
		}
	}
	return i < end ? i : end;
}

/* The statement's text [@from, @to) holds the acknowledgement. */
static int assured_in(const char *sql, size_t from, size_t to)
{
	size_t n = strlen(ASSURED);

	for (size_t i = from; i + n <= to; i++)
		if (memcmp(sql + i, ASSURED, n) == 0)
			return 1;
	return 0;
}

int phg_lint_sql(phg_lint_t *l, const char *sql)
{
	PgQueryParseResult r = pg_query_parse(sql);
	size_t len = strlen(sql);
	json_t *tree, *stmts;

	if (r.error != NULL) {
		stmt_t s = {.l = l, .sql = sql,
		            .off = r.error->cursorpos > 0 ? char_to_byte(sql, r.error->cursorpos) : len};

		finding(&s, PHG_LINT_ERROR, "%s", r.error->message);
		pg_query_free_parse_result(r);
		return -1;
	}
	tree = json_loads(r.parse_tree, 0, NULL);
	pg_query_free_parse_result(r);
	stmts = json_object_get(tree, "stmts");
	for (size_t i = 0; i < json_array_size(stmts); i++) {
		json_t *e = json_array_get(stmts, i);
		size_t from = (size_t)json_integer_value(json_object_get(e, "stmt_location"));
		size_t n = (size_t)json_integer_value(json_object_get(e, "stmt_len"));
		size_t to = n == 0 || from + n > len ? len : from + n;
		stmt_t s;

		if (from > len)
			from = len;
		s = (stmt_t){.l = l, .sql = sql, .off = first_token(sql, from, to),
		             .assured = assured_in(sql, from, to), .stmts = stmts, .at = i};
		lint_stmt(&s, json_object_get(e, "stmt"));
	}
	json_decref(tree);
	return 0;
}

void phg_lint_known_check(phg_lint_t *l, const char *table, const char *check)
{
	char *text = phg_asprintf("SELECT %s", check);
	PgQueryParseResult r = pg_query_parse(text);

	if (r.error == NULL) {
		json_t *tree = json_loads(r.parse_tree, 0, NULL);
		json_t *sel = node_of(json_object_get(json_array_get(json_object_get(tree, "stmts"), 0),
		                                      "stmt"),
		                      "SelectStmt");
		json_t *rt = node_of(json_array_get(json_object_get(sel, "targetList"), 0), "ResTarget");
		const char *col = not_null_column(json_object_get(rt, "val"));

		if (col != NULL)
			prove(l, table, col);
		json_decref(tree);
	}
	pg_query_free_parse_result(r);
	free(text);
}
