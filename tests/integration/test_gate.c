/*
 * test_gate.c - health-check gates (orchestrator/gate.h) probing the fake
 * HTTP service of tests/fakehttp ($FAKEHTTP) through the libcurl client on
 * the loop (orchestrator/http.h).
 *
 * Each case starts its own fakehttp (--port 0 --port-file F --mode M),
 * runs a gate on a fresh loop with a time limit the test controls, and ends
 * with every handle closed (uv_loop_close() == 0) and the server killed.
 * What a gate did is checked from both ends: the probes it reported and the
 * requests the server counted or recorded.  Timing assertions only bound
 * from below ("soak was respected") or say "did not hang".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "error.h"
#include "gate.h"
#include "http.h"
#include "log.h"
#include "plan.h"

extern char **environ;

#define TOKEN "tok-9f8e7d6c5b4a-secret"

/* ------------------------------------------------------------ fakehttp */

typedef struct fake_s {
	pid_t pid;
	int port;
	char dir[256];
	char port_file[300];
} fake_t;

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int read_port(const char *path)
{
	char buf[32];
	FILE *f = fopen(path, "r");
	size_t n;
	char *end;
	long v;

	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	v = strtol(buf, &end, 10);
	if (end == buf || v <= 0 || v > 65535)
		return 0;
	return (int)v;
}

static void fake_start(fake_t *f, const char *mode)
{
	const char *bin = getenv("FAKEHTTP");
	char *argv[8];
	posix_spawn_file_actions_t fa;
	int i;

	assert_non_null(bin);
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/phg_test_gate.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->port_file, sizeof(f->port_file), "%s/port", f->dir);
	argv[0] = (char *)bin;
	argv[1] = "--port";
	argv[2] = "0";
	argv[3] = "--port-file";
	argv[4] = f->port_file;
	argv[5] = "--mode";
	argv[6] = (char *)mode;
	argv[7] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	assert_int_equal(posix_spawn(&f->pid, bin, &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	for (i = 0; i < 1000 && f->port == 0; i++) {
		f->port = read_port(f->port_file);
		if (f->port == 0)
			sleep_ms(10);
	}
	assert_true(f->port > 0);
}

static void fake_stop(fake_t *f)
{
	int st = 0;

	if (f->pid > 0) {
		kill(f->pid, SIGTERM);
		waitpid(f->pid, &st, 0);
		f->pid = 0;
	}
	unlink(f->port_file);
	rmdir(f->dir);
}

/* ------------------------------------------------------------ one request */

typedef struct sync_req_s {
	int done;
	int closed;
	long status;
	char *body;
} sync_req_t;

static void sync_cb(phg_http_req_t *req, const phg_http_result_t *r, void *arg)
{
	sync_req_t *s = arg;

	(void)req;
	s->done = 1;
	s->status = r->status;
	s->body = strdup(r->body != NULL ? r->body : "");
}

static void sync_closed(void *arg)
{
	((sync_req_t *)arg)->closed = 1;
}

/* A control request to the fake server, on a loop of its own.  The body of
 * the answer, which the caller frees. */
static char *fake_call(const fake_t *f, const char *method, const char *path, const char *body)
{
	uv_loop_t loop;
	phg_http_t *h;
	phg_http_opts_t o;
	phg_err_t err;
	sync_req_t s;
	char url[128];

	memset(&s, 0, sizeof(s));
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->port, path);
	memset(&o, 0, sizeof(o));
	o.method = method;
	o.url = url;
	o.body = body;
	o.timeout_ms = 5000;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, sync_cb, &s, &err), 0);
	while (!s.done)
		uv_run(&loop, UV_RUN_ONCE);
	phg_http_close(h, sync_closed, &s);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(s.closed, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_int_equal(s.status, 200);
	return s.body;
}

static long fake_count(const fake_t *f)
{
	char *b = fake_call(f, "GET", "/_count", NULL);
	long n = strtol(b, NULL, 10);

	free(b);
	return n;
}

/* ------------------------------------------------------------ gate runs */

#define MAX_PROBES 256

typedef struct run_s {
	uv_loop_t loop;
	phg_http_t *http;
	phg_gate_t gate;
	uv_timer_t limit;
	phg_logctx_t logctx;
	int limit_hit;
	int done_calls;
	int status;
	phg_err_t err;
	uint64_t start_ns;
	uint64_t done_ns;
	int probes;
	int probes_at_done;
	int ok[MAX_PROBES];
	long pstatus[MAX_PROBES];
	char reasons[8192]; /* every failure reason, one a line */
	int gate_closed;
	int http_closed;
} run_t;

static void run_http_closed(void *arg)
{
	((run_t *)arg)->http_closed++;
}

static void run_gate_closed(phg_gate_t *g)
{
	run_t *r = g->data;

	r->gate_closed++;
	uv_close((uv_handle_t *)&r->limit, NULL);
	phg_http_close(r->http, run_http_closed, r);
}

static void run_done(phg_gate_t *g, int status, const phg_err_t *err)
{
	run_t *r = g->data;

	r->done_calls++;
	r->done_ns = uv_hrtime();
	r->status = status;
	r->probes_at_done = r->probes;
	if (err != NULL)
		r->err = *err;
	uv_timer_stop(&r->limit);
	phg_gate_stop(g, run_gate_closed);
}

static void run_probe(phg_gate_t *g, const phg_probe_t *p)
{
	run_t *r = g->data;
	size_t o = strlen(r->reasons);

	assert_string_equal(p->check, "api");
	if (r->probes < MAX_PROBES) {
		r->ok[r->probes] = p->ok;
		r->pstatus[r->probes] = p->status;
	}
	r->probes++;
	if (p->ok) {
		assert_string_equal(p->reason, "");
		assert_int_equal(p->failures, 0);
		assert_true(p->successes >= 1);
	} else {
		assert_true(p->reason[0] != '\0');
		assert_int_equal(p->successes, 0);
		assert_true(p->failures >= 1);
		snprintf(r->reasons + o, sizeof(r->reasons) - o, "%s\n", p->reason);
	}
}

static void run_limit(uv_timer_t *t)
{
	run_t *r = t->data;

	r->limit_hit = 1;
	phg_gate_stop(&r->gate, run_gate_closed);
}

/* Run a gate over @checks until it decides or @limit_ms pass; everything
 * is closed when this returns. */
static void run_gate(run_t *r, phg_gate_mode_t mode, const phg_check_t *const *checks, size_t n,
                     uint64_t limit_ms)
{
	phg_err_t err;

	memset(r, 0, sizeof(*r));
	assert_int_equal(uv_loop_init(&r->loop), 0);
	assert_int_equal(phg_http_init(&r->loop, &r->http), 0);
	uv_timer_init(&r->loop, &r->limit);
	r->limit.data = r;
	r->logctx.plan = "test-plan";
	r->logctx.phase = "gate";
	r->gate.data = r;
	r->gate.on_probe = run_probe;
	r->gate.logctx = &r->logctx;
	phg_err_clear(&err);
	r->start_ns = uv_hrtime();
	assert_int_equal(phg_gate_start(&r->gate, &r->loop, r->http, mode, checks, n, run_done, &err),
	                 0);
	/* nothing happens inside phg_gate_start */
	assert_int_equal(r->probes, 0);
	assert_int_equal(r->done_calls, 0);
	uv_timer_start(&r->limit, run_limit, limit_ms, 0);
	uv_run(&r->loop, UV_RUN_DEFAULT);
	assert_int_equal(r->gate_closed, 1);
	assert_int_equal(r->http_closed, 1);
	assert_null(r->gate.priv);
	assert_int_equal(uv_loop_close(&r->loop), 0);
	assert_true(r->done_calls <= 1);
}

static uint64_t run_elapsed_ms(const run_t *r)
{
	return (r->done_ns - r->start_ns) / 1000000u;
}

static void check_init(phg_check_t *c, char *url, size_t urllen, int port)
{
	snprintf(url, urllen, "http://127.0.0.1:%d/healthz", port);
	memset(c, 0, sizeof(*c));
	c->name = "api";
	c->url = url;
	c->method = "GET";
	c->timeout_ms = 2000;
	c->interval_ms = 100;
	c->successes = 3;
	c->failures = 2;
}

/* ------------------------------------------------------------ cases */

static void test_verify_passes_after_successes(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "healthy");
	check_init(&c, url, sizeof(url), f.port);
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->done_calls, 1);
	assert_int_equal(r->status, 0);
	/* exactly `successes` probes, all passing, and the server saw no more */
	assert_int_equal(r->probes, 3);
	assert_int_equal(r->probes_at_done, 3);
	assert_true(r->ok[0] && r->ok[1] && r->ok[2]);
	assert_int_equal(fake_count(&f), 3);
	/* spaced by the interval: about 2 x 100 ms from first to last start */
	assert_true(run_elapsed_ms(r) >= 150);
	fake_stop(&f);
	free(r);
}

static void test_verify_waits_for_soak(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "healthy");
	check_init(&c, url, sizeof(url), f.port);
	c.soak_ms = 1200;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->done_calls, 1);
	assert_int_equal(r->status, 0);
	/* three successes came long before; the gate still waited the soak */
	printf("soak 1200 ms: passed after %" PRIu64 " ms and %d probes\n", run_elapsed_ms(r),
	       r->probes);
	assert_true(run_elapsed_ms(r) >= 1200);
	assert_true(r->probes > 3);
	for (int i = 0; i < r->probes && i < MAX_PROBES; i++)
		assert_true(r->ok[i]);
	assert_true(fake_count(&f) >= r->probes);
	fake_stop(&f);
	free(r);
}

static void test_status_503_fails(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "status:503");
	check_init(&c, url, sizeof(url), f.port);
	c.failures = 3;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->done_calls, 1);
	assert_int_equal(r->status, PHG_EGATE);
	assert_int_equal(r->err.code, PHG_EGATE);
	assert_int_equal(r->probes, 3);
	assert_int_equal(r->pstatus[0], 503);
	assert_false(r->ok[0] || r->ok[1] || r->ok[2]);
	assert_non_null(strstr(r->err.msg, "\"api\""));
	assert_non_null(strstr(r->err.msg, "503"));
	assert_non_null(strstr(r->reasons, "HTTP 503, want 2xx"));
	assert_int_equal(fake_count(&f), 3);
	fake_stop(&f);
	free(r);
}

static void test_hang_times_out(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "hang");
	check_init(&c, url, sizeof(url), f.port);
	c.timeout_ms = 300;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit); /* did not hang */
	assert_int_equal(r->status, PHG_EGATE);
	assert_int_equal(r->probes, 2);
	assert_int_equal(r->pstatus[0], 0);
	assert_non_null(strstr(r->reasons, "timed out after 300 ms"));
	assert_non_null(strstr(r->err.msg, "timed out after 300 ms"));
	/* two timeouts back to back: the interval (100 ms) waited for each */
	assert_true(run_elapsed_ms(r) >= 550);
	assert_true(run_elapsed_ms(r) < 10000);
	assert_int_equal(fake_count(&f), 2);
	fake_stop(&f);
	free(r);
}

static void test_reset_fails(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "reset");
	check_init(&c, url, sizeof(url), f.port);
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->status, PHG_EGATE);
	assert_int_equal(r->probes, 2);
	printf("reset: %s", r->reasons);
	assert_non_null(strstr(r->reasons, "connection"));
	assert_non_null(strstr(r->err.msg, "connection"));
	fake_stop(&f);
	free(r);
}

static void test_connection_refused_fails(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	/* a port that was just served and is closed now */
	fake_start(&f, "healthy");
	fake_stop(&f);
	check_init(&c, url, sizeof(url), f.port);
	run_gate(r, PHG_GATE_WATCH, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->status, PHG_EGATE);
	assert_int_equal(r->probes, 2);
	assert_non_null(strstr(r->reasons, "connection refused"));
	assert_non_null(strstr(r->err.msg, "connection refused"));
	free(r);
}

static void test_slow_over_max_latency_fails(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "slow:400");
	check_init(&c, url, sizeof(url), f.port);
	c.max_latency_ms = 200;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->status, PHG_EGATE);
	assert_int_equal(r->probes, 2);
	assert_int_equal(r->pstatus[0], 200); /* an answer, but too late */
	assert_non_null(strstr(r->reasons, "too slow"));
	assert_non_null(strstr(r->err.msg, "max_latency 200 ms"));
	fake_stop(&f);
	free(r);
}

static void test_slow_probes_never_overlap(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	char *recs;
	json_t *a;
	json_error_t jerr;
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	/* each answer takes 300 ms, the interval is 50 ms */
	fake_start(&f, "slow:300");
	check_init(&c, url, sizeof(url), f.port);
	c.interval_ms = 50;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_int_equal(r->status, 0);
	assert_int_equal(r->probes, 3);
	recs = fake_call(&f, "GET", "/_requests", NULL);
	a = json_loads(recs, 0, &jerr);
	assert_non_null(a);
	assert_int_equal(json_array_size(a), 3);
	for (size_t i = 1; i < json_array_size(a); i++) {
		json_int_t t0 = json_integer_value(json_object_get(json_array_get(a, i - 1), "time_ms"));
		json_int_t t1 = json_integer_value(json_object_get(json_array_get(a, i), "time_ms"));

		/* the next probe waited for the previous answer */
		assert_true(t1 - t0 >= 280);
	}
	json_decref(a);
	free(recs);
	fake_stop(&f);
	free(r);
}

static void test_flap_neither_passes_nor_fails(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "flap");
	check_init(&c, url, sizeof(url), f.port);
	c.interval_ms = 50;
	c.successes = 3;
	c.failures = 2;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 1500);
	assert_true(r->limit_hit);     /* we stopped it */
	assert_int_equal(r->done_calls, 0); /* it neither passed nor failed */
	assert_true(r->probes >= 6);
	for (int i = 0; i < r->probes && i < MAX_PROBES; i++)
		assert_int_equal(r->ok[i], i % 2 == 0);
	fake_stop(&f);
	free(r);
}

static void test_watch_fail_after(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "fail-after:3");
	check_init(&c, url, sizeof(url), f.port);
	c.failures = 2;
	run_gate(r, PHG_GATE_WATCH, v, 1, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->done_calls, 1);
	assert_int_equal(r->status, PHG_EGATE);
	/* 3 passes (WATCH never passes), then 2 failures */
	assert_int_equal(r->probes, 5);
	assert_true(r->ok[0] && r->ok[1] && r->ok[2]);
	assert_false(r->ok[3] || r->ok[4]);
	assert_int_equal(fake_count(&f), 5);
	fake_stop(&f);
	free(r);
}

static void test_watch_healthy_runs_until_stopped(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	run_t *r = calloc(1, sizeof(*r));
	long seen;

	(void)state;
	fake_start(&f, "healthy");
	check_init(&c, url, sizeof(url), f.port);
	c.interval_ms = 50;
	run_gate(r, PHG_GATE_WATCH, v, 1, 800);
	assert_true(r->limit_hit);
	assert_int_equal(r->done_calls, 0);
	assert_true(r->probes >= 5);
	/* stopped means stopped: no probe after the gate closed */
	seen = fake_count(&f);
	sleep_ms(200);
	assert_int_equal(fake_count(&f), seen);
	fake_stop(&f);
	free(r);
}

/* Read what was written to @fd since it was created. */
static char *slurp(int fd)
{
	struct stat st;
	char *s;
	ssize_t n;

	assert_int_equal(fstat(fd, &st), 0);
	s = calloc(1, (size_t)st.st_size + 1);
	assert_non_null(s);
	n = pread(fd, s, (size_t)st.st_size, 0);
	assert_int_equal(n, st.st_size);
	return s;
}

static void test_header_expansion_keeps_secret(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	phg_kv_t hv[1] = {{"Authorization", "Bearer ${PHG_TEST_TOKEN}", {0, 0}}};
	char logpath[] = "/tmp/phg_test_gate_log.XXXXXX";
	int logfd, saved;
	char *recs, *log;
	json_t *a, *auth;
	json_error_t jerr;
	run_t *r = calloc(1, sizeof(*r));
	run_t *r2 = calloc(1, sizeof(*r2));
	phg_gate_t g;
	phg_http_t *h;
	uv_loop_t loop;
	phg_err_t err;

	(void)state;
	setenv("PHG_TEST_TOKEN", TOKEN, 1);
	fake_start(&f, "healthy");
	check_init(&c, url, sizeof(url), f.port);
	c.headers.v = hv;
	c.headers.n = 1;
	c.successes = 2;

	/* every log line of the gate, debug included, into a file */
	logfd = mkstemp(logpath);
	assert_true(logfd >= 0);
	unlink(logpath);
	fflush(stderr);
	saved = dup(2);
	dup2(logfd, 2);
	phg_log_set_level(PHG_LOG_DEBUG);

	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	/* the same check failing: reasons and errors carry no header value */
	free(fake_call(&f, "PUT", "/_mode", "status:401"));
	run_gate(r2, PHG_GATE_VERIFY, v, 1, 20000);

	phg_log_set_level(PHG_LOG_QUIET);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);

	assert_int_equal(r->status, 0);
	assert_int_equal(r2->status, PHG_EGATE);
	assert_non_null(strstr(r2->err.msg, "401"));

	/* the server got the value expanded */
	recs = fake_call(&f, "GET", "/_requests", NULL);
	a = json_loads(recs, 0, &jerr);
	assert_non_null(a);
	assert_int_equal(json_array_size(a), 4);
	auth = json_object_get(json_object_get(json_array_get(a, 0), "headers"), "Authorization");
	assert_non_null(auth);
	assert_string_equal(json_string_value(auth), "Bearer " TOKEN);
	json_decref(a);
	free(recs);

	/* ... and nothing else ever saw it */
	log = slurp(logfd);
	close(logfd);
	assert_non_null(strstr(log, "check \"api\" passed"));
	assert_non_null(strstr(log, "check \"api\" failed"));
	assert_non_null(strstr(log, "[test-plan/gate]"));
	assert_null(strstr(log, TOKEN));
	assert_null(strstr(r->reasons, TOKEN));
	assert_null(strstr(r2->reasons, TOKEN));
	assert_null(strstr(r2->err.msg, TOKEN));
	assert_null(strstr(r2->err.detail, TOKEN));
	free(log);

	/* an unset variable: the gate does not start, the variable is named */
	unsetenv("PHG_TEST_TOKEN");
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	memset(&g, 0, sizeof(g));
	phg_err_clear(&err);
	assert_int_equal(phg_gate_start(&g, &loop, h, PHG_GATE_VERIFY, v, 1, run_done, &err),
	                 PHG_EINVAL);
	assert_non_null(strstr(err.msg, "\"PHG_TEST_TOKEN\" is not set"));
	assert_non_null(strstr(err.detail, "check \"api\""));
	assert_null(g.priv);
	phg_http_close(h, NULL, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);

	fake_stop(&f);
	free(r);
	free(r2);
}

static void test_expect_json(void **state)
{
	fake_t f;
	phg_check_t c;
	const phg_check_t *v[1] = {&c};
	char url[128];
	phg_kv_t good[2] = {{"status", "ok", {0, 0}}, {"db.ok", "true", {0, 0}}};
	phg_kv_t bad[2] = {{"status", "ok", {0, 0}}, {"db.ok", "false", {0, 0}}};
	phg_kv_t missing[1] = {{"db.version", "15", {0, 0}}};
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&f, "body:{\"status\":\"ok\",\"db\":{\"ok\":true}}");
	check_init(&c, url, sizeof(url), f.port);
	c.successes = 2;
	c.expect_json.v = good;
	c.expect_json.n = 2;
	c.expect_body = "\"db\"";
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_int_equal(r->status, 0);
	assert_int_equal(r->probes, 2);

	c.expect_json.v = bad;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_int_equal(r->status, PHG_EGATE);
	assert_non_null(strstr(r->reasons, "expect_json \"db.ok\": got true, want \"false\""));

	c.expect_json.v = missing;
	c.expect_json.n = 1;
	run_gate(r, PHG_GATE_VERIFY, v, 1, 20000);
	assert_int_equal(r->status, PHG_EGATE);
	assert_non_null(strstr(r->reasons, "expect_json \"db.version\": missing, want \"15\""));
	fake_stop(&f);
	free(r);
}

static void test_two_checks_one_failing(void **state)
{
	fake_t ok, bad;
	phg_check_t c1, c2;
	const phg_check_t *v[2] = {&c1, &c2};
	char url1[128], url2[128];
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	fake_start(&ok, "healthy");
	fake_start(&bad, "status:500");
	check_init(&c1, url1, sizeof(url1), ok.port);
	check_init(&c2, url2, sizeof(url2), bad.port);
	c1.successes = 100; /* would take 10 s */
	c2.name = "api";
	run_gate(r, PHG_GATE_VERIFY, v, 2, 20000);
	assert_false(r->limit_hit);
	assert_int_equal(r->status, PHG_EGATE);
	assert_non_null(strstr(r->err.msg, "500"));
	/* both were probed, side by side */
	assert_true(fake_count(&ok) >= 1);
	assert_int_equal(fake_count(&bad), 2);
	fake_stop(&ok);
	fake_stop(&bad);
	free(r);
}

static void test_empty_verify_passes(void **state)
{
	run_t *r = calloc(1, sizeof(*r));

	(void)state;
	run_gate(r, PHG_GATE_VERIFY, NULL, 0, 5000);
	assert_false(r->limit_hit);
	assert_int_equal(r->done_calls, 1);
	assert_int_equal(r->status, 0);
	run_gate(r, PHG_GATE_WATCH, NULL, 0, 300);
	assert_true(r->limit_hit);
	assert_int_equal(r->done_calls, 0);
	free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_verify_passes_after_successes),
	    cmocka_unit_test(test_verify_waits_for_soak),
	    cmocka_unit_test(test_status_503_fails),
	    cmocka_unit_test(test_hang_times_out),
	    cmocka_unit_test(test_reset_fails),
	    cmocka_unit_test(test_connection_refused_fails),
	    cmocka_unit_test(test_slow_over_max_latency_fails),
	    cmocka_unit_test(test_slow_probes_never_overlap),
	    cmocka_unit_test(test_flap_neither_passes_nor_fails),
	    cmocka_unit_test(test_watch_fail_after),
	    cmocka_unit_test(test_watch_healthy_runs_until_stopped),
	    cmocka_unit_test(test_header_expansion_keeps_secret),
	    cmocka_unit_test(test_expect_json),
	    cmocka_unit_test(test_two_checks_one_failing),
	    cmocka_unit_test(test_empty_verify_passes),
	};

	if (getenv("FAKEHTTP") == NULL) {
		fprintf(stderr, "test_gate: FAKEHTTP is not set (run it through ctest)\n");
		return 77;
	}
	signal(SIGPIPE, SIG_IGN);
	phg_log_set_level(PHG_LOG_QUIET);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
