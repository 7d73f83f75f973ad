/*
 * pgq.c - a FIFO of queries on one connection.
 */
#include "pgq.h"

#include <stdlib.h>

#include "buf.h"
#include "log.h"

struct phg_pgq_item_s {
	phg_pgq_item_t *next;
	char *sql;
	int nparams;
	char **params;
	phg_pg_result_cb cb;
	void *arg;
};

static void pgq_pump(phg_pgq_t *q);

void phg_pgq_init(phg_pgq_t *q, phg_pg_t *pg)
{
	q->pg = pg;
	q->head = q->tail = NULL;
	q->running = 0;
	q->defer_open = 0;
}

static void pgq_defer_fire(uv_timer_t *t)
{
	phg_pgq_flush(t->data);
}

/* Flush on the next loop turn: the caller may be the one that queued. */
static void pgq_defer_flush(phg_pgq_t *q)
{
	if (!q->defer_open) {
		uv_timer_init(q->pg->loop, &q->defer);
		q->defer.data = q;
		q->defer_open = 1;
	}
	uv_timer_start(&q->defer, pgq_defer_fire, 0, 0);
}

static void item_free(phg_pgq_item_t *it)
{
	for (int i = 0; i < it->nparams; i++)
		free(it->params[i]);
	free(it->params);
	free(it->sql);
	free(it);
}

static void pgq_done(phg_pg_t *pg, int status, PGresult *res, const phg_err_t *err, void *arg)
{
	phg_pgq_t *q = arg;
	phg_pgq_item_t *it = q->head;

	q->head = it->next;
	if (q->head == NULL)
		q->tail = NULL;
	q->running = 0;
	if (it->cb != NULL) {
		it->cb(pg, status, res, err, it->arg);
	} else if (status != 0) {
		phg_logctx_t ctx = {.conn = pg->name, .pid = pg->backend_pid};

		phg_log(PHG_LOG_DEBUG, &ctx, "background query failed: %s",
		        err ? err->msg : phg_strerror(status));
	}
	item_free(it);
	if (status == PHG_ECONNECT)
		phg_pgq_flush(q);
	else
		pgq_pump(q);
}

static void pgq_pump(phg_pgq_t *q)
{
	phg_pgq_item_t *it = q->head;

	if (q->running || it == NULL)
		return;
	if (q->pg->state != PHG_PG_READY) {
		if (q->pg->state != PHG_PG_BUSY)
			pgq_defer_flush(q);
		return;
	}
	q->running = 1;
	if (phg_pg_query(q->pg, it->sql, it->nparams, (const char *const *)it->params, pgq_done,
	                 q) != 0) {
		q->running = 0;
		pgq_defer_flush(q);
	}
}

int phg_pgq_query(phg_pgq_t *q, const char *sql, int nparams, const char *const *params,
                  phg_pg_result_cb cb, void *arg)
{
	phg_pgq_item_t *it = phg_calloc(1, sizeof(*it));

	it->sql = phg_strdup(sql);
	it->nparams = nparams;
	if (nparams > 0) {
		it->params = phg_calloc((size_t)nparams, sizeof(char *));
		for (int i = 0; i < nparams; i++)
			it->params[i] = phg_strdup(params[i]);
	}
	it->cb = cb;
	it->arg = arg;
	if (q->tail != NULL)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	pgq_pump(q);
	return 0;
}

size_t phg_pgq_pending(const phg_pgq_t *q)
{
	size_t n = 0;

	for (const phg_pgq_item_t *it = q->head; it != NULL; it = it->next)
		n++;
	return n;
}

void phg_pgq_flush(phg_pgq_t *q)
{
	/* a running item stays: its completion arrives (or the close drops it) */
	phg_pgq_item_t *it = q->running ? q->head->next : q->head;

	if (q->running)
		q->head->next = NULL, q->tail = q->head;
	else
		q->head = q->tail = NULL;
	while (it != NULL) {
		phg_pgq_item_t *next = it->next;

		if (it->cb != NULL)
			it->cb(q->pg, PHG_ECANCELED, NULL, NULL, it->arg);
		item_free(it);
		it = next;
	}
}

void phg_pgq_discard(phg_pgq_t *q)
{
	if (q->defer_open) {
		uv_close((uv_handle_t *)&q->defer, NULL);
		q->defer_open = 0;
	}
	phg_pgq_flush(q);
	if (q->running && q->head != NULL) {
		item_free(q->head);
		q->head = q->tail = NULL;
		q->running = 0;
	}
}
