/*
 * set_not_null.c - enforce NOT NULL without holding ACCESS EXCLUSIVE during
 * the table scan: CHECK (col IS NOT NULL) NOT VALID (brief lock), VALIDATE
 * (SHARE UPDATE EXCLUSIVE: writes continue), then SET NOT NULL, which
 * PostgreSQL 12+ proves from the valid CHECK without scanning, and drop the
 * CHECK.  Each is its own transaction, so a resumed run continues after the
 * last one that committed.
 */
#include "kind.h"

typedef struct {
	char *table;
	char *column;
} set_not_null_args_t;

static const phg_field_t set_not_null_fields[] = {
	PHG_ARG_TABLE(set_not_null_args_t),
	PHG_ARG_COLUMN(set_not_null_args_t),
	{0},
};

static int set_not_null_build(phg_build_t *b)
{
	const set_not_null_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *c = phg_q(b, a->column);
	const char *chk = phg_q(b, phg_derived_name(b, "phg_nn_", a->column));
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "add CHECK (%s IS NOT NULL) NOT VALID to %s", c, t);
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('was_notnull', attnotnull) FROM pg_attribute "
		    "WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
		    phg_regclass(b, a->table), phg_qlit(b, a->column));
		/* already NOT NULL (by the app's own schema, or a second step):
		 * no CHECK, no scan, no lock; recorded, and kept by the revert */
		op->noop_sql = phg_asprintf(
		    "SELECT coalesce((SELECT attnotnull FROM pg_attribute WHERE attrelid = %s AND "
		    "attname = %s AND NOT attisdropped), false)",
		    phg_regclass(b, a->table), phg_qlit(b, a->column));
		op->noop_note = phg_asprintf("column %s of %s is already NOT NULL: nothing to do (no "
		                             "check, no scan); a rollback keeps it NOT NULL",
		                             c, t);
		phg_op_sql(op, "ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID",
		           t, chk, c);
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL | PHG_OPF_SCAN,
		                "validate %s: scans %s, writes continue", chk, t);
		phg_op_sql(op, "ALTER TABLE %s VALIDATE CONSTRAINT %s", t, chk);
		op->observe_sql = phg_asprintf("SELECT 1 FROM %s LIMIT 1", t);
		op->violation = phg_asprintf("column %s of %s has {n} NULL value(s): NOT NULL cannot "
		                             "be enforced",
		                             c, t);
		op->violation_count_sql = phg_asprintf("SELECT count(*) FROM %s WHERE %s IS NULL", t, c);
		op->violation_hint = phg_asprintf(
		    "Count them with: SELECT count(*) FROM %s WHERE %s IS NULL; fill them (a backfill "
		    "step before this one, or the application) and apply again.",
		    t, c);
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
		                "SET NOT NULL on %s (proven by the valid check, no scan)", c);
		phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", t, c);
		phg_op_sql(op, "ALTER TABLE %s DROP CONSTRAINT %s", t, chk);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (b->progress >= 3 && phg_memo_bool(b->memo, "was_notnull") == 1) {
			/* NOT NULL was there before the plan: nothing to undo, and no lock */
			phg_op_new(b, PHG_OP_TX, 0, "keep NOT NULL on %s of %s: it was NOT NULL before "
			                            "the plan",
			           c, t);
			break;
		}
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "relax NOT NULL on %s of %s", c, t);
		if (b->progress >= 3 && phg_memo_bool(b->memo, "was_notnull") != 1)
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL", t, c);
		phg_op_sql(op, "ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", t, chk);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_set_not_null = {
	.name = "set_not_null",
	.summary = "NOT NULL through CHECK NOT VALID + VALIDATE, no long lock",
	.fields = set_not_null_fields,
	.args_size = sizeof(set_not_null_args_t),
	.build = set_not_null_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
