/*
 * alter_column_type.c - ALTER COLUMN ... TYPE, only where PostgreSQL does
 * not rewrite the table (orchestrator/typechange.h has the rule table):
 * varchar(n) -> varchar(m >= n) / varchar / text, text -> varchar,
 * numeric(p,s) -> numeric(p2 >= p, s) / numeric, varbit widening, time and
 * timestamp precision raised, and the other binary-coercible casts of
 * pg_cast (cidr -> inet ...).  Any other change rewrites the table (and
 * every index) under ACCESS EXCLUSIVE: the application stops for as long as
 * that takes, so it is refused -- by validate when it can tell (the target
 * type can never be reached without a rewrite, or `from` says what the
 * column is), and always at apply time, by a catalog check in the same
 * transaction, before the ALTER: the column's type now (format_type, its
 * modifier, pg_cast), the indexes that would be rebuilt (another operator
 * class, an expression or a predicate), a CHECK on the column (re-checked
 * against every row), a collation the change would reset.  The message
 * points at the expand/contract recipe (docs/plan-format.md).
 *
 * The ALTER itself takes ACCESS EXCLUSIVE for a moment, under lock_timeout
 * with retries.  The type the column had is recorded in the step's memo in
 * the same transaction, with whether the way back is rewrite-free too.  It
 * often is not (varchar(100) -> varchar(255) is free; back to varchar(100)
 * checks every row under ACCESS EXCLUSIVE): then revert deliberately keeps
 * the new, wider type and says so; else it restores the old type exactly.
 * The change drops the column's statistics, so an ANALYZE of the column
 * follows it (SHARE UPDATE EXCLUSIVE: reads and writes go on).
 */
#include "kind.h"
#include "../orchestrator/typechange.h"

#include <string.h>

typedef struct {
	char *table;
	char *column;
	char *type;
	char *from;
} alter_column_type_args_t;

static const phg_field_t alter_column_type_fields[] = {
	PHG_ARG_TABLE(alter_column_type_args_t),
	PHG_ARG_COLUMN(alter_column_type_args_t),
	{.key = "type", .type = PHG_FT_SQLTYPE, .offset = offsetof(alter_column_type_args_t, type),
	 .flags = PHG_FL_REQUIRED, .what = "a type name such as varchar(255)"},
	{.key = "from", .type = PHG_FT_SQLTYPE, .offset = offsetof(alter_column_type_args_t, from),
	 .what = "the column's type now, such as varchar(100)"},
	{0},
};

#define RECIPE                                                                              \
	"expand/contract through a new column instead: add_column, sync_trigger, backfill, "      \
	"set_not_null, then drop_column + rename_column (docs/plan-format.md, \"Changing a "      \
	"column type\")"

/* The lint cannot see the column's type now; the DO block before the ALTER
 * checked it on the catalog (sqlparse.h: an acknowledged statement). */
#define ASSURED "/* phasegate:safety_assured: checked on the catalog just before: no rewrite */ "

static int act_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const alter_column_type_args_t *a = step->args;
	phg_sqltype_t to, from;
	char msg[256];
	const char *why;
	int rc = 0;

	(void)plan;
	if (phg_sqltype_parse(a->type, &to, msg, sizeof(msg)) != 0) {
		phg_diag_error(d, phg_step_field_pos(step, "type"), "%s", msg);
		return PHG_EPLAN;
	}
	if (to.array || (to.typname != NULL && !to.reachable)) {
		phg_diag_error(d, phg_step_field_pos(step, "type"),
		               "changing column \"%s\" of \"%s\" to type \"%s\" rewrites the table under "
		               "ACCESS EXCLUSIVE: no type changes into %s without a rewrite; " RECIPE,
		               a->column, a->table, a->type,
		               to.array ? "an array type" : a->type);
		return PHG_EPLAN;
	}
	if (a->from == NULL)
		return 0;
	if (phg_sqltype_parse(a->from, &from, msg, sizeof(msg)) != 0) {
		phg_diag_error(d, phg_step_field_pos(step, "from"), "%s", msg);
		return PHG_EPLAN;
	}
	if (phg_type_change(&from, &to, &why) == PHG_TC_REWRITE) {
		phg_diag_error(d, phg_step_field_pos(step, "type"),
		               "changing column \"%s\" of \"%s\" from %s to %s rewrites the table under "
		               "ACCESS EXCLUSIVE (it %s); " RECIPE,
		               a->column, a->table, a->from, a->type, why);
		rc = PHG_EPLAN;
	} else if (phg_type_change(&to, &from, &why) == PHG_TC_REWRITE) {
		phg_diag_warn(d, phg_step_field_pos(step, "type"),
		              "a rollback keeps column \"%s\" of \"%s\" as %s: going back to %s would "
		              "rewrite the table under ACCESS EXCLUSIVE (it %s)",
		              a->column, a->table, a->type, a->from, why);
	}
	return rc;
}

/* The type @ty as an oid expression. */
static const char *type_oid(phg_build_t *b, const phg_sqltype_t *ty)
{
	if (ty->typname != NULL)
		return phg_bprintf(b, "'pg_catalog.%s'::regtype", ty->typname);
	return phg_bprintf(b, "to_regtype(%s)", phg_qlit(b, ty->base));
}

/* The column's pg_attribute row as `a`. */
static const char *attr_from(phg_build_t *b, const alter_column_type_args_t *a)
{
	return phg_bprintf(b,
	                   "FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attname = %s "
	                   "AND NOT a.attisdropped",
	                   phg_regclass(b, a->table), phg_qlit(b, a->column));
}

/*
 * The catalog check before the ALTER: a DO block that raises, so the
 * transaction (memo included) is rolled back before anything changed,
 * unless the column changes to type @oid, modifier @mod without a rewrite,
 * a rebuilt index, a re-checked CHECK or a reset collation.  @what names
 * the change in messages ("changing", "changing back").
 */
static void check_sql(phg_build_t *b, const alter_column_type_args_t *a, phg_op_t *op,
                      const char *what, const char *oid, const char *mod, const char *spelled)
{
	const char *rel = phg_regclass(b, a->table), *from = attr_from(b, a);
	const char *names = phg_qlit(b, phg_bprintf(b, "column %s of %s", phg_q(b, a->column),
	                                            phg_qtable(b, a->table)));
	const char *hint = phg_qlit(b, "It would hold ACCESS EXCLUSIVE (no reads, no writes) for as "
	                               "long as that takes; " RECIPE ".");
	phg_buf_t body, rule;
	const char *tag = "$phg$";
	char tags[16];

	phg_buf_init(&rule, 64 * 1024);
	phg_buf_init(&body, 128 * 1024);
	phg_type_rule_sql(&rule, "a.atttypid", "a.atttypmod", oid, mod);
	phg_buf_printf(
	    &body,
	    "DECLARE phg_cur text; phg_att int2; phg_ok bool; phg_tgt text; BEGIN "
	    "SELECT format_type(a.atttypid, a.atttypmod), a.attnum INTO phg_cur, phg_att %s; "
	    "IF phg_att IS NULL THEN RAISE EXCEPTION USING ERRCODE = 'undefined_column', MESSAGE = "
	    "%s || ' does not exist'; END IF; "
	    "IF (%s) IS NULL THEN RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = "
	    "format('type %%s does not exist', %s); END IF; "
	    "phg_tgt := format_type(%s, %s); "
	    "SELECT %s INTO phg_ok %s; "
	    "IF NOT coalesce(phg_ok, false) THEN RAISE EXCEPTION USING ERRCODE = "
	    "'feature_not_supported', MESSAGE = format('%s %%s from %%s to %%s rewrites the table "
	    "under ACCESS EXCLUSIVE', %s, phg_cur, phg_tgt), DETAIL = 'Only binary-coercible "
	    "changes (such as varchar(n) to varchar(m >= n) or text, numeric(p,s) to numeric(q >= p,s)) keep the "
	    "table as it is.', HINT = %s; END IF; ",
	    from, names, oid, phg_qlit(b, spelled), oid, mod, rule.data ? rule.data : "false", from,
	    what, names, hint);
	phg_buf_printf(
	    &body,
	    "IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conrelid = %s AND "
	    "k.contype = 'c' AND phg_att = ANY (k.conkey)) THEN RAISE EXCEPTION USING ERRCODE = "
	    "'feature_not_supported', MESSAGE = format('%s %%s to %%s re-checks its CHECK "
	    "constraint against every row under ACCESS EXCLUSIVE', %s, phg_tgt), HINT = %s; END IF; "
	    "IF EXISTS (SELECT 1 %s AND a.attcollation <> 0 AND a.attcollation IS DISTINCT FROM "
	    "(SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = (%s))) THEN RAISE "
	    "EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = format('%s %%s to %%s "
	    "would reset its collation to the default one and rebuild its indexes', %s, phg_tgt), "
	    "HINT = 'Change it with an sql step that gives the COLLATE clause.'; END IF; "
	    "IF NOT (",
	    rel, what, names, hint, from, oid, what, names);
	phg_type_index_sql(&body, rel, "phg_att", oid);
	phg_buf_printf(&body,
	               ") THEN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = "
	               "format('%s %%s to %%s rebuilds an index on it (another operator class, an "
	               "expression or a predicate) under ACCESS EXCLUSIVE', %s, phg_tgt), HINT = %s; "
	               "END IF; END",
	               what, names, hint);
	/* a dollar quote the body does not hold */
	for (int i = 0; body.data != NULL && strstr(body.data, tag) != NULL && i < 100; i++) {
		snprintf(tags, sizeof(tags), "$phg%d$", i);
		tag = tags;
	}
	phg_op_sql(op, "DO %s %s %s", tag, body.data ? body.data : "", tag);
	phg_buf_free(&body);
	phg_buf_free(&rule);
}

/* ANALYZE of the column: the type change dropped its statistics. */
static void analyze_op(phg_build_t *b, const alter_column_type_args_t *a)
{
	const char *t = phg_qtable(b, a->table), *c = phg_q(b, a->column);
	phg_op_t *op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL,
	                          "analyze %s of %s (the type change dropped its statistics)", c, t);

	phg_op_sql(op, "ANALYZE %s (%s)", t, c);
}

static int act_build(phg_build_t *b)
{
	const alter_column_type_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *c = phg_q(b, a->column), *from;
	phg_sqltype_t to, was;
	char msg[256];
	phg_buf_t back;
	const char *oid, *mod, *old, *keep;
	int back_free;
	phg_op_t *op;

	if (phg_sqltype_parse(a->type, &to, msg, sizeof(msg)) != 0) {
		phg_err_set(b->err, PHG_EPLAN, "%s", msg);
		return PHG_EPLAN;
	}
	oid = type_oid(b, &to);
	mod = phg_bprintf(b, "%d", to.typmod);
	from = attr_from(b, a);
	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "change the type of %s of %s to %s (checked first: no rewrite)", c, t,
		                a->type);
		op->noop_sql = phg_asprintf("SELECT coalesce((SELECT a.atttypid = %s AND a.atttypmod "
		                            "= %s %s), false)",
		                            oid, mod, from);
		op->noop_note = phg_asprintf("column %s of %s is already of type %s: nothing to do; a "
		                             "rollback keeps it",
		                             c, t, a->type);
		phg_buf_init(&back, 64 * 1024);
		phg_type_rule_sql(&back, oid, mod, "a.atttypid", "a.atttypmod");
		phg_buf_adds(&back, " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE "
		                    "k.conrelid = a.attrelid AND k.contype = 'c' AND a.attnum = ANY "
		                    "(k.conkey)) AND ");
		phg_type_index_sql(&back, "a.attrelid", "a.attnum", "a.atttypid");
		/* the way back is judged now, on the same catalog */
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('type', format_type(a.atttypid, a.atttypmod), 'typid', "
		    "a.atttypid::text, 'typmod', a.atttypmod, 'back', coalesce(%s, false)) %s",
		    back.data ? back.data : "false", from);
		phg_buf_free(&back);
		check_sql(b, a, op, "changing", oid, mod, a->type);
		phg_op_sql(op, ASSURED "ALTER TABLE %s ALTER COLUMN %s TYPE %s", t, c, a->type);
		analyze_op(b, a);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		old = phg_memo_str(b->memo, "type");
		back_free = phg_memo_bool(b->memo, "back");
		if (b->memo == NULL && a->from != NULL &&
		    phg_sqltype_parse(a->from, &was, msg, sizeof(msg)) == 0) {
			/* offline: what `from` says */
			old = a->from;
			back_free = phg_type_change(&to, &was, NULL) == PHG_TC_FREE;
		}
		if (old == NULL) {
			/* offline, no `from`: decided on the memo when it runs */
			phg_op_new(b, PHG_OP_TX, 0,
			           "restore the type of %s of %s recorded by apply when going back needs "
			           "no rewrite, else keep %s",
			           c, t, a->type);
			break;
		}
		if (back_free != 1) {
			keep = phg_bprintf(b,
			                   "keep type %s of column %s of %s: going back to %s would "
			                   "rewrite or scan the table under ACCESS EXCLUSIVE (deliberate: "
			                   "the way back is not rewrite-free)",
			                   a->type, c, t, old);
			op = phg_op_new(b, PHG_OP_TX, 0, "%s", keep);
			op->noop_sql = phg_strdup("SELECT true");
			op->noop_note = phg_strdup(keep);
			break;
		}
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "restore the type of %s of %s to %s (checked first: no rewrite)", c, t,
		                old);
		if (b->memo != NULL && phg_memo_str(b->memo, "typid") != NULL)
			check_sql(b, a, op, "changing back",
			          phg_bprintf(b, "%s::oid", phg_qlit(b, phg_memo_str(b->memo, "typid"))),
			          phg_bprintf(b, "%lld",
			                      (long long)json_integer_value(json_object_get(b->memo, "typmod"))),
			          old);
		else if (phg_sqltype_parse(old, &was, msg, sizeof(msg)) == 0)
			check_sql(b, a, op, "changing back", type_oid(b, &was),
			          phg_bprintf(b, "%d", was.typmod), old);
		/* `old` is format_type's own spelling (or the plan's `from`) */
		phg_op_sql(op, ASSURED "ALTER TABLE %s ALTER COLUMN %s TYPE %s", t, c, old);
		analyze_op(b, a);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_alter_column_type = {
	.name = "alter_column_type",
	.summary = "ALTER COLUMN TYPE only where no rewrite happens (checked on the catalog first)",
	.fields = alter_column_type_fields,
	.args_size = sizeof(alter_column_type_args_t),
	.check = act_check,
	.build = act_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
};
