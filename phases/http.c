/*
 * http.c - one HTTP request, e.g. flipping a feature flag in the application
 * or a flag service; 2xx required.  Its revert is the `revert` request
 * (method, url and headers default to the step's own).  Without `revert` the
 * step cannot be reverted.  Header values may use ${VAR}, expanded from the
 * environment when the request is sent and never printed.
 */
#include "kind.h"

typedef struct {
	char *method;
	char *url;
	char *body;
	phg_kvv_t headers;
} http_req_t;

typedef struct {
	char *method;
	char *url;
	char *body;
	phg_kvv_t headers;
	http_req_t revert;
} http_args_t;

static const phg_field_t http_revert_fields[] = {
	{.key = "method", .type = PHG_FT_STRING, .offset = offsetof(http_req_t, method),
	 .what = "an HTTP method"},
	{.key = "url", .type = PHG_FT_STRING, .offset = offsetof(http_req_t, url),
	 .what = "a URL"},
	{.key = "body", .type = PHG_FT_STRING, .offset = offsetof(http_req_t, body),
	 .flags = PHG_FL_EMPTY_OK, .what = "a request body"},
	{.key = "headers", .type = PHG_FT_STRMAP, .offset = offsetof(http_req_t, headers),
	 .what = "a mapping of header names to values"},
	{0},
};

static const phg_field_t http_fields[] = {
	{.key = "method", .type = PHG_FT_STRING, .offset = offsetof(http_args_t, method),
	 .def = "POST", .what = "an HTTP method"},
	{.key = "url", .type = PHG_FT_STRING, .offset = offsetof(http_args_t, url),
	 .flags = PHG_FL_REQUIRED, .what = "a URL"},
	{.key = "body", .type = PHG_FT_STRING, .offset = offsetof(http_args_t, body),
	 .flags = PHG_FL_EMPTY_OK, .what = "a request body"},
	{.key = "headers", .type = PHG_FT_STRMAP, .offset = offsetof(http_args_t, headers),
	 .what = "a mapping of header names to values"},
	{.key = "revert", .type = PHG_FT_MAP, .offset = offsetof(http_args_t, revert),
	 .sub = http_revert_fields, .what = "the request that reverts this one"},
	{0},
};

static void http_op(phg_build_t *b, const char *label, const char *method, const char *url,
                    const char *body, const phg_kvv_t *headers)
{
	phg_op_t *op = phg_op_new(b, PHG_OP_HTTP, 0, "%s", label);

	op->http = phg_calloc(1, sizeof(*op->http));
	op->http->method = phg_strdup(method);
	op->http->url = phg_strdup(url);
	op->http->body = phg_strdup(body);
	op->http->headers = *headers; /* borrowed from the plan */
}

static int http_build(phg_build_t *b)
{
	const http_args_t *a = b->step->args;
	const http_req_t *r = &a->revert;

	switch (b->dir) {
	case PHG_DIR_APPLY:
		http_op(b, phg_bprintf(b, "%s %s", a->method, a->url), a->method, a->url, a->body,
		        &a->headers);
		break;
	case PHG_DIR_REVERT:
		if (b->progress == 0)
			break;
		if (phg_step_field_pos(b->step, "revert").line == 0) {
			b->irreversible = 1;
			return phg_err_set(b->err, PHG_EIRREVERSIBLE,
			                   "http step %s %s has no `revert` request", a->method,
			                   a->url);
		}
		http_op(b,
		        phg_bprintf(b, "revert: %s %s", r->method ? r->method : a->method,
		                    r->url ? r->url : a->url),
		        r->method ? r->method : a->method, r->url ? r->url : a->url, r->body,
		        r->headers.n ? &r->headers : &a->headers);
		break;
	case PHG_DIR_FINALIZE:
		break;
	}
	return 0;
}

static void http_tables(const phg_step_t *step, phg_strv_t *out)
{
	(void)step;
	(void)out;
}

const phg_step_kind_t phg_kind_http = {
	.name = "http",
	.summary = "one HTTP request (2xx required), reverted by its `revert` request",
	.fields = http_fields,
	.args_size = sizeof(http_args_t),
	.build = http_build,
	.tables = http_tables,
	.clean_on_fail = 0,
};
