/*
 * test_engines.c - an engine is an object: two engines, each with its own
 * plan, target and connections, apply two plans to two databases at the same
 * time on one loop in one process; both complete, each database holds its
 * own plan's result and run, and uv_loop_close() returns 0.  Then both are
 * rolled back the same way.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "engine.h"
#include "error.h"
#include "log.h"
#include "plan.h"
#include "pgtest.h"

#define DB_A "t_engines_a"
#define DB_B "t_engines_b"

static char *g_url_a, *g_url_b;

/* Two plans of different shapes, on different variables: a backfill of 20k
 * rows (many batches, so the two runs interleave) and an index build. */
static const char plan_a[] =
    "version: 1\n"
    "name: engines-a\n"
    "target: { url_env: ENGINE_A_URL }\n"
    "phases:\n"
    "  - name: expand\n"
    "    steps:\n"
    "      - add_column: { table: jobs, column: v2, type: int }\n"
    "  - name: backfill\n"
    "    steps:\n"
    "      - backfill: { table: jobs, set: \"v2 = v * 2\", batch_size: 500 }\n"
    "      - set_not_null: { table: jobs, column: v2 }\n";

static const char plan_b[] =
    "version: 1\n"
    "name: engines-b\n"
    "target: { url_env: ENGINE_B_URL }\n"
    "phases:\n"
    "  - name: index\n"
    "    steps:\n"
    "      - create_index: { table: jobs, columns: [v], name: jobs_v_idx }\n"
    "      - add_check: { table: jobs, name: jobs_v_pos, check: \"v >= 0\" }\n";

static phg_plan_t *load(const char *name, const char *text)
{
	phg_plan_t *p = NULL;
	phg_err_t err;

	phg_err_clear(&err);
	if (phg_plan_load_buffer(name, text, strlen(text), stderr, &p, &err) != 0)
		fail_msg("plan %s does not load: %s", name, err.msg);
	return p;
}

static void expect(const char *url, const char *sql, const char *want)
{
	char *v = pgtest_scalar(url, sql);

	if (v == NULL || strcmp(v, want) != 0)
		fail_msg("%s: got '%s', want '%s'", sql, v ? v : "(null)", want);
	free(v);
}

/* Run both engines of @mode on one loop; both exit codes must be 0. */
static void run_both(phg_engine_mode_t mode, phg_plan_t *a, phg_plan_t *b)
{
	uv_loop_t loop;
	phg_run_opts_t o;
	phg_engine_t *ea, *eb;
	int ca = -1, cb = -1;

	memset(&o, 0, sizeof(o));
	assert_int_equal(uv_loop_init(&loop), 0);
	ea = phg_engine_new(&loop, mode, a, &o, &ca);
	eb = phg_engine_new(&loop, mode, b, &o, &cb);
	assert_non_null(ea);
	assert_non_null(eb);
	phg_engine_start(ea);
	phg_engine_start(eb);
	uv_run(&loop, UV_RUN_DEFAULT);
	ca = phg_engine_free(ea);
	cb = phg_engine_free(eb);
	assert_int_equal(ca, 0);
	assert_int_equal(cb, 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_two_engines_on_one_loop(void **state)
{
	phg_plan_t *a = load("a.yaml", plan_a), *b = load("b.yaml", plan_b);

	(void)state;
	setenv("ENGINE_A_URL", g_url_a, 1);
	setenv("ENGINE_B_URL", g_url_b, 1);
	run_both(PHG_ENGINE_APPLY, a, b);

	/* each database holds its own plan's result and only its own run */
	expect(g_url_a, "SELECT count(*) FROM jobs WHERE v2 = v * 2", "20000");
	expect(g_url_a, "SELECT attnotnull::text FROM pg_attribute WHERE attrelid = 'jobs'::regclass "
	                "AND attname = 'v2'",
	       "true");
	expect(g_url_a, "SELECT string_agg(plan || ':' || state, ',') FROM phasegate.runs",
	       "engines-a:completed");
	expect(g_url_a, "SELECT count(*) FROM pg_indexes WHERE indexname = 'jobs_v_idx'", "0");
	expect(g_url_b, "SELECT indisvalid::text FROM pg_index WHERE indexrelid = 'jobs_v_idx'::regclass",
	       "true");
	expect(g_url_b, "SELECT convalidated::text FROM pg_constraint WHERE conname = 'jobs_v_pos'",
	       "true");
	expect(g_url_b, "SELECT string_agg(plan || ':' || state, ',') FROM phasegate.runs",
	       "engines-b:completed");
	expect(g_url_b, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'jobs'::regclass "
	                "AND attname = 'v2'",
	       "0");
	/* the two runs overlapped in time: neither waited for the other */
	{
		char *a_end = pgtest_scalar(g_url_a, "SELECT finished_at::text FROM phasegate.runs");
		char *b_start = pgtest_scalar(g_url_b, "SELECT started_at::text FROM phasegate.runs");
		char sql[256];

		assert_non_null(a_end);
		assert_non_null(b_start);
		snprintf(sql, sizeof(sql), "SELECT ('%s'::timestamptz < '%s'::timestamptz)::text", b_start,
		         a_end);
		expect(g_url_a, sql, "true");
		free(a_end);
		free(b_start);
	}

	run_both(PHG_ENGINE_ROLLBACK, a, b);
	expect(g_url_a, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'jobs'::regclass "
	                "AND attname = 'v2' AND NOT attisdropped",
	       "0");
	expect(g_url_a, "SELECT state FROM phasegate.runs", "rolled_back");
	expect(g_url_b, "SELECT count(*) FROM pg_indexes WHERE indexname = 'jobs_v_idx'", "0");
	expect(g_url_b, "SELECT state FROM phasegate.runs", "rolled_back");
	phg_plan_free(a);
	phg_plan_free(b);
}

static void test_unknown_to_phase_touches_nothing(void **state)
{
	phg_plan_t *a = load("a.yaml", plan_a);
	uv_loop_t loop;
	phg_run_opts_t o;
	int code = 0;

	(void)state;
	memset(&o, 0, sizeof(o));
	o.to_phase = "no-such-phase";
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_null(phg_engine_new(&loop, PHG_ENGINE_APPLY, a, &o, &code));
	assert_int_equal(code, 2);
	assert_int_equal(uv_loop_close(&loop), 0);
	phg_plan_free(a);
}

/* An engine made directly is held to "never the wrong database": with an
 * environment selected whose variable is unset, none is made. */
static void test_unset_environment_variable_makes_no_engine(void **state)
{
	static const char text[] = "version: 1\n"
	                           "name: env-unset\n"
	                           "environments:\n"
	                           "  staging: { url_env: PHG_TEST_UNSET_STAGING_URL }\n"
	                           "phases:\n"
	                           "  - name: one\n"
	                           "    steps:\n"
	                           "      - add_column: { table: jobs, column: c, type: int }\n";
	phg_plan_t *p = load("env.yaml", text);
	uv_loop_t loop;
	phg_run_opts_t o;
	phg_err_t err;
	int code = 0;

	(void)state;
	unsetenv("PHG_TEST_UNSET_STAGING_URL");
	phg_err_clear(&err);
	assert_int_equal(phg_plan_select_env(p, "staging", &err), 0);
	memset(&o, 0, sizeof(o));
	o.env = "staging";
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_null(phg_engine_new(&loop, PHG_ENGINE_APPLY, p, &o, &code));
	assert_int_equal(code, 2);
	assert_int_equal(uv_loop_close(&loop), 0);
	phg_plan_free(p);
}

static int group_setup(void **state)
{
	static const char seed[] = "CREATE TABLE jobs (id int PRIMARY KEY, v int NOT NULL);"
	                           "INSERT INTO jobs SELECT g, g % 100 FROM generate_series(1, 20000) g";

	(void)state;
	g_url_a = pgtest_create_db(DB_A);
	g_url_b = pgtest_create_db(DB_B);
	if (g_url_a == NULL || g_url_b == NULL)
		return -1;
	if (pgtest_exec(g_url_a, seed) != 0 || pgtest_exec(g_url_b, seed) != 0)
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	pgtest_drop_db(DB_A);
	pgtest_drop_db(DB_B);
	free(g_url_a);
	free(g_url_b);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_two_engines_on_one_loop),
	    cmocka_unit_test(test_unknown_to_phase_touches_nothing),
	    cmocka_unit_test(test_unset_environment_variable_makes_no_engine),
	};

	phg_log_set_level(PHG_LOG_WARN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
