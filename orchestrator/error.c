/*
 * error.c - names and messages of PHG_E* codes; the first-cause-wins
 * error detail buffer.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *phg_err_name(int code)
{
	switch (code) {
	case 0:
		return "OK";
#define PHG_XX_NAME(name, msg)                                                \
	case PHG_E##name:                                                        \
		return "PHG_E" #name;
		PHG_ERRNO_MAP(PHG_XX_NAME)
#undef PHG_XX_NAME
	default:
		return "PHG_E?";
	}
}

const char *phg_strerror(int code)
{
	switch (code) {
	case 0:
		return "success";
#define PHG_XX_MSG(name, msg)                                                 \
	case PHG_E##name:                                                        \
		return msg;
		PHG_ERRNO_MAP(PHG_XX_MSG)
#undef PHG_XX_MSG
	default:
		return "unknown error";
	}
}

void phg_err_clear(phg_err_t *e)
{
	if (e != NULL)
		memset(e, 0, sizeof(*e));
}

int phg_err_set(phg_err_t *e, int code, const char *fmt, ...)
{
	va_list ap;

	if (e == NULL || e->code != 0)
		return code;
	memset(e, 0, sizeof(*e));
	e->code = code;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return code;
}

void phg_err_detail(phg_err_t *e, const char *fmt, ...)
{
	va_list ap;

	if (e == NULL || e->detail[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(e->detail, sizeof(e->detail), fmt, ap);
	va_end(ap);
}

void phg_err_hint(phg_err_t *e, const char *fmt, ...)
{
	va_list ap;

	if (e == NULL || e->hint[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(e->hint, sizeof(e->hint), fmt, ap);
	va_end(ap);
}

void phg_err_copy(phg_err_t *dst, const phg_err_t *src)
{
	if (dst == NULL || src == NULL || dst->code != 0 || src->code == 0)
		return;
	memcpy(dst, src, sizeof(*dst));
}
