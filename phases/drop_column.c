/*
 * drop_column.c - hide a column, drop it for good when the plan completes.
 *
 * Apply renames the column to a tombstone and relaxes its NOT NULL and
 * default, so the application (which no longer names it) keeps writing; the
 * old name, nullability and default are recorded in the step's memo in the
 * same transaction, with the hiding transaction's id.  Sync triggers naming
 * the column are removed first.  With a rename_column of Y to this column
 * on the same table later in the phase, the two are one atomic swap built
 * here, at this step's place: hide X,
 * rename Y to X and move the sync triggers of both in one transaction, so
 * the name the application uses never disappears; the revert is the mirror
 * (rename X back to Y and restore X, one transaction), then the fills.
 * Revert renames it back and restores the default.  Rows written while it
 * was hidden (a row version younger than the hiding transaction) are filled
 * in batches: from the column a sync trigger links it with, when there is
 * one (after a drop + rename swap the app wrote its values there, through
 * the old name), else, where NULL, with the default.  A sync trigger that
 * copies the value back is restored with the name (harmless during the
 * fills); one that cannot be inverted (`expr` without `down_expr`) only
 * after them, so the fill does not overwrite the linked column.  Then NOT
 * NULL comes back by the set_not_null path (CHECK NOT VALID, VALIDATE, SET
 * NOT NULL).  When the plan completes, the tombstone is dropped for good (finalize), after which
 * the step can no longer be reverted.
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *table;
	char *column;
} drop_column_args_t;

static const phg_field_t drop_column_fields[] = {
	PHG_ARG_TABLE(drop_column_args_t),
	PHG_ARG_COLUMN(drop_column_args_t),
	{0},
};

#define MAX_TRG 16

extern const phg_step_kind_t phg_kind_drop_column;

int phg_drop_of(const phg_step_t *st, const char *table, const char *column)
{
	const drop_column_args_t *a = st->args;

	return st->kind == &phg_kind_drop_column && strcmp(a->table, table) == 0 &&
	       strcmp(a->column, column) == 0;
}

const phg_step_t *phg_swap_rename(const phg_plan_t *plan, const phg_step_t *drop)
{
	const drop_column_args_t *a = drop->args;
	size_t idx;
	const phg_phase_t *ph = phg_step_phase(plan, drop, &idx);

	for (size_t s = idx + 1; ph != NULL && s < ph->nsteps; s++)
		if (phg_rename_into(&ph->steps[s], a->table, a->column) != NULL)
			return &ph->steps[s];
	return NULL;
}

static int drop_column_build(phg_build_t *b)
{
	const drop_column_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *c = phg_q(b, a->column);
	const char *tomb = phg_q(b, phg_tombstone_name(b, a->column));
	const char *chk = phg_q(b, phg_derived_name(b, "phg_nn_", a->column));
	const phg_step_t *trg[MAX_TRG];
	size_t ntrg = phg_sync_triggers_naming(b->plan, b->step, a->table, a->column,
	                                       trg, MAX_TRG);
	const char *def, *xid, *young, *fill;
	int notnull, late_triggers;
	phg_op_t *op;
	/* the atomic swap: a later step of the phase renames a column into this one */
	const phg_step_t *next = phg_swap_rename(b->plan, b->step);
	const char *from = next != NULL ? phg_rename_into(next, a->table, a->column) : NULL;
	const char *fq = from != NULL ? phg_q(b, from) : NULL;

	if (from != NULL) {
		/* the sync triggers naming the renamed column go (and come back) too */
		const phg_step_t *more[MAX_TRG];
		size_t nmore = phg_sync_triggers_naming(b->plan, next, a->table, from, more, MAX_TRG);

		for (size_t i = 0; i < nmore; i++) {
			size_t j;

			for (j = 0; j < ntrg && trg[j] != more[i]; j++)
				;
			if (j == ntrg && ntrg < MAX_TRG)
				trg[ntrg++] = more[i];
		}
	}

	switch (b->dir) {
	case PHG_DIR_APPLY:
		if (from != NULL)
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
			                "swap column %s of %s: hide it as %s and rename %s to %s, in one "
			                "transaction",
			                c, t, tomb, fq, c);
		else
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "hide column %s of %s as %s", c, t,
			                tomb);
		op->memo_sql = phg_asprintf(
		    "SELECT jsonb_build_object('notnull', a.attnotnull, 'default', "
		    "pg_get_expr(d.adbin, d.adrelid), 'hidden_xid', pg_current_xact_id()::text, "
		    "'triggers', %s) "
		    "FROM pg_attribute a LEFT JOIN pg_attrdef d "
		    "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
		    "WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped",
		    phg_sync_triggers_memo(b, a->table, trg, ntrg),
		    phg_regclass(b, a->table), phg_qlit(b, a->column));
		phg_sync_triggers_drop(b, a->table, trg, ntrg, op);
		phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, c, tomb);
		phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL", t, tomb);
		phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT", t, tomb);
		if (from != NULL)
			phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, fq, c);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		def = phg_memo_str(b->memo, "default");
		notnull = phg_memo_bool(b->memo, "notnull") == 1;
		xid = phg_memo_str(b->memo, "hidden_xid");
		if (xid != NULL && (xid[0] == '\0' || strspn(xid, "0123456789") != strlen(xid)))
			xid = NULL;
		/* rows written while hidden (younger than the hiding transaction;
		 * age() compares xids modulo wraparound) */
		young = xid != NULL ? phg_bprintf(b, "age(xmin) < age((%s::bigint %% 4294967296)::text::xid)",
		                                  xid)
		                    : NULL;
		/* the column a sync trigger links it with holds what the app wrote
		 * meanwhile (after a swap, through this very name): fill from it */
		fill = NULL;
		late_triggers = 0;
		for (size_t i = 0; i < ntrg; i++) {
			const char *f;

			/* only a trigger that was there when the column was hidden links
			 * it (another may name a column that is itself hidden by now) */
			if (!phg_sync_trigger_recorded(b, trg[i]))
				continue;
			f = phg_sync_fill_expr(b, trg[i], a->column);

			if (f != NULL && fill == NULL)
				fill = f;
			if (f == NULL)
				late_triggers = 1;
		}
		if (from != NULL) {
			/* the mirror of the swap, also one transaction */
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL,
			                "swap back column %s of %s: rename it to %s and restore %s from "
			                "%s, in one transaction",
			                c, t, fq, c, tomb);
			phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, c, fq);
		} else {
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore column %s of %s", c, t);
		}
		phg_op_sql(op, "ALTER TABLE %s RENAME COLUMN %s TO %s", t, tomb, c);
		if (def != NULL)
			phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", t, c, def);
		/* a trigger that copies the same value back is harmless during the
		 * fills; one that cannot be inverted (expr only) would overwrite the
		 * linked column with what the fill writes: it comes back after them */
		if (!late_triggers)
			phg_sync_triggers_restore(b, trg, ntrg, op);
		if (fill != NULL) {
			op = phg_op_new(b, PHG_OP_BACKFILL, 0,
			                "give rows written while %s was hidden the value of the column "
			                "it is synced with", c);
			op->backfill = phg_calloc(1, sizeof(*op->backfill));
			op->backfill->table = phg_strdup(a->table);
			op->backfill->set = phg_asprintf("%s = %s", c, fill);
			op->backfill->where = phg_asprintf("%s IS DISTINCT FROM %s%s%s", c, fill,
			                                   young ? " AND " : "", young ? young : "");
			op->backfill->batch_size = 5000;
		}
		if (def != NULL && (notnull || xid != NULL)) {
			/* rows written while hidden got NULL: give them the default.
			 * For a NOT NULL column every NULL is such a row. */
			op = phg_op_new(b, PHG_OP_BACKFILL, 0,
			                "give rows written while %s was hidden its default", c);
			op->backfill = phg_calloc(1, sizeof(*op->backfill));
			op->backfill->table = phg_strdup(a->table);
			op->backfill->set = phg_asprintf("%s = DEFAULT", c);
			if (young != NULL)
				op->backfill->where = phg_asprintf("%s IS NULL AND %s", c, young);
			else
				op->backfill->where = phg_asprintf("%s IS NULL", c);
			op->backfill->batch_size = 5000;
		}
		if (late_triggers) {
			op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore the sync triggers on %s", c);
			phg_sync_triggers_restore(b, trg, ntrg, op);
		}
		if (!notnull)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore NOT NULL of %s: check NOT VALID", c);
		phg_op_sql(op, "ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID",
		           t, chk, c);
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL | PHG_OPF_SCAN,
		                "restore NOT NULL of %s: validate (rows written while it was "
		                "hidden must have a value)", c);
		phg_op_sql(op, "ALTER TABLE %s VALIDATE CONSTRAINT %s", t, chk);
		op->observe_sql = phg_asprintf("SELECT 1 FROM %s LIMIT 1", t);
		/* rows without a value (written while hidden, no default to give
		 * them): the check goes again, so the app's inserts that omit the
		 * column keep working, and the revert stops saying what is left */
		op->violation = phg_asprintf("{n} row(s) of %s written while %s was hidden have no "
		                             "value: its NOT NULL cannot come back",
		                             t, c);
		op->violation_hint = phg_asprintf(
		    "The column is back under its name, nullable%s, so the application can write. "
		    "Find the rows with: SELECT * FROM %s WHERE %s IS NULL; give them a value, then "
		    "run rollback again: it finishes by restoring NOT NULL.",
		    def != NULL ? " and with its default" : "", t, c);
		op->violation_count_sql = phg_asprintf("SELECT count(*) FROM %s WHERE %s IS NULL", t, c);
		op->violation_undo_sql = phg_asprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", t,
		                                      chk);
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore NOT NULL of %s", c);
		phg_op_sql(op, "ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", t, c);
		phg_op_sql(op, "ALTER TABLE %s DROP CONSTRAINT %s", t, chk);
		break;
	case PHG_DIR_FINALIZE:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "drop hidden column %s of %s for good",
		                tomb, t);
		phg_op_sql(op, "ALTER TABLE %s DROP COLUMN IF EXISTS %s", t, tomb);
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_drop_column = {
	.name = "drop_column",
	.summary = "hide a column (tombstone); dropped for good when the plan completes",
	.fields = drop_column_fields,
	.args_size = sizeof(drop_column_args_t),
	.build = drop_column_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
	.final_irreversible = 1,
};
