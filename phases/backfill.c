/*
 * backfill.c - UPDATE every row in key order, one committed batch at a time.
 *
 * The engine (orchestrator/backfill_run.c) runs the batches: each batch and
 * its checkpoint (the last key done, rows and batches counted) are one
 * statement, so one transaction, so a resumed run never applies a batch
 * twice and never skips one.  Rows inserted during the backfill with a key
 * after the cursor are covered by the pass itself; with a `where` filter a
 * final sweep from the start covers rows inserted behind the cursor.
 * Revert runs `down` (a SET fragment) over every row the same way.
 */
#include "kind.h"

#include <inttypes.h>
#include <string.h>

typedef struct {
	char *table;
	char *set;
	char *where;
	uint64_t batch_size;
	phg_strv_t key;
	char *down;
} backfill_args_t;

static const phg_field_t backfill_fields[] = {
	PHG_ARG_TABLE(backfill_args_t),
	{.key = "set", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, set),
	 .flags = PHG_FL_REQUIRED, .what = "a SET fragment such as \"new = old\""},
	{.key = "where", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, where),
	 .what = "a filter such as \"new IS NULL\""},
	{.key = "batch_size", .type = PHG_FT_UINT, .offset = offsetof(backfill_args_t, batch_size),
	 .min = 1, .max = 1000000, .def = "5000", .what = "rows per batch (1 to 1000000)"},
	{.key = "key", .type = PHG_FT_IDENT_LIST, .offset = offsetof(backfill_args_t, key),
	 .what = "the key column(s) covered by a unique index (default: the primary key)"},
	{.key = "down", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, down),
	 .what = "a SET fragment that undoes `set`"},
	{0},
};

static phg_op_t *backfill_op(phg_build_t *b, const backfill_args_t *a, const char *set,
                             const char *where, const char *label)
{
	phg_op_t *op = phg_op_new(b, PHG_OP_BACKFILL, PHG_OPF_SCAN, "%s", label);
	phg_backfill_spec_t *bf = phg_calloc(1, sizeof(*bf));
	const char *t = phg_qtable(b, a->table);
	phg_buf_t keys;

	bf->table = phg_strdup(a->table);
	bf->set = phg_strdup(set);
	bf->where = phg_strdup(where);
	bf->batch_size = a->batch_size;
	for (size_t i = 0; i < a->key.n; i++)
		phg_strv_push(&bf->key, a->key.v[i]);
	op->backfill = bf;

	phg_buf_init(&keys, 4096);
	if (a->key.n == 0)
		phg_buf_adds(&keys, "<primary key>");
	for (size_t i = 0; i < a->key.n; i++)
		phg_buf_printf(&keys, "%s%s", i ? ", " : "", phg_q(b, a->key.v[i]));
	phg_op_sql(op,
	           "WITH batch AS (SELECT %s FROM %s WHERE (%s) > (<last key done>)%s%s%s "
	           "ORDER BY %s LIMIT %" PRIu64 ") "
	           "UPDATE %s SET %s FROM batch WHERE (%s) = (batch.*)%s%s%s",
	           keys.data, t, keys.data, where ? " AND (" : "", where ? where : "",
	           where ? ")" : "", keys.data, a->batch_size, t, set, keys.data,
	           where ? " AND (" : "", where ? where : "", where ? ")" : "");
	phg_buf_free(&keys);
	return op;
}

static int backfill_build(phg_build_t *b)
{
	const backfill_args_t *a = b->step->args;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		backfill_op(b, a, a->set, a->where,
		            phg_bprintf(b, "backfill %s: SET %s", phg_qtable(b, a->table), a->set));
		break;
	case PHG_DIR_REVERT:
		if (a->down != NULL)
			backfill_op(b, a, a->down, NULL,
			            phg_bprintf(b, "undo backfill of %s: SET %s",
			                        phg_qtable(b, a->table), a->down));
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

static int backfill_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const backfill_args_t *a = step->args;

	(void)plan;
	if (strchr(a->set, ';') != NULL || (a->where && strchr(a->where, ';') != NULL) ||
	    (a->down && strchr(a->down, ';') != NULL)) {
		phg_diag_error(d, step->pos,
		               "backfill fragments must not contain \";\": `set`, `where` and "
		               "`down` are parts of one UPDATE statement");
		return PHG_EPLAN;
	}
	return 0;
}

const phg_step_kind_t phg_kind_backfill = {
	.name = "backfill",
	.summary = "UPDATE in key order, one committed, checkpointed batch at a time",
	.fields = backfill_fields,
	.args_size = sizeof(backfill_args_t),
	.check = backfill_check,
	.build = backfill_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
};
