/*
 * test_own_sql.c - every statement phasegate itself emits passes its own
 * lint (orchestrator/sqlparse.c): the ops of every step of the shipped
 * plans, the examples and a plan holding every step kind, in each
 * direction (apply, revert, finalize), with the backfill's batch, count,
 * high-water and probe queries and every side query of an op (memo, no-op,
 * guard, cleanup, observe, violation count).  Each op sequence is linted
 * as one, as it runs: the CHECK that set_not_null validates proves the SET
 * NOT NULL after it.
 *
 * The one kind of finding allowed is the warning on DROP and RENAME in a
 * contract phase: those are the statements a contract phase is for (and
 * drop_column / rename_column make them revertible: hidden, renamed back).
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "error.h"
#include "plan.h"
#include "sqlparse.h"
#include "step.h"

typedef struct {
	const char *where; /* plan file, step, direction */
	const char *sql;
	size_t findings;     /* errors, and warnings other than DROP/RENAME */
	size_t contract;     /* DROP/RENAME warnings in a contract phase */
} seen_t;

static void report(void *arg, phg_lint_sev_t sev, size_t off, const char *msg)
{
	seen_t *s = arg;

	if (sev == PHG_LINT_WARN &&
	    (strncmp(msg, "DROP of ", 8) == 0 || strncmp(msg, "RENAME of ", 10) == 0)) {
		s->contract++;
		return;
	}
	print_message("%s: %s at byte %zu: %s\n  in: %s\n", s->where,
	              sev == PHG_LINT_ERROR ? "error" : "warning", off, msg, s->sql);
	s->findings++;
}

static size_t lint_one(phg_lint_t *l, seen_t *s, const char *sql)
{
	if (sql == NULL)
		return 0;
	s->sql = sql;
	phg_lint_sql(l, sql);
	return 1;
}

/* Side queries are linted on their own (they run outside the sequence). */
static size_t lint_side(seen_t *s, const char *sql)
{
	phg_lint_t l;
	size_t n;

	phg_lint_init(&l, 0, report, s);
	n = lint_one(&l, s, sql);
	phg_lint_free(&l);
	return n;
}

static size_t lint_backfill(seen_t *s, const phg_backfill_spec_t *bf)
{
	phg_build_t qb;
	phg_strv_t keys = {0};
	phg_buf_t b;
	size_t n = 0;
	void (*const render[])(phg_build_t *, const phg_backfill_spec_t *, const phg_strv_t *,
	                       phg_buf_t *) = {phg_backfill_count_sql, phg_backfill_max_key_sql,
	                                       phg_backfill_probe_sql};

	memset(&qb, 0, sizeof(qb));
	phg_strv_push(&keys, "tenant_id");
	phg_strv_push(&keys, "id");
	phg_buf_init(&b, 1024 * 1024);
	phg_backfill_batch_sql(&qb, bf, &keys, "\"phasegate\"", &b);
	n += lint_side(s, b.data);
	for (size_t i = 0; i < sizeof(render) / sizeof(render[0]); i++) {
		phg_buf_reset(&b);
		render[i](&qb, bf, &keys, &b);
		n += lint_side(s, b.data);
	}
	phg_buf_free(&b);
	phg_strv_clear(&keys);
	phg_build_reset(&qb);
	return n;
}

/* Lint every op of @step built for @dir; returns the statements linted. */
static size_t lint_step_memo(const phg_plan_t *plan, const phg_phase_t *ph,
                             const phg_step_t *st, phg_dir_t dir, size_t progress,
                             const json_t *memo, seen_t *s, phg_ops_t *keep)
{
	static const char *const dirs[] = {"apply", "revert", "finalize"};
	phg_ops_t ops = {0};
	phg_err_t err;
	phg_lint_t l;
	char where[256];
	size_t n = 0;
	int rc;

	phg_err_clear(&err);
	rc = phg_step_build(plan, st, dir, progress, memo, NULL, &ops, &err);
	if (rc == PHG_EIRREVERSIBLE) {
		phg_ops_free(&ops);
		return 0;
	}
	assert_int_equal(rc, 0);
	snprintf(where, sizeof(where), "%s: phase \"%s\" %s %s", plan->file, ph->name,
	         st->kind->name, dirs[dir]);
	s->where = where;
	phg_lint_init(&l,
	              (dir == PHG_DIR_REVERT ? PHG_LINT_REVERT : 0u) |
	                  (phg_phase_is_contract(ph) ? PHG_LINT_CONTRACT : 0u),
	              report, s);
	for (size_t i = 0; i < ops.n; i++) {
		const phg_op_t *op = &ops.v[i];

		l.flags = (l.flags & ~PHG_LINT_TX) | (op->kind == PHG_OP_TX ? PHG_LINT_TX : 0u);
		for (size_t k = 0; k < op->nsql; k++)
			n += lint_one(&l, s, op->sql[k]);
		n += lint_side(s, op->memo_sql) + lint_side(s, op->noop_sql) +
		     lint_side(s, op->guard_sql) + lint_side(s, op->cleanup_sql) +
		     lint_side(s, op->observe_sql) + lint_side(s, op->violation_count_sql) +
		     lint_side(s, op->violation_undo_sql);
		if (op->backfill != NULL)
			n += lint_backfill(s, op->backfill);
	}
	phg_lint_free(&l);
	if (keep != NULL)
		*keep = ops;
	else
		phg_ops_free(&ops);
	return n;
}

static size_t lint_step(const phg_plan_t *plan, const phg_phase_t *ph, const phg_step_t *st,
                        phg_dir_t dir, size_t progress, seen_t *s)
{
	return lint_step_memo(plan, ph, st, dir, progress, NULL, s, NULL);
}

static size_t lint_plan(const char *path, seen_t *s)
{
	phg_plan_t *plan = NULL;
	phg_err_t err;
	size_t n = 0;

	phg_err_clear(&err);
	assert_int_equal(phg_plan_load(path, stderr, &plan, &err), 0);
	for (size_t p = 0; p < plan->nphases; p++) {
		const phg_phase_t *ph = &plan->phases[p];

		for (size_t i = 0; i < ph->nsteps; i++) {
			const phg_step_t *st = &ph->steps[i];
			phg_ops_t ops = {0};

			/* revert after a complete apply: every apply op done */
			assert_int_equal(phg_step_build(plan, st, PHG_DIR_APPLY, 0, NULL, NULL, &ops, &err),
			                 0);
			n += lint_step(plan, ph, st, PHG_DIR_APPLY, 0, s);
			n += lint_step(plan, ph, st, PHG_DIR_REVERT, ops.n, s);
			n += lint_step(plan, ph, st, PHG_DIR_FINALIZE, 0, s);
			phg_ops_free(&ops);
		}
	}
	phg_plan_free(plan);
	return n;
}

/* Every *.yaml in @dir (relative to the source tree). */
static size_t lint_dir(const char *dir, seen_t *s, size_t *plans)
{
	const char *src = getenv("PHG_SOURCE_DIR");
	char *path = phg_asprintf("%s/%s", src ? src : ".", dir);
	DIR *d = opendir(path);
	struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		char *f;

		if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0)
			continue;
		f = phg_asprintf("%s/%s", path, e->d_name);
		n += lint_plan(f, s);
		(*plans)++;
		free(f);
	}
	closedir(d);
	free(path);
	return n;
}

static void test_own_sql_passes_lint(void **state)
{
	seen_t s = {0};
	size_t plans = 0, stmts = 0;

	(void)state;
	stmts += lint_dir("plans", &s, &plans);
	stmts += lint_dir("examples/quickstart", &s, &plans);
	stmts += lint_dir("tests/bench/zd", &s, &plans);
	stmts += lint_dir("tests/unit/data", &s, &plans);
	print_message("linted %zu statements of %zu plans (%zu DROP/RENAME in contract phases)\n",
	              stmts, plans, s.contract);
	assert_true(plans >= 4);
	assert_true(stmts > 100); /* the plans were really read */
	assert_int_equal(s.findings, 0);
}

/* The reverts of drop_index and drop_constraint are built from what apply
 * recorded: with memos as the server writes them, their SQL passes the
 * lint, and the recorded index definition is run CONCURRENTLY. */
#define IDX_MEMO                                                                           \
	"\"index_schema\": \"public\", \"index_name\": \"jobs_x\", \"table_schema\": \"public\", " \
	"\"table_name\": \"jobs\", \"index_valid\": true"

static void test_recorded_reverts(void **state)
{
	static const struct {
		const char *kind, *memo, *first; /* the first statement of the revert */
		size_t nops;
	} cases[] = {
		{"drop_index",
		 "{\"indexdef\": \"CREATE INDEX jobs_x ON public.jobs USING btree (lower(note)) INCLUDE "
		 "(state) WHERE (note IS NOT NULL)\", \"index_comment\": \"it's for search\", " IDX_MEMO "}",
		 "CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_x ON public.jobs USING btree (lower(note)) "
		 "INCLUDE (state) WHERE (note IS NOT NULL)",
		 2},
		{"drop_constraint",
		 "{\"condef\": \"CHECK ((state <> ''::text))\", \"contype\": \"c\", \"con_comment\": "
		 "\"no empty state\"}",
		 "ALTER TABLE \"jobs\" ADD CONSTRAINT \"jobs_status_ck\" CHECK ((state <> ''::text)) NOT "
		 "VALID",
		 2},
		{"drop_constraint",
		 "{\"condef\": \"FOREIGN KEY (owner_id) REFERENCES users(id) ON DELETE SET NULL NOT "
		 "VALID\", \"contype\": \"f\"}",
		 "ALTER TABLE \"jobs\" ADD CONSTRAINT \"jobs_status_ck\" FOREIGN KEY (owner_id) REFERENCES "
		 "users(id) ON DELETE SET NULL NOT VALID",
		 1},
		{"drop_constraint",
		 "{\"condef\": \"UNIQUE (code) DEFERRABLE INITIALLY DEFERRED\", \"contype\": \"u\", "
		 "\"deferrable\": true, \"deferred\": true, \"indexdef\": \"CREATE UNIQUE INDEX jobs_x ON "
		 "public.jobs USING btree (code)\", " IDX_MEMO "}",
		 "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_x ON public.jobs USING btree (code)",
		 2},
	};
	const char *src = getenv("PHG_SOURCE_DIR");
	char *path = phg_asprintf("%s/tests/unit/data/every_kind.yaml", src ? src : ".");
	phg_plan_t *plan = NULL;
	phg_err_t err;
	seen_t s = {0};
	size_t n = 0;

	(void)state;
	phg_err_clear(&err);
	assert_int_equal(phg_plan_load(path, stderr, &plan, &err), 0);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		json_t *memo = json_loads(cases[c].memo, 0, NULL);
		const phg_step_t *st = NULL;
		const phg_phase_t *ph = NULL;
		phg_ops_t ops = {0};

		assert_non_null(memo);
		for (size_t p = 0; p < plan->nphases && st == NULL; p++)
			for (size_t i = 0; i < plan->phases[p].nsteps && st == NULL; i++)
				if (strcmp(plan->phases[p].steps[i].kind->name, cases[c].kind) == 0) {
					ph = &plan->phases[p];
					st = &ph->steps[i];
				}
		assert_non_null(st);
		n += lint_step_memo(plan, ph, st, PHG_DIR_REVERT, 2, memo, &s, &ops);
		assert_int_equal(ops.n, cases[c].nops);
		assert_true(ops.v[0].nsql >= 1);
		assert_string_equal(ops.v[0].sql[0], cases[c].first);
		phg_ops_free(&ops);
		json_decref(memo);
	}
	assert_true(n >= 8);
	assert_int_equal(s.findings, 0);
	phg_plan_free(plan);
	free(path);
}

/* The lint is not vacuous: the same walk finds an unsafe statement. */
static void test_lint_finds(void **state)
{
	seen_t s = {.where = "probe"};
	phg_lint_t l;

	(void)state;
	phg_lint_init(&l, PHG_LINT_TX, NULL, NULL);
	phg_lint_sql(&l, "ALTER TABLE jobs ALTER COLUMN a SET NOT NULL; CREATE INDEX i ON jobs (a)");
	assert_int_equal(l.errors, 2);
	phg_lint_free(&l);
	/* acknowledged: counted, not reported */
	phg_lint_init(&l, PHG_LINT_TX, report, &s);
	phg_lint_sql(&l, "-- phasegate:safety_assured: an empty table\nCREATE INDEX i ON jobs (a)");
	assert_int_equal(l.errors, 0);
	assert_int_equal(l.assured, 1);
	assert_int_equal(s.findings, 0);
	phg_lint_free(&l);
	/* a table renamed away is an error, unless the same text leaves a view
	 * of the old name (rename_table) */
	phg_lint_init(&l, PHG_LINT_TX, NULL, NULL);
	phg_lint_sql(&l, "ALTER TABLE jobs RENAME TO tasks");
	assert_int_equal(l.errors, 1);
	phg_lint_sql(&l, "ALTER TABLE jobs RENAME TO tasks; CREATE VIEW jobs AS SELECT * FROM tasks");
	assert_int_equal(l.errors, 1);
	phg_lint_free(&l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_own_sql_passes_lint),
		cmocka_unit_test(test_recorded_reverts),
		cmocka_unit_test(test_lint_finds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
