/*
 * exec.c - runs one step's ops; see exec.h for what each op kind does.
 *
 * One state machine (x->st), advanced by exec_on_result() after every query
 * on the work connection and by the two timers.  exec_state() is the only
 * place that changes x->st.
 */
#include "exec.h"

#include <inttypes.h>
#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fault.h"
#include "store.h"
#include "throttle.h"

/* the replicas' lag is asked at most this often, between two batches */
#define PHG_LAG_CHECK_MS 1000

#define SQL_MAX (16u * 1024 * 1024)

static const char *const exec_state_names[] = {
	"idle", "tx", "tx_rollback", "backoff", "st_set", "st_guard", "st_cleanup",
	"st_mark", "st_run", "st_reset", "st_fail_guard", "st_fail_cleanup", "fail_reset",
	"bf_set", "bf_keys", "bf_high", "bf_batch", "bf_pass2", "bf_paused", "bf_poll", "bf_baseline",
	"bf_sleep", "bf_lag", "bf_lag_wait", "http", "unmark",
	"record", "noop_check", "violation", "done",
};

static void exec_next(phg_exec_t *x);
static void bf_window_push(phg_exec_t *x);
static void bf_adapt(phg_exec_t *x, long long nbatch);
static void exec_op_start(phg_exec_t *x);
static void exec_on_result(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                           void *arg);

static void exec_state(phg_exec_t *x, phg_exec_state_t st)
{
	if (phg_log_get_level() <= PHG_LOG_TRACE && x->st != st)
		phg_log(PHG_LOG_TRACE, &x->log, "exec %s -> %s", exec_state_names[x->st],
		        exec_state_names[st]);
	x->st = st;
}

static const phg_op_t *cur_op(phg_exec_t *x)
{
	return &x->ops->v[x->next];
}

static const char *dir_name(const phg_exec_t *x)
{
	return x->dir == PHG_DIR_REVERT ? "revert" : x->dir == PHG_DIR_FINALIZE ? "finalize" : "apply";
}

/* A fault point at an op boundary: op:DIR:PHASE:STEP:OP:WHAT */
static void op_fault(const phg_exec_t *x, const char *what)
{
	if (phg_fault_enabled())
		phg_fault("op:%s:%s:%d:%zu:%s", dir_name(x), x->log.phase ? x->log.phase : "?",
		          x->step_idx + 1, x->next, what);
}

/* The op committed: its counter (store.h), in the op's own transaction or
 * right after a non-transactional one. */
static void progress_sql(phg_exec_t *x, phg_buf_t *b)
{
	phg_store_progress_sql(b, x->schema_q, x->run_id, x->phase_idx, x->step_idx, (int)x->dir,
	                       x->next + 1);
}

uint64_t phg_backoff_ms(uint64_t base, uint64_t max, uint64_t n, uint64_t *rng)
{
	uint64_t d = base ? base : 1;
	uint64_t r;

	for (uint64_t i = 1; i < n && d < max; i++)
		d *= 2;
	if (d > max)
		d = max;
	/* xorshift64 */
	r = *rng ? *rng : 0x9E3779B97F4A7C15ull;
	r ^= r << 13;
	r ^= r >> 7;
	r ^= r << 17;
	*rng = r;
	return d / 2 + (d / 2 ? r % (d / 2 + 1) : 0);
}

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000u;
}

/* ---- queries ---- */

static void exec_finish(phg_exec_t *x, int status);
static void status_start(phg_exec_t *x);

static void exec_send(phg_exec_t *x, phg_exec_state_t st, const char *sql, int nparams,
                      const char *const *params)
{
	exec_state(x, st);
	if (phg_pg_query(x->work, sql, nparams, params, exec_on_result, x) != 0) {
		phg_err_set(&x->err, PHG_ECONNECT, "the work connection is not usable");
		x->fail_status = PHG_ECONNECT;
		exec_finish(x, PHG_ECONNECT);
	}
}

/* A statement that overflowed its buffer is never sent: it would lack a
 * piece (a statement, the progress record) and still commit. */
static int too_big(phg_exec_t *x, const phg_buf_t *b)
{
	phg_err_t e;

	if (phg_buf_error(b) == 0)
		return 0;
	phg_err_clear(&e);
	phg_err_set(&e, PHG_ETOOBIG, "the SQL of \"%s\" is too large", cur_op(x)->label);
	phg_err_detail(&e, "A statement sent with its progress record may be at most %zu bytes; "
	                   "nothing of it was sent.",
	               b->max);
	phg_err_hint(&e, "Split the step into smaller ones.");
	phg_err_copy(&x->err, &e);
	exec_finish(x, PHG_ESTEP);
	return 1;
}

static void exec_sendf(phg_exec_t *x, phg_exec_state_t st, phg_buf_t *b)
{
	if (!too_big(x, b))
		exec_send(x, st, b->data, 0, NULL);
	phg_buf_free(b);
}

/* ---- blocker probe: who holds the lock we wait for ---- */

/* An autovacuum worker that blocks a DDL statement is canceled this soon:
 * the application's queries queue behind the waiting statement, and
 * PostgreSQL itself would cancel the worker only after deadlock_timeout
 * (1 s).  Not one that prevents wraparound; only as a superuser. */
#define PHG_AUTOVACUUM_CANCEL_MS 30

static void probe_fire(uv_timer_t *t);

static void probe_result(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                         void *arg)
{
	phg_exec_t *x = arg;
	long long canceled;

	(void)pg;
	(void)err;
	x->probing = 0;
	if (status != 0 || res == NULL || PQntuples(res) < 1)
		return;
	canceled = phg_db_num(PQgetvalue(res, 0, 1), 0, LLONG_MAX, 0, NULL);
	if (canceled > 0) {
		char msg[768];

		snprintf(msg, sizeof(msg),
		         "canceled %lld autovacuum worker(s) blocking %s (%s), as PostgreSQL would "
		         "after deadlock_timeout; autovacuum starts again by itself",
		         canceled, x->probe_label, PQgetvalue(res, 0, 2));
		phg_log(PHG_LOG_INFO, &x->log, "%s", msg);
		if (x->on_event != NULL)
			x->on_event(x, "autovacuum_canceled", msg, NULL);
	}
	if (!PQgetisnull(res, 0, 0)) {
		snprintf(x->blockers, sizeof(x->blockers), "%s", PQgetvalue(res, 0, 0));
		if (PQnfields(res) > 3 && strlen(PQgetvalue(res, 0, 3)) < sizeof(x->blockers_json))
			snprintf(x->blockers_json, sizeof(x->blockers_json), "%s", PQgetvalue(res, 0, 3));
	}
}

static void probe_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;
	char pid[32];
	const char *params[1] = {pid};
	uint64_t d = x->settings->lock_timeout_ms / 2;

	/* first soon (autovacuum), then at half the lock_timeout (who blocks) */
	if (x->probe_n++ == 0 && d > PHG_AUTOVACUUM_CANCEL_MS)
		uv_timer_start(&x->probe_timer, probe_fire, d - PHG_AUTOVACUUM_CANCEL_MS, 0);
	if (x->ctl == NULL || x->probing || x->ctl->pg->state == PHG_PG_BROKEN)
		return;
	snprintf(pid, sizeof(pid), "%d", x->work->backend_pid);
	/* the answer may come after the op is done (and its ops freed) */
	snprintf(x->probe_label, sizeof(x->probe_label), "%s", cur_op(x)->label);
	x->probing = 1;
	phg_pgq_query(x->ctl,
	              "WITH b AS (SELECT a.* FROM pg_stat_activity a "
	              " WHERE a.pid = ANY (pg_blocking_pids($1::int))), "
	              "c AS (SELECT b.pid, pg_cancel_backend(b.pid) AS ok FROM b "
	              " WHERE b.backend_type = 'autovacuum worker' "
	              " AND b.query NOT LIKE '%to prevent wraparound%' "
	              " AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) "
	              "SELECT string_agg(format('pid %s (%s, %s, transaction open for %s)', b.pid, "
	              "coalesce(nullif(b.application_name, ''), b.usename::text, b.backend_type, '?'), "
	              "coalesce(b.state, '?'), "
	              "coalesce(date_trunc('second', now() - b.xact_start)::text, '?')), '; '), "
	              "(SELECT count(*) FROM c WHERE ok), "
	              "coalesce((SELECT string_agg(left(b.query, 80), '; ') FROM b "
	              " WHERE b.pid IN (SELECT pid FROM c WHERE ok)), ''), "
	              "coalesce(jsonb_agg(jsonb_build_object('pid', b.pid, 'application_name', "
	              "b.application_name, 'user', b.usename, 'backend_type', b.backend_type, "
	              "'state', b.state, 'xact_age_s', round(extract(epoch FROM now() - "
	              "b.xact_start)::numeric, 3))), '[]')::text "
	              "FROM b",
	              1, params, probe_result, x);
}

static void probe_start(phg_exec_t *x)
{
	x->blockers[0] = '\0';
	snprintf(x->blockers_json, sizeof(x->blockers_json), "[]");
	x->probe_n = 0;
	if (x->ctl == NULL)
		return;
	uv_timer_start(&x->probe_timer, probe_fire, PHG_AUTOVACUUM_CANCEL_MS, 0);
}

static void probe_stop(phg_exec_t *x)
{
	uv_timer_stop(&x->probe_timer);
}

/* ---- finishing ---- */

static void done_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;

	x->cb(x, x->done_status);
}

/* Done: the callback runs on the next loop turn, never from inside the call
 * that started the work (phg_exec_run with no op left, a failed send). */
static void exec_finish(phg_exec_t *x, int status)
{
	x->observing = 0;
	probe_stop(x);
	uv_timer_stop(&x->status_timer);
	phg_log_status_clear();
	phg_throttle_free(x->thr);
	x->thr = NULL;
	if (x->req != NULL) {
		phg_http_cancel(x->http, x->req);
		x->req = NULL;
	}
	uv_timer_stop(&x->backoff_timer);
	exec_state(x, PHG_X_DONE);
	x->done_status = status;
	uv_timer_start(&x->done_timer, done_fire, 0, 0);
}

/* A stop was asked: the run completes with PHG_EINTERRUPTED (1), or not (0). */
static int stop_now(phg_exec_t *x)
{
	if (x->should_stop == NULL || !x->should_stop(x->stop_arg))
		return 0;
	exec_finish(x, PHG_EINTERRUPTED);
	return 1;
}

static int retriable(const phg_err_t *e)
{
	return strcmp(e->sqlstate, "55P03") == 0 || strcmp(e->sqlstate, "40P01") == 0 ||
	       strcmp(e->sqlstate, "40001") == 0;
}

/* A check violation said as what it means, not by the check's internal
 * name; @n: the offending rows counted (NULL: not counted); @undone: the
 * previous op's work was undone (1), could not be (-1), or there is none (0). */
static void violation_fail(phg_exec_t *x, const phg_op_t *op, int status, const phg_err_t *err,
                           const char *n, int undone)
{
	const char *v = op->violation, *at = strstr(v, "{n}");
	char num[32];

	snprintf(num, sizeof(num), "%s", n != NULL ? n : "some");
	if (at != NULL)
		phg_err_set(&x->err, err->code ? err->code : status, "%.*s%s%s", (int)(at - v), v, num,
		            at + 3);
	else
		phg_err_set(&x->err, err->code ? err->code : status, "%s", v);
	memcpy(x->err.sqlstate, err->sqlstate, sizeof(x->err.sqlstate));
	if (undone < 0)
		phg_err_detail(&x->err, "The server said: %s. Undoing the step's previous op (%s) "
		                        "failed too: it is still in place.",
		               err->msg, (op - 1)->label);
	else
		phg_err_detail(&x->err, "The server said: %s.", err->msg);
	if (op->violation_hint != NULL)
		phg_err_hint(&x->err, "%s", op->violation_hint);
	exec_finish(x, status);
}

static void violation_start(phg_exec_t *x, int status, const phg_err_t *err)
{
	const phg_op_t *op = cur_op(x);
	phg_buf_t b;

	x->violation_err = *err;
	x->violation_status = status;
	x->violation_failed = 0;
	phg_buf_init(&b, 4096);
	if (op->violation_undo_sql != NULL && x->next > 0) {
		/* undone and recorded not done, together */
		phg_buf_printf(&b, "BEGIN; SET LOCAL lock_timeout = '%" PRIu64 "ms'; %s; ",
		               x->settings->lock_timeout_ms, op->violation_undo_sql);
		phg_store_progress_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx,
		                       (int)x->dir, x->next - 1);
		phg_buf_adds(&b, "; COMMIT; ");
	}
	if (op->violation_count_sql != NULL)
		phg_buf_adds(&b, op->violation_count_sql); /* last: its result is the one read */
	else
		phg_buf_adds(&b, "SELECT NULL");
	exec_sendf(x, PHG_X_VIOLATION, &b);
}

static void fail_op(phg_exec_t *x, int status, const phg_err_t *err)
{
	const phg_op_t *op = cur_op(x);

	if (op->violation != NULL && err != NULL && strcmp(err->sqlstate, "23514") == 0) {
		if (x->st != PHG_X_VIOLATION &&
		    (op->violation_count_sql != NULL || op->violation_undo_sql != NULL)) {
			violation_start(x, status, err);
			return;
		}
		violation_fail(x, op, status, err, NULL, 0);
		return;
	}
	phg_err_copy(&x->err, err);
	if (x->err.code == 0)
		phg_err_set(&x->err, status, "%s", phg_strerror(status));
	if (x->err.detail[0] == '\0')
		phg_err_detail(&x->err, "While running: %s.", op->label);
	exec_finish(x, status);
}

/* After a failed attempt (and its ROLLBACK/RESET): retry or give up. */
static void backoff_fire(uv_timer_t *t);

static void after_failure(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);

	if (x->op_err.code == PHG_ECONNECT) {
		fail_op(x, PHG_ECONNECT, &x->op_err);
		return;
	}
	if (!retriable(&x->op_err)) {
		fail_op(x, PHG_ESTEP, &x->op_err);
		return;
	}
	if (x->attempt >= x->settings->lock_retries) {
		phg_err_t e;

		phg_err_clear(&e);
		phg_err_set(&e, PHG_ELOCK_TIMEOUT,
		            "gave up after %" PRIu64 " attempts: lock not available for %s",
		            x->attempt, op->label);
		phg_err_detail(&e, "Each attempt waited at most lock_timeout (%" PRIu64
		                   " ms) so the application's queries were not queued behind it. "
		                   "Last blocked by: %s.",
		               x->settings->lock_timeout_ms,
		               x->blockers[0] ? x->blockers : "an unknown session");
		phg_err_hint(&e, "Find the long transaction holding a lock on the table "
		                 "(pg_stat_activity, pg_locks), let it finish or end it, then run "
		                 "apply again; or raise lock_retries / lock_timeout.");
		memcpy(e.sqlstate, x->op_err.sqlstate, sizeof(e.sqlstate));
		fail_op(x, PHG_ELOCK_TIMEOUT, &e);
		return;
	}
	if (stop_now(x))
		return;
	{
		uint64_t d = phg_backoff_ms(x->settings->retry_backoff_ms,
		                            x->settings->retry_backoff_max_ms, x->attempt, &x->rng);
		char msg[1024];

		snprintf(msg, sizeof(msg),
		         "%s (attempt %" PRIu64 "/%" PRIu64 ", SQLSTATE %s) for %s; blocked by %s; "
		         "retrying in %" PRIu64 " ms",
		         strcmp(x->op_err.sqlstate, "55P03") == 0 ? "lock not available"
		         : strcmp(x->op_err.sqlstate, "40P01") == 0 ? "deadlock"
		                                                    : "serialization failure",
		         x->attempt, x->settings->lock_retries, x->op_err.sqlstate, op->label,
		         x->blockers[0] ? x->blockers : "an unknown session", d);
		phg_log(PHG_LOG_WARN, &x->log, "%s", msg);
		if (x->on_event != NULL) {
			char data[sizeof(x->blockers_json) + 512];

			snprintf(data, sizeof(data),
			         "{\"attempt\": %" PRIu64 ", \"max_attempts\": %" PRIu64 ", \"sqlstate\": "
			         "\"%s\", \"lock_timeout_ms\": %" PRIu64 ", \"waited_ms\": %" PRIu64
			         ", \"retry_in_ms\": %" PRIu64 ", \"blockers\": %s}",
			         x->attempt, x->settings->lock_retries, x->op_err.sqlstate,
			         x->settings->lock_timeout_ms,
			         x->attempt_at_ms ? now_ms() - x->attempt_at_ms : 0, d,
			         x->blockers_json[0] ? x->blockers_json : "[]");
			x->on_event(x, "lock_retry", msg, data);
		}
		exec_state(x, PHG_X_BACKOFF);
		uv_timer_start(&x->backoff_timer, backoff_fire, d, 0);
	}
}

/* ---- PHG_OP_TX ---- */

static void tx_send(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);
	const phg_settings_t *s = x->settings;
	phg_buf_t b;

	phg_buf_init(&b, SQL_MAX);
	phg_buf_adds(&b, "BEGIN;\n");
	if (op->flags & PHG_OPF_DDL)
		phg_buf_printf(&b, "SET LOCAL lock_timeout = '%" PRIu64 "ms';\n", s->lock_timeout_ms);
	if (op->flags & PHG_OPF_SCAN)
		phg_buf_printf(&b, "SET LOCAL statement_timeout = '%" PRIu64 "ms';\n",
		               s->statement_timeout_ms);
	if (op->memo_sql != NULL) {
		phg_store_memo_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx,
		                   op->memo_sql);
		phg_buf_adds(&b, ";\n");
	}
	for (size_t i = 0; i < op->nsql; i++)
		phg_buf_printf(&b, "%s;\n", op->sql[i]);
	progress_sql(x, &b);
	phg_buf_adds(&b, ";\nCOMMIT;");
	x->attempt++;
	x->attempt_at_ms = now_ms();
	if (op->flags & PHG_OPF_DDL)
		probe_start(x);
	status_start(x);
	exec_sendf(x, PHG_X_TX, &b);
}

/* The step is so already (op->noop_sql said true): its memo and every op
 * done are recorded in one transaction, and nothing else runs. */
static void noop_record(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);
	phg_buf_t b;

	phg_log(PHG_LOG_INFO, &x->log, "%s", op->noop_note);
	if (x->on_event != NULL)
		x->on_event(x, "step_noop", op->noop_note, NULL);
	phg_buf_init(&b, 4096);
	phg_buf_adds(&b, "BEGIN;\n");
	if (op->memo_sql != NULL) {
		phg_store_memo_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx,
		                   op->memo_sql);
		phg_buf_adds(&b, ";\n");
	}
	x->next = x->ops->n - 1; /* the record says every op is done */
	progress_sql(x, &b);
	phg_buf_adds(&b, ";\nCOMMIT;");
	exec_sendf(x, PHG_X_RECORD, &b);
}

/* ---- PHG_OP_STMT ---- */

static void st_set(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	phg_buf_printf(&b, "SET lock_timeout = '%" PRIu64 "ms'; SET statement_timeout = '%" PRIu64
	                   "ms'",
	               (op->flags & PHG_OPF_DDL) ? x->settings->lock_timeout_ms : 0,
	               (op->flags & PHG_OPF_SCAN) ? x->settings->statement_timeout_ms : 0);
	/* a build cannot pause between batches: under the latency budget it
	 * takes one core instead of every one the server would give it */
	phg_buf_printf(&b, "; SET max_parallel_maintenance_workers = %s",
	               (op->flags & PHG_OPF_PARALLEL) && !x->settings->throttle.budget.off ? "0"
	                                                                                  : "DEFAULT");
	x->attempt++;
	x->attempt_at_ms = now_ms();
	exec_sendf(x, PHG_X_ST_SET, &b);
}

static void st_mark(phg_exec_t *x)
{
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	phg_store_op_started_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx,
	                         (long)x->next);
	exec_sendf(x, PHG_X_ST_MARK, &b);
}

/* A terminal's live line while a statement that scans or builds runs:
 * what, for how long, and whether it waits for a lock. */
static void status_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;
	double secs = (double)(now_ms() - x->status_since_ms) / 1000.0;

	if (x->st != PHG_X_ST_RUN && x->st != PHG_X_TX) {
		uv_timer_stop(&x->status_timer);
		return;
	}
	phg_log_status(x->blockers[0] ? PHG_TONE_WARN : PHG_TONE_INFO, "%s: %.0f s%s%s",
	               cur_op(x)->label, secs, x->blockers[0] ? ", waiting for " : "",
	               x->blockers[0] ? x->blockers : "");
}

static void status_start(phg_exec_t *x)
{
	if (!phg_log_live() || !(cur_op(x)->flags & (PHG_OPF_SCAN | PHG_OPF_PARALLEL)))
		return;
	x->status_since_ms = now_ms();
	uv_timer_start(&x->status_timer, status_fire, 500, 500);
}

static void st_run(phg_exec_t *x)
{
	status_start(x);
	if (cur_op(x)->flags & PHG_OPF_DDL)
		probe_start(x);
	exec_send(x, PHG_X_ST_RUN, cur_op(x)->sql[0], 0, NULL);
}

static void reset_session(phg_exec_t *x, phg_exec_state_t st)
{
	exec_send(x, st, "RESET lock_timeout; RESET statement_timeout; RESET max_parallel_maintenance_workers",
	          0, NULL);
}

static void record(phg_exec_t *x)
{
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	progress_sql(x, &b);
	exec_sendf(x, PHG_X_RECORD, &b);
}

/* ---- PHG_OP_BACKFILL ---- */

static void bf_set(phg_exec_t *x)
{
	phg_buf_t b;

	phg_buf_init(&b, 4096);
	/* batches wait for row locks at most lock_timeout: a batch never makes
	 * the application's writes queue behind it for longer than that */
	phg_buf_printf(&b, "SET lock_timeout = '%" PRIu64 "ms'; SET statement_timeout = '%" PRIu64
	                   "ms'",
	               x->settings->lock_timeout_ms, x->settings->statement_timeout_ms);
	exec_sendf(x, PHG_X_BF_SET, &b);
}

/* Quoting of the plan's names goes through the step kinds' helpers
 * (PQescapeIdentifier on the work connection); strings live until reset. */
static void quoter(phg_exec_t *x, phg_build_t *qb)
{
	memset(qb, 0, sizeof(*qb));
	qb->conn = x->work->conn;
}

static void bf_keys(phg_exec_t *x)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	phg_build_t qb;
	phg_buf_t k;
	const char *params[2];

	quoter(x, &qb);
	phg_buf_init(&k, 64 * 1024);
	if (bf->key.n > 0) {
		phg_buf_adds(&k, "{");
		for (size_t i = 0; i < bf->key.n; i++)
			phg_buf_printf(&k, "%s\"%s\"", i ? "," : "", bf->key.v[i]);
		phg_buf_adds(&k, "}");
	}
	params[0] = phg_qtable(&qb, bf->table);
	params[1] = bf->key.n > 0 ? k.data : NULL;
	exec_send(
	    x, PHG_X_BF_KEYS,
	    "WITH k AS ("
	    " SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type,"
	    "  true AS usable, k.ord"
	    " FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)"
	    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
	    " WHERE $2::text[] IS NULL AND i.indrelid = $1::regclass AND i.indisprimary"
	    " UNION ALL"
	    " SELECT k.name, format_type(a.atttypid, a.atttypmod),"
	    "  coalesce(a.attnotnull, false) AND EXISTS ("
	    "   SELECT 1 FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisunique"
	    "   AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
	    "   AND i.indnkeyatts = cardinality($2::text[])"
	    "   AND (SELECT bool_and(att.attname::text = ANY ($2::text[]))"
	    "        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS x(n, o)"
	    "        JOIN pg_attribute att ON att.attrelid = i.indrelid AND att.attnum = x.n"
	    "        WHERE x.o <= i.indnkeyatts)),"
	    "  k.ord"
	    " FROM unnest($2::text[]) WITH ORDINALITY AS k(name, ord)"
	    " LEFT JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attname = k.name"
	    "  AND NOT a.attisdropped"
	    ")"
	    " SELECT name, type, usable,"
	    "  (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass)"
	    " FROM k ORDER BY ord",
	    2, params);
	phg_build_reset(&qb);
	phg_buf_free(&k);
}

/* A statement of the op failed: keep its error, reset the session's
 * timeouts, then retry or give up (FAIL_RESET). */
static void fail_reset(phg_exec_t *x, const phg_err_t *err)
{
	phg_err_copy(&x->op_err, err);
	reset_session(x, PHG_X_FAIL_RESET);
}

static void bf_keys_done(phg_exec_t *x, PGresult *res)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	int n = PQntuples(res);
	phg_err_t e;

	phg_err_clear(&e);
	phg_strv_clear(&x->key_names);
	if (n == 0) {
		phg_err_set(&e, PHG_ESTEP, "table \"%s\" has no primary key to backfill by",
		            bf->table);
		phg_err_hint(&e, "Give the backfill step a `key`: column(s) covered by a unique "
		                 "index on NOT NULL columns.");
		fail_reset(x, &e); /* a key problem ends the op */
		return;
	}
	for (int i = 0; i < n; i++) {
		if (PQgetisnull(res, i, 1)) {
			phg_err_set(&e, PHG_ESTEP, "key column \"%s\" of table \"%s\" does not exist",
			            PQgetvalue(res, i, 0), bf->table);
			fail_reset(x, &e);
			return;
		}
		if (strcmp(PQgetvalue(res, i, 2), "t") != 0) {
			phg_err_set(&e, PHG_ESTEP,
			            "backfill key of table \"%s\" is not covered by a unique index on "
			            "NOT NULL columns",
			            bf->table);
			phg_err_detail(&e, "Batches are taken in key order; a key that is not unique "
			                   "and not null could skip or repeat rows.");
			fail_reset(x, &e);
			return;
		}
		phg_strv_push(&x->key_names, PQgetvalue(res, i, 0));
	}
	x->est_rows = phg_db_num(PQgetvalue(res, 0, 3), 0, LLONG_MAX, 0, NULL);
	if (x->bf_last.n != 0 && x->bf_last.n != x->key_names.n) {
		phg_err_set(&e, PHG_ESTATE, "backfill checkpoint of table \"%s\" has %zu key values, "
		                            "the key has %zu columns",
		            bf->table, x->bf_last.n, x->key_names.n);
		fail_reset(x, &e);
		return;
	}
	x->bf_started_ms = x->bf_logged_ms = now_ms();
	x->bf_rows_at_start = x->bf_rows;
	x->bf_scanned = x->bf_rows; /* resumed: at least the rows done */
	x->bf_limit = bf->batch_size;
	x->bf_win_n = x->bf_win_head = 0;
	bf_window_push(x);
	if (x->bf_rows > 0 || x->bf_last.n > 0)
		phg_log(PHG_LOG_INFO, &x->log,
		        "resuming backfill of %s after %lld rows (pass %d)", bf->table, x->bf_rows,
		        x->bf_pass);
}

/* The key range is fixed now: the last key there is, recorded before the
 * first batch (a resumed backfill keeps it). */
static void bf_high(phg_exec_t *x)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	phg_build_t qb;
	phg_buf_t mk, b;

	quoter(x, &qb);
	phg_buf_init(&mk, SQL_MAX);
	phg_backfill_max_key_sql(&qb, bf, &x->key_names, &mk);
	phg_buf_init(&b, SQL_MAX);
	/* never analysed (reltuples -1): count the rows once, for the progress */
	phg_store_high_water_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx, mk.data,
	                         x->est_rows > 0 ? NULL
	                                         : phg_bprintf(&qb, "SELECT count(*) FROM %s",
	                                                       phg_qtable(&qb, bf->table)));
	phg_buf_free(&mk);
	phg_build_reset(&qb);
	exec_sendf(x, PHG_X_BF_HIGH, &b);
}

/* Resumed on a table never analysed: count the rows of the fixed range
 * once, for the progress (the range stays as recorded). */
static void bf_count(phg_exec_t *x)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	phg_build_t qb;
	phg_buf_t b;

	quoter(x, &qb);
	phg_buf_init(&b, SQL_MAX);
	phg_backfill_count_sql(&qb, bf, &x->key_names, &b);
	phg_build_reset(&qb);
	if (!too_big(x, &b))
		exec_send(x, PHG_X_BF_HIGH, b.data, (int)x->bf_high.n,
		          (const char *const *)x->bf_high.v);
	phg_buf_free(&b);
}

static void bf_high_done(phg_exec_t *x, PGresult *res)
{
	json_error_t jerr;
	json_t *a = NULL, *v;
	size_t i;

	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1))
		x->est_rows = phg_db_num(PQgetvalue(res, 0, 1), 0, LLONG_MAX, 0, NULL);
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		return; /* a count only */
	phg_strv_clear(&x->bf_high);
	a = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
	json_array_foreach(a, i, v) {
		phg_strv_push(&x->bf_high, json_is_string(v) ? json_string_value(v) : "");
	}
	json_decref(a);
	x->bf_high_set = 1;
	phg_log(PHG_LOG_INFO, &x->log, "backfill of %s: key range fixed up to %s%s%s", 
	        cur_op(x)->backfill->table, x->bf_high.n ? "(" : "the empty table",
	        x->bf_high.n ? x->bf_high.v[0] : "", x->bf_high.n ? x->bf_high.n > 1 ? ", ...)" : ")" : "");
}

static void bf_batch(phg_exec_t *x)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	phg_build_t qb;
	phg_buf_t b;
	size_t k = x->key_names.n;
	const char **params;
	char first[2], run[32], pi[16], si[16], limit[32];

	if (x->should_stop != NULL && x->should_stop(x->stop_arg)) {
		x->op_err.code = PHG_EINTERRUPTED;
		x->fail_status = PHG_EINTERRUPTED;
		reset_session(x, PHG_X_FAIL_RESET);
		return;
	}
	/* the statement the step kind builds, as `plan` prints it */
	quoter(x, &qb);
	phg_buf_init(&b, SQL_MAX);
	phg_backfill_batch_sql(&qb, bf, &x->key_names, x->schema_q, &b);
	params = phg_calloc(2 * k + 5, sizeof(*params));
	for (size_t i = 0; i < k; i++) {
		params[i] = x->bf_last.n == k ? x->bf_last.v[i] : NULL;
		/* an empty table at the start: NULL, and no batch finds a row */
		params[k + 4 + i] = x->bf_high.n == k ? x->bf_high.v[i] : NULL;
	}
	snprintf(first, sizeof(first), "%s", x->bf_last.n == k && k > 0 ? "f" : "t");
	snprintf(run, sizeof(run), "%lld", x->run_id);
	snprintf(pi, sizeof(pi), "%d", x->phase_idx);
	snprintf(si, sizeof(si), "%d", x->step_idx);
	params[k] = first;
	params[k + 1] = run;
	params[k + 2] = pi;
	params[k + 3] = si;
	x->bf_sent_limit = x->bf_limit ? x->bf_limit : bf->batch_size;
	if (x->bf_cap > 0 && x->bf_sent_limit > x->bf_cap)
		x->bf_sent_limit = x->bf_cap;
	snprintf(limit, sizeof(limit), "%" PRIu64, x->bf_sent_limit);
	params[2 * k + 4] = limit;
	x->attempt++;
	x->attempt_at_ms = now_ms();
	if (!too_big(x, &b)) {
		probe_start(x);
		x->bf_sent_ms = now_ms();
		phg_throttle_busy(x->thr, 1);
		exec_send(x, PHG_X_BF_BATCH, b.data, (int)(2 * k + 5), params);
	}
	free(params);
	phg_buf_free(&b);
	phg_build_reset(&qb);
}

/* Rows per second over the window of recent batches (0: not enough yet). */
static double bf_window_rate(const phg_exec_t *x)
{
	unsigned newest, oldest;
	uint64_t dt;

	if (x->bf_win_n < 2)
		return 0;
	newest = (x->bf_win_head + PHG_BF_WINDOW - 1) % PHG_BF_WINDOW;
	oldest = (x->bf_win_head + PHG_BF_WINDOW - x->bf_win_n) % PHG_BF_WINDOW;
	dt = x->bf_win[newest].at_ms - x->bf_win[oldest].at_ms;
	return dt > 0 ? (double)(x->bf_win[newest].rows - x->bf_win[oldest].rows) * 1000.0 / (double)dt
	              : 0;
}

/* batch_time: the next batch's size from the time this one took -- in
 * proportion, at most halved or doubled at a time, within PHG_BATCH_MIN..MAX.
 * A batch that found fewer rows than asked (the end of the range) says
 * nothing about the pace. */
static void bf_adapt(phg_exec_t *x, long long nbatch)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	uint64_t took = now_ms() - x->bf_sent_ms, next;
	double f;

	if (bf->batch_time_ms == 0 || nbatch < (long long)x->bf_sent_limit)
		return;
	f = took > 0 ? (double)bf->batch_time_ms / (double)took : 2.0;
	if (f > 2.0)
		f = 2.0;
	if (f < 0.5)
		f = 0.5;
	next = (uint64_t)((double)x->bf_sent_limit * f);
	if (next < PHG_BATCH_MIN)
		next = PHG_BATCH_MIN;
	if (next > PHG_BATCH_MAX)
		next = PHG_BATCH_MAX;
	if (next != x->bf_limit)
		phg_log(PHG_LOG_DEBUG, &x->log, "batch of %" PRIu64 " rows took %" PRIu64
		                                " ms (target %" PRIu64 " ms): next %" PRIu64,
		        x->bf_sent_limit, took, bf->batch_time_ms, next);
	x->bf_limit = next;
}

static void bf_window_push(phg_exec_t *x)
{
	x->bf_win[x->bf_win_head].at_ms = now_ms();
	x->bf_win[x->bf_win_head].rows = x->bf_scanned;
	x->bf_win_head = (x->bf_win_head + 1) % PHG_BF_WINDOW;
	if (x->bf_win_n < PHG_BF_WINDOW)
		x->bf_win_n++;
}

/* How far the first pass is through the key range fixed at the start, and
 * how long the rest takes at @rate rows/s: 0 when unknown (the final sweep,
 * no estimate, no pace yet). */
static int bf_eta(const phg_exec_t *x, double rate, long long *pct, double *eta)
{
	long long left;

	if (x->bf_pass != 1 || x->est_rows <= 0 || rate <= 0)
		return 0;
	left = x->est_rows - x->bf_scanned;
	*pct = x->bf_scanned * 100 / x->est_rows;
	if (*pct > 99)
		*pct = 99;
	*eta = left > 0 ? (double)left / rate : 0.0;
	return 1;
}

/* A terminal's live line, after every batch. */
static void bf_live(phg_exec_t *x)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	double r = bf_window_rate(x), eta;
	long long p;

	if (!phg_log_live())
		return;
	if (bf_eta(x, r, &p, &eta)) {
		char sleep[48] = "";

		if (x->bf_sleep_ms > 0)
			snprintf(sleep, sizeof(sleep), "  throttled: sleep %" PRIu64 " ms", x->bf_sleep_ms);
		phg_log_status(x->bf_sleep_ms > 0 ? PHG_TONE_WARN : PHG_TONE_INFO,
		               "backfill %s: %3lld%%  %lld/%lld rows  %.0f rows/s  ETA %.0f s  batch "
		               "%" PRIu64 "%s",
		               bf->table, p, x->bf_scanned, x->est_rows, r, eta, x->bf_sent_limit, sleep);
	} else {
		phg_log_status(PHG_TONE_INFO, "backfill %s: %lld rows  %.0f rows/s  batch %" PRIu64 "%s",
		               bf->table, x->bf_rows, r, x->bf_sent_limit,
		               x->bf_pass == 2 ? "  (final sweep)" : "");
	}
}

static void bf_progress(phg_exec_t *x, int final)
{
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	uint64_t now = now_ms();
	double secs = (double)(now - x->bf_started_ms) / 1000.0;
	long long done = x->bf_rows - x->bf_rows_at_start;
	double avg = secs > 0 ? (double)done / secs : 0;
	double rate = bf_window_rate(x);
	char msg[512], *text;
	double eta = -1;
	long long pct = -1;
	json_t *d, *hw = json_null();

	if (!final)
		bf_live(x);
	if (!final && now - x->bf_logged_ms < 2000)
		return;
	x->bf_logged_ms = now;
	if (final) {
		snprintf(msg, sizeof(msg), "backfill of %s done: %lld rows in %lld batches, %.1f s, %.0f rows/s",
		         bf->table, x->bf_rows, x->bf_batches, secs, avg);
		pct = 100;
		eta = 0;
	} else if (bf_eta(x, rate, &pct, &eta)) {
		/* of the range fixed at the start, at the pace of the recent batches */
		snprintf(msg, sizeof(msg),
		         "backfill of %s: %lld rows (~%lld%%) in %lld batches of %" PRIu64
		         ", %.0f rows/s, ETA %.0f s",
		         bf->table, x->bf_rows, pct, x->bf_batches, x->bf_sent_limit, rate, eta);
	} else {
		snprintf(msg, sizeof(msg), "backfill of %s: %lld rows in %lld batches, %.0f rows/s%s",
		         bf->table, x->bf_rows, x->bf_batches, rate > 0 ? rate : avg,
		         x->bf_pass == 2 ? " (final sweep)" : "");
	}
	phg_log(PHG_LOG_INFO, &x->log, "%s", msg);
	/* the key range fixed at the start: its upper end (the high-water mark) */
	if (x->bf_high_set) {
		json_decref(hw);
		hw = json_array();
		for (size_t i = 0; i < x->bf_high.n; i++)
			json_array_append_new(hw, json_string(x->bf_high.v[i]));
	}
	d = json_pack("{s:I,s:I,s:f,s:I,s:I,s:i,s:I,s:I,s:o,s:o,s:f,s:o}", "rows",
	              (json_int_t)x->bf_rows, "batches", (json_int_t)x->bf_batches, "rows_per_s",
	              round(rate > 0 ? rate : avg), "estimate", (json_int_t)x->est_rows, "scanned",
	              (json_int_t)x->bf_scanned, "pass", x->bf_pass, "batch_size",
	              (json_int_t)x->bf_sent_limit, "sleep_ms", (json_int_t)x->bf_sleep_ms, "percent",
	              pct >= 0 ? json_integer(pct) : json_null(), "eta_s",
	              eta >= 0 ? json_real(round(eta * 10) / 10) : json_null(), "elapsed_s",
	              round(secs * 10) / 10, "high_water", hw);
	text = json_dumps(d, JSON_COMPACT | JSON_REAL_PRECISION(10));
	json_decref(d);
	if (x->on_event != NULL)
		x->on_event(x, final ? "backfill_done" : "backfill_progress", msg, text);
	free(text);
}

static int bf_batch_done(phg_exec_t *x, PGresult *res)
{
	long long nbatch = phg_db_num(PQgetvalue(res, 0, 0), 0, LLONG_MAX, 0, NULL);
	long long nupd = phg_db_num(PQgetvalue(res, 0, 1), 0, LLONG_MAX, 0, NULL);
	json_t *last;
	json_error_t jerr;
	size_t i;
	json_t *v;

	x->attempt = 0;
	if (nbatch == 0)
		return 0;
	op_fault(x, "batch");
	x->bf_rows += nupd;
	x->bf_batches++;
	if (x->bf_pass == 1)
		x->bf_scanned += nbatch;
	bf_window_push(x);
	bf_adapt(x, nbatch);
	phg_strv_clear(&x->bf_last);
	last = json_loads(PQgetvalue(res, 0, 2), 0, &jerr);
	json_array_foreach(last, i, v) {
		phg_strv_push(&x->bf_last, json_is_string(v) ? json_string_value(v) : "");
	}
	json_decref(last);
	if (x->thr != NULL)
		phg_throttle_params(x->thr, x->bf_last.v, x->bf_last.n);
	x->bf_paused = PQnfields(res) > 3 && strcmp(PQgetvalue(res, 0, 3), "t") == 0;
	bf_progress(x, 0);
	return 1;
}

/* ---- pause: an operator's, between two batches ---- */

static void bf_poll_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;
	phg_buf_t b;

	if (stop_now(x))
		return;
	phg_buf_init(&b, 4096);
	phg_store_paused_sql(&b, x->schema_q, x->run_id);
	exec_sendf(x, PHG_X_BF_POLL, &b);
}

/* Wait (again) before the next batch; @first: the pause was just seen. */
static void bf_pause(phg_exec_t *x, int first)
{
	char msg[512];

	if (first) {
		snprintf(msg, sizeof(msg),
		         "paused by an operator (recorded in the database) after %lld rows: waiting "
		         "between batches, the plan's lock kept; `phasegate resume` goes on",
		         x->bf_rows);
		phg_log(PHG_LOG_WARN, &x->log, "%s", msg);
		if (x->on_event != NULL)
			x->on_event(x, "paused", msg, NULL);
	}
	exec_state(x, PHG_X_BF_PAUSED);
	uv_timer_start(&x->backoff_timer, bf_poll_fire, PHG_PAUSE_POLL_MS, 0);
}

/* ---- between two batches: the latency budget and the replicas ---- */

static void bf_lag(phg_exec_t *x);

/* The end of a wait between batches: the budget's sleep (the next batch)
 * or a replica's lag (ask again). */
static void bf_wait_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;

	if (stop_now(x))
		return;
	if (x->st == PHG_X_BF_LAG_WAIT)
		bf_lag(x);
	else
		bf_batch(x);
}

static void throttle_event(phg_exec_t *x, const char *kind, const phg_throttle_decision_t *d,
                           const char *msg)
{
	char data[512];

	snprintf(data, sizeof(data),
	         "{\"p99_ms\": %.3f, \"budget_ms\": %.3f, \"baseline_ms\": %.3f, \"idle_p99_ms\": %.3f, \"samples\": %u, "
	         "\"watch_ms\": %" PRIu64 ", \"watch_budget_ms\": %" PRIu64 ", \"sleep_ms\": %" PRIu64
	         ", \"batch_cap\": %" PRIu64 ", \"batch_size\": %" PRIu64 "}",
	         (double)d->p99_us / 1000.0, (double)d->budget_us / 1000.0,
	         (double)d->baseline_us / 1000.0, (double)d->idle_p99_us / 1000.0, d->samples, d->watch_ms, d->watch_budget_ms,
	         d->sleep_ms, x->bf_cap, x->bf_sent_limit);
	if (x->on_event != NULL)
		x->on_event(x, kind, msg, data);
}

/* The budget's decision: the batch cap, then sleep or go on. */
static void bf_pace(phg_exec_t *x)
{
	phg_throttle_decision_t d;
	char msg[512], pace[128];

	if (x->thr == NULL) {
		bf_batch(x);
		return;
	}
	phg_throttle_decide(x->thr, &d);
	if (d.cap_factor < 1.0) {
		x->bf_cap = (uint64_t)((double)x->bf_sent_limit * d.cap_factor);
		if (x->bf_cap < PHG_THROTTLE_MIN_BATCH)
			x->bf_cap = PHG_THROTTLE_MIN_BATCH;
	} else if (d.cap_factor > 1.0 && x->bf_cap < PHG_BATCH_MAX) {
		x->bf_cap = (uint64_t)((double)x->bf_cap * d.cap_factor) + 1;
		if (x->bf_cap > PHG_BATCH_MAX)
			x->bf_cap = PHG_BATCH_MAX;
	}
	x->bf_sleep_ms = d.sleep_ms;
	if (d.not_ours && !x->thr_noted) {
		x->thr_noted = 1;
		phg_log(PHG_LOG_INFO, &x->log,
		        "latency budget: probe p99 %.2f ms over budget %.2f ms, but %.2f ms between "
		        "batches too: the database is slow by itself, the pace is held",
		        (double)d.p99_us / 1000.0, (double)d.budget_us / 1000.0,
		        (double)d.idle_p99_us / 1000.0);
		throttle_event(x, "throttle_held", &d, "over budget between batches too: pace held");
	}
	if (d.changed) {
		if (d.sleep_ms > 0)
			snprintf(pace, sizeof(pace), "sleeping %" PRIu64 " ms between batches", d.sleep_ms);
		else
			snprintf(pace, sizeof(pace), "no sleep between batches");
		char watch[128] = "";

		if (d.watch_ms > d.watch_budget_ms && d.watch_budget_ms > 0)
			snprintf(watch, sizeof(watch), ", watch checks over theirs (%" PRIu64 " ms > %" PRIu64
			         " ms)", d.watch_ms, d.watch_budget_ms);
		snprintf(msg, sizeof(msg),
		         "latency budget: probe p99 %.2f ms %s budget %.2f ms (baseline %.2f ms)%s: %s, "
		         "batches of at most %" PRIu64 " rows",
		         (double)d.p99_us / 1000.0, d.p99_us > d.budget_us ? "over" : "within",
		         (double)d.budget_us / 1000.0, (double)d.baseline_us / 1000.0, watch, pace,
		         x->bf_cap);
		phg_log(d.over > 0 ? PHG_LOG_INFO : PHG_LOG_DEBUG, &x->log, "%s", msg);
		throttle_event(x, "throttle", &d, msg);
	}
	if (d.sleep_ms > 0) {
		exec_state(x, PHG_X_BF_SLEEP);
		uv_timer_start(&x->backoff_timer, bf_wait_fire, d.sleep_ms, 0);
		return;
	}
	bf_batch(x);
}

static void bf_lag(phg_exec_t *x)
{
	phg_buf_t b;
	char run[32], max[32], why[128];
	const char *params[3] = {run, max, why};

	x->lag_checked_ms = now_ms();
	snprintf(run, sizeof(run), "%lld", x->run_id);
	snprintf(max, sizeof(max), "%" PRIu64, x->settings->max_replica_lag_ms);
	snprintf(why, sizeof(why), "replica lag over max_replica_lag (%" PRIu64 " ms)",
	         x->settings->max_replica_lag_ms);
	phg_buf_init(&b, 4096);
	phg_store_replica_lag_sql(&b, x->schema_q);
	exec_send(x, PHG_X_BF_LAG, b.data, 3, params);
	phg_buf_free(&b);
}

static void bf_lag_done(phg_exec_t *x, PGresult *res)
{
	long long lag = phg_db_num(PQgetvalue(res, 0, 0), 0, LLONG_MAX, 0, NULL);
	long long hidden = phg_db_num(PQgetvalue(res, 0, 2), 0, LLONG_MAX, 0, NULL);
	const char *worst = PQgetvalue(res, 0, 3);
	char msg[512], data[256];

	if (hidden > 0 && !x->lag_hidden_warned) {
		x->lag_hidden_warned = 1;
		phg_log(PHG_LOG_WARN, &x->log,
		        "%lld streaming replica(s) whose lag this role may not see: max_replica_lag "
		        "is not kept for them (grant pg_monitor to the role phasegate connects as)",
		        hidden);
	}
	snprintf(data, sizeof(data), "{\"lag_ms\": %lld, \"max_ms\": %" PRIu64 ", \"replica\": \"%s\"}",
	         lag, x->settings->max_replica_lag_ms, worst);
	if (lag > (long long)x->settings->max_replica_lag_ms) {
		if (!x->lag_held) {
			x->lag_held = 1;
			snprintf(msg, sizeof(msg),
			         "replica %s is %.1f s behind (max_replica_lag %.1f s): the backfill waits "
			         "between batches until it is back under",
			         worst, (double)lag / 1000.0,
			         (double)x->settings->max_replica_lag_ms / 1000.0);
			phg_log(PHG_LOG_WARN, &x->log, "%s", msg);
			if (x->on_event != NULL)
				x->on_event(x, "replica_lag", msg, data);
		}
		exec_state(x, PHG_X_BF_LAG_WAIT);
		uv_timer_start(&x->backoff_timer, bf_wait_fire, PHG_PAUSE_POLL_MS, 0);
		return;
	}
	if (x->lag_held) {
		x->lag_held = 0;
		snprintf(msg, sizeof(msg), "the replicas are back under max_replica_lag (%.1f s): going on",
		         (double)lag / 1000.0);
		phg_log(PHG_LOG_INFO, &x->log, "%s", msg);
		if (x->on_event != NULL)
			x->on_event(x, "replica_lag_ok", msg, data);
		x->bf_win_n = x->bf_win_head = 0; /* the wait is not the pace */
		bf_window_push(x);
	}
	bf_pace(x);
}

/* After a batch: an operator's pause, the replicas, the latency budget. */
static void bf_between(phg_exec_t *x)
{
	if (x->bf_paused) {
		bf_pause(x, 1);
		return;
	}
	if (x->settings->max_replica_lag_ms > 0 && !x->lag_off &&
	    (x->lag_checked_ms == 0 || now_ms() - x->lag_checked_ms >= PHG_LAG_CHECK_MS)) {
		bf_lag(x);
		return;
	}
	bf_pace(x);
}

static void bf_throttle_ready(phg_throttle_t *t, int status, const phg_err_t *err, void *arg)
{
	phg_exec_t *x = arg;
	phg_throttle_decision_t d;
	char msg[512];

	if (x->st != PHG_X_BF_BASELINE || x->thr != t)
		return;
	if (status != 0) {
		fail_reset(x, err);
		return;
	}
	phg_throttle_decide(t, &d);
	snprintf(msg, sizeof(msg),
	         "latency budget: the probe's p99 before the first batch is %.2f ms (%u probes); "
	         "budget %.2f ms",
	         (double)d.baseline_us / 1000.0, d.samples, (double)d.budget_us / 1000.0);
	phg_log(PHG_LOG_INFO, &x->log, "%s", msg);
	throttle_event(x, "throttle_baseline", &d, msg);
	bf_batch(x);
}

/* Before the first batch (also of a resumed backfill): the latency probe
 * measures its baseline, unless the budget is off. */
static void bf_begin(phg_exec_t *x)
{
	const phg_throttle_cfg_t *c = &x->settings->throttle;
	const phg_backfill_spec_t *bf = cur_op(x)->backfill;
	phg_build_t qb;
	phg_buf_t b;
	phg_err_t e;
	int np = 0;

	x->bf_cap = PHG_BATCH_MAX;
	x->bf_sleep_ms = 0;
	x->lag_checked_ms = 0;
	x->lag_held = 0;
	x->lag_off = 0;
	x->thr_noted = 0;
	phg_throttle_free(x->thr);
	x->thr = NULL;
	if (c->budget.off || x->conninfo == NULL) {
		bf_between(x);
		return;
	}
	phg_buf_init(&b, SQL_MAX);
	quoter(x, &qb);
	if (c->probe != NULL) {
		phg_buf_adds(&b, c->probe);
	} else {
		phg_backfill_probe_sql(&qb, bf, &x->key_names, &b);
		np = (int)x->key_names.n;
	}
	phg_build_reset(&qb);
	phg_err_clear(&e);
	x->thr = phg_throttle_new(x->backoff_timer.loop, c, &x->log);
	phg_throttle_expect_watch(x->thr, x->watch_interval_ms);
	if (np > 0) {
		if (x->bf_last.n == (size_t)np)
			phg_throttle_params(x->thr, x->bf_last.v, x->bf_last.n);
		else
			phg_throttle_params(x->thr, x->bf_high.v, x->bf_high.n);
	}
	exec_state(x, PHG_X_BF_BASELINE);
	if (phg_buf_error(&b) != 0 ||
	    phg_throttle_start(x->thr, x->conninfo, x->settings->connect_timeout_ms, b.data, np,
	                       bf_throttle_ready, x, &e) != 0) {
		if (e.code == 0)
			phg_err_set(&e, PHG_ETOOBIG, "the latency probe's SQL is too large");
		phg_throttle_free(x->thr);
		x->thr = NULL;
		fail_reset(x, &e);
	}
	phg_buf_free(&b);
}

/* ---- a started op that definitely did not happen ---- */

/* The op failed with a definite answer (an HTTP error status, an index
 * build that failed and was cleaned up): it is not "started" any more, so
 * a revert does not try to undo it.  Then fail with x->op_err. */
static void unmark_and_fail(phg_exec_t *x, int status)
{
	phg_buf_t b;

	x->unmark_status = status;
	x->op_started = -1;
	phg_buf_init(&b, 4096);
	phg_store_op_started_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx, -1);
	exec_sendf(x, PHG_X_UNMARK, &b);
}

/* ---- PHG_OP_HTTP ---- */

static void http_done(phg_http_req_t *req, const phg_http_result_t *r, void *arg);

static void http_send(phg_exec_t *x)
{
	const phg_http_spec_t *h = cur_op(x)->http;
	phg_http_opts_t o;
	phg_err_t e;

	memset(&o, 0, sizeof(o));
	o.method = h->method;
	o.url = h->url;
	o.body = h->body;
	o.headers = &h->headers;
	o.timeout_ms = 30000;
	phg_err_clear(&e);
	x->attempt++;
	x->attempt_at_ms = now_ms();
	exec_state(x, PHG_X_HTTP);
	if (x->http == NULL) {
		phg_err_set(&e, PHG_EHTTP, "no HTTP client for \"%s\"", cur_op(x)->label);
		fail_op(x, PHG_ESTEP, &e);
		return;
	}
	if (phg_http_request(x->http, &x->req, &o, http_done, x, &e) != 0)
		fail_op(x, PHG_ESTEP, &e);
}

static void http_done(phg_http_req_t *req, const phg_http_result_t *r, void *arg)
{
	phg_exec_t *x = arg;
	const phg_op_t *op = cur_op(x);
	phg_err_t e;

	(void)req;
	x->req = NULL;
	phg_err_clear(&e);
	if (r->transport_ok && r->status >= 200 && r->status < 300) {
		phg_log(PHG_LOG_INFO, &x->log, "%s: HTTP %ld in %" PRIu64 " ms", op->label, r->status,
		        r->latency_ms);
		op_fault(x, "answered");
		record(x);
		return;
	}
	if (r->transport_ok) {
		phg_err_set(&x->op_err, PHG_EHTTP, "%s answered HTTP %ld", op->label, r->status);
		phg_err_detail(&x->op_err, "A 2xx answer is required. Body: %.300s",
		               r->body ? r->body : "");
		unmark_and_fail(x, PHG_ESTEP);
		return;
	}
	if (x->attempt < (x->settings->connect_retries > 3 ? x->settings->connect_retries : 3)) {
		uint64_t d = phg_backoff_ms(x->settings->retry_backoff_ms,
		                            x->settings->retry_backoff_max_ms, x->attempt, &x->rng);

		phg_log(PHG_LOG_WARN, &x->log, "%s: no answer (%s); retrying in %" PRIu64 " ms",
		        op->label, r->reason, d);
		exec_state(x, PHG_X_BACKOFF);
		uv_timer_start(&x->backoff_timer, backoff_fire, d, 0);
		return;
	}
	phg_err_set(&e, PHG_EHTTP, "%s: no answer after %" PRIu64 " attempts: %s", op->label,
	            x->attempt, r->reason);
	fail_op(x, PHG_ESTEP, &e);
}

/* ---- driving ---- */

/* ---- the latency budget during one long statement ---- */

/* A VALIDATE or an index build cannot pause between batches: with the
 * budget on, the probe (the plan's, or the op's stand-in for the app)
 * measures a baseline first, then what the application feels while the
 * statement runs; the verdict is logged and recorded (throttle_observed). */
#define PHG_OBS_BASELINE_MS 200 /* a statement's baseline: short, it waits for it */

static int obs_wanted(const phg_exec_t *x, const phg_op_t *op)
{
	return op->observe_sql != NULL && !x->settings->throttle.budget.off && x->conninfo != NULL &&
	       (op->flags & (PHG_OPF_SCAN | PHG_OPF_PARALLEL)) && x->dir != PHG_DIR_FINALIZE;
}

static void exec_op_go(phg_exec_t *x);

static void obs_ready(phg_throttle_t *t, int status, const phg_err_t *err, void *arg)
{
	phg_exec_t *x = arg;

	if (x->st != PHG_X_BF_BASELINE || x->thr != t)
		return;
	if (status != 0) {
		/* measuring is not worth failing the step for */
		phg_log(PHG_LOG_WARN, &x->log, "the latency probe cannot run (%s): %s runs unmeasured",
		        err && err->msg[0] ? err->msg : "no connection", cur_op(x)->label);
		phg_throttle_free(x->thr);
		x->thr = NULL;
		x->observing = 0;
	}
	if (stop_now(x))
		return;
	exec_op_go(x);
}

static void obs_start(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);
	const phg_throttle_cfg_t *c = &x->settings->throttle;
	phg_err_t e;

	phg_throttle_free(x->thr);
	x->obs_cfg = *c; /* the probe string stays the plan's */
	if (x->obs_cfg.baseline_ms > PHG_OBS_BASELINE_MS)
		x->obs_cfg.baseline_ms = PHG_OBS_BASELINE_MS;
	x->thr = phg_throttle_new(x->backoff_timer.loop, &x->obs_cfg, &x->log);
	x->observing = 1;
	x->obs_op = x->next;
	phg_err_clear(&e);
	exec_state(x, PHG_X_BF_BASELINE);
	if (phg_throttle_start(x->thr, x->conninfo, x->settings->connect_timeout_ms,
	                       c->probe != NULL ? c->probe : op->observe_sql, 0, obs_ready, x, &e) != 0) {
		phg_throttle_free(x->thr);
		x->thr = NULL;
		x->observing = 0;
		exec_op_go(x);
	}
}

/* The op is done: what the application felt while it ran. */
static void obs_report(phg_exec_t *x)
{
	phg_throttle_decision_t d;
	char msg[768];

	if (!x->observing || x->thr == NULL)
		return;
	phg_throttle_observe(x->thr, &d);
	x->observing = 0;
	if (d.samples == 0)
		return;
	snprintf(msg, sizeof(msg),
	         "latency budget during \"%s\": the probe's p99 was %.2f ms (%u probes; baseline "
	         "%.2f ms, budget %.2f ms)%s",
	         cur_op(x)->label, (double)d.p99_us / 1000.0, d.samples,
	         (double)d.baseline_us / 1000.0, (double)d.budget_us / 1000.0,
	         d.over ? ": over budget. One statement cannot be paused; run it when the "
	                  "application is quieter, or give the plan a looser throttle"
	                : "");
	phg_log(d.over ? PHG_LOG_WARN : PHG_LOG_INFO, &x->log, "%s", msg);
	if (x->on_event != NULL) {
		char data[256];

		snprintf(data, sizeof(data),
		         "{\"p99_ms\": %.3f, \"budget_ms\": %.3f, \"baseline_ms\": %.3f, \"samples\": %u, "
		         "\"over\": %s, \"sleep_ms\": 0}",
		         (double)d.p99_us / 1000.0, (double)d.budget_us / 1000.0,
		         (double)d.baseline_us / 1000.0, d.samples, d.over ? "true" : "false");
		x->on_event(x, "throttle_observed", msg, data);
	}
}

static void exec_op_start(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);

	phg_err_clear(&x->op_err);
	/* a retry of the same op keeps measuring: no second baseline */
	if (obs_wanted(x, op) && !(x->observing && x->obs_op == x->next && x->thr != NULL)) {
		obs_start(x);
		return;
	}
	exec_op_go(x);
}

static void exec_op_go(phg_exec_t *x)
{
	const phg_op_t *op = cur_op(x);

	switch (op->kind) {
	case PHG_OP_TX:
		if (op->noop_sql != NULL)
			exec_send(x, PHG_X_NOOP_CHECK, op->noop_sql, 0, NULL);
		else
			tx_send(x);
		break;
	case PHG_OP_STMT:
		st_set(x);
		break;
	case PHG_OP_BACKFILL:
		bf_set(x);
		break;
	case PHG_OP_HTTP:
		st_mark(x);
		break;
	default: {
		phg_err_t e;

		phg_err_clear(&e);
		phg_err_set(&e, PHG_ESTEP, "op \"%s\" cannot run on the database connection",
		            op->label);
		fail_op(x, PHG_ESTEP, &e);
		break;
	}
	}
}

static void exec_next(phg_exec_t *x)
{
	if (x->next >= x->ops->n) {
		exec_finish(x, 0);
		return;
	}
	if (stop_now(x))
		return;
	x->attempt = 0;
	exec_op_start(x);
}

static void op_committed(phg_exec_t *x)
{
	uv_timer_stop(&x->status_timer);
	phg_log_status_clear();
	obs_report(x);
	phg_log(PHG_LOG_DEBUG, &x->log, "committed: %s", cur_op(x)->label);
	op_fault(x, "committed");
	x->next++;
	x->op_started = -1;
	phg_throttle_free(x->thr);
	x->thr = NULL;
	/* as the record did: the next backfill op starts its own cursor */
	x->bf_pass = 1;
	phg_strv_clear(&x->bf_last);
	phg_strv_clear(&x->bf_high);
	x->bf_high_set = 0;
	exec_next(x);
}

static void backoff_fire(uv_timer_t *t)
{
	phg_exec_t *x = t->data;

	if (stop_now(x))
		return;
	/* a backfill batch or an http request retries by itself; other ops
	 * start over */
	if (x->st == PHG_X_BACKOFF && cur_op(x)->kind == PHG_OP_BACKFILL && x->key_names.n > 0) {
		bf_batch(x);
		return;
	}
	if (x->st == PHG_X_BACKOFF && cur_op(x)->kind == PHG_OP_HTTP) {
		http_send(x);
		return;
	}
	exec_op_start(x);
}

static void exec_on_result(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err,
                           void *arg)
{
	phg_exec_t *x = arg;
	const phg_op_t *op = cur_op(x);

	(void)pg;
	if (status == PHG_ECONNECT) {
		probe_stop(x);
		phg_err_copy(&x->op_err, err);
		if (x->op_err.code == 0)
			phg_err_set(&x->op_err, PHG_ECONNECT, "lost the connection to the database");
		x->op_err.code = PHG_ECONNECT;
		fail_op(x, PHG_ECONNECT, &x->op_err);
		return;
	}
	switch (x->st) {
	case PHG_X_TX:
		probe_stop(x);
		if (status == 0) {
			op_committed(x);
			return;
		}
		phg_err_copy(&x->op_err, err);
		exec_send(x, PHG_X_TX_ROLLBACK, "ROLLBACK", 0, NULL);
		return;
	case PHG_X_TX_ROLLBACK:
		after_failure(x);
		return;
	case PHG_X_VIOLATION: {
		/* the last result is the count; a failure (of the undo or of the
		 * count) ends the transaction, if any, with a ROLLBACK first */
		int undo = op->violation_undo_sql != NULL && x->next > 0;
		const char *n = NULL;

		if (status != 0 && !x->violation_failed) {
			phg_log_err(PHG_LOG_WARN, &x->log, err);
			x->violation_failed = 1;
			exec_send(x, PHG_X_VIOLATION, "ROLLBACK", 0, NULL);
			return;
		}
		if (x->violation_failed) {
			violation_fail(x, op, x->violation_status, &x->violation_err, NULL, undo ? -1 : 0);
			return;
		}
		if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
			n = PQgetvalue(res, 0, 0);
		if (undo)
			x->next--; /* recorded not done: the undone op runs again next time */
		violation_fail(x, op, x->violation_status, &x->violation_err, n, undo ? 1 : 0);
		return;
	}
	case PHG_X_NOOP_CHECK:
		if (status != 0) {
			fail_op(x, PHG_ESTEP, err);
			return;
		}
		if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
			noop_record(x);
		else
			tx_send(x);
		return;

	case PHG_X_ST_SET:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		if (op->guard_sql != NULL)
			exec_send(x, PHG_X_ST_GUARD, op->guard_sql, 0, NULL);
		else
			st_mark(x);
		return;
	case PHG_X_ST_GUARD:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
			const char *g = PQgetvalue(res, 0, 0);

			if (strcmp(g, "valid") == 0 && x->op_started == (int)x->next) {
				phg_log(PHG_LOG_INFO, &x->log,
				        "%s: already done before the interruption (valid)", op->label);
				reset_session(x, PHG_X_ST_RESET);
				return;
			}
			if (strcmp(g, "valid") == 0) {
				/* not ours: never build over it, never drop it */
				phg_err_set(&x->op_err, PHG_ESTEP, "%s: it already exists", op->label);
				phg_err_detail(&x->op_err, "A valid object of that name existed before this "
				                           "step; phasegate neither replaces nor drops it.");
				memcpy(x->op_err.sqlstate, "42P07", 6);
				reset_session(x, PHG_X_FAIL_RESET);
				return;
			}
			if (strcmp(g, "invalid") == 0 && op->cleanup_sql != NULL) {
				phg_log(PHG_LOG_WARN, &x->log,
				        "%s: an INVALID leftover exists (an interrupted or failed build); "
				        "dropping it first",
				        op->label);
				exec_send(x, PHG_X_ST_CLEANUP, op->cleanup_sql, 0, NULL);
				return;
			}
		}
		st_mark(x);
		return;
	case PHG_X_ST_CLEANUP:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		st_mark(x);
		return;
	case PHG_X_ST_MARK:
		if (status != 0) {
			phg_err_copy(&x->op_err, err);
			if (op->kind == PHG_OP_HTTP)
				fail_op(x, PHG_ESTEP, err);
			else
				reset_session(x, PHG_X_FAIL_RESET);
			return;
		}
		x->op_started = (int)x->next;
		op_fault(x, "marked");
		if (op->kind == PHG_OP_HTTP)
			http_send(x);
		else
			st_run(x);
		return;
	case PHG_X_ST_RUN:
		probe_stop(x);
		if (status == 0) {
			op_fault(x, "ran");
			reset_session(x, PHG_X_ST_RESET);
			return;
		}
		phg_err_copy(&x->op_err, err);
		if (op->guard_sql != NULL && op->cleanup_sql != NULL)
			exec_send(x, PHG_X_ST_FAIL_GUARD, op->guard_sql, 0, NULL);
		else
			reset_session(x, PHG_X_FAIL_RESET);
		return;
	case PHG_X_ST_FAIL_GUARD:
		if (status == 0 && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) &&
		    strcmp(PQgetvalue(res, 0, 0), "invalid") == 0) {
			phg_log(PHG_LOG_WARN, &x->log, "%s failed; dropping the INVALID index it left",
			        op->label);
			exec_send(x, PHG_X_ST_FAIL_CLEANUP, op->cleanup_sql, 0, NULL);
			return;
		}
		reset_session(x, PHG_X_FAIL_RESET);
		return;
	case PHG_X_ST_FAIL_CLEANUP:
		if (status != 0)
			phg_log_err(PHG_LOG_WARN, &x->log, err);
		reset_session(x, PHG_X_FAIL_RESET);
		return;
	case PHG_X_ST_RESET:
		if (status != 0) {
			fail_op(x, PHG_ESTEP, err);
			return;
		}
		record(x);
		return;
	case PHG_X_FAIL_RESET:
		if (x->op_err.code == PHG_EINTERRUPTED) {
			exec_finish(x, PHG_EINTERRUPTED);
			return;
		}
		if (op->kind == PHG_OP_STMT && op->guard_sql != NULL && x->op_started == (int)x->next &&
		    !retriable(&x->op_err)) {
			/* the build failed and its leftover was dropped: nothing happened */
			unmark_and_fail(x, PHG_ESTEP);
			return;
		}
		after_failure(x);
		return;
	case PHG_X_UNMARK:
		fail_op(x, x->unmark_status, &x->op_err);
		return;

	case PHG_X_BF_SET:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		bf_keys(x);
		return;
	case PHG_X_BF_KEYS:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		bf_keys_done(x, res);
		if (x->st != PHG_X_BF_KEYS)
			return; /* failed: the session is being reset */
		if (!x->bf_high_set) {
			bf_high(x);
			return;
		}
		if (x->est_rows <= 0 && x->bf_high.n == x->key_names.n && x->bf_pass == 1) {
			bf_count(x);
			return;
		}
		bf_begin(x);
		return;
	case PHG_X_BF_HIGH:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		bf_high_done(x, res);
		bf_begin(x);
		return;
	case PHG_X_BF_BATCH:
		probe_stop(x);
		phg_throttle_busy(x->thr, 0);
		if (status != 0) {
			phg_err_copy(&x->op_err, err);
			if (retriable(&x->op_err) && x->attempt < x->settings->lock_retries) {
				/* the batch rolled back by itself (one statement): retry it */
				after_failure(x);
				return;
			}
			reset_session(x, PHG_X_FAIL_RESET);
			return;
		}
		if (bf_batch_done(x, res)) {
			bf_between(x);
			return;
		}
		if (x->bf_pass == 1 && op->backfill->where != NULL) {
			phg_buf_t b;

			/* sweep from the start for rows inserted behind the cursor */
			phg_log(PHG_LOG_INFO, &x->log,
			        "backfill of %s: final sweep from the start, for rows written behind the "
			        "cursor",
			        op->backfill->table);
			if (x->on_event != NULL)
				x->on_event(x, "backfill_sweep", "final sweep from the start", NULL);
			x->bf_pass = 2;
			phg_strv_clear(&x->bf_last);
			phg_buf_init(&b, 4096);
			phg_store_sweep_sql(&b, x->schema_q, x->run_id, x->phase_idx, x->step_idx);
			exec_sendf(x, PHG_X_BF_PASS2, &b);
			return;
		}
		bf_progress(x, 1);
		reset_session(x, PHG_X_ST_RESET);
		return;
	case PHG_X_BF_POLL:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
			bf_pause(x, 0);
			return;
		}
		phg_log(PHG_LOG_INFO, &x->log, "resumed: going on after %lld rows", x->bf_rows);
		if (x->on_event != NULL)
			x->on_event(x, "resumed", "resumed by an operator", NULL);
		x->bf_paused = 0;
		x->bf_win_n = x->bf_win_head = 0; /* the pause is not the pace */
		bf_window_push(x);
		bf_batch(x);
		return;
	case PHG_X_BF_LAG:
		if (status != 0) {
			phg_log(PHG_LOG_WARN, &x->log,
			        "cannot read the replicas' lag (%s): max_replica_lag is not kept by this "
			        "backfill",
			        err != NULL ? err->msg : "?");
			x->lag_off = 1; /* not asked again */
			bf_pace(x);
			return;
		}
		bf_lag_done(x, res);
		return;
	case PHG_X_BF_PASS2:
		if (status != 0) {
			fail_reset(x, err);
			return;
		}
		op_fault(x, "pass2");
		bf_batch(x);
		return;

	case PHG_X_RECORD:
		if (status != 0) {
			fail_op(x, PHG_ESTEP, err);
			return;
		}
		op_committed(x);
		return;
	default:
		phg_log(PHG_LOG_ERROR, &x->log, "unexpected result in exec state %s",
		        exec_state_names[x->st]);
		return;
	}
}

int phg_exec_init(uv_loop_t *loop, phg_exec_t *x)
{
	memset(x, 0, sizeof(*x));
	uv_timer_init(loop, &x->backoff_timer);
	uv_timer_init(loop, &x->probe_timer);
	uv_timer_init(loop, &x->done_timer);
	uv_timer_init(loop, &x->status_timer);
	x->backoff_timer.data = x;
	x->probe_timer.data = x;
	x->done_timer.data = x;
	x->status_timer.data = x;
	x->timers_open = 4;
	x->op_started = -1;
	x->bf_pass = 1;
	x->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)x << 17);
	return 0;
}

int phg_exec_run(phg_exec_t *x, phg_exec_cb cb)
{
	if (x->work == NULL || x->work->state != PHG_PG_READY)
		return PHG_EINVAL;
	x->cb = cb;
	phg_err_clear(&x->err);
	exec_state(x, PHG_X_IDLE);
	exec_next(x);
	return 0;
}

void phg_exec_interrupt(phg_exec_t *x)
{
	if (x->st != PHG_X_BACKOFF && x->st != PHG_X_BF_PAUSED && x->st != PHG_X_BF_BASELINE &&
	    x->st != PHG_X_BF_SLEEP && x->st != PHG_X_BF_LAG_WAIT)
		return;
	phg_log(PHG_LOG_INFO, &x->log, "retry wait ended by the stop request");
	exec_finish(x, PHG_EINTERRUPTED);
}

void phg_exec_reset(phg_exec_t *x)
{
	phg_strv_clear(&x->key_names);
	phg_strv_clear(&x->bf_last);
	phg_strv_clear(&x->bf_high);
	x->bf_high_set = 0;
}

static void timer_closed(uv_handle_t *h)
{
	phg_exec_t *x = h->data;

	if (--x->timers_open == 0 && x->close_cb != NULL)
		x->close_cb(x);
}

void phg_exec_close(phg_exec_t *x, void (*cb)(phg_exec_t *x))
{
	phg_exec_reset(x);
	x->close_cb = cb;
	uv_close((uv_handle_t *)&x->backoff_timer, timer_closed);
	uv_close((uv_handle_t *)&x->probe_timer, timer_closed);
	uv_close((uv_handle_t *)&x->done_timer, timer_closed);
	uv_close((uv_handle_t *)&x->status_timer, timer_closed);
	phg_log_status_clear();
}
