/*
 * pg.c - one asynchronous PostgreSQL connection on the libuv loop (pg.h).
 *
 * How the loop is kept free:
 *
 * - Connecting.  PQconnectStartParams and PQconnectPoll are non-blocking
 *   except for what libpq does on the side: host name lookups (getaddrinfo,
 *   for the first host in PQconnectStartParams and for every further host
 *   inside PQconnectPoll), ~/.pgpass and the service file, GSSAPI.  So each
 *   of these calls runs on the threadpool (uv_queue_work), one at a time;
 *   between two calls the loop waits with a uv_poll_t on PQsocket() for what
 *   libpq asked (READING/WRITING).  The step may close the socket and open
 *   another one, possibly with the same number, so the poll handle is closed
 *   before the step is queued and initialised again on PQsocket() once both
 *   the step and the close callback are done (pg_poll_sync).  Our own timer
 *   bounds the whole attempt: libpq ignores connect_timeout in async mode.
 *
 * - Queries.  PQsendQuery/PQsendQueryParams, then the PQflush loop (poll for
 *   UV_WRITABLE while PQflush returns 1), PQconsumeInput when readable, and
 *   PQgetResult only while PQisBusy() is false, until it returns NULL.
 *
 * - Cancel.  PQcancel opens its own connection and waits for the server: it
 *   runs on the threadpool.  A query issued while a cancel request is still
 *   in flight is held back until the request is done, so that the cancel
 *   cannot hit the wrong statement.
 *
 * Sockets and the poll handle: libuv's poll handle must never watch a file
 * descriptor that libpq has closed, or closing the handle later could remove
 * the epoll registration of whoever got the same number meanwhile.  Every
 * libpq call that can close the socket (PQconsumeInput, PQflush, ...) is
 * followed, before any callback runs, by a check that closes the handle
 * (pg_fail).  PQfinish only happens after the handle is closed
 * (pg_maybe_finish).
 *
 * Memory: nothing is freed inside a callback chain.  phg_pg_close() closes
 * the handles; PQfinish, PQfreeCancel and the close callback come when all
 * handle close callbacks and threadpool requests are done.
 */
#include "pg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

/* pg->poll_state */
enum { PG_POLL_NONE, PG_POLL_OPEN, PG_POLL_CLOSING };

/* pg_poll_sync(): PQsocket() is -1 (libpq dropped the connection) */
#define PG_NOSOCK 1

#define PG_MAX_PARAMS 65535 /* libpq's limit for PQsendQueryParams */
#define PG_COPY_REFUSED "COPY is not supported by phasegate"
#define PG_ERR_CONNECT "cannot connect to the database"
#define PG_ERR_LOST "lost connection to the database"

static void pg_on_poll(uv_poll_t *h, int status, int events);
static void pg_on_poll_close(uv_handle_t *h);
static void pg_fail(phg_pg_t *pg, int code, const char *why);
static void pg_maybe_finish(phg_pg_t *pg);

/* ------------------------------------------------------------- helpers */

static const char *pg_state_name(phg_pg_state_t s)
{
	switch (s) {
	case PHG_PG_IDLE:
		return "idle";
	case PHG_PG_CONNECTING:
		return "connecting";
	case PHG_PG_READY:
		return "ready";
	case PHG_PG_BUSY:
		return "busy";
	case PHG_PG_BROKEN:
		return "broken";
	case PHG_PG_CLOSING:
		return "closing";
	case PHG_PG_CLOSED:
		return "closed";
	}
	return "?";
}

static void pg_log(const phg_pg_t *pg, phg_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void pg_log(const phg_pg_t *pg, phg_log_level_t level, const char *fmt, ...)
{
	phg_logctx_t ctx;
	va_list ap;

	memset(&ctx, 0, sizeof(ctx));
	ctx.conn = pg->name;
	ctx.pid = pg->backend_pid;
	va_start(ap, fmt);
	phg_vlog(level, &ctx, fmt, ap);
	va_end(ap);
}

static void pg_log_err(const phg_pg_t *pg, phg_log_level_t level,
                       const phg_err_t *err)
{
	phg_logctx_t ctx;

	memset(&ctx, 0, sizeof(ctx));
	ctx.conn = pg->name;
	ctx.pid = pg->backend_pid;
	phg_log_err(level, &ctx, err);
}

/* The libpq connection, also while connecting (only between two steps:
 * while one runs on the threadpool, the loop thread leaves it alone). */
static PGconn *pg_pq(const phg_pg_t *pg)
{
	return pg->conn != NULL ? pg->conn : pg->cconn;
}

/* Overwrite a string that may hold a password, then free it. */
static void pg_wipe_free(char *s)
{
	volatile char *p = s;

	if (s == NULL)
		return;
	while (*p != '\0')
		*p++ = '\0';
	free(s);
}

/* @src on one line: newlines and tabs become spaces, no trailing blanks. */
static void pg_one_line(char *dst, size_t cap, const char *src)
{
	size_t n = 0;

	for (; *src != '\0' && n + 1 < cap; src++)
		dst[n++] = (*src == '\n' || *src == '\r' || *src == '\t') ? ' ' : *src;
	while (n > 0 && dst[n - 1] == ' ')
		n--;
	dst[n] = '\0';
}

/*
 * Split libpq's multi-line message @m: its first line into @first, the
 * following lines (libpq indents them with a tab), trimmed and joined by a
 * space, into @rest.
 */
static void pg_split_msg(const char *m, char *first, size_t fcap, char *rest,
                         size_t rcap)
{
	size_t n, len = 0;
	int w;

	n = strcspn(m, "\n");
	snprintf(first, fcap, "%.*s", (int)n, m);
	pg_one_line(first, fcap, first);
	rest[0] = '\0';
	m += n;
	while (*m == '\n') {
		m++;
		m += strspn(m, " \t");
		n = strcspn(m, "\n");
		if (n > 0 && len + 1 < rcap) {
			w = snprintf(rest + len, rcap - len, "%s%.*s", len > 0 ? " " : "",
			             (int)n, m);
			if (w > 0)
				len += (size_t)w < rcap - len ? (size_t)w : rcap - len - 1;
		}
		m += n;
	}
	pg_one_line(rest, rcap, rest);
}

/* Replace @s (capacity @cap) by the contents of @b; a message that cannot
 * be rebuilt is withheld rather than shown unredacted. */
static void pg_replace(char *s, size_t cap, phg_buf_t *b, int ok)
{
	if (ok && b->data != NULL)
		snprintf(s, cap, "%s", b->data);
	else if (!ok)
		snprintf(s, cap, "(message withheld: it may contain the password)");
	phg_buf_free(b);
}

/* Replace every occurrence of @secret in @s (capacity @cap) by asterisks.
 * libpq does not print passwords; this makes sure of it. */
static void pg_redact(char *s, size_t cap, const char *secret)
{
	const char *p = s, *hit;
	size_t slen;
	phg_buf_t b;
	int ok = 1;

	if (secret == NULL || secret[0] == '\0' || strstr(s, secret) == NULL)
		return;
	slen = strlen(secret);
	phg_buf_init(&b, 64 * 1024);
	while (ok && (hit = strstr(p, secret)) != NULL) {
		ok = phg_buf_add(&b, p, (size_t)(hit - p)) == 0 &&
		     phg_buf_adds(&b, "********") == 0;
		p = hit + slen;
	}
	ok = ok && phg_buf_adds(&b, p) == 0;
	pg_replace(s, cap, &b, ok);
}

/* Does @hay contain the @n bytes at @needle? */
static int pg_contains(const char *hay, const char *needle, size_t n)
{
	for (; *hay != '\0'; hay++)
		if (strncmp(hay, needle, n) == 0)
			return 1;
	return 0;
}

/*
 * libpq's parse errors quote pieces of the connection string, sometimes all
 * of it ("unexpected character ... in URI: \"postgresql://u:pw@...\"").  As
 * we cannot tell which piece is the password when parsing failed, every
 * quoted piece longer than one character that comes from @conninfo is
 * replaced by "***".
 */
static void pg_redact_quoted(char *s, size_t cap, const char *conninfo)
{
	const char *p = s, *q, *e;
	size_t len;
	phg_buf_t b;
	int ok = 1;

	phg_buf_init(&b, 64 * 1024);
	while (ok && (q = strchr(p, '"')) != NULL && (e = strchr(q + 1, '"')) != NULL) {
		len = (size_t)(e - q - 1);
		ok = phg_buf_add(&b, p, (size_t)(q - p) + 1) == 0;
		if (ok && len >= 2 && pg_contains(conninfo, q + 1, len))
			ok = phg_buf_adds(&b, "***") == 0;
		else if (ok)
			ok = phg_buf_add(&b, q + 1, len) == 0;
		ok = ok && phg_buf_adds(&b, "\"") == 0;
		p = e + 1;
	}
	ok = ok && phg_buf_adds(&b, p) == 0;
	pg_replace(s, cap, &b, ok);
}

/* @e := "@prefix: <first line of PQerrorMessage>", the other lines as
 * detail; never the password.  Only while no step runs on the threadpool. */
static void pg_err_conn(phg_pg_t *pg, phg_err_t *e, int code, const char *prefix)
{
	PGconn *conn = pg_pq(pg);
	char m[2048], first[480], rest[1024];

	snprintf(m, sizeof(m), "%s", conn != NULL ? PQerrorMessage(conn) : "");
	if (conn != NULL)
		pg_redact(m, sizeof(m), PQpass(conn));
	pg_split_msg(m, first, sizeof(first), rest, sizeof(rest));
	phg_err_set(e, code, "%s: %s", prefix,
	            first[0] != '\0' ? first : "no error message from libpq");
	if (rest[0] != '\0')
		phg_err_detail(e, "%s", rest);
}

/* Did the server end the session with this error (FATAL, PANIC)? */
static int pg_is_fatal(const PGresult *res)
{
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

	if (sev == NULL)
		sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
	return sev != NULL && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static void pg_err_reset(phg_pg_t *pg)
{
	phg_err_clear(&pg->err);
	pg->err_fatal = 0;
}

/* ------------------------------------------------------- state, handles */

/* An idle connection does not keep the loop alive; a busy one does. */
static void pg_poll_ref(phg_pg_t *pg)
{
	if (pg->poll_state != PG_POLL_OPEN)
		return;
	if (pg->state == PHG_PG_READY)
		uv_unref((uv_handle_t *)&pg->poll);
	else
		uv_ref((uv_handle_t *)&pg->poll);
}

/* The one function that changes pg->state. */
static void pg_set_state(phg_pg_t *pg, phg_pg_state_t state)
{
	if (pg->state == state)
		return;
	pg_log(pg, PHG_LOG_TRACE, "connection state %s -> %s",
	       pg_state_name(pg->state), pg_state_name(state));
	pg->state = state;
	pg_poll_ref(pg);
}

static void pg_poll_close(phg_pg_t *pg)
{
	if (pg->poll_state != PG_POLL_OPEN)
		return;
	pg->poll_state = PG_POLL_CLOSING;
	pg->poll_events = 0;
	/* uv_close stops watching the descriptor right now (not in the
	 * callback): libpq may close it afterwards. */
	uv_close((uv_handle_t *)&pg->poll, pg_on_poll_close);
}

/*
 * Make the poll handle watch PQsocket() for pg->want_events.  While the
 * handle is closing or a connect step runs on the threadpool this does
 * nothing: pg_on_poll_close / pg_connect_done call it again.
 * 0, PG_NOSOCK, or a libuv error.
 */
static int pg_poll_sync(phg_pg_t *pg)
{
	uv_os_sock_t sock;
	int rc;

	if (pg->poll_state == PG_POLL_CLOSING || pg->connect_inflight ||
	    pg_pq(pg) == NULL)
		return 0;
	if (pg->state != PHG_PG_CONNECTING && pg->state != PHG_PG_READY &&
	    pg->state != PHG_PG_BUSY)
		return 0;
	sock = PQsocket(pg_pq(pg));
	if (sock < 0)
		return PG_NOSOCK;
	if (pg->poll_state == PG_POLL_OPEN && pg->sock != sock) {
		pg_log(pg, PHG_LOG_TRACE, "socket changed (%d -> %d)", (int)pg->sock,
		       (int)sock);
		pg_poll_close(pg);
		return 0;
	}
	if (pg->poll_state == PG_POLL_NONE) {
		rc = uv_poll_init_socket(pg->loop, &pg->poll, sock);
		if (rc < 0)
			return rc;
		pg->poll.data = pg;
		pg->poll_state = PG_POLL_OPEN;
		pg->handles_open++;
		pg->sock = sock;
		pg->poll_events = 0;
		pg_poll_ref(pg);
	}
	if (pg->want_events != pg->poll_events) {
		if (pg->want_events == 0)
			rc = uv_poll_stop(&pg->poll);
		else
			rc = uv_poll_start(&pg->poll, pg->want_events, pg_on_poll);
		if (rc < 0)
			return rc;
		pg->poll_events = pg->want_events;
	}
	return 0;
}

/* pg_poll_sync(), failing the connection on error: 0 or -1. */
static int pg_poll_update(phg_pg_t *pg)
{
	char why[128];
	int rc = pg_poll_sync(pg);

	if (rc == 0)
		return 0;
	if (rc == PG_NOSOCK) {
		pg_fail(pg, PHG_ECONNECT, NULL);
	} else {
		snprintf(why, sizeof(why), "cannot watch the socket: %s", uv_strerror(rc));
		pg_fail(pg, PHG_ECONNECT, why);
	}
	return -1;
}

static void pg_on_poll_close(uv_handle_t *h)
{
	phg_pg_t *pg = h->data;

	pg->poll_state = PG_POLL_NONE;
	pg->sock = -1;
	pg->handles_open--;
	if (pg->state == PHG_PG_CLOSING) {
		pg_maybe_finish(pg);
		return;
	}
	(void)pg_poll_update(pg);
}

static void pg_on_timer_close(uv_handle_t *h)
{
	phg_pg_t *pg = h->data;

	pg->handles_open--;
	pg_maybe_finish(pg);
}

static void pg_free_pending(phg_pg_t *pg)
{
	int i;

	if (pg->pending_params != NULL) {
		for (i = 0; i < pg->pending_nparams; i++)
			free(pg->pending_params[i]);
		free(pg->pending_params);
	}
	free(pg->pending_sql);
	pg->pending_sql = NULL;
	pg->pending_params = NULL;
	pg->pending_nparams = 0;
}

/*
 * The end of phg_pg_close(): once every handle is closed and no threadpool
 * request uses the connection, PQfinish and the close callback.
 */
static void pg_maybe_finish(phg_pg_t *pg)
{
	phg_pg_close_cb cb;

	if (pg->state != PHG_PG_CLOSING || pg->handles_open > 0 ||
	    pg->connect_inflight || pg->cancel_inflight)
		return;
	if (pg->conn != NULL) {
		PQfinish(pg->conn);
		pg->conn = NULL;
	}
	if (pg->cconn != NULL) {
		PQfinish(pg->cconn);
		pg->cconn = NULL;
	}
	if (pg->cancel != NULL) {
		PQfreeCancel(pg->cancel);
		pg->cancel = NULL;
	}
	PQclear(pg->last);
	pg->last = NULL;
	pg_wipe_free(pg->conninfo);
	pg->conninfo = NULL;
	pg_free_pending(pg);
	cb = pg->close_cb;
	pg->close_cb = NULL;
	pg_set_state(pg, PHG_PG_CLOSED);
	if (cb != NULL)
		cb(pg);
}

/*
 * The connection failed while connecting, or was lost.  Stops watching the
 * socket first (libpq may have closed it already), moves to BROKEN and
 * reports to whoever waits: the connect callback, the result callback, or
 * the log when nobody does.  @why replaces libpq's message when not NULL.
 */
static void pg_fail(phg_pg_t *pg, int code, const char *why)
{
	phg_pg_state_t prev = pg->state;
	phg_pg_connect_cb ccb = pg->connect_cb;
	phg_pg_result_cb rcb = pg->result_cb;
	void *arg = pg->result_arg;
	const char *prefix = prev == PHG_PG_CONNECTING ? PG_ERR_CONNECT : PG_ERR_LOST;
	PGconn *conn = pg->connect_inflight ? NULL : pg_pq(pg);
	phg_err_t e;

	pg_poll_close(pg);
	uv_timer_stop(&pg->timer);
	phg_err_clear(&e);
	if (prev != PHG_PG_CONNECTING && pg->err.code != 0 &&
	    (pg->err_fatal || pg->err.sqlstate[0] == '\0')) {
		/* the server (FATAL 57P01 admin shutdown, ...) or libpq said why */
		phg_err_set(&e, code, "%s: %s", prefix, pg->err.msg);
		memcpy(e.sqlstate, pg->err.sqlstate, sizeof(e.sqlstate));
		memcpy(e.detail, pg->err.detail, sizeof(e.detail));
		memcpy(e.hint, pg->err.hint, sizeof(e.hint));
	} else if (why != NULL) {
		phg_err_set(&e, code, "%s: %s", prefix, why);
		if (code == PHG_ETIMEOUT && conn != NULL && PQhost(conn) != NULL)
			phg_err_detail(&e, "The server at \"%s\", port %s, did not answer in time.",
			               PQhost(conn), PQport(conn) != NULL ? PQport(conn) : "?");
	} else if (conn != NULL) {
		pg_err_conn(pg, &e, code, prefix);
	} else {
		phg_err_set(&e, code, "%s", prefix);
	}

	pg->connect_cb = NULL;
	pg->result_cb = NULL;
	pg->result_arg = NULL;
	PQclear(pg->last);
	pg->last = NULL;
	pg_free_pending(pg);
	pg->flushing = pg->copy_out = pg->copy_end_pending = 0;
	pg->err = e;
	pg->err_fatal = 0;
	pg_set_state(pg, PHG_PG_BROKEN);
	if (prev == PHG_PG_CONNECTING && ccb != NULL)
		ccb(pg, code, &e);
	else if (prev == PHG_PG_BUSY && rcb != NULL)
		rcb(pg, code, NULL, &e, arg);
	else
		pg_log_err(pg, PHG_LOG_WARN, &e);
}

/* ---------------------------------------------------------- notices */

static void pg_notice_receiver(void *arg, const PGresult *res)
{
	phg_pg_t *pg = arg;
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	char line[1024];

	if (severity == NULL)
		severity = "NOTICE";
	if (msg == NULL)
		msg = PQresultErrorMessage(res);
	pg_one_line(line, sizeof(line), msg);
	/* Idle, the server reports why it ends the session as a notice
	 * (e.g. 57P01 after pg_terminate_backend): keep it as the reason. */
	if (pg->state == PHG_PG_READY && pg->err.code == 0 && pg_is_fatal(res)) {
		phg_pg_result_error(res, &pg->err);
		pg->err_fatal = 1;
	}
	if (pg->notice_cb != NULL &&
	    (pg->state == PHG_PG_READY || pg->state == PHG_PG_BUSY)) {
		pg->in_notice++;
		pg->notice_cb(pg, severity, line);
		pg->in_notice--;
	} else {
		pg_log(pg, PHG_LOG_DEBUG, "server %s: %s", severity, line);
	}
}

/* ---------------------------------------------------------- connecting */

/* On the threadpool: the only code that touches the connection off the
 * loop thread, and the loop thread leaves it alone meanwhile (pg->conn stays
 * NULL until connected, so the owner cannot touch it either). */
static void pg_connect_work(uv_work_t *req)
{
	static const char *const keywords[] = {"dbname", "fallback_application_name",
	                                       NULL};
	phg_pg_t *pg = req->data;
	const char *values[3];

	if (pg->cconn == NULL) {
		values[0] = pg->conninfo;
		values[1] = "phasegate";
		values[2] = NULL;
		pg->cconn = PQconnectStartParams(keywords, values, 1);
	} else {
		pg->connect_poll = PQconnectPoll(pg->cconn);
	}
}

static void pg_connect_done(uv_work_t *req, int status);

static int pg_connect_queue(phg_pg_t *pg)
{
	int rc;

	pg->connect_work.data = pg;
	rc = uv_queue_work(pg->loop, &pg->connect_work, pg_connect_work,
	                   pg_connect_done);
	if (rc == 0)
		pg->connect_inflight = 1;
	return rc;
}

static void pg_connected(phg_pg_t *pg)
{
	phg_pg_connect_cb cb = pg->connect_cb;
	phg_err_t e;

	pg->conn = pg->cconn;
	pg->cconn = NULL;
	if (PQsetnonblocking(pg->conn, 1) != 0) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	pg->backend_pid = PQbackendPID(pg->conn);
	PQsetNoticeReceiver(pg->conn, pg_notice_receiver, pg);
	uv_timer_stop(&pg->timer);
	/* idle: watch for the server closing the connection */
	pg->want_events = UV_READABLE;
	if (pg_poll_update(pg) != 0)
		return;
	pg_log(pg, PHG_LOG_DEBUG, "connected to database \"%s\" (server %d)",
	       PQdb(pg->conn), PQserverVersion(pg->conn));
	pg->connect_cb = NULL;
	pg_set_state(pg, PHG_PG_READY);
	phg_err_clear(&e);
	cb(pg, 0, &e);
}

static void pg_connect_done(uv_work_t *req, int status)
{
	phg_pg_t *pg = req->data;
	int first = pg->conninfo != NULL;

	(void)status; /* never canceled */
	pg->connect_inflight = 0;
	pg_wipe_free(pg->conninfo);
	pg->conninfo = NULL;
	if (pg->state != PHG_PG_CONNECTING) { /* timed out or closed meanwhile */
		pg_maybe_finish(pg);
		return;
	}
	if (pg->cconn == NULL) {
		pg_fail(pg, PHG_ECONNECT, "out of memory");
		return;
	}
	if (first) {
		if (PQstatus(pg->cconn) == CONNECTION_BAD) {
			pg_fail(pg, PHG_ECONNECT, NULL);
			return;
		}
		/* libpq: before the first PQconnectPoll, wait as if it had
		 * returned PGRES_POLLING_WRITING */
		pg->want_events = UV_WRITABLE;
	} else {
		switch (pg->connect_poll) {
		case PGRES_POLLING_OK:
			if (pg_pq(pg) != NULL && PQpass(pg_pq(pg)) != NULL)
				phg_secret_add(PQpass(pg_pq(pg)));
			pg_connected(pg);
			return;
		case PGRES_POLLING_READING:
			pg->want_events = UV_READABLE;
			break;
		case PGRES_POLLING_WRITING:
		case PGRES_POLLING_ACTIVE:
			pg->want_events = UV_WRITABLE;
			break;
		case PGRES_POLLING_FAILED:
		default:
			pg_fail(pg, PHG_ECONNECT, NULL);
			return;
		}
	}
	(void)pg_poll_update(pg);
}

/* The socket is ready (or in error: libpq finds out which, and may move on
 * to the next address or host): run the next PQconnectPoll step. */
static void pg_connect_step(phg_pg_t *pg, int status)
{
	char why[128];
	int rc;

	if (status < 0)
		pg_log(pg, PHG_LOG_DEBUG, "socket error while connecting: %s",
		       uv_strerror(status));
	/* The step may close the socket and open another: stop watching it
	 * before libpq runs off the loop thread. */
	pg_poll_close(pg);
	rc = pg_connect_queue(pg);
	if (rc < 0) {
		snprintf(why, sizeof(why), "cannot queue work: %s", uv_strerror(rc));
		pg_fail(pg, PHG_ECONNECT, why);
	}
}

static void pg_on_deadline(uv_timer_t *t)
{
	phg_pg_t *pg = t->data;
	char why[96];

	if (pg->state != PHG_PG_CONNECTING)
		return;
	snprintf(why, sizeof(why), "timeout expired after %llu ms",
	         (unsigned long long)pg->timeout_ms);
	pg_fail(pg, PHG_ETIMEOUT, why);
}

/*
 * PQconnectStartParams would also fail on a bad connection string, but its
 * message may quote the whole string, password included: check it here,
 * on the loop thread (pure parsing, no I/O), and redact the message.
 * libpq expands the dbname value only when it looks like a connection
 * string; otherwise it is a database name.
 */
static int pg_check_conninfo(const char *conninfo, phg_err_t *err)
{
	PQconninfoOption *opts;
	char *errmsg = NULL;
	char m[1024], first[512], rest[512];

	if (strncmp(conninfo, "postgresql://", 13) != 0 &&
	    strncmp(conninfo, "postgres://", 11) != 0 && strchr(conninfo, '=') == NULL)
		return 0;
	opts = PQconninfoParse(conninfo, &errmsg);
	if (opts != NULL) {
		PQconninfoFree(opts);
		return 0;
	}
	if (errmsg == NULL)
		return phg_err_set(err, PHG_ENOMEM, "out of memory");
	snprintf(m, sizeof(m), "%s", errmsg);
	PQfreemem(errmsg);
	pg_redact_quoted(m, sizeof(m), conninfo);
	pg_split_msg(m, first, sizeof(first), rest, sizeof(rest));
	phg_err_set(err, PHG_EINVAL, "invalid connection string");
	phg_err_detail(err, "%s", first);
	phg_err_hint(err, "Use a libpq URI (postgresql://...) or key=value pairs.");
	return PHG_EINVAL;
}

/* ------------------------------------------------------------- queries */

/* Send the query; 0, PHG_ECONNECT (connection gone) or PHG_EPG (libpq
 * refused it; see PQerrorMessage). */
static int pg_send(phg_pg_t *pg, const char *sql, int nparams,
                   const char *const *params)
{
	int ok;

	pg->flushing = 1;
	pg->copy_out = 0;
	pg->copy_end_pending = 0;
	if (nparams == 0)
		ok = PQsendQuery(pg->conn, sql);
	else
		ok = PQsendQueryParams(pg->conn, sql, nparams, NULL, params, NULL, NULL,
		                       0);
	if (ok)
		return 0;
	pg->flushing = 0;
	return PQstatus(pg->conn) == CONNECTION_BAD ? PHG_ECONNECT : PHG_EPG;
}

/* Keep @res as the query's result, unless an error came first: the first
 * error wins. */
static void pg_keep(phg_pg_t *pg, PGresult *res, int is_error)
{
	if (pg->err.code != 0) {
		PQclear(res);
		return;
	}
	if (is_error) {
		phg_pg_result_error(res, &pg->err);
		pg->err_fatal = pg_is_fatal(res);
	}
	PQclear(pg->last);
	pg->last = res;
}

static void pg_copy_refused(phg_pg_t *pg, PGresult *res)
{
	if (pg->err.code != 0) {
		PQclear(res);
		return;
	}
	phg_err_set(&pg->err, PHG_EPG, "%s", PG_COPY_REFUSED);
	phg_err_hint(&pg->err, "Use INSERT ... SELECT, or run the COPY with psql.");
	PQclear(pg->last);
	pg->last = res;
}

static void pg_query_result(phg_pg_t *pg, PGresult *res)
{
	int r;

	switch (PQresultStatus(res)) {
	case PGRES_TUPLES_OK:
	case PGRES_COMMAND_OK:
	case PGRES_EMPTY_QUERY:
	case PGRES_SINGLE_TUPLE:
		pg_keep(pg, res, 0);
		return;
	case PGRES_COPY_OUT:
		/* drain the rows (PQgetCopyData) before the next result */
		pg_copy_refused(pg, res);
		pg->copy_out = 1;
		return;
	case PGRES_COPY_IN:
	case PGRES_COPY_BOTH:
		/* end the COPY with an error: the server reports 57014 */
		pg_copy_refused(pg, res);
		r = PQputCopyEnd(pg->conn, PG_COPY_REFUSED);
		if (r < 0) {
			pg_fail(pg, PHG_ECONNECT, NULL);
			return;
		}
		pg->copy_end_pending = r == 0;
		pg->flushing = 1;
		return;
	default:
		pg_keep(pg, res, 1);
		return;
	}
}

/* PQgetResult returned NULL: deliver.  The state is READY before the
 * callback runs, which may start the next query or close the connection;
 * the result is cleared after it returns and nothing else is touched. */
static void pg_query_done(phg_pg_t *pg)
{
	phg_pg_result_cb cb = pg->result_cb;
	void *arg = pg->result_arg;
	PGresult *res;
	phg_err_t e;

	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	pg->want_events = UV_READABLE;
	if (pg_poll_update(pg) != 0)
		return;
	res = pg->last;
	e = pg->err;
	pg->last = NULL;
	pg->result_cb = NULL;
	pg->result_arg = NULL;
	pg->flushing = pg->copy_out = pg->copy_end_pending = 0;
	pg_err_reset(pg);
	pg_set_state(pg, PHG_PG_READY);
	cb(pg, e.code, res, &e, arg);
	PQclear(res);
}

/* The poll reported an error: the connection is gone.  libpq usually says
 * better why ("Connection reset by peer"). */
static void pg_fail_poll(phg_pg_t *pg, int status)
{
	char why[128];

	if (!PQconsumeInput(pg->conn) || PQstatus(pg->conn) == CONNECTION_BAD) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	snprintf(why, sizeof(why), "socket error: %s", uv_strerror(status));
	pg_fail(pg, PHG_ECONNECT, why);
}

static void pg_query_io(phg_pg_t *pg, int status, int events)
{
	PGresult *res;
	char *buf;
	int r, busy;

	if (status < 0) {
		pg_fail_poll(pg, status);
		return;
	}
	if ((events & UV_READABLE) && !PQconsumeInput(pg->conn)) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	if (pg->pending_sql != NULL) /* held back until the cancel is done */
		goto wait;
	if (pg->copy_end_pending) {
		r = PQputCopyEnd(pg->conn, PG_COPY_REFUSED);
		if (r < 0) {
			pg_fail(pg, PHG_ECONNECT, NULL);
			return;
		}
		pg->copy_end_pending = r == 0;
	}
	if (pg->flushing) {
		r = PQflush(pg->conn);
		if (r < 0) {
			pg_fail(pg, PHG_ECONNECT, NULL);
			return;
		}
		pg->flushing = r;
	}
	for (;;) {
		if (pg->copy_out) {
			buf = NULL;
			r = PQgetCopyData(pg->conn, &buf, 1);
			if (buf != NULL)
				PQfreemem(buf);
			if (pg->state != PHG_PG_BUSY) /* closed by the notice callback */
				return;
			if (r > 0)
				continue;
			if (r == 0)
				break;
			if (r == -2) {
				pg_fail(pg, PHG_ECONNECT, NULL);
				return;
			}
			pg->copy_out = 0;
		}
		if (pg->copy_end_pending)
			break;
		busy = PQisBusy(pg->conn);
		if (pg->state != PHG_PG_BUSY)
			return;
		if (busy)
			break;
		res = PQgetResult(pg->conn);
		if (pg->state != PHG_PG_BUSY) {
			PQclear(res);
			return;
		}
		if (res == NULL) {
			pg_query_done(pg);
			return;
		}
		pg_query_result(pg, res);
		if (pg->state != PHG_PG_BUSY)
			return;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
wait:
	pg->want_events = UV_READABLE;
	if (pg->flushing || pg->copy_end_pending)
		pg->want_events |= UV_WRITABLE;
	(void)pg_poll_update(pg);
}

/* Idle: only the server speaks (a FATAL before it closes the connection,
 * a notification).  Notices go to the notice receiver. */
static void pg_idle_io(phg_pg_t *pg, int status)
{
	PGnotify *n;

	if (status < 0) {
		pg_fail_poll(pg, status);
		return;
	}
	if (!PQconsumeInput(pg->conn)) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	while ((n = PQnotifies(pg->conn)) != NULL) {
		pg_log(pg, PHG_LOG_DEBUG, "ignoring notification on channel \"%s\"",
		       n->relname);
		PQfreemem(n);
		if (pg->state != PHG_PG_READY)
			return;
	}
	if (pg->state == PHG_PG_READY && PQstatus(pg->conn) == CONNECTION_BAD)
		pg_fail(pg, PHG_ECONNECT, NULL);
}

static void pg_on_poll(uv_poll_t *h, int status, int events)
{
	phg_pg_t *pg = h->data;

	if (status < 0)
		pg->poll_events = 0; /* libuv stopped the handle */
	switch (pg->state) {
	case PHG_PG_CONNECTING:
		pg_connect_step(pg, status);
		break;
	case PHG_PG_BUSY:
		pg_query_io(pg, status, events);
		break;
	case PHG_PG_READY:
		pg_idle_io(pg, status);
		break;
	default:
		uv_poll_stop(h);
		pg->poll_events = 0;
		break;
	}
}

/* ------------------------------------------------------------- cancel */

static void pg_cancel_work(uv_work_t *req)
{
	phg_pg_t *pg = req->data;

	pg->cancel_errbuf[0] = '\0';
	pg->cancel_ok = PQcancel(pg->cancel, pg->cancel_errbuf,
	                         (int)sizeof(pg->cancel_errbuf));
}

static void pg_cancel_done(uv_work_t *req, int status);

static int pg_cancel_start(phg_pg_t *pg)
{
	int rc;

	if (pg->cancel == NULL) {
		pg->cancel = PQgetCancel(pg->conn);
		if (pg->cancel == NULL)
			return PHG_ENOMEM;
	}
	pg->cancel_work.data = pg;
	rc = uv_queue_work(pg->loop, &pg->cancel_work, pg_cancel_work, pg_cancel_done);
	if (rc < 0) {
		pg_log(pg, PHG_LOG_WARN, "cannot queue the cancel request: %s",
		       uv_strerror(rc));
		return PHG_EIO;
	}
	pg->cancel_inflight = 1;
	pg->cancel_again = 0;
	pg_log(pg, PHG_LOG_DEBUG, "cancel requested");
	return 0;
}

/* The query held back by phg_pg_query while a cancel was in flight. */
static void pg_send_pending(phg_pg_t *pg)
{
	phg_pg_result_cb cb = pg->result_cb;
	void *arg = pg->result_arg;
	int again = pg->cancel_again;
	phg_err_t e;
	int rc;

	rc = pg_send(pg, pg->pending_sql, pg->pending_nparams,
	             (const char *const *)pg->pending_params);
	pg_free_pending(pg);
	if (rc == PHG_ECONNECT) {
		pg_fail(pg, PHG_ECONNECT, NULL);
		return;
	}
	if (rc != 0) {
		phg_err_clear(&e);
		pg_err_conn(pg, &e, PHG_EPG, "cannot send the query");
		pg->result_cb = NULL;
		pg->result_arg = NULL;
		pg_set_state(pg, PHG_PG_READY);
		cb(pg, PHG_EPG, NULL, &e, arg);
		return;
	}
	pg->want_events = UV_READABLE | UV_WRITABLE;
	if (pg_poll_update(pg) != 0)
		return;
	if (again)
		(void)pg_cancel_start(pg);
}

static void pg_cancel_done(uv_work_t *req, int status)
{
	phg_pg_t *pg = req->data;
	char line[256];

	(void)status; /* never canceled */
	pg->cancel_inflight = 0;
	if (!pg->cancel_ok) {
		pg_one_line(line, sizeof(line), pg->cancel_errbuf);
		pg_log(pg, PHG_LOG_WARN, "could not send the cancel request: %s", line);
	}
	if (pg->state == PHG_PG_CLOSING) {
		pg_maybe_finish(pg);
		return;
	}
	if (pg->state == PHG_PG_BUSY && pg->pending_sql != NULL)
		pg_send_pending(pg);
}

/* ------------------------------------------------------------- public */

int phg_pg_init(uv_loop_t *loop, phg_pg_t *pg, const char *name)
{
	int rc;

	if (loop == NULL || pg == NULL)
		return PHG_EINVAL;
	memset(pg, 0, sizeof(*pg));
	snprintf(pg->name, sizeof(pg->name), "%s",
	         name != NULL && name[0] != '\0' ? name : "pg");
	pg->loop = loop;
	pg->state = PHG_PG_IDLE;
	pg->sock = -1;
	rc = uv_timer_init(loop, &pg->timer);
	if (rc < 0)
		return PHG_EIO;
	pg->timer.data = pg;
	pg->handles_open = 1;
	return 0;
}

int phg_pg_connect(phg_pg_t *pg, const char *conninfo, uint64_t timeout_ms,
                   phg_pg_connect_cb cb, phg_err_t *err)
{
	int rc;

	if (pg == NULL || cb == NULL)
		return phg_err_set(err, PHG_EINVAL, "phg_pg_connect: no connection or callback");
	if (pg->state != PHG_PG_IDLE)
		return phg_err_set(err, PHG_EINVAL, "connection \"%s\" is %s, not idle",
		                   pg->name, pg_state_name(pg->state));
	if (conninfo != NULL && (rc = pg_check_conninfo(conninfo, err)) != 0)
		return rc;
	pg->conninfo = phg_strdup(conninfo != NULL ? conninfo : "");
	pg->connect_cb = cb;
	pg->timeout_ms = timeout_ms;
	pg_err_reset(pg);
	rc = pg_connect_queue(pg);
	if (rc < 0) {
		pg_wipe_free(pg->conninfo);
		pg->conninfo = NULL;
		pg->connect_cb = NULL;
		return phg_err_set(err, PHG_ECONNECT, "%s: cannot queue work: %s",
		                   PG_ERR_CONNECT, uv_strerror(rc));
	}
	if (timeout_ms > 0)
		uv_timer_start(&pg->timer, pg_on_deadline, timeout_ms, 0);
	pg_set_state(pg, PHG_PG_CONNECTING);
	if (timeout_ms > 0)
		pg_log(pg, PHG_LOG_TRACE, "connecting (timeout %llu ms)",
		       (unsigned long long)timeout_ms);
	else
		pg_log(pg, PHG_LOG_TRACE, "connecting (no timeout)");
	return 0;
}

int phg_pg_query(phg_pg_t *pg, const char *sql, int nparams,
                 const char *const *params, phg_pg_result_cb cb, void *arg)
{
	int rc, i;

	if (pg == NULL || sql == NULL || cb == NULL || nparams < 0 ||
	    nparams > PG_MAX_PARAMS || (nparams > 0 && params == NULL))
		return PHG_EINVAL;
	if (pg->state == PHG_PG_BROKEN)
		return PHG_ECONNECT;
	if (pg->state != PHG_PG_READY || pg->in_notice)
		return PHG_EINVAL;
	if (pg->err_fatal) { /* the server ended the session while idle */
		pg_fail(pg, PHG_ECONNECT, NULL);
		return PHG_ECONNECT;
	}
	pg_err_reset(pg);
	PQclear(pg->last);
	pg->last = NULL;
	if (pg->cancel_inflight) {
		/* A cancel request for the previous query is on its way: sent
		 * now, this query could be the one it cancels. */
		pg->pending_sql = phg_strdup(sql);
		pg->pending_nparams = nparams;
		if (nparams > 0) {
			pg->pending_params = phg_calloc((size_t)nparams, sizeof(char *));
			for (i = 0; i < nparams; i++)
				pg->pending_params[i] = phg_strdup(params[i]);
		}
		pg->want_events = UV_READABLE;
		pg_log(pg, PHG_LOG_DEBUG,
		       "query held back until the cancel request is done");
	} else {
		rc = pg_send(pg, sql, nparams, params);
		if (rc == PHG_ECONNECT) {
			pg_fail(pg, PHG_ECONNECT, NULL); /* READY: logged */
			return PHG_ECONNECT;
		}
		if (rc != 0) {
			phg_err_t e;

			phg_err_clear(&e);
			pg_err_conn(pg, &e, PHG_EPG, "cannot send the query");
			pg_log_err(pg, PHG_LOG_WARN, &e);
			return PHG_EINVAL;
		}
		pg->want_events = UV_READABLE | UV_WRITABLE;
	}
	pg_set_state(pg, PHG_PG_BUSY);
	if (pg_poll_sync(pg) != 0) {
		pg_fail(pg, PHG_ECONNECT, "cannot watch the socket"); /* no cb yet */
		return PHG_ECONNECT;
	}
	pg->result_cb = cb;
	pg->result_arg = arg;
	return 0;
}

int phg_pg_cancel(phg_pg_t *pg)
{
	if (pg == NULL)
		return PHG_EINVAL;
	if (pg->state != PHG_PG_BUSY)
		return 0;
	if (pg->cancel_inflight) {
		/* the running query is covered; a held-back one is not yet */
		if (pg->pending_sql != NULL)
			pg->cancel_again = 1;
		return 0;
	}
	return pg_cancel_start(pg);
}

void phg_pg_close(phg_pg_t *pg, phg_pg_close_cb cb)
{
	if (pg == NULL || pg->state == PHG_PG_CLOSING || pg->state == PHG_PG_CLOSED)
		return;
	pg->close_cb = cb;
	pg->connect_cb = NULL;
	pg->result_cb = NULL;
	pg->result_arg = NULL;
	pg_set_state(pg, PHG_PG_CLOSING);
	pg_poll_close(pg);
	uv_timer_stop(&pg->timer);
	if (!uv_is_closing((uv_handle_t *)&pg->timer))
		uv_close((uv_handle_t *)&pg->timer, pg_on_timer_close);
	pg_free_pending(pg);
	/* PQfinish and @cb: pg_maybe_finish, from the close callbacks */
}

void phg_pg_result_error(const PGresult *res, phg_err_t *err)
{
	const char *primary, *s;
	char m[2048], first[512], rest[1024];

	if (err == NULL || err->code != 0)
		return;
	if (res == NULL) {
		phg_err_set(err, PHG_EPG, "no result from libpq (out of memory)");
		return;
	}
	primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (primary != NULL) {
		phg_err_set(err, PHG_EPG, "%s", primary);
		s = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
		if (s != NULL)
			phg_err_detail(err, "%s", s);
		s = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
		if (s != NULL)
			phg_err_hint(err, "%s", s);
	} else {
		/* generated by libpq (lost connection, ...): no fields */
		snprintf(m, sizeof(m), "%s", PQresultErrorMessage(res));
		pg_split_msg(m, first, sizeof(first), rest, sizeof(rest));
		phg_err_set(err, PHG_EPG, "%s",
		            first[0] != '\0' ? first : PQresStatus(PQresultStatus(res)));
		if (rest[0] != '\0')
			phg_err_detail(err, "%s", rest);
	}
	s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (s != NULL)
		snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", s);
}

void phg_pg_describe(const phg_pg_t *pg, char *out, size_t n)
{
	const char *host, *port;
	int v;

	if (n == 0)
		return;
	out[0] = '\0';
	if (pg->conn == NULL)
		return;
	host = PQhost(pg->conn);
	port = PQport(pg->conn);
	v = PQserverVersion(pg->conn);
	if (host != NULL && host[0] == '/')
		snprintf(out, n, "database \"%s\" on socket %s/.s.PGSQL.%s as %s, PostgreSQL %d.%d",
		         PQdb(pg->conn), host, port ? port : "?", PQuser(pg->conn), v / 10000,
		         v % 10000);
	else
		snprintf(out, n, "database \"%s\" on %s:%s as %s, PostgreSQL %d.%d", PQdb(pg->conn),
		         host ? host : "?", port ? port : "?", PQuser(pg->conn), v / 10000, v % 10000);
}

static const char *ci_get(const PQconninfoOption *opts, const char *key, const char *env,
                          const char *def)
{
	const char *v = NULL;

	for (const PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
		if (strcmp(o->keyword, key) == 0 && o->val != NULL && o->val[0] != '\0')
			v = o->val;
	if (v == NULL && env != NULL)
		v = getenv(env);
	return v != NULL && v[0] != '\0' ? v : def;
}

void phg_conninfo_describe(const char *conninfo, char *out, size_t n)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", NULL);
	const char *host, *port, *user, *db;

	if (n == 0)
		return;
	/* a string libpq cannot parse is reported when connecting */
	host = ci_get(opts, "host", "PGHOST", "the default socket");
	port = ci_get(opts, "port", "PGPORT", "5432");
	user = ci_get(opts, "user", "PGUSER", "the current user");
	db = ci_get(opts, "dbname", "PGDATABASE", user);
	if (host[0] == '/')
		snprintf(out, n, "database \"%s\" on socket %s/.s.PGSQL.%s as %s", db, host, port, user);
	else
		snprintf(out, n, "database \"%s\" on %s:%s as %s", db, host, port, user);
	PQconninfoFree(opts);
}

phg_conn_fail_t phg_pg_connect_failure(int status, const phg_err_t *err)
{
	static const char *const final[] = {
	    "password authentication failed", "authentication failed", "does not exist",
	    "no pg_hba.conf entry", "password is required", "is not permitted to log in",
	    NULL,
	};
	const char *m = err != NULL ? err->msg : "";

	if (status == PHG_EINVAL)
		return PHG_CONN_INVALID;
	/* values libpq checks when it starts: invalid sslmode value, invalid
	 * port number, ... */
	if (strncmp(m, "cannot connect to the database: invalid ", 40) == 0 ||
	    strncmp(m, "invalid ", 8) == 0)
		return PHG_CONN_INVALID;
	for (size_t i = 0; final[i] != NULL; i++)
		if (strstr(m, final[i]) != NULL)
			return PHG_CONN_FINAL;
	return PHG_CONN_RETRY;
}
