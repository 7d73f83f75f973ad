/*
 * session.c - an engine's session with its database and its process: the
 * two connections (`work` holds the plan's session advisory lock and runs
 * state transitions and the steps' ops, so a step's DDL and its progress
 * record share a transaction; `ctl` writes the event log and looks up
 * blocking sessions), connecting with retries, taking the plan lock,
 * creating the state schema, SIGINT/SIGTERM, and shutdown (every handle
 * closed, queued events written first).
 */
#include "engine_int.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* At exit the control connection first writes the events still queued, so
 * the event log holds the whole run; at most PHG_EVENT_DRAIN_MS. */
#define PHG_EVENT_DRAIN_MS 3000

/* A query of the session's own failed: the run cannot go on.  1 if so. */
static int query_failed(engine_t *e, int status, const phg_err_t *err)
{
	phg_err_t tmp;

	if (status == 0)
		return 0;
	phg_err_clear(&tmp);
	phg_err_copy(&tmp, err);
	phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
	return 1;
}

/* A query could not even be sent. */
static void not_usable(engine_t *e)
{
	phg_err_t tmp;

	phg_err_clear(&tmp);
	phg_err_set(&tmp, PHG_ECONNECT, "the database connection is not usable");
	phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
}

static void eq_cb(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg);
static void on_pg_closed(phg_pg_t *pg);
static void on_exec_closed(phg_exec_t *x);
static void on_handle_closed(uv_handle_t *h);
static void ctl_close_now(engine_t *e);
static void ctl_drained(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg);
static void ctl_drain_timeout(uv_timer_t *t);
static void on_signal(uv_signal_t *h, int signum);
static void retry_fire(uv_timer_t *t);
static void connect_failed_closed(phg_pg_t *pg);
static void on_connected(phg_pg_t *pg, int status, const phg_err_t *err);
static void connect_start(engine_t *e);
static void take_lock(engine_t *e);
static void work_connected(engine_t *e);

void phg_eng_fatal(engine_t *e, int code, const phg_err_t *err)
{
	if (code == PHG_EXIT_RUNTIME && e->run_id > 0 && err != NULL && err->code == PHG_ECONNECT &&
	    !e->stop_requested && !e->conn_lost) {
		/* the command reconnects and resumes (commands.c): a warning */
		e->conn_lost = 1;
		phg_eng_report(e, PHG_LOG_WARN, err);
		phg_log(PHG_LOG_WARN, &e->log,
		        "the connection to the database was lost mid-run; state is saved up to the "
		        "last committed step");
		phg_eng_shutdown(e, code);
		return;
	}
	if (err != NULL && err->code != 0)
		phg_eng_report(e, PHG_LOG_ERROR, err);
	if (code == PHG_EXIT_RUNTIME && e->run_id > 0)
		phg_log(PHG_LOG_ERROR, &e->log,
		        "state is saved up to the last committed step; run apply again to resume "
		        "(or rollback)");
	phg_eng_shutdown(e, code);
}

static void eq_cb(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	ek_t k = e->k;

	(void)pg;
	e->k = NULL;
	if (status != 0) {
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_copy(&tmp, err);
		if (tmp.code == 0)
			phg_err_set(&tmp, status, "%s", phg_strerror(status));
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
		return;
	}
	e->res = res;
	k(e);
	e->res = NULL;
}

void phg_eng_query(engine_t *e, const char *sql, int np, const char *const *params, ek_t k)
{
	e->k = k;
	if (phg_pg_query(&e->work, sql, np, params, eq_cb, e) != 0)
		not_usable(e);
}

void phg_eng_queryb(engine_t *e, phg_buf_t *b, ek_t k)
{
	if (phg_buf_error(b) != 0) {
		phg_err_t tmp;

		/* never send a statement with a piece missing */
		phg_err_clear(&tmp);
		phg_err_set(&tmp, phg_buf_error(b), "internal error: a state query does not fit in "
		                                     "%zu bytes",
		            b->max);
		phg_buf_free(b);
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
		return;
	}
	phg_eng_query(e, b->data, 0, NULL, k);
	phg_buf_free(b);
}

char *phg_eng_lit(engine_t *e, const char *s)
{
	char *l, *r;

	if (s == NULL)
		return phg_strdup("NULL");
	l = PQescapeLiteral(e->work.conn, s, strlen(s));
	if (l == NULL)
		return phg_strdup("NULL");
	r = phg_strdup(l);
	PQfreemem(l);
	return r;
}

static void on_pg_closed(phg_pg_t *pg)
{
	engine_t *e = pg->data;

	if (pg == &e->work)
		e->work_open = 0;
	else
		e->ctl_open = 0;
}

static void on_exec_closed(phg_exec_t *x)
{
	engine_t *e = x->data;

	e->x_open = 0;
}

static void on_handle_closed(uv_handle_t *h)
{
	(void)h;
}

static void ctl_close_now(engine_t *e)
{
	if (e->retry_open) {
		uv_close((uv_handle_t *)&e->retry_timer, on_handle_closed);
		e->retry_open = 0;
	}
	if (e->ctl_open && e->ctl.state != PHG_PG_CLOSING && e->ctl.state != PHG_PG_CLOSED) {
		phg_pg_close(&e->ctl, on_pg_closed);
		phg_pgq_discard(&e->ctlq);
	}
}

static void ctl_drained(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	(void)pg;
	(void)status;
	(void)res;
	(void)err;
	ctl_close_now(arg);
}

static void ctl_drain_timeout(uv_timer_t *t)
{
	engine_t *e = t->data;

	phg_log(PHG_LOG_WARN, NULL, "giving up writing %zu event(s) to the event log",
	        phg_pgq_pending(&e->ctlq));
	ctl_close_now(e);
}

void phg_eng_shutdown(engine_t *e, int code)
{
	if (e->shutting_down)
		return;
	e->shutting_down = 1;
	e->exit_code = code;
	e->act = ACT_DONE;
	if (e->signals_open) {
		uv_close((uv_handle_t *)&e->sigint, on_handle_closed);
		uv_close((uv_handle_t *)&e->sigterm, on_handle_closed);
		e->signals_open = 0;
	}
	if (e->watch_on) {
		phg_gate_stop(&e->watch, NULL);
		e->watch_on = 0;
	}
	if (e->verify_on) {
		phg_gate_stop(&e->verify, NULL);
		e->verify_on = 0;
	}
	if (e->gate_timer_open) {
		uv_close((uv_handle_t *)&e->gate_timer, on_handle_closed);
		e->gate_timer_open = 0;
	}
	if (e->backup != NULL) {
		phg_backup_cancel(e->backup);
		e->backup = NULL;
	}
	if (e->http_open) {
		phg_http_close(e->http, NULL, NULL);
		e->http_open = 0;
	}
	phg_notify_close(e->notify); /* those in flight finish first, within their timeout */
	e->notify = NULL;
	if (e->x_open)
		phg_exec_close(&e->x, on_exec_closed);
	if (e->work_open)
		phg_pg_close(&e->work, on_pg_closed);
	if (e->ctl_open && e->ctl.state != PHG_PG_BROKEN && e->ctl.state != PHG_PG_CONNECTING &&
	    phg_pgq_pending(&e->ctlq) > 0 && e->retry_open) {
		/* let the queued events reach the log first */
		uv_timer_stop(&e->retry_timer);
		uv_timer_start(&e->retry_timer, ctl_drain_timeout, PHG_EVENT_DRAIN_MS, 0);
		phg_pgq_query(&e->ctlq, "SELECT 1", 0, NULL, ctl_drained, e);
	} else {
		ctl_close_now(e);
	}
}

static void on_signal(uv_signal_t *h, int signum)
{
	engine_t *e = h->data;

	e->signals++;
	e->stop_requested = 1;
	if (e->signals == 1) {
		phg_log(PHG_LOG_WARN, &e->log,
		        "%s received: finishing the current statement or batch, then saving state "
		        "(again to cancel the running statement)",
		        signum == SIGINT ? "SIGINT" : "SIGTERM");
		/* a wait for the next attempt ends at once, not at its end */
		if (e->x_open)
			phg_exec_interrupt(&e->x);
		/* a gate would probe on for its soak, or for ever: it ends now */
		phg_eng_verify_interrupt(e);
		if (e->retry_open && !e->shutting_down && uv_is_active((uv_handle_t *)&e->retry_timer)) {
			uv_timer_stop(&e->retry_timer);
			phg_eng_shutdown(e, PHG_EXIT_INTERRUPTED);
		}
	} else if (e->backup != NULL) {
		phg_log(PHG_LOG_WARN, &e->log, "stopping pg_dump; the backup is taken again on resume");
		phg_backup_cancel(e->backup);
		e->backup = NULL;
		phg_eng_act(e, ACT_IDLE); /* the backup is abandoned */
		phg_eng_interrupt(e);
	} else if (e->work_open && e->work.state == PHG_PG_BUSY) {
		phg_log(PHG_LOG_WARN, &e->log, "cancelling the running statement");
		phg_pg_cancel(&e->work);
	}
}

int phg_eng_should_stop(void *arg)
{
	engine_t *e = arg;

	return e->stop_requested || e->watch_failed;
}

static void retry_fire(uv_timer_t *t)
{
	engine_t *e = t->data;

	if (e->stop_requested) {
		phg_eng_shutdown(e, PHG_EXIT_INTERRUPTED);
		return;
	}
	connect_start(e);
}

static void connect_failed_closed(phg_pg_t *pg)
{
	engine_t *e = pg->data;
	uint64_t rng = uv_hrtime();
	uint64_t d = phg_backoff_ms(e->st->retry_backoff_ms * 2, e->st->retry_backoff_max_ms,
	                            (uint64_t)e->connect_attempt, &rng);

	if (pg == &e->work)
		e->work_open = 0;
	else
		e->ctl_open = 0;
	if (e->shutting_down)
		return;
	phg_log(PHG_LOG_INFO, &e->log, "retrying the connection in %" PRIu64 " ms", d);
	uv_timer_start(&e->retry_timer, retry_fire, d, 0);
}

static void on_connected(phg_pg_t *pg, int status, const phg_err_t *err)
{
	engine_t *e = pg->data;

	if (status == 0) {
		e->connect_attempt = 0;
		e->connecting = NULL;
		e->after_connect(e);
		return;
	}
	{
		phg_err_t tmp;

		phg_err_clear(&tmp);
		phg_err_copy(&tmp, err);
		if (tmp.code == 0)
			phg_err_set(&tmp, status, "cannot connect to the database: %s",
			            phg_strerror(status));
		if (e->stop_requested) {
			phg_eng_shutdown(e, PHG_EXIT_INTERRUPTED);
			return;
		}
		switch (phg_pg_connect_failure(status, &tmp)) {
		case PHG_CONN_INVALID:
			phg_err_hint(&tmp, "$%s must be a libpq URI (postgresql://...) or key=value pairs.",
			             e->url_env);
			phg_eng_fatal(e, PHG_EXIT_USAGE, &tmp);
			return;
		case PHG_CONN_FINAL:
			/* the server answered and said no: another attempt cannot help */
			phg_err_hint(&tmp, "Check the user, password and database of $%s (or the PG* "
			                   "variables); nothing was changed.",
			             e->url_env);
			phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
			return;
		case PHG_CONN_RETRY:
			break;
		}
		if ((uint64_t)e->connect_attempt >= e->st->connect_retries) {
			phg_err_hint(&tmp,
			             "The database comes from $%s (a libpq URI or conninfo), and the PG* "
			             "variables as in psql.",
			             e->url_env);
			phg_log(PHG_LOG_ERROR, &e->log, "database unreachable after %d attempt(s)",
			        e->connect_attempt);
			phg_eng_fatal(e, PHG_EXIT_RUNTIME, &tmp);
			return;
		}
		phg_log(PHG_LOG_WARN, &e->log, "%s (attempt %d/%" PRIu64 ")", tmp.msg,
		        e->connect_attempt, e->st->connect_retries);
		phg_pg_close(pg, connect_failed_closed);
	}
}

static void connect_start(engine_t *e)
{
	phg_pg_t *pg = e->connecting;
	phg_err_t err;

	phg_err_clear(&err);
	e->connect_attempt++;
	phg_pg_init(e->loop, pg, pg == &e->work ? "work" : "ctl");
	pg->data = e;
	if (pg == &e->work)
		e->work_open = 1;
	else
		e->ctl_open = 1;
	if (phg_pg_connect(pg, e->conninfo, e->st->connect_timeout_ms, on_connected, &err) != 0)
		on_connected(pg, err.code ? err.code : PHG_ECONNECT, &err);
}

void phg_eng_connect(engine_t *e, phg_pg_t *pg, ek_t k)
{
	e->connecting = pg;
	e->after_connect = k;
	e->connect_attempt = 0;
	connect_start(e);
}

/* --takeover: lock attempts 200 ms apart; pg_terminate_backend at the
 * 25th (5 s after the cancel), giving up at the 50th */
#define TAKEOVER_EVERY_MS 200
#define TAKEOVER_TERMINATE_AT 25
#define TAKEOVER_GIVE_UP_AT 50

static void takeover_fire(uv_timer_t *t)
{
	take_lock(t->data);
}

static void takeover_sent(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                          void *arg)
{
	engine_t *e = arg;

	(void)pg;
	(void)status;
	(void)res;
	(void)err;
	uv_timer_start(&e->retry_timer, takeover_fire, TAKEOVER_EVERY_MS, 0);
}

/* Cancel (then terminate) the orphaned backend, and try the lock again. */
static void takeover_step(engine_t *e)
{
	char pid[24];
	const char *p[1] = {pid};
	int terminate = e->takeover_tries == TAKEOVER_TERMINATE_AT;

	snprintf(pid, sizeof(pid), "%d", e->holder_backend);
	if (e->takeover_tries == 0 || terminate) {
		phg_log(PHG_LOG_WARN, &e->log, "--takeover: %s backend pid %d",
		        terminate ? "still held 5 s after the cancel: terminating" : "cancelling",
		        e->holder_backend);
		phg_pgq_query(&e->ctlq,
		              terminate ? "SELECT pg_terminate_backend($1::int)"
		                        : "SELECT pg_cancel_backend($1::int)",
		              1, p, takeover_sent, e);
	} else {
		uv_timer_start(&e->retry_timer, takeover_fire, TAKEOVER_EVERY_MS, 0);
	}
	e->takeover_tries++;
}

static void lock_holder_run(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                            void *arg)
{
	engine_t *e = arg;
	phg_err_t out;
	char me[256] = "";
	size_t hn = sizeof(me);
	const char *cpid = NULL, *chost = NULL;
	long long client = 0;
	int gone = 0, alive = 0;

	(void)pg;
	(void)err;
	if (status == 0 && res != NULL && PQntuples(res) > 0 && !PQgetisnull(res, 0, 6)) {
		cpid = PQgetvalue(res, 0, 6);
		chost = PQgetvalue(res, 0, 7);
	}
	if (cpid != NULL && uv_os_gethostname(me, &hn) == 0 && strcmp(chost, me) == 0 &&
	    phg_parse_int64(cpid, 1, INT_MAX, &client) == 0) {
		if (kill((pid_t)client, 0) == 0 || errno == EPERM)
			alive = 1;
		else if (errno == ESRCH)
			gone = 1;
	}
	if (gone && e->o->takeover && e->takeover_tries < TAKEOVER_GIVE_UP_AT) {
		takeover_step(e);
		return;
	}
	phg_err_clear(&out);
	if (gone) {
		phg_err_set(&out, PHG_ELOCKED,
		            "plan \"%s\" is locked by a phasegate that is gone: pid %lld on this host "
		            "no longer runs, but its server session (backend pid %d) still holds the "
		            "plan's lock",
		            e->plan->name, client, e->holder_backend);
		if (e->o->takeover)
			phg_err_detail(&out, "--takeover cancelled and then terminated backend %d, and it "
			                     "still holds the lock after 10 s.",
			               e->holder_backend);
		else
			phg_err_detail(&out, "It was killed (kill -9?) while its statement ran; the server "
			                     "ends that session when the statement ends, or within "
			                     "client_connection_check_interval.");
		phg_err_hint(&out, "Run the same command with --takeover: it cancels backend %d "
		                   "(pg_cancel_backend, then pg_terminate_backend) and resumes the run "
		                   "from its recorded state; or wait for the server to end it.",
		             e->holder_backend);
	} else {
		phg_err_set(&out, PHG_ELOCKED,
		            "plan \"%s\" is being run by another phasegate on this database",
		            e->plan->name);
		if (status == 0 && res != NULL && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
			phg_err_detail(&out,
			               "The plan's lock is held by run %s (%s, started %s by %s on %s, pid "
			               "%s)%s",
			               PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
			               PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 5),
			               e->lock_holder);
		else if (e->lock_holder[0] != '\0')
			phg_err_detail(&out, "The plan's lock is held%s", e->lock_holder);
		if (e->o->takeover && alive)
			phg_err_hint(&out, "--takeover refused: phasegate pid %lld on this host is alive; "
			                   "stop it (Ctrl-C, or kill %lld) or wait for it.",
			             client, client);
		else if (e->o->takeover)
			phg_err_hint(&out, "--takeover refused: it cannot tell whether the holder (on host "
			                   "\"%s\") is gone; stop it there, or end its session with "
			                   "pg_terminate_backend(%d).",
			             chost != NULL ? chost : "?", e->holder_backend);
		else
			phg_err_hint(&out,
			             "Wait for it to finish, or use `phasegate status` to see where it is.");
	}
	phg_eng_ctx(e, -1, -1);
	phg_eng_report(e, PHG_LOG_ERROR, &out);
	phg_eng_shutdown(e, PHG_EXIT_LOCKED);
}

static void lock_holder(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	char bpid[24];
	const char *p[2] = {e->plan->name, bpid};
	long long v = 0;
	phg_buf_t b;

	(void)pg;
	(void)err;
	e->lock_holder[0] = '\0';
	e->holder_backend = 0;
	if (status == 0 && PQntuples(res) > 0) {
		snprintf(e->lock_holder, sizeof(e->lock_holder),
		         " through backend pid %s (%s, connected since %s).", PQgetvalue(res, 0, 0),
		         PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
		if (phg_parse_int64(PQgetvalue(res, 0, 0), 1, INT_MAX, &v) == 0)
			e->holder_backend = (int)v;
	} else {
		snprintf(e->lock_holder, sizeof(e->lock_holder), ".");
	}
	if (e->holder_backend == 0 && e->takeover_tries > 0) {
		/* released between the two queries: try again */
		uv_timer_start(&e->retry_timer, takeover_fire, TAKEOVER_EVERY_MS, 0);
		return;
	}
	snprintf(bpid, sizeof(bpid), "%d", e->holder_backend);
	/* which run: the newest unfinished one of this plan, and the phasegate
	 * behind the session (the state schema may not exist yet: then the query
	 * fails and only the session is named) */
	phg_buf_init(&b, 4096);
	phg_store_lock_holder_run_sql(&b, e->schema_q);
	phg_pgq_query(&e->ctlq, b.data, 2, p, lock_holder_run, e);
	phg_buf_free(&b);
}

/* The lock is ours: record who holds it, so that a later phasegate can
 * tell a holder that is gone from one that runs. */
static void holder_recorded(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                            void *arg)
{
	engine_t *e = arg;

	(void)pg;
	(void)res;
	if (query_failed(e, status, err))
		return;
	phg_eng_ready(e);
}

static void schema_ready(engine_t *e)
{
	char pid[24], host[256] = "?";
	size_t hn = sizeof(host);
	const char *p[3] = {e->plan->name, pid, host};
	phg_buf_t b;

	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (uv_os_gethostname(host, &hn) != 0)
		snprintf(host, sizeof(host), "?");
	phg_buf_init(&b, 4096);
	phg_store_lock_holder_set_sql(&b, e->schema_q);
	if (phg_pg_query(&e->work, b.data, 3, p, holder_recorded, e) != 0) {
		not_usable(e);
	}
	phg_buf_free(&b);
}

static void lock_taken(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	engine_t *e = arg;
	phg_buf_t b;

	(void)pg;
	if (query_failed(e, status, err))
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		char cls[32];
		const char *p2[2] = {cls, e->plan->name};

		snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
		phg_pgq_query(&e->ctlq,
		              "SELECT a.pid, coalesce(nullif(a.application_name, ''), '?') || "
		              "coalesce(' from ' || a.client_addr::text, ''), "
		              "date_trunc('second', a.backend_start)::text "
		              "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
		              "WHERE " PHG_PLAN_LOCK_HELD("$1", "$2"),
		              2, p2, lock_holder, e);
		return;
	}
	if (e->takeover_tries > 0)
		phg_log(PHG_LOG_WARN, &e->log, "--takeover: the plan's lock is ours; resuming from the "
		                               "recorded state");
	phg_log(PHG_LOG_DEBUG, &e->log, "plan lock taken");
	phg_buf_init(&b, 64 * 1024);
	phg_store_schema_sql(&b, e->schema_q);
	phg_eng_queryb(e, &b, schema_ready);
}

static void take_lock(engine_t *e)
{
	char cls[32];
	const char *p[2] = {cls, e->plan->name};

	snprintf(cls, sizeof(cls), "%d", PHG_LOCK_CLASS);
	/* on `work`: the session that writes the state holds the lock, so
	 * losing it (fatal for the run anyway) is the only way to lose the lock */
	if (phg_pg_query(&e->work, "SELECT pg_try_advisory_lock($1::int, hashtext($2))", 2, p,
	                 lock_taken, e) != 0) {
		not_usable(e);
	}
}

static void ignore_result(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                          void *arg)
{
	(void)pg;
	(void)status;
	(void)res;
	(void)err;
	(void)arg;
}

static void check_interval_set(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                               void *arg)
{
	(void)pg;
	(void)status; /* not worth failing for */
	(void)res;
	(void)err;
	take_lock(arg);
}

/* PostgreSQL 14+: a session whose client is gone (phasegate killed while
 * a statement of it runs) ends within this much, not when the statement
 * ends; the plan's lock goes with it. */
#define PHG_CHECK_INTERVAL "SELECT set_config('client_connection_check_interval', '2s', false)"

static void work_connected(engine_t *e)
{
	phg_log(PHG_LOG_DEBUG, &e->log, "connected (work pid %d, ctl pid %d)", e->work.backend_pid,
	        e->ctl.backend_pid);
	/* never a misleading word about where: the target first */
	phg_pg_describe(&e->work, e->target, sizeof(e->target));
	phg_log(PHG_LOG_INFO, &e->log, "target: %s%s%s%s", e->target,
	        e->o->env ? ", environment \"" : "", e->o->env ? e->o->env : "",
	        e->o->env ? "\"" : "");
	phg_pgq_init(&e->ctlq, &e->ctl);
	if (PQserverVersion(e->work.conn) >= 140000) {
		phg_pgq_query(&e->ctlq, PHG_CHECK_INTERVAL, 0, NULL, ignore_result, NULL);
		if (phg_pg_query(&e->work, PHG_CHECK_INTERVAL, 0, NULL, check_interval_set, e) == 0)
			return;
	}
	take_lock(e);
}

void phg_eng_ctl_connected(engine_t *e)
{
	phg_eng_connect(e, &e->work, work_connected);
}

int phg_eng_init(engine_t *e, uv_loop_t *loop, engine_mode_t mode, phg_plan_t *plan,
                 const phg_run_opts_t *o)
{
	const char *url;
	char *q;
	phg_err_t terr;

	memset(e, 0, sizeof(*e));
	e->mode = mode;
	e->plan = plan;
	e->o = o;
	e->started_ms = phg_eng_now_ms();
	e->pi = e->si = -1;
	e->loop = loop;
	if (plan != NULL) {
		e->st = &plan->settings;
		e->url_env = plan->url_env;
		e->log.plan = plan->name;
	} else {
		/* no plan (history of every plan): the plan loader's defaults */
		phg_settings_defaults(&e->own_settings);
		e->st = &e->own_settings;
		e->url_env = o->db_env ? o->db_env : "DATABASE_URL";
	}
	/* never the wrong database: an engine made directly (engine.h) is held
	 * to the same rule as the commands */
	phg_err_clear(&terr);
	url = phg_target_url(plan, e->url_env, &terr);
	if (url == NULL) {
		phg_log_err(PHG_LOG_ERROR, &e->log, &terr);
		return PHG_EUSAGE;
	}
	e->conninfo = phg_strdup(url);
	/* the state schema name is a validated identifier */
	q = phg_asprintf("\"%s\"", e->st->state_schema);
	e->schema_q = q;
	uv_signal_init(e->loop, &e->sigint);
	uv_signal_init(e->loop, &e->sigterm);
	e->sigint.data = e->sigterm.data = e;
	uv_signal_start(&e->sigint, on_signal, SIGINT);
	uv_signal_start(&e->sigterm, on_signal, SIGTERM);
	e->signals_open = 1;
	uv_timer_init(e->loop, &e->retry_timer);
	e->retry_timer.data = e;
	e->retry_open = 1;
	uv_timer_init(e->loop, &e->gate_timer);
	e->gate_timer.data = e;
	e->gate_timer_open = 1;
	if (phg_http_init(e->loop, &e->http) == 0)
		e->http_open = 1;
	e->notify = phg_notify_new(e->loop, plan);
	phg_exec_init(e->loop, &e->x);
	e->x.data = e;
	e->x_open = 1;
	e->to_idx = plan ? (int)plan->nphases - 1 : -1;
	e->exit_code = PHG_EXIT_RUNTIME;
	return 0;
}

int phg_eng_release(engine_t *e)
{
	phg_eng_ops_clear(e);
	phg_eng_rt_free(e);
	free(e->conninfo);
	free(e->schema_q);
	free(e->run_plan);
	e->conninfo = e->schema_q = e->run_plan = NULL;
	phg_settings_clear(&e->own_settings);
	return e->exit_code;
}

/* ---- the engine as an object (engine.h) ---- */

phg_engine_t *phg_engine_new(uv_loop_t *loop, phg_engine_mode_t mode, phg_plan_t *plan,
                             const phg_run_opts_t *o, int *exit_code)
{
	engine_t *e;
	int to = mode == PHG_ENGINE_APPLY ? (int)plan->nphases - 1 : -1, rc;

	if (o->to_phase != NULL && phg_eng_to_phase(plan, o->to_phase, &to) != 0) {
		*exit_code = PHG_EXIT_USAGE;
		return NULL;
	}
	e = phg_calloc(1, sizeof(*e));
	if ((rc = phg_eng_init(e, loop, mode, plan, o)) != 0) {
		free(e);
		*exit_code = rc == PHG_EUSAGE ? PHG_EXIT_USAGE : PHG_EXIT_RUNTIME;
		return NULL;
	}
	e->to_idx = to;
	*exit_code = 0;
	return e;
}

void phg_engine_start(phg_engine_t *e)
{
	phg_eng_connect(e, &e->ctl, phg_eng_ctl_connected);
}

int phg_engine_conn_lost(const phg_engine_t *e)
{
	return e->conn_lost;
}

int phg_engine_free(phg_engine_t *e)
{
	int code = phg_eng_release(e);

	free(e);
	return code;
}
