/*
 * buf.h - a growable byte buffer with a hard cap.
 *
 * Every growable buffer in phasegate has a maximum size; going past it is a
 * distinct error (PHG_ETOOBIG), never silent truncation (curl's dynbuf).
 * The contents are always NUL-terminated when data != NULL.
 * The owner calls phg_buf_free(); phg_buf_take() hands the string over.
 */
#ifndef PHG_BUF_H
#define PHG_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct phg_buf_s {
	char *data;
	size_t len;
	size_t cap;
	size_t max; /* hard cap on len */
	int err;    /* sticky: the first failed append (PHG_ETOOBIG, PHG_ENOMEM) */
} phg_buf_t;

void phg_buf_init(phg_buf_t *b, size_t max);
void phg_buf_free(phg_buf_t *b);
void phg_buf_reset(phg_buf_t *b); /* len = 0, keeps memory */

/* 0, PHG_ENOMEM or PHG_ETOOBIG (the buffer is left unchanged then).  The
 * error is sticky: once an append failed, every later one fails with the
 * same code and changes nothing, so a statement built in several appends is
 * never sent with a piece missing; check phg_buf_error() before using it. */
int phg_buf_add(phg_buf_t *b, const void *p, size_t n);
int phg_buf_adds(phg_buf_t *b, const char *s);
int phg_buf_printf(phg_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int phg_buf_vprintf(phg_buf_t *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* The caller owns the returned string (free()); the buffer is emptied.
 * Returns "" (allocated) for an empty buffer, NULL on OOM. */
char *phg_buf_take(phg_buf_t *b);

/* The first append that failed (PHG_ETOOBIG, PHG_ENOMEM), or 0.  Cleared by
 * phg_buf_init() and phg_buf_reset(). */
int phg_buf_error(const phg_buf_t *b);

/* Small helpers used everywhere. Both abort() on out-of-memory: an
 * orchestrator that cannot allocate a few bytes cannot save its state
 * either, and PostgreSQL itself treats this the same way (palloc). */
char *phg_strdup(const char *s);       /* NULL -> NULL */
char *phg_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *phg_calloc(size_t n, size_t size);
void *phg_realloc(void *p, size_t size);

#endif /* PHG_BUF_H */
