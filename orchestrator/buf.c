/*
 * buf.c - capped growable buffer and allocation helpers.
 */
#include "buf.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void phg_buf_init(phg_buf_t *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

void phg_buf_free(phg_buf_t *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void phg_buf_reset(phg_buf_t *b)
{
	b->len = 0;
	b->err = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

static int buf_fail(phg_buf_t *b, int rc)
{
	if (b->err == 0)
		b->err = rc;
	return b->err;
}

static int buf_reserve(phg_buf_t *b, size_t extra)
{
	size_t need, ncap;
	char *p;

	if (b->err != 0)
		return b->err;
	if (extra > b->max || b->len > b->max - extra)
		return buf_fail(b, PHG_ETOOBIG);
	need = b->len + extra + 1;
	if (need <= b->cap)
		return 0;
	ncap = b->cap ? b->cap : 64;
	while (ncap < need)
		ncap *= 2;
	if (ncap > b->max + 1)
		ncap = b->max + 1;
	p = realloc(b->data, ncap);
	if (p == NULL)
		return buf_fail(b, PHG_ENOMEM);
	b->data = p;
	b->cap = ncap;
	return 0;
}

int phg_buf_add(phg_buf_t *b, const void *p, size_t n)
{
	int rc = buf_reserve(b, n);

	if (rc != 0)
		return rc;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

int phg_buf_adds(phg_buf_t *b, const char *s)
{
	return phg_buf_add(b, s, strlen(s));
}

int phg_buf_vprintf(phg_buf_t *b, const char *fmt, va_list ap)
{
	va_list cp;
	int n, rc;

	va_copy(cp, ap);
	n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0)
		return buf_fail(b, PHG_EINVAL);
	rc = buf_reserve(b, (size_t)n);
	if (rc != 0)
		return rc;
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
	return 0;
}

int phg_buf_printf(phg_buf_t *b, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = phg_buf_vprintf(b, fmt, ap);
	va_end(ap);
	return rc;
}

int phg_buf_error(const phg_buf_t *b)
{
	return b->err;
}

char *phg_buf_take(phg_buf_t *b)
{
	char *s = b->data;

	if (s == NULL)
		s = phg_strdup("");
	b->data = NULL;
	b->len = b->cap = 0;
	return s;
}

static void oom(void)
{
	fputs("phasegate: out of memory\n", stderr);
	abort();
}

char *phg_strdup(const char *s)
{
	char *d;

	if (s == NULL)
		return NULL;
	d = strdup(s);
	if (d == NULL)
		oom();
	return d;
}

char *phg_asprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	char *s;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	s = malloc((size_t)n + 1);
	if (s == NULL)
		oom();
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

void *phg_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		oom();
	return p;
}

void *phg_realloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);

	if (q == NULL)
		oom();
	return q;
}
