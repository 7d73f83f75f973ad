/*
 * http.h - HTTP requests on the libuv loop through libcurl's multi-socket
 * API: CURLMOPT_SOCKETFUNCTION drives one uv_poll_t per socket,
 * CURLMOPT_TIMERFUNCTION one uv_timer_t; after every
 * curl_multi_socket_action the completed transfers are drained with
 * curl_multi_info_read.  Many requests run at once; nothing blocks.
 *
 * Lifetime: phg_http_init allocates the client; it is freed by
 * phg_http_close, just before the close callback runs.  phg_http_request
 * allocates each request; it is freed right after its callback returns, or
 * inside phg_http_cancel (or phg_http_close), whichever comes first -- the
 * request pointer must not be used after that.  A request's callback is
 * called exactly once, always from the loop (never from inside
 * phg_http_request), unless the request was cancelled.  Inside a callback
 * any function of this module may be called, phg_http_close included.
 *
 * Secrets: header values are expanded from the environment (${VAR}) only
 * into the request itself; they never appear in an error, a reason or a log
 * line.  The response body is the server's, given as received.
 */
#ifndef PHG_HTTP_H
#define PHG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "error.h"
#include "plan.h"

#define PHG_HTTP_BODY_MAX (256u * 1024) /* response bodies kept (capped, flagged) */

typedef struct phg_http_s phg_http_t;
typedef struct phg_http_req_s phg_http_req_t;

typedef struct phg_http_result_s {
	int transport_ok;       /* 1: a response arrived (any status) */
	long status;            /* HTTP status, 0 without a response */
	uint64_t latency_ms;    /* request start to completion */
	const char *body;       /* NUL-terminated, capped at PHG_HTTP_BODY_MAX */
	size_t body_len;
	int body_truncated;
	/* Without a response: why, in words ("connection refused",
	 * "timed out after 2000 ms", "TLS: certificate verify failed ...").
	 * Never contains header values.  "" when transport_ok. */
	char reason[512];
} phg_http_result_t;

typedef void (*phg_http_cb)(phg_http_req_t *req, const phg_http_result_t *res, void *arg);

typedef struct phg_http_opts_s {
	const char *method;        /* "GET", "PUT", ...; NULL = "GET" */
	const char *url;           /* ${VAR} expanded from the environment */
	const char *body;          /* may be NULL; copied.  A body that starts with
	                              { or [ is sent as application/json unless a
	                              Content-Type header is given */
	const phg_kvv_t *headers;  /* values may hold ${VAR}; expanded here; may be NULL */
	uint64_t timeout_ms;       /* whole request; 0 = 30 s */
	int insecure;              /* 1: do not verify TLS (default verified) */
} phg_http_opts_t;

/* A client on @loop: 0 or PHG_ENOMEM.  It holds a timer (and a poll per
 * socket while transfers run); phg_http_close releases it all. */
int phg_http_init(uv_loop_t *loop, phg_http_t **out);

/* Start a request; *@out (may be NULL) gets its handle.  0 (cb will be
 * called once, from the loop), or PHG_EINVAL with the reason in @err (e.g. a
 * ${VAR} that is not set: the variable is named, its value never printed; a
 * header name that is not a token; a value with a line break; the client is
 * closing), PHG_ETOOBIG (an expanded header past 16 KiB) or PHG_ENOMEM --
 * cb is then not called.  No redirect is followed; only http and https. */
int phg_http_request(phg_http_t *h, phg_http_req_t **out, const phg_http_opts_t *o,
                     phg_http_cb cb, void *arg, phg_err_t *err);

/* Abort a request in flight and free it; its callback is not called.
 * For the request whose callback is running it does nothing. */
void phg_http_cancel(phg_http_t *h, phg_http_req_t *req);

/* Number of requests in flight. */
size_t phg_http_pending(const phg_http_t *h);

/* Cancel everything (no request callback runs after this), close every
 * handle; @cb (may be NULL) runs from the loop when all are closed and the
 * client is freed.  A second call does nothing. */
void phg_http_close(phg_http_t *h, void (*cb)(void *arg), void *arg);

/* Expand ${VAR} from the environment, appending to @out.  "$$" is a
 * literal "$"; any other "$" (a lone "$", "$VAR", "${", "${A", "${1X}") is
 * bad syntax.  A variable that is set but empty expands to "".
 * PHG_EINVAL (err names the variable, or says where the syntax is bad; it
 * never quotes the rest of @in nor any value) when a variable is unset or
 * the syntax is bad; PHG_ETOOBIG past the buffer's cap.  On error @out is
 * left as it was (the bytes appended are wiped). */
int phg_expand_env(const char *in, phg_buf_t *out, phg_err_t *err);

#endif /* PHG_HTTP_H */
