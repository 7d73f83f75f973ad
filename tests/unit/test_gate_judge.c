/*
 * test_gate_judge.c - the per-response rule of a gate (phg_gate_judge),
 * ${VAR} expansion (phg_expand_env), and the HTTP client on the loop
 * (http.h) against a tiny libuv server started inside the test: requests run
 * concurrently, nothing blocks the loop, cancel and close release
 * everything, bodies are capped.  Every loop test ends with
 * uv_loop_close() == 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <inttypes.h>
#include <uv.h>

#include "buf.h"
#include "error.h"
#include "gate.h"
#include "http.h"
#include "log.h"
#include "plan.h"

/* ------------------------------------------------------------ judge */

static void check_defaults(phg_check_t *c)
{
	memset(c, 0, sizeof(*c));
	c->name = "api";
	c->url = "http://127.0.0.1:1/healthz";
	c->method = "GET";
	c->timeout_ms = 2000;
	c->interval_ms = 1000;
	c->successes = 3;
	c->failures = 2;
}

static phg_http_result_t response(long status, const char *body, uint64_t latency_ms)
{
	phg_http_result_t r;

	memset(&r, 0, sizeof(r));
	r.transport_ok = 1;
	r.status = status;
	r.body = body;
	r.body_len = strlen(body);
	r.latency_ms = latency_ms;
	return r;
}

static void test_judge_default_is_any_2xx(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];

	(void)state;
	check_defaults(&c);
	r = response(200, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	assert_string_equal(reason, "");
	r = response(204, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(299, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(301, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "HTTP 301, want 2xx");
	r = response(503, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "HTTP 503, want 2xx");
	r = response(199, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
}

static void test_judge_status_list(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];
	long one[] = {200};
	long many[] = {200, 204, 418};

	(void)state;
	check_defaults(&c);
	c.expect_status.v = one;
	c.expect_status.n = 1;
	r = response(200, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(204, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "HTTP 204, want 200");

	c.expect_status.v = many;
	c.expect_status.n = 3;
	r = response(418, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(503, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "HTTP 503, want 200, 204 or 418");
}

static void test_judge_no_response(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];

	(void)state;
	check_defaults(&c);
	memset(&r, 0, sizeof(r));
	snprintf(r.reason, sizeof(r.reason), "connection refused");
	r.body = "";
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "connection refused");
	r.reason[0] = '\0';
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "no response");
}

static void test_judge_body_substring(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];

	(void)state;
	check_defaults(&c);
	c.expect_body = "\"status\":\"ok\"";
	r = response(200, "{\"status\":\"ok\",\"x\":1}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(200, "{\"status\":\"degraded\"}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "body does not contain \"\"status\":\"ok\"\"");
	/* the status is judged first */
	r = response(500, "{\"status\":\"ok\"}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "HTTP 500, want 2xx");
	/* bytes after a NUL in the body still count */
	r = response(200, "", 1);
	r.body = "abc\0{\"status\":\"ok\"}";
	r.body_len = 19;
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	/* the substring only partly at the end */
	r = response(200, "xx\"status\":\"o", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
}

static void test_judge_json(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];
	phg_kv_t kv[4] = {
	    {"status", "ok", {0, 0}},
	    {"db.ok", "true", {0, 0}},
	    {"db.conns", "3", {0, 0}},
	    {"nodes.1.name", "b", {0, 0}},
	};
	const char *good = "{\"status\":\"ok\",\"db\":{\"ok\":true,\"conns\":3},"
	                   "\"nodes\":[{\"name\":\"a\"},{\"name\":\"b\"}]}";

	(void)state;
	check_defaults(&c);
	c.expect_json.v = kv;
	c.expect_json.n = 4;
	r = response(200, good, 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	assert_string_equal(reason, "");

	r = response(200, "{\"status\":\"degraded\",\"db\":{\"ok\":true,\"conns\":3}}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"status\": got \"degraded\", want \"ok\"");

	r = response(200, "{\"status\":\"ok\",\"db\":{\"ok\":false,\"conns\":3}}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"db.ok\": got false, want \"true\"");

	/* numbers compare by their JSON text */
	r = response(200, "{\"status\":\"ok\",\"db\":{\"ok\":true,\"conns\":30}}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"db.conns\": got 30, want \"3\"");

	/* a string "true" is not the JSON value true... but it is the same text */
	r = response(200, "{\"status\":\"ok\",\"db\":{\"ok\":\"true\",\"conns\":3},"
	                  "\"nodes\":[{},{\"name\":\"b\"}]}",
	             1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);

	/* missing paths */
	r = response(200, "{\"status\":\"ok\"}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"db.ok\": missing, want \"true\"");
	r = response(200, "{\"status\":\"ok\",\"db\":true}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"db.ok\": missing, want \"true\"");
	r = response(200, "{\"status\":\"ok\",\"db\":{\"ok\":true,\"conns\":3},\"nodes\":[1]}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"nodes.1.name\": missing, want \"b\"");

	/* not a scalar */
	c.expect_json.n = 2;
	r = response(200, "{\"status\":\"ok\",\"db\":{\"ok\":{\"x\":1}}}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"db.ok\": got an object, want \"true\"");

	/* not JSON: the reason does not quote the body */
	c.expect_json.n = 1;
	r = response(200, "status=ok; token=hunter2", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_non_null(strstr(reason, "body is not JSON"));
	assert_null(strstr(reason, "hunter2"));
	r = response(200, "", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_non_null(strstr(reason, "body is not JSON"));

	/* control characters of a value never reach the reason */
	r = response(200, "{\"status\":\"bad\\nline\"}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"status\": got \"bad?line\", want \"ok\"");
}

static void test_judge_json_scalars(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];
	phg_kv_t kv[3] = {
	    {"n", "null", {0, 0}},
	    {"pi", "3.25", {0, 0}},
	    {"neg", "-7", {0, 0}},
	};

	(void)state;
	check_defaults(&c);
	c.expect_json.v = kv;
	c.expect_json.n = 3;
	r = response(200, "{\"n\":null,\"pi\":3.25,\"neg\":-7}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(200, "{\"n\":null,\"pi\":3.5,\"neg\":-7}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"pi\": got 3.5, want \"3.25\"");
	r = response(200, "{\"n\":0,\"pi\":3.25,\"neg\":-7}", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "expect_json \"n\": got 0, want \"null\"");
}

static void test_judge_max_latency(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[512];

	(void)state;
	check_defaults(&c);
	r = response(200, "", 100000);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1); /* 0 = none */
	c.max_latency_ms = 200;
	r = response(200, "", 200);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 1);
	r = response(200, "", 201);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_string_equal(reason, "too slow: 201 ms, max_latency 200 ms");
}

static void test_judge_small_reason_buffer(void **state)
{
	phg_check_t c;
	phg_http_result_t r;
	char reason[8];

	(void)state;
	check_defaults(&c);
	c.expect_body = "a long expected substring that does not fit";
	r = response(200, "nope", 1);
	assert_int_equal(phg_gate_judge(&c, &r, reason, sizeof(reason)), 0);
	assert_true(strlen(reason) < sizeof(reason));
	assert_int_equal(phg_gate_judge(&c, &r, NULL, 0), 0);
}

/* ------------------------------------------------------------ expand */

static int expand(const char *in, char *out, size_t outlen, phg_err_t *err)
{
	phg_buf_t b;
	int rc;

	phg_buf_init(&b, 64);
	phg_err_clear(err);
	rc = phg_expand_env(in, &b, err);
	snprintf(out, outlen, "%s", b.data != NULL ? b.data : "");
	phg_buf_free(&b);
	return rc;
}

static void test_expand_set(void **state)
{
	phg_err_t err;
	char out[128];

	(void)state;
	setenv("PHG_UT_A", "hello", 1);
	setenv("PHG_UT_EMPTY", "", 1);
	assert_int_equal(expand("Bearer ${PHG_UT_A}", out, sizeof(out), &err), 0);
	assert_string_equal(out, "Bearer hello");
	assert_int_equal(expand("${PHG_UT_A}${PHG_UT_A}-x", out, sizeof(out), &err), 0);
	assert_string_equal(out, "hellohello-x");
	assert_int_equal(expand("[${PHG_UT_EMPTY}]", out, sizeof(out), &err), 0);
	assert_string_equal(out, "[]");
	assert_int_equal(expand("no variables", out, sizeof(out), &err), 0);
	assert_string_equal(out, "no variables");
	assert_int_equal(expand("", out, sizeof(out), &err), 0);
	assert_string_equal(out, "");
	assert_int_equal(err.code, 0);
}

static void test_expand_dollar_dollar(void **state)
{
	phg_err_t err;
	char out[128];

	(void)state;
	setenv("PHG_UT_A", "hello", 1);
	assert_int_equal(expand("a$$b", out, sizeof(out), &err), 0);
	assert_string_equal(out, "a$b");
	assert_int_equal(expand("$$${PHG_UT_A}", out, sizeof(out), &err), 0);
	assert_string_equal(out, "$hello");
	assert_int_equal(expand("$${PHG_UT_A}", out, sizeof(out), &err), 0);
	assert_string_equal(out, "${PHG_UT_A}");
	assert_int_equal(expand("$$$$", out, sizeof(out), &err), 0);
	assert_string_equal(out, "$$");
}

static void test_expand_unset(void **state)
{
	phg_buf_t b;
	phg_err_t err;

	(void)state;
	setenv("PHG_UT_A", "visible-value", 1);
	unsetenv("PHG_UT_NOPE");
	phg_buf_init(&b, 256);
	phg_buf_adds(&b, "kept:");
	phg_err_clear(&err);
	assert_int_equal(
	    phg_expand_env("Bearer literal-s3cret ${PHG_UT_A} ${PHG_UT_NOPE}", &b, &err),
	    PHG_EINVAL);
	assert_int_equal(err.code, PHG_EINVAL);
	assert_string_equal(err.msg, "environment variable \"PHG_UT_NOPE\" is not set");
	/* nothing else of the input, nor any value, leaks into the error */
	assert_null(strstr(err.msg, "literal-s3cret"));
	assert_null(strstr(err.detail, "literal-s3cret"));
	assert_null(strstr(err.msg, "visible-value"));
	assert_null(strstr(err.detail, "visible-value"));
	/* the buffer is as it was */
	assert_string_equal(b.data, "kept:");
	assert_int_equal(b.len, 5);
	phg_buf_free(&b);
}

static void test_expand_bad_syntax(void **state)
{
	static const char *const bad[] = {
	    "${",           "x ${A",        "${}",      "${1A}", "${A-B}",
	    "$A",           "trailing $",   "$ {A}",    "${A B}",
	};
	phg_err_t err;
	char out[128];
	size_t i;

	(void)state;
	setenv("A", "value-of-a", 1);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(expand(bad[i], out, sizeof(out), &err), PHG_EINVAL);
		assert_int_equal(err.code, PHG_EINVAL);
		assert_non_null(strstr(err.msg, "bad variable syntax"));
		assert_null(strstr(err.msg, "value-of-a"));
		assert_string_equal(out, "");
	}
	unsetenv("A");
}

static void test_expand_too_big(void **state)
{
	phg_buf_t b;
	phg_err_t err;

	(void)state;
	setenv("PHG_UT_LONG", "0123456789abcdef", 1);
	phg_buf_init(&b, 10);
	phg_err_clear(&err);
	assert_int_equal(phg_expand_env("${PHG_UT_LONG}", &b, &err), PHG_ETOOBIG);
	assert_int_equal(err.code, PHG_ETOOBIG);
	assert_null(strstr(err.msg, "0123456789"));
	assert_int_equal(b.len, 0);
	phg_buf_free(&b);
}

/* ------------------------------------------------------------ tiny server */

typedef struct tsrv_s tsrv_t;

typedef struct tconn_s {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t wr;
	tsrv_t *s;
	char head[8192];
	size_t len;
	int got_request;
	int answered;
	int closing;
	int open; /* handles still open */
	char *resp;
	struct tconn_s *next;
} tconn_t;

struct tsrv_s {
	uv_tcp_t tcp;
	int port;
	uint64_t delay_ms;
	size_t body_size;     /* 0: "ok" */
	int eager;            /* answer the first bytes, request or not */
	int active;           /* requests received, not answered */
	int max_active;
	int requests;
	int conns;            /* open connections */
	char last_head[8192]; /* request line + headers of the last request */
	tconn_t *list;
};

static void tconn_closed(uv_handle_t *h)
{
	tconn_t *c = h->data;
	tconn_t **pp;

	if (--c->open > 0)
		return;
	for (pp = &c->s->list; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->s->conns--;
	free(c->resp);
	free(c);
}

static void tconn_close(tconn_t *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	if (c->got_request && !c->answered)
		c->s->active--;
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, tconn_closed);
	uv_close((uv_handle_t *)&c->tcp, tconn_closed);
}

static void on_written(uv_write_t *w, int status)
{
	tconn_t *c = w->data;

	(void)status;
	tconn_close(c);
}

static void answer(uv_timer_t *t)
{
	tconn_t *c = t->data;
	tsrv_t *s = c->s;
	size_t blen = s->body_size > 0 ? s->body_size : 2;
	char head[256];
	int hl;
	uv_buf_t b;

	if (c->closing)
		return;
	hl = snprintf(head, sizeof(head),
	              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
	              "Connection: close\r\n\r\n",
	              blen);
	c->resp = malloc((size_t)hl + blen);
	assert_non_null(c->resp);
	memcpy(c->resp, head, (size_t)hl);
	if (s->body_size > 0)
		memset(c->resp + hl, 'x', blen);
	else
		memcpy(c->resp + hl, "ok", 2);
	c->answered = 1;
	s->active--;
	b = uv_buf_init(c->resp, (unsigned int)((size_t)hl + blen));
	c->wr.data = c;
	if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
		tconn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	(void)h;
	(void)suggested;
	*buf = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	tconn_t *c = st->data;
	tsrv_t *s = c->s;

	if (n < 0) {
		tconn_close(c);
		return;
	}
	if (c->got_request || n == 0)
		return;
	if ((size_t)n > sizeof(c->head) - 1 - c->len)
		n = (ssize_t)(sizeof(c->head) - 1 - c->len);
	memcpy(c->head + c->len, buf->base, (size_t)n);
	c->len += (size_t)n;
	c->head[c->len] = '\0';
	if (!s->eager && strstr(c->head, "\r\n\r\n") == NULL)
		return;
	c->got_request = 1;
	s->requests++;
	s->active++;
	if (s->active > s->max_active)
		s->max_active = s->active;
	snprintf(s->last_head, sizeof(s->last_head), "%s", c->head);
	uv_timer_start(&c->timer, answer, s->delay_ms, 0);
}

static void on_conn(uv_stream_t *server, int status)
{
	tsrv_t *s = server->data;
	tconn_t *c;

	if (status < 0)
		return;
	c = calloc(1, sizeof(*c));
	assert_non_null(c);
	c->s = s;
	uv_tcp_init(server->loop, &c->tcp);
	uv_timer_init(server->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->open = 2;
	c->next = s->list;
	s->list = c;
	s->conns++;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
	    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
		tconn_close(c);
}

static void tsrv_start(uv_loop_t *loop, tsrv_t *s, uint64_t delay_ms, size_t body_size)
{
	struct sockaddr_in addr;
	struct sockaddr_storage name;
	int namelen = sizeof(name);

	memset(s, 0, sizeof(*s));
	s->delay_ms = delay_ms;
	s->body_size = body_size;
	assert_int_equal(uv_tcp_init(loop, &s->tcp), 0);
	s->tcp.data = s;
	assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
	assert_int_equal(uv_tcp_bind(&s->tcp, (const struct sockaddr *)&addr, 0), 0);
	assert_int_equal(uv_listen((uv_stream_t *)&s->tcp, 64, on_conn), 0);
	assert_int_equal(uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&name, &namelen), 0);
	s->port = ntohs(((struct sockaddr_in *)&name)->sin_port);
}

static void tsrv_stop(tsrv_t *s)
{
	while (s->list != NULL && !s->list->closing)
		tconn_close(s->list);
	for (tconn_t *c = s->list; c != NULL; c = c->next)
		tconn_close(c);
	uv_close((uv_handle_t *)&s->tcp, NULL);
}

/* ------------------------------------------------------------ loop helpers */

typedef struct reqctx_s {
	int calls;
	uint64_t done_ns;
	phg_http_result_t res;
	char body[64];
	size_t body_len;
	/* what the callback does */
	phg_http_t *close_client;
	int *close_flag;
} reqctx_t;

static void on_close_flag(void *arg)
{
	int *flag = arg;

	(*flag)++;
}

static void req_cb(phg_http_req_t *req, const phg_http_result_t *res, void *arg)
{
	reqctx_t *rc = arg;

	(void)req;
	rc->calls++;
	rc->done_ns = uv_hrtime();
	rc->res = *res;
	rc->body_len = res->body_len;
	snprintf(rc->body, sizeof(rc->body), "%s", res->body != NULL ? res->body : "(null)");
	rc->res.body = NULL;
	if (rc->close_client != NULL)
		phg_http_close(rc->close_client, on_close_flag, rc->close_flag);
}

static void wake(uv_timer_t *t)
{
	(void)t;
}

static void on_wake_closed(uv_handle_t *h)
{
	h->data = h;
}

/* Run the loop until @pred(@arg) or @limit_ms passed.  1 if pred held. */
static int run_until(uv_loop_t *loop, int (*pred)(void *), void *arg, uint64_t limit_ms)
{
	uv_timer_t w;
	uint64_t end = uv_hrtime() + limit_ms * 1000000u;
	int ok;

	uv_timer_init(loop, &w);
	uv_timer_start(&w, wake, 10, 10);
	while (!(ok = pred(arg)) && uv_hrtime() < end)
		uv_run(loop, UV_RUN_ONCE);
	w.data = NULL;
	uv_close((uv_handle_t *)&w, on_wake_closed);
	while (w.data == NULL) /* @w lives on this stack */
		uv_run(loop, UV_RUN_NOWAIT);
	return ok;
}

static int never(void *arg)
{
	(void)arg;
	return 0;
}

static int flag_set(void *arg)
{
	return *(int *)arg != 0;
}

typedef struct all_s {
	reqctx_t *r;
	size_t n;
} all_t;

static int all_done(void *arg)
{
	all_t *a = arg;

	for (size_t i = 0; i < a->n; i++)
		if (a->r[i].calls == 0)
			return 0;
	return 1;
}

static void finish_loop(uv_loop_t *loop)
{
	uv_run(loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(loop), 0);
}

static phg_http_opts_t get_opts(char *url, size_t urllen, int port, const char *path)
{
	phg_http_opts_t o;

	snprintf(url, urllen, "http://127.0.0.1:%d%s", port, path);
	memset(&o, 0, sizeof(o));
	o.method = "GET";
	o.url = url;
	o.timeout_ms = 5000;
	return o;
}

/* ------------------------------------------------------------ loop tests */

typedef struct ticker_s {
	uv_timer_t t;
	int ticks;
	uint64_t last_ns;
	uint64_t max_gap_ns;
} ticker_t;

static void on_tick(uv_timer_t *t)
{
	ticker_t *k = t->data;
	uint64_t now = uv_hrtime();

	if (k->last_ns != 0 && now - k->last_ns > k->max_gap_ns)
		k->max_gap_ns = now - k->last_ns;
	k->last_ns = now;
	k->ticks++;
}

static void test_http_concurrent_nonblocking(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	reqctx_t r[5];
	all_t all = {r, 5};
	ticker_t k;
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	uint64_t t0, total_ms;
	int closed = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	memset(&k, 0, sizeof(k));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 300, 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	uv_timer_init(&loop, &k.t);
	k.t.data = &k;
	o = get_opts(url, sizeof(url), srv.port, "/slow");

	t0 = uv_hrtime();
	uv_timer_start(&k.t, on_tick, 20, 20);
	for (int i = 0; i < 5; i++) {
		phg_http_req_t *req = NULL;

		phg_err_clear(&err);
		assert_int_equal(phg_http_request(h, &req, &o, req_cb, &r[i], &err), 0);
		assert_non_null(req);
		/* never called from inside phg_http_request */
		assert_int_equal(r[i].calls, 0);
	}
	assert_int_equal(phg_http_pending(h), 5);
	assert_true(run_until(&loop, all_done, &all, 5000));
	total_ms = 0;
	for (int i = 0; i < 5; i++) {
		uint64_t ms = (r[i].done_ns - t0) / 1000000u;

		if (ms > total_ms)
			total_ms = ms;
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].res.transport_ok, 1);
		assert_int_equal(r[i].res.status, 200);
		assert_string_equal(r[i].body, "ok");
		assert_int_equal(r[i].body_len, 2);
		assert_string_equal(r[i].res.reason, "");
		assert_true(r[i].res.latency_ms >= 250);
	}
	uv_timer_stop(&k.t);
	/* five 300 ms answers in well under 5 x 300 ms: they overlapped */
	printf("5 requests in %" PRIu64 " ms; %d ticks, max gap %" PRIu64 " ms\n", total_ms,
	       k.ticks, k.max_gap_ns / 1000000u);
	assert_true(total_ms < 1000);
	/* the server had all five requests at once */
	assert_int_equal(srv.requests, 5);
	assert_int_equal(srv.max_active, 5);
	/* the 20 ms timer kept ticking while they ran */
	assert_true(k.ticks >= 5);
	assert_int_equal(phg_http_pending(h), 0);

	phg_http_close(h, on_close_flag, &closed);
	uv_close((uv_handle_t *)&k.t, NULL);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static void test_http_cancel_no_callback(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	phg_http_req_t *req;
	reqctx_t r1, r2;
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	int closed = 0;

	(void)state;
	memset(&r1, 0, sizeof(r1));
	memset(&r2, 0, sizeof(r2));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 200, 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), srv.port, "/");
	phg_err_clear(&err);
	/* cancelled before it started */
	assert_int_equal(phg_http_request(h, &req, &o, req_cb, &r1, &err), 0);
	phg_http_cancel(h, req);
	assert_int_equal(phg_http_pending(h), 0);
	/* cancelled while the server holds it */
	assert_int_equal(phg_http_request(h, &req, &o, req_cb, &r2, &err), 0);
	run_until(&loop, flag_set, &srv.requests, 2000);
	assert_int_equal(srv.requests, 1);
	phg_http_cancel(h, req);
	assert_int_equal(phg_http_pending(h), 0);
	/* the server sees the connection go; no callback comes */
	run_until(&loop, never, NULL, 400);
	assert_int_equal(r1.calls, 0);
	assert_int_equal(r2.calls, 0);
	assert_int_equal(srv.conns, 0);

	phg_http_close(h, on_close_flag, &closed);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static int three_active(void *arg)
{
	return ((tsrv_t *)arg)->active >= 3;
}

static void test_http_close_in_flight(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	reqctx_t r[3];
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	int closed = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 5000, 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), srv.port, "/");
	phg_err_clear(&err);
	for (int i = 0; i < 3; i++)
		assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r[i], &err), 0);
	/* wait until the server holds all three: sockets are being polled */
	assert_true(run_until(&loop, three_active, &srv, 3000));
	phg_http_close(h, on_close_flag, &closed);
	/* a second close does nothing */
	phg_http_close(h, on_close_flag, &closed);
	assert_int_equal(closed, 0); /* only from the loop */
	assert_true(run_until(&loop, flag_set, &closed, 2000));
	for (int i = 0; i < 3; i++)
		assert_int_equal(r[i].calls, 0);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static void test_http_close_from_callback(void **state)
{
	uv_loop_t loop;
	tsrv_t fast, slow;
	phg_http_t *h;
	reqctx_t r1, r2;
	char url1[128], url2[128];
	phg_http_opts_t o1, o2;
	phg_err_t err;
	int closed = 0;

	(void)state;
	memset(&r1, 0, sizeof(r1));
	memset(&r2, 0, sizeof(r2));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &fast, 10, 0);
	tsrv_start(&loop, &slow, 5000, 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o1 = get_opts(url1, sizeof(url1), fast.port, "/");
	o2 = get_opts(url2, sizeof(url2), slow.port, "/");
	r1.close_client = h;
	r1.close_flag = &closed;
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o2, req_cb, &r2, &err), 0);
	assert_int_equal(phg_http_request(h, NULL, &o1, req_cb, &r1, &err), 0);
	assert_true(run_until(&loop, flag_set, &closed, 3000));
	assert_int_equal(r1.calls, 1);
	assert_int_equal(r1.res.status, 200);
	assert_int_equal(r2.calls, 0);
	tsrv_stop(&fast);
	tsrv_stop(&slow);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static void test_http_body_capped(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	reqctx_t r;
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	int closed = 0;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 0, PHG_HTTP_BODY_MAX + 100000);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), srv.port, "/big");
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r, &err), 0);
	assert_true(run_until(&loop, flag_set, &r.calls, 5000));
	assert_int_equal(r.res.transport_ok, 1);
	assert_int_equal(r.res.status, 200);
	assert_int_equal(r.body_len, PHG_HTTP_BODY_MAX);
	assert_int_equal(r.res.body_truncated, 1);
	phg_http_close(h, on_close_flag, &closed);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static void test_http_headers_and_method(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	reqctx_t r;
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	phg_kv_t hv[2] = {{"Authorization", "Bearer ${PHG_UT_TOKEN}", {0, 0}},
	                  {"X-Empty", "", {0, 0}}};
	phg_kvv_t headers = {hv, 2};
	int closed = 0;

	(void)state;
	memset(&r, 0, sizeof(r));
	setenv("PHG_UT_TOKEN", "tok-123456", 1);
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 0, 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), srv.port, "/flags/x");
	o.method = "PUT";
	o.body = "{\"enabled\": true}";
	o.headers = &headers;
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r, &err), 0);
	assert_true(run_until(&loop, flag_set, &r.calls, 5000));
	assert_int_equal(r.res.status, 200);
	assert_non_null(strstr(srv.last_head, "PUT /flags/x HTTP/1.1\r\n"));
	assert_non_null(strstr(srv.last_head, "\r\nAuthorization: Bearer tok-123456\r\n"));
	assert_non_null(strstr(srv.last_head, "\r\nX-Empty:"));
	assert_non_null(strstr(srv.last_head, "\r\nContent-Length: 17\r\n"));
	assert_non_null(strstr(srv.last_head, "\r\nContent-Type: application/json\r\n"));

	/* an unset variable: refused, named, nothing started, no callback */
	unsetenv("PHG_UT_TOKEN");
	memset(&r, 0, sizeof(r));
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r, &err), PHG_EINVAL);
	assert_string_equal(err.msg, "environment variable \"PHG_UT_TOKEN\" is not set");
	assert_non_null(strstr(err.detail, "Authorization"));
	assert_null(strstr(err.msg, "Bearer"));
	assert_int_equal(phg_http_pending(h), 0);

	/* a value that would split the header */
	setenv("PHG_UT_TOKEN", "a\r\nX-Injected: 1", 1);
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r, &err), PHG_EINVAL);
	assert_null(strstr(err.msg, "Injected"));
	unsetenv("PHG_UT_TOKEN");
	run_until(&loop, never, NULL, 50);
	assert_int_equal(r.calls, 0);

	phg_http_close(h, on_close_flag, &closed);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

static void test_http_refused_and_bad_url(void **state)
{
	uv_loop_t loop;
	uv_tcp_t probe;
	struct sockaddr_in addr;
	struct sockaddr_storage name;
	int namelen = sizeof(name);
	phg_http_t *h;
	all_t all;
	reqctx_t both[2];
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	int port;
	int closed = 0;

	(void)state;
	memset(both, 0, sizeof(both));
	assert_int_equal(uv_loop_init(&loop), 0);
	/* a port that was free a moment ago */
	uv_tcp_init(&loop, &probe);
	uv_ip4_addr("127.0.0.1", 0, &addr);
	assert_int_equal(uv_tcp_bind(&probe, (const struct sockaddr *)&addr, 0), 0);
	uv_tcp_getsockname(&probe, (struct sockaddr *)&name, &namelen);
	port = ntohs(((struct sockaddr_in *)&name)->sin_port);
	uv_close((uv_handle_t *)&probe, NULL);
	uv_run(&loop, UV_RUN_NOWAIT);

	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), port, "/");
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &both[0], &err), 0);
	o.url = "ftp://127.0.0.1/x";
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &both[1], &err), 0);
	all.r = both;
	all.n = 2;
	assert_true(run_until(&loop, all_done, &all, 5000));
	assert_int_equal(both[0].res.transport_ok, 0);
	assert_int_equal(both[0].res.status, 0);
	assert_string_equal(both[0].res.reason, "connection refused");
	assert_int_equal(both[1].res.transport_ok, 0);
	assert_non_null(strstr(both[1].res.reason, "unsupported protocol"));
	phg_http_close(h, on_close_flag, &closed);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

/* curl's error text goes into the reason, unless it holds a value that was
 * substituted into a header: here the host name is also the "secret". */
static void test_http_reason_never_holds_header_value(void **state)
{
	uv_loop_t loop;
	phg_http_t *h;
	reqctx_t r[2];
	all_t all = {r, 2};
	phg_http_opts_t o;
	phg_err_t err;
	phg_kv_t hv[1] = {{"X-Token", "${PHG_UT_HOSTSECRET}", {0, 0}}};
	phg_kvv_t headers = {hv, 1};
	const char *host = "phg-no-such-host.invalid";
	int closed = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	setenv("PHG_UT_HOSTSECRET", host, 1);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(phg_http_init(&loop, &h), 0);
	memset(&o, 0, sizeof(o));
	o.url = "http://phg-no-such-host.invalid/";
	o.timeout_ms = 10000;
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r[0], &err), 0);
	o.headers = &headers;
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r[1], &err), 0);
	assert_true(run_until(&loop, all_done, &all, 15000));
	printf("without the header: %s\nwith it: %s\n", r[0].res.reason, r[1].res.reason);
	assert_int_equal(r[0].res.transport_ok, 0);
	assert_int_equal(r[1].res.transport_ok, 0);
	assert_null(strstr(r[1].res.reason, host));
	if (strstr(r[0].res.reason, host) != NULL) /* curl named the host */
		assert_non_null(strstr(r[1].res.reason, "could not resolve host"));
	unsetenv("PHG_UT_HOSTSECRET");
	phg_http_close(h, on_close_flag, &closed);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

/* https:// to a server that speaks plain HTTP: a TLS failure, in words. */
static void test_http_tls_failure(void **state)
{
	uv_loop_t loop;
	tsrv_t srv;
	phg_http_t *h;
	reqctx_t r[2];
	all_t all = {r, 2};
	char url[128];
	phg_http_opts_t o;
	phg_err_t err;
	int closed = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	assert_int_equal(uv_loop_init(&loop), 0);
	tsrv_start(&loop, &srv, 0, 0);
	srv.eager = 1;
	assert_int_equal(phg_http_init(&loop, &h), 0);
	o = get_opts(url, sizeof(url), srv.port, "/");
	snprintf(url, sizeof(url), "https://127.0.0.1:%d/", srv.port);
	phg_err_clear(&err);
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r[0], &err), 0);
	o.insecure = 1; /* not about the certificate: fails the same way */
	assert_int_equal(phg_http_request(h, NULL, &o, req_cb, &r[1], &err), 0);
	assert_true(run_until(&loop, all_done, &all, 10000));
	printf("https to plain http: %s\n", r[0].res.reason);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(r[i].res.transport_ok, 0);
		assert_int_equal(r[i].res.status, 0);
		assert_true(strncmp(r[i].res.reason, "TLS: ", 5) == 0);
	}
	phg_http_close(h, on_close_flag, &closed);
	tsrv_stop(&srv);
	finish_loop(&loop);
	assert_int_equal(closed, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_judge_default_is_any_2xx),
	    cmocka_unit_test(test_judge_status_list),
	    cmocka_unit_test(test_judge_no_response),
	    cmocka_unit_test(test_judge_body_substring),
	    cmocka_unit_test(test_judge_json),
	    cmocka_unit_test(test_judge_json_scalars),
	    cmocka_unit_test(test_judge_max_latency),
	    cmocka_unit_test(test_judge_small_reason_buffer),
	    cmocka_unit_test(test_expand_set),
	    cmocka_unit_test(test_expand_dollar_dollar),
	    cmocka_unit_test(test_expand_unset),
	    cmocka_unit_test(test_expand_bad_syntax),
	    cmocka_unit_test(test_expand_too_big),
	    cmocka_unit_test(test_http_concurrent_nonblocking),
	    cmocka_unit_test(test_http_cancel_no_callback),
	    cmocka_unit_test(test_http_close_in_flight),
	    cmocka_unit_test(test_http_close_from_callback),
	    cmocka_unit_test(test_http_body_capped),
	    cmocka_unit_test(test_http_headers_and_method),
	    cmocka_unit_test(test_http_refused_and_bad_url),
	    cmocka_unit_test(test_http_reason_never_holds_header_value),
	    cmocka_unit_test(test_http_tls_failure),
	};

	phg_log_set_level(PHG_LOG_QUIET);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
