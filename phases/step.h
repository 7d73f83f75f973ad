/*
 * step.h - the interface every step kind implements, and the operations
 * ("ops") a step turns into.
 *
 * A step kind is one file in phases/ exporting one phg_step_kind_t, listed
 * once in phases/registry.c.  It declares its plan arguments as a field table
 * (read by the plan loader), checks them (validate), and builds the list of
 * operations that apply, revert or finalize it.  The engine runs the ops; the
 * `plan` command prints the very same ops without connecting.
 *
 * An op is the unit of progress.  A PHG_OP_TX op runs all its statements in
 * one transaction together with the update of the step's progress counter,
 * so a crash either happened before it (it runs again) or after it (it is
 * skipped): never half.  Statements that PostgreSQL refuses to run in a
 * transaction (CREATE/DROP INDEX CONCURRENTLY) are PHG_OP_STMT ops, made
 * re-runnable by their guard/cleanup SQL.  A backfill is one PHG_OP_BACKFILL
 * op that checkpoints every batch in the batch's own transaction.
 */
#ifndef PHG_STEP_H
#define PHG_STEP_H

#include <jansson.h>
#include <libpq-fe.h>

#include "../orchestrator/buf.h"
#include "../orchestrator/error.h"
#include "../orchestrator/plan.h"

typedef enum phg_op_kind_e {
	PHG_OP_TX,       /* statements + progress update in one transaction */
	PHG_OP_STMT,     /* one statement outside any transaction */
	PHG_OP_BACKFILL, /* keyset-batched UPDATE, checkpoint per batch */
	PHG_OP_HTTP,     /* one HTTP request (flag flips) */
} phg_op_kind_t;

#define PHG_OPF_DDL 0x1u   /* runs under lock_timeout, retried with backoff */
#define PHG_OPF_SCAN 0x2u  /* long scan: runs under statement_timeout */
#define PHG_OPF_PARALLEL 0x4u /* a build PostgreSQL may run with parallel maintenance
                               * workers: with the latency budget on, it runs
                               * without them (one core, not all of them) */

typedef struct phg_backfill_spec_s {
	char *table;      /* as in the plan: name or schema.name (unquoted) */
	char *set;        /* SET fragment */
	char *where;      /* optional filter fragment, NULL = every row */
	phg_strv_t key;   /* key columns; empty = the primary key */
	uint64_t batch_size;  /* rows per batch; with batch_time, the first batch's */
	uint64_t batch_time_ms; /* 0: a fixed batch_size; else the batch size adapts
	                         * so one batch takes about this long */
} phg_backfill_spec_t;

/* Bounds of an adaptive batch size (batch_time). */
#define PHG_BATCH_MIN 10u
#define PHG_BATCH_MAX 1000000u

typedef struct phg_http_spec_s {
	char *method;
	char *url;
	char *body;       /* may be NULL */
	phg_kvv_t headers; /* borrowed from the plan: ${VAR} not yet expanded */
} phg_http_spec_t;

typedef struct phg_op_s {
	phg_op_kind_t kind;
	unsigned flags;      /* PHG_OPF_* */
	char *label;         /* what a person reads: add column "c" to "t" */
	char **sql;          /* TX: statements; STMT: exactly one */
	size_t nsql;
	/* TX: a query returning one jsonb value, run first in the transaction;
	 * its object is merged into the step's memo in the same transaction. */
	char *memo_sql;
	/* TX: a query returning one boolean, run before the op: true when what
	 * the rest of the step would do is so already (set_not_null of a column
	 * that is NOT NULL).  Then no op of the step runs: the memo and the
	 * step's progress (every op done) are recorded in one transaction, and
	 * @noop_note is logged and recorded as a `step_noop` event. */
	char *noop_sql;
	char *noop_note;
	/* STMT: a query returning one row, one text column: NULL when the object
	 * the statement creates does not exist, 'valid' or 'invalid'. */
	char *guard_sql;
	/* STMT: removes an invalid leftover (outside a transaction). */
	char *cleanup_sql;
	phg_backfill_spec_t *backfill;
	phg_http_spec_t *http;
	/* when the op fails with check_violation (23514): what it means and how
	 * to find the rows, instead of the server's internal constraint name */
	char *violation;
	char *violation_hint;
	/* after such a failure, both optional: a query counting the offending
	 * rows (its number replaces "{n}" in @violation), and statements that
	 * undo the previous op of the step (drop the NOT VALID check it added),
	 * committed with that op recorded not done, so the app is not left with
	 * a half-made constraint and a later run redoes the op */
	char *violation_count_sql;
	char *violation_undo_sql;
	/* a SCAN or PARALLEL op (one long statement, which cannot pause): the
	 * query that stands for the application while it runs, unless the plan
	 * has `throttle.probe`; the latency budget measures it (exec.c) */
	char *observe_sql;
} phg_op_t;

typedef struct phg_ops_s {
	phg_op_t *v;
	size_t n;
} phg_ops_t;

void phg_ops_free(phg_ops_t *ops);

typedef enum phg_dir_e {
	PHG_DIR_APPLY,    /* apply the step */
	PHG_DIR_REVERT,   /* undo what apply did (possibly partially) */
	PHG_DIR_FINALIZE, /* when the plan completes (drop_column's physical drop) */
} phg_dir_t;

typedef struct phg_build_s {
	const phg_plan_t *plan;
	const phg_step_t *step;
	phg_dir_t dir;
	/* REVERT: how many apply ops completed (the step may be partial). */
	size_t progress;
	/* The step's memo as recorded by apply (NULL when rendering offline). */
	const json_t *memo;
	/* Used for PQescapeIdentifier; NULL when rendering offline. */
	PGconn *conn;
	phg_ops_t *ops;    /* ops are appended here */
	phg_err_t *err;
	/* Set by a REVERT build that cannot revert (the reason is in err). */
	int irreversible;
	/* private: strings handed out by phg_q() and friends */
	phg_strv_t pool;
} phg_build_t;

typedef struct phg_step_kind_s {
	const char *name;                  /* the plan key, e.g. "add_column" */
	const char *summary;               /* one line for --help */
	const phg_field_t *fields;         /* arguments, NULL-key terminated */
	size_t args_size;
	/* Semantic checks after loading (the loader already checked types).
	 * Report through phg_diag_error/warn; return 0 or PHG_EPLAN. */
	int (*check)(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d);
	/* Append the ops for b->dir to b->ops.  0 or a PHG_E* code (err set). */
	int (*build)(phg_build_t *b);
	/* The tables the step touches (for backup scope): appends unquoted names. */
	void (*tables)(const phg_step_t *step, phg_strv_t *out);
	/* If a step fails, undo its own completed ops before on_failure runs
	 * (DDL steps: no NOT VALID constraint or INVALID index is left behind). */
	int clean_on_fail;
	/* Its finalize ops cannot be undone (drop_column's physical drop): once
	 * they ran, the step is `finalized` and rollback refuses it. */
	int final_irreversible;
	/* May be NULL.  What a revert of @step deliberately leaves as it is (a
	 * backfill without `down`: the values it wrote), or NULL: nothing. */
	const char *(*revert_keeps)(const phg_step_t *step);
} phg_step_kind_t;

/* registry.c: the one table of step kinds. */
extern const phg_step_kind_t *const phg_step_kinds[];
const phg_step_kind_t *phg_step_kind_find(const char *name);

/*
 * Build the ops of @step for @dir into @ops, which the caller frees with
 * phg_ops_free() (the ops own their strings).  @progress, @memo and @conn
 * are as in phg_build_t (0 / NULL / NULL when rendering offline).
 * 0, a PHG_E* code, or PHG_EIRREVERSIBLE when the step cannot be reverted;
 * the reason is in @err.
 */
int phg_step_build(const phg_plan_t *plan, const phg_step_t *step, phg_dir_t dir,
                   size_t progress, const json_t *memo, PGconn *conn, phg_ops_t *ops,
                   phg_err_t *err);

/* ---- helpers for build() (build.c) ---- */

/* A quoted identifier (PQescapeIdentifier when b->conn is set; the same
 * double-quoting otherwise, which is exact for the validated identifiers).
 * The string lives until phg_build_reset(). */
const char *phg_q(phg_build_t *b, const char *ident);
/* A quoted possibly schema-qualified table name. */
const char *phg_qtable(phg_build_t *b, const char *table);
/* A quoted SQL string literal (for regclass lookups and the like). */
const char *phg_qlit(phg_build_t *b, const char *s);
/* A derived identifier: @prefix + @base, shortened with a hash suffix so it
 * fits in 63 bytes.  Deterministic.  Not quoted. */
const char *phg_derived_name(phg_build_t *b, const char *prefix, const char *base);
/* The name a drop_column or drop_table hides its object under:
 * _phg_dropped_<base>, or with the plan's `finalize: manual` (the tombstone
 * outlives the plan) _phg_<8 hex digits of the plan's name>_<base>. */
const char *phg_tombstone_name(phg_build_t *b, const char *base);

/* Start a new op; statements then go to it with phg_op_sql(). */
phg_op_t *phg_op_new(phg_build_t *b, phg_op_kind_t kind, unsigned flags,
                     const char *label_fmt, ...) __attribute__((format(printf, 4, 5)));
void phg_op_sql(phg_op_t *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keep malloc'd @s until phg_build_reset(); returns it. */
const char *phg_build_keep(phg_build_t *b, char *s);
/* phg_asprintf() into the pool. */
const char *phg_bprintf(phg_build_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Free the strings phg_q() and friends handed out for @b. */
void phg_build_reset(phg_build_t *b);

/* Convenience: memo field as string / bool (NULL / -1 when absent). */
const char *phg_memo_str(const json_t *memo, const char *key);
int phg_memo_bool(const json_t *memo, const char *key);

/*
 * The one statement of a backfill batch of @bf (phases/backfill.c): the
 * next batch_size rows in key order after the last key done, updated with
 * the `set` fragment, and the step's checkpoint (store.h) written in the
 * same statement, so a batch and its record commit together.  The executor
 * sends it as built, and `plan` prints it; the text is the same for every
 * batch, only the parameters change:
 *   $1..$K   the last key done (text; NULL for the first batch)
 *   $K+1     true for the first batch (no key done yet)
 *   $K+2..4  run id, phase index, step index of the checkpoint
 *   $K+5..   the high-water mark: the last key the backfill covers, fixed
 *            when it started (NULL: the table was empty), so it ends however
 *            fast rows are inserted (those are the sync trigger's)
 *   $2K+5    the rows of this batch (batch_size, or adapted to batch_time)
 * @keys are the key columns (the primary key or the plan's `key`, resolved
 * at run time).  It returns one row: rows in the batch, rows updated, the
 * new last key as a JSON array of text, and whether an operator paused the
 * run.  @qb quotes (phg_q).
 */
void phg_backfill_batch_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, const char *schema_q, phg_buf_t *out);
/* The rows of @bf's range ($1..$K: its high-water mark), for the progress of
 * a table never analysed.  Returns NULL::text and the count. */
void phg_backfill_count_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, phg_buf_t *out);
/* The last key of @bf's table now, as an array of text (NULL when empty):
 * the high-water mark, recorded when the backfill starts. */
void phg_backfill_max_key_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                              const phg_strv_t *keys, phg_buf_t *out);

/* The latency budget's default probe (orchestrator/throttle.h): a key
 * lookup on @bf's table at $1..$K, the backfill's cursor. */
void phg_backfill_probe_sql(phg_build_t *qb, const phg_backfill_spec_t *bf,
                            const phg_strv_t *keys, phg_buf_t *out);

/* Print @ops as SQL a person can read and run (the `plan` command). */
void phg_ops_render(const phg_ops_t *ops, const phg_settings_t *settings,
                    phg_buf_t *out);

#endif /* PHG_STEP_H */
