/*
 * throttle.c - the probe, its baseline and the duty cycle; see throttle.h.
 */
#include "throttle.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "pg.h"

#define RING 512          /* probe samples kept (10 s at 20 ms) */
#define WINDOW_MS 2000    /* a decision looks at the probes of the last 2 s */
#define IDLE_WINDOW_MS 5000 /* ... and at those between batches of the last 5 s */
#define WATCH_RING 16
#define WATCH_WINDOW_MS 3000
#define SLEEP_START_MS 10
#define SLEEP_MIN_MS 5
#define BASELINE_INTERVAL_MS 5
#define WARMUP 3          /* the first probes of a connection fill its caches */
#define MIN_SAMPLES 20    /* a decision needs this many probes since the last change */
#define MIN_IDLE 3        /* probes between batches that say "not the backfill" */

typedef enum { T_CONNECTING, T_BASELINE, T_RUNNING, T_BLIND, T_CLOSING } tstate_t;

struct phg_throttle_s {
	uv_loop_t *loop;
	const phg_throttle_cfg_t *cfg;
	const phg_logctx_t *log;
	tstate_t st;
	phg_pg_t pg;
	int pg_open;
	uv_timer_t timer;
	int timer_open;
	char *sql;
	int nparams;
	char **params;
	int in_flight;
	uint64_t sent_ns;
	uint64_t started_ms; /* of the baseline */
	struct {
		uint64_t at_ms;
		uint64_t us;
		int busy; /* a batch ran while it waited */
	} ring[RING];
	int busy;            /* a batch is in flight */
	uint64_t busy_seq;   /* batches sent so far */
	uint64_t sent_seq;   /* busy_seq when the probe in flight was sent */
	int sent_busy;
	size_t head, n;
	uint64_t baseline_us;
	size_t baseline_n;
	struct {
		uint64_t at_ms;
		uint64_t ms;
	} watch[WATCH_RING];
	size_t whead, wn;
	uint64_t watch_base_ms;
	size_t watch_base_n;
	uint64_t sleep_ms;
	uint64_t changed_ms;
	uint64_t running_ms; /* when the baseline ended */
	uint64_t watch_interval_ms; /* 0: no watch checks to wait for in the baseline */  /* the last change of pace: older probes show the old one */
	unsigned answered;
	phg_throttle_ready_cb ready_cb;
	void *ready_arg;
	int ready_done;
};

static uint64_t mono_ms(void)
{
	return uv_hrtime() / 1000000u;
}

/* ---- the pure parts ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t phg_percentile(uint64_t *v, size_t n, unsigned pct)
{
	size_t rank;

	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	rank = (n * pct + 99) / 100; /* nearest rank, 1-based */
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

uint64_t phg_budget_us(const phg_budget_t *b, uint64_t baseline_us, uint64_t floor_ms)
{
	uint64_t us;

	if (b->off)
		return UINT64_MAX;
	if (b->abs_us > 0)
		return b->abs_us;
	us = baseline_us * b->factor_milli / 1000;
	return us < floor_ms * 1000 ? floor_ms * 1000 : us;
}

void phg_throttle_next(int over, uint64_t sleep_ms, uint64_t max_sleep_ms, uint64_t *next_ms,
                       double *cap_factor)
{
	uint64_t s = sleep_ms;

	*cap_factor = 1.0;
	if (over > 0) {
		s = s ? s * 2 : SLEEP_START_MS;
		*cap_factor = 0.5;
	} else if (over < 0) {
		s = s / 2;
		if (s < SLEEP_MIN_MS)
			s = 0;
		*cap_factor = 1.5;
	}
	*next_ms = s > max_sleep_ms ? max_sleep_ms : s;
}

/* ---- probing ---- */

static void ready(phg_throttle_t *t, int status, const phg_err_t *err)
{
	if (t->ready_done)
		return;
	t->ready_done = 1;
	if (t->ready_cb != NULL)
		t->ready_cb(t, status, err, t->ready_arg);
}

static void push(phg_throttle_t *t, uint64_t us)
{
	t->ring[t->head].at_ms = mono_ms();
	t->ring[t->head].us = us;
	t->ring[t->head].busy = t->sent_busy || t->busy || t->sent_seq != t->busy_seq;
	t->head = (t->head + 1) % RING;
	if (t->n < RING)
		t->n++;
}

/* The samples of the last @ms (all when @ms is 0), none from before
 * @since_ms, and with @idle only those no batch overlapped, into @out;
 * their count. */
static size_t recent(const phg_throttle_t *t, uint64_t ms, uint64_t since_ms, int idle,
                     uint64_t *out)
{
	uint64_t now = mono_ms();
	size_t k = 0;

	for (size_t i = 0; i < t->n; i++) {
		size_t at = (t->head + RING - 1 - i) % RING;

		if ((ms > 0 && now - t->ring[at].at_ms > ms) || t->ring[at].at_ms < since_ms)
			break;
		if (!idle || !t->ring[at].busy)
			out[k++] = t->ring[at].us;
	}
	return k;
}

static void probe_fire(uv_timer_t *h);

static void baseline_end(phg_throttle_t *t)
{
	uint64_t v[RING], w[WATCH_RING];

	t->baseline_n = recent(t, 0, 0, 0, v);
	t->baseline_us = phg_percentile(v, t->baseline_n, 99);
	t->watch_base_n = t->wn;
	for (size_t i = 0; i < t->wn; i++)
		w[i] = t->watch[i].ms;
	t->watch_base_ms = phg_percentile(w, t->wn, 99);
	t->st = T_RUNNING;
	t->running_ms = mono_ms();
	uv_timer_start(&t->timer, probe_fire, t->cfg->interval_ms, t->cfg->interval_ms);
	ready(t, 0, NULL);
}

static void probe_cb(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	phg_throttle_t *t = arg;
	uint64_t us = (uv_hrtime() - t->sent_ns) / 1000u;

	(void)pg;
	(void)res;
	t->in_flight = 0;
	if (t->st == T_CLOSING)
		return;
	if (status == 0 && ++t->answered <= WARMUP)
		return;
	if (status != 0) {
		phg_err_t e;

		phg_err_clear(&e);
		if (t->st == T_BASELINE) {
			phg_err_set(&e, PHG_ESTEP, "the latency probe failed: %s",
			            err != NULL && err->msg[0] ? err->msg : "no answer");
			if (err != NULL)
				memcpy(e.sqlstate, err->sqlstate, sizeof(e.sqlstate));
			phg_err_detail(&e, "The probe: %s", t->sql);
			phg_err_hint(&e, "Fix `settings.throttle.probe`, or set `throttle: off` for a "
			                 "maintenance window.");
			t->st = T_BLIND;
			ready(t, status == PHG_ECONNECT ? PHG_ECONNECT : PHG_ESTEP, &e);
			return;
		}
		phg_log(PHG_LOG_WARN, t->log,
		        "the latency probe failed (%s): the backfill goes on at its present pace, "
		        "without the probe",
		        err != NULL && err->msg[0] ? err->msg : "no answer");
		t->st = T_BLIND;
		return;
	}
	push(t, us);
}

/* The baseline lasts `baseline`, or long enough for three watch probes
 * (at most 10 s). */
static uint64_t baseline_ms(const phg_throttle_t *t)
{
	uint64_t w = t->watch_interval_ms ? 3 * t->watch_interval_ms + 100 : 0;

	if (w > 10000)
		w = 10000;
	return w > t->cfg->baseline_ms ? w : t->cfg->baseline_ms;
}

static void probe_fire(uv_timer_t *h)
{
	phg_throttle_t *t = h->data;

	if (t->st == T_BASELINE && mono_ms() - t->started_ms >= baseline_ms(t) && t->n >= 5)
		baseline_end(t);
	if (t->in_flight || (t->st != T_BASELINE && t->st != T_RUNNING))
		return;
	t->sent_ns = uv_hrtime();
	t->sent_seq = t->busy_seq;
	t->sent_busy = t->busy;
	if (phg_pg_query(&t->pg, t->sql, t->nparams, (const char *const *)t->params, probe_cb, t) !=
	    0) {
		phg_err_t e;

		phg_err_clear(&e);
		phg_err_set(&e, PHG_ECONNECT, "the latency probe's connection is not usable");
		if (t->st == T_BASELINE) {
			t->st = T_BLIND;
			ready(t, PHG_ECONNECT, &e);
			return;
		}
		phg_log(PHG_LOG_WARN, t->log, "%s: the backfill goes on without the probe", e.msg);
		t->st = T_BLIND;
		return;
	}
	t->in_flight = 1;
}

static void connected(phg_pg_t *pg, int status, const phg_err_t *err)
{
	phg_throttle_t *t = pg->data;
	phg_err_t e;

	if (t->st == T_CLOSING)
		return;
	if (status != 0) {
		phg_err_clear(&e);
		phg_err_set(&e, PHG_ECONNECT, "the latency probe could not connect: %s",
		            err != NULL && err->msg[0] ? err->msg : "no answer");
		t->st = T_BLIND;
		ready(t, PHG_ECONNECT, &e);
		return;
	}
	t->st = T_BASELINE;
	t->started_ms = mono_ms();
	/* the baseline's p99 wants about a hundred probes: every 5 ms (a
	 * key lookup), then every `interval` */
	uv_timer_start(&t->timer, probe_fire, 0,
	               t->cfg->interval_ms < BASELINE_INTERVAL_MS ? t->cfg->interval_ms
	                                                          : BASELINE_INTERVAL_MS);
}

phg_throttle_t *phg_throttle_new(uv_loop_t *loop, const phg_throttle_cfg_t *cfg,
                                 const phg_logctx_t *log)
{
	phg_throttle_t *t = phg_calloc(1, sizeof(*t));

	t->loop = loop;
	t->cfg = cfg;
	t->log = log;
	t->st = T_CONNECTING;
	uv_timer_init(loop, &t->timer);
	t->timer.data = t;
	t->timer_open = 1;
	if (phg_pg_init(loop, &t->pg, "probe") == 0) {
		t->pg.data = t;
		t->pg_open = 1;
	}
	return t;
}

int phg_throttle_start(phg_throttle_t *t, const char *conninfo, uint64_t connect_timeout_ms,
                       const char *sql, int nparams, phg_throttle_ready_cb cb, void *arg,
                       phg_err_t *err)
{
	t->sql = phg_strdup(sql);
	t->nparams = nparams;
	t->params = nparams > 0 ? phg_calloc((size_t)nparams, sizeof(char *)) : NULL;
	t->ready_cb = cb;
	t->ready_arg = arg;
	if (!t->pg_open)
		return phg_err_set(err, PHG_EIO, "cannot prepare the latency probe's connection");
	return phg_pg_connect(&t->pg, conninfo, connect_timeout_ms, connected, err);
}

void phg_throttle_params(phg_throttle_t *t, char *const *v, size_t n)
{
	for (int i = 0; i < t->nparams; i++) {
		free(t->params[i]);
		t->params[i] = (size_t)i < n ? phg_strdup(v[i]) : NULL;
	}
}

void phg_throttle_busy(phg_throttle_t *t, int busy)
{
	if (t == NULL)
		return;
	if (busy)
		t->busy_seq++;
	t->busy = busy;
}

void phg_throttle_expect_watch(phg_throttle_t *t, uint64_t interval_ms)
{
	t->watch_interval_ms = interval_ms;
}

void phg_throttle_watch(phg_throttle_t *t, uint64_t latency_ms)
{
	if (t == NULL)
		return;
	t->watch[t->whead].at_ms = mono_ms();
	t->watch[t->whead].ms = latency_ms;
	t->whead = (t->whead + 1) % WATCH_RING;
	if (t->wn < WATCH_RING)
		t->wn++;
}

/* The watch checks' p99 of the last WATCH_WINDOW_MS; 0 when none. */
static uint64_t watch_recent(const phg_throttle_t *t)
{
	uint64_t v[WATCH_RING], now = mono_ms();
	size_t k = 0;

	for (size_t i = 0; i < t->wn; i++) {
		size_t at = (t->whead + WATCH_RING - 1 - i) % WATCH_RING;

		if (now - t->watch[at].at_ms > WATCH_WINDOW_MS || t->watch[at].at_ms < t->changed_ms)
			break;
		v[k++] = t->watch[at].ms;
	}
	return phg_percentile(v, k, 99);
}

/* @d from scratch: the p99 of the probes of the last @ms (0: all) since
 * @since_ms, the baseline and the budget; the number of samples. */
static size_t window(phg_throttle_t *t, uint64_t ms, uint64_t since_ms, phg_throttle_decision_t *d)
{
	uint64_t v[RING + 1];
	size_t k = recent(t, ms, since_ms, 0, v);

	memset(d, 0, sizeof(*d));
	/* a probe that has not answered yet is at least that slow */
	if (t->in_flight)
		v[k++] = (uv_hrtime() - t->sent_ns) / 1000u;
	d->samples = (unsigned)k;
	d->p99_us = phg_percentile(v, k, 99);
	d->baseline_us = t->baseline_us;
	d->budget_us = phg_budget_us(&t->cfg->budget, t->baseline_us, t->cfg->floor_ms);
	return k;
}

void phg_throttle_decide(phg_throttle_t *t, phg_throttle_decision_t *d)
{
	uint64_t v[RING + 1];
	size_t k = window(t, WINDOW_MS, t->changed_ms, d), ki;
	uint64_t prev = t->sleep_ms;

	/* the probes no batch overlapped: slow too, it is not the backfill */
	ki = recent(t, IDLE_WINDOW_MS, 0, 1, v);
	d->idle_p99_us = phg_percentile(v, ki, 99);
	if (t->st == T_RUNNING && k >= MIN_SAMPLES) {
		if (d->p99_us > d->budget_us)
			d->over = 1;
		else if (d->p99_us * 5 < d->budget_us * 4)
			d->over = -1; /* under 80% of it */
		if (d->over > 0 && ki >= MIN_IDLE && d->idle_p99_us > d->budget_us) {
			d->over = 0;
			d->not_ours = 1;
		}
	}
	/* the watch checks, against their own latency during the baseline */
	if (t->watch_base_n >= 3 && k >= MIN_SAMPLES) {
		uint64_t factor = t->cfg->budget.factor_milli ? t->cfg->budget.factor_milli : 2000;
		uint64_t wb = t->watch_base_ms * factor / 1000;

		d->watch_ms = watch_recent(t);
		d->watch_budget_ms = wb < t->watch_base_ms + 5 ? t->watch_base_ms + 5 : wb;
		if (d->watch_ms > d->watch_budget_ms)
			d->over = 1;
		else if (d->over < 0 && d->watch_ms * 5 >= d->watch_budget_ms * 4)
			d->over = 0;
	}
	phg_throttle_next(d->over, t->sleep_ms, t->cfg->max_sleep_ms, &t->sleep_ms, &d->cap_factor);
	if (d->over != 0)
		t->changed_ms = mono_ms(); /* the next decision sees the new pace only */
	d->sleep_ms = t->sleep_ms;
	d->changed = (prev == 0) != (t->sleep_ms == 0) || t->sleep_ms >= prev * 2 + 1 ||
	             (prev > 0 && t->sleep_ms * 2 < prev);
}

void phg_throttle_observe(phg_throttle_t *t, phg_throttle_decision_t *d)
{
	size_t k = window(t, 0, t->running_ms, d);

	d->over = k > 0 && d->p99_us > d->budget_us;
}

/* ---- closing ---- */

static void maybe_free(phg_throttle_t *t)
{
	if (t->pg_open || t->timer_open)
		return;
	for (int i = 0; i < t->nparams; i++)
		free(t->params[i]);
	free(t->params);
	free(t->sql);
	free(t);
}

static void pg_closed(phg_pg_t *pg)
{
	phg_throttle_t *t = pg->data;

	t->pg_open = 0;
	maybe_free(t);
}

static void timer_closed(uv_handle_t *h)
{
	phg_throttle_t *t = h->data;

	t->timer_open = 0;
	maybe_free(t);
}

void phg_throttle_free(phg_throttle_t *t)
{
	if (t == NULL || t->st == T_CLOSING)
		return;
	t->st = T_CLOSING;
	uv_timer_stop(&t->timer);
	uv_close((uv_handle_t *)&t->timer, timer_closed);
	if (t->pg_open)
		phg_pg_close(&t->pg, pg_closed);
	else
		maybe_free(t);
}
