/*
 * httpd.c - the tiny HTTP/1.1 server of httpd.h.
 *
 * Each connection is a small state machine (httpd_conn_state_t) changed by
 * conn_set_state() only:
 *
 *   READING --request--> PENDING --httpd_respond--> WRITING --written-->
 *      READING (keep-alive) | DRAINING (close: FIN sent, read to EOF)
 *   any --error, EOF, abort, httpd_close--> CLOSING --close cb--> freed
 *
 * Input is buffered per connection (capped); a request is copied out of
 * that buffer when it is complete, so pipelined bytes read while the
 * application holds the request never move the request's strings.
 */
#include "httpd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* A complete request is at most this big; more is never parsed. */
#define HTTPD_REQ_MAX (HTTPD_HEAD_MAX + HTTPD_BODY_MAX)
/* The input buffer: a complete request, plus one read. */
#define HTTPD_IN_CAP (HTTPD_REQ_MAX + sizeof(((httpd_server_t *)0)->rbuf))

struct httpd_conn_s {
	uv_tcp_t tcp;
	uv_shutdown_t shutdown_req;
	httpd_server_t *srv;
	httpd_conn_t *prev;
	httpd_conn_t *next;
	httpd_conn_state_t state;
	void *data;
	int reading;       /* uv_read_start() active */
	int close_after;   /* close once the answer is written */
	/* buffered input */
	char *in;
	size_t in_len;
	size_t in_cap;
	/* the request being collected, or held by the application */
	int have_head;     /* head parsed, waiting for the body */
	size_t head_len;   /* bytes of in[] that the head takes */
	size_t body_len;   /* Content-Length */
	int expect_continue;
	int is_head;       /* HEAD: answer without the body */
	char *head;        /* parsed copy of the head; the strings point here */
	char *body;
	httpd_header_t *hdrs;
	httpd_req_t req;
};

typedef struct httpd_write_s {
	uv_write_t req;
	httpd_conn_t *conn;
	int final;         /* the answer, not an interim 100 Continue */
	size_t len;
	char data[];
} httpd_write_t;

static void conn_process(httpd_conn_t *c);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

const char *httpd_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

/* ---- connection state, lifetime ---- */

static const char *const httpd_conn_state_names[] = {
	"reading", "pending", "writing", "draining", "closing",
};

/* The one place a connection changes state; HTTPD_DEBUG=1 logs it. */
static void conn_set_state(httpd_conn_t *c, httpd_conn_state_t s)
{
	if (c->srv->debug && c->state != s)
		fprintf(stderr, "httpd: conn %p: %s -> %s\n", (void *)c,
		        httpd_conn_state_names[c->state], httpd_conn_state_names[s]);
	c->state = s;
}

static void server_maybe_closed(httpd_server_t *srv)
{
	httpd_close_cb cb;

	if (!srv->closing || srv->open_handles > 0 || srv->close_cb == NULL)
		return;
	cb = srv->close_cb;
	srv->close_cb = NULL;
	cb(srv);
}

static void req_reset(httpd_conn_t *c)
{
	free(c->head);
	free(c->body);
	free(c->hdrs);
	c->head = NULL;
	c->body = NULL;
	c->hdrs = NULL;
	c->have_head = 0;
	c->head_len = 0;
	c->body_len = 0;
	c->expect_continue = 0;
	c->is_head = 0;
	memset(&c->req, 0, sizeof(c->req));
}

static void on_conn_close(uv_handle_t *h)
{
	httpd_conn_t *c = h->data;
	httpd_server_t *srv = c->srv;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	srv->nconns--;
	srv->open_handles--;
	req_reset(c);
	free(c->in);
	free(c);
	server_maybe_closed(srv);
}

/* Close @c; with @notify, tell the application about a request it holds. */
static void conn_close(httpd_conn_t *c, int notify)
{
	httpd_conn_state_t was = c->state;

	if (was == HTTPD_CONN_CLOSING)
		return;
	conn_set_state(c, HTTPD_CONN_CLOSING);
	if (was == HTTPD_CONN_PENDING && notify && c->srv->abort_cb != NULL)
		c->srv->abort_cb(c);
	uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

void httpd_conn_abort(httpd_conn_t *conn, int reset)
{
	if (conn->state == HTTPD_CONN_CLOSING)
		return;
	conn_set_state(conn, HTTPD_CONN_CLOSING);
	if (reset && uv_tcp_close_reset(&conn->tcp, on_conn_close) == 0)
		return;
	uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}

void httpd_conn_set_data(httpd_conn_t *conn, void *data)
{
	conn->data = data;
}

void *httpd_conn_get_data(const httpd_conn_t *conn)
{
	return conn->data;
}

httpd_server_t *httpd_conn_server(const httpd_conn_t *conn)
{
	return conn->srv;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	httpd_conn_t *c = h->data;

	(void)suggested;
	/* One buffer for all connections: read_cb consumes it before the next
	 * alloc_cb on this single-threaded loop. */
	buf->base = c->srv->rbuf;
	buf->len = sizeof(c->srv->rbuf);
}

static int in_append(httpd_conn_t *c, const char *p, size_t n)
{
	size_t want;
	char *q;

	if (n > HTTPD_IN_CAP - c->in_len)
		return UV_ENOBUFS;
	want = c->in_len + n;
	if (want > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : 4096;

		while (cap < want)
			cap *= 2;
		if (cap > HTTPD_IN_CAP)
			cap = HTTPD_IN_CAP;
		q = realloc(c->in, cap);
		if (q == NULL)
			return UV_ENOMEM;
		c->in = q;
		c->in_cap = cap;
	}
	memcpy(c->in + c->in_len, p, n);
	c->in_len += n;
	return 0;
}

static void in_consume(httpd_conn_t *c, size_t n)
{
	if (n >= c->in_len) {
		c->in_len = 0;
		return;
	}
	memmove(c->in, c->in + n, c->in_len - n);
	c->in_len -= n;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(httpd_conn_t *c)
{
	if (c->reading || c->state == HTTPD_CONN_CLOSING)
		return;
	if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
		conn_close(c, 1);
		return;
	}
	c->reading = 1;
}

static void conn_read_stop(httpd_conn_t *c)
{
	if (!c->reading)
		return;
	uv_read_stop((uv_stream_t *)&c->tcp);
	c->reading = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	httpd_conn_t *c = s->data;

	if (nread == 0)
		return;
	if (nread < 0) { /* EOF or error: the peer is gone */
		c->reading = 0;
		conn_close(c, 1);
		return;
	}
	switch (c->state) {
	case HTTPD_CONN_CLOSING:
	case HTTPD_CONN_DRAINING:
		return; /* discarded */
	case HTTPD_CONN_WRITING:
		if (c->close_after)
			return; /* nothing more will be parsed */
		break;
	case HTTPD_CONN_READING:
	case HTTPD_CONN_PENDING:
		break;
	}
	if (in_append(c, buf->base, (size_t)nread) != 0) {
		conn_close(c, 1);
		return;
	}
	if (c->state == HTTPD_CONN_READING)
		conn_process(c);
	/* Backpressure: while the application holds a request, buffer at most
	 * one more request's worth of pipelined input. */
	if (c->state != HTTPD_CONN_READING && c->state != HTTPD_CONN_CLOSING &&
	    c->in_len >= HTTPD_REQ_MAX)
		conn_read_stop(c);
}

/* ---- writing ---- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
	httpd_conn_t *c = req->data;

	if (c->state == HTTPD_CONN_CLOSING)
		return;
	if (status < 0)
		conn_close(c, 0);
	/* else: read (and discard) until the peer closes too */
}

static void on_write(uv_write_t *req, int status)
{
	httpd_write_t *w = req->data;
	httpd_conn_t *c = w->conn;
	int final = w->final;

	free(w);
	if (c->state == HTTPD_CONN_CLOSING)
		return;
	if (status < 0) {
		conn_close(c, 1);
		return;
	}
	if (!final)
		return;
	req_reset(c);
	if (c->close_after) {
		conn_set_state(c, HTTPD_CONN_DRAINING);
		c->in_len = 0;
		c->shutdown_req.data = c;
		if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp,
		                on_shutdown) != 0) {
			conn_close(c, 0);
			return;
		}
		conn_read_start(c);
		return;
	}
	conn_set_state(c, HTTPD_CONN_READING);
	conn_read_start(c);
	conn_process(c);
}

static int conn_write(httpd_conn_t *c, const char *hdr, size_t hlen,
                      const char *body, size_t blen, int final)
{
	httpd_write_t *w;
	uv_buf_t b;
	int rc;

	w = malloc(sizeof(*w) + hlen + blen);
	if (w == NULL)
		return UV_ENOMEM;
	w->conn = c;
	w->final = final;
	w->len = hlen + blen;
	memcpy(w->data, hdr, hlen);
	if (blen > 0)
		memcpy(w->data + hlen, body, blen);
	w->req.data = w;
	b = uv_buf_init(w->data, (unsigned int)w->len);
	rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
	if (rc != 0)
		free(w);
	return rc;
}

/* The answer to the current request (or to a malformed one). */
static int conn_answer(httpd_conn_t *c, int status, const char *content_type,
                       const char *body, size_t len)
{
	char hdr[512];
	int n;
	int rc;

	if (c->srv->closing)
		c->close_after = 1;
	if (content_type != NULL)
		n = snprintf(hdr, sizeof(hdr),
		             "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
		             "Content-Length: %zu\r\nConnection: %s\r\n\r\n",
		             status, httpd_reason(status), content_type, len,
		             c->close_after ? "close" : "keep-alive");
	else
		n = snprintf(hdr, sizeof(hdr),
		             "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n"
		             "Connection: %s\r\n\r\n",
		             status, httpd_reason(status), len,
		             c->close_after ? "close" : "keep-alive");
	if (n < 0 || (size_t)n >= sizeof(hdr))
		return UV_EINVAL;
	conn_set_state(c, HTTPD_CONN_WRITING);
	rc = conn_write(c, hdr, (size_t)n, body, c->is_head ? 0 : len, 1);
	if (rc != 0)
		conn_close(c, 0);
	return rc;
}

int httpd_respond(httpd_conn_t *conn, int status, const char *content_type,
                  const char *body, size_t len)
{
	if (conn == NULL || conn->state != HTTPD_CONN_PENDING)
		return UV_EINVAL;
	if (status < 200 || status > 599 || (body == NULL && len > 0))
		return UV_EINVAL;
	if (content_type != NULL && strpbrk(content_type, "\r\n") != NULL)
		return UV_EINVAL;
	conn->close_after = !conn->req.keep_alive;
	return conn_answer(conn, status, content_type, body == NULL ? "" : body,
	                   len);
}

/* Answer a request we could not parse, then close. */
static void conn_fail(httpd_conn_t *c, int status)
{
	char body[64];
	int n;

	n = snprintf(body, sizeof(body), "%s\n", httpd_reason(status));
	c->close_after = 1;
	c->is_head = 0;
	if (conn_answer(c, status, "text/plain; charset=utf-8", body,
	                (size_t)n) == 0)
		c->in_len = 0;
}

/* ---- parsing ---- */

static int is_tchar(int ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	    (ch >= '0' && ch <= '9'))
		return 1;
	return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int is_token(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!is_tchar((unsigned char)*s))
			return 0;
	return 1;
}

/* Does the comma-separated list @v contain @tok (case-insensitive)? */
static int list_has(const char *v, const char *tok)
{
	size_t tl = strlen(tok);

	while (*v != '\0') {
		const char *e;
		size_t n;

		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		e = v;
		while (*e != '\0' && *e != ',')
			e++;
		n = (size_t)(e - v);
		while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
			n--;
		if (n == tl && strncasecmp(v, tok, tl) == 0)
			return 1;
		v = e;
	}
	return 0;
}

/* Length of the head (through the empty line) at the start of @p, or 0. */
static size_t find_head_end(const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < len && p[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* Next line of the head, NUL-terminated in place (CRLF or LF); NULL at the
 * end.  A CR anywhere else makes *bad = 1. */
static char *next_line(char **cur, char *end, int *bad)
{
	char *s = *cur;
	char *nl;

	if (s >= end)
		return NULL;
	nl = memchr(s, '\n', (size_t)(end - s));
	if (nl == NULL)
		return NULL;
	*nl = '\0';
	if (nl > s && nl[-1] == '\r')
		nl[-1] = '\0';
	if (strchr(s, '\r') != NULL)
		*bad = 1;
	*cur = nl + 1;
	return s;
}

static int parse_content_length(const char *v, size_t *out)
{
	size_t n = 0;

	if (*v == '\0')
		return 400;
	for (; *v != '\0'; v++) {
		if (*v < '0' || *v > '9')
			return 400;
		if (n <= HTTPD_BODY_MAX)
			n = n * 10 + (size_t)(*v - '0');
	}
	*out = n;
	return 0;
}

/* Parse the head in c->in[0 .. head_len).  0 or the HTTP status to fail with. */
static int parse_head(httpd_conn_t *c, size_t head_len)
{
	char *cur;
	char *end;
	char *line;
	char *sp1;
	char *sp2;
	const char *ver;
	size_t maxh = 0;
	size_t i;
	int bad = 0;
	int have_cl = 0;
	int nhost = 0;
	size_t cl = 0;

	if (memchr(c->in, '\0', head_len) != NULL)
		return 400;
	/* the head, then room for the path (shorter than the head) */
	c->head = malloc(2 * head_len + 2);
	if (c->head == NULL)
		return 500;
	memcpy(c->head, c->in, head_len);
	c->head[head_len] = '\0';
	for (i = 0; i < head_len; i++)
		if (c->head[i] == '\n')
			maxh++;
	c->hdrs = calloc(maxh + 1, sizeof(*c->hdrs));
	if (c->hdrs == NULL)
		return 500;
	cur = c->head;
	end = c->head + head_len;

	/* request line: METHOD SP TARGET SP HTTP/1.x */
	line = next_line(&cur, end, &bad);
	if (line == NULL || bad)
		return 400;
	sp1 = strchr(line, ' ');
	if (sp1 == NULL)
		return 400;
	*sp1 = '\0';
	sp2 = strchr(sp1 + 1, ' ');
	if (sp2 == NULL)
		return 400;
	*sp2 = '\0';
	ver = sp2 + 1;
	if (!is_token(line) || strlen(line) > 32)
		return 400;
	c->req.method = line;
	c->req.target = sp1 + 1;
	if (c->req.target[0] != '/')
		return 400;
	for (const char *t = c->req.target; *t != '\0'; t++)
		if ((unsigned char)*t <= 0x20 || *t == 0x7f)
			return 400;
	if (strcmp(ver, "HTTP/1.1") == 0)
		c->req.minor = 1;
	else if (strcmp(ver, "HTTP/1.0") == 0)
		c->req.minor = 0;
	else if (strncmp(ver, "HTTP/", 5) == 0 && ver[5] >= '0' &&
	         ver[5] <= '9' && ver[6] == '.' && ver[7] >= '0' &&
	         ver[7] <= '9' && ver[8] == '\0')
		return 505;
	else
		return 400;
	c->req.keep_alive = c->req.minor >= 1;

	/* header fields */
	while ((line = next_line(&cur, end, &bad)) != NULL) {
		char *colon;
		char *v;
		char *ve;

		if (bad)
			return 400;
		if (line[0] == '\0')
			break; /* the empty line */
		if (line[0] == ' ' || line[0] == '\t')
			return 400; /* obsolete line folding */
		colon = strchr(line, ':');
		if (colon == NULL || colon == line)
			return 400;
		*colon = '\0';
		if (!is_token(line))
			return 400;
		v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		ve = v + strlen(v);
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			*--ve = '\0';
		for (const char *t = v; *t != '\0'; t++)
			if (((unsigned char)*t < 0x20 && *t != '\t') || *t == 0x7f)
				return 400;
		if (c->req.nheaders >= HTTPD_MAX_HEADERS)
			return 413;
		c->hdrs[c->req.nheaders].name = line;
		c->hdrs[c->req.nheaders].value = v;
		c->req.nheaders++;
	}
	c->req.headers = c->hdrs;

	for (i = 0; i < c->req.nheaders; i++) {
		const char *n = c->hdrs[i].name;
		const char *v = c->hdrs[i].value;

		if (strcasecmp(n, "Content-Length") == 0) {
			size_t x = 0;

			if (parse_content_length(v, &x) != 0)
				return 400;
			if (have_cl && x != cl)
				return 400;
			have_cl = 1;
			cl = x;
		} else if (strcasecmp(n, "Transfer-Encoding") == 0) {
			return 501;
		} else if (strcasecmp(n, "Host") == 0) {
			nhost++;
		} else if (strcasecmp(n, "Connection") == 0) {
			if (list_has(v, "close"))
				c->req.keep_alive = 0;
			else if (list_has(v, "keep-alive") && c->req.minor == 0)
				c->req.keep_alive = 1;
		} else if (strcasecmp(n, "Expect") == 0) {
			if (strcasecmp(v, "100-continue") == 0)
				c->expect_continue = c->req.minor >= 1;
			else
				return 417;
		}
	}
	if (nhost > 1 || (c->req.minor >= 1 && nhost == 0))
		return 400; /* RFC 9112 3.2: exactly one Host in HTTP/1.1 */
	if (cl > HTTPD_BODY_MAX)
		return 413;

	/* path: a copy of the target up to '?', after the head copy */
	{
		char *path = c->head + head_len + 1;
		const char *q = strchr(c->req.target, '?');
		size_t plen = q != NULL ? (size_t)(q - c->req.target)
		                        : strlen(c->req.target);

		memcpy(path, c->req.target, plen);
		path[plen] = '\0';
		c->req.path = path;
		c->req.query = q != NULL ? q + 1 : "";
	}
	c->is_head = strcmp(c->req.method, "HEAD") == 0;
	c->head_len = head_len;
	c->body_len = cl;
	c->have_head = 1;
	return 0;
}

/* Try to complete a request from the buffered input and hand it over. */
static void conn_process(httpd_conn_t *c)
{
	int status;

	if (c->state != HTTPD_CONN_READING)
		return;
	if (!c->have_head) {
		size_t skip = 0;
		size_t hl;

		/* RFC 9112 2.2: ignore empty lines before a request line */
		while (skip < c->in_len &&
		       (c->in[skip] == '\r' || c->in[skip] == '\n'))
			skip++;
		in_consume(c, skip);
		if (c->in_len == 0)
			return;
		hl = find_head_end(c->in, c->in_len < HTTPD_HEAD_MAX ?
		                              c->in_len : HTTPD_HEAD_MAX);
		if (hl == 0) {
			if (c->in_len >= HTTPD_HEAD_MAX)
				conn_fail(c, 413);
			return;
		}
		if (hl > HTTPD_HEAD_MAX) {
			conn_fail(c, 413);
			return;
		}
		status = parse_head(c, hl);
		if (status != 0) {
			conn_fail(c, status);
			return;
		}
		if (c->expect_continue && c->body_len > 0 &&
		    c->in_len < c->head_len + c->body_len) {
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

			if (conn_write(c, cont, sizeof(cont) - 1, NULL, 0, 0) != 0) {
				conn_close(c, 0);
				return;
			}
		}
	}
	if (c->in_len < c->head_len + c->body_len)
		return; /* the body is still coming */
	c->body = malloc(c->body_len + 1);
	if (c->body == NULL) {
		conn_fail(c, 500);
		return;
	}
	memcpy(c->body, c->in + c->head_len, c->body_len);
	c->body[c->body_len] = '\0';
	c->req.body = c->body;
	c->req.body_len = c->body_len;
	in_consume(c, c->head_len + c->body_len);
	conn_set_state(c, HTTPD_CONN_PENDING);
	c->srv->request_cb(c, &c->req);
}

/* ---- the listener ---- */

static void on_connection(uv_stream_t *server, int status)
{
	httpd_server_t *srv = server->data;
	httpd_conn_t *c;

	if (status < 0) {
		fprintf(stderr, "httpd: accept failed: %s\n", uv_strerror(status));
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		fprintf(stderr, "httpd: out of memory\n");
		return;
	}
	c->srv = srv;
	c->tcp.data = c;
	if (uv_tcp_init(srv->loop, &c->tcp) != 0) {
		free(c);
		return;
	}
	c->tcp.data = c;
	c->next = srv->conns;
	if (srv->conns != NULL)
		srv->conns->prev = c;
	srv->conns = c;
	srv->nconns++;
	srv->open_handles++;
	conn_set_state(c, HTTPD_CONN_READING);
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
	    srv->nconns > HTTPD_MAX_CONNS || srv->closing) {
		conn_close(c, 0);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	conn_read_start(c);
}

int httpd_init(uv_loop_t *loop, httpd_server_t *srv, httpd_request_cb request_cb,
               httpd_abort_cb abort_cb)
{
	int rc;

	if (loop == NULL || srv == NULL || request_cb == NULL)
		return UV_EINVAL;
	memset(srv, 0, sizeof(*srv));
	srv->loop = loop;
	srv->request_cb = request_cb;
	srv->abort_cb = abort_cb;
	srv->debug = getenv("HTTPD_DEBUG") != NULL;
	rc = uv_tcp_init(loop, &srv->tcp);
	if (rc != 0)
		return rc;
	srv->tcp.data = srv;
	srv->open_handles = 1;
	return 0;
}

int httpd_listen(httpd_server_t *srv, const char *host, int port, char *err,
                 size_t errlen)
{
	struct sockaddr_in addr;
	struct sockaddr_storage bound;
	int blen = (int)sizeof(bound);
	int rc;

	if (port < 0 || port > 65535) {
		set_err(err, errlen, "invalid port %d", port);
		return UV_EINVAL;
	}
	rc = uv_ip4_addr(host, port, &addr);
	if (rc != 0) {
		set_err(err, errlen, "invalid address \"%s\": %s", host,
		        uv_strerror(rc));
		return rc;
	}
	rc = uv_tcp_bind(&srv->tcp, (const struct sockaddr *)&addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&srv->tcp, 128, on_connection);
	if (rc == 0)
		rc = uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&bound, &blen);
	if (rc != 0) {
		set_err(err, errlen, "cannot listen on %s:%d: %s", host, port,
		        uv_strerror(rc));
		return rc;
	}
	srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
	srv->listening = 1;
	return 0;
}

static void on_listener_close(uv_handle_t *h)
{
	httpd_server_t *srv = h->data;

	srv->open_handles--;
	server_maybe_closed(srv);
}

void httpd_close(httpd_server_t *srv, httpd_close_cb cb)
{
	httpd_conn_t *c;

	if (srv->closing)
		return;
	srv->closing = 1;
	srv->close_cb = cb;
	uv_close((uv_handle_t *)&srv->tcp, on_listener_close);
	for (c = srv->conns; c != NULL; c = c->next)
		conn_close(c, 1);
}

const char *httpd_header(const httpd_req_t *req, const char *name)
{
	size_t i;

	for (i = 0; i < req->nheaders; i++)
		if (strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}

int httpd_parse_port(const char *s, int *port)
{
	char *end;
	long v;

	if (s == NULL || s[0] < '0' || s[0] > '9')
		return UV_EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > 65535)
		return UV_EINVAL;
	*port = (int)v;
	return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return uv_translate_sys_error(errno);
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int httpd_announce(const httpd_server_t *srv, const char *port_file, char *err,
                   size_t errlen)
{
	char tmp[4096];
	char line[16];
	int n;
	int fd;
	int rc;

	printf("listening on 127.0.0.1:%d\n", srv->port);
	fflush(stdout);
	if (port_file == NULL)
		return 0;
	n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", port_file, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		set_err(err, errlen, "port file name too long");
		return UV_ENAMETOOLONG;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = uv_translate_sys_error(errno);
		set_err(err, errlen, "cannot create \"%s\": %s", tmp, uv_strerror(rc));
		return rc;
	}
	n = snprintf(line, sizeof(line), "%d\n", srv->port);
	rc = write_all(fd, line, (size_t)n);
	if (close(fd) != 0 && rc == 0)
		rc = uv_translate_sys_error(errno);
	if (rc == 0 && rename(tmp, port_file) != 0)
		rc = uv_translate_sys_error(errno);
	if (rc != 0) {
		set_err(err, errlen, "cannot write port file \"%s\": %s", port_file,
		        uv_strerror(rc));
		unlink(tmp);
	}
	return rc;
}
