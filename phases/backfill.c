/*
 * backfill.c - UPDATE every row in key order, one committed batch at a time.
 *
 * phg_backfill_batch_sql() below builds the one statement of a batch: the
 * batch and its checkpoint (the last key done, rows and batches counted)
 * are one statement, so one transaction, so a resumed run never applies a
 * batch twice and never skips one.  The executor (orchestrator/exec.c)
 * sends it as built, and `plan` prints the same text; any step kind that
 * emits a PHG_OP_BACKFILL op (drop_column's revert does) gets the same.  Rows inserted during the backfill with a key
 * after the cursor are covered by the pass itself; with a `where` filter a
 * final sweep from the start covers rows inserted behind the cursor.
 * Revert runs `down` (a SET fragment) over every row the same way.
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <inttypes.h>
#include <string.h>

#include "../orchestrator/store.h"

static void key_list(phg_build_t *qb, const phg_strv_t *keys, phg_buf_t *b, const char *prefix,
                     const char *alias_pfx)
{
	for (size_t i = 0; i < keys->n; i++) {
		phg_buf_printf(b, "%s%s%s", i ? ", " : "", prefix, phg_q(qb, keys->v[i]));
		if (alias_pfx != NULL)
			phg_buf_printf(b, " AS %s%zu", alias_pfx, i);
	}
}

/* (keys) OP ($first, $first+1, ...): the key against parameters */
static void key_cmp(phg_build_t *qb, const phg_strv_t *keys, phg_buf_t *b, const char *op,
                    size_t first)
{
	phg_buf_adds(b, "(");
	key_list(qb, keys, b, "", NULL);
	phg_buf_printf(b, ") %s (", op);
	for (size_t i = 0; i < keys->n; i++)
		phg_buf_printf(b, "%s$%zu", i ? ", " : "", first + i);
	phg_buf_adds(b, ")");
}

void phg_backfill_count_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, phg_buf_t *b)
{
	phg_buf_printf(b, "SELECT NULL::text, count(*) FROM %s WHERE ", phg_qtable(qb, bf->table));
	key_cmp(qb, keys, b, "<=", 1);
}

void phg_backfill_max_key_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                              const phg_strv_t *keys, phg_buf_t *b)
{
	phg_buf_adds(b, "SELECT ARRAY[");
	for (size_t i = 0; i < keys->n; i++)
		phg_buf_printf(b, "%s%s::text", i ? ", " : "", phg_q(qb, keys->v[i]));
	phg_buf_printf(b, "] FROM %s ORDER BY ", phg_qtable(qb, bf->table));
	for (size_t i = 0; i < keys->n; i++)
		phg_buf_printf(b, "%s%s DESC", i ? ", " : "", phg_q(qb, keys->v[i]));
	phg_buf_adds(b, " LIMIT 1");
}

void phg_backfill_probe_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, phg_buf_t *b)
{
	phg_buf_printf(b, "SELECT 1 FROM %s WHERE ", phg_qtable(qb, bf->table));
	key_cmp(qb, keys, b, ">=", 1);
	phg_buf_adds(b, " ORDER BY ");
	key_list(qb, keys, b, "", NULL);
	phg_buf_adds(b, " LIMIT 1");
}

/* ($K+1 OR (keys) > ($1..$K)): after the last key done, or the first batch */
static void after_cursor(phg_build_t *qb, const phg_strv_t *keys, phg_buf_t *b)
{
	phg_buf_printf(b, "($%zu::boolean OR ", keys->n + 1);
	key_cmp(qb, keys, b, ">", 1);
	phg_buf_adds(b, ")");
}

/* The batch's key columns _phg_k0, ... each followed by @suffix. */
static void batch_keys(phg_buf_t *b, size_t k, const char *suffix)
{
	for (size_t i = 0; i < k; i++)
		phg_buf_printf(b, "%s_phg_k%zu%s", i ? ", " : "", i, suffix);
}

void phg_backfill_batch_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, const char *schema_q, phg_buf_t *b)
{
	const char *t = phg_qtable(qb, bf->table);
	size_t k = keys->n;

	phg_buf_adds(b, "WITH batch AS MATERIALIZED (SELECT ");
	key_list(qb, keys, b, "", "_phg_k");
	/* the key values are untyped parameters: their types come from the
	 * comparison, so the statement reads the same offline and online */
	phg_buf_printf(b, " FROM %s WHERE ", t);
	after_cursor(qb, keys, b);
	/* the key range was fixed when the backfill started */
	phg_buf_adds(b, " AND ");
	key_cmp(qb, keys, b, "<=", k + 5);
	if (bf->where != NULL)
		phg_buf_printf(b, " AND (%s)", bf->where);
	phg_buf_adds(b, " ORDER BY ");
	key_list(qb, keys, b, "", NULL);
	/* the update takes the batch's key range, (last done, batch's last],
	 * so it is an index range scan whatever the batch's size: a join with
	 * the batch would be a hash join over the whole table for a big one */
	phg_buf_printf(b, " LIMIT $%zu::bigint),\n  upd AS (UPDATE %s SET %s WHERE ", 2 * k + 5, t,
	               bf->set);
	after_cursor(qb, keys, b);
	phg_buf_adds(b, " AND (");
	key_list(qb, keys, b, "", NULL);
	phg_buf_adds(b, ") <= (SELECT ");
	batch_keys(b, k, "");
	phg_buf_adds(b, " FROM batch ORDER BY ");
	batch_keys(b, k, " DESC");
	phg_buf_adds(b, " LIMIT 1)");
	if (bf->where != NULL)
		phg_buf_printf(b, " AND (%s)", bf->where);
	phg_buf_adds(b, " RETURNING 1),\n  last AS (SELECT ARRAY[");
	batch_keys(b, k, "::text");
	phg_buf_adds(b, "] AS k FROM batch ORDER BY ");
	batch_keys(b, k, " DESC");
	phg_buf_adds(b, " LIMIT 1),\n  ");
	phg_store_checkpoint_cte(b, schema_q, (int)k + 2);
	phg_buf_adds(b, "\nSELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM upd), "
	                "(SELECT array_to_json(k)::text FROM last), ");
	/* an operator's pause is seen by the next batch, for free */
	phg_store_paused_expr(b, schema_q, (int)k + 2);
}

typedef struct {
	char *table;
	char *set;
	char *where;
	uint64_t batch_size;
	uint64_t batch_time_ms;
	phg_strv_t key;
	char *down;
} backfill_args_t;

static const phg_field_t backfill_fields[] = {
	PHG_ARG_TABLE(backfill_args_t),
	{.key = "set", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, set),
	 .sql = PHG_SQLF_SET,
	 .flags = PHG_FL_REQUIRED, .what = "a SET fragment such as \"new = old\""},
	{.key = "where", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, where),
	 .sql = PHG_SQLF_WHERE,
	 .what = "a filter such as \"new IS NULL\""},
	{.key = "batch_size", .type = PHG_FT_UINT, .offset = offsetof(backfill_args_t, batch_size),
	 .min = 1, .max = 1000000, .def = "5000",
	 .what = "rows per batch (1 to 1000000)"},
	{.key = "batch_time", .type = PHG_FT_DURATION,
	 .offset = offsetof(backfill_args_t, batch_time_ms), .min = 0, .max = 60000, .def = "0",
	 .what = "the time one batch should take, e.g. 100ms (0: a fixed batch_size)"},
	{.key = "key", .type = PHG_FT_IDENT_LIST, .offset = offsetof(backfill_args_t, key),
	 .what = "the key column(s) covered by a unique index (default: the primary key)"},
	{.key = "down", .type = PHG_FT_SQL, .offset = offsetof(backfill_args_t, down),
	 .sql = PHG_SQLF_SET,
	 .what = "a SET fragment that undoes `set`"},
	{0},
};

static phg_op_t *backfill_op(phg_build_t *b, const backfill_args_t *a, const char *set,
                             const char *where, const char *label)
{
	phg_op_t *op = phg_op_new(b, PHG_OP_BACKFILL, PHG_OPF_SCAN, "%s", label);
	phg_backfill_spec_t *bf = phg_calloc(1, sizeof(*bf));

	bf->table = phg_strdup(a->table);
	bf->set = phg_strdup(set);
	bf->where = phg_strdup(where);
	bf->batch_size = a->batch_size;
	bf->batch_time_ms = a->batch_time_ms;
	for (size_t i = 0; i < a->key.n; i++)
		phg_strv_push(&bf->key, a->key.v[i]);
	op->backfill = bf;
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

static const char *backfill_revert_keeps(const phg_step_t *step)
{
	const backfill_args_t *a = step->args;

	return a->down == NULL ? "its updates were not undone (it has no `down`)" : NULL;
}

const phg_step_kind_t phg_kind_backfill = {
	.name = "backfill",
	.summary = "UPDATE in key order, one committed, checkpointed batch at a time",
	.fields = backfill_fields,
	.args_size = sizeof(backfill_args_t),
	.check = NULL, /* its SQL fragments are parsed in place by the loader */
	.build = backfill_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 0,
	.revert_keeps = backfill_revert_keeps,
};
