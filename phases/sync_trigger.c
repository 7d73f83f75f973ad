/*
 * sync_trigger.c - dual-write done by the database.
 *
 * A BEFORE INSERT OR UPDATE trigger keeps `to` in step with `from` on every
 * write: to := expr, evaluated over the row's columns (default: from; then
 * it is UPDATE OF from, so writes that do not set `from`, the backfill's
 * among them, do not pay for it).  With
 * `down_expr` it works both ways: a write that sets only `to` fills `from`
 * with down_expr.  The trigger function lives in the state schema.
 * A later drop_column / rename_column of `from` or `to` removes the trigger
 * first (and its revert puts it back), so application writes never fail on
 * a trigger that names a missing column.  When the plan completes, a
 * function whose trigger is gone is dropped (finalize).
 */
#include "kind.h"
#include "../orchestrator/sqlparse.h"

#include <string.h>

extern const phg_step_kind_t phg_kind_sync_trigger;

typedef struct {
	char *table;
	char *from;
	char *to;
	char *expr;
	char *down_expr;
} sync_trigger_args_t;

static const phg_field_t sync_trigger_fields[] = {
	PHG_ARG_TABLE(sync_trigger_args_t),
	{.key = "from", .type = PHG_FT_IDENT, .offset = offsetof(sync_trigger_args_t, from),
	 .flags = PHG_FL_REQUIRED, .what = "the source column"},
	{.key = "to", .type = PHG_FT_IDENT, .offset = offsetof(sync_trigger_args_t, to),
	 .flags = PHG_FL_REQUIRED, .what = "the target column"},
	{.key = "expr", .type = PHG_FT_SQL, .offset = offsetof(sync_trigger_args_t, expr),
	 .sql = PHG_SQLF_EXPR,
	 .what = "an expression over the row's columns giving `to`"},
	{.key = "down_expr", .type = PHG_FT_SQL, .offset = offsetof(sync_trigger_args_t, down_expr),
	 .sql = PHG_SQLF_EXPR,
	 .what = "an expression over the row's columns giving `from`"},
	{0},
};

const char *phg_sync_trigger_name(phg_build_t *b, const phg_step_t *st)
{
	const sync_trigger_args_t *a = st->args;

	return phg_derived_name(b, "phg_sync_", phg_bprintf(b, "%s_%s", a->from, a->to));
}

static const char *sync_function(phg_build_t *b, const phg_step_t *st)
{
	const sync_trigger_args_t *a = st->args;
	char *base = phg_asprintf("%s_%s_%s", a->table, a->from, a->to);
	const char *fn;

	for (char *p = base; *p != '\0'; p++)
		if (*p == '.')
			*p = '_';
	phg_build_keep(b, base);
	fn = phg_derived_name(b, "phg_sync_", base);
	return phg_bprintf(b, "%s.%s", phg_q(b, b->plan->settings.state_schema), phg_q(b, fn));
}

/* CREATE OR REPLACE the trigger function of sync_trigger step @st. */
static void sync_function_create(phg_build_t *b, const phg_step_t *st, phg_op_t *op)
{
	const sync_trigger_args_t *a = st->args;
	const char *f = phg_q(b, a->from), *to = phg_q(b, a->to);
	const char *fn = sync_function(b, st);
	const char *expr = a->expr ? a->expr : f;

	if (a->down_expr == NULL && a->expr == NULL) {
		/* the common case: a plain copy, no per-row query */
		phg_op_sql(op,
		           "CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql "
		           "AS $phg$\nBEGIN\n"
		           "  NEW.%s := NEW.%s;\n"
		           "  RETURN NEW;\nEND\n$phg$",
		           fn, to, f);
	} else if (a->down_expr == NULL) {
		phg_op_sql(op,
		           "CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql "
		           "AS $phg$\nBEGIN\n"
		           "  SELECT (%s) INTO NEW.%s FROM (SELECT NEW.*) AS _phg_row;\n"
		           "  RETURN NEW;\nEND\n$phg$",
		           fn, expr, to);
	} else {
		phg_op_sql(op,
		           "CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql "
		           "AS $phg$\nBEGIN\n"
		           "  IF TG_OP = 'INSERT' THEN\n"
		           "    IF NEW.%s IS NULL AND NEW.%s IS NOT NULL THEN\n"
		           "      SELECT (%s) INTO NEW.%s FROM (SELECT NEW.*) AS _phg_row;\n"
		           "    ELSE\n"
		           "      SELECT (%s) INTO NEW.%s FROM (SELECT NEW.*) AS _phg_row;\n"
		           "    END IF;\n"
		           "  ELSIF NEW.%s IS DISTINCT FROM OLD.%s THEN\n"
		           "    SELECT (%s) INTO NEW.%s FROM (SELECT NEW.*) AS _phg_row;\n"
		           "  ELSIF NEW.%s IS DISTINCT FROM OLD.%s THEN\n"
		           "    SELECT (%s) INTO NEW.%s FROM (SELECT NEW.*) AS _phg_row;\n"
		           "  END IF;\n"
		           "  RETURN NEW;\nEND\n$phg$",
		           fn, f, to, a->down_expr, f, expr, to, f, f, expr, to, to, to,
		           a->down_expr, f);
	}
}

/* The function first: finalize drops it once unused, and a revert that
 * puts a trigger back (drop_column, rename_column) may run after that. */
void phg_sync_trigger_create(phg_build_t *b, const phg_step_t *st, phg_op_t *op)
{
	const sync_trigger_args_t *a = st->args;

	sync_function_create(b, st, op);
	/* `to` := `from`: only a write of `from` needs it, so an UPDATE that
	 * does not set `from` -- a backfill batch among them -- does not run the
	 * function at all.  An `expr` may read any column: every write. */
	phg_op_sql(op, "CREATE TRIGGER %s BEFORE INSERT OR UPDATE%s%s ON %s FOR EACH ROW "
	               "EXECUTE FUNCTION %s()",
	           phg_q(b, phg_sync_trigger_name(b, st)),
	           a->expr == NULL && a->down_expr == NULL ? " OF " : "",
	           a->expr == NULL && a->down_expr == NULL ? phg_q(b, a->from) : "",
	           phg_qtable(b, a->table), sync_function(b, st));
}

size_t phg_sync_triggers_naming(const phg_plan_t *plan, const phg_step_t *step,
                                const char *table, const char *column,
                                const phg_step_t **out, size_t max)
{
	size_t n = 0;

	for (size_t p = 0; p < plan->nphases; p++) {
		const phg_phase_t *ph = &plan->phases[p];

		for (size_t s = 0; s < ph->nsteps; s++) {
			const phg_step_t *st = &ph->steps[s];
			const sync_trigger_args_t *a = st->args;

			if (st == step)
				return n;
			if (st->kind != &phg_kind_sync_trigger || strcmp(a->table, table) != 0)
				continue;
			if ((strcmp(a->from, column) == 0 || strcmp(a->to, column) == 0) && n < max)
				out[n++] = st;
		}
	}
	return n;
}

const char *phg_sync_fill_expr(phg_build_t *b, const phg_step_t *st, const char *column)
{
	const sync_trigger_args_t *a = st->args;

	if (strcmp(column, a->from) == 0) {
		if (a->down_expr != NULL)
			return phg_bprintf(b, "(%s)", a->down_expr);
		return a->expr == NULL ? phg_q(b, a->to) : NULL; /* expr has no inverse */
	}
	if (strcmp(column, a->to) == 0)
		return a->expr != NULL ? phg_bprintf(b, "(%s)", a->expr) : phg_q(b, a->from);
	return NULL;
}

const char *phg_sync_triggers_memo(phg_build_t *b, const char *table,
                                   const phg_step_t *const *trg, size_t n)
{
	phg_buf_t names;
	const char *r;

	if (n == 0)
		return "'[]'::jsonb";
	phg_buf_init(&names, 64 * 1024);
	for (size_t i = 0; i < n; i++)
		phg_buf_printf(&names, "%s%s", i ? ", " : "",
		               phg_qlit(b, phg_sync_trigger_name(b, trg[i])));
	r = phg_bprintf(b,
	                "(SELECT coalesce(jsonb_agg(tgname::text), '[]'::jsonb) FROM pg_trigger "
	                "WHERE tgrelid = %s AND tgname IN (%s))",
	                phg_regclass(b, table), names.data);
	phg_buf_free(&names);
	return r;
}

void phg_sync_triggers_drop(phg_build_t *b, const char *table,
                            const phg_step_t *const *trg, size_t n, phg_op_t *op)
{
	for (size_t i = 0; i < n; i++)
		phg_op_sql(op, "DROP TRIGGER IF EXISTS %s ON %s",
		           phg_q(b, phg_sync_trigger_name(b, trg[i])), phg_qtable(b, table));
}

int phg_sync_trigger_recorded(phg_build_t *b, const phg_step_t *st)
{
	json_t *had = b->memo ? json_object_get(b->memo, "triggers") : NULL;
	const char *name = phg_sync_trigger_name(b, st);
	size_t j;
	json_t *v;

	json_array_foreach(had, j, v) {
		if (json_is_string(v) && strcmp(json_string_value(v), name) == 0)
			return 1;
	}
	return 0;
}

void phg_sync_triggers_restore(phg_build_t *b, const phg_step_t *const *trg, size_t n,
                               phg_op_t *op)
{
	json_t *had = b->memo ? json_object_get(b->memo, "triggers") : NULL;
	size_t i, j;
	json_t *v;

	for (i = 0; i < n; i++) {
		const char *name = phg_sync_trigger_name(b, trg[i]);

		json_array_foreach(had, j, v) {
			if (json_is_string(v) && strcmp(json_string_value(v), name) == 0) {
				phg_sync_trigger_create(b, trg[i], op);
				break;
			}
		}
	}
}

static int sync_trigger_build(phg_build_t *b)
{
	const sync_trigger_args_t *a = b->step->args;
	const char *t = phg_qtable(b, a->table);
	const char *f = phg_q(b, a->from), *to = phg_q(b, a->to);
	const char *fn = sync_function(b, b->step);
	const char *trg = phg_q(b, phg_sync_trigger_name(b, b->step));
	phg_op_t *op;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "keep %s in step with %s on %s%s", to, f,
		                t, a->down_expr ? " (both ways)" : "");
		phg_op_sql(op, "DROP TRIGGER IF EXISTS %s ON %s", trg, t);
		phg_sync_trigger_create(b, b->step, op);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		op = phg_op_new(b, PHG_OP_TX, PHG_OPF_DDL, "remove the sync trigger %s from %s",
		                trg, t);
		phg_op_sql(op, "DROP TRIGGER IF EXISTS %s ON %s", trg, t);
		phg_op_sql(op, "DROP FUNCTION IF EXISTS %s()", fn);
		break;
	case PHG_DIR_FINALIZE:
		op = phg_op_new(b, PHG_OP_TX, 0, "drop the function of sync trigger %s if unused",
		                trg);
		phg_op_sql(op,
		           "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = "
		           "to_regprocedure(%s)) THEN DROP FUNCTION IF EXISTS %s(); END IF; END $phg$",
		           phg_qlit(b, phg_bprintf(b, "%s()", fn)), fn);
		break;
	}
	return 0;
}

static int sync_trigger_check(const phg_plan_t *plan, const phg_step_t *step, phg_diag_t *d)
{
	const sync_trigger_args_t *a = step->args;
	int rc = 0;

	(void)plan;
	if (strcmp(a->from, a->to) == 0) {
		phg_diag_error(d, phg_step_field_pos(step, "to"),
		               "sync_trigger `from` and `to` are the same column \"%s\"", a->to);
		rc = PHG_EPLAN;
	}
	if ((a->expr && strstr(a->expr, "$phg$")) || (a->down_expr && strstr(a->down_expr, "$phg$"))) {
		phg_diag_error(d, step->pos, "sync_trigger expressions must not contain \"$phg$\"");
		rc = PHG_EPLAN;
	}
	return rc;
}

const phg_step_kind_t phg_kind_sync_trigger = {
	.name = "sync_trigger",
	.summary = "trigger keeping a new column in step with an old one (dual-write)",
	.fields = sync_trigger_fields,
	.args_size = sizeof(sync_trigger_args_t),
	.check = sync_trigger_check,
	.build = sync_trigger_build,
	.tables = phg_tables_first_arg,
	.clean_on_fail = 1,
};
