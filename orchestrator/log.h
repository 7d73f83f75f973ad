/*
 * log.h - human log lines on stderr, each carrying its context.
 *
 * Every line about an object says which one: plan, phase, step, connection
 * or child pid (PgBouncer's log_socket_prefix), e.g.
 *   12:00:03 phasegate[jobs-status-rewrite/expand/1 add_column] added column
 * On a terminal the time is HH:MM:SS; otherwise (CI logs, files) it is ISO
 * 8601 with milliseconds and the UTC offset: 2026-12-01T12:00:03.250+00:00.
 * Nothing secret is ever passed here: conninfo strings and expanded header
 * values are never logged (callers pass names, not values).
 */
#ifndef PHG_LOG_H
#define PHG_LOG_H

#include <stdarg.h>

#include "error.h"

typedef enum phg_log_level_e {
	PHG_LOG_TRACE = 0, /* -vv: every connection state and executor transition */
	PHG_LOG_DEBUG,     /* -v: what phasegate decides and sends */
	PHG_LOG_INFO,
	PHG_LOG_WARN,
	PHG_LOG_ERROR,
	PHG_LOG_QUIET, /* nothing */
} phg_log_level_t;

typedef struct phg_logctx_s {
	const char *plan;      /* may be NULL */
	const char *phase;     /* may be NULL */
	long step;             /* 1-based step number, 0 = none */
	const char *step_kind; /* may be NULL */
	const char *conn;      /* connection name, may be NULL */
	long pid;              /* backend or child pid, 0 = none */
} phg_logctx_t;

void phg_log_set_level(phg_log_level_t level);
phg_log_level_t phg_log_get_level(void);

/* --log-format json: every log line, every event and the command's exit
 * become one JSON object per line on stderr (docs/events.md). */
void phg_log_set_json(int on);
int phg_log_is_json(void);
/* The run the lines are about (all may be NULL/0): copied. */
void phg_log_set_run(const char *plan, const char *checksum, long long run_id, const char *env);
/* An event (the kinds of docs/events.md), with its data as JSON text (may
 * be NULL): a line of its own in JSON mode, nothing in text mode (the text
 * log says it in words). */
void phg_log_event(const phg_logctx_t *ctx, const char *kind, const char *message,
                   const char *data);
/* The same event as a JSON object of that shape (the caller owns it).
 * Neither masks: the caller passes masked text (phg_eng_event does). */
struct json_t;
struct json_t *phg_log_event_json(const phg_logctx_t *ctx, const char *kind,
                                  const char *message, const char *data);
/* A plan diagnostic in JSON mode: a log object with file, line and col
 * (line/col 0: none). */
void phg_log_diagnostic(int warn, const char *file, int line, int col, const char *msg);
/* The command's end: an `exit` event with the code and what it means. */
void phg_log_exit(int code);
/* The live status line of a terminal: one line at the bottom rewritten in
 * place (a backfill's rows, %, rows/s, ETA, batch size and pace; a gate's
 * passes in a row; a long statement's time), coloured by @tone.  Only when
 * stderr is a terminal, TERM is not "dumb" and the log is text; log lines
 * print above it.  NO_COLOR: no colours.  Elsewhere nothing is drawn (the
 * log lines say it). */
typedef enum { PHG_TONE_OK, PHG_TONE_WARN, PHG_TONE_FAIL, PHG_TONE_INFO } phg_tone_t;
void phg_log_status(phg_tone_t tone, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void phg_log_status_clear(void);
int phg_log_live(void); /* a status line would be drawn */

/* A message of the command line itself ("phasegate: cannot read ..."):
 * as such on a terminal, a log object in JSON. */
void phg_log_plain(phg_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A continuation of the previous line: "  DETAIL: ..." / "  HINT: ..." on
 * a terminal, an object of its own (level "detail" / "hint") in JSON. */
void phg_log_note(const char *tag, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* @ctx may be NULL. */
void phg_log(phg_log_level_t level, const phg_logctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void phg_vlog(phg_log_level_t level, const phg_logctx_t *ctx, const char *fmt,
              va_list ap) __attribute__((format(printf, 3, 0)));

/* An error in PostgreSQL's three parts: primary, then DETAIL:, HINT: lines,
 * and the SQLSTATE when it came from the server. */
void phg_log_err(phg_log_level_t level, const phg_logctx_t *ctx,
                 const phg_err_t *err);

/* Secrets: every value expanded from a ${VAR} and every password phasegate
 * connects with is remembered (values of at least PHG_SECRET_MIN bytes), and
 * masked as "***" in anything phasegate prints or records: log lines, JSON
 * lines, events, a run's note and error -- whatever echoed it (a server
 * reflecting a request header in an error body, say). */
#define PHG_SECRET_MIN 6
void phg_secret_add(const char *value);
/* Mask every remembered secret in @s (NUL-terminated, changed in place:
 * "***" is never longer than a secret).  The number masked. */
size_t phg_mask(char *s);
/* A masked copy of @s (the caller frees it); NULL for NULL. */
char *phg_masked(const char *s);

/* Who runs phasegate, as runs and pauses record it: the user ($USER,
 * $LOGNAME, else the passwd entry; "?") and the host name ("?"). */
void phg_whoami(char *user, size_t un, char *host, size_t hn);

#endif /* PHG_LOG_H */
