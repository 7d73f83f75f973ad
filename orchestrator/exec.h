/*
 * exec.h - runs one step's ops (phases/step.h) on the work connection.
 *
 * PHG_OP_TX: BEGIN; SET LOCAL lock_timeout; [memo]; statements; record;
 *   COMMIT -- sent as one query, so the op and its progress record commit
 *   together or not at all.
 * PHG_OP_STMT: SET lock_timeout; guard (exists / valid / invalid); cleanup of
 *   an INVALID leftover; mark op_started; the statement; RESET; record.
 * PHG_OP_HTTP: mark op_started; the request (2xx required; a failure to
 *   get any answer is retried with backoff, connect_retries times); record.
 *   A crash between the answer and the record sends it again on resume.
 * PHG_OP_BACKFILL: resolve the key; batches of one statement each that
 *   updates the rows and writes the checkpoint; a final sweep pass when the
 *   backfill has a `where`; record.
 * Backfill batches keep to a latency budget (throttle.h): a probe on its
 * own connection, its baseline measured before the first batch, a sleep
 * between batches and a smaller batch while the probe's p99 is over it.
 * Every second between two batches the streaming replicas' replay lag is
 * asked (pg_stat_replication); over max_replica_lag, the backfill waits,
 * recorded in runs.held, until it is back under.
 * Between two batches, a run an operator paused (`phasegate pause`, recorded
 * in runs.paused_at; every batch's result says so) waits, asking every
 * PHG_PAUSE_POLL_MS, and goes on when it is resumed; the work connection
 * keeps the plan's lock all along.
 * A lock timeout (55P03), deadlock (40P01) or serialization failure (40001)
 * is retried up to lock_retries times with jittered exponential backoff;
 * the log names the sessions that blocked it (pg_blocking_pids, looked up
 * on the control connection while the statement waits).  An autovacuum
 * worker that blocks it (not one preventing wraparound) is canceled after
 * 30 ms, as PostgreSQL would after deadlock_timeout, when phasegate
 * connects as a superuser.
 *
 * The caller owns the phg_exec_t; phg_exec_init() starts three timers that
 * phg_exec_close() closes (its callback runs when all are closed).  The
 * completion callback never runs from inside phg_exec_run() (not even with
 * no op left to run): always on a later loop turn.  A statement that does
 * not fit its capped buffer fails the op (PHG_ETOOBIG in err) before
 * anything of it is sent.
 */
#ifndef PHG_EXEC_H
#define PHG_EXEC_H

#include <stdint.h>

#include <uv.h>

#include "http.h"
#include "log.h"
#include "pg.h"
#include "pgq.h"
#include "step.h"

typedef struct phg_exec_s phg_exec_t;

/*
 * status: 0 all ops done; PHG_ESTEP a statement failed (err has the SQL
 * error and detail names the op); PHG_ELOCK_TIMEOUT retries exhausted;
 * PHG_EINTERRUPTED stopped at a safe point because should_stop said so;
 * PHG_ECONNECT the work connection was lost.
 */
typedef void (*phg_exec_cb)(phg_exec_t *x, int status);

/* Something worth an event-log row: kind ("lock_retry", "backfill_progress",
 * ...) and a message; @data is a JSON object text or NULL. */
typedef void (*phg_exec_event_cb)(phg_exec_t *x, const char *kind, const char *message,
                                  const char *data);

typedef enum phg_exec_state_e {
	PHG_X_IDLE = 0,
	PHG_X_TX,
	PHG_X_TX_ROLLBACK,
	PHG_X_BACKOFF,
	PHG_X_ST_SET,
	PHG_X_ST_GUARD,
	PHG_X_ST_CLEANUP,
	PHG_X_ST_MARK,
	PHG_X_ST_RUN,
	PHG_X_ST_RESET,
	PHG_X_ST_FAIL_GUARD,
	PHG_X_ST_FAIL_CLEANUP,
	PHG_X_FAIL_RESET,
	PHG_X_BF_SET,
	PHG_X_BF_KEYS,
	PHG_X_BF_HIGH,
	PHG_X_BF_BATCH,
	PHG_X_BF_PASS2,
	PHG_X_BF_PAUSED,  /* an operator paused the run: waiting between batches */
	PHG_X_BF_POLL,    /* asking whether it is still paused */
	PHG_X_BF_BASELINE, /* the latency probe measures its baseline */
	PHG_X_BF_SLEEP,   /* the latency budget's sleep between batches */
	PHG_X_BF_LAG,     /* asking the replicas' replay lag */
	PHG_X_BF_LAG_WAIT, /* a replica is too far behind: waiting between batches */
	PHG_X_HTTP,
	PHG_X_UNMARK,
	PHG_X_RECORD,
	PHG_X_NOOP_CHECK, /* asking whether the step is done already (op->noop_sql) */
	PHG_X_VIOLATION,  /* after a check violation: undo the previous op, count the rows */
	PHG_X_DONE,
} phg_exec_state_t;

struct phg_exec_s {
	/* inputs: set before phg_exec_run() */
	phg_pg_t *work;
	phg_pgq_t *ctl;                 /* may be NULL: no blocker lookups */
	const char *conninfo;           /* the latency probe's connection (throttle.h) */
	uint64_t watch_interval_ms;     /* the phase's watch checks (0: none) */
	phg_http_t *http;               /* for PHG_OP_HTTP ops */
	const phg_settings_t *settings;
	const char *schema_q;           /* quoted state schema */
	long long run_id;
	int phase_idx, step_idx;
	phg_dir_t dir;
	const phg_ops_t *ops;
	size_t next;                    /* first op to run = ops committed so far */
	int op_started;                 /* STMT op started but not recorded, or -1 */
	int bf_pass;                    /* backfill checkpoint as loaded */
	phg_strv_t bf_last;             /* last key done (text values), n = 0: none */
	int bf_high_set;                /* the high-water mark is recorded (as loaded) */
	phg_strv_t bf_high;             /* the last key the backfill covers */
	long long bf_rows;
	long long bf_batches;
	phg_logctx_t log;
	int (*should_stop)(void *arg);  /* checked at safe points */
	void *stop_arg;
	phg_exec_event_cb on_event;     /* may be NULL */
	void *data;

	/* outputs */
	phg_err_t err;
	char blockers_json[2048]; /* the blockers as a JSON array (lock_retry events) */
	phg_err_t violation_err; /* PHG_X_VIOLATION: the server's error, while it runs */
	int violation_status;
	int violation_failed;    /* the undo or the count failed: rolling back */

	/* private */
	phg_exec_state_t st;
	phg_exec_cb cb;
	uv_timer_t backoff_timer;
	uv_timer_t probe_timer;
	uv_timer_t status_timer; /* a terminal's live line during a long statement */
	uint64_t status_since_ms;
	uint64_t attempt_at_ms; /* when the current attempt was sent (lock_retry: waited) */
	int observing;          /* x->thr measures the app during one long statement */
	phg_throttle_cfg_t obs_cfg; /* the plan's, with a shorter baseline */
	size_t obs_op;          /* ... this op */
	uv_timer_t done_timer;          /* the callback runs on a later loop turn */
	int done_status;
	int timers_open;
	void (*close_cb)(phg_exec_t *x);
	uint64_t attempt;
	int fail_status;
	phg_err_t op_err;
	int unmark_status;      /* PHG_X_UNMARK: the failure to report after it */
	char blockers[512];
	int probing;
	int probe_n;                    /* blocker probes of this attempt */
	char probe_label[256];          /* the op the probe in flight is about */
	uint64_t rng;
	/* backfill */
	phg_strv_t key_names;
	long long est_rows;
	uint64_t bf_started_ms, bf_logged_ms;
	long long bf_rows_at_start;
	/* a moving window of recent batches: rows/s and ETA follow the present
	 * pace, not the cumulative average */
#define PHG_BF_WINDOW 8
	struct {
		uint64_t at_ms;
		long long rows;
	} bf_win[PHG_BF_WINDOW];
	unsigned bf_win_n, bf_win_head;
	long long bf_scanned;           /* rows of pass 1 passed over (this process; resumed: the rows done) */
	uint64_t bf_limit;              /* rows of the next batch (batch_time adapts it) */
	uint64_t bf_sent_ms;            /* when the batch in flight was sent */
	uint64_t bf_sent_limit;         /* its LIMIT */
	int bf_paused;                  /* the last batch saw the run paused */
	struct phg_throttle_s *thr;     /* the latency budget (NULL: off) */
	uint64_t bf_cap;                /* the budget's cap on the batch size */
	uint64_t bf_sleep_ms;
	int thr_noted;                  /* "not the backfill's doing" was logged */
	uint64_t lag_checked_ms;        /* when the replicas' lag was last asked */
	int lag_held;                   /* waiting for a replica */
	int lag_hidden_warned;
	int lag_off;                    /* the lag cannot be read: not asked again */
	/* http */
	phg_http_req_t *req;
};

#define PHG_PAUSE_POLL_MS 500
/* the latency budget never makes a batch smaller than this */
#define PHG_THROTTLE_MIN_BATCH 100u

int phg_exec_init(uv_loop_t *loop, phg_exec_t *x);

/* Run x->ops from x->next.  @cb is called once, when done or failed.
 * 0, or PHG_EINVAL when the work connection is not ready (cb not called). */
int phg_exec_run(phg_exec_t *x, phg_exec_cb cb);

/* A stop was asked (SIGINT/SIGTERM): a wait between attempts (lock retry
 * backoff, http retry) or a pause ends now and the run completes with
 * PHG_EINTERRUPTED on the next loop turn; a statement or batch in flight is
 * left to finish (the caller's should_stop ends the run after it). */
void phg_exec_interrupt(phg_exec_t *x);

/* Free what a run left (backfill key lists, checkpoint copy); keeps timers. */
void phg_exec_reset(phg_exec_t *x);

/* Close the timers; @cb (may be NULL) runs when they are closed. */
void phg_exec_close(phg_exec_t *x, void (*cb)(phg_exec_t *x));

/* Jittered exponential backoff for attempt @n (1-based): uniform in
 * [d/2, d] with d = min(base * 2^(n-1), max).  @rng is updated. */
uint64_t phg_backoff_ms(uint64_t base, uint64_t max, uint64_t n, uint64_t *rng);

#endif /* PHG_EXEC_H */
