/*
 * log.c - context-prefixed log lines on stderr.
 */
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <jansson.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static phg_log_level_t log_level = PHG_LOG_INFO;

static const char *const level_names[] = {"trace", "debug", "info", "warning", "error"};
static int log_iso = -1; /* ISO time stamps: stderr is not a terminal */
static int log_json;      /* --log-format json */
static int log_tty = -1;  /* stderr is a terminal that can rewrite a line */
static int log_colour = -1;
static char status_line[512]; /* the live line shown now ("" none) */
static phg_tone_t status_tone;
#define SECRETS_MAX 64
static char *secrets[SECRETS_MAX];
static size_t nsecrets;

void phg_secret_add(const char *value)
{
	if (value == NULL || strlen(value) < PHG_SECRET_MIN)
		return;
	for (size_t i = 0; i < nsecrets; i++)
		if (strcmp(secrets[i], value) == 0)
			return;
	if (nsecrets == SECRETS_MAX) {
		/* keep the newest: the oldest is dropped */
		free(secrets[0]);
		memmove(secrets, secrets + 1, (SECRETS_MAX - 1) * sizeof(secrets[0]));
		nsecrets--;
	}
	secrets[nsecrets] = strdup(value);
	if (secrets[nsecrets] != NULL)
		nsecrets++;
}

size_t phg_mask(char *s)
{
	size_t n = 0;

	if (s == NULL)
		return 0;
	for (size_t i = 0; i < nsecrets; i++) {
		size_t len = strlen(secrets[i]);
		char *at;

		while ((at = strstr(s, secrets[i])) != NULL) {
			memcpy(at, "***", 3);
			memmove(at + 3, at + len, strlen(at + len) + 1);
			n++;
		}
	}
	return n;
}

char *phg_masked(const char *s)
{
	char *c;

	if (s == NULL)
		return NULL;
	c = strdup(s);
	if (c != NULL)
		phg_mask(c);
	return c;
}

/* @fmt formatted into @msg, every secret masked */
static void format_masked(char *msg, size_t n, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void format_masked(char *msg, size_t n, const char *fmt, va_list ap)
{
	vsnprintf(msg, n, fmt, ap);
	phg_mask(msg);
}

static struct {
	char plan[72];
	char checksum[80];
	long long run_id;
	char env[64];
} log_run;

void phg_log_set_json(int on)
{
	log_json = on;
}

static void tty_probe(void)
{
	const char *term = getenv("TERM"), *nc = getenv("NO_COLOR");

	if (log_tty >= 0)
		return;
	log_tty = isatty(STDERR_FILENO) && term != NULL && strcmp(term, "dumb") != 0;
	log_colour = log_tty && (nc == NULL || nc[0] == '\0');
}

int phg_log_live(void)
{
	tty_probe();
	return log_tty && !log_json;
}

static const char *tone_code(phg_tone_t t)
{
	return t == PHG_TONE_OK ? "\033[32m" : t == PHG_TONE_WARN ? "\033[33m"
	       : t == PHG_TONE_FAIL ? "\033[31m" : "\033[36m";
}

static void status_draw(void)
{
	if (status_line[0] == '\0')
		return;
	fprintf(stderr, "\r\033[K%s%s%s", log_colour ? tone_code(status_tone) : "", status_line,
	        log_colour ? "\033[0m" : "");
	fflush(stderr);
}

static void status_erase(void)
{
	if (status_line[0] != '\0') {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

void phg_log_status(phg_tone_t tone, const char *fmt, ...)
{
	va_list ap;
	int cols = 0;
	const char *c = getenv("COLUMNS");

	if (!phg_log_live())
		return;
	va_start(ap, fmt);
	vsnprintf(status_line, sizeof(status_line), fmt, ap);
	va_end(ap);
	/* never wider than the terminal: a wrapped line cannot be rewritten */
	if (c != NULL) {
		char *end;
		long v = strtol(c, &end, 10);

		if (end != c && *end == '\0' && v > 0 && v < 10000)
			cols = (int)v;
	}
	if (cols <= 0) {
		struct winsize ws;

		cols = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 100;
	}
	if (cols > 20 && strlen(status_line) >= (size_t)cols)
		status_line[cols - 1] = '\0';
	status_tone = tone;
	status_draw();
}

void phg_log_status_clear(void)
{
	status_erase();
	status_line[0] = '\0';
}

int phg_log_is_json(void)
{
	return log_json;
}

void phg_log_set_run(const char *plan, const char *checksum, long long run_id, const char *env)
{
	snprintf(log_run.plan, sizeof(log_run.plan), "%s", plan ? plan : "");
	snprintf(log_run.checksum, sizeof(log_run.checksum), "%s", checksum ? checksum : "");
	log_run.run_id = run_id;
	snprintf(log_run.env, sizeof(log_run.env), "%s", env ? env : "");
}

/* ISO 8601 with milliseconds and the UTC offset */
static void iso_now(char *out, size_t n)
{
	struct timespec ts;
	struct tm tm;
	long off;

	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	off = tm.tm_gmtoff / 60;
	snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03ld%c%02ld:%02ld", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
	         off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
}

static json_t *str_or_null(const char *s)
{
	return s != NULL && s[0] != '\0' ? json_string(s) : json_null();
}

/* The common part of every JSON line: when, what, and about which run. */
static json_t *json_line(const char *type, const char *level, const phg_logctx_t *ctx)
{
	char ts[128];
	json_t *o = json_object();

	iso_now(ts, sizeof(ts));
	json_object_set_new(o, "ts", json_string(ts));
	json_object_set_new(o, "type", json_string(type));
	if (level != NULL)
		json_object_set_new(o, "level", json_string(level));
	json_object_set_new(o, "plan", str_or_null(ctx && ctx->plan ? ctx->plan : log_run.plan));
	json_object_set_new(o, "checksum", str_or_null(log_run.checksum));
	json_object_set_new(o, "run_id", log_run.run_id > 0 ? json_integer(log_run.run_id)
	                                                    : json_null());
	json_object_set_new(o, "env", str_or_null(log_run.env));
	json_object_set_new(o, "phase", str_or_null(ctx ? ctx->phase : NULL));
	json_object_set_new(o, "step", ctx && ctx->step > 0 ? json_integer(ctx->step) : json_null());
	if (ctx != NULL && ctx->step_kind != NULL)
		json_object_set_new(o, "step_kind", json_string(ctx->step_kind));
	if (ctx != NULL && ctx->conn != NULL)
		json_object_set_new(o, "conn", json_string(ctx->conn));
	if (ctx != NULL && ctx->pid > 0)
		json_object_set_new(o, "pid", json_integer(ctx->pid));
	return o;
}

static void json_emit(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII |
	                            JSON_REAL_PRECISION(6));

	if (s != NULL) {
		fputs(s, stderr);
		fputc('\n', stderr);
		fflush(stderr);
		free(s);
	}
	json_decref(o);
}

json_t *phg_log_event_json(const phg_logctx_t *ctx, const char *kind, const char *message,
                           const char *data)
{
	json_t *o, *d = NULL;

	/* the engine masked them (phg_eng_event): one place for every sink */
	o = json_line("event", NULL, ctx);
	json_object_set_new(o, "kind", json_string(kind));
	json_object_set_new(o, "message", json_string(message ? message : ""));
	if (data != NULL) {
		json_error_t jerr;

		d = json_loads(data, JSON_DECODE_ANY, &jerr);
	}
	json_object_set_new(o, "data", d != NULL ? d : json_null());
	return o;
}

void phg_log_event(const phg_logctx_t *ctx, const char *kind, const char *message,
                   const char *data)
{
	if (log_json)
		json_emit(phg_log_event_json(ctx, kind, message, data));
}

void phg_log_diagnostic(int warn, const char *file, int line, int col, const char *msg)
{
	json_t *o;

	if (!log_json || (warn ? PHG_LOG_WARN : PHG_LOG_ERROR) < log_level)
		return;
	o = json_line("log", warn ? "warning" : "error", NULL);
	if (line > 0)
		json_object_set_new(o, "message", json_sprintf("%s:%d:%d: %s", file, line, col, msg));
	else
		json_object_set_new(o, "message", json_sprintf("%s: %s", file, msg));
	json_object_set_new(o, "file", json_string(file));
	json_object_set_new(o, "line", line > 0 ? json_integer(line) : json_null());
	json_object_set_new(o, "col", line > 0 ? json_integer(col) : json_null());
	json_emit(o);
}

void phg_log_exit(int code)
{
	static const struct {
		int code;
		const char *outcome;
	} outcomes[] = {
	    {0, "success"},      {1, "runtime_error"},   {2, "usage_error"},
	    {3, "rolled_back"},  {4, "rollback_failed"}, {5, "locked"},
	    {6, "promotion_refused"}, {130, "interrupted"},
	};
	const char *what = "unknown";
	json_t *o, *d;

	if (!log_json)
		return;
	for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
		if (outcomes[i].code == code)
			what = outcomes[i].outcome;
	o = json_line("event", NULL, NULL);
	json_object_set_new(o, "kind", json_string("exit"));
	json_object_set_new(o, "message", json_string(what));
	d = json_object();
	json_object_set_new(d, "code", json_integer(code));
	json_object_set_new(d, "outcome", json_string(what));
	json_object_set_new(o, "data", d);
	json_emit(o);
}

void phg_log_plain(phg_log_level_t level, const char *fmt, ...)
{
	va_list ap;
	char msg[4096];

	va_start(ap, fmt);
	format_masked(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_json) {
		phg_log(level, NULL, "%s", msg);
		return;
	}
	fprintf(stderr, "phasegate: %s\n", msg);
}

void phg_log_note(const char *tag, const char *fmt, ...)
{
	va_list ap;
	char msg[4096];

	va_start(ap, fmt);
	format_masked(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_json) {
		json_t *o = json_line("log", strcmp(tag, "HINT") == 0 ? "hint" : "detail", NULL);

		json_object_set_new(o, "message", json_string(msg));
		json_emit(o);
		return;
	}
	status_erase();
	fprintf(stderr, "  %s: %s\n", tag, msg);
	status_draw();
}

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
		char iso[128];

		iso_now(iso, sizeof(iso));
		fprintf(f, "%s phasegate", iso);
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
	if (level != PHG_LOG_INFO) {
		tty_probe();
		if (log_colour && level >= PHG_LOG_WARN)
			fprintf(f, " %s%s:\033[0m", tone_code(level == PHG_LOG_WARN ? PHG_TONE_WARN
			                                                              : PHG_TONE_FAIL),
			        level_names[level]);
		else
			fprintf(f, " %s:", level_names[level]);
	}
	fputc(' ', f);
}

void phg_vlog(phg_log_level_t level, const phg_logctx_t *ctx, const char *fmt,
              va_list ap)
{
	if (level < log_level || level >= PHG_LOG_QUIET)
		return;
	{
		char msg[8192];

		format_masked(msg, sizeof(msg), fmt, ap);
		if (log_json) {
			json_t *o = json_line("log", level_names[level], ctx);

			json_object_set_new(o, "message", json_string(msg));
			json_emit(o);
			return;
		}
		status_erase();
		log_prefix(stderr, level, ctx);
		fputs(msg, stderr);
	}
	fputc('\n', stderr);
	status_draw();
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
	phg_err_t m;

	if (err == NULL || err->code == 0)
		return;
	if (nsecrets > 0) {
		/* a masked copy: the error itself is the caller's */
		m = *err;
		phg_mask(m.msg);
		phg_mask(m.detail);
		phg_mask(m.hint);
		err = &m;
	}
	if (log_json) {
		json_t *o;

		if (level < log_level || level >= PHG_LOG_QUIET)
			return;
		o = json_line("log", level_names[level], ctx);
		json_object_set_new(o, "message", json_string(err->msg));
		json_object_set_new(o, "sqlstate", str_or_null(err->sqlstate));
		json_object_set_new(o, "detail", str_or_null(err->detail));
		json_object_set_new(o, "hint", str_or_null(err->hint));
		json_emit(o);
		return;
	}
	if (err->sqlstate[0] != '\0')
		phg_log(level, ctx, "%s (SQLSTATE %s)", err->msg, err->sqlstate);
	else
		phg_log(level, ctx, "%s", err->msg);
	if (level < log_level)
		return;
	status_erase();
	if (err->detail[0] != '\0')
		fprintf(stderr, "  DETAIL: %s\n", err->detail);
	if (err->hint[0] != '\0')
		fprintf(stderr, "  HINT: %s\n", err->hint);
	status_draw();
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
