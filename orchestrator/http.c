/*
 * http.c - HTTP requests on the libuv loop through libcurl's multi-socket
 * API (see http.h).
 *
 * How curl and libuv meet:
 *   - CURLMOPT_SOCKETFUNCTION: for every socket curl wants watched we
 *     allocate one http_sock_t holding a uv_poll_t (remembered with
 *     curl_multi_assign); CURL_POLL_REMOVE stops and closes it, and the
 *     memory is freed in the poll's close callback.  A poll error (libuv
 *     has stopped the poll by then) is told to curl as CURL_CSELECT_ERR,
 *     with the directions curl waits for, so it finds the socket's error.
 *   - CURLMOPT_TIMERFUNCTION: one uv_timer_t.  -1 stops it; any other value
 *     (0 included) (re)starts it, so curl_multi_socket_action is only ever
 *     called from a libuv callback, never from inside a curl callback.
 *   - After every curl_multi_socket_action every completed transfer is
 *     drained with curl_multi_info_read, whether transfers still run or not.
 *   - Completion: the easy handle is removed from the multi handle and the
 *     request unlinked before the user's callback runs, and freed after it
 *     returns; the callback may start, cancel, or close anything.
 *
 * Secrets: header values are ${VAR}-expanded into a curl_slist that only
 * curl sees; the environment values substituted are remembered (wiped and
 * freed with the request) solely to make sure curl's error text, which goes
 * into the reason, does not contain one -- if it does, the reason falls back
 * to curl's fixed message for the error code.
 */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "buf.h"
#include "log.h"
#include "error.h"

#ifndef PHG_VERSION
#define PHG_VERSION "dev"
#endif

#define HTTP_DEFAULT_TIMEOUT_MS 30000u
#define HTTP_HEADER_MAX (16u * 1024) /* one expanded "Name: value" line */

typedef struct http_sock_s {
	uv_poll_t poll;
	curl_socket_t fd;
	phg_http_t *h;
	int want;    /* CURL_POLL_IN/OUT bits curl asked for */
	int closing;
	struct http_sock_s *prev, *next;
} http_sock_t;

/* An environment value substituted into a header (wiped when freed). */
typedef struct http_secret_s {
	struct http_secret_s *next;
	size_t len;
	char value[];
} http_secret_t;

struct phg_http_req_s {
	phg_http_t *h;
	CURL *easy;
	struct curl_slist *headers;
	http_secret_t *secrets;
	phg_http_cb cb;
	void *arg;
	uint64_t start_ns;
	uint64_t timeout_ms;
	char *body;       /* response body, NUL-terminated, capped */
	size_t body_len;
	size_t body_cap;
	int body_truncated;
	int body_oom;
	int done;         /* unlinked; its callback is running */
	char errbuf[CURL_ERROR_SIZE];
	struct phg_http_req_s *prev, *next;
};

struct phg_http_s {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer;
	phg_http_req_t *reqs; /* in flight */
	size_t pending;
	http_sock_t *socks;   /* open (not closing) socket watchers */
	size_t handles;       /* uv handles not yet closed: timer + polls */
	int closing;
	void (*close_cb)(void *arg);
	void *close_arg;
};

static int curl_ready;

/* ---- small helpers ---- */

static void wipe(void *p, size_t n)
{
	volatile unsigned char *q = p;

	while (n-- > 0)
		*q++ = 0;
}

static void secrets_free(http_secret_t *s)
{
	while (s != NULL) {
		http_secret_t *next = s->next;

		wipe(s->value, s->len);
		free(s);
		s = next;
	}
}

static void slist_wipe_free(struct curl_slist *l)
{
	struct curl_slist *p;

	for (p = l; p != NULL; p = p->next)
		if (p->data != NULL)
			wipe(p->data, strlen(p->data));
	curl_slist_free_all(l);
}

static int is_tchar(int c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_token(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!is_tchar((unsigned char)*s))
			return 0;
	return 1;
}

/* ---- ${VAR} expansion ---- */

typedef void (*expand_value_cb)(void *arg, const char *value, size_t len);

static int expand(const char *in, phg_buf_t *out, phg_err_t *err, expand_value_cb on_value,
                  void *arg)
{
	size_t start_len = out->len;
	const char *p = in;
	int rc = 0;

	while (*p != '\0') {
		const char *dollar = strchr(p, '$');
		const char *name, *end, *value;
		char vname[256];
		size_t n;

		if (dollar == NULL) {
			rc = phg_buf_adds(out, p);
			break;
		}
		if (dollar > p && (rc = phg_buf_add(out, p, (size_t)(dollar - p))) != 0)
			break;
		if (dollar[1] == '$') {
			if ((rc = phg_buf_add(out, "$", 1)) != 0)
				break;
			p = dollar + 2;
			continue;
		}
		if (dollar[1] != '{') {
			rc = phg_err_set(err, PHG_EINVAL,
			                 "bad variable syntax at offset %zu: \"$\" must start "
			                 "${NAME} or be doubled",
			                 (size_t)(dollar - in));
			phg_err_hint(err, "Write a literal dollar sign as $$.");
			break;
		}
		name = dollar + 2;
		end = strchr(name, '}');
		if (end == NULL) {
			rc = phg_err_set(err, PHG_EINVAL,
			                 "bad variable syntax at offset %zu: \"${\" without a closing \"}\"",
			                 (size_t)(dollar - in));
			break;
		}
		n = (size_t)(end - name);
		if (n == 0 || n >= sizeof(vname) || !(isalpha((unsigned char)name[0]) || name[0] == '_')) {
			rc = phg_err_set(err, PHG_EINVAL,
			                 "bad variable syntax at offset %zu: not a variable name",
			                 (size_t)(dollar - in));
			phg_err_hint(err, "A name is letters, digits and underscores, not starting "
			                  "with a digit.");
			break;
		}
		for (size_t i = 0; i < n; i++) {
			if (!isalnum((unsigned char)name[i]) && name[i] != '_') {
				n = 0;
				break;
			}
		}
		if (n == 0) {
			rc = phg_err_set(err, PHG_EINVAL,
			                 "bad variable syntax at offset %zu: not a variable name",
			                 (size_t)(dollar - in));
			phg_err_hint(err, "A name is letters, digits and underscores, not starting "
			                  "with a digit.");
			break;
		}
		memcpy(vname, name, n);
		vname[n] = '\0';
		value = getenv(vname);
		if (value == NULL) {
			rc = phg_err_set(err, PHG_EINVAL, "environment variable \"%s\" is not set", vname);
			break;
		}
		if ((rc = phg_buf_adds(out, value)) != 0)
			break;
		phg_secret_add(value); /* masked in whatever phasegate prints or records */
		if (on_value != NULL && value[0] != '\0')
			on_value(arg, value, strlen(value));
		p = end + 1;
	}
	if (rc == PHG_ETOOBIG)
		phg_err_set(err, PHG_ETOOBIG, "value too long after variable expansion (at most %zu bytes)",
		            out->max);
	else if (rc == PHG_ENOMEM)
		phg_err_set(err, PHG_ENOMEM, "out of memory expanding variables");
	if (rc != 0 && out->data != NULL) {
		wipe(out->data + start_len, out->len - start_len);
		out->len = start_len;
		out->data[start_len] = '\0';
	}
	return rc;
}

int phg_expand_env(const char *in, phg_buf_t *out, phg_err_t *err)
{
	if (in == NULL || out == NULL)
		return phg_err_set(err, PHG_EINVAL, "nothing to expand");
	return expand(in, out, err, NULL, NULL);
}

static void remember_secret(void *arg, const char *value, size_t len)
{
	phg_http_req_t *r = arg;
	http_secret_t *s = phg_calloc(1, sizeof(*s) + len + 1);

	memcpy(s->value, value, len);
	s->len = len;
	s->next = r->secrets;
	r->secrets = s;
}

/* ---- the loop side ---- */

static void on_handle_closed(uv_handle_t *hd);
static void drain(phg_http_t *h);

static void sock_close(http_sock_t *sk)
{
	phg_http_t *h = sk->h;

	if (sk->closing)
		return;
	sk->closing = 1;
	if (sk->prev != NULL)
		sk->prev->next = sk->next;
	else
		h->socks = sk->next;
	if (sk->next != NULL)
		sk->next->prev = sk->prev;
	sk->prev = sk->next = NULL;
	uv_poll_stop(&sk->poll);
	uv_close((uv_handle_t *)&sk->poll, on_handle_closed);
}

static void action(phg_http_t *h, curl_socket_t s, int flags)
{
	int running = 0;

	if (h->multi == NULL)
		return;
	curl_multi_socket_action(h->multi, s, flags, &running);
	drain(h);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	http_sock_t *sk = p->data;
	int flags = 0;

	if (sk->closing)
		return;
	if (status < 0) {
		/* libuv has stopped the poll.  Tell curl, together with the
		 * directions it waits for: then it does not stop at a bare
		 * "select/poll returned error" but reads (or writes) and gets the
		 * socket's own error ("Connection reset by peer") with its errno.
		 * The transfer fails either way; its timeout bounds the rest. */
		flags = CURL_CSELECT_ERR;
		if (sk->want & CURL_POLL_IN)
			flags |= CURL_CSELECT_IN;
		if (sk->want & CURL_POLL_OUT)
			flags |= CURL_CSELECT_OUT;
	} else {
		if (events & UV_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events & UV_WRITABLE)
			flags |= CURL_CSELECT_OUT;
	}
	action(sk->h, sk->fd, flags);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	phg_http_t *h = userp;
	http_sock_t *sk = socketp;
	int events = 0;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		if (sk != NULL) {
			if (!h->closing)
				curl_multi_assign(h->multi, s, NULL);
			sock_close(sk);
		}
		return 0;
	}
	if (sk != NULL && sk->closing)
		return 0; /* phg_http_close is tearing down */
	if (sk == NULL) {
		if (h->closing)
			return -1;
		sk = phg_calloc(1, sizeof(*sk));
		sk->fd = s;
		sk->h = h;
		if (uv_poll_init_socket(h->loop, &sk->poll, s) != 0) {
			free(sk);
			return -1; /* curl fails the transfers using it */
		}
		sk->poll.data = sk;
		h->handles++;
		sk->next = h->socks;
		if (h->socks != NULL)
			h->socks->prev = sk;
		h->socks = sk;
		curl_multi_assign(h->multi, s, sk);
	}
	sk->want = what;
	if (what & CURL_POLL_IN)
		events |= UV_READABLE;
	if (what & CURL_POLL_OUT)
		events |= UV_WRITABLE;
	if (uv_poll_start(&sk->poll, events, on_poll) != 0) {
		curl_multi_assign(h->multi, s, NULL);
		sock_close(sk);
		return -1;
	}
	return 0;
}

static void on_timer(uv_timer_t *t)
{
	action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	phg_http_t *h = userp;

	(void)multi;
	if (h->closing)
		return 0;
	if (timeout_ms < 0)
		uv_timer_stop(&h->timer);
	else /* 0 too: run from the loop, never from inside this callback */
		uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
	return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
	phg_http_req_t *r = userp;
	size_t n = size * nmemb;
	size_t take = n;

	if (r->body_len >= PHG_HTTP_BODY_MAX) {
		r->body_truncated = 1;
		return n; /* keep draining */
	}
	if (take > PHG_HTTP_BODY_MAX - r->body_len) {
		take = PHG_HTTP_BODY_MAX - r->body_len;
		r->body_truncated = 1;
	}
	if (r->body_len + take + 1 > r->body_cap) {
		size_t ncap = r->body_cap ? r->body_cap : 4096;
		char *p;

		while (ncap < r->body_len + take + 1)
			ncap *= 2;
		if (ncap > PHG_HTTP_BODY_MAX + 1)
			ncap = PHG_HTTP_BODY_MAX + 1;
		p = realloc(r->body, ncap);
		if (p == NULL) {
			r->body_oom = 1;
			return 0; /* CURLE_WRITE_ERROR */
		}
		r->body = p;
		r->body_cap = ncap;
	}
	memcpy(r->body + r->body_len, data, take);
	r->body_len += take;
	r->body[r->body_len] = '\0';
	return n;
}

/* ---- requests ---- */

static void req_unlink(phg_http_t *h, phg_http_req_t *r)
{
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		h->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	h->pending--;
}

static void req_free(phg_http_req_t *r)
{
	if (r->easy != NULL)
		curl_easy_cleanup(r->easy);
	slist_wipe_free(r->headers);
	secrets_free(r->secrets);
	free(r->body);
	free(r);
}

/* Does curl's error text hold a value substituted into a header? */
static int errbuf_has_secret(const phg_http_req_t *r)
{
	const http_secret_t *s;

	for (s = r->secrets; s != NULL; s = s->next)
		if (strstr(r->errbuf, s->value) != NULL)
			return 1;
	return 0;
}

static int is_tls_error(CURLcode c)
{
	switch (c) {
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CLIENTCERT:
	case CURLE_USE_SSL_FAILED:
		return 1;
	default:
		return 0;
	}
}

static void describe_error(phg_http_req_t *r, CURLcode code, char *out, size_t len)
{
	const char *detail = r->errbuf;
	long oserr = 0;

	/* curl's own text, unless it is empty or holds a secret */
	if (detail[0] == '\0' || errbuf_has_secret(r))
		detail = curl_easy_strerror(code);
	curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &oserr);
	switch (code) {
	case CURLE_OPERATION_TIMEDOUT:
		snprintf(out, len, "timed out after %" PRIu64 " ms", r->timeout_ms);
		return;
	case CURLE_COULDNT_CONNECT:
		if (oserr == ECONNREFUSED)
			snprintf(out, len, "connection refused");
		else
			snprintf(out, len, "could not connect: %s", detail);
		return;
	case CURLE_COULDNT_RESOLVE_HOST: {
		static const char pre[] = "Could not resolve host: ";

		if (strncmp(detail, pre, sizeof(pre) - 1) == 0)
			snprintf(out, len, "could not resolve host \"%s\"", detail + sizeof(pre) - 1);
		else
			snprintf(out, len, "could not resolve host");
		return;
	}
	case CURLE_COULDNT_RESOLVE_PROXY:
		snprintf(out, len, "could not resolve proxy: %s", detail);
		return;
	case CURLE_GOT_NOTHING:
		snprintf(out, len, "connection closed without a response");
		return;
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
		if (oserr == ECONNRESET)
			snprintf(out, len, "connection reset by peer");
		else
			snprintf(out, len, "connection error: %s", detail);
		return;
	case CURLE_WRITE_ERROR:
		if (r->body_oom) {
			snprintf(out, len, "out of memory reading the response body");
			return;
		}
		break;
	case CURLE_UNSUPPORTED_PROTOCOL:
		snprintf(out, len, "unsupported protocol (only http and https are allowed): %s", detail);
		return;
	case CURLE_URL_MALFORMAT:
		snprintf(out, len, "malformed URL: %s", detail);
		return;
	default:
		break;
	}
	if (is_tls_error(code))
		snprintf(out, len, "TLS: %s", detail);
	else
		snprintf(out, len, "%s", detail);
}

static void finish(phg_http_t *h, phg_http_req_t *r, CURLcode code)
{
	phg_http_result_t res;

	memset(&res, 0, sizeof(res));
	res.latency_ms = (uv_hrtime() - r->start_ns) / 1000000u;
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
	if (code == CURLE_OK) {
		res.transport_ok = 1;
	} else {
		res.transport_ok = 0;
		describe_error(r, code, res.reason, sizeof(res.reason));
	}
	res.body = r->body != NULL ? r->body : "";
	res.body_len = r->body_len;
	res.body_truncated = r->body_truncated;

	curl_multi_remove_handle(h->multi, r->easy);
	req_unlink(h, r);
	r->done = 1;
	r->cb(r, &res, r->arg);
	req_free(r);
}

static void drain(phg_http_t *h)
{
	CURLMsg *msg;
	int left;

	/* h->multi turns NULL when a callback closed the client */
	while (h->multi != NULL && (msg = curl_multi_info_read(h->multi, &left)) != NULL) {
		char *priv = NULL;
		phg_http_req_t *r;
		CURLcode code;

		if (msg->msg != CURLMSG_DONE)
			continue;
		code = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
		r = (phg_http_req_t *)(void *)priv;
		if (r == NULL) {
			curl_multi_remove_handle(h->multi, msg->easy_handle);
			continue;
		}
		finish(h, r, code); /* msg is invalid from here on */
	}
}

int phg_http_init(uv_loop_t *loop, phg_http_t **out)
{
	phg_http_t *h;

	*out = NULL;
	if (!curl_ready) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return PHG_ENOMEM;
		curl_ready = 1;
	}
	h = phg_calloc(1, sizeof(*h));
	h->loop = loop;
	h->multi = curl_multi_init();
	if (h->multi == NULL) {
		free(h);
		return PHG_ENOMEM;
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	uv_timer_init(loop, &h->timer);
	h->timer.data = h;
	h->handles = 1;
	*out = h;
	return 0;
}

/* Turn @o's headers into a curl_slist, expanded. */
static int build_headers(phg_http_req_t *r, const phg_http_opts_t *o, phg_err_t *err)
{
	phg_buf_t b;
	int has_ctype = 0;
	int rc = 0;

	phg_buf_init(&b, HTTP_HEADER_MAX);
	for (size_t i = 0; o->headers != NULL && i < o->headers->n; i++) {
		const phg_kv_t *kv = &o->headers->v[i];
		const char *value = kv->value != NULL ? kv->value : "";
		struct curl_slist *l;
		size_t vstart;

		if (!is_token(kv->key)) {
			rc = phg_err_set(err, PHG_EINVAL, "invalid header name \"%.64s\"",
			                 kv->key != NULL ? kv->key : "");
			break;
		}
		if (strcasecmp(kv->key, "Content-Type") == 0)
			has_ctype = 1;
		phg_buf_reset(&b);
		if ((rc = phg_buf_adds(&b, kv->key)) != 0) {
			rc = phg_err_set(err, rc, "header \"%.64s\" is too long", kv->key);
			break;
		}
		if ((rc = phg_buf_add(&b, ": ", 2)) != 0) {
			rc = phg_err_set(err, rc, "header \"%.64s\" is too long", kv->key);
			break;
		}
		vstart = b.len;
		if ((rc = expand(value, &b, err, remember_secret, r)) != 0) {
			phg_err_detail(err, "In the value of header \"%s\".", kv->key);
			break;
		}
		if (strpbrk(b.data + vstart, "\r\n") != NULL) {
			rc = phg_err_set(err, PHG_EINVAL, "header \"%s\" has a line break in its value",
			                 kv->key);
			break;
		}
		if (b.len == vstart) {
			/* "Name;" sends an empty header ("Name:" would remove it) */
			b.data[vstart - 2] = ';';
			b.data[vstart - 1] = '\0';
			b.len = vstart - 1;
		}
		l = curl_slist_append(r->headers, b.data);
		if (l == NULL) {
			rc = phg_err_set(err, PHG_ENOMEM, "out of memory");
			break;
		}
		r->headers = l;
	}
	if (b.data != NULL)
		wipe(b.data, b.cap);
	phg_buf_free(&b);
	if (rc != 0)
		return rc;
	if (!has_ctype && o->body != NULL) {
		const char *p = o->body;

		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		if (*p == '{' || *p == '[') {
			struct curl_slist *l = curl_slist_append(r->headers,
			                                         "Content-Type: application/json");
			if (l == NULL)
				return phg_err_set(err, PHG_ENOMEM, "out of memory");
			r->headers = l;
		}
	}
	{
		struct curl_slist *l = curl_slist_append(r->headers, "Expect:");

		if (l == NULL)
			return phg_err_set(err, PHG_ENOMEM, "out of memory");
		r->headers = l;
	}
	return 0;
}

int phg_http_request(phg_http_t *h, phg_http_req_t **out, const phg_http_opts_t *o,
                     phg_http_cb cb, void *arg, phg_err_t *err)
{
	phg_http_req_t *r;
	const char *method;
	phg_buf_t url;
	CURL *e;
	int bad = 0;
	int rc;

	if (out != NULL)
		*out = NULL;
	if (h == NULL || o == NULL || cb == NULL || o->url == NULL || o->url[0] == '\0')
		return phg_err_set(err, PHG_EINVAL, "no URL to request");
	if (h->closing)
		return phg_err_set(err, PHG_EINVAL, "the HTTP client is shutting down");
	method = o->method != NULL && o->method[0] != '\0' ? o->method : "GET";
	if (!is_token(method))
		return phg_err_set(err, PHG_EINVAL, "invalid HTTP method \"%.32s\"", method);

	r = phg_calloc(1, sizeof(*r));
	r->h = h;
	r->cb = cb;
	r->arg = arg;
	r->timeout_ms = o->timeout_ms != 0 ? o->timeout_ms : HTTP_DEFAULT_TIMEOUT_MS;
	rc = build_headers(r, o, err);
	if (rc != 0) {
		req_free(r);
		return rc;
	}
	/* ${VAR} in the URL too (e.g. a port chosen at run time); libcurl copies
	 * the string, so the expansion is freed below */
	phg_buf_init(&url, 64 * 1024);
	rc = phg_expand_env(o->url, &url, err);
	if (rc != 0) {
		phg_buf_free(&url);
		req_free(r);
		return rc;
	}
	e = r->easy = curl_easy_init();
	if (e == NULL) {
		phg_buf_free(&url);
		req_free(r);
		return phg_err_set(err, PHG_ENOMEM, "cannot create an HTTP request");
	}
	bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_URL, url.data != NULL ? url.data : "") != CURLE_OK;
	phg_buf_free(&url);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
	bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
	bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) !=
	       CURLE_OK;
#endif
	bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)r->timeout_ms) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "phasegate/" PHG_VERSION) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, r) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L) != CURLE_OK;
	if (strcmp(method, "HEAD") == 0) {
		bad |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L) != CURLE_OK;
	} else if (o->body != NULL || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	           strcmp(method, "PATCH") == 0) {
		const char *body = o->body != NULL ? o->body : "";

		/* size first: COPYPOSTFIELDS copies that many bytes */
		bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body)) !=
		       CURLE_OK;
		bad |= curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body) != CURLE_OK;
		if (strcmp(method, "POST") != 0)
			bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
	} else if (strcmp(method, "GET") != 0) {
		bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
	}
	if (bad) {
		req_free(r);
		return phg_err_set(err, PHG_EINVAL, "cannot set up the HTTP request to \"%.200s\"",
		                   o->url);
	}
	r->start_ns = uv_hrtime();
	if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
		req_free(r);
		return phg_err_set(err, PHG_ENOMEM, "cannot start the HTTP request");
	}
	r->next = h->reqs;
	if (h->reqs != NULL)
		h->reqs->prev = r;
	h->reqs = r;
	h->pending++;
	if (out != NULL)
		*out = r;
	return 0;
}

void phg_http_cancel(phg_http_t *h, phg_http_req_t *req)
{
	if (h == NULL || req == NULL || req->done)
		return; /* its callback is running: it is freed when that returns */
	if (h->multi != NULL)
		curl_multi_remove_handle(h->multi, req->easy);
	req_unlink(h, req);
	req_free(req);
}

size_t phg_http_pending(const phg_http_t *h)
{
	return h != NULL ? h->pending : 0;
}

static void on_handle_closed(uv_handle_t *hd)
{
	phg_http_t *h;

	if (hd->type == UV_POLL) {
		http_sock_t *sk = hd->data;

		h = sk->h;
		free(sk);
	} else {
		h = hd->data;
	}
	if (--h->handles == 0 && h->closing) {
		void (*cb)(void *) = h->close_cb;
		void *arg = h->close_arg;

		free(h);
		if (cb != NULL)
			cb(arg);
	}
}

void phg_http_close(phg_http_t *h, void (*cb)(void *arg), void *arg)
{
	if (h == NULL || h->closing)
		return;
	h->closing = 1;
	h->close_cb = cb;
	h->close_arg = arg;
	while (h->reqs != NULL)
		phg_http_cancel(h, h->reqs);
	/* stop watching before curl closes the sockets */
	while (h->socks != NULL)
		sock_close(h->socks);
	curl_multi_cleanup(h->multi);
	h->multi = NULL;
	uv_timer_stop(&h->timer);
	uv_close((uv_handle_t *)&h->timer, on_handle_closed);
}
