/*
 * demo.c - phasegate-demo, the pretend "Loom" review service of the
 * quickstart: a small HTTP service in front of the PostgreSQL table `jobs`.
 *
 *   phasegate-demo [--port N] [--port-file FILE] [--db CONNINFO] [--buggy]
 *                  [--write-rate N] [--flags-table] [--write-log FILE]
 *
 *   GET /healthz      SELECT count(*) FROM jobs, 1 s deadline:
 *                     200 {"status":"ok","jobs":N,"dual_write":BOOL}, or
 *                     503 {"status":"error","error":"..."}; with --buggy and
 *                     the flag dual_write on: 500 (the buggy release).
 *   GET /flags        {"flags":{"NAME":BOOL,...}}
 *   GET /flags/NAME   {"name":"NAME","enabled":BOOL} (unknown flags: false)
 *   PUT /flags/NAME   body {"enabled": BOOL}: 200 with the new state, 400 on
 *                     bad JSON; each change is printed: "flag NAME -> on".
 *   GET /stats        {"writes_ok":N,"writes_failed":M,"writes_skipped":K,
 *                      "flag_changes":C,"last_error":"..."} of the background
 *                      writer; C counts real flag changes (a PUT of the value
 *                      a flag already has is none).
 *
 * --db defaults to $DATABASE_URL.  Two connections through phasegate's own
 * loop adapter (orchestrator/pg.h): "health" for reads (health checks,
 * flags) and "writer" for the background writes; each reconnects with a
 * short backoff when it breaks (the database may restart).
 *
 * --write-rate N: N times a second the app writes like the real service:
 * an INSERT of a queued job, and every fifth time an UPDATE of the newest
 * one.  While the flag dual_write is on it also writes new_status, and falls
 * back to the plain statement when new_status does not exist (SQLSTATE
 * 42703: the plan's contract phase renamed it).  With --buggy, dual writes
 * fail.  A tick finding the writer busy is skipped; one finding the database
 * unreachable is a failure.  No write failure is fatal.
 *
 * --flags-table: flags also live in the table
 *   feature_flags (name text PRIMARY KEY, enabled boolean NOT NULL)
 * which is read every second (so a plan's `sql` step can flip a flag), and
 * PUT /flags/NAME writes it (503 when that fails).
 *
 * SIGINT/SIGTERM close everything and exit 0.  Exit 2 on bad usage, 1 on
 * other startup errors.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <uv.h>

#include "error.h"
#include "httpd.h"
#include "pg.h"

#define DEMO_HEALTH_DEADLINE_MS 1000
#define DEMO_CONNECT_TIMEOUT_MS 3000
#define DEMO_BACKOFF_MIN_MS 200
#define DEMO_BACKOFF_MAX_MS 2000
#define DEMO_FLAGS_POLL_MS 1000
#define DEMO_MAX_FLAGS 64
#define DEMO_FLAG_NAME_MAX 64
#define DEMO_MAX_WRITE_RATE 1000
#define DEMO_DRAIN_MS 2000

static const char sql_count[] = "SELECT count(*) FROM jobs";
static const char sql_insert[] =
    "INSERT INTO jobs (repo, status) VALUES ($1, 'queued')";
static const char sql_insert_dual[] =
    "INSERT INTO jobs (repo, status, new_status) VALUES ($1, 'queued', 'queued')";
static const char sql_update[] =
    "UPDATE jobs SET status = 'done' WHERE id = (SELECT max(id) FROM jobs)";
static const char sql_update_dual[] =
    "UPDATE jobs SET status = 'done', new_status = 'done' "
    "WHERE id = (SELECT max(id) FROM jobs)";
/* --write-log: every write names its row and value, and reports them back,
 * so a test can tell exactly what the application committed.  Updates
 * spread over the newest 500 rows and cycle through three values. */
static const char sql_insert_log[] =
    "INSERT INTO jobs (repo, status) VALUES ($1, 'queued') RETURNING id, status";
static const char sql_insert_dual_log[] =
    "INSERT INTO jobs (repo, status, new_status) VALUES ($1, 'queued', 'queued') "
    "RETURNING id, status";
static const char sql_update_log[] =
    "UPDATE jobs SET status = $2 WHERE id = (SELECT max(id) FROM jobs) - $1::bigint "
    "RETURNING id, status";
static const char sql_update_dual_log[] =
    "UPDATE jobs SET status = $2, new_status = $2 "
    "WHERE id = (SELECT max(id) FROM jobs) - $1::bigint RETURNING id, status";
static const char sql_flags[] = "SELECT name, enabled FROM feature_flags";
static const char sql_flag_set[] =
    "INSERT INTO feature_flags (name, enabled) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled";

static const char buggy_error[] = "dual-write bug: new_status writes fail";

typedef struct demo_s demo_t;
typedef struct demo_db_s demo_db_t;
typedef struct demo_job_s demo_job_t;

/* ---- one database connection that reconnects, with a job queue ---- */

typedef enum demo_db_state_e {
	DEMO_DB_DOWN,       /* waiting for the backoff timer */
	DEMO_DB_CONNECTING,
	DEMO_DB_READY,
	DEMO_DB_BUSY,       /* a job is running */
	DEMO_DB_CLOSING,    /* phg_pg_close() in progress */
	DEMO_DB_STOPPED,
} demo_db_state_t;

static const char *const demo_db_state_names[] = {
	"down", "connecting", "ready", "busy", "closing", "stopped",
};

/*
 * A job's callback is called exactly once, unless the job is canceled
 * first: status 0 (res = the result), PHG_EPG (err, res), PHG_ECONNECT (the
 * connection broke) or PHG_ECANCELED (the service is stopping).  The job is
 * freed after the callback returns.
 */
typedef void (*demo_job_cb)(demo_job_t *job, int status, PGresult *res,
                            const phg_err_t *err);

struct demo_job_s {
	demo_job_t *next;
	demo_db_t *db;
	const char *sql;    /* one of the static statements */
	int nparams;
	char *params[2];    /* owned copies */
	demo_job_cb cb;     /* NULL once canceled */
	void *arg;
	int kind;           /* for the writer: DEMO_W_* */
};

struct demo_db_s {
	demo_t *app;
	const char *name;   /* "health", "writer" */
	demo_db_state_t state;
	phg_pg_t *pg;       /* the current connection, or NULL */
	uv_timer_t retry;
	uint64_t backoff_ms;
	int ever_connected;
	demo_job_t *head;   /* queued, not started */
	demo_job_t *tail;
	demo_job_t *running;
	char last_error[512];
};

/* ---- the service ---- */

typedef struct demo_flag_s {
	char name[DEMO_FLAG_NAME_MAX + 1];
	int enabled;
} demo_flag_t;

typedef enum demo_write_kind_e {
	DEMO_W_INSERT,
	DEMO_W_INSERT_DUAL,
	DEMO_W_UPDATE,
	DEMO_W_UPDATE_DUAL,
} demo_write_kind_t;

struct demo_s {
	uv_loop_t loop;
	httpd_server_t srv;
	uv_signal_t sigint;
	uv_signal_t sigterm;
	uv_timer_t writer_timer;
	uv_timer_t flags_timer;
	int signals_open;
	int writer_timer_open;
	int flags_timer_open;
	int stopping;
	int writer_draining; /* stopping: the in-flight write finishes first */
	/* options */
	const char *conninfo;
	int buggy;
	int write_rate;
	int flags_table;
	FILE *write_log;    /* --write-log: "I|U ID VALUE" per committed write */
	/* state */
	demo_db_t health;
	demo_db_t writer;
	demo_flag_t flags[DEMO_MAX_FLAGS];
	size_t nflags;
	int flags_poll_running;
	char flags_poll_error[512];
	uint64_t writes_ok;
	uint64_t writes_failed;
	uint64_t writes_skipped;
	uint64_t write_seq;
	uint64_t flag_changes;   /* flag state changes (a PUT of the same value is none) */
	char last_error[512];
};

/* An HTTP request waiting for the database, with its own deadline. */
typedef enum demo_req_kind_e {
	DEMO_REQ_HEALTH,
	DEMO_REQ_FLAG_SET,
} demo_req_kind_t;

typedef struct demo_req_s {
	uv_timer_t timer;
	demo_t *app;
	httpd_conn_t *conn; /* NULL once the client went away */
	demo_job_t *job;    /* the query for it, while it runs */
	demo_req_kind_t kind;
	char flag[DEMO_FLAG_NAME_MAX + 1];
	int enabled;
} demo_req_t;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stdout (the quickstart shows it). */
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* Copy @src into @dst (@n bytes), cut at a UTF-8 character boundary. */
static void copy_str(char *dst, size_t n, const char *src)
{
	size_t l = strlen(src);

	if (l >= n) {
		l = n - 1;
		while (l > 0 && ((unsigned char)src[l] & 0xC0) == 0x80)
			l--;
	}
	memcpy(dst, src, l);
	dst[l] = '\0';
}

/* ---- jobs and connections ---- */

static void db_connect(demo_db_t *db);
static void db_kick(demo_db_t *db);
static void db_broken(demo_db_t *db, const char *why);

static void db_set_state(demo_db_t *db, demo_db_state_t s)
{
	demo_db_state_t old = db->state;

	db->state = s;
	/* READY <-> BUSY happens for every query: not worth a line */
	if (old == s || (old == DEMO_DB_READY && s == DEMO_DB_BUSY) ||
	    (old == DEMO_DB_BUSY && s == DEMO_DB_READY))
		return;
	if (getenv("DEMO_DEBUG") != NULL)
		say("db %s: %s -> %s", db->name, demo_db_state_names[old],
		    demo_db_state_names[s]);
}

static void job_free(demo_job_t *job)
{
	free(job->params[0]);
	free(job->params[1]);
	free(job);
}

static int pg_is_broken(const phg_pg_t *pg)
{
	return pg->state == PHG_PG_BROKEN ||
	       (pg->conn != NULL && PQstatus(pg->conn) == CONNECTION_BAD);
}

/*
 * Queue @sql (a static string) on @db; *@out (may be NULL) is set to the
 * job before anything runs.  0, or PHG_ECONNECT when the connection is down,
 * PHG_ENOMEM (the callback is not called then).  The callback normally runs
 * later, but may run before this returns if the connection breaks while
 * sending: callers set up everything it needs first and touch nothing of
 * theirs after this returns 0.
 */
static int db_submit(demo_db_t *db, const char *sql, int nparams,
                     const char *p0, const char *p1, demo_job_cb cb, void *arg,
                     int kind, demo_job_t **out)
{
	demo_job_t *job;

	if (nparams < 0 || nparams > 2)
		return PHG_EINVAL;
	if (db->state == DEMO_DB_READY && pg_is_broken(db->pg)) {
		/* lost while idle: noticed now */
		db_broken(db, "connection to the database lost");
		return PHG_ECONNECT;
	}
	if (db->state != DEMO_DB_CONNECTING && db->state != DEMO_DB_READY &&
	    db->state != DEMO_DB_BUSY)
		return PHG_ECONNECT;
	job = calloc(1, sizeof(*job));
	if (job == NULL)
		return PHG_ENOMEM;
	job->db = db;
	job->sql = sql;
	job->nparams = nparams;
	job->cb = cb;
	job->arg = arg;
	job->kind = kind;
	for (int i = 0; i < nparams && i < 2; i++) {
		const char *p = i == 0 ? p0 : p1;

		if (p != NULL && (job->params[i] = strdup(p)) == NULL) {
			job_free(job);
			return PHG_ENOMEM;
		}
	}
	if (db->tail != NULL)
		db->tail->next = job;
	else
		db->head = job;
	db->tail = job;
	if (out != NULL)
		*out = job;
	db_kick(db);
	return 0;
}

/* The requester gives up on @job: its callback will not be called. */
static void db_cancel(demo_job_t *job)
{
	demo_db_t *db = job->db;
	demo_job_t **pp;

	if (db->running == job) {
		job->cb = NULL;
		job->arg = NULL;
		if (db->state == DEMO_DB_BUSY && !db->app->stopping)
			phg_pg_cancel(db->pg);
		return;
	}
	for (pp = &db->head; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == job) {
			*pp = job->next;
			if (db->tail == job) {
				db->tail = NULL;
				for (demo_job_t *j = db->head; j != NULL; j = j->next)
					db->tail = j;
			}
			job_free(job);
			return;
		}
	}
}

/* Call every queued job's callback with @status. */
static void db_fail_queued(demo_db_t *db, int status, const phg_err_t *err)
{
	demo_job_t *job;

	while ((job = db->head) != NULL) {
		db->head = job->next;
		if (db->head == NULL)
			db->tail = NULL;
		if (job->cb != NULL)
			job->cb(job, status, NULL, err);
		job_free(job);
	}
}

static void on_retry(uv_timer_t *t)
{
	db_connect(t->data);
}

static void on_pg_closed(phg_pg_t *pg)
{
	demo_db_t *db = pg->data;
	demo_job_t *job = db->running;

	free(pg);
	db->pg = NULL;
	db->running = NULL;
	if (job != NULL) {
		phg_err_t err;

		phg_err_clear(&err);
		phg_err_set(&err, PHG_ECANCELED, "the service is stopping");
		if (job->cb != NULL)
			job->cb(job, PHG_ECANCELED, NULL, &err);
		job_free(job);
	}
	if (db->app->stopping) {
		db_set_state(db, DEMO_DB_STOPPED);
		return;
	}
	db_set_state(db, DEMO_DB_DOWN);
	say("db %s: %s; reconnecting in %llu ms", db->name, db->last_error,
	    (unsigned long long)db->backoff_ms);
	uv_timer_start(&db->retry, on_retry, db->backoff_ms, 0);
	db->backoff_ms *= 2;
	if (db->backoff_ms > DEMO_BACKOFF_MAX_MS)
		db->backoff_ms = DEMO_BACKOFF_MAX_MS;
}

/* The connection failed or broke: fail what waits, close, retry later. */
static void db_broken(demo_db_t *db, const char *why)
{
	phg_err_t err;

	if (db->state == DEMO_DB_CLOSING || db->state == DEMO_DB_STOPPED)
		return;
	copy_str(db->last_error, sizeof(db->last_error), why);
	db_set_state(db, DEMO_DB_CLOSING);
	phg_err_clear(&err);
	phg_err_set(&err, PHG_ECONNECT, "%s", why);
	db_fail_queued(db, PHG_ECONNECT, &err);
	phg_pg_close(db->pg, on_pg_closed);
}

static void on_connect(phg_pg_t *pg, int status, const phg_err_t *err)
{
	demo_db_t *db = pg->data;

	if (status != 0) {
		db_broken(db, err != NULL && err->msg[0] != '\0' ? err->msg
		                                                 : phg_strerror(status));
		return;
	}
	db->backoff_ms = DEMO_BACKOFF_MIN_MS;
	db->last_error[0] = '\0';
	db->ever_connected = 1;
	db_set_state(db, DEMO_DB_READY);
	say("db %s: connected (backend pid %d)", db->name, pg->backend_pid);
	db_kick(db);
}

static void db_connect(demo_db_t *db)
{
	phg_err_t err;
	int rc;

	if (db->app->stopping)
		return;
	db->pg = calloc(1, sizeof(*db->pg));
	if (db->pg == NULL) {
		copy_str(db->last_error, sizeof(db->last_error), "out of memory");
		uv_timer_start(&db->retry, on_retry, db->backoff_ms, 0);
		return;
	}
	rc = phg_pg_init(&db->app->loop, db->pg, db->name);
	if (rc != 0) {
		free(db->pg);
		db->pg = NULL;
		copy_str(db->last_error, sizeof(db->last_error), phg_strerror(rc));
		uv_timer_start(&db->retry, on_retry, db->backoff_ms, 0);
		return;
	}
	db->pg->data = db;
	db_set_state(db, DEMO_DB_CONNECTING);
	phg_err_clear(&err);
	rc = phg_pg_connect(db->pg, db->app->conninfo, DEMO_CONNECT_TIMEOUT_MS,
	                    on_connect, &err);
	if (rc != 0)
		db_broken(db, err.msg[0] != '\0' ? err.msg : phg_strerror(rc));
}

static void on_result(phg_pg_t *pg, int status, PGresult *res,
                      const phg_err_t *err, void *arg)
{
	demo_db_t *db = pg->data;
	demo_job_t *job = arg;
	int broken = status == PHG_ECONNECT || pg_is_broken(pg);

	db->running = NULL;
	if (!broken)
		db_set_state(db, DEMO_DB_READY);
	if (job->cb != NULL)
		job->cb(job, broken ? PHG_ECONNECT : status, res, err);
	job_free(job);
	if (broken)
		db_broken(db, err != NULL && err->msg[0] != '\0'
		                  ? err->msg
		                  : "connection to the database lost");
	else
		db_kick(db);
}

static void db_kick(demo_db_t *db)
{
	demo_job_t *job = db->head;
	int rc;

	if (db->state != DEMO_DB_READY || job == NULL)
		return;
	if (pg_is_broken(db->pg)) {
		db_broken(db, "connection to the database lost");
		return;
	}
	db->head = job->next;
	if (db->head == NULL)
		db->tail = NULL;
	job->next = NULL;
	db->running = job;
	db_set_state(db, DEMO_DB_BUSY);
	rc = phg_pg_query(db->pg, job->sql, job->nparams,
	                  (const char *const *)job->params, on_result, job);
	if (rc != 0) {
		/* back at the front: it fails with the rest of the queue */
		db->running = NULL;
		db_set_state(db, DEMO_DB_READY);
		job->next = db->head;
		db->head = job;
		if (db->tail == NULL)
			db->tail = job;
		db_broken(db, "cannot send the query: the connection is not ready");
	}
}

static int db_init(demo_t *app, demo_db_t *db, const char *name)
{
	int rc;

	memset(db, 0, sizeof(*db));
	db->app = app;
	db->name = name;
	db->state = DEMO_DB_DOWN;
	db->backoff_ms = DEMO_BACKOFF_MIN_MS;
	rc = uv_timer_init(&app->loop, &db->retry);
	db->retry.data = db;
	return rc;
}

/* Close the connection (if any) and the retry timer; queued jobs get
 * PHG_ECANCELED. */
static void db_stop(demo_db_t *db)
{
	phg_err_t err;

	phg_err_clear(&err);
	phg_err_set(&err, PHG_ECANCELED, "the service is stopping");
	db_fail_queued(db, PHG_ECANCELED, &err);
	uv_timer_stop(&db->retry);
	uv_close((uv_handle_t *)&db->retry, NULL);
	switch (db->state) {
	case DEMO_DB_CONNECTING:
	case DEMO_DB_READY:
	case DEMO_DB_BUSY:
		db_set_state(db, DEMO_DB_CLOSING);
		phg_pg_close(db->pg, on_pg_closed);
		break;
	case DEMO_DB_DOWN:
		db_set_state(db, DEMO_DB_STOPPED);
		break;
	case DEMO_DB_CLOSING: /* on_pg_closed() will see app->stopping */
	case DEMO_DB_STOPPED:
		break;
	}
}

/* ---- flags ---- */

static int flag_name_ok(const char *s)
{
	size_t n = 0;

	for (; *s != '\0'; s++, n++) {
		char c = *s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
			return 0;
	}
	return n > 0 && n <= DEMO_FLAG_NAME_MAX;
}

static int flag_get(const demo_t *app, const char *name)
{
	size_t i;

	for (i = 0; i < app->nflags; i++)
		if (strcmp(app->flags[i].name, name) == 0)
			return app->flags[i].enabled;
	return 0;
}

/* 0, or -1 when the table of flags is full. */
static int flag_set(demo_t *app, const char *name, int enabled,
                    const char *source)
{
	size_t i;

	for (i = 0; i < app->nflags; i++)
		if (strcmp(app->flags[i].name, name) == 0)
			break;
	if (i == app->nflags) {
		if (app->nflags >= DEMO_MAX_FLAGS)
			return -1;
		copy_str(app->flags[i].name, sizeof(app->flags[i].name), name);
		app->flags[i].enabled = 0;
		app->nflags++;
	}
	if (app->flags[i].enabled != enabled)
		app->flag_changes++;
	if (source == NULL || app->flags[i].enabled != enabled)
		say("flag %s -> %s%s%s", name, enabled ? "on" : "off",
		    source != NULL ? " " : "", source != NULL ? source : "");
	app->flags[i].enabled = enabled;
	return 0;
}

static void on_flags_polled(demo_job_t *job, int status, PGresult *res,
                            const phg_err_t *err)
{
	demo_t *app = job->arg;
	int i;

	app->flags_poll_running = 0;
	if (status == PHG_ECANCELED)
		return;
	if (status != 0) {
		const char *msg = err != NULL ? err->msg : phg_strerror(status);

		if (strcmp(msg, app->flags_poll_error) != 0)
			say("cannot read feature_flags: %s", msg);
		copy_str(app->flags_poll_error, sizeof(app->flags_poll_error), msg);
		return;
	}
	app->flags_poll_error[0] = '\0';
	for (i = 0; i < PQntuples(res); i++) {
		const char *name = PQgetvalue(res, i, 0);
		const char *on = PQgetvalue(res, i, 1);

		if (flag_name_ok(name))
			flag_set(app, name, on[0] == 't', "(feature_flags)");
	}
}

static void on_flags_timer(uv_timer_t *t)
{
	demo_t *app = t->data;

	if (app->flags_poll_running || app->health.state == DEMO_DB_CONNECTING)
		return;
	app->flags_poll_running = 1;
	if (db_submit(&app->health, sql_flags, 0, NULL, NULL, on_flags_polled, app,
	              0, NULL) != 0)
		app->flags_poll_running = 0;
}

/* ---- the background writer ---- */

static void write_failed(demo_t *app, const char *msg)
{
	app->writes_failed++;
	copy_str(app->last_error, sizeof(app->last_error), msg);
}

static void write_start(demo_t *app, demo_write_kind_t kind);
static void on_writer_drained(uv_timer_t *t);
static void write_outcome(demo_job_t *job, int status, PGresult *res,
                          const phg_err_t *err);

/* A write ended; while stopping, the writer stops on the next loop turn
 * (not inside this job's own callback chain). */
static void on_written(demo_job_t *job, int status, PGresult *res,
                       const phg_err_t *err)
{
	demo_t *app = job->arg;

	write_outcome(job, status, res, err);
	if (app->writer_draining)
		uv_timer_start(&app->writer_timer, on_writer_drained, 0, 0);
}

static void write_outcome(demo_job_t *job, int status, PGresult *res,
                          const phg_err_t *err)
{
	demo_t *app = job->arg;

	if (status == PHG_ECANCELED)
		return;
	if (status == 0) {
		app->writes_ok++;
		if (app->write_log != NULL && res != NULL) {
			int upd = job->kind == DEMO_W_UPDATE || job->kind == DEMO_W_UPDATE_DUAL;

			/* an update may find no row (the table is empty): nothing written */
			for (int r = 0; r < PQntuples(res); r++)
				fprintf(app->write_log, "%c %s %s\n", upd ? 'U' : 'I',
				        PQgetvalue(res, r, 0), PQgetvalue(res, r, 1));
			fflush(app->write_log);
		}
		return;
	}
	if (status == PHG_EPG && err != NULL && strcmp(err->sqlstate, "42703") == 0 &&
	    !app->stopping && (job->kind == DEMO_W_INSERT_DUAL || job->kind == DEMO_W_UPDATE_DUAL)) {
		/* new_status is gone (contract renamed it): write like before */
		write_start(app, job->kind == DEMO_W_INSERT_DUAL ? DEMO_W_INSERT
		                                                 : DEMO_W_UPDATE);
		return;
	}
	if (err != NULL && err->sqlstate[0] != '\0') {
		char msg[600];

		snprintf(msg, sizeof(msg), "%s (SQLSTATE %s)", err->msg, err->sqlstate);
		write_failed(app, msg);
	} else {
		write_failed(app, err != NULL ? err->msg : phg_strerror(status));
	}
}

static void write_start(demo_t *app, demo_write_kind_t kind)
{
	static const char *const sql[] = {
		[DEMO_W_INSERT] = sql_insert,
		[DEMO_W_INSERT_DUAL] = sql_insert_dual,
		[DEMO_W_UPDATE] = sql_update,
		[DEMO_W_UPDATE_DUAL] = sql_update_dual,
	};
	static const char *const sql_log[] = {
		[DEMO_W_INSERT] = sql_insert_log,
		[DEMO_W_INSERT_DUAL] = sql_insert_dual_log,
		[DEMO_W_UPDATE] = sql_update_log,
		[DEMO_W_UPDATE_DUAL] = sql_update_dual_log,
	};
	static const char *const values[] = {"running", "done", "failed"};
	char repo[64];
	int upd = kind == DEMO_W_UPDATE || kind == DEMO_W_UPDATE_DUAL;
	int nparams = !upd;
	const char *p1 = NULL;
	int rc;

	snprintf(repo, sizeof(repo), "loom/repo-%llu",
	         (unsigned long long)(app->write_seq % 37));
	if (app->write_log != NULL && upd) {
		/* which row (back from the newest) and which value */
		snprintf(repo, sizeof(repo), "%llu",
		         (unsigned long long)(app->write_seq * 7919 % 500));
		p1 = values[app->write_seq % 3];
		nparams = 2;
	}
	rc = db_submit(&app->writer, app->write_log != NULL ? sql_log[kind] : sql[kind],
	               nparams, repo, p1, on_written, app, (int)kind, NULL);
	if (rc == 0)
		return;
	if (rc == PHG_ECONNECT) {
		char msg[600];

		snprintf(msg, sizeof(msg), "database unavailable: %s",
		         app->writer.last_error[0] ? app->writer.last_error
		                                   : "not connected");
		write_failed(app, msg);
	} else {
		write_failed(app, phg_strerror(rc));
	}
}

static void on_writer_tick(uv_timer_t *t)
{
	demo_t *app = t->data;
	demo_db_t *db = &app->writer;
	int dual = flag_get(app, "dual_write");
	int update;

	if (db->state == DEMO_DB_BUSY || db->head != NULL ||
	    (db->state != DEMO_DB_READY && !db->ever_connected)) {
		app->writes_skipped++; /* still busy, or still starting */
		return;
	}
	update = app->write_seq % 5 == 4;
	app->write_seq++;
	if (dual && app->buggy) {
		write_failed(app, buggy_error);
		return;
	}
	if (update)
		write_start(app, dual ? DEMO_W_UPDATE_DUAL : DEMO_W_UPDATE);
	else
		write_start(app, dual ? DEMO_W_INSERT_DUAL : DEMO_W_INSERT);
}

/* ---- HTTP ---- */

static void respond_json(httpd_conn_t *conn, int status, json_t *j)
{
	char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

	json_decref(j);
	if (s == NULL) {
		static const char oom[] =
		    "{\"status\":\"error\",\"error\":\"out of memory\"}";

		httpd_respond(conn, 500, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	httpd_respond(conn, status, "application/json", s, strlen(s));
	free(s);
}

/* A JSON string of @s; bytes that are not valid UTF-8 (a server message in
 * a SQL_ASCII database, say) become '?'. */
static json_t *json_text(const char *s)
{
	size_t n = strlen(s);
	json_t *j = json_stringn(s, n);
	char *t;

	if (j != NULL)
		return j;
	t = strdup(s);
	if (t == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] >= 0x80)
			t[i] = '?';
	j = json_stringn(t, n);
	free(t);
	return j;
}

static json_t *error_json(const char *msg)
{
	return json_pack("{s:s,s:o}", "status", "error", "error", json_text(msg));
}

static void respond_error(httpd_conn_t *conn, int status, const char *msg)
{
	respond_json(conn, status, error_json(msg));
}

static void on_req_timer_close(uv_handle_t *h)
{
	free(h->data);
}

/* Answer (when the client is still there) and free @r. */
static void req_finish(demo_req_t *r, int status, json_t *body)
{
	httpd_conn_t *conn = r->conn;

	r->conn = NULL;
	if (r->job != NULL) {
		db_cancel(r->job);
		r->job = NULL;
	}
	uv_timer_stop(&r->timer);
	uv_close((uv_handle_t *)&r->timer, on_req_timer_close);
	if (conn != NULL) {
		httpd_conn_set_data(conn, NULL);
		respond_json(conn, status, body);
	} else {
		json_decref(body);
	}
}

static void on_req_deadline(uv_timer_t *t)
{
	demo_req_t *r = t->data;
	char msg[700];

	if (r->app->health.state == DEMO_DB_READY ||
	    r->app->health.state == DEMO_DB_BUSY)
		snprintf(msg, sizeof(msg), "query timed out after %d ms",
		         DEMO_HEALTH_DEADLINE_MS);
	else
		snprintf(msg, sizeof(msg), "database unavailable: %s",
		         r->app->health.last_error[0] ? r->app->health.last_error
		                                      : "connecting");
	req_finish(r, 503, error_json(msg));
}

static void on_req_result(demo_job_t *job, int status, PGresult *res,
                          const phg_err_t *err)
{
	demo_req_t *r = job->arg;
	demo_t *app = r->app;

	r->job = NULL;
	if (status != 0) {
		char msg[700];

		snprintf(msg, sizeof(msg), "%s%s",
		         status == PHG_ECONNECT ? "database unavailable: " : "",
		         err != NULL && err->msg[0] ? err->msg : phg_strerror(status));
		req_finish(r, 503, error_json(msg));
		return;
	}
	if (r->kind == DEMO_REQ_HEALTH) {
		const char *v = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "0";

		req_finish(r, 200,
		           json_pack("{s:s,s:I,s:b}", "status", "ok", "jobs",
		                     (json_int_t)strtoll(v, NULL, 10), "dual_write",
		                     flag_get(app, "dual_write")));
		return;
	}
	if (flag_set(app, r->flag, r->enabled, NULL) != 0) {
		req_finish(r, 400, error_json("too many flags"));
		return;
	}
	req_finish(r, 200, json_pack("{s:s,s:b}", "name", r->flag, "enabled",
	                             r->enabled));
}

/* Run @sql on the health connection for @conn, with a deadline. */
static void req_start(demo_t *app, httpd_conn_t *conn, demo_req_kind_t kind,
                      const char *sql, int nparams, const char *p0,
                      const char *p1, const char *flag, int enabled)
{
	demo_req_t *r = calloc(1, sizeof(*r));
	int rc;

	if (r == NULL) {
		respond_error(conn, 500, "out of memory");
		return;
	}
	r->app = app;
	r->kind = kind;
	r->enabled = enabled;
	if (flag != NULL)
		copy_str(r->flag, sizeof(r->flag), flag);
	rc = uv_timer_init(&app->loop, &r->timer);
	if (rc != 0) {
		free(r);
		respond_error(conn, 500, uv_strerror(rc));
		return;
	}
	r->timer.data = r;
	uv_timer_start(&r->timer, on_req_deadline, DEMO_HEALTH_DEADLINE_MS, 0);
	r->conn = conn;
	httpd_conn_set_data(conn, r);
	/* everything is in place: the result may even arrive right away */
	rc = db_submit(&app->health, sql, nparams, p0, p1, on_req_result, r, 0,
	               &r->job);
	if (rc != 0) {
		char msg[700];

		snprintf(msg, sizeof(msg), "database unavailable: %s",
		         app->health.last_error[0] ? app->health.last_error
		                                   : phg_strerror(rc));
		req_finish(r, 503, error_json(msg));
	}
}

static void on_abort(httpd_conn_t *conn)
{
	demo_req_t *r = httpd_conn_get_data(conn);

	if (r == NULL)
		return;
	r->conn = NULL;
	req_finish(r, 0, NULL);
}

static void handle_healthz(demo_t *app, httpd_conn_t *conn)
{
	if (app->buggy && flag_get(app, "dual_write")) {
		respond_error(conn, 500, buggy_error);
		return;
	}
	req_start(app, conn, DEMO_REQ_HEALTH, sql_count, 0, NULL, NULL, NULL, 0);
}

static void handle_flag(demo_t *app, httpd_conn_t *conn, const httpd_req_t *req,
                        const char *name)
{
	json_error_t jerr;
	json_t *doc;
	json_t *en;
	int enabled;

	if (!flag_name_ok(name)) {
		respond_error(conn, 400,
		              "invalid flag name: use 1 to 64 of A-Z a-z 0-9 _ - .");
		return;
	}
	if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) {
		respond_json(conn, 200, json_pack("{s:s,s:b}", "name", name, "enabled",
		                                  flag_get(app, name)));
		return;
	}
	if (strcmp(req->method, "PUT") != 0) {
		respond_error(conn, 405, "use GET or PUT");
		return;
	}
	doc = json_loadb(req->body, req->body_len, 0, &jerr);
	if (doc == NULL) {
		char msg[300];

		snprintf(msg, sizeof(msg), "invalid JSON: %s", jerr.text);
		respond_error(conn, 400, msg);
		return;
	}
	en = json_is_object(doc) ? json_object_get(doc, "enabled") : NULL;
	if (!json_is_boolean(en)) {
		json_decref(doc);
		respond_error(conn, 400, "expected {\"enabled\": true|false}");
		return;
	}
	enabled = json_is_true(en);
	json_decref(doc);
	if (app->flags_table) {
		req_start(app, conn, DEMO_REQ_FLAG_SET, sql_flag_set, 2, name,
		          enabled ? "true" : "false", name, enabled);
		return;
	}
	if (flag_set(app, name, enabled, NULL) != 0) {
		respond_error(conn, 400, "too many flags");
		return;
	}
	respond_json(conn, 200,
	             json_pack("{s:s,s:b}", "name", name, "enabled", enabled));
}

static void handle_flags(demo_t *app, httpd_conn_t *conn)
{
	json_t *o = json_object();
	size_t i;

	for (i = 0; o != NULL && i < app->nflags; i++)
		json_object_set_new(o, app->flags[i].name,
		                    json_boolean(app->flags[i].enabled));
	respond_json(conn, 200, o != NULL ? json_pack("{s:o}", "flags", o) : NULL);
}

static void handle_stats(demo_t *app, httpd_conn_t *conn)
{
	respond_json(conn, 200,
	             json_pack("{s:I,s:I,s:I,s:I,s:o}", "writes_ok",
	                       (json_int_t)app->writes_ok, "writes_failed",
	                       (json_int_t)app->writes_failed, "writes_skipped",
	                       (json_int_t)app->writes_skipped, "flag_changes",
	                       (json_int_t)app->flag_changes, "last_error",
	                       json_text(app->last_error)));
}

static int is_get(const httpd_req_t *req)
{
	return strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
}

static void on_request(httpd_conn_t *conn, const httpd_req_t *req)
{
	demo_t *app = httpd_conn_server(conn)->data;
	const char *p = req->path;

	if (app->stopping) {
		respond_error(conn, 503, "shutting down");
	} else if (strncmp(p, "/flags/", 7) == 0) {
		handle_flag(app, conn, req, p + 7);
	} else if (strcmp(p, "/healthz") == 0 || strcmp(p, "/flags") == 0 ||
	           strcmp(p, "/stats") == 0) {
		if (!is_get(req))
			respond_error(conn, 405, "use GET");
		else if (p[1] == 'h')
			handle_healthz(app, conn);
		else if (p[1] == 'f')
			handle_flags(app, conn);
		else
			handle_stats(app, conn);
	} else {
		respond_error(conn, 404, "not found");
	}
}

/* ---- start, stop ---- */

/* The in-flight write finished (or DEMO_DRAIN_MS passed): stop the writer. */
static void on_writer_drained(uv_timer_t *t)
{
	demo_t *app = t->data;

	if (!app->writer_draining)
		return;
	app->writer_draining = 0;
	uv_close((uv_handle_t *)&app->writer_timer, NULL);
	app->writer_timer_open = 0;
	db_stop(&app->writer);
}

static void stop(demo_t *app)
{
	if (app->stopping)
		return;
	app->stopping = 1;
	say("stopping");
	if (app->signals_open) {
		uv_close((uv_handle_t *)&app->sigint, NULL);
		uv_close((uv_handle_t *)&app->sigterm, NULL);
		app->signals_open = 0;
	}
	if (app->writer_timer_open && app->writer.running != NULL) {
		/* a write is in flight: let it finish (at most DEMO_DRAIN_MS), so
		 * what was committed is known and logged */
		app->writer_draining = 1;
		uv_timer_start(&app->writer_timer, on_writer_drained, DEMO_DRAIN_MS, 0);
	} else if (app->writer_timer_open) {
		uv_close((uv_handle_t *)&app->writer_timer, NULL);
		app->writer_timer_open = 0;
	}
	if (app->flags_timer_open) {
		uv_close((uv_handle_t *)&app->flags_timer, NULL);
		app->flags_timer_open = 0;
	}
	/* requests first: they let go of their jobs */
	httpd_close(&app->srv, NULL);
	db_stop(&app->health);
	if (!app->writer_draining)
		db_stop(&app->writer);
}

static void on_signal(uv_signal_t *s, int signum)
{
	(void)signum;
	stop(s->data);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: phasegate-demo [--port N] [--port-file FILE] [--db CONNINFO]\n"
	        "                      [--buggy] [--write-rate N] [--flags-table]\n"
	        "  --port N         listen on 127.0.0.1:N (0 = any free port; default 8080)\n"
	        "  --port-file F    write the port to F once listening\n"
	        "  --db CONNINFO    libpq URI or key=value string (default $DATABASE_URL)\n"
	        "  --buggy          the buggy release: breaks when dual_write is on\n"
	        "  --write-rate N   background app writes per second (default 0)\n"
	        "  --flags-table    keep flags in the table feature_flags too\n"
	        "  --write-log F    append \"I|U ID VALUE\" to F for every committed write\n"
	        "                   (updates then spread over the newest 500 rows)\n");
}

static int parse_rate(const char *s, int *out)
{
	char *end;
	long v;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > DEMO_MAX_WRITE_RATE)
		return -1;
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	static demo_t app;
	const char *port_file = NULL;
	char err[512];
	int port = 8080;
	int status = 0;
	int rc;
	int i;
	struct sigaction sa;

	app.conninfo = getenv("DATABASE_URL");
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--buggy") == 0) {
			app.buggy = 1;
		} else if (strcmp(a, "--flags-table") == 0) {
			app.flags_table = 1;
		} else if (i + 1 >= argc) {
			fprintf(stderr, "phasegate-demo: unknown or incomplete option \"%s\"\n",
			        a);
			usage(stderr);
			return 2;
		} else if (strcmp(a, "--port") == 0) {
			if (httpd_parse_port(argv[++i], &port) != 0) {
				fprintf(stderr, "phasegate-demo: invalid port \"%s\"\n", argv[i]);
				return 2;
			}
		} else if (strcmp(a, "--port-file") == 0) {
			port_file = argv[++i];
		} else if (strcmp(a, "--db") == 0) {
			app.conninfo = argv[++i];
		} else if (strcmp(a, "--write-log") == 0) {
			app.write_log = fopen(argv[++i], "a");
			if (app.write_log == NULL) {
				fprintf(stderr, "phasegate-demo: cannot open write log \"%s\": %s\n",
				        argv[i], strerror(errno));
				return 2;
			}
		} else if (strcmp(a, "--write-rate") == 0) {
			if (parse_rate(argv[++i], &app.write_rate) != 0) {
				fprintf(stderr,
				        "phasegate-demo: invalid write rate \"%s\"\n"
				        "HINT: Use a number of writes per second from 0 to %d.\n",
				        argv[i], DEMO_MAX_WRITE_RATE);
				return 2;
			}
		} else {
			fprintf(stderr, "phasegate-demo: unknown option \"%s\"\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (app.conninfo == NULL || app.conninfo[0] == '\0') {
		fprintf(stderr, "phasegate-demo: no database\n"
		                "HINT: Pass --db CONNINFO or set DATABASE_URL.\n");
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	setenv("PGAPPNAME", "phasegate-demo", 0);

	rc = uv_loop_init(&app.loop);
	if (rc != 0) {
		fprintf(stderr, "phasegate-demo: %s\n", uv_strerror(rc));
		return 1;
	}
	rc = httpd_init(&app.loop, &app.srv, on_request, on_abort);
	if (rc == 0)
		rc = db_init(&app, &app.health, "health");
	if (rc == 0)
		rc = db_init(&app, &app.writer, "writer");
	if (rc != 0) {
		fprintf(stderr, "phasegate-demo: %s\n", uv_strerror(rc));
		return 1; /* nothing could be set up: nothing to close cleanly */
	}
	app.srv.data = &app;
	rc = httpd_listen(&app.srv, "127.0.0.1", port, err, sizeof(err));
	if (rc == 0) {
		uv_signal_init(&app.loop, &app.sigint);
		uv_signal_init(&app.loop, &app.sigterm);
		app.sigint.data = &app;
		app.sigterm.data = &app;
		app.signals_open = 1;
		rc = uv_signal_start(&app.sigint, on_signal, SIGINT);
		if (rc == 0)
			rc = uv_signal_start(&app.sigterm, on_signal, SIGTERM);
		if (rc != 0)
			snprintf(err, sizeof(err), "cannot handle signals: %s",
			         uv_strerror(rc));
	}
	if (rc == 0 && app.write_rate > 0) {
		uint64_t every = 1000 / (uint64_t)app.write_rate;

		uv_timer_init(&app.loop, &app.writer_timer);
		app.writer_timer.data = &app;
		app.writer_timer_open = 1;
		uv_timer_start(&app.writer_timer, on_writer_tick, every,
		               every > 0 ? every : 1);
	}
	if (rc == 0 && app.flags_table) {
		uv_timer_init(&app.loop, &app.flags_timer);
		app.flags_timer.data = &app;
		app.flags_timer_open = 1;
		uv_timer_start(&app.flags_timer, on_flags_timer, 0, DEMO_FLAGS_POLL_MS);
	}
	if (rc == 0) {
		db_connect(&app.health);
		db_connect(&app.writer);
		rc = httpd_announce(&app.srv, port_file, err, sizeof(err));
	}
	if (rc != 0) {
		fprintf(stderr, "phasegate-demo: %s\n", err);
		status = 1;
		stop(&app);
	}

	uv_run(&app.loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&app.loop);
	if (rc != 0) {
		fprintf(stderr, "phasegate-demo: handles left open at exit: %s\n",
		        uv_strerror(rc));
		uv_print_all_handles(&app.loop, stderr);
		status = 1;
	}
	if (app.write_log != NULL)
		fclose(app.write_log);
	return status;
}
