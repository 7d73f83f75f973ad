/*
 * pgq.h - a FIFO of queries on one phg_pg_t, for the control connection:
 * event inserts, blocker lookups and cancels come from several places at
 * once, while a phg_pg_t runs one query at a time.
 *
 * Parameters are copied.  A queued callback is called exactly once: with
 * the result, or with PHG_ECANCELED when the queue is flushed (on close) or
 * PHG_ECONNECT when the connection broke -- never from inside the
 * phg_pgq_query() that queued it (a connection found unusable there is
 * flushed on the next loop turn).  The owner calls phg_pgq_discard() before
 * the loop ends (it closes the queue's timer).
 */
#ifndef PHG_PGQ_H
#define PHG_PGQ_H

#include <uv.h>

#include "pg.h"

typedef struct phg_pgq_item_s phg_pgq_item_t;

typedef struct phg_pgq_s {
	phg_pg_t *pg;
	phg_pgq_item_t *head, *tail;
	int running;
	uv_timer_t defer;  /* a flush found by phg_pgq_query runs on a later turn */
	int defer_open;
} phg_pgq_t;

void phg_pgq_init(phg_pgq_t *q, phg_pg_t *pg);

/* Queue @sql; @cb may be NULL (fire and forget: errors are logged at debug
 * level).  Returns 0. */
int phg_pgq_query(phg_pgq_t *q, const char *sql, int nparams, const char *const *params,
                  phg_pg_result_cb cb, void *arg);

/* Number of queries queued or running. */
size_t phg_pgq_pending(const phg_pgq_t *q);

/* Drop every queued query (their callbacks get PHG_ECANCELED, res NULL). */
void phg_pgq_flush(phg_pgq_t *q);

/* After phg_pg_close() (which never calls a running query's callback):
 * flush, and free the item that was running without calling it. */
void phg_pgq_discard(phg_pgq_t *q);

#endif /* PHG_PGQ_H */
