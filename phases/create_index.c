/*
 * create_index.c - CREATE INDEX CONCURRENTLY; never blocks writes.
 *
 * CONCURRENTLY cannot run in a transaction, so the op is re-runnable
 * instead: its guard tells whether the index exists and is valid (done) or
 * INVALID (a leftover of an interrupted or failed build: dropped with DROP
 * INDEX CONCURRENTLY and built again).  A build that fails (duplicates for
 * a unique index, a lock timeout) leaves no INVALID index behind.
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <string.h>

typedef struct {
	char *table;
	phg_strv_t columns;
	char *name;
	int unique;
	char *where;
	int method;
} create_index_args_t;

static const char *const index_methods[] = {"btree", "hash", "gist", "spgist", "gin",
                                            "brin", NULL};

static const phg_field_t create_index_fields[] = {
	PHG_ARG_TABLE(create_index_args_t),
	{.key = "columns", .type = PHG_FT_IDENT_LIST, .offset = offsetof(create_index_args_t, columns),
	 .flags = PHG_FL_REQUIRED, .what = "a list of column names"},
	{.key = "name", .type = PHG_FT_IDENT, .offset = offsetof(create_index_args_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "an index name"},
	{.key = "unique", .type = PHG_FT_BOOL, .offset = offsetof(create_index_args_t, unique),
	 .def = "false", .what = "true or false"},
	{.key = "where", .type = PHG_FT_SQL, .offset = offsetof(create_index_args_t, where),
	 .sql = PHG_SQLF_WHERE,
	 .what = "a predicate for a partial index"},
	{.key = "method", .type = PHG_FT_ENUM, .offset = offsetof(create_index_args_t, method),
	 .flags = PHG_FL_ANYCASE, .enum_values = index_methods, .def = "btree",
	 .what = "an index method"},
	{0},
};

static int create_index_build(phg_build_t *b)
{
	const create_index_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table), *i = phg_qsibling(b, a->table, a->name);
	phg_buf_t cols;
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		phg_buf_init(&cols, 64 * 1024);
		for (size_t k = 0; k < a->columns.n; k++)
			phg_buf_printf(&cols, "%s%s", k ? ", " : "", phg_q(b, a->columns.v[k]));
		op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL | PHG_OPF_PARALLEL,
		                "build index %s on %s concurrently",
		                i, t);
		phg_op_sql(op, "CREATE %sINDEX CONCURRENTLY %s ON %s USING %s (%s)%s%s",
		           a->unique ? "UNIQUE " : "", phg_q(b, a->name), t,
		           index_methods[a->method], cols.data, a->where ? " WHERE " : "",
		           a->where ? a->where : "");
		op->observe_sql = phg_asprintf("SELECT 1 FROM %s LIMIT 1", t);
		op->guard_sql = phg_asprintf(
		    "SELECT CASE WHEN x.indisvalid THEN 'valid' ELSE 'invalid' END "
		    "FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
		    "WHERE c.relname = %s AND c.relnamespace = "
		    "(SELECT relnamespace FROM pg_class WHERE oid = %s)",
		    phg_qlit(b, a->name), phg_regclass(b, a->table));
		op->cleanup_sql = phg_asprintf("DROP INDEX CONCURRENTLY IF EXISTS %s", i);
		phg_buf_free(&cols);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL, "drop index %s concurrently", i);
		phg_op_sql(op, "DROP INDEX CONCURRENTLY IF EXISTS %s", i);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

const phg_step_kind_t phg_kind_create_index = {
	.name = "create_index",
	.summary = "CREATE INDEX CONCURRENTLY, INVALID leftovers dropped and rebuilt",
	.fields = create_index_fields,
	.args_size = sizeof(create_index_args_t),
	.check = NULL, /* its SQL fragments are parsed in place by the loader */
	.build = create_index_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
