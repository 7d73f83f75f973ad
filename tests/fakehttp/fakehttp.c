/*
 * fakehttp.c - a scriptable fake health endpoint for phasegate's tests.
 *
 *   fakehttp [--port N] [--port-file FILE] [--mode MODE] [--log FILE]
 *
 * Every request except the control paths below is a "probe" and is answered
 * according to the current mode:
 *
 *   healthy        200 {"status":"ok"} (the default)
 *   status:CODE    CODE (200..599) with {"status":"error"}
 *   slow:MS        the healthy answer after MS milliseconds (a uv timer)
 *   hang           read the request, never answer, keep the connection
 *   reset          close the connection (TCP RST) after reading the request
 *   flap           healthy, 503, healthy, 503, ... starting healthy
 *   fail-after:N   the first N probes healthy, then 503
 *   body:TEXT      200 with TEXT as the body (text/plain)
 *   echo:CODE      CODE with the request (method, path, headers, body) as JSON
 *
 * Control paths (neither counted nor recorded nor logged):
 *
 *   PUT /_mode        body = a mode string: switch to it and reset the probe
 *                     counter (which drives flap and fail-after, and is what
 *                     /_count reports); 400 on an unknown mode.
 *   GET /_mode        {"mode":"..."}
 *   GET /_count       probes since start or the last mode switch, plain text
 *   GET /_requests    JSON array of every probe since start (or the last
 *                     DELETE /_requests), oldest first, at most 1000:
 *                     {"method","path","headers":{name:value},"body",
 *                      "time_ms" (since start),"mode"}; header names as sent,
 *                     repeated headers joined with ", ".
 *   DELETE /_requests forget the recorded probes.
 *
 * --log FILE appends one JSON line per probe (the same object) to FILE,
 * asynchronously and in order.  Prints "listening on 127.0.0.1:PORT" once
 * listening; --port-file gets the port, written atomically.  SIGINT/SIGTERM
 * close everything and exit 0.  Exit 2 on bad usage, 1 on other errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <uv.h>

#include "httpd.h"

#define FAKE_MAX_RECORDS 1000

typedef enum fake_kind_e {
	FAKE_HEALTHY,
	FAKE_STATUS,
	FAKE_SLOW,
	FAKE_HANG,
	FAKE_RESET,
	FAKE_FLAP,
	FAKE_FAIL_AFTER,
	FAKE_BODY,
	FAKE_ECHO, /* answer CODE with the request (its headers) as the body */
} fake_kind_t;

typedef struct fake_mode_s {
	fake_kind_t kind;
	long arg;      /* CODE, MS or N */
	char *spec;    /* the mode string as given; body:TEXT's TEXT at +5 */
} fake_mode_t;

typedef struct fake_logline_s {
	struct fake_logline_s *next;
	size_t len;
	size_t off;
	char data[];
} fake_logline_t;

typedef struct fake_s {
	uv_loop_t loop;
	httpd_server_t srv;
	uv_signal_t sigint;
	uv_signal_t sigterm;
	int signals_open;
	int stopping;
	fake_mode_t mode;
	uint64_t count;       /* probes since start or the last mode switch */
	uint64_t start_ns;
	json_t *records;      /* array */
	/* --log FILE: one write in flight at a time, in order */
	uv_file log_fd;
	uv_fs_t log_req;
	fake_logline_t *log_head;
	fake_logline_t *log_tail;
	int log_busy;
	int log_error_reported;
} fake_t;

/* A probe answered later (slow:MS). */
typedef struct fake_delay_s {
	uv_timer_t timer;
	httpd_conn_t *conn;   /* NULL once the connection went away */
} fake_delay_t;

static const char healthy_body[] = "{\"status\":\"ok\"}";
static const char error_body[] = "{\"status\":\"error\"}";

/* ---- modes ---- */

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* Parse @s (@len bytes) into @m.  0, or -1 with a message in @err. */
static int mode_parse(const char *s, size_t len, fake_mode_t *m, char *err,
                      size_t errlen)
{
	fake_mode_t n = {FAKE_HEALTHY, 0, NULL};

	if (memchr(s, '\0', len) != NULL) {
		snprintf(err, errlen, "mode contains a NUL byte");
		return -1;
	}
	n.spec = malloc(len + 1);
	if (n.spec == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memcpy(n.spec, s, len);
	n.spec[len] = '\0';
	if (strcmp(n.spec, "healthy") == 0) {
		n.kind = FAKE_HEALTHY;
	} else if (strcmp(n.spec, "hang") == 0) {
		n.kind = FAKE_HANG;
	} else if (strcmp(n.spec, "reset") == 0) {
		n.kind = FAKE_RESET;
	} else if (strcmp(n.spec, "flap") == 0) {
		n.kind = FAKE_FLAP;
	} else if (strncmp(n.spec, "status:", 7) == 0) {
		n.kind = FAKE_STATUS;
		if (parse_long(n.spec + 7, 200, 599, &n.arg) != 0)
			goto bad_arg;
	} else if (strncmp(n.spec, "slow:", 5) == 0) {
		n.kind = FAKE_SLOW;
		if (parse_long(n.spec + 5, 0, 3600L * 1000, &n.arg) != 0)
			goto bad_arg;
	} else if (strncmp(n.spec, "fail-after:", 11) == 0) {
		n.kind = FAKE_FAIL_AFTER;
		if (parse_long(n.spec + 11, 0, 1000L * 1000 * 1000, &n.arg) != 0)
			goto bad_arg;
	} else if (strncmp(n.spec, "body:", 5) == 0) {
		n.kind = FAKE_BODY;
	} else if (strncmp(n.spec, "echo:", 5) == 0) {
		n.kind = FAKE_ECHO;
		if (parse_long(n.spec + 5, 200, 599, &n.arg) != 0)
			goto bad_arg;
	} else {
		snprintf(err, errlen, "unknown mode \"%.64s\"", n.spec);
		free(n.spec);
		return -1;
	}
	*m = n;
	return 0;

bad_arg:
	snprintf(err, errlen,
	         "invalid mode \"%.64s\": status takes 200..599, slow "
	         "milliseconds, fail-after a count",
	         n.spec);
	free(n.spec);
	return -1;
}

static void mode_set(fake_t *app, fake_mode_t *m)
{
	free(app->mode.spec);
	app->mode = *m;
	app->count = 0;
}

/* ---- JSON helpers ---- */

/* A JSON string of @n bytes; bytes that are not valid UTF-8 become '?'. */
static json_t *json_text(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n);
	char *t;
	size_t i;

	if (j != NULL)
		return j;
	t = malloc(n + 1);
	if (t == NULL)
		return NULL;
	for (i = 0; i < n; i++)
		t[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
	t[n] = '\0';
	j = json_stringn(t, n);
	free(t);
	return j;
}

/* {"mode":"..."} */
static json_t *mode_json(const fake_t *app)
{
	return json_pack("{s:o}", "mode",
	                 json_text(app->mode.spec, strlen(app->mode.spec)));
}

static json_t *request_json(fake_t *app, const httpd_req_t *req)
{
	json_t *o = json_object();
	json_t *h = json_object();
	size_t i;

	if (o == NULL || h == NULL) {
		json_decref(o);
		json_decref(h);
		return NULL;
	}
	for (i = 0; i < req->nheaders; i++) {
		const char *name = req->headers[i].name;
		const char *value = req->headers[i].value;
		const char *key;
		json_t *old = NULL;
		json_t *v;

		json_object_foreach(h, key, v) {
			if (strcasecmp(key, name) == 0) {
				old = v;
				name = key;
				break;
			}
		}
		if (old != NULL) {
			size_t ol = json_string_length(old);
			size_t vl = strlen(value);
			char *joined = malloc(ol + 2 + vl + 1);

			if (joined == NULL)
				continue;
			memcpy(joined, json_string_value(old), ol);
			memcpy(joined + ol, ", ", 2);
			memcpy(joined + ol + 2, value, vl + 1);
			json_object_set_new(h, name, json_text(joined, ol + 2 + vl));
			free(joined);
		} else {
			/* header names are tokens (httpd checked): ASCII */
			json_object_set_new(h, name, json_text(value, strlen(value)));
		}
	}
	json_object_set_new(o, "method", json_text(req->method, strlen(req->method)));
	json_object_set_new(o, "path", json_text(req->target, strlen(req->target)));
	json_object_set_new(o, "headers", h);
	json_object_set_new(o, "body", json_text(req->body, req->body_len));
	json_object_set_new(o, "time_ms",
	                    json_integer((json_int_t)((uv_hrtime() - app->start_ns) /
	                                              1000000)));
	json_object_set_new(o, "mode",
	                    json_text(app->mode.spec, strlen(app->mode.spec)));
	return o;
}

/* ---- --log FILE ---- */

static void log_kick(fake_t *app);

static void on_log_write(uv_fs_t *req)
{
	fake_t *app = req->data;
	fake_logline_t *l = app->log_head;
	ssize_t r = req->result;

	uv_fs_req_cleanup(req);
	app->log_busy = 0;
	if (r < 0) {
		if (!app->log_error_reported)
			fprintf(stderr, "fakehttp: cannot write the log: %s\n",
			        uv_strerror((int)r));
		app->log_error_reported = 1;
		l->off = l->len;
	} else {
		l->off += (size_t)r;
	}
	if (l->off >= l->len) {
		app->log_head = l->next;
		if (app->log_head == NULL)
			app->log_tail = NULL;
		free(l);
	}
	log_kick(app);
}

static void on_log_close(uv_fs_t *req)
{
	uv_fs_req_cleanup(req);
}

static void log_kick(fake_t *app)
{
	fake_logline_t *l = app->log_head;
	uv_buf_t b;
	int rc;

	if (app->log_busy || app->log_fd < 0)
		return;
	if (l == NULL) {
		if (app->stopping) {
			app->log_req.data = app;
			if (uv_fs_close(&app->loop, &app->log_req, app->log_fd,
			                on_log_close) != 0)
				fprintf(stderr, "fakehttp: cannot close the log\n");
			app->log_fd = -1;
		}
		return;
	}
	b = uv_buf_init(l->data + l->off, (unsigned int)(l->len - l->off));
	app->log_req.data = app;
	rc = uv_fs_write(&app->loop, &app->log_req, app->log_fd, &b, 1, -1,
	                 on_log_write);
	if (rc != 0) {
		/* cannot even queue it: drop this line, try the next later */
		fprintf(stderr, "fakehttp: cannot write the log: %s\n", uv_strerror(rc));
		app->log_head = l->next;
		if (app->log_head == NULL)
			app->log_tail = NULL;
		free(l);
		return;
	}
	app->log_busy = 1;
}

static void log_append(fake_t *app, const json_t *rec)
{
	char *s;
	size_t n;
	fake_logline_t *l;

	if (app->log_fd < 0 || app->stopping)
		return;
	s = json_dumps(rec, JSON_COMPACT);
	if (s == NULL)
		return;
	n = strlen(s);
	l = malloc(sizeof(*l) + n + 1);
	if (l == NULL) {
		free(s);
		return;
	}
	memcpy(l->data, s, n);
	l->data[n] = '\n';
	l->len = n + 1;
	l->off = 0;
	l->next = NULL;
	free(s);
	if (app->log_tail != NULL)
		app->log_tail->next = l;
	else
		app->log_head = l;
	app->log_tail = l;
	log_kick(app);
}

/* ---- answers ---- */

static void respond_json(httpd_conn_t *conn, int status, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	json_decref(j);
	if (s == NULL) {
		httpd_respond(conn, 500, "text/plain", "out of memory\n", 14);
		return;
	}
	httpd_respond(conn, status, "application/json", s, strlen(s));
	free(s);
}

static void respond_healthy(httpd_conn_t *conn)
{
	httpd_respond(conn, 200, "application/json", healthy_body,
	              sizeof(healthy_body) - 1);
}

static void respond_error(httpd_conn_t *conn, int status)
{
	httpd_respond(conn, status, "application/json", error_body,
	              sizeof(error_body) - 1);
}

static void on_delay_close(uv_handle_t *h)
{
	free(h->data);
}

static void on_delay(uv_timer_t *t)
{
	fake_delay_t *d = t->data;
	httpd_conn_t *conn = d->conn;

	d->conn = NULL;
	uv_close((uv_handle_t *)&d->timer, on_delay_close);
	if (conn != NULL) {
		httpd_conn_set_data(conn, NULL);
		respond_healthy(conn);
	}
}

static void on_abort(httpd_conn_t *conn)
{
	fake_delay_t *d = httpd_conn_get_data(conn);

	if (d == NULL)
		return; /* hang */
	httpd_conn_set_data(conn, NULL);
	d->conn = NULL;
	uv_timer_stop(&d->timer);
	uv_close((uv_handle_t *)&d->timer, on_delay_close);
}

static void probe(fake_t *app, httpd_conn_t *conn, const httpd_req_t *req)
{
	uint64_t idx = app->count++;
	json_t *rec = request_json(app, req);

	if (rec != NULL) {
		log_append(app, rec);
		if (json_array_size(app->records) >= FAKE_MAX_RECORDS)
			json_array_remove(app->records, 0);
		json_array_append_new(app->records, rec);
	}
	switch (app->mode.kind) {
	case FAKE_HEALTHY:
		respond_healthy(conn);
		break;
	case FAKE_STATUS:
		respond_error(conn, (int)app->mode.arg);
		break;
	case FAKE_SLOW: {
		fake_delay_t *d = calloc(1, sizeof(*d));

		if (d == NULL || uv_timer_init(&app->loop, &d->timer) != 0) {
			free(d);
			httpd_respond(conn, 500, "text/plain", "out of memory\n", 14);
			break;
		}
		d->timer.data = d;
		d->conn = conn;
		httpd_conn_set_data(conn, d);
		uv_timer_start(&d->timer, on_delay, (uint64_t)app->mode.arg, 0);
		break;
	}
	case FAKE_HANG:
		break; /* on_abort() finds no data */
	case FAKE_RESET:
		httpd_conn_abort(conn, 1);
		break;
	case FAKE_FLAP:
		if (idx % 2 == 0)
			respond_healthy(conn);
		else
			respond_error(conn, 503);
		break;
	case FAKE_FAIL_AFTER:
		if (idx < (uint64_t)app->mode.arg)
			respond_healthy(conn);
		else
			respond_error(conn, 503);
		break;
	case FAKE_BODY: {
		const char *text = app->mode.spec + 5;

		httpd_respond(conn, 200, "text/plain; charset=utf-8", text,
		              strlen(text));
		break;
	}
	case FAKE_ECHO: {
		/* a server that reflects what it was sent (a secret in a header) */
		json_t *again = request_json(app, req);
		char *text = again ? json_dumps(again, JSON_COMPACT) : NULL;

		httpd_respond(conn, (int)app->mode.arg, "application/json",
		              text ? text : "{}", text ? strlen(text) : 2);
		free(text);
		json_decref(again);
		break;
	}
	}
}

static void control_mode(fake_t *app, httpd_conn_t *conn,
                         const httpd_req_t *req)
{
	fake_mode_t m;
	char err[256];
	size_t len = req->body_len;

	if (strcmp(req->method, "GET") == 0) {
		respond_json(conn, 200, mode_json(app));
		return;
	}
	if (strcmp(req->method, "PUT") != 0) {
		respond_json(conn, 405, json_pack("{s:s}", "error", "use GET or PUT"));
		return;
	}
	while (len > 0 && (req->body[len - 1] == '\n' || req->body[len - 1] == '\r'))
		len--;
	if (mode_parse(req->body, len, &m, err, sizeof(err)) != 0) {
		/* err quotes the body, which may not be UTF-8 */
		respond_json(conn, 400,
		             json_pack("{s:o}", "error", json_text(err, strlen(err))));
		return;
	}
	mode_set(app, &m);
	printf("mode -> %s\n", app->mode.spec);
	fflush(stdout);
	respond_json(conn, 200, mode_json(app));
}

static void on_request(httpd_conn_t *conn, const httpd_req_t *req)
{
	fake_t *app = httpd_conn_server(conn)->data;

	if (strcmp(req->path, "/_mode") == 0) {
		control_mode(app, conn, req);
	} else if (strcmp(req->path, "/_requests") == 0) {
		if (strcmp(req->method, "GET") == 0) {
			respond_json(conn, 200, json_incref(app->records));
		} else if (strcmp(req->method, "DELETE") == 0) {
			json_array_clear(app->records);
			respond_json(conn, 200, json_pack("{s:b}", "cleared", 1));
		} else {
			respond_json(conn, 405,
			             json_pack("{s:s}", "error", "use GET or DELETE"));
		}
	} else if (strcmp(req->path, "/_count") == 0) {
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%llu\n",
		                 (unsigned long long)app->count);

		httpd_respond(conn, 200, "text/plain", buf, (size_t)n);
	} else {
		probe(app, conn, req);
	}
}

/* ---- start, stop ---- */

static void on_signal_close(uv_handle_t *h)
{
	fake_t *app = h->data;

	app->signals_open--;
}

static void stop(fake_t *app)
{
	if (app->stopping)
		return;
	app->stopping = 1;
	if (app->signals_open > 0) {
		uv_close((uv_handle_t *)&app->sigint, on_signal_close);
		uv_close((uv_handle_t *)&app->sigterm, on_signal_close);
	}
	httpd_close(&app->srv, NULL);
	log_kick(app);
}

static void on_signal(uv_signal_t *s, int signum)
{
	(void)signum;
	stop(s->data);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: fakehttp [--port N] [--port-file FILE] [--mode MODE] "
	        "[--log FILE]\n"
	        "modes: healthy status:CODE slow:MS hang reset flap "
	        "fail-after:N body:TEXT echo:CODE\n"
	        "control: PUT /_mode, GET /_mode, GET /_count, GET|DELETE "
	        "/_requests\n");
}

int main(int argc, char **argv)
{
	static fake_t app;
	const char *port_file = NULL;
	const char *log_path = NULL;
	const char *mode = "healthy";
	char err[512];
	int port = 0;
	int rc;
	int i;
	int status = 0;
	struct sigaction sa;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "fakehttp: unknown or incomplete option \"%s\"\n", a);
			usage(stderr);
			return 2;
		}
		if (strcmp(a, "--port") == 0) {
			if (httpd_parse_port(argv[++i], &port) != 0) {
				fprintf(stderr, "fakehttp: invalid port \"%s\"\n", argv[i]);
				return 2;
			}
		} else if (strcmp(a, "--port-file") == 0) {
			port_file = argv[++i];
		} else if (strcmp(a, "--mode") == 0) {
			mode = argv[++i];
		} else if (strcmp(a, "--log") == 0) {
			log_path = argv[++i];
		} else {
			fprintf(stderr, "fakehttp: unknown option \"%s\"\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (mode_parse(mode, strlen(mode), &app.mode, err, sizeof(err)) != 0) {
		fprintf(stderr, "fakehttp: %s\n", err);
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	app.log_fd = -1;
	app.start_ns = uv_hrtime();
	app.records = json_array();
	if (app.records == NULL) {
		fprintf(stderr, "fakehttp: out of memory\n");
		return 1;
	}
	rc = uv_loop_init(&app.loop);
	if (rc != 0) {
		fprintf(stderr, "fakehttp: %s\n", uv_strerror(rc));
		return 1;
	}
	rc = httpd_init(&app.loop, &app.srv, on_request, on_abort);
	if (rc != 0) {
		fprintf(stderr, "fakehttp: %s\n", uv_strerror(rc));
		uv_loop_close(&app.loop);
		return 1;
	}
	app.srv.data = &app;
	rc = httpd_listen(&app.srv, "127.0.0.1", port, err, sizeof(err));
	if (rc == 0 && log_path != NULL) {
		uv_fs_t req;

		rc = uv_fs_open(&app.loop, &req, log_path,
		                O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644, NULL);
		uv_fs_req_cleanup(&req);
		if (rc < 0) {
			snprintf(err, sizeof(err), "cannot open log \"%s\": %s", log_path,
			         uv_strerror(rc));
		} else {
			app.log_fd = rc;
			rc = 0;
		}
	}
	if (rc == 0) {
		uv_signal_init(&app.loop, &app.sigint);
		uv_signal_init(&app.loop, &app.sigterm);
		app.sigint.data = &app;
		app.sigterm.data = &app;
		app.signals_open = 2;
		rc = uv_signal_start(&app.sigint, on_signal, SIGINT);
		if (rc == 0)
			rc = uv_signal_start(&app.sigterm, on_signal, SIGTERM);
		if (rc != 0)
			snprintf(err, sizeof(err), "cannot handle signals: %s",
			         uv_strerror(rc));
	}
	if (rc == 0)
		rc = httpd_announce(&app.srv, port_file, err, sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "fakehttp: %s\n", err);
		status = 1;
		stop(&app);
	}

	uv_run(&app.loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&app.loop);
	if (rc != 0) {
		fprintf(stderr, "fakehttp: handles left open at exit: %s\n",
		        uv_strerror(rc));
		uv_print_all_handles(&app.loop, stderr);
		status = 1;
	}
	json_decref(app.records);
	free(app.mode.spec);
	return status;
}
