/*
 * drop_index.c - DROP INDEX CONCURRENTLY; revert rebuilds it CONCURRENTLY
 * from the definition recorded before the drop.
 *
 * The first op, a transaction of its own, records what the revert needs in
 * the step's memo -- pg_get_indexdef, the index's schema, its table, its
 * validity and its comment -- and refuses, before anything is dropped, an
 * index that backs a constraint (primary key, unique, exclusion, or the
 * referenced side of a foreign key: drop the constraint instead, with a
 * drop_constraint step), that is the table's replica identity (logical
 * replication of updates and deletes would stop), or that is a partitioned
 * index (PostgreSQL cannot drop one concurrently).  The memo is committed
 * before the drop starts, so whatever happens to the drop, a revert knows
 * what to rebuild.
 *
 * The drop itself is DROP INDEX CONCURRENTLY IF EXISTS: it never blocks
 * reads or writes of the table (it waits for the transactions using the
 * index, under lock_timeout, retried), and is re-runnable.
 *
 * Revert runs the recorded definition as CREATE [UNIQUE] INDEX CONCURRENTLY
 * IF NOT EXISTS: writes go on during the build.  Its guard sees an INVALID
 * leftover of an interrupted drop or build, which is dropped concurrently
 * and built again (as create_index does); an index that is still there
 * (the drop never ran) is kept as it is.  An index that was INVALID when it
 * was dropped is not rebuilt: it never served a query.
 */
#include "kind.h"

#include <string.h>

typedef struct {
	char *table; /* optional: the table the index must be on */
	char *index;
} drop_index_args_t;

static const phg_field_t drop_index_fields[] = {
	{.key = "table", .type = PHG_FT_TABLE, .offset = offsetof(drop_index_args_t, table),
	 .what = "a table name"},
	{.key = "index", .type = PHG_FT_TABLE, .offset = offsetof(drop_index_args_t, index),
	 .flags = PHG_FL_REQUIRED, .what = "an index name (optionally schema-qualified)"},
	{0},
};

const char *phg_index_concurrently(phg_build_t *b, const char *indexdef)
{
	static const char *const heads[] = {"CREATE INDEX ", "CREATE UNIQUE INDEX ", NULL};

	for (size_t i = 0; heads[i] != NULL; i++) {
		size_t n = strlen(heads[i]);

		/* "ON ONLY": a partitioned index, which cannot be built concurrently */
		if (strncmp(indexdef, heads[i], n) == 0 && strstr(indexdef, " ON ONLY ") == NULL)
			return phg_bprintf(b, "%.*sCONCURRENTLY IF NOT EXISTS %s", (int)n, indexdef,
			                   indexdef + n);
	}
	return NULL;
}

const char *phg_index_memo_sql(phg_build_t *b, const char *index_oid)
{
	return phg_bprintf(
	    b,
	    "jsonb_build_object('indexdef', pg_get_indexdef(ic.oid), 'index_schema', in_.nspname, "
	    "'index_name', ic.relname, 'table_schema', tn.nspname, 'table_name', tc.relname, "
	    "'index_valid', x.indisvalid, 'index_comment', obj_description(ic.oid, 'pg_class')) "
	    "FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid "
	    "JOIN pg_namespace in_ ON in_.oid = ic.relnamespace "
	    "JOIN pg_class tc ON tc.oid = x.indrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace "
	    "WHERE x.indexrelid = %s",
	    index_oid);
}

int phg_index_rebuild(phg_build_t *b, const char *what)
{
	const char *def = phg_memo_str(b->memo, "indexdef");
	const char *schema = phg_memo_str(b->memo, "index_schema");
	const char *name = phg_memo_str(b->memo, "index_name");
	const char *tschema = phg_memo_str(b->memo, "table_schema");
	const char *tname = phg_memo_str(b->memo, "table_name");
	const char *comment = phg_memo_str(b->memo, "index_comment");
	const char *sql, *i, *t;
	phg_op_t *op;

	if (def == NULL || schema == NULL || name == NULL || tschema == NULL || tname == NULL) {
		phg_err_set(b->err, PHG_EIRREVERSIBLE, "the definition of %s was not recorded", what);
		b->irreversible = 1;
		return 0;
	}
	sql = phg_index_concurrently(b, def);
	if (sql == NULL) {
		phg_err_set(b->err, PHG_EIRREVERSIBLE,
		            "the recorded definition of %s cannot be built concurrently: %s", what, def);
		b->irreversible = 1;
		return 0;
	}
	i = phg_bprintf(b, "%s.%s", phg_q(b, schema), phg_q(b, name));
	t = phg_bprintf(b, "%s.%s", phg_q(b, tschema), phg_q(b, tname));
	op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL | PHG_OPF_PARALLEL,
	                "rebuild index %s on %s concurrently, as recorded", i, t);
	phg_op_sql(op, "%s", sql);
	op->observe_sql = phg_asprintf("SELECT 1 FROM %s LIMIT 1", t);
	/* only ever 'invalid' or NULL: an index that is still there and valid
	 * (the drop never ran) is left as it is by IF NOT EXISTS */
	op->guard_sql = phg_asprintf(
	    "SELECT CASE WHEN NOT x.indisvalid THEN 'invalid' END "
	    "FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
	    "WHERE c.relname = %s AND c.relnamespace = %s::regnamespace",
	    phg_qlit(b, name), phg_qlit(b, phg_q(b, schema)));
	op->cleanup_sql = phg_asprintf("DROP INDEX CONCURRENTLY IF EXISTS %s", i);
	if (comment != NULL) {
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "restore the comment of index %s", i);
		phg_op_sql(op, "COMMENT ON INDEX %s IS %s", i, phg_qlit(b, comment));
	}
	return 0;
}

/* The DO block that refuses what drop_index must not drop (see the top). */
static const char *refuse_sql(phg_build_t *b, const drop_index_args_t *a)
{
	const char *ix = phg_qlit(b, phg_qtable(b, a->index));
	phg_buf_t body;
	const char *sql;

	phg_buf_init(&body, 64 * 1024);
	phg_buf_printf(&body,
	               "DECLARE i regclass := to_regclass(%s); why text; "
	               "BEGIN "
	               "IF i IS NULL THEN RAISE EXCEPTION 'index %% does not exist', %s "
	               "USING HINT = 'Check the name (and its schema) in the plan.'; END IF; "
	               "IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = i AND relkind = 'i') THEN "
	               "RAISE EXCEPTION 'relation %% is not an index that can be dropped "
	               "concurrently', i USING DETAIL = 'A partitioned index cannot be dropped "
	               "CONCURRENTLY.'; END IF; "
	               "SELECT string_agg(format('%%s %%I of %%s', CASE contype WHEN 'p' THEN "
	               "'primary key' WHEN 'u' THEN 'unique constraint' WHEN 'x' THEN "
	               "'exclusion constraint' ELSE 'foreign key' END, conname, conrelid::regclass), "
	               "', ') INTO why FROM pg_constraint WHERE conindid = i; "
	               "IF why IS NOT NULL THEN RAISE EXCEPTION 'index %% backs %%', i, why "
	               "USING HINT = 'Drop the constraint with a drop_constraint step: it drops its "
	               "index with it, and its revert rebuilds both.'; END IF; "
	               "IF (SELECT indisreplident FROM pg_index WHERE indexrelid = i) THEN "
	               "RAISE EXCEPTION 'index %% is the replica identity of its table', i "
	               "USING DETAIL = 'Without it, logical replication of updates and deletes "
	               "stops.', HINT = 'Set another REPLICA IDENTITY first.'; END IF; ",
	               ix, ix);
	if (a->table != NULL)
		phg_buf_printf(&body,
		               "IF (SELECT indrelid FROM pg_index WHERE indexrelid = i) <> "
		               "to_regclass(%s) THEN RAISE EXCEPTION 'index %% is not an index of "
		               "table %%', i, %s; END IF; ",
		               phg_qlit(b, phg_qtable(b, a->table)), phg_qlit(b, a->table));
	phg_buf_adds(&body, "END");
	sql = phg_bprintf(b, "DO %s", phg_qlit(b, body.data));
	phg_buf_free(&body);
	return sql;
}

static int drop_index_build(phg_build_t *b)
{
	const drop_index_args_t *a = b->step->args;
	const char *i = phg_qtable(b, a->index);
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, 0,
		                "record the definition of index %s (before it is dropped)", i);
		op->memo_sql = phg_asprintf(
		    "SELECT %s", phg_index_memo_sql(b, phg_bprintf(b, "to_regclass(%s)",
		                                                   phg_qlit(b, i))));
		phg_op_sql(op, "%s", refuse_sql(b, a));
		op = phg_op_new(b, PHG_OP_STMT, PHG_OPF_DDL, "drop index %s concurrently", i);
		phg_op_sql(op, "DROP INDEX CONCURRENTLY IF EXISTS %s", i);
		break;
	case PHG_DIR_REVERT:
		if (b->progress < 2)
			break; /* not dropped: nothing to rebuild */
		if (b->memo == NULL) {
			/* rendered offline: the definition is read at apply time */
			phg_op_new(b, PHG_OP_TX, 0,
			           "rebuild index %s concurrently from the definition recorded at apply "
			           "(pg_get_indexdef, run as CREATE INDEX CONCURRENTLY)", i);
			break;
		}
		if (phg_memo_bool(b->memo, "index_valid") == 0) {
			phg_op_new(b, PHG_OP_TX, 0, "index %s was INVALID when it was dropped: not "
			                            "rebuilt", i);
			break;
		}
		return phg_index_rebuild(b, phg_bprintf(b, "index %s", i));
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

static void drop_index_tables(const phg_step_t *step, phg_strv_t *out)
{
	const drop_index_args_t *a = step->args;

	if (a->table != NULL)
		phg_strv_push(out, a->table);
}

const phg_step_kind_t phg_kind_drop_index = {
	.name = "drop_index",
	.summary = "DROP INDEX CONCURRENTLY; revert rebuilds it concurrently as recorded",
	.fields = drop_index_fields,
	.args_size = sizeof(drop_index_args_t),
	.check = NULL,
	.build = drop_index_build,
	.tables = drop_index_tables,
	.clean_on_fail = 0,
};
