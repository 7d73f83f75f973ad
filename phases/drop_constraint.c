/*
 * drop_constraint.c - ALTER TABLE ... DROP CONSTRAINT under lock_timeout;
 * revert adds it back the zero-downtime way.
 *
 * Dropping a constraint scans nothing: a brief ACCESS EXCLUSIVE lock,
 * taken under lock_timeout and retried.  In the same transaction the
 * constraint is recorded in the step's memo: pg_get_constraintdef, its
 * type, DEFERRABLE / INITIALLY DEFERRED, its comment, and for a UNIQUE or
 * PRIMARY KEY constraint its index as drop_index records one
 * (pg_get_indexdef and where it lives).  Refused there, before anything is
 * dropped: a NOT NULL constraint (PostgreSQL 18), an EXCLUDE constraint or
 * a constraint trigger (no way back without a lock that blocks writes for
 * the whole build), an inherited constraint, one of a partitioned table,
 * and a key that foreign keys reference (drop those first).
 *
 * Revert never holds a lock that blocks writes during a scan or a build:
 *  - CHECK and FOREIGN KEY: ADD CONSTRAINT ... NOT VALID (brief lock), then
 *    VALIDATE CONSTRAINT in its own transaction (SHARE UPDATE EXCLUSIVE:
 *    writes go on) -- the ops of add_check / add_foreign_key.  A constraint
 *    that was NOT VALID comes back NOT VALID.  Rows written while it was
 *    gone that violate it stop the VALIDATE; the constraint stays, NOT
 *    VALID (new writes are checked), and the message says how to find them.
 *  - UNIQUE and PRIMARY KEY: the recorded index built with CREATE UNIQUE
 *    INDEX CONCURRENTLY (drop_index.c: an INVALID leftover is dropped and
 *    built again), then ADD CONSTRAINT ... USING INDEX, a brief lock with
 *    no scan (the key's columns are still NOT NULL: dropping a primary key
 *    leaves them so).
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *table;
	char *constraint;
} drop_constraint_args_t;

static const phg_field_t drop_constraint_fields[] = {
	PHG_ARG_TABLE(drop_constraint_args_t),
	{.key = "constraint", .type = PHG_FT_IDENT,
	 .offset = offsetof(drop_constraint_args_t, constraint), .flags = PHG_FL_REQUIRED,
	 .what = "a constraint name"},
	{0},
};

/* The DO block that refuses what drop_constraint cannot bring back. */
static const char *refuse_sql(phg_build_t *b, const drop_constraint_args_t *a)
{
	const char *tl = phg_qlit(b, phg_qtable(b, a->table)), *kl = phg_qlit(b, a->constraint);
	phg_buf_t body;
	const char *sql;

	phg_buf_init(&body, 64 * 1024);
	phg_buf_printf(
	    &body,
	    "DECLARE t regclass := to_regclass(%s); k record; why text; "
	    "BEGIN "
	    "IF t IS NULL THEN RAISE EXCEPTION 'table %% does not exist', %s; END IF; "
	    "SELECT contype, coninhcount, conindid INTO k FROM pg_constraint "
	    "WHERE conrelid = t AND conname = %s; "
	    "IF NOT FOUND THEN RAISE EXCEPTION 'constraint %% of table %% does not exist', %s, t "
	    "USING HINT = 'Check the names in the plan.'; END IF; "
	    "IF k.contype = 'n' THEN RAISE EXCEPTION 'constraint %% of table %% is a NOT NULL "
	    "constraint', %s, t USING HINT = 'drop_constraint handles CHECK, FOREIGN KEY, UNIQUE "
	    "and PRIMARY KEY constraints; relax NOT NULL with ALTER COLUMN ... DROP NOT NULL in an "
	    "sql step.'; END IF; "
	    "IF k.contype NOT IN ('c', 'f', 'u', 'p') THEN RAISE EXCEPTION 'constraint %% of table "
	    "%% is an exclusion constraint or a constraint trigger', %s, t USING DETAIL = 'It could "
	    "only come back by a build that blocks writes for its whole length (it has no NOT "
	    "VALID or USING INDEX form), so drop_constraint cannot revert it.', HINT = 'Drop it "
	    "with an sql step (and a down for a maintenance window).'; END IF; "
	    "IF k.coninhcount > 0 THEN RAISE EXCEPTION 'constraint %% of table %% is inherited', "
	    "%s, t USING HINT = 'Drop it on the parent table.'; END IF; "
	    "IF (SELECT relkind FROM pg_class WHERE oid = t) = 'p' THEN RAISE EXCEPTION "
	    "'table %% is partitioned', t USING DETAIL = 'A revert could not add the constraint "
	    "back without blocking writes (no concurrent index build, no NOT VALID foreign key on "
	    "a partitioned table).'; END IF; "
	    "IF k.contype IN ('u', 'p') THEN "
	    "SELECT string_agg(format('%%I of %%s', conname, conrelid::regclass), ', ') INTO why "
	    "FROM pg_constraint WHERE contype = 'f' AND conindid = k.conindid; "
	    "IF why IS NOT NULL THEN RAISE EXCEPTION 'constraint %% of table %% is referenced by "
	    "foreign key %%', %s, t, why USING HINT = 'Drop the foreign keys first, with "
	    "drop_constraint steps before this one.'; END IF; END IF; "
	    "END",
	    tl, tl, kl, kl, kl, kl, kl, kl);
	sql = phg_bprintf(b, "DO %s", phg_qlit(b, body.data));
	phg_buf_free(&body);
	return sql;
}

static int ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), m = strlen(tail);

	return n >= m && strcmp(s + n - m, tail) == 0;
}

static void comment_sql(phg_build_t *b, phg_op_t *op, const drop_constraint_args_t *a)
{
	const char *comment = phg_memo_str(b->memo, "con_comment");

	if (comment != NULL)
		phg_op_sql(op, "COMMENT ON CONSTRAINT %s ON %s IS %s", phg_q(b, a->constraint),
		           phg_qtable(b, a->table), phg_qlit(b, comment));
}

static int revert_check_fk(phg_build_t *b, const drop_constraint_args_t *a, const char *def)
{
	const char *t = phg_qtable(b, a->table), *k = phg_q(b, a->constraint);
	size_t first = b->ops->n;
	phg_op_t *op;

	if (ends_with(def, " NOT VALID") || ends_with(def, " NOT ENFORCED")) {
		/* it was never validated (or is not enforced): back as it was */
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "add constraint %s back to %s, as it was",
		                k, t);
		phg_op_sql(op, "ALTER TABLE %s ADD CONSTRAINT %s %s", t, k, def);
		comment_sql(b, op, a);
		return 0;
	}
	phg_constraint_add(b, a->table, a->constraint, def);
	comment_sql(b, &b->ops->v[first], a);
	op = &b->ops->v[first + 1];
	op->violation = phg_asprintf("rows written while constraint %s of %s was dropped violate "
	                             "it: it cannot be validated",
	                             k, t);
	op->violation_hint = phg_asprintf(
	    "The constraint is back NOT VALID: new writes are checked. Find the rows that violate "
	    "%s, fix them, then run rollback again: it finishes with the VALIDATE.",
	    def);
	return 0;
}

static int revert_key(phg_build_t *b, const drop_constraint_args_t *a, int pk)
{
	const char *t = phg_qtable(b, a->table), *k = phg_q(b, a->constraint);
	const char *idx = phg_memo_str(b->memo, "index_name");
	phg_op_t *op;
	int rc;

	rc = phg_index_rebuild(b, phg_bprintf(b, "the index of constraint %s of %s", k, t));
	if (rc != 0 || b->irreversible)
		return rc;
	op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
	                "add constraint %s back to %s using the rebuilt index (no scan)", k, t);
	phg_op_sql(op, "ALTER TABLE %s ADD CONSTRAINT %s %s USING INDEX %s%s%s", t, k,
	           pk ? "PRIMARY KEY" : "UNIQUE", phg_q(b, idx),
	           phg_memo_bool(b->memo, "deferrable") == 1 ? " DEFERRABLE" : "",
	           phg_memo_bool(b->memo, "deferred") == 1 ? " INITIALLY DEFERRED" : "");
	comment_sql(b, op, a);
	return 0;
}

static int drop_constraint_build(phg_build_t *b)
{
	const drop_constraint_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *k = phg_q(b, a->constraint);
	const char *def, *type;
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop constraint %s of %s (recorded first)",
		                k, t);
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('condef', pg_get_constraintdef(k.oid), 'contype', "
		    "k.contype::text, 'deferrable', k.condeferrable, 'deferred', k.condeferred, "
		    "'con_comment', obj_description(k.oid, 'pg_constraint')) || "
		    "CASE WHEN k.contype IN ('u', 'p') THEN (SELECT %s) ELSE '{}'::jsonb END "
		    "FROM pg_constraint k WHERE k.conrelid = to_regclass(%s) AND k.conname = %s",
		    phg_index_memo_sql(b, "k.conindid"), phg_qlit(b, t), phg_qlit(b, a->constraint));
		phg_op_sql(op, "%s", refuse_sql(b, a));
		phg_op_sql(op, "ALTER TABLE %s DROP CONSTRAINT %s", t, k);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (b->memo == NULL) {
			/* rendered offline: what it was is read at apply time */
			phg_op_new(b, PHG_OP_TX, 0,
			           "add constraint %s back to %s as recorded at apply: CHECK and FOREIGN "
			           "KEY NOT VALID, then VALIDATE; UNIQUE and PRIMARY KEY by CREATE UNIQUE "
			           "INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
			           k, t);
			break;
		}
		def = phg_memo_str(b->memo, "condef");
		type = phg_memo_str(b->memo, "contype");
		if (def == NULL || type == NULL) {
			phg_err_set(b->err, PHG_EIRREVERSIBLE,
			            "the definition of constraint %s of %s was not recorded", k, t);
			b->irreversible = 1;
			break;
		}
		if (strcmp(type, "c") == 0 || strcmp(type, "f") == 0)
			return revert_check_fk(b, a, def);
		if (strcmp(type, "u") == 0 || strcmp(type, "p") == 0)
			return revert_key(b, a, type[0] == 'p');
		phg_err_set(b->err, PHG_EIRREVERSIBLE,
		            "constraint %s of %s (type %s) cannot be added back without blocking "
		            "writes",
		            k, t, type);
		b->irreversible = 1;
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_drop_constraint = {
	.name = "drop_constraint",
	.summary = "DROP CONSTRAINT under lock_timeout; revert re-adds it NOT VALID + VALIDATE "
	           "or USING INDEX",
	.fields = drop_constraint_fields,
	.args_size = sizeof(drop_constraint_args_t),
	.check = NULL,
	.build = drop_constraint_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
};
