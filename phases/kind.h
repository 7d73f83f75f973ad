/*
 * kind.h - small helpers shared by the step kind files (phases/ private).
 */
#ifndef PHG_KIND_H
#define PHG_KIND_H

#include <stddef.h>

#include "step.h"

/* The arguments every table-level step shares. */
#define PHG_ARG_TABLE(T_)                                                  \
	{.key = "table", .type = PHG_FT_TABLE, .offset = offsetof(T_, table), \
	 .flags = PHG_FL_REQUIRED, .what = "a table name"}
/* The args of add_column, drop_column and rename_column begin with these
 * two members (PHG_ARG_TABLE, PHG_ARG_COLUMN), so a check can read another
 * step's table and column. */
typedef struct {
	char *table;
	char *column;
} phg_table_column_args_t;

#define PHG_ARG_COLUMN(T_)                                                 \
	{.key = "column", .type = PHG_FT_IDENT, .offset = offsetof(T_, column), \
	 .flags = PHG_FL_REQUIRED, .what = "a column name"}

/* 'schema.table'::regclass, or 'table'::regclass, quoted for SQL. */
const char *phg_regclass(phg_build_t *b, const char *table);

/* The schema part of a table name ("" when unqualified: search_path). */
const char *phg_table_schema(phg_build_t *b, const char *table);

/* A name in the same schema as @table (for indexes), quoted. */
const char *phg_qsibling(phg_build_t *b, const char *table, const char *name);

/* tables(): every table step's args struct starts with `char *table`. */
void phg_tables_first_arg(const phg_step_t *step, phg_strv_t *out);

/* Two ops: ADD CONSTRAINT @name @definition NOT VALID (brief lock), then
 * VALIDATE in its own transaction (SHARE UPDATE EXCLUSIVE: writes go on). */
void phg_constraint_add(phg_build_t *b, const char *table, const char *name,
                        const char *definition);

/* add_check / add_foreign_key: ADD CONSTRAINT @name @definition NOT VALID,
 * then VALIDATE (writes continue); revert drops it. */
int phg_constraint_build(phg_build_t *b, const char *table, const char *name,
                         const char *definition);

/* set_default.c: the ops of set_default (@def) and drop_default (@def
 * NULL): apply records the column's default in the memo and sets or drops
 * it; revert restores the recorded one. */
int phg_default_build(phg_build_t *b, const char *table, const char *column, const char *def);

/* ---- drop_index.c, also used by drop_constraint ---- */

/* @indexdef (pg_get_indexdef) as CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT
 * EXISTS, or NULL when it is not of that form (a partitioned index). */
const char *phg_index_concurrently(phg_build_t *b, const char *indexdef);
/* jsonb_build_object(...) FROM ... recording the index whose oid is the SQL
 * expression @index_oid: "indexdef", "index_schema", "index_name",
 * "table_schema", "table_name", "index_valid", "index_comment". */
const char *phg_index_memo_sql(phg_build_t *b, const char *index_oid);
/* Append the ops that rebuild the index recorded by phg_index_memo_sql in
 * b->memo concurrently (an INVALID leftover dropped first), and restore its
 * comment.  Not recorded: b->irreversible, the reason in b->err naming @what. */
int phg_index_rebuild(phg_build_t *b, const char *what);

/* The phase holding @step, and its index there in *@idx (build.c). */
const phg_phase_t *phg_step_phase(const phg_plan_t *plan, const phg_step_t *step, size_t *idx);

/* ---- the atomic swap: drop_column of X, later in the phase rename_column Y -> X ----
 * The two steps commit as one transaction, built by drop_column (hide X,
 * rename Y to X, move the sync triggers); the rename step then has nothing
 * of its own to do.  Revert is the mirror, also one transaction. */

/* drop_column.c: the rename_column step that swaps into the column @drop
 * hides (the first one after it in its phase), or NULL. */
const phg_step_t *phg_swap_rename(const phg_plan_t *plan, const phg_step_t *drop);

/* rename_column.c: @st's source column when @st renames a column of @table
 * to @column, else NULL. */
const char *phg_rename_into(const phg_step_t *st, const char *table, const char *column);
/* drop_column.c: 1 when @st is a drop_column of @column of @table. */
int phg_drop_of(const phg_step_t *st, const char *table, const char *column);

/* ---- sync triggers (sync_trigger.c), used by drop/rename_column ---- */

/* Sync-trigger steps before @step in the plan, on @table, whose from or to
 * is @column.  Returns how many were stored in @out (at most @max). */
size_t phg_sync_triggers_naming(const phg_plan_t *plan, const phg_step_t *step,
                                const char *table, const char *column,
                                const phg_step_t **out, size_t max);
/* The trigger name of a sync_trigger step (unquoted). */
const char *phg_sync_trigger_name(phg_build_t *b, const phg_step_t *st);
/* Append CREATE OR REPLACE FUNCTION and CREATE TRIGGER for sync_trigger
 * step @st (the function may have been dropped by finalize meanwhile). */
void phg_sync_trigger_create(phg_build_t *b, const phg_step_t *st, phg_op_t *op);

/* An SQL expression over the row that gives @column from the other column
 * sync_trigger step @st links it with (its `to`, `from`, `expr` or
 * `down_expr`); NULL when it cannot be derived (`expr` without `down_expr`
 * gives `to` from `from`, never back). */
const char *phg_sync_fill_expr(phg_build_t *b, const phg_step_t *st, const char *column);

/* Memo SQL fragment: a jsonb array of which of the sync triggers on @column
 * exist now; "'[]'::jsonb" when there are none to look at. */
const char *phg_sync_triggers_memo(phg_build_t *b, const char *table,
                                   const phg_step_t *const *trg, size_t n);
/* Append DROP TRIGGER IF EXISTS for each of @trg. */
void phg_sync_triggers_drop(phg_build_t *b, const char *table,
                            const phg_step_t *const *trg, size_t n, phg_op_t *op);
/* 1 if sync_trigger step @st's trigger is named in the memo's "triggers"
 * (it existed when the step that removed it ran). */
int phg_sync_trigger_recorded(phg_build_t *b, const phg_step_t *st);
/* Append CREATE TRIGGER for the triggers of @trg named in memo["triggers"]. */
void phg_sync_triggers_restore(phg_build_t *b, const phg_step_t *const *trg,
                               size_t n, phg_op_t *op);

#endif /* PHG_KIND_H */
