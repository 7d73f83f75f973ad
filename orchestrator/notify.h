/*
 * notify.h - webhooks told of a run's turning points (the plan's `notify:`).
 *
 * A notification is sent on the run's loop with an HTTP client of its own,
 * retried a bounded number of times, and never blocks or fails the run: a
 * notification that cannot be sent is logged as a warning.  The body is
 * what a Slack incoming webhook takes (`text` plus `attachments` with
 * fields), with the event itself attached as `phasegate`.
 */
#ifndef PHG_NOTIFY_H
#define PHG_NOTIFY_H

#include <uv.h>

#include "log.h"
#include "plan.h"

typedef struct phg_notifier_s phg_notifier_t;

/* NULL when the plan has no `notify:` (or the client cannot start). */
phg_notifier_t *phg_notify_new(uv_loop_t *loop, const phg_plan_t *plan);

/* The turning point an event is, or NULL: start, gate_failed, rollback,
 * paused, completed, failed.  @data: the event's data (JSON text, may be
 * NULL); @run_failed: the run is recorded failed (a phase rolled back then
 * is the automatic rollback's; a rollback command's is told once, at its
 * end). */
const char *phg_notify_point(const char *kind, const char *data, int run_failed);

/* Send @point to every webhook that wants it; @event (the stream's JSON
 * object of it) is borrowed. */
struct json_t;
void phg_notify_send(phg_notifier_t *n, const char *point, const char *env,
                     const char *target, struct json_t *event);

/* Let the notifications in flight finish (each within its timeout and
 * retries), then free everything; @n may be NULL. */
void phg_notify_close(phg_notifier_t *n);

#endif /* PHG_NOTIFY_H */
