/*
 * test_pg.c - the asynchronous PostgreSQL connection (orchestrator/pg.h)
 * against the throwaway cluster of tests/harness/pg.sh.
 *
 * Every test runs its own loop and ends with uv_loop_close() == 0: every
 * handle of the adapter is closed by then.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <uv.h>

#include "error.h"
#include "log.h"
#include "pg.h"
#include "pgtest.h"

#define TEST_DB "t_pg_async"
#define SECRET "s3cretpw"

static char *g_url; /* conninfo URI of TEST_DB */

/* ------------------------------------------------------------ helpers */

typedef struct tconn {
	phg_pg_t pg;
	uv_loop_t *loop;
	/* connect */
	int connects;
	int connect_status;
	phg_err_t connect_err;
	/* last result */
	int results;
	int status;
	phg_err_t err;
	int had_res;
	ExecStatusType rstatus;
	int ntuples;
	char val[4][256];
	char first_col[8][256]; /* column 1 of each result, in order */
	int isnull[4];
	uint64_t result_at;
	/* what the result callback does next */
	int close_in_cb;
	const char *next_sql;
	int next_rc;
	/* notices */
	int notices;
	char notice_sev[32];
	char notice_msg[256];
	/* close */
	int closes;
} tconn_t;

static void print_err(const char *what, int status, const phg_err_t *e)
{
	fprintf(stderr, "%s: status %s (%d); err code %s sqlstate \"%s\"\n"
	                "  msg:    %s\n  detail: %s\n  hint:   %s\n",
	        what, phg_err_name(status), status, phg_err_name(e->code),
	        e->sqlstate, e->msg, e->detail, e->hint);
}

/* Fails showing both the expected and the actual status, and the error. */
#define assert_status(what, actual, expected, errp)                          \
	do {                                                                     \
		if ((actual) != (expected)) {                                        \
			fprintf(stderr, "expected status %s\n", phg_err_name(expected)); \
			print_err(what, (actual), (errp));                               \
		}                                                                    \
		assert_int_equal((actual), (expected));                              \
	} while (0)

static void assert_no_secret(const phg_err_t *e)
{
	if (strstr(e->msg, SECRET) != NULL || strstr(e->detail, SECRET) != NULL ||
	    strstr(e->hint, SECRET) != NULL) {
		print_err("the password leaked", e->code, e);
		fail_msg("error text contains the password \"%s\"", SECRET);
	}
}

static int g_guard_fired;

static void on_guard(uv_timer_t *t)
{
	(void)t;
	g_guard_fired = 1;
}

/* Run @loop until *@counter >= @want or @ms pass: 0, or -1 on timeout. */
static int run_until(uv_loop_t *loop, const int *counter, int want, uint64_t ms)
{
	uv_timer_t guard;

	uv_timer_init(loop, &guard);
	g_guard_fired = 0;
	uv_timer_start(&guard, on_guard, ms, 0);
	while (*counter < want && !g_guard_fired)
		uv_run(loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	if (*counter < want)
		fprintf(stderr, "timed out after %llu ms: counter %d, want %d\n",
		        (unsigned long long)ms, *counter, want);
	return *counter >= want ? 0 : -1;
}

static void on_connect(phg_pg_t *pg, int status, const phg_err_t *err)
{
	tconn_t *c = pg->data;

	assert_non_null(err);
	c->connects++;
	c->connect_status = status;
	c->connect_err = *err;
}

static void on_result(phg_pg_t *pg, int status, PGresult *res,
                      const phg_err_t *err, void *arg)
{
	tconn_t *c = arg;
	int i;

	assert_ptr_equal(pg, &c->pg);
	assert_non_null(err);
	c->results++;
	c->status = status;
	c->err = *err;
	c->result_at = uv_now(c->loop);
	c->had_res = res != NULL;
	c->ntuples = 0;
	memset(c->val, 0, sizeof(c->val));
	memset(c->isnull, 0, sizeof(c->isnull));
	if (res != NULL) {
		c->rstatus = PQresultStatus(res);
		c->ntuples = PQntuples(res);
		for (i = 0; i < 4 && i < PQnfields(res) && c->ntuples > 0; i++) {
			c->isnull[i] = PQgetisnull(res, 0, i);
			snprintf(c->val[i], sizeof(c->val[i]), "%s", PQgetvalue(res, 0, i));
		}
		if (c->results <= 8 && PQnfields(res) > 0 && c->ntuples > 0)
			snprintf(c->first_col[c->results - 1], sizeof(c->first_col[0]), "%s",
			         PQgetvalue(res, 0, 0));
	}
	/* state is READY (or BROKEN) before the callback runs */
	if (status == 0 || status == PHG_EPG)
		assert_int_equal(pg->state, PHG_PG_READY);
	if (c->next_sql != NULL) {
		const char *sql = c->next_sql;

		c->next_sql = NULL;
		c->next_rc = phg_pg_query(pg, sql, 0, NULL, on_result, c);
	}
	if (c->close_in_cb)
		phg_pg_close(pg, NULL);
}

static void on_notice(phg_pg_t *pg, const char *severity, const char *message)
{
	tconn_t *c = pg->data;

	c->notices++;
	snprintf(c->notice_sev, sizeof(c->notice_sev), "%s", severity);
	snprintf(c->notice_msg, sizeof(c->notice_msg), "%s", message);
}

static void on_closed(phg_pg_t *pg)
{
	tconn_t *c = pg->data;

	assert_int_equal(pg->state, PHG_PG_CLOSED);
	c->closes++;
}

static void t_init(tconn_t *c, uv_loop_t *loop, const char *name)
{
	memset(c, 0, sizeof(*c));
	c->loop = loop;
	assert_int_equal(phg_pg_init(loop, &c->pg, name), 0);
	c->pg.data = c;
}

/* Start connecting and wait for the callback (any status). */
static void t_connect_any(tconn_t *c, const char *conninfo, uint64_t timeout_ms)
{
	phg_err_t err;
	int rc;

	phg_err_clear(&err);
	rc = phg_pg_connect(&c->pg, conninfo, timeout_ms, on_connect, &err);
	assert_status("phg_pg_connect", rc, 0, &err);
	assert_int_equal(c->pg.state, PHG_PG_CONNECTING);
	assert_null(c->pg.conn); /* libpq works on the threadpool meanwhile */
	assert_int_equal(run_until(c->loop, &c->connects, 1, 15000), 0);
	assert_int_equal(c->connects, 1);
	if (c->connect_status != 0 && getenv("PHG_TEST_DEBUG") != NULL)
		print_err("connect", c->connect_status, &c->connect_err);
}

static void t_connect(tconn_t *c, uv_loop_t *loop, const char *name)
{
	t_init(c, loop, name);
	t_connect_any(c, g_url, 10000);
	assert_status("connect", c->connect_status, 0, &c->connect_err);
	assert_int_equal(c->pg.state, PHG_PG_READY);
	assert_non_null(c->pg.conn);
	assert_int_equal(PQisnonblocking(c->pg.conn), 1);
}

static void t_query(tconn_t *c, const char *sql, int nparams,
                    const char *const *params)
{
	int before = c->results;
	int rc = phg_pg_query(&c->pg, sql, nparams, params, on_result, c);

	assert_status(sql, rc, 0, &c->err);
	assert_int_equal(c->pg.state, PHG_PG_BUSY);
	assert_int_equal(run_until(c->loop, &c->results, before + 1, 15000), 0);
}

/* A query that must succeed with one row; its first value. */
static const char *t_value(tconn_t *c, const char *sql)
{
	t_query(c, sql, 0, NULL);
	assert_status(sql, c->status, 0, &c->err);
	assert_int_equal(c->ntuples, 1);
	return c->val[0];
}

static void t_close(tconn_t *c)
{
	int before = c->closes;

	phg_pg_close(&c->pg, on_closed);
	assert_int_equal(c->pg.state, PHG_PG_CLOSING);
	assert_int_equal(c->closes, before); /* never from inside the call */
	assert_int_equal(run_until(c->loop, &c->closes, before + 1, 15000), 0);
}

static void t_loop_done(uv_loop_t *loop)
{
	int rc;

	uv_run(loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(loop);
	if (rc != 0) {
		fprintf(stderr, "uv_loop_close: %s; handles left:\n", uv_strerror(rc));
		uv_print_all_handles(loop, stderr);
	}
	assert_int_equal(rc, 0);
}

static char *t_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *t_asprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	assert_true(n >= 0);
	s = malloc((size_t)n + 1);
	assert_non_null(s);
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

static long t_long(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	assert_true(end != s && *end == '\0');
	return v;
}

/* ------------------------------------------------------------- tests */

static void test_connect_select_one(void **state)
{
	uv_loop_t loop;
	tconn_t c;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");
	assert_true(c.pg.backend_pid > 0);
	assert_string_equal(t_value(&c, "SELECT 1"), "1");
	assert_int_equal(c.rstatus, PGRES_TUPLES_OK);
	assert_int_equal(c.pg.state, PHG_PG_READY);
	/* backend_pid is the server process we talk to */
	assert_int_equal(t_long(t_value(&c, "SELECT pg_backend_pid()")),
	                 c.pg.backend_pid);
	/* fallback_application_name */
	assert_string_equal(t_value(&c, "SHOW application_name"), "phasegate");
	assert_string_equal(t_value(&c, "SELECT current_database()"), TEST_DB);
	t_close(&c);
	/* a second close is a no-op */
	phg_pg_close(&c.pg, on_closed);
	assert_int_equal(c.pg.state, PHG_PG_CLOSED);
	t_loop_done(&loop);
	assert_int_equal(c.closes, 1);
}

static void test_params_and_multi_statement(void **state)
{
	const char *const params[] = {"h\xc3\xa9llo 'q' \"dq\"", "41", NULL};
	uv_loop_t loop;
	tconn_t c;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");

	t_query(&c, "SELECT $1::text, $2::int + 1, $3::text IS NULL, $3::text", 3,
	        params);
	assert_status("params", c.status, 0, &c.err);
	assert_int_equal(c.ntuples, 1);
	assert_string_equal(c.val[0], params[0]);
	assert_string_equal(c.val[1], "42");
	assert_string_equal(c.val[2], "t");
	assert_int_equal(c.isnull[3], 1);
	assert_int_equal(c.isnull[0], 0);

	/* several statements: the last result */
	t_query(&c, "CREATE TEMP TABLE m (x int); INSERT INTO m VALUES (1), (2), (3); "
	            "SELECT count(*), sum(x) FROM m",
	        0, NULL);
	assert_status("multi", c.status, 0, &c.err);
	assert_int_equal(c.rstatus, PGRES_TUPLES_OK);
	assert_string_equal(c.val[0], "3");
	assert_string_equal(c.val[1], "6");
	t_query(&c, "SELECT 1; UPDATE m SET x = x + 1", 0, NULL);
	assert_status("multi", c.status, 0, &c.err);
	assert_int_equal(c.rstatus, PGRES_COMMAND_OK);
	assert_int_equal(c.ntuples, 0);

	/* arguments are checked */
	assert_int_equal(phg_pg_query(&c.pg, "SELECT $1", 1, NULL, on_result, &c),
	                 PHG_EINVAL);
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 1", 0, NULL, NULL, &c),
	                 PHG_EINVAL);
	/* one query at a time */
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 1", 0, NULL, on_result, &c), 0);
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 2", 0, NULL, on_result, &c),
	                 PHG_EINVAL);
	assert_int_equal(run_until(&loop, &c.results, 4, 10000), 0);
	assert_status("one at a time", c.status, 0, &c.err);
	assert_string_equal(c.val[0], "1");

	t_close(&c);
	t_loop_done(&loop);
}

static void test_large_query_is_flushed(void **state)
{
	/* far more than a socket buffer: PQflush returns 1 and the adapter
	 * waits for UV_WRITABLE */
	const size_t n = 8u * 1024 * 1024;
	const char *params[1];
	char *big = malloc(n + 1);
	uv_loop_t loop;
	tconn_t c;

	(void)state;
	assert_non_null(big);
	memset(big, 'x', n);
	big[n] = '\0';
	params[0] = big;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");
	t_query(&c, "SELECT length($1)", 1, params);
	assert_status("large", c.status, 0, &c.err);
	assert_int_equal(t_long(c.val[0]), (long)n);
	free(big);
	assert_string_equal(t_value(&c, "SELECT 'after'"), "after");
	t_close(&c);
	t_loop_done(&loop);
}

static void test_server_error(void **state)
{
	uv_loop_t loop;
	tconn_t c;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");

	t_query(&c, "SELECT 1/0", 0, NULL);
	assert_status("1/0", c.status, PHG_EPG, &c.err);
	assert_int_equal(c.err.code, PHG_EPG);
	assert_string_equal(c.err.sqlstate, "22012");
	assert_string_equal(c.err.msg, "division by zero");
	assert_true(c.had_res);
	assert_int_equal(c.rstatus, PGRES_FATAL_ERROR);
	assert_int_equal(c.pg.state, PHG_PG_READY);
	/* still usable */
	assert_string_equal(t_value(&c, "SELECT 2"), "2");

	/* the first error wins over later results */
	t_query(&c, "SELECT 1; SELECT 1/0; SELECT 3", 0, NULL);
	assert_status("multi", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.sqlstate, "22012");

	/* detail and hint */
	t_query(&c,
	        "DO $$BEGIN RAISE EXCEPTION 'step % failed', 7 USING "
	        "DETAIL = 'The table is locked.', HINT = 'Try again.', "
	        "ERRCODE = '55P03'; END$$",
	        0, NULL);
	assert_status("raise", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.sqlstate, "55P03");
	assert_string_equal(c.err.msg, "step 7 failed");
	assert_string_equal(c.err.detail, "The table is locked.");
	assert_string_equal(c.err.hint, "Try again.");

	/* notices reach the notice callback, one line */
	c.pg.notice_cb = on_notice;
	t_query(&c, "DO $$BEGIN RAISE NOTICE E'two\\nlines'; END$$", 0, NULL);
	assert_status("notice", c.status, 0, &c.err);
	assert_int_equal(c.notices, 1);
	assert_string_equal(c.notice_sev, "NOTICE");
	assert_string_equal(c.notice_msg, "two lines");

	/* a syntax error, then the connection is still fine */
	t_query(&c, "SELEC 1", 0, NULL);
	assert_status("syntax", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.sqlstate, "42601");
	assert_string_equal(t_value(&c, "SELECT 'ok'"), "ok");

	t_close(&c);
	t_loop_done(&loop);
}

static void test_copy_is_refused(void **state)
{
	uv_loop_t loop;
	tconn_t c;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");

	t_query(&c, "COPY (SELECT g FROM generate_series(1, 100000) g) TO STDOUT", 0,
	        NULL);
	assert_status("copy out", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.msg, "COPY is not supported by phasegate");
	assert_string_equal(t_value(&c, "SELECT 'after copy out'"), "after copy out");

	t_query(&c, "CREATE TEMP TABLE ci (x int)", 0, NULL);
	assert_status("create", c.status, 0, &c.err);
	t_query(&c, "COPY ci FROM STDIN", 0, NULL);
	assert_status("copy in", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.msg, "COPY is not supported by phasegate");
	assert_string_equal(t_value(&c, "SELECT count(*) FROM ci"), "0");

	t_close(&c);
	t_loop_done(&loop);
}

static int g_ticks;

static void on_tick(uv_timer_t *t)
{
	(void)t;
	g_ticks++;
}

static void test_loop_not_blocked(void **state)
{
	uv_loop_t loop;
	uv_timer_t tick;
	tconn_t c;
	uint64_t start;
	int ticks;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");
	g_ticks = 0;
	uv_timer_init(&loop, &tick);
	uv_timer_start(&tick, on_tick, 50, 50);
	start = uv_now(&loop);
	t_query(&c, "SELECT pg_sleep(1)", 0, NULL);
	ticks = g_ticks;
	assert_status("sleep", c.status, 0, &c.err);
	if (ticks < 10)
		fprintf(stderr, "%d ticks of 50 ms during a %llu ms query\n", ticks,
		        (unsigned long long)(c.result_at - start));
	assert_true(ticks >= 10);
	assert_true(c.result_at - start >= 950);
	uv_close((uv_handle_t *)&tick, NULL);
	t_close(&c);
	t_loop_done(&loop);
}

static tconn_t *g_cancel_target;

static void on_cancel_timer(uv_timer_t *t)
{
	(void)t;
	assert_int_equal(phg_pg_cancel(&g_cancel_target->pg), 0);
}

static void test_cancel(void **state)
{
	uv_loop_t loop;
	uv_timer_t timer;
	tconn_t c;
	uint64_t start;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&c, &loop, "work");
	/* nothing to cancel: a no-op */
	assert_int_equal(phg_pg_cancel(&c.pg), 0);
	assert_string_equal(t_value(&c, "SELECT 'idle'"), "idle");

	g_cancel_target = &c;
	uv_timer_init(&loop, &timer);
	uv_timer_start(&timer, on_cancel_timer, 200, 0);
	start = uv_now(&loop);
	t_query(&c, "SELECT pg_sleep(30)", 0, NULL);
	assert_status("canceled", c.status, PHG_EPG, &c.err);
	assert_string_equal(c.err.sqlstate, "57014");
	if (c.result_at - start > 3000)
		fprintf(stderr, "cancel took %llu ms\n",
		        (unsigned long long)(c.result_at - start));
	assert_true(c.result_at - start >= 200);
	assert_true(c.result_at - start < 3000);
	/* the connection goes on; a query issued right after the cancel is
	 * not canceled by it */
	assert_string_equal(t_value(&c, "SELECT 'after cancel'"), "after cancel");

	/* cancel, then the next query from the result callback right away */
	uv_timer_start(&timer, on_cancel_timer, 200, 0);
	c.next_sql = "SELECT pg_sleep(0.3), 'next'";
	t_query(&c, "SELECT pg_sleep(30)", 0, NULL);
	assert_string_equal(c.err.sqlstate, "57014");
	assert_int_equal(c.next_rc, 0);
	assert_int_equal(c.results, 4);
	assert_int_equal(run_until(&loop, &c.results, 5, 10000), 0);
	assert_status("next", c.status, 0, &c.err);
	assert_string_equal(c.val[1], "next");

	uv_close((uv_handle_t *)&timer, NULL);
	t_close(&c);
	t_loop_done(&loop);
}

static void test_connect_errors(void **state)
{
	const char *host = getenv("PGHOST"), *port = getenv("PGPORT");
	uv_loop_t loop;
	tconn_t c;
	phg_err_t err;
	char *url;

	(void)state;
	assert_non_null(host);
	assert_non_null(port);
	assert_int_equal(uv_loop_init(&loop), 0);

	/* a database that does not exist, password in the URI */
	url = t_asprintf("postgresql://postgres:" SECRET
	                 "@/phg_no_such_db?host=%s&port=%s",
	                 host, port);
	t_init(&c, &loop, "work");
	t_connect_any(&c, url, 10000);
	assert_status("no db", c.connect_status, PHG_ECONNECT, &c.connect_err);
	assert_int_equal(c.connect_err.code, PHG_ECONNECT);
	if (strstr(c.connect_err.msg, "\"phg_no_such_db\"") == NULL ||
	    strstr(c.connect_err.msg, "cannot connect to the database: ") !=
	        c.connect_err.msg)
		print_err("no db", c.connect_status, &c.connect_err);
	assert_non_null(strstr(c.connect_err.msg, "\"phg_no_such_db\""));
	assert_ptr_equal(strstr(c.connect_err.msg, "cannot connect to the database: "),
	                 c.connect_err.msg);
	assert_null(strchr(c.connect_err.msg, '\n'));
	assert_no_secret(&c.connect_err);
	assert_int_equal(c.pg.state, PHG_PG_BROKEN);
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 1", 0, NULL, on_result, &c),
	                 PHG_ECONNECT);
	t_close(&c);
	free(url);

	/* nobody listens in that socket directory */
	url = t_asprintf("postgresql://postgres:" SECRET
	                 "@/postgres?host=/nonexistent/phg-socket-dir&port=%s",
	                 port);
	t_init(&c, &loop, "work");
	t_connect_any(&c, url, 10000);
	assert_status("unreachable", c.connect_status, PHG_ECONNECT, &c.connect_err);
	if (strstr(c.connect_err.msg, "/nonexistent/phg-socket-dir") == NULL)
		print_err("unreachable", c.connect_status, &c.connect_err);
	assert_ptr_equal(strstr(c.connect_err.msg, "cannot connect to the database: "),
	                 c.connect_err.msg);
	assert_non_null(strstr(c.connect_err.msg, "/nonexistent/phg-socket-dir"));
	assert_no_secret(&c.connect_err);
	t_close(&c);
	free(url);

	/* a closed TCP port, key=value form */
	t_init(&c, &loop, "work");
	t_connect_any(&c, "host=127.0.0.1 port=1 dbname=postgres password=" SECRET,
	              10000);
	assert_status("refused", c.connect_status, PHG_ECONNECT, &c.connect_err);
	assert_no_secret(&c.connect_err);
	t_close(&c);

	/* libpq would quote the whole URI in its parse error: refused
	 * synchronously, without the password, and the callback never runs */
	t_init(&c, &loop, "work");
	phg_err_clear(&err);
	assert_int_equal(phg_pg_connect(&c.pg,
	                                 "postgresql://postgres:" SECRET
	                                 "@[::1/phg_no_such_db",
	                                 1000, on_connect, &err),
	                 PHG_EINVAL);
	assert_int_equal(err.code, PHG_EINVAL);
	assert_string_equal(err.msg, "invalid connection string");
	assert_no_secret(&err);
	phg_err_clear(&err);
	assert_int_equal(phg_pg_connect(&c.pg, "host=/tmp " SECRET, 1000,
	                                on_connect, &err),
	                 PHG_EINVAL);
	assert_no_secret(&err);
	assert_int_equal(c.pg.state, PHG_PG_IDLE);
	t_close(&c);
	assert_int_equal(c.connects, 0);

	t_loop_done(&loop);
}

static void on_never_accept(uv_stream_t *server, int status)
{
	(void)server;
	(void)status;
}

static void test_connect_timeout(void **state)
{
	struct sockaddr_storage ss;
	struct sockaddr_in addr;
	uv_loop_t loop;
	uv_tcp_t server;
	tconn_t c;
	char conninfo[128];
	uint64_t start, took;
	int len = (int)sizeof(ss);

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	/* listens, but never says a word: the kernel completes the handshake
	 * and libpq waits for the server's answer */
	assert_int_equal(uv_tcp_init(&loop, &server), 0);
	assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
	assert_int_equal(uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0), 0);
	assert_int_equal(uv_listen((uv_stream_t *)&server, 4, on_never_accept), 0);
	assert_int_equal(uv_tcp_getsockname(&server, (struct sockaddr *)&ss, &len), 0);
	snprintf(conninfo, sizeof(conninfo),
	         "host=127.0.0.1 port=%d dbname=postgres connect_timeout=60",
	         ntohs(((struct sockaddr_in *)&ss)->sin_port));

	t_init(&c, &loop, "work");
	start = uv_now(&loop);
	t_connect_any(&c, conninfo, 300);
	took = uv_now(&loop) - start;
	assert_status("timeout", c.connect_status, PHG_ETIMEOUT, &c.connect_err);
	assert_int_equal(c.connect_err.code, PHG_ETIMEOUT);
	assert_non_null(strstr(c.connect_err.msg, "timeout expired after 300 ms"));
	if (took < 280 || took > 2000)
		fprintf(stderr, "timed out after %llu ms\n", (unsigned long long)took);
	assert_true(took >= 280);
	assert_true(took <= 2000);
	assert_int_equal(c.pg.state, PHG_PG_BROKEN);
	t_close(&c);

	/* closed while connecting: no connect callback, clean close */
	t_init(&c, &loop, "work");
	{
		phg_err_t err;

		phg_err_clear(&err);
		assert_int_equal(phg_pg_connect(&c.pg, conninfo, 0, on_connect, &err), 0);
	}
	t_close(&c);
	assert_int_equal(c.connects, 0);

	uv_close((uv_handle_t *)&server, NULL);
	t_loop_done(&loop);
}

typedef struct terminate {
	tconn_t *victim;
	tconn_t *ctl;
	char pid[32];
	const char *params[1];
} terminate_t;

static void on_terminate_timer(uv_timer_t *t)
{
	terminate_t *tt = t->data;

	snprintf(tt->pid, sizeof(tt->pid), "%d", tt->victim->pg.backend_pid);
	tt->params[0] = tt->pid;
	assert_int_equal(phg_pg_query(&tt->ctl->pg, "SELECT pg_terminate_backend($1)",
	                              1, tt->params, on_result, tt->ctl),
	                 0);
}

static void test_backend_terminated(void **state)
{
	uv_loop_t loop;
	uv_timer_t timer;
	tconn_t work, ctl;
	terminate_t tt;
	int rc;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	t_connect(&work, &loop, "work");
	t_connect(&ctl, &loop, "ctl");
	assert_true(work.pg.backend_pid != ctl.pg.backend_pid);

	memset(&tt, 0, sizeof(tt));
	tt.victim = &work;
	tt.ctl = &ctl;
	uv_timer_init(&loop, &timer);
	timer.data = &tt;
	uv_timer_start(&timer, on_terminate_timer, 300, 0);
	t_query(&work, "SELECT pg_sleep(30)", 0, NULL);
	assert_int_equal(run_until(&loop, &ctl.results, 1, 10000), 0);
	assert_status("terminate", ctl.status, 0, &ctl.err);
	assert_string_equal(ctl.val[0], "t");

	if (getenv("PHG_TEST_DEBUG") != NULL)
		print_err("terminated", work.status, &work.err);
	if (work.status == PHG_ECONNECT) {
		assert_false(work.had_res);
		assert_int_equal(work.pg.state, PHG_PG_BROKEN);
		assert_int_equal(work.err.code, PHG_ECONNECT);
		assert_non_null(strstr(work.err.msg, "lost connection to the database"));
		assert_int_equal(phg_pg_query(&work.pg, "SELECT 1", 0, NULL, on_result,
		                              &work),
		                 PHG_ECONNECT);
	} else {
		/* libpq may hand out the server's FATAL first */
		assert_status("terminated", work.status, PHG_EPG, &work.err);
		assert_string_equal(work.err.sqlstate, "57P01");
		rc = phg_pg_query(&work.pg, "SELECT 1", 0, NULL, on_result, &work);
		if (rc == 0) {
			assert_int_equal(run_until(&loop, &work.results, 2, 10000), 0);
			assert_status("after", work.status, PHG_ECONNECT, &work.err);
		} else {
			assert_int_equal(rc, PHG_ECONNECT);
		}
		assert_int_equal(work.pg.state, PHG_PG_BROKEN);
	}
	/* the other connection is unaffected */
	assert_string_equal(t_value(&ctl, "SELECT 'ctl ok'"), "ctl ok");
	t_close(&work);

	/* an idle connection whose backend goes away: noticed by itself
	 * (BROKEN), or by the next query at the latest */
	t_connect(&work, &loop, "work");
	snprintf(tt.pid, sizeof(tt.pid), "%d", work.pg.backend_pid);
	tt.params[0] = tt.pid;
	t_query(&ctl, "SELECT pg_terminate_backend($1)", 1, tt.params);
	assert_status("terminate idle", ctl.status, 0, &ctl.err);
	assert_string_equal(ctl.val[0], "t");
	uv_timer_start(&timer, on_guard, 300, 0); /* let the loop see it */
	g_guard_fired = 0;
	while (!g_guard_fired)
		uv_run(&loop, UV_RUN_ONCE);
	assert_int_equal(work.pg.state, PHG_PG_BROKEN);
	assert_int_equal(work.results, 0);
	assert_int_equal(phg_pg_query(&work.pg, "SELECT 1", 0, NULL, on_result, &work),
	                 PHG_ECONNECT);

	uv_close((uv_handle_t *)&timer, NULL);
	t_close(&work);
	t_close(&ctl);
	t_loop_done(&loop);
}

static void test_connect_next_host(void **state)
{
	const char *host = getenv("PGHOST"), *port = getenv("PGPORT");
	uv_loop_t loop;
	tconn_t c;
	char *conninfo;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	/* libpq fails on the first hosts and moves on, each time on a new
	 * socket: the adapter follows PQsocket() */
	conninfo = t_asprintf("host=/nonexistent/a,127.0.0.1,%s port=%s,1,%s "
	                      "dbname=" TEST_DB " user=postgres",
	                      host, port, port);
	t_init(&c, &loop, "work");
	t_connect_any(&c, conninfo, 10000);
	assert_status("next host", c.connect_status, 0, &c.connect_err);
	assert_string_equal(t_value(&c, "SELECT current_database()"), TEST_DB);
	t_close(&c);
	free(conninfo);
	t_loop_done(&loop);
}

static void on_connect_then_close(phg_pg_t *pg, int status, const phg_err_t *err)
{
	on_connect(pg, status, err);
	phg_pg_close(pg, on_closed);
	phg_pg_close(pg, on_closed); /* no-op */
}

static void test_close_from_callbacks(void **state)
{
	uv_loop_t loop;
	tconn_t c;
	phg_err_t err;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);

	/* from the result callback: the loop ends by itself, cleanly */
	t_connect(&c, &loop, "work");
	c.close_in_cb = 1;
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 'bye'", 0, NULL, on_result, &c),
	                 0);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(c.results, 1);
	assert_status("bye", c.status, 0, &c.err);
	assert_string_equal(c.val[0], "bye");
	assert_int_equal(c.pg.state, PHG_PG_CLOSED);

	/* the next query from the result callback, then close from the last */
	t_connect(&c, &loop, "work");
	c.next_sql = "SELECT 'second'";
	assert_int_equal(phg_pg_query(&c.pg, "SELECT 'first'", 0, NULL, on_result, &c),
	                 0);
	assert_int_equal(run_until(&loop, &c.results, 1, 10000), 0);
	/* the second answer may already be in: check the first by its index */
	assert_string_equal(c.first_col[0], "first");
	assert_int_equal(c.next_rc, 0);
	c.close_in_cb = 1;
	if (c.results >= 2)
		phg_pg_close(&c.pg, NULL);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(c.results, 2);
	assert_string_equal(c.val[0], "second");
	assert_int_equal(c.pg.state, PHG_PG_CLOSED);

	/* from the connect callback */
	t_init(&c, &loop, "work");
	phg_err_clear(&err);
	assert_int_equal(phg_pg_connect(&c.pg, g_url, 10000, on_connect_then_close,
	                                &err),
	                 0);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(c.connects, 1);
	assert_status("connect", c.connect_status, 0, &c.connect_err);
	assert_int_equal(c.closes, 1);

	/* while a query runs: its callback is not called */
	t_connect(&c, &loop, "work");
	assert_int_equal(phg_pg_query(&c.pg, "SELECT pg_sleep(0.2)", 0, NULL,
	                              on_result, &c),
	                 0);
	uv_run(&loop, UV_RUN_NOWAIT);
	t_close(&c);
	assert_int_equal(c.results, 0);

	/* right after init */
	t_init(&c, &loop, "work");
	t_close(&c);

	t_loop_done(&loop);
}

static int group_setup(void **state)
{
	(void)state;
	phg_log_set_level(getenv("PHG_TEST_DEBUG") != NULL ? PHG_LOG_DEBUG
	                                                   : PHG_LOG_ERROR);
	if (pgtest_env_load() != 0)
		return -1;
	g_url = pgtest_create_db(TEST_DB);
	return g_url != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	pgtest_drop_db(TEST_DB);
	free(g_url);
	g_url = NULL;
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_connect_select_one),
	    cmocka_unit_test(test_params_and_multi_statement),
	    cmocka_unit_test(test_large_query_is_flushed),
	    cmocka_unit_test(test_server_error),
	    cmocka_unit_test(test_copy_is_refused),
	    cmocka_unit_test(test_loop_not_blocked),
	    cmocka_unit_test(test_cancel),
	    cmocka_unit_test(test_connect_errors),
	    cmocka_unit_test(test_connect_timeout),
	    cmocka_unit_test(test_connect_next_host),
	    cmocka_unit_test(test_backend_terminated),
	    cmocka_unit_test(test_close_from_callbacks),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
