/*
 * pg.h - one asynchronous PostgreSQL connection on the libuv loop.
 *
 * libpq in non-blocking mode driven by a uv_poll_t on PQsocket(): connect
 * with PQconnectStartParams + PQconnectPoll (the socket is re-read after
 * every poll step, it may change), then PQsendQuery/PQsendQueryParams, the
 * PQflush loop, and PQconsumeInput / PQisBusy / PQgetResult until NULL.
 * Nothing here blocks the loop.  Our own deadline timer bounds the connect
 * (libpq ignores connect_timeout in asynchronous mode).
 *
 * Lifetime: the caller allocates the phg_pg_t and keeps it alive until the
 * close callback has run; memory is freed only after that (libuv's rule).
 * One query at a time per connection.  If a function that takes a callback
 * returns an error, that callback is never called.  Callbacks get a non-NULL
 * err (code 0 on success).
 *
 * The parts of connecting that libpq may block on (host name lookup,
 * ~/.pgpass, GSSAPI) run on the libuv threadpool, one PQconnectPoll step at
 * a time; so does PQcancel.  A READY (idle) connection does not keep the
 * loop alive, like an unref'd handle; CONNECTING and BUSY ones do.
 */
#ifndef PHG_PG_H
#define PHG_PG_H

#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

#include "error.h"

typedef struct phg_pg_s phg_pg_t;

typedef enum phg_pg_state_e {
	PHG_PG_IDLE,       /* initialised, not connected */
	PHG_PG_CONNECTING,
	PHG_PG_READY,      /* connected, no query running */
	PHG_PG_BUSY,       /* a query is running */
	PHG_PG_BROKEN,     /* the connection failed or was lost */
	PHG_PG_CLOSING,
	PHG_PG_CLOSED,
} phg_pg_state_t;

/* status: 0, PHG_ECONNECT (reason in err) or PHG_ETIMEOUT. */
typedef void (*phg_pg_connect_cb)(phg_pg_t *pg, int status, const phg_err_t *err);

/*
 * status 0: @res is the last result of the query (PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK); it belongs to the adapter and is cleared after the
 * callback returns.
 * status PHG_EPG: the server reported an error: err has sqlstate, msg
 * (primary), detail and hint from PQresultErrorField; @res is that result
 * (NULL only if libpq refused to send a query held back by phg_pg_cancel).
 * COPY is refused (PHG_EPG, "COPY is not supported by phasegate").
 * status PHG_ECONNECT: the connection was lost (res NULL); the state is
 * PHG_PG_BROKEN and only phg_pg_close() is allowed.
 * The callback may issue the next query on the same connection.
 */
typedef void (*phg_pg_result_cb)(phg_pg_t *pg, int status, PGresult *res,
                                 const phg_err_t *err, void *arg);

typedef void (*phg_pg_close_cb)(phg_pg_t *pg);

/* Server NOTICE/WARNING messages (e.g. RAISE NOTICE), one line, no newline.
 * Runs inside libpq: it may call phg_pg_cancel/phg_pg_close, but
 * phg_pg_query returns PHG_EINVAL there.  Without it, notices are logged at
 * debug level. */
typedef void (*phg_pg_notice_cb)(phg_pg_t *pg, const char *severity,
                                 const char *message);

struct phg_pg_s {
	void *data;             /* for the owner */
	char name[32];          /* "work", "ctl": log context */
	phg_pg_state_t state;
	PGconn *conn;           /* set once connected (NULL while connecting) */
	int backend_pid;        /* PQbackendPID once connected */
	phg_pg_notice_cb notice_cb; /* optional */
	/* private: only pg.c touches these */
	uv_loop_t *loop;
	uv_poll_t poll;           /* on PQsocket(); re-created when it changes */
	uv_timer_t timer;         /* connect deadline */
	uv_os_sock_t sock;        /* the socket @poll was initialised with */
	int poll_state;           /* PG_POLL_NONE / _OPEN / _CLOSING (pg.c) */
	int poll_events;          /* events @poll is started with */
	int want_events;          /* events the current state needs */
	int handles_open;         /* initialised handles not yet closed */
	uint64_t timeout_ms;
	phg_pg_connect_cb connect_cb;
	phg_pg_result_cb result_cb;
	void *result_arg;
	phg_pg_close_cb close_cb;
	PGresult *last;           /* result being collected */
	phg_err_t err;            /* first error of the running query */
	int err_fatal;            /* ... and the server said FATAL/PANIC */
	int flushing;             /* PQflush returned 1: wait for UV_WRITABLE */
	int copy_out;             /* discarding a COPY TO STDOUT */
	int copy_end_pending;     /* PQputCopyEnd must be retried */
	int in_notice;            /* inside the notice callback */
	/* connect: libpq's blocking parts (DNS, .pgpass, GSS) and every
	 * PQconnectPoll step run on the threadpool, one at a time */
	uv_work_t connect_work;
	int connect_inflight;
	PostgresPollingStatusType connect_poll;
	char *conninfo;           /* copy until PQconnectStartParams ran */
	PGconn *cconn;            /* the connection while connecting */
	/* cancel: PQcancel runs on the threadpool */
	uv_work_t cancel_work;
	PGcancel *cancel;
	int cancel_inflight;
	int cancel_ok;
	int cancel_again;         /* cancel the held-back query once sent */
	char cancel_errbuf[256];
	/* a query held back until an in-flight cancel request is done */
	char *pending_sql;
	char **pending_params;
	int pending_nparams;
};

/* Prepare @pg (no I/O): zeroes it (set data and notice_cb afterwards) and
 * initialises its timer handle, so once this returned 0, phg_pg_close() is
 * required before uv_loop_close().  @name is copied (truncated to 31 bytes).
 * 0 or PHG_EINVAL/PHG_EIO. */
int phg_pg_init(uv_loop_t *loop, phg_pg_t *pg, const char *name);

/*
 * Connect with @conninfo, a libpq URI or key=value string (expand_dbname),
 * falling back to the usual PG* environment variables and ~/.pgpass like
 * psql; application_name defaults to "phasegate".  @timeout_ms bounds the
 * whole attempt (0 = none).  Error messages never contain the password.
 * 0 (cb will be called once) or PHG_EINVAL/PHG_ENOMEM/PHG_ECONNECT (cb is
 * not called, reason in @err; PHG_EINVAL also for a connection string libpq
 * cannot parse).  @conninfo is copied; NULL means "" (PG* variables only).
 */
int phg_pg_connect(phg_pg_t *pg, const char *conninfo, uint64_t timeout_ms,
                   phg_pg_connect_cb cb, phg_err_t *err);

/*
 * Run @sql.  With @nparams == 0 it goes through PQsendQuery (several
 * statements allowed; the callback gets the last result, or the first
 * error); otherwise PQsendQueryParams with text parameters (NULL entries are
 * SQL NULL).  @sql and @params are used (or copied) before this returns.
 * 0; PHG_EINVAL when the connection is not READY, an argument is bad or
 * libpq refuses the query; PHG_ECONNECT when the connection is BROKEN or
 * turns out to be lost (then it is BROKEN).
 */
int phg_pg_query(phg_pg_t *pg, const char *sql, int nparams,
                 const char *const *params, phg_pg_result_cb cb, void *arg);

/* Ask the server to cancel the running query (PQcancel on the threadpool,
 * so the loop never blocks).  The query's callback then reports the
 * cancellation error (SQLSTATE 57014), or its result if the query finished
 * first.  A query issued while the request is still on its way is held back
 * until it is done, so it cannot be the one canceled.  No-op when not BUSY.
 * 0, PHG_ENOMEM or PHG_EIO. */
int phg_pg_cancel(phg_pg_t *pg);

/* Stop polling, PQfinish, close the handles; @cb (may be NULL) runs when
 * everything is closed (after the handles' close callbacks and any
 * threadpool request of this connection), never from inside this call.
 * A pending query callback is not called; a running statement is not
 * canceled (phg_pg_cancel first if it matters).  Any state, also from a
 * callback; a second call is a no-op. */
void phg_pg_close(phg_pg_t *pg, phg_pg_close_cb cb);

/* What a failed connection attempt means for the next one. */
typedef enum phg_conn_fail_e {
	PHG_CONN_RETRY = 0,   /* refused, timed out, unreachable: try again */
	PHG_CONN_INVALID,     /* a connection string libpq cannot parse: exit 2 */
	PHG_CONN_FINAL,       /* authentication failed (28P01/28000), no such database
	                         (3D000) or role, no pg_hba.conf entry: trying again
	                         cannot help */
} phg_conn_fail_t;

/* Classify connection failure @status / @err (from phg_pg_connect or its
 * callback).  The server sends no SQLSTATE before a session exists, so the
 * FATAL message libpq reports is read (the server's messages in English). */
phg_conn_fail_t phg_pg_connect_failure(int status, const phg_err_t *err);

/* Where @pg is connected, for people: database "d" on host:port (or socket
 * DIR/.s.PGSQL.port) as user u, PostgreSQL x.y -- never the password.
 * "" when not connected. */
void phg_pg_describe(const phg_pg_t *pg, char *out, size_t n);

/* The same from a connection string (PQconninfoParse; the PG* variables
 * and defaults for what it leaves out), before connecting: database,
 * host:port or socket, user -- never the password. */
void phg_conninfo_describe(const char *conninfo, char *out, size_t n);

/* Copy libpq's error for a failed connection/result into @err without the
 * password (libpq does not print it; this also strips the trailing newline).
 * Code PHG_EPG; first cause wins (no-op when @err already holds an error). */
void phg_pg_result_error(const PGresult *res, phg_err_t *err);

#endif /* PHG_PG_H */
