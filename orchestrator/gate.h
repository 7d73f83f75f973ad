/*
 * gate.h - health-check gates (SPEC section 2 "Gates").
 *
 * VERIFY: every named check is probed at its interval; the gate passes when
 *   every check has `successes` consecutive passes and has been observed for
 *   at least `soak`; it fails as soon as one check reaches `failures`
 *   consecutive failures.
 * WATCH: probes the same way until stopped; it fails when a check reaches
 *   `failures` consecutive failures (it never "passes").
 * A probe passes when a response arrived within `timeout`, its status is in
 * expect_status (default any 2xx), its body contains expect_body, every
 * expect_json path holds the expected scalar (parsed with jansson), and the
 * latency is at most max_latency (when set).  A connection refused, a
 * timeout, a hang, a TLS error are failures with the reason given.
 *
 * The caller allocates the gate and keeps it until the close callback.
 */
#ifndef PHG_GATE_H
#define PHG_GATE_H

#include <stdint.h>

#include <uv.h>

#include "http.h"
#include "log.h"
#include "plan.h"

typedef struct phg_gate_s phg_gate_t;

typedef enum phg_gate_mode_e { PHG_GATE_VERIFY, PHG_GATE_WATCH } phg_gate_mode_t;

/* One probe's outcome, for the log and the event store. */
typedef struct phg_probe_s {
	const char *check;     /* check name */
	int ok;
	long status;           /* 0 without a response */
	uint64_t latency_ms;
	const char *reason;    /* why it failed ("" when ok) */
	uint64_t successes;    /* consecutive, after this probe */
	uint64_t failures;     /* consecutive, after this probe */
	uint64_t soak_left_ms; /* VERIFY: how long the soak still runs (0: over) */
} phg_probe_t;

/* status 0: passed (VERIFY only); PHG_EGATE: failed (err says which check
 * and why).  Called once; the gate has stopped probing by then (its timers
 * are stopped, its requests cancelled); call phg_gate_stop to release it. */
typedef void (*phg_gate_done_cb)(phg_gate_t *g, int status, const phg_err_t *err);
typedef void (*phg_gate_probe_cb)(phg_gate_t *g, const phg_probe_t *p);

struct phg_gate_s {
	void *data;                 /* for the owner */
	phg_gate_probe_cb on_probe; /* may be NULL */
	const phg_logctx_t *logctx; /* context of the gate's log lines; may be NULL */
	/* private */
	void *priv;
};

/* Start probing @checks (pointers into the plan, which outlives the gate;
 * the array itself is copied).  Zero the gate (or at least set priv NULL)
 * before the first start; a gate can be started again after its close
 * callback ran.  Each check is first probed on the next loop iteration, then
 * every interval_ms from the start of its previous probe (never two probes of
 * one check at a time).  0, or PHG_EINVAL (err says why, e.g. a header's
 * ${VAR} that is not set; cb not called).  An empty list: VERIFY passes at
 * once (asynchronously), WATCH never fails.
 * Callbacks: on_probe after every probe, then @cb at most once; both only
 * from the loop.  Either may call phg_gate_stop. */
int phg_gate_start(phg_gate_t *g, uv_loop_t *loop, phg_http_t *http, phg_gate_mode_t mode,
                   const phg_check_t *const *checks, size_t nchecks, phg_gate_done_cb cb,
                   phg_err_t *err);

/* Stop probing (no callback after this): in-flight requests are cancelled
 * and the timers closed; @closed (may be NULL) runs when every handle and
 * request of the gate is released, from the loop.  May be called from the
 * gate's own callbacks.  Calling it again before @closed ran only replaces
 * @closed (when non-NULL); on a gate that is not running it does nothing. */
void phg_gate_stop(phg_gate_t *g, void (*closed)(phg_gate_t *g));

/* Evaluate one response against a check (exposed for unit tests).
 * Returns 1 when the probe passes, else 0 with the reason in @reason. */
int phg_gate_judge(const phg_check_t *c, const phg_http_result_t *r, char *reason,
                   size_t reason_len);

#endif /* PHG_GATE_H */
