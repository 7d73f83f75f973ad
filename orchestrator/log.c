/*
 * log.c - context-prefixed log lines on stderr.
 */
#include "log.h"

#include <stdlib.h>
#include <uv.h>

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static phg_log_level_t log_level = PHG_LOG_INFO;

static const char *const level_names[] = {"trace", "debug", "info", "warning", "error"};
static int log_iso = -1; /* ISO time stamps: stderr is not a terminal */

void phg_log_set_level(phg_log_level_t level)
{
	log_level = level;
}

phg_log_level_t phg_log_get_level(void)
{
	return log_level;
}

static void log_prefix(FILE *f, phg_log_level_t level, const phg_logctx_t *ctx)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (log_iso < 0)
		log_iso = !isatty(fileno(f));
	if (log_iso) {
		long off;

		localtime_r(&ts.tv_sec, &tm);
		off = tm.tm_gmtoff / 60;
		fprintf(f, "%04d-%02d-%02dT%02d:%02d:%02d.%03ld%c%02ld:%02ld phasegate",
		        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		        ts.tv_nsec / 1000000, off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
	} else {
		gmtime_r(&ts.tv_sec, &tm);
		fprintf(f, "%02d:%02d:%02d phasegate", tm.tm_hour, tm.tm_min, tm.tm_sec);
	}
	if (ctx != NULL && ctx->plan != NULL) {
		fprintf(f, "[%s", ctx->plan);
		if (ctx->phase != NULL)
			fprintf(f, "/%s", ctx->phase);
		if (ctx->step > 0)
			fprintf(f, "/%ld", ctx->step);
		if (ctx->step_kind != NULL)
			fprintf(f, " %s", ctx->step_kind);
		fputc(']', f);
	}
	if (ctx != NULL && ctx->conn != NULL) {
		fprintf(f, "[%s", ctx->conn);
		if (ctx->pid > 0)
			fprintf(f, " pid=%ld", ctx->pid);
		fputc(']', f);
	} else if (ctx != NULL && ctx->pid > 0) {
		fprintf(f, "[pid=%ld]", ctx->pid);
	}
	if (level != PHG_LOG_INFO)
		fprintf(f, " %s:", level_names[level]);
	fputc(' ', f);
}

void phg_vlog(phg_log_level_t level, const phg_logctx_t *ctx, const char *fmt,
              va_list ap)
{
	if (level < log_level || level >= PHG_LOG_QUIET)
		return;
	log_prefix(stderr, level, ctx);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	fflush(stderr);
}

void phg_log(phg_log_level_t level, const phg_logctx_t *ctx, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	phg_vlog(level, ctx, fmt, ap);
	va_end(ap);
}

void phg_log_err(phg_log_level_t level, const phg_logctx_t *ctx,
                 const phg_err_t *err)
{
	if (err == NULL || err->code == 0)
		return;
	if (err->sqlstate[0] != '\0')
		phg_log(level, ctx, "%s (SQLSTATE %s)", err->msg, err->sqlstate);
	else
		phg_log(level, ctx, "%s", err->msg);
	if (level < log_level)
		return;
	if (err->detail[0] != '\0')
		fprintf(stderr, "  DETAIL: %s\n", err->detail);
	if (err->hint[0] != '\0')
		fprintf(stderr, "  HINT: %s\n", err->hint);
}

void phg_whoami(char *user, size_t un, char *host, size_t hn)
{
	const char *u = getenv("USER");
	size_t n = hn;
	uv_passwd_t pw;

	if (u == NULL || *u == '\0')
		u = getenv("LOGNAME");
	if ((u == NULL || *u == '\0') && uv_os_get_passwd(&pw) == 0) {
		snprintf(user, un, "%s", pw.username);
		uv_os_free_passwd(&pw);
	} else {
		snprintf(user, un, "%s", u ? u : "?");
	}
	if (uv_os_gethostname(host, &n) != 0)
		snprintf(host, hn, "?");
}
