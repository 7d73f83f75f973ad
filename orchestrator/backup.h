/*
 * backup.h - the backup gate: a verified pg_dump.
 *
 * pg_dump runs through uv_spawn (never our own SIGCHLD handler) with
 * --no-password and the credentials in the child's environment (PGHOST,
 * PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ... from the conninfo), never in
 * argv; custom format (-Fc) at compression level `compress`; scoped to the
 * tables given (-t) or the whole database.  Its stderr goes into a capped
 * buffer.  It is done only after the exit callback and EOF on every pipe.
 * Past the timeout it gets SIGTERM, then SIGKILL after a grace period.
 *
 * The file is then verified: non-empty, `pg_restore --list` succeeds and
 * lists every table of the scope (TABLE DATA entries), and its size and
 * sha256 (computed on the threadpool, not the loop) are returned.
 *
 * The binaries are `pg_dump` / `pg_restore` from PATH, or the paths in the
 * environment variables PHG_PG_DUMP / PHG_PG_RESTORE.
 *
 * Details (backup.c has the state machine):
 * - The file is DIR/STEM-YYYYmmddTHHMMSS.mmmZ.dump (UTC).  DIR and its parents
 *   are created (mode 0700) if missing.  pg_dump writes PATH.partial
 *   (created 0600 with O_EXCL first, which also proves DIR writable); only
 *   a verified file is renamed to PATH, and an existing PATH is never
 *   overwritten.  On any failure or cancel PATH.partial is removed.
 * - The conninfo goes through PQconninfoParse(); every option set in it is
 *   passed as its libpq environment variable (PGHOST, PGHOSTADDR, PGPORT,
 *   PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...) on top of our own
 *   environment, so PG* variables the user set still apply where the
 *   conninfo is silent.  An empty conninfo: our environment as is; a bare
 *   word: a database name.  An option without such a variable (keepalives,
 *   sslpassword, ...) is not passed, and a warning names it (never its
 *   value).  The password is never in argv, a log line or an error.
 * - Tables are "name" (any schema on the search path) or "schema.name";
 *   they go to pg_dump as quoted -t patterns ("schema"."name"), so they
 *   match exactly that name, and the listing must show `TABLE DATA schema
 *   name` (any schema for an unqualified name).
 * - pg_restore --list runs with the same timeout; its output is read only
 *   for a table scope, up to 8 MiB.  The stderr of both children is kept
 *   up to its last 4 KiB; err->detail gets its last lines that fit.
 */
#ifndef PHG_BACKUP_H
#define PHG_BACKUP_H

#include <stdint.h>

#include <uv.h>

#include "error.h"
#include "plan.h"

typedef struct phg_backup_job_s phg_backup_job_t;

typedef struct phg_backup_result_s {
	char *path;          /* the dump file */
	uint64_t size;       /* bytes */
	char sha256[72];     /* "sha256:" + hex */
	uint64_t duration_ms;
	long pid;            /* pg_dump's pid, for the log */
} phg_backup_result_t;

/* status 0: verified (@res filled, @err NULL; the job owns res->path until
 * freed; duration_ms covers the whole job: dump and verification);
 * PHG_ECHILD: pg_dump or pg_restore failed, was killed, timed out, could not
 * be run (not found), or the file is empty/unlistable/misses a table --
 * err says which and includes the child's stderr (its last lines) in detail;
 * PHG_EIO: the directory or the file could not be created, written, read
 * or renamed -- err names it and gives the OS reason.  @res is NULL then.
 * The callback never runs from inside phg_backup_start(); it may call
 * phg_backup_free(job). */
typedef void (*phg_backup_cb)(phg_backup_job_t *job, int status, const phg_backup_result_t *res,
                              const phg_err_t *err, void *arg);

typedef struct phg_backup_opts_s {
	const char *conninfo;      /* libpq URI or conninfo: credentials go to the env */
	const char *dir;           /* created if missing */
	const char *file_stem;     /* e.g. "jobs-status-rewrite-run3-contract" */
	const phg_strv_t *tables;  /* NULL or empty: whole database */
	uint64_t compress;         /* -Z level */
	uint64_t timeout_ms;       /* 0 = none */
	uint64_t kill_grace_ms;    /* SIGTERM -> SIGKILL, default 5000 when 0 */
} phg_backup_opts_t;

/* Start a backup.  0 (cb called once), or an error with @err (cb not
 * called; PHG_EINVAL for bad options, e.g. an unparsable conninfo).  *out is
 * the job; free it with phg_backup_free() in or after the cb, or cancel it
 * with phg_backup_cancel() (stops the child: SIGTERM, then SIGKILL after
 * the grace period; cb not called; the partial file is removed and the job
 * frees itself once every handle and request is finished).
 * phg_backup_free() on a job still running cancels it; phg_backup_cancel()
 * after the cb frees it. */
int phg_backup_start(uv_loop_t *loop, const phg_backup_opts_t *o, phg_backup_cb cb, void *arg,
                     phg_backup_job_t **out, phg_err_t *err);
void phg_backup_cancel(phg_backup_job_t *job);
void phg_backup_free(phg_backup_job_t *job);

#endif /* PHG_BACKUP_H */
