/*
 * notify.c - webhooks told of a run's turning points (notify.h).
 */
#include "notify.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "buf.h"
#include "exec.h"
#include "http.h"

#define NOTIFY_BACKOFF_MS 500 /* first wait before a retry; doubles, jittered */
#define NOTIFY_BACKOFF_MAX_MS 8000
#define NOTIFY_DRAIN_MS 15000 /* at the end, what is still unsent gets this long */

typedef struct send_s send_t;

struct phg_notifier_s {
	const phg_plan_t *plan;
	uv_loop_t *loop;
	phg_http_t *http;
	send_t *sends; /* in flight or waiting for a retry */
	int closing;
	uint64_t rng;     /* the jitter of the retries' backoff */
	uv_timer_t drain; /* closing: the deadline of what is left */
};

struct send_s {
	send_t *next;
	phg_notifier_t *n;
	const phg_notify_t *w;
	size_t idx;        /* the webhook's place in the plan, for the log */
	char *body;
	phg_http_req_t *req;
	uv_timer_t timer;  /* the wait before a retry */
	uint64_t attempt;
	char point[32];
};

static void notifier_maybe_free(phg_notifier_t *n);

static void drain_closed(uv_handle_t *h)
{
	free(h->data);
}

static void http_closed(void *arg)
{
	phg_notifier_t *n = arg;

	uv_close((uv_handle_t *)&n->drain, drain_closed);
}

static void notifier_maybe_free(phg_notifier_t *n)
{
	if (!n->closing || n->sends != NULL || n->http == NULL)
		return;
	uv_timer_stop(&n->drain);
	phg_http_close(n->http, http_closed, n);
	n->http = NULL;
}

static void send_timer_closed(uv_handle_t *h)
{
	send_t *s = h->data;
	phg_notifier_t *n = s->n;

	free(s->body);
	free(s);
	notifier_maybe_free(n);
}

static void send_done(send_t *s)
{
	phg_notifier_t *n = s->n;

	for (send_t **p = &n->sends; *p != NULL; p = &(*p)->next)
		if (*p == s) {
			*p = s->next;
			break;
		}
	uv_close((uv_handle_t *)&s->timer, send_timer_closed);
}

/* Where a webhook goes, for the log: the URL as the plan wrote it up to its
 * host (a Slack webhook's path is its secret; ${VAR} is not expanded). */
static void where_of(const send_t *s, char *out, size_t n)
{
	const char *u = s->w->url, *h = strstr(u, "://");
	size_t len = h != NULL ? (size_t)(h + 3 - u) + strcspn(h + 3, "/?#") : strlen(u);

	snprintf(out, n, "notify item %zu (%.*s)", s->idx + 1, (int)(len < 200 ? len : 200), u);
}

static void send_attempt(send_t *s);

static void retry_fire(uv_timer_t *t)
{
	send_attempt(t->data);
}

static void send_result(phg_http_req_t *req, const phg_http_result_t *res, void *arg)
{
	send_t *s = arg;
	char where[256];
	int retriable = !res->transport_ok || res->status >= 500 || res->status == 429;

	(void)req;
	s->req = NULL;
	if (res->transport_ok && res->status >= 200 && res->status < 300) {
		phg_log(PHG_LOG_DEBUG, NULL, "notification \"%s\" sent (HTTP %ld)", s->point,
		        res->status);
		send_done(s);
		return;
	}
	where_of(s, where, sizeof(where));
	if (retriable && s->attempt <= s->w->retries) {
		uint64_t d = phg_backoff_ms(NOTIFY_BACKOFF_MS, NOTIFY_BACKOFF_MAX_MS, s->attempt,
		                            &s->n->rng);

		phg_log(PHG_LOG_WARN, NULL, "notification \"%s\" to %s failed (%s); retrying in %llu ms",
		        s->point, where, res->transport_ok ? "a non-2xx answer" : res->reason,
		        (unsigned long long)d);
		uv_timer_start(&s->timer, retry_fire, d, 0);
		return;
	}
	if (res->transport_ok)
		phg_log(PHG_LOG_WARN, NULL, "notification \"%s\" to %s not sent: HTTP %ld (the run "
		                            "goes on)",
		        s->point, where, res->status);
	else
		phg_log(PHG_LOG_WARN, NULL, "notification \"%s\" to %s not sent: %s (the run goes on)",
		        s->point, where, res->reason);
	send_done(s);
}

static void send_attempt(send_t *s)
{
	phg_http_opts_t o;
	phg_err_t err;
	char where[256];

	memset(&o, 0, sizeof(o));
	o.method = s->w->method ? s->w->method : "POST";
	o.url = s->w->url;
	o.body = s->body;
	o.headers = &s->w->headers;
	o.timeout_ms = s->w->timeout_ms;
	phg_err_clear(&err);
	s->attempt++;
	if (phg_http_request(s->n->http, &s->req, &o, send_result, s, &err) != 0) {
		where_of(s, where, sizeof(where));
		phg_log(PHG_LOG_WARN, NULL, "notification \"%s\" to %s not sent: %s (the run goes on)",
		        s->point, where, err.msg);
		s->req = NULL;
		send_done(s);
	}
}

phg_notifier_t *phg_notify_new(uv_loop_t *loop, const phg_plan_t *plan)
{
	phg_notifier_t *n;

	if (plan == NULL || plan->nnotify == 0)
		return NULL;
	n = phg_calloc(1, sizeof(*n));
	n->plan = plan;
	n->loop = loop;
	n->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)n << 17);
	if (phg_http_init(loop, &n->http) != 0) {
		phg_log(PHG_LOG_WARN, NULL, "notifications are off: the HTTP client did not start");
		free(n);
		return NULL;
	}
	uv_timer_init(loop, &n->drain);
	n->drain.data = n;
	return n;
}

const char *phg_notify_point(const char *kind, const char *data, int run_failed)
{
	json_t *d;
	json_error_t jerr;
	const char *to, *from, *point = NULL;

	if (strcmp(kind, "run_started") == 0)
		return "start";
	if (strcmp(kind, "gate_failed") == 0)
		return "gate_failed";
	if (strcmp(kind, "paused") == 0)
		return "paused";
	if ((strcmp(kind, "run_state") != 0 && strcmp(kind, "phase_state") != 0) || data == NULL)
		return NULL;
	d = json_loads(data, 0, &jerr);
	to = json_string_value(json_object_get(d, "to"));
	from = json_string_value(json_object_get(d, "from"));
	if (to == NULL || from == NULL || strcmp(to, from) == 0) {
		point = NULL; /* a record rewritten, not a turn */
	} else if (strcmp(kind, "run_state") == 0) {
		if (strcmp(to, "completed") == 0)
			point = "completed";
		else if (strcmp(to, "failed") == 0)
			point = "failed";
		else if (strcmp(to, "rolled_back") == 0)
			point = "rollback";
	} else if (strcmp(to, "rolled_back") == 0 && run_failed) {
		point = "rollback"; /* the automatic rollback of a phase */
	}
	json_decref(d);
	return point;
}

static int wants(const phg_notify_t *w, const char *point)
{
	if (w->events.n == 0)
		return 1;
	for (size_t i = 0; i < w->events.n; i++)
		if (strcmp(w->events.v[i], point) == 0)
			return 1;
	return 0;
}

/* What a Slack incoming webhook shows: text, and fields under a colour. */
static char *body_of(const char *point, const char *env, const char *target, json_t *event)
{
	const char *plan = json_string_value(json_object_get(event, "plan"));
	const char *phase = json_string_value(json_object_get(event, "phase"));
	const char *msg = json_string_value(json_object_get(event, "message"));
	json_t *run = json_object_get(event, "run_id"), *fields = json_array(), *o;
	const char *colour = strcmp(point, "completed") == 0 || strcmp(point, "start") == 0 ? "good"
	                     : strcmp(point, "paused") == 0                                  ? "warning"
	                                                                                     : "danger";
	char *text, *out;

	text = phg_asprintf("phasegate: %s of plan \"%s\"%s%s%s%s%s: %s", point, plan ? plan : "?",
	                    env && env[0] ? " in " : "", env && env[0] ? env : "",
	                    phase ? " (phase \"" : "", phase ? phase : "", phase ? "\")" : "",
	                    msg ? msg : "");
	json_array_append_new(fields, json_pack("{s:s,s:s,s:b}", "title", "plan", "value",
	                                        plan ? plan : "?", "short", 1));
	json_array_append_new(fields, json_pack("{s:s,s:s,s:b}", "title", "environment", "value",
	                                        env && env[0] ? env : "-", "short", 1));
	if (json_is_integer(run))
		json_array_append_new(fields,
		                      json_pack("{s:s,s:o,s:b}", "title", "run", "value",
		                                json_sprintf("%" JSON_INTEGER_FORMAT, json_integer_value(run)),
		                                "short", 1));
	if (phase != NULL)
		json_array_append_new(fields, json_pack("{s:s,s:s,s:b}", "title", "phase", "value", phase,
		                                        "short", 1));
	if (target != NULL && target[0])
		json_array_append_new(fields, json_pack("{s:s,s:s,s:b}", "title", "target", "value",
		                                        target, "short", 0));
	o = json_pack("{s:s,s:[{s:s,s:s,s:o}],s:O}", "text", text, "attachments", "color", colour,
	              "fallback", text, "fields", fields, "phasegate", event);
	out = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
	json_decref(o);
	free(text);
	return out;
}

void phg_notify_send(phg_notifier_t *n, const char *point, const char *env, const char *target,
                     json_t *event)
{
	char *body = NULL;

	if (n == NULL || n->closing || point == NULL)
		return;
	for (size_t i = 0; i < n->plan->nnotify; i++) {
		const phg_notify_t *w = &n->plan->notify[i];
		send_t *s;

		if (!wants(w, point))
			continue;
		if (body == NULL)
			body = body_of(point, env, target, event);
		s = phg_calloc(1, sizeof(*s));
		s->n = n;
		s->w = w;
		s->idx = i;
		s->body = phg_strdup(body);
		snprintf(s->point, sizeof(s->point), "%s", point);
		uv_timer_init(n->loop, &s->timer);
		s->timer.data = s;
		s->next = n->sends;
		n->sends = s;
		send_attempt(s);
	}
	free(body);
}

/* The deadline: whatever is still unsent is given up, and said. */
static void drain_fire(uv_timer_t *t)
{
	phg_notifier_t *n = t->data;

	while (n->sends != NULL) {
		send_t *s = n->sends;
		char where[256];

		where_of(s, where, sizeof(where));
		phg_log(PHG_LOG_WARN, NULL, "notification \"%s\" to %s given up: still unsent %d s "
		                            "after the run ended",
		        s->point, where, NOTIFY_DRAIN_MS / 1000);
		if (s->req != NULL)
			phg_http_cancel(n->http, s->req);
		s->req = NULL;
		uv_timer_stop(&s->timer);
		send_done(s);
	}
	notifier_maybe_free(n);
}

void phg_notify_close(phg_notifier_t *n)
{
	if (n == NULL || n->closing)
		return;
	n->closing = 1;
	/* what is in flight or waiting for a retry goes on, for a while */
	if (n->sends != NULL)
		uv_timer_start(&n->drain, drain_fire, NOTIFY_DRAIN_MS, 0);
	notifier_maybe_free(n);
}
