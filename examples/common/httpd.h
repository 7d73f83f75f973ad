/*
 * httpd.h - a tiny HTTP/1.1 server on the libuv loop, shared by the demo
 * service (examples/demo) and the fake health endpoint (tests/fakehttp).
 *
 * Enough HTTP for those two and no more: any method, Content-Length bodies
 * (no chunked requests: 501), keep-alive (HTTP/1.1 default, HTTP/1.0 with
 * "Connection: keep-alive") or "Connection: close", pipelined requests
 * answered in order, "Expect: 100-continue".  The request line and headers
 * are capped at HTTPD_HEAD_MAX bytes and the body at HTTPD_BODY_MAX bytes:
 * going past either is answered 413; malformed input is answered 400; both
 * then close the connection.
 *
 * One request per connection is handed to the application at a time.  The
 * application answers it, now or later, with httpd_respond(), or drops the
 * connection with httpd_conn_abort().  If the connection goes away before
 * that (peer closed, error, httpd_close()), abort_cb is called instead and
 * the connection must not be used after it returns.
 *
 * Lifetime: the caller allocates the httpd_server_t and keeps it alive until
 * httpd_close()'s callback has run.  Connections are allocated by the server
 * and freed in their close callback, never inside a callback chain of their
 * own.  Functions return 0 or a negative libuv error code (UV_E*); when a
 * function that takes a callback fails, the callback is never called.
 * Nothing here blocks the loop, except httpd_announce(), which writes a tiny
 * file and is meant to be called once, before uv_run().
 */
#ifndef HTTPD_H
#define HTTPD_H

#include <stddef.h>

#include <uv.h>

#define HTTPD_HEAD_MAX (16 * 1024)  /* request line + headers */
#define HTTPD_BODY_MAX (64 * 1024)  /* request body */
#define HTTPD_MAX_HEADERS 100       /* more is answered 413 */
#define HTTPD_MAX_CONNS 512         /* more are closed at once */

typedef struct httpd_server_s httpd_server_t;
typedef struct httpd_conn_s httpd_conn_t;

typedef struct httpd_header_s {
	const char *name;  /* as received */
	const char *value; /* surrounding blanks removed */
} httpd_header_t;

/* A parsed request.  All strings are NUL-terminated and belong to the
 * connection; they stay valid until the request is answered (or aborted). */
typedef struct httpd_req_s {
	const char *method;  /* "GET", "PUT", ... (case-sensitive, as sent) */
	const char *target;  /* as sent: "/flags/x?y=1" */
	const char *path;    /* target up to '?' */
	const char *query;   /* after '?', or "" */
	int minor;           /* HTTP/1.<minor> */
	int keep_alive;      /* the connection stays open after the answer */
	const httpd_header_t *headers;
	size_t nheaders;
	const char *body;    /* NUL-terminated; "" when there is none */
	size_t body_len;
} httpd_req_t;

/* A complete request arrived on @conn.  Answer it with httpd_respond() or
 * httpd_conn_abort(), in this callback or later. */
typedef void (*httpd_request_cb)(httpd_conn_t *conn, const httpd_req_t *req);

/* @conn is going away with its request unanswered: release whatever refers
 * to it (timers, queries).  @conn is invalid after this returns. */
typedef void (*httpd_abort_cb)(httpd_conn_t *conn);

typedef void (*httpd_close_cb)(httpd_server_t *srv);

typedef enum httpd_conn_state_e {
	HTTPD_CONN_READING,  /* collecting the next request */
	HTTPD_CONN_PENDING,  /* the application owns the request */
	HTTPD_CONN_WRITING,  /* the answer is being written */
	HTTPD_CONN_DRAINING, /* answered with "close": FIN sent, reading to EOF */
	HTTPD_CONN_CLOSING,
} httpd_conn_state_t;

struct httpd_server_s {
	void *data; /* for the owner */
	/* read-only */
	uv_loop_t *loop;
	int port;   /* after httpd_listen() */
	/* private */
	uv_tcp_t tcp;
	httpd_request_cb request_cb;
	httpd_abort_cb abort_cb;
	httpd_close_cb close_cb;
	httpd_conn_t *conns; /* doubly linked list of open connections */
	size_t nconns;
	int listening;
	int closing;
	int open_handles;
	int debug;           /* HTTPD_DEBUG set: log state changes to stderr */
	char rbuf[64 * 1024]; /* read buffer, reused by every read */
};

/* Prepare @srv (no I/O).  @abort_cb may be NULL. */
int httpd_init(uv_loop_t *loop, httpd_server_t *srv, httpd_request_cb request_cb,
               httpd_abort_cb abort_cb);

/* Bind @host (an IPv4 literal, e.g. "127.0.0.1") and @port (0 = a free one)
 * and listen; srv->port is then the bound port.  0 or a UV_E* code, with a
 * message in @err (@errlen bytes, may be NULL/0). */
int httpd_listen(httpd_server_t *srv, const char *host, int port, char *err,
                 size_t errlen);

/*
 * Close the listener and every connection (abort_cb runs for each request
 * still pending); @cb (may be NULL) runs once everything is closed.  Call it
 * once, also when httpd_listen() failed.
 */
void httpd_close(httpd_server_t *srv, httpd_close_cb cb);

/*
 * Answer the pending request of @conn: status line, Content-Type (omitted
 * when NULL), Content-Length and Connection headers, then @body (@len bytes;
 * not sent for HEAD).  The bytes are copied.  Afterwards the connection
 * reads the next request or closes.  0; UV_EINVAL when @conn has no pending
 * request or @status is not 200..599 (nothing sent, the request stays
 * pending); another UV_E* code when writing fails: the connection is then
 * closed (abort_cb is not called) and must not be used any more.
 */
int httpd_respond(httpd_conn_t *conn, int status, const char *content_type,
                  const char *body, size_t len);

/* Drop @conn without answering; with @reset, with a TCP RST.  abort_cb is
 * not called (the caller is the one giving up).  @conn is invalid after. */
void httpd_conn_abort(httpd_conn_t *conn, int reset);

/* Per-connection pointer for the application (NULL at first). */
void httpd_conn_set_data(httpd_conn_t *conn, void *data);
void *httpd_conn_get_data(const httpd_conn_t *conn);
httpd_server_t *httpd_conn_server(const httpd_conn_t *conn);

/* First header named @name (case-insensitive), or NULL. */
const char *httpd_header(const httpd_req_t *req, const char *name);

/* "OK", "Not Found", ...; "Unknown" for codes not in the table. */
const char *httpd_reason(int status);

/* Parse a port number 0..65535.  0 or UV_EINVAL. */
int httpd_parse_port(const char *s, int *port);

/*
 * Print "listening on 127.0.0.1:PORT" to stdout (flushed) and, when
 * @port_file is not NULL, write "PORT\n" to it atomically (a temporary file
 * in the same directory, then rename).  Synchronous: call it before uv_run().
 * 0 or a UV_E* code with a message in @err.
 */
int httpd_announce(const httpd_server_t *srv, const char *port_file, char *err,
                   size_t errlen);

#endif /* HTTPD_H */
