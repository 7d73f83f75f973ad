/*
 * gate.c - health-check gates (see gate.h).
 *
 * Each check has its own one-shot uv_timer_t, restarted for interval_ms
 * whenever a probe starts, so probes are spaced from start to start.  When
 * the timer fires while the previous probe is still in flight, the check is
 * marked "due" and the next probe starts as soon as the answer arrives:
 * one check never has two requests in flight.  A gate-level timer handles
 * what is not tied to a probe: the asynchronous pass of an empty VERIFY
 * gate, and the end of the soak period (a VERIFY gate whose checks already
 * hold enough successes passes when the soak ends, not at the next probe).
 *
 * Once the gate has decided (the done callback) or is stopped, every timer
 * is stopped and every in-flight request cancelled, so no probe starts and
 * no callback runs after that.  phg_gate_stop closes the timers; the private
 * state is freed in the last close callback, then `closed` runs.
 */
#include "gate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "buf.h"
#include "error.h"
#include "log.h"

struct gate_priv_s;

typedef struct gate_check_s {
	struct gate_priv_s *gp;
	const phg_check_t *c;
	uv_timer_t timer;
	phg_http_req_t *req; /* in flight, or NULL */
	int due;             /* the interval elapsed while req was in flight */
	uint64_t successes;  /* consecutive */
	uint64_t failures;   /* consecutive */
} gate_check_t;

typedef struct gate_priv_s {
	phg_gate_t *g;
	uv_loop_t *loop;
	phg_http_t *http;
	phg_gate_mode_t mode;
	phg_gate_done_cb cb;
	gate_check_t *checks;
	size_t n;
	uv_timer_t tick;     /* empty-gate pass, end of soak */
	uint64_t start_ns;
	uint64_t soak_ms;    /* the longest soak of the checks */
	int decided;         /* the done callback was called */
	int stopping;
	size_t open;         /* timers not yet closed */
	void (*closed)(phg_gate_t *g);
} gate_priv_t;

static const char *mode_name(const gate_priv_t *gp)
{
	return gp->mode == PHG_GATE_VERIFY ? "verify" : "watch";
}

static uint64_t at_least_one(uint64_t v)
{
	return v > 0 ? v : 1;
}

static uint64_t elapsed_ms(const gate_priv_t *gp)
{
	return (uv_hrtime() - gp->start_ns) / 1000000u;
}

/* ---- judging one response ---- */

/* Append @s (at most @max bytes) to @out as quoted text, control bytes as '?'. */
static void quote(char *out, size_t len, const char *s, size_t n, size_t max)
{
	size_t o = strlen(out);
	size_t i;

	if (o + 1 >= len)
		return;
	out[o++] = '"';
	for (i = 0; i < n && i < max && o + 1 < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		out[o++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	if (i < n && o + 4 < len) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	if (o + 1 < len)
		out[o++] = '"';
	out[o] = '\0';
}

static void appendf(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void appendf(char *out, size_t len, const char *fmt, ...)
{
	size_t o = strlen(out);
	va_list ap;

	if (o + 1 >= len)
		return;
	va_start(ap, fmt);
	vsnprintf(out + o, len - o, fmt, ap);
	va_end(ap);
}

/* 1 if the @hl bytes at @hay contain the @nl bytes at @needle. */
static int contains(const char *hay, size_t hl, const char *needle, size_t nl)
{
	const char *p = hay;
	const char *end = hay + hl;

	if (nl == 0)
		return 1;
	while ((size_t)(end - p) >= nl) {
		const char *q = memchr(p, needle[0], (size_t)(end - p) - nl + 1);

		if (q == NULL)
			return 0;
		if (memcmp(q, needle, nl) == 0)
			return 1;
		p = q + 1;
	}
	return 0;
}

/* Walk a dotted path: object keys, or array indexes written as digits. */
static json_t *json_path(json_t *root, const char *path)
{
	json_t *cur = root;
	const char *p = path;

	for (;;) {
		const char *dot = strchr(p, '.');
		size_t n = dot != NULL ? (size_t)(dot - p) : strlen(p);
		char seg[256];

		if (n >= sizeof(seg))
			return NULL;
		memcpy(seg, p, n);
		seg[n] = '\0';
		if (json_is_object(cur)) {
			cur = json_object_get(cur, seg);
		} else if (json_is_array(cur) && n > 0 && strspn(seg, "0123456789") == n) {
			char *end;
			unsigned long long idx = strtoull(seg, &end, 10);

			cur = json_array_get(cur, (size_t)idx);
		} else {
			return NULL;
		}
		if (cur == NULL || dot == NULL)
			return cur;
		p = dot + 1;
	}
}

/* 1 if @v holds the scalar written as @want. */
static int json_matches(const json_t *v, const char *want)
{
	char tmp[64];

	switch (json_typeof(v)) {
	case JSON_STRING:
		return json_string_length(v) == strlen(want) &&
		       memcmp(json_string_value(v), want, strlen(want)) == 0;
	case JSON_INTEGER:
		snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return strcmp(tmp, want) == 0;
	case JSON_REAL: {
		char *end;
		double d;

		if (want[0] == '\0')
			return 0;
		d = strtod(want, &end);
		return *end == '\0' && d == json_real_value(v);
	}
	case JSON_TRUE:
		return strcmp(want, "true") == 0;
	case JSON_FALSE:
		return strcmp(want, "false") == 0;
	case JSON_NULL:
		return strcmp(want, "null") == 0;
	default:
		return 0; /* objects and arrays are not scalars */
	}
}

/* What @v is, for a reason. */
static void json_describe(char *out, size_t len, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		quote(out, len, json_string_value(v), json_string_length(v), 80);
		break;
	case JSON_INTEGER:
		appendf(out, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		appendf(out, len, "%.17g", json_real_value(v));
		break;
	case JSON_TRUE:
		appendf(out, len, "true");
		break;
	case JSON_FALSE:
		appendf(out, len, "false");
		break;
	case JSON_NULL:
		appendf(out, len, "null");
		break;
	case JSON_OBJECT:
		appendf(out, len, "an object");
		break;
	case JSON_ARRAY:
		appendf(out, len, "an array");
		break;
	}
}

static int judge_json(const phg_check_t *c, const phg_http_result_t *r, char *reason,
                      size_t reason_len)
{
	json_error_t jerr;
	json_t *root;
	size_t i;
	int ok = 1;

	root = json_loadb(r->body != NULL ? r->body : "", r->body_len,
	                  JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (root == NULL) {
		/* jerr.text may quote the body: give the position only */
		snprintf(reason, reason_len, "expect_json: body is not JSON (line %d, column %d)%s",
		         jerr.line, jerr.column,
		         r->body_truncated ? "; the body was truncated" : "");
		return 0;
	}
	for (i = 0; i < c->expect_json.n && ok; i++) {
		const phg_kv_t *kv = &c->expect_json.v[i];
		const char *want = kv->value != NULL ? kv->value : "";
		json_t *v = json_path(root, kv->key);

		if (v != NULL && json_matches(v, want))
			continue;
		ok = 0;
		reason[0] = '\0';
		appendf(reason, reason_len, "expect_json ");
		quote(reason, reason_len, kv->key, strlen(kv->key), 80);
		if (v == NULL) {
			appendf(reason, reason_len, ": missing, want ");
		} else {
			appendf(reason, reason_len, ": got ");
			json_describe(reason, reason_len, v);
			appendf(reason, reason_len, ", want ");
		}
		quote(reason, reason_len, want, strlen(want), 80);
	}
	json_decref(root);
	return ok;
}

int phg_gate_judge(const phg_check_t *c, const phg_http_result_t *r, char *reason,
                   size_t reason_len)
{
	char tmp[8];

	if (reason == NULL || reason_len == 0) {
		reason = tmp;
		reason_len = sizeof(tmp);
	}
	reason[0] = '\0';
	if (!r->transport_ok) {
		snprintf(reason, reason_len, "%s", r->reason[0] != '\0' ? r->reason : "no response");
		return 0;
	}
	if (c->expect_status.n == 0) {
		if (r->status < 200 || r->status > 299) {
			snprintf(reason, reason_len, "HTTP %ld, want 2xx", r->status);
			return 0;
		}
	} else {
		size_t i;

		for (i = 0; i < c->expect_status.n; i++)
			if (c->expect_status.v[i] == r->status)
				break;
		if (i == c->expect_status.n) {
			snprintf(reason, reason_len, "HTTP %ld, want ", r->status);
			for (i = 0; i < c->expect_status.n; i++)
				appendf(reason, reason_len, "%s%ld",
				        i == 0 ? "" : (i + 1 == c->expect_status.n ? " or " : ", "),
				        c->expect_status.v[i]);
			return 0;
		}
	}
	if (c->expect_body != NULL && c->expect_body[0] != '\0') {
		size_t n = strlen(c->expect_body);

		if (r->body == NULL || !contains(r->body, r->body_len, c->expect_body, n)) {
			appendf(reason, reason_len, "body does not contain ");
			quote(reason, reason_len, c->expect_body, n, 80);
			if (r->body_truncated)
				appendf(reason, reason_len, " (the body was truncated at %zu bytes)",
				        r->body_len);
			return 0;
		}
	}
	if (c->expect_json.n > 0 && !judge_json(c, r, reason, reason_len))
		return 0;
	if (c->max_latency_ms > 0 && r->latency_ms > c->max_latency_ms) {
		snprintf(reason, reason_len, "too slow: %" PRIu64 " ms, max_latency %" PRIu64 " ms",
		         r->latency_ms, c->max_latency_ms);
		return 0;
	}
	return 1;
}

/* ---- probing ---- */

/* Stop every timer and cancel every request: nothing starts after this. */
static void halt(gate_priv_t *gp)
{
	size_t i;

	for (i = 0; i < gp->n; i++) {
		gate_check_t *ck = &gp->checks[i];

		uv_timer_stop(&ck->timer);
		ck->due = 0;
		if (ck->req != NULL) {
			phg_http_cancel(gp->http, ck->req);
			ck->req = NULL;
		}
	}
	uv_timer_stop(&gp->tick);
}

static void decide(gate_priv_t *gp, int status, const phg_err_t *err)
{
	gp->decided = 1;
	halt(gp);
	gp->cb(gp->g, status, err); /* may call phg_gate_stop */
}

/* VERIFY: pass when every check has enough successes and the soak ended. */
static int verify_passed(gate_priv_t *gp)
{
	uint64_t el = elapsed_ms(gp);
	size_t i;

	if (gp->mode != PHG_GATE_VERIFY)
		return 0;
	for (i = 0; i < gp->n; i++) {
		const gate_check_t *ck = &gp->checks[i];

		if (ck->successes < at_least_one(ck->c->successes) || el < ck->c->soak_ms)
			return 0;
	}
	return 1;
}

static void probe_start(gate_check_t *ck);

static void probe_done(gate_check_t *ck, const phg_http_result_t *r, int ok, const char *reason)
{
	gate_priv_t *gp = ck->gp;
	const phg_check_t *c = ck->c;
	phg_probe_t p;

	if (ok) {
		ck->successes++;
		ck->failures = 0;
		phg_log(PHG_LOG_DEBUG, gp->g->logctx,
		        "%s gate: check \"%s\" passed (HTTP %ld, %" PRIu64 " ms; %" PRIu64 "/%" PRIu64
		        " in a row)",
		        mode_name(gp), c->name, r->status, r->latency_ms, ck->successes,
		        at_least_one(c->successes));
	} else {
		ck->failures++;
		ck->successes = 0;
		if (r->status != 0)
			phg_log(PHG_LOG_INFO, gp->g->logctx,
			        "%s gate: check \"%s\" failed (HTTP %ld, %" PRIu64 " ms; %" PRIu64
			        "/%" PRIu64 " in a row): %s",
			        mode_name(gp), c->name, r->status, r->latency_ms, ck->failures,
			        at_least_one(c->failures), reason);
		else
			phg_log(PHG_LOG_INFO, gp->g->logctx,
			        "%s gate: check \"%s\" failed (no response, %" PRIu64 " ms; %" PRIu64
			        "/%" PRIu64 " in a row): %s",
			        mode_name(gp), c->name, r->latency_ms, ck->failures,
			        at_least_one(c->failures), reason);
	}
	if (gp->g->on_probe != NULL) {
		memset(&p, 0, sizeof(p));
		p.check = c->name;
		p.ok = ok;
		p.status = r->status;
		p.latency_ms = r->latency_ms;
		p.reason = ok ? "" : reason;
		p.successes = ck->successes;
		p.failures = ck->failures;
		p.soak_left_ms = gp->soak_ms > elapsed_ms(gp) ? gp->soak_ms - elapsed_ms(gp) : 0;
		gp->g->on_probe(gp->g, &p);
		if (gp->stopping || gp->decided)
			return;
	}
	if (ck->failures >= at_least_one(c->failures)) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_EGATE, "check \"%s\" failed %" PRIu64 " time%s in a row: %s",
		            c->name, ck->failures, ck->failures == 1 ? "" : "s", reason);
		if (r->status != 0)
			phg_err_detail(&err, "The %s gate allows fewer than %" PRIu64
			                     " consecutive failures; the last answer was HTTP %ld after "
			                     "%" PRIu64 " ms.",
			               mode_name(gp), at_least_one(c->failures), r->status, r->latency_ms);
		else
			phg_err_detail(&err, "The %s gate allows fewer than %" PRIu64
			                     " consecutive failures; the last probe got no answer.",
			               mode_name(gp), at_least_one(c->failures));
		decide(gp, PHG_EGATE, &err);
		return;
	}
	if (verify_passed(gp)) {
		decide(gp, 0, NULL);
		return;
	}
	if (ck->due) {
		ck->due = 0;
		probe_start(ck);
	}
}

static void on_response(phg_http_req_t *req, const phg_http_result_t *r, void *arg)
{
	gate_check_t *ck = arg;
	char reason[512];
	int ok;

	(void)req;
	ck->req = NULL;
	if (ck->gp->stopping || ck->gp->decided)
		return; /* not reached: halt() cancels, but be safe */
	ok = phg_gate_judge(ck->c, r, reason, sizeof(reason));
	probe_done(ck, r, ok, reason);
}

static void on_check_timer(uv_timer_t *t)
{
	gate_check_t *ck = t->data;

	if (ck->gp->stopping || ck->gp->decided)
		return;
	if (ck->req != NULL) {
		ck->due = 1; /* start when the answer is in */
		return;
	}
	probe_start(ck);
}

static void probe_start(gate_check_t *ck)
{
	gate_priv_t *gp = ck->gp;
	const phg_check_t *c = ck->c;
	phg_http_opts_t o;
	phg_err_t err;

	uv_timer_start(&ck->timer, on_check_timer, c->interval_ms, 0);
	memset(&o, 0, sizeof(o));
	o.method = c->method != NULL ? c->method : "GET";
	o.url = c->url;
	o.body = c->body;
	o.headers = &c->headers;
	o.timeout_ms = c->timeout_ms;
	o.insecure = c->insecure;
	phg_err_clear(&err);
	if (phg_http_request(gp->http, &ck->req, &o, on_response, ck, &err) != 0) {
		phg_http_result_t r;

		/* no request: a failed probe (we are in a loop callback) */
		ck->req = NULL;
		memset(&r, 0, sizeof(r));
		snprintf(r.reason, sizeof(r.reason), "%s", err.msg);
		probe_done(ck, &r, 0, r.reason);
	}
}

static void on_tick(uv_timer_t *t)
{
	gate_priv_t *gp = t->data;
	uint64_t el;

	if (gp->stopping || gp->decided || gp->mode != PHG_GATE_VERIFY)
		return;
	if (gp->n == 0) {
		decide(gp, 0, NULL);
		return;
	}
	el = elapsed_ms(gp);
	if (el < gp->soak_ms) { /* the loop's clock lags uv_hrtime a little */
		uv_timer_start(&gp->tick, on_tick, gp->soak_ms - el, 0);
		return;
	}
	if (verify_passed(gp))
		decide(gp, 0, NULL);
}

/* ---- start, stop ---- */

/* A check's headers must expand now; a missing variable fails the start. */
static int check_headers(const phg_check_t *c, phg_err_t *err)
{
	phg_buf_t b;
	int rc = 0;

	phg_buf_init(&b, 16 * 1024);
	for (size_t i = 0; i < c->headers.n && rc == 0; i++) {
		const char *v = c->headers.v[i].value;

		phg_buf_reset(&b);
		rc = phg_expand_env(v != NULL ? v : "", &b, err);
		if (rc != 0)
			phg_err_detail(err, "In header \"%s\" of check \"%s\".", c->headers.v[i].key,
			               c->name);
	}
	if (b.data != NULL)
		memset(b.data, 0, b.cap);
	phg_buf_free(&b);
	return rc != 0 ? PHG_EINVAL : 0;
}

int phg_gate_start(phg_gate_t *g, uv_loop_t *loop, phg_http_t *http, phg_gate_mode_t mode,
                   const phg_check_t *const *checks, size_t nchecks, phg_gate_done_cb cb,
                   phg_err_t *err)
{
	gate_priv_t *gp;
	size_t i;

	if (g == NULL || loop == NULL || cb == NULL ||
	    (mode != PHG_GATE_VERIFY && mode != PHG_GATE_WATCH))
		return phg_err_set(err, PHG_EINVAL, "invalid gate arguments");
	if (nchecks > 0 && (checks == NULL || http == NULL))
		return phg_err_set(err, PHG_EINVAL, "a gate with checks needs an HTTP client");
	for (i = 0; i < nchecks; i++) {
		const phg_check_t *c = checks[i];

		if (c == NULL)
			return phg_err_set(err, PHG_EINVAL, "unknown check in the gate");
		if (c->url == NULL || c->url[0] == '\0')
			return phg_err_set(err, PHG_EINVAL, "check \"%s\" has no url",
			                   c->name != NULL ? c->name : "?");
		if (check_headers(c, err) != 0)
			return PHG_EINVAL;
	}

	gp = phg_calloc(1, sizeof(*gp));
	gp->g = g;
	gp->loop = loop;
	gp->http = http;
	gp->mode = mode;
	gp->cb = cb;
	gp->n = nchecks;
	gp->checks = nchecks > 0 ? phg_calloc(nchecks, sizeof(*gp->checks)) : NULL;
	gp->start_ns = uv_hrtime();
	g->priv = gp;

	uv_timer_init(loop, &gp->tick);
	gp->tick.data = gp;
	gp->open = 1;
	for (i = 0; i < nchecks; i++) {
		gate_check_t *ck = &gp->checks[i];

		ck->gp = gp;
		ck->c = checks[i];
		if (ck->c->soak_ms > gp->soak_ms)
			gp->soak_ms = ck->c->soak_ms;
		uv_timer_init(loop, &ck->timer);
		ck->timer.data = ck;
		gp->open++;
		/* first probe on the next loop iteration: never inside this call */
		uv_timer_start(&ck->timer, on_check_timer, 0, 0);
	}
	if (mode == PHG_GATE_VERIFY && (nchecks == 0 || gp->soak_ms > 0))
		uv_timer_start(&gp->tick, on_tick, nchecks == 0 ? 0 : gp->soak_ms, 0);
	phg_log(PHG_LOG_DEBUG, g->logctx, "%s gate: probing %zu check(s)", mode_name(gp), nchecks);
	return 0;
}

static void release(gate_priv_t *gp)
{
	phg_gate_t *g = gp->g;
	void (*closed)(phg_gate_t *g) = gp->closed;

	if (--gp->open > 0)
		return;
	g->priv = NULL;
	free(gp->checks);
	free(gp);
	if (closed != NULL)
		closed(g);
}

static void on_check_timer_closed(uv_handle_t *h)
{
	gate_check_t *ck = h->data;

	release(ck->gp);
}

static void on_tick_closed(uv_handle_t *h)
{
	release(h->data);
}

void phg_gate_stop(phg_gate_t *g, void (*closed)(phg_gate_t *g))
{
	gate_priv_t *gp = g != NULL ? g->priv : NULL;
	size_t i;

	if (gp == NULL)
		return;
	if (closed != NULL)
		gp->closed = closed;
	if (gp->stopping)
		return;
	gp->stopping = 1;
	halt(gp);
	for (i = 0; i < gp->n; i++)
		uv_close((uv_handle_t *)&gp->checks[i].timer, on_check_timer_closed);
	uv_close((uv_handle_t *)&gp->tick, on_tick_closed);
}
