/*
 * test_exec.c - the op executor (orchestrator/exec.h) against a real
 * database: its callback never runs from inside phg_exec_run(), and a
 * statement that overflows its capped buffer fails the op before anything
 * of it is sent (no progress is recorded for it); a query queued on an
 * unusable control connection is cancelled on a later loop turn; two
 * backfill ops of one step each run a whole cursor.
 *
 * Every test runs its own loop and ends with uv_loop_close() == 0.
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

#include "buf.h"
#include "error.h"
#include "exec.h"
#include "pg.h"
#include "pgq.h"
#include "pgtest.h"
#include "store.h"

#define TEST_DB "t_exec"

static char *g_url;

typedef struct texec {
	uv_loop_t loop;
	phg_pg_t work;
	phg_exec_t x;
	phg_settings_t settings;
	phg_ops_t ops;
	int connected;
	int connect_status;
	int calls;
	int status;
	int closed;
} texec_t;

static void on_connect(phg_pg_t *pg, int status, const phg_err_t *err)
{
	texec_t *t = pg->data;

	(void)err;
	t->connected = 1;
	t->connect_status = status;
}

static void on_done(phg_exec_t *x, int status)
{
	texec_t *t = x->data;

	t->calls++;
	t->status = status;
}

static void on_pg_closed(phg_pg_t *pg)
{
	texec_t *t = pg->data;

	t->closed++;
}

static void on_exec_closed(phg_exec_t *x)
{
	texec_t *t = x->data;

	t->closed++;
}

static void run_until(texec_t *t, const int *counter, int want)
{
	uint64_t deadline = uv_hrtime() + 20ull * 1000 * 1000 * 1000;

	while (*counter < want && uv_hrtime() < deadline)
		uv_run(&t->loop, UV_RUN_NOWAIT);
	if (*counter < want)
		fail_msg("timed out: counter %d, want %d", *counter, want);
}

static void setup_exec(texec_t *t)
{
	phg_err_t err;

	memset(t, 0, sizeof(*t));
	assert_int_equal(uv_loop_init(&t->loop), 0);
	phg_pg_init(&t->loop, &t->work, "work");
	t->work.data = t;
	phg_err_clear(&err);
	assert_int_equal(phg_pg_connect(&t->work, g_url, 10000, on_connect, &err), 0);
	run_until(t, &t->connected, 1);
	assert_int_equal(t->connect_status, 0);
	phg_exec_init(&t->loop, &t->x);
	t->x.data = t;
	t->settings.lock_timeout_ms = 1000;
	t->settings.lock_retries = 2;
	t->settings.retry_backoff_ms = 10;
	t->settings.retry_backoff_max_ms = 20;
	t->x.work = &t->work;
	t->x.settings = &t->settings;
	t->x.schema_q = "\"phasegate\"";
	t->x.run_id = 1;
	t->x.ops = &t->ops;
}

static void teardown_exec(texec_t *t)
{
	phg_ops_free(&t->ops);
	phg_exec_close(&t->x, on_exec_closed);
	phg_pg_close(&t->work, on_pg_closed);
	run_until(t, &t->closed, 2);
	uv_run(&t->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* One PHG_OP_TX op labelled @label with the statements @sql (taken). */
static phg_op_t *one_tx_op(texec_t *t, const char *label, char **sql, size_t nsql)
{
	phg_op_t *op;

	t->ops.v = phg_calloc(1, sizeof(*t->ops.v));
	t->ops.n = 1;
	op = &t->ops.v[0];
	op->kind = PHG_OP_TX;
	op->label = phg_strdup(label);
	op->sql = phg_calloc(nsql, sizeof(char *));
	for (size_t i = 0; i < nsql; i++)
		op->sql[i] = sql[i];
	op->nsql = nsql;
	return op;
}

static void test_no_op_calls_back_later(void **state)
{
	texec_t t;

	(void)state;
	setup_exec(&t);
	/* no op at all: done, but not from inside phg_exec_run() */
	assert_int_equal(phg_exec_run(&t.x, on_done), 0);
	assert_int_equal(t.calls, 0);
	run_until(&t, &t.calls, 1);
	assert_int_equal(t.status, 0);
	assert_int_equal(t.calls, 1);
	teardown_exec(&t);
}

static void test_oversized_statement_fails_the_op(void **state)
{
	texec_t t;
	phg_op_t *op;
	char *big, *v, *sql[2];
	size_t n = 17u * 1024 * 1024; /* over the 16 MiB cap of one op's SQL */

	(void)state;
	setup_exec(&t);
	big = phg_calloc(1, n + 64);
	memcpy(big, "INSERT INTO marks VALUES ('", 27);
	memset(big + 27, 'x', n);
	memcpy(big + 27 + n, "')", 3);
	sql[0] = phg_strdup("INSERT INTO marks VALUES ('first')");
	sql[1] = big;
	op = one_tx_op(&t, "a huge statement", sql, 2);
	op->flags = PHG_OPF_DDL;
	assert_int_equal(phg_exec_run(&t.x, on_done), 0);
	assert_int_equal(t.calls, 0);
	run_until(&t, &t.calls, 1);
	if (t.status != PHG_ESTEP || t.x.err.code != PHG_ETOOBIG)
		fprintf(stderr, "status %s, err %s: %s\n", phg_err_name(t.status),
		        phg_err_name(t.x.err.code), t.x.err.msg);
	assert_int_equal(t.status, PHG_ESTEP);
	assert_int_equal(t.x.err.code, PHG_ETOOBIG);
	assert_non_null(strstr(t.x.err.msg, "a huge statement"));
	assert_int_equal(t.x.next, 0);
	/* nothing of the op ran, and no progress was recorded */
	v = pgtest_scalar(g_url, "SELECT count(*) FROM marks");
	assert_string_equal(v, "0");
	free(v);
	v = pgtest_scalar(g_url, "SELECT progress FROM phasegate.steps");
	assert_string_equal(v, "0");
	free(v);
	teardown_exec(&t);
}

static void test_tx_op_commits_with_its_record(void **state)
{
	texec_t t;
	char *v, *sql[1];

	(void)state;
	setup_exec(&t);
	sql[0] = phg_strdup("INSERT INTO marks VALUES ('ok')");
	one_tx_op(&t, "a mark", sql, 1);
	assert_int_equal(phg_exec_run(&t.x, on_done), 0);
	run_until(&t, &t.calls, 1);
	assert_int_equal(t.status, 0);
	assert_int_equal(t.x.next, 1);
	v = pgtest_scalar(g_url, "SELECT string_agg(v, ',') FROM marks");
	assert_string_equal(v, "ok");
	free(v);
	v = pgtest_scalar(g_url, "SELECT progress FROM phasegate.steps");
	assert_string_equal(v, "1");
	free(v);
	assert_int_equal(pgtest_exec(g_url, "DELETE FROM marks; UPDATE phasegate.steps SET progress = 0"), 0);
	teardown_exec(&t);
}

/* A PHG_OP_BACKFILL op of @t's list: SET @set WHERE @where on table bf. */
static void backfill_op(phg_op_t *op, const char *label, const char *set, const char *where)
{
	op->kind = PHG_OP_BACKFILL;
	op->flags = PHG_OPF_SCAN;
	op->label = phg_strdup(label);
	op->backfill = phg_calloc(1, sizeof(*op->backfill));
	op->backfill->table = phg_strdup("bf");
	op->backfill->set = phg_strdup(set);
	op->backfill->where = phg_strdup(where);
	op->backfill->batch_size = 2;
}

/* Two backfill ops in one step (drop_column's revert has two): the second
 * starts its own cursor from the start and makes its own final sweep, even
 * when the first ended in its sweep past some key. */
static void test_second_backfill_starts_over(void **state)
{
	texec_t t;
	char *v;

	(void)state;
	/* updating rows 1-2 (the first batch) makes row 1 eligible again, once:
	 * the first op's final sweep finds it and ends with key 1 done */
	assert_int_equal(pgtest_exec(g_url,
	                             "CREATE TABLE bf (id int PRIMARY KEY, v int, w int);"
	                             "INSERT INTO bf SELECT g, NULL, NULL FROM generate_series(1, 6) g;"
	                             "CREATE TABLE once (x int);"
	                             "CREATE FUNCTION bf_again() RETURNS trigger LANGUAGE plpgsql AS $$"
	                             " BEGIN IF NOT EXISTS (SELECT 1 FROM once) THEN"
	                             "  INSERT INTO once VALUES (1); UPDATE bf SET v = NULL WHERE id = 1;"
	                             " END IF; RETURN NULL; END $$;"
	                             "CREATE TRIGGER bf_again AFTER UPDATE ON bf FOR EACH STATEMENT "
	                             "EXECUTE FUNCTION bf_again()"),
	                 0);
	setup_exec(&t);
	t.ops.v = phg_calloc(2, sizeof(*t.ops.v));
	t.ops.n = 2;
	backfill_op(&t.ops.v[0], "fill v", "v = 1", "v IS NULL");
	backfill_op(&t.ops.v[1], "fill w", "w = 1", "w IS NULL");
	assert_int_equal(phg_exec_run(&t.x, on_done), 0);
	run_until(&t, &t.calls, 1);
	if (t.status != 0)
		fprintf(stderr, "exec: %s\n", t.x.err.msg);
	assert_int_equal(t.status, 0);
	v = pgtest_scalar(g_url, "SELECT count(*) FROM bf WHERE v = 1 AND w = 1");
	assert_string_equal(v, "6");
	free(v);
	/* the committed op left no cursor behind */
	v = pgtest_scalar(g_url, "SELECT bf_pass || ',' || coalesce(bf_last::text, 'none') || ',' || "
	                         "progress FROM phasegate.steps");
	assert_string_equal(v, "1,none,2");
	free(v);
	assert_int_equal(pgtest_exec(g_url, "DROP TABLE bf, once; DROP FUNCTION bf_again(); "
	                                    "UPDATE phasegate.steps SET progress = 0, bf_rows = 0, "
	                                    "bf_batches = 0"),
	                 0);
	teardown_exec(&t);
}

static int g_pgq_calls, g_pgq_status;

static void on_pgq(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	(void)pg;
	(void)res;
	(void)err;
	(void)arg;
	g_pgq_calls++;
	g_pgq_status = status;
}

/* A query queued on a connection that is not usable: its callback runs on
 * a later loop turn, not from inside phg_pgq_query(). */
static void test_pgq_flush_is_deferred(void **state)
{
	uv_loop_t loop;
	phg_pg_t pg;
	phg_pgq_t q;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	phg_pg_init(&loop, &pg, "ctl");
	phg_pgq_init(&q, &pg);
	g_pgq_calls = 0;
	assert_int_equal(phg_pgq_query(&q, "SELECT 1", 0, NULL, on_pgq, NULL), 0);
	assert_int_equal(g_pgq_calls, 0);
	uv_run(&loop, UV_RUN_NOWAIT);
	assert_int_equal(g_pgq_calls, 1);
	assert_int_equal(g_pgq_status, PHG_ECANCELED);
	phg_pgq_discard(&q);
	phg_pg_close(&pg, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static int group_setup(void **state)
{
	phg_buf_t b;
	int rc;

	(void)state;
	g_url = pgtest_create_db(TEST_DB);
	if (g_url == NULL)
		return -1;
	phg_buf_init(&b, 64 * 1024);
	phg_store_schema_sql(&b, "\"phasegate\"");
	rc = pgtest_exec(g_url, b.data);
	phg_buf_free(&b);
	if (rc != 0)
		return -1;
	return pgtest_exec(g_url,
	                   "CREATE TABLE marks (v text);"
	                   "INSERT INTO phasegate.runs (id, plan, checksum, state) "
	                   "VALUES (1, 'p', 'sha256:x', 'running');"
	                   "INSERT INTO phasegate.phases (run_id, idx, name, checksum, state) "
	                   "VALUES (1, 0, 'ph', 'x', 'running');"
	                   "INSERT INTO phasegate.steps (run_id, phase_idx, idx, kind, state) "
	                   "VALUES (1, 0, 0, 'sql', 'running')");
}

static int group_teardown(void **state)
{
	(void)state;
	pgtest_drop_db(TEST_DB);
	free(g_url);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_no_op_calls_back_later),
	    cmocka_unit_test(test_tx_op_commits_with_its_record),
	    cmocka_unit_test(test_oversized_statement_fails_the_op),
	    cmocka_unit_test(test_second_backfill_starts_over),
	    cmocka_unit_test(test_pgq_flush_is_deferred),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
