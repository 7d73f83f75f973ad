/*
 * build.c - helpers step kinds use to build their ops, and the rendering of
 * ops as readable SQL for the `plan` command.
 */
#include "kind.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *phg_build_keep(phg_build_t *b, char *s)
{
	b->pool.v = phg_realloc(b->pool.v, (b->pool.n + 1) * sizeof(char *));
	b->pool.v[b->pool.n++] = s;
	return s;
}

int phg_step_build(const phg_plan_t *plan, const phg_step_t *step, phg_dir_t dir,
                   size_t progress, const json_t *memo, PGconn *conn, phg_ops_t *ops,
                   phg_err_t *err)
{
	phg_build_t b;
	int rc;

	memset(&b, 0, sizeof(b));
	b.plan = plan;
	b.step = step;
	b.dir = dir;
	b.progress = progress;
	b.memo = memo;
	b.conn = conn;
	b.ops = ops;
	b.err = err;
	rc = step->kind->build(&b);
	if (rc == 0 && b.irreversible)
		rc = phg_err_set(err, PHG_EIRREVERSIBLE, "step cannot be reverted");
	phg_build_reset(&b);
	return rc;
}

const phg_phase_t *phg_step_phase(const phg_plan_t *plan, const phg_step_t *step, size_t *idx)
{
	for (size_t p = 0; p < plan->nphases; p++) {
		const phg_phase_t *ph = &plan->phases[p];

		for (size_t s = 0; s < ph->nsteps; s++) {
			if (&ph->steps[s] == step) {
				*idx = s;
				return ph;
			}
		}
	}
	return NULL;
}

const char *phg_bprintf(phg_build_t *b, const char *fmt, ...)
{
	va_list ap;
	phg_buf_t s;

	phg_buf_init(&s, (size_t)-1 / 2);
	va_start(ap, fmt);
	phg_buf_vprintf(&s, fmt, ap);
	va_end(ap);
	return phg_build_keep(b, phg_buf_take(&s));
}

void phg_build_reset(phg_build_t *b)
{
	phg_strv_clear(&b->pool);
}

const char *phg_q(phg_build_t *b, const char *ident)
{
	char *q;

	if (b->conn != NULL) {
		char *e = PQescapeIdentifier(b->conn, ident, strlen(ident));

		if (e == NULL) {
			fputs("phasegate: out of memory\n", stderr);
			abort();
		}
		q = phg_strdup(e);
		PQfreemem(e);
	} else {
		/* Identifiers were validated by the loader ([A-Za-z0-9_$] only),
		 * for which this is exactly what PQescapeIdentifier returns. */
		q = phg_asprintf("\"%s\"", ident);
	}
	return phg_build_keep(b, q);
}

const char *phg_qtable(phg_build_t *b, const char *table)
{
	const char *dot = strchr(table, '.');
	char *schema;
	const char *qs;

	if (dot == NULL)
		return phg_q(b, table);
	schema = phg_strdup(table);
	schema[dot - table] = '\0';
	qs = phg_q(b, schema);
	free(schema);
	return phg_build_keep(b, phg_asprintf("%s.%s", qs, phg_q(b, dot + 1)));
}

const char *phg_qlit(phg_build_t *b, const char *s)
{
	phg_buf_t out;

	phg_buf_init(&out, (size_t)-1 / 2);
	phg_buf_adds(&out, "'");
	for (const char *p = s; *p != '\0'; p++) {
		if (*p == '\'')
			phg_buf_adds(&out, "'");
		phg_buf_add(&out, p, 1);
	}
	phg_buf_adds(&out, "'");
	return phg_build_keep(b, phg_buf_take(&out));
}

static uint32_t fnv1a(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

const char *phg_derived_name(phg_build_t *b, const char *prefix, const char *base)
{
	size_t pl = strlen(prefix), bl = strlen(base);

	if (pl + bl <= PHG_IDENT_MAX)
		return phg_build_keep(b, phg_asprintf("%s%s", prefix, base));
	/* prefix + head of base + "_" + 8 hex digits = 63 bytes */
	return phg_build_keep(b, phg_asprintf("%s%.*s_%08" PRIx32, prefix,
	                                 (int)(PHG_IDENT_MAX - pl - 9), base,
	                                 fnv1a(base)));
}

const char *phg_tombstone_name(phg_build_t *b, const char *base)
{
	char prefix[32];

	/* finalize: manual: the hidden object outlives its plan, and a later
	 * plan may hide one of the same name */
	if (b->plan == NULL || b->plan->settings.finalize != PHG_FINALIZE_MANUAL)
		return phg_derived_name(b, "_phg_dropped_", base);
	snprintf(prefix, sizeof(prefix), "_phg_%08" PRIx32 "_", fnv1a(b->plan->name));
	return phg_derived_name(b, prefix, base);
}

phg_op_t *phg_op_new(phg_build_t *b, phg_op_kind_t kind, unsigned flags,
                     const char *label_fmt, ...)
{
	phg_ops_t *ops = b->ops;
	phg_op_t *op;
	va_list ap;
	phg_buf_t label;

	ops->v = phg_realloc(ops->v, (ops->n + 1) * sizeof(*ops->v));
	op = &ops->v[ops->n++];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->flags = flags;
	phg_buf_init(&label, 4096);
	va_start(ap, label_fmt);
	phg_buf_vprintf(&label, label_fmt, ap);
	va_end(ap);
	op->label = phg_buf_take(&label);
	return op;
}

void phg_op_sql(phg_op_t *op, const char *fmt, ...)
{
	va_list ap;
	phg_buf_t s;

	phg_buf_init(&s, (size_t)-1 / 2);
	va_start(ap, fmt);
	phg_buf_vprintf(&s, fmt, ap);
	va_end(ap);
	op->sql = phg_realloc(op->sql, (op->nsql + 1) * sizeof(char *));
	op->sql[op->nsql++] = phg_buf_take(&s);
}

void phg_ops_free(phg_ops_t *ops)
{
	for (size_t i = 0; i < ops->n; i++) {
		phg_op_t *op = &ops->v[i];

		free(op->label);
		for (size_t j = 0; j < op->nsql; j++)
			free(op->sql[j]);
		free(op->sql);
		free(op->memo_sql);
		free(op->noop_sql);
		free(op->noop_note);
		free(op->guard_sql);
		free(op->cleanup_sql);
		free(op->violation);
		free(op->violation_hint);
		free(op->violation_count_sql);
		free(op->violation_undo_sql);
		free(op->observe_sql);
		if (op->backfill != NULL) {
			free(op->backfill->table);
			free(op->backfill->set);
			free(op->backfill->where);
			phg_strv_clear(&op->backfill->key);
			free(op->backfill);
		}
		if (op->http != NULL) {
			free(op->http->method);
			free(op->http->url);
			free(op->http->body);
			free(op->http);
		}
	}
	free(ops->v);
	ops->v = NULL;
	ops->n = 0;
}

const char *phg_memo_str(const json_t *memo, const char *key)
{
	json_t *v;

	if (memo == NULL)
		return NULL;
	v = json_object_get(memo, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

int phg_memo_bool(const json_t *memo, const char *key)
{
	json_t *v;

	if (memo == NULL)
		return -1;
	v = json_object_get(memo, key);
	return json_is_boolean(v) ? json_is_true(v) : -1;
}

static void render_stmt(phg_buf_t *out, const char *sql)
{
	size_t n = strlen(sql);

	while (n > 0 && (sql[n - 1] == ' ' || sql[n - 1] == '\n' || sql[n - 1] == ';'))
		n--;
	phg_buf_add(out, sql, n);
	phg_buf_adds(out, ";\n");
}

void phg_ops_render(const phg_ops_t *ops, const phg_settings_t *st, phg_buf_t *out)
{
	for (size_t i = 0; i < ops->n; i++) {
		const phg_op_t *op = &ops->v[i];

		phg_buf_printf(out, "-- %s\n", op->label);
		switch (op->kind) {
		case PHG_OP_TX:
			if (op->noop_sql != NULL)
				phg_buf_printf(out, "-- first: %s\n-- (when true, the step is recorded done "
				                    "and nothing below runs: %s)\n",
				               op->noop_sql, op->noop_note);
			phg_buf_adds(out, "BEGIN;\n");
			if (op->flags & PHG_OPF_DDL)
				phg_buf_printf(out, "SET LOCAL lock_timeout = '%" PRIu64 "ms';\n",
				               st->lock_timeout_ms);
			if (op->flags & PHG_OPF_SCAN)
				phg_buf_printf(out, "SET LOCAL statement_timeout = '%" PRIu64 "ms';\n",
				               st->statement_timeout_ms);
			if (op->memo_sql != NULL)
				phg_buf_printf(out, "-- records: %s\n", op->memo_sql);
			for (size_t j = 0; j < op->nsql; j++)
				render_stmt(out, op->sql[j]);
			phg_buf_adds(out, "-- (the step's progress is recorded here, in the same transaction)\n");
			phg_buf_adds(out, "COMMIT;\n");
			break;
		case PHG_OP_STMT:
			if ((op->flags & PHG_OPF_PARALLEL) && !st->throttle.budget.off)
				phg_buf_adds(out, "SET max_parallel_maintenance_workers = 0; -- the latency "
				                  "budget: one core\n");
			if (op->flags & PHG_OPF_DDL)
				phg_buf_printf(out, "SET lock_timeout = '%" PRIu64 "ms';\n",
				               st->lock_timeout_ms);
			for (size_t j = 0; j < op->nsql; j++)
				render_stmt(out, op->sql[j]);
			if (op->flags & PHG_OPF_DDL)
				phg_buf_adds(out, "RESET lock_timeout;\n");
			if (op->cleanup_sql != NULL)
				phg_buf_printf(out, "-- an INVALID leftover is removed first with: %s\n",
				               op->cleanup_sql);
			break;
		case PHG_OP_BACKFILL: {
			const phg_backfill_spec_t *bf = op->backfill;
			phg_build_t qb;
			phg_strv_t keys = {0};
			phg_buf_t sql;
			char *schema_q;

			memset(&qb, 0, sizeof(qb));
			if (bf->key.n > 0) {
				for (size_t k = 0; k < bf->key.n; k++)
					phg_strv_push(&keys, bf->key.v[k]);
			} else {
				phg_strv_push(&keys, "<primary key>");
				phg_buf_printf(out, "-- key: the primary key of %s, looked up when the "
				                    "backfill starts\n",
				               bf->table);
			}
			if (bf->batch_time_ms > 0)
				phg_buf_printf(out,
				               "-- the batch size adapts so one batch takes about %" PRIu64
				               " ms (between %u and %u rows, starting at the size below)\n",
				               bf->batch_time_ms, PHG_BATCH_MIN, PHG_BATCH_MAX);
			phg_buf_printf(out,
			               "-- in batches of %" PRIu64 " rows, in key order; each batch and "
			               "its checkpoint are this one statement (one transaction):\n"
			               "--   $1%s%.0zu the last key done (NULL at first), $%zu true for "
			               "the first batch, $%zu..$%zu run, phase and step, $%zu%s%.0zu the "
			               "high-water mark (the last key when it started), $%zu the rows of "
			               "the batch%s\n",
			               bf->batch_size, keys.n > 1 ? "..$" : "", keys.n > 1 ? keys.n : 0,
			               keys.n + 1, keys.n + 2, keys.n + 4, keys.n + 5,
			               keys.n > 1 ? "..$" : "", keys.n > 1 ? 2 * keys.n + 4 : 0,
			               2 * keys.n + 5,
			               bf->where != NULL ? "; then once more from the start for rows "
			                                   "inserted behind the cursor"
			                                 : "");
			phg_buf_printf(out, "SET lock_timeout = '%" PRIu64 "ms'; SET statement_timeout = '%" PRIu64
			                    "ms';\n",
			               st->lock_timeout_ms, st->statement_timeout_ms);
			schema_q = phg_asprintf("\"%s\"", st->state_schema ? st->state_schema : "phasegate");
			phg_buf_init(&sql, (size_t)-1 / 2);
			phg_backfill_batch_sql(&qb, bf, &keys, schema_q, &sql);
			render_stmt(out, sql.data);
			phg_buf_free(&sql);
			free(schema_q);
			phg_strv_clear(&keys);
			phg_build_reset(&qb);
			break;
		}
		case PHG_OP_HTTP:
			phg_buf_printf(out, "-- HTTP %s %s%s%s (2xx required)\n",
			               op->http->method, op->http->url,
			               op->http->body ? " body: " : "",
			               op->http->body ? op->http->body : "");
			break;
		}
		if (op->flags & PHG_OPF_DDL)
			phg_buf_printf(out,
			               "-- (a lock timeout is retried up to %" PRIu64
			               " times with jittered exponential backoff)\n",
			               st->lock_retries);
		phg_buf_adds(out, "\n");
	}
}
