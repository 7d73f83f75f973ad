/*
 * throttle.h - the latency budget of a backfill: what the application feels.
 *
 * A probe -- a cheap query, by default a key lookup on the table being
 * backfilled, or the plan's `throttle.probe` -- runs every `interval` on a
 * connection of its own, so its latency is the database's and never waits
 * behind phasegate's own queries.  Before the first batch the probe's p99
 * over `baseline` is measured: the budget is `factor x baseline` (never
 * below `floor`) or an absolute limit.  After each batch,
 * phg_throttle_decide() compares the p99 of the probes of the last 2 s
 * since the last change of pace (at least 20 of them; a probe still in
 * flight counts with its age) -- and, when they answered
 * during the baseline, the watch checks' latency against theirs -- with the
 * budget: over it, the sleep between batches doubles (from 10 ms up to
 * `max_sleep`) and the batch-size cap halves; under 80% of it, the sleep
 * halves (to 0 under 5 ms) and the cap grows by half.  Over budget while the probes no batch overlapped (of the last
 * 5 s) are as slow is not the backfill's doing: the pace is held, not
 * tightened, so a loaded machine does not stall the backfill.  The sleep is
 * a duty cycle: the fraction of time the backfill
 * works shrinks until the application's tail latency is back in budget.
 *
 * Nothing here blocks: the probe connection is libpq non-blocking on the
 * loop (pg.h); sorting the window's few hundred samples is the only CPU work.
 */
#ifndef PHG_THROTTLE_H
#define PHG_THROTTLE_H

#include <stdint.h>

#include <uv.h>

#include "error.h"
#include "log.h"
#include "plan.h"

typedef struct phg_throttle_s phg_throttle_t;

/* The baseline is measured (status 0), or the probe cannot run: status
 * PHG_ECONNECT (its connection) or PHG_ESTEP (the probe's SQL failed; err
 * has the server's error).  Never called from inside phg_throttle_start. */
typedef void (*phg_throttle_ready_cb)(phg_throttle_t *t, int status, const phg_err_t *err,
                                      void *arg);

typedef struct phg_throttle_decision_s {
	uint64_t p99_us;       /* the probe's p99 over the window */
	uint64_t budget_us;    /* what it may be */
	uint64_t baseline_us;  /* the probe's p99 before the first batch */
	unsigned samples;      /* in the window */
	uint64_t watch_ms;     /* the watch checks' recent p99, 0: none */
	uint64_t watch_budget_ms;
	uint64_t idle_p99_us;  /* the p99 of the recent probes no batch overlapped */
	int over;              /* 1: over budget; -1: under 80% of it; 0: within */
	int not_ours;          /* over budget, but as slow between batches: held */
	uint64_t sleep_ms;     /* sleep this long before the next batch */
	double cap_factor;     /* scale the batch-size cap by this */
	int changed;           /* the sleep started, stopped, or doubled: worth an event */
} phg_throttle_decision_t;

/* @cfg and @log must outlive the throttle. */
phg_throttle_t *phg_throttle_new(uv_loop_t *loop, const phg_throttle_cfg_t *cfg,
                                 const phg_logctx_t *log);

/* Connect (@conninfo as the run's), then probe with @sql (@nparams text
 * parameters, set by phg_throttle_params; 0 for none) for the baseline;
 * @cb reports.  0, or PHG_EINVAL/PHG_ECONNECT (cb not called, err set). */
int phg_throttle_start(phg_throttle_t *t, const char *conninfo, uint64_t connect_timeout_ms,
                       const char *sql, int nparams, phg_throttle_ready_cb cb, void *arg,
                       phg_err_t *err);

/* The probe's parameters from now on (copied; NULL entries are SQL NULL). */
void phg_throttle_params(phg_throttle_t *t, char *const *v, size_t n);

/* A batch is sent (1) or answered (0): a probe it overlapped is "busy". */
void phg_throttle_busy(phg_throttle_t *t, int busy);

/* The phase's watch checks probe every @interval_ms (the shortest): the
 * baseline lasts long enough for three of their answers (at most 10 s). */
void phg_throttle_expect_watch(phg_throttle_t *t, uint64_t interval_ms);

/* A watch check answered in @latency_ms (NULL @t: no-op). */
void phg_throttle_watch(phg_throttle_t *t, uint64_t latency_ms);

/* After a batch: how long to sleep before the next, and the batch cap. */
void phg_throttle_decide(phg_throttle_t *t, phg_throttle_decision_t *d);

/* After one long statement (a VALIDATE, an index build), which cannot be
 * paced: the probe's p99 over every sample since the baseline (at most the
 * last RING), against the budget; over = 1 when above it. */
void phg_throttle_observe(phg_throttle_t *t, phg_throttle_decision_t *d);

/* Stop probing, close the connection; the throttle frees itself once its
 * handles are closed.  NULL is a no-op. */
void phg_throttle_free(phg_throttle_t *t);

/* ---- the pure parts (tests/unit/test_throttle.c) ---- */

/* The @pct-th percentile (nearest rank) of @v[0..n); sorts @v.  0 when n = 0. */
uint64_t phg_percentile(uint64_t *v, size_t n, unsigned pct);

/* The budget in µs for @baseline_us. */
uint64_t phg_budget_us(const phg_budget_t *b, uint64_t baseline_us, uint64_t floor_ms);

/* The next sleep and cap factor, from @over (1, 0, -1) and the current
 * sleep. */
void phg_throttle_next(int over, uint64_t sleep_ms, uint64_t max_sleep_ms, uint64_t *next_ms,
                       double *cap_factor);

#endif /* PHG_THROTTLE_H */
