/*
 * backup.c - the backup gate: a verified pg_dump (see backup.h).
 *
 * One job walks these states, each one asynchronous step on the loop:
 *
 *   MKDIR    create the directory and its parents (uv_fs_mkdir, EEXIST ok)
 *   RESERVE  create DIR/STEM-<UTC>.dump.partial with O_EXCL (proves the
 *            directory is writable; a second job of the same name fails)
 *   CHECK    the final name must not exist yet
 *   DUMP     pg_dump --file=PATH.partial (child.c: timeout, SIGTERM, SIGKILL)
 *   STAT     the file is not empty
 *   LIST     pg_restore --list PATH.partial; every table has TABLE DATA
 *   HASH     sha256 on the threadpool, 1 MiB reads, then fsync: the bytes
 *            are on disk before the file gets its final name
 *   RENAME   PATH.partial -> PATH: only a verified dump gets the final name
 *   SYNCDIR  fsync the directory on the threadpool: the rename is on disk
 *            before the backup is reported (and recorded)
 *   CLEANUP  on failure or cancel: unlink PATH.partial
 *   DONE     the callback ran (or, when canceled, the job was freed)
 *
 * Reserving the partial name with O_EXCL before checking the final name
 * makes the final name safe to rename onto: a second job of the same name
 * either fails on the reservation (the first still runs) or sees the first
 * one's final file.
 *
 * The connection parameters reach pg_dump only through its environment:
 * PQconninfoParse() gives every option with its libpq environment variable
 * (PGHOST, PGPORT, ...), and those are set on top of our environment --
 * except the password, which /proc/PID/environ would show to anyone who
 * may read it.  The password (from the conninfo, or a PGPASSWORD we
 * inherited) goes into a password file that is never on disk: a memfd,
 * mode 0600, close-on-exec, given to pg_dump alone as its fd 3 with
 * PGPASSFILE=/proc/self/fd/3.  It vanishes with the last descriptor, even
 * when phasegate is killed with -9.
 */
#define _GNU_SOURCE /* memfd_create */
#include "backup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "buf.h"
#include "child.h"
#include "log.h"

extern char **environ;

#define BK_STDERR_MAX 4096u             /* tail of a child's stderr we keep */
#define BK_LIST_MAX (8u * 1024u * 1024u) /* pg_restore --list output */
#define BK_HASH_CHUNK (1024u * 1024u)
#define BK_DEFAULT_GRACE_MS 5000u

typedef enum bk_state_e {
	BK_IDLE = 0,
	BK_MKDIR,
	BK_SWEEP,   /* remove this stem's .partial files a killed run left */
	BK_RESERVE,
	BK_CHECK,
	BK_DUMP,
	BK_STAT,
	BK_LIST,
	BK_HASH,
	BK_RENAME,
	BK_SYNCDIR,
	BK_CLEANUP,
	BK_DONE,
} bk_state_t;

struct phg_backup_job_s {
	uv_loop_t *loop;
	phg_backup_cb cb;
	void *arg;
	bk_state_t state;
	int canceled;      /* no callback; the job frees itself at DONE */
	int pending;       /* an fs request, a child or a work item is in flight */
	int partial_made;  /* we created PATH.partial and it is still there */

	/* inputs, copied */
	char *dir;
	char *path;        /* DIR/STEM-YYYYmmddTHHMMSS.mmmZ.dump */
	char *partial;     /* path + ".partial" */
	char *dump_bin, *restore_bin;
	char **dump_argv, **list_argv;
	char **env;        /* NULL: inherit; else wiped on free */
	int passfd;        /* >0: the memfd password file, pg_dump's fd 3 */
	phg_strv_t tables;
	uint64_t timeout_ms, grace_ms;

	char *stem;        /* file_stem: SWEEP removes DIR/STEM-*.dump.partial */
	phg_strv_t stale;  /* SWEEP: those found, removed one by one */
	size_t stale_i;

	/* MKDIR: walking the components of dir when it had missing parents */
	int mk_walking;
	size_t mk_pos;     /* end of the component being created */
	char *mk_cur;

	uv_fs_t req;
	uv_work_t work;
	phg_child_t child;

	/* HASH, written on the threadpool, read after it */
	int hash_errno;
	uint64_t hash_bytes;
	char hash_hex[65];

	uint64_t t0;
	int status;
	phg_err_t err;
	phg_backup_result_t res;
};

static void bk_step(phg_backup_job_t *j);

static const char *bk_state_name(bk_state_t s)
{
	static const char *const names[] = {"idle", "mkdir", "sweep", "reserve", "check", "dump",
	                                    "stat", "list", "hash", "rename", "syncdir", "cleanup",
	                                    "done"};

	return (size_t)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

static void bk_log(phg_backup_job_t *j, phg_log_level_t lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void bk_log(phg_backup_job_t *j, phg_log_level_t lvl, const char *fmt, ...)
{
	phg_logctx_t ctx;
	va_list ap;

	memset(&ctx, 0, sizeof(ctx));
	ctx.pid = j->child.pid;
	va_start(ap, fmt);
	phg_vlog(lvl, &ctx, fmt, ap);
	va_end(ap);
}

/* The one function that changes j->state. */
static void bk_set_state(phg_backup_job_t *j, bk_state_t s)
{
	if (j->state == s)
		return;
	bk_log(j, PHG_LOG_TRACE, "backup %s: state %s -> %s", j->path != NULL ? j->path : "",
	       bk_state_name(j->state), bk_state_name(s));
	j->state = s;
}

/* ---------------------------------------------------------- lifetime */

static void wipe_free(char *s)
{
	volatile char *p = s;

	if (s == NULL)
		return;
	while (*p != '\0')
		*p++ = '\0';
	free(s);
}

static void free_argv(char **v, int wipe)
{
	if (v == NULL)
		return;
	for (size_t i = 0; v[i] != NULL; i++) {
		if (wipe)
			wipe_free(v[i]);
		else
			free(v[i]);
	}
	free(v);
}

static void bk_destroy(phg_backup_job_t *j)
{
	free(j->dir);
	free(j->path);
	free(j->partial);
	free(j->stem);
	phg_strv_clear(&j->stale);
	free(j->dump_bin);
	free(j->restore_bin);
	free_argv(j->dump_argv, 0);
	free_argv(j->list_argv, 0);
	free_argv(j->env, 1);
	if (j->passfd > 0)
		close(j->passfd);
	phg_strv_clear(&j->tables);
	free(j->mk_cur);
	phg_child_cleanup(&j->child);
	free(j);
}

/*
 * Everything is finished: no request, child or work item is pending.  Report
 * (unless canceled) as the very last thing: the callback may free the job.
 */
static void bk_finish(phg_backup_job_t *j)
{
	phg_backup_cb cb = j->cb;

	bk_set_state(j, BK_DONE);
	if (j->canceled) {
		bk_destroy(j);
		return;
	}
	j->cb = NULL;
	if (j->status == 0) {
		j->res.duration_ms = uv_hrtime() / 1000000u - j->t0;
		cb(j, 0, &j->res, NULL, j->arg);
	} else {
		cb(j, j->status, NULL, &j->err, j->arg);
	}
}

static void bk_on_unlink(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (r < 0 && r != UV_ENOENT)
		bk_log(j, PHG_LOG_WARN, "could not remove partial backup file \"%s\": %s", j->partial,
		       uv_strerror(r));
	j->partial_made = 0;
	bk_finish(j);
}

/* Remove PATH.partial if we made it, then finish. */
static void bk_cleanup(phg_backup_job_t *j)
{
	int r;

	bk_set_state(j, BK_CLEANUP);
	if (!j->partial_made) {
		bk_finish(j);
		return;
	}
	j->req.data = j;
	r = uv_fs_unlink(j->loop, &j->req, j->partial, bk_on_unlink);
	if (r < 0) {
		bk_log(j, PHG_LOG_WARN, "could not remove partial backup file \"%s\": %s", j->partial,
		       uv_strerror(r));
		bk_finish(j);
		return;
	}
	j->pending = 1;
}

static void bk_fail(phg_backup_job_t *j, int code, const char *detail, const char *hint,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/*
 * Record the error (first cause wins; @detail and @hint may be NULL) and
 * clean up.  The callback may run, and free the job, before this returns:
 * the caller must not touch @j afterwards.
 */
static void bk_fail(phg_backup_job_t *j, int code, const char *detail, const char *hint,
                    const char *fmt, ...)
{
	va_list ap;

	if (j->err.code == 0) {
		memset(&j->err, 0, sizeof(j->err));
		j->err.code = code;
		va_start(ap, fmt);
		vsnprintf(j->err.msg, sizeof(j->err.msg), fmt, ap);
		va_end(ap);
		if (detail != NULL)
			snprintf(j->err.detail, sizeof(j->err.detail), "%s", detail);
		if (hint != NULL)
			snprintf(j->err.hint, sizeof(j->err.hint), "%s", hint);
		j->status = code;
	}
	bk_cleanup(j);
}

/* ------------------------------------------------------------- MKDIR */

static void bk_on_mkdir(uv_fs_t *req);

static int bk_mkdir(phg_backup_job_t *j, const char *p)
{
	j->req.data = j;
	return uv_fs_mkdir(j->loop, &j->req, p, 0700, bk_on_mkdir);
}

/* Create the next component of dir, or go on to RESERVE after the last. */
static void bk_mkdir_next(phg_backup_job_t *j)
{
	size_t n = strlen(j->dir), pos = j->mk_pos;
	int r;

	while (pos < n && j->dir[pos] == '/')
		pos++;
	if (pos >= n) {
		bk_set_state(j, BK_SWEEP);
		bk_step(j);
		return;
	}
	while (pos < n && j->dir[pos] != '/')
		pos++;
	j->mk_pos = pos;
	free(j->mk_cur);
	j->mk_cur = phg_asprintf("%.*s", (int)pos, j->dir);
	r = bk_mkdir(j, j->mk_cur);
	if (r < 0) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not create backup directory \"%s\": %s", j->dir,
		        uv_strerror(r));
		return;
	}
	j->pending = 1;
}

static void bk_on_mkdir(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;
	char detail[1024];

	uv_fs_req_cleanup(req);
	j->pending = 0;
	detail[0] = '\0';
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (r == 0 || r == UV_EEXIST) {
		if (!j->mk_walking) {
			bk_set_state(j, BK_SWEEP);
			bk_step(j);
		} else {
			bk_mkdir_next(j);
		}
		return;
	}
	if (r == UV_ENOENT && !j->mk_walking) {
		/* A parent is missing: create them from the top. */
		j->mk_walking = 1;
		j->mk_pos = 0;
		bk_mkdir_next(j);
		return;
	}
	if (j->mk_walking && j->mk_cur != NULL && strcmp(j->mk_cur, j->dir) != 0)
		snprintf(detail, sizeof(detail), "Creating \"%s\" failed.", j->mk_cur);
	bk_fail(j, PHG_EIO, detail[0] != '\0' ? detail : NULL, NULL,
	        "could not create backup directory \"%s\": %s", j->dir, uv_strerror(r));
}

/* ---------------------------------------------------- RESERVE, CHECK */

static void bk_on_reserve_close(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	bk_set_state(j, BK_CHECK);
	bk_step(j);
}

static void bk_on_reserve(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (r >= 0) {
		j->partial_made = 1;
		j->req.data = j;
		if (uv_fs_close(j->loop, &j->req, r, bk_on_reserve_close) == 0) {
			j->pending = 1;
			return;
		}
		bk_fail(j, PHG_EIO, NULL, NULL, "could not close backup file \"%s\"", j->partial);
		return;
	}
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (r == UV_EEXIST) {
		bk_fail(j, PHG_EIO,
		        "Another backup with the same name is being written, or a previous one "
		        "was interrupted.",
		        NULL, "backup file \"%s\" already exists", j->partial);
		return;
	}
	bk_fail(j, PHG_EIO, NULL, NULL, "could not write to backup directory \"%s\": %s", j->dir,
	        uv_strerror(r));
}

static void bk_on_check(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (r == 0) {
		bk_fail(j, PHG_EIO, "A backup is never overwritten.", NULL,
		        "backup file \"%s\" already exists", j->path);
		return;
	}
	if (r != UV_ENOENT) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not access backup file \"%s\": %s", j->path,
		        uv_strerror(r));
		return;
	}
	bk_set_state(j, BK_DUMP);
	bk_step(j);
}

/* ------------------------------------------------------ DUMP, LIST */

/* "pg_dump failed with exit code 1" and friends, into @out. */
static void bk_how_it_ended(const phg_child_t *c, const char *what, char *out, size_t cap)
{
	if (c->timed_out)
		snprintf(out, cap, "%s timed out after %" PRIu64 " ms and was stopped", what,
		         c->timeout_ms);
	else if (c->term_signal != 0)
		snprintf(out, cap, "%s was killed by signal %d", what, c->term_signal);
	else if (c->exit_status != 0)
		snprintf(out, cap, "%s failed with exit code %" PRId64, what, c->exit_status);
	else
		snprintf(out, cap, "%s succeeded", what);
}

static int bk_child_failed(const phg_child_t *c)
{
	return c->timed_out || c->term_signal != 0 || c->exit_status != 0;
}

static void bk_spawn_failed(phg_backup_job_t *j, const char *what, const char *bin,
                            const char *envvar)
{
	int r = j->child.spawn_error;
	char hint[256];

	snprintf(hint, sizeof(hint),
	         "Install the PostgreSQL client programs (of the server's major version), or set "
	         "%s to the path of %s.",
	         envvar, what);
	if (r == UV_ENOENT)
		bk_fail(j, PHG_ECHILD, NULL, hint, "%s program \"%s\" was not found", what, bin);
	else
		bk_fail(j, PHG_ECHILD, NULL, r == UV_EACCES ? hint : NULL,
		        "could not run %s program \"%s\": %s", what, bin, uv_strerror(r));
}

static void bk_on_dump(phg_child_t *c)
{
	phg_backup_job_t *j = c->data;
	char how[256], tail[sizeof(j->err.detail) - 128], detail[sizeof(j->err.detail)];

	j->pending = 0;
	j->res.pid = c->pid;
	if (j->canceled) {
		bk_log(j, PHG_LOG_INFO, "pg_dump stopped: the backup was canceled");
		bk_cleanup(j);
		return;
	}
	if (c->spawn_error != 0) {
		bk_spawn_failed(j, "pg_dump", j->dump_bin, "PHG_PG_DUMP");
		return;
	}
	if (bk_child_failed(c)) {
		bk_how_it_ended(c, "pg_dump", how, sizeof(how));
		phg_child_stderr_tail(c, tail, sizeof(tail));
		if (c->timed_out && c->sigkilled)
			snprintf(detail, sizeof(detail),
			         "It did not exit on SIGTERM and was killed with SIGKILL %" PRIu64
			         " ms later.%s%s",
			         j->grace_ms, tail[0] != '\0' ? "\n" : "", tail);
		else
			snprintf(detail, sizeof(detail), "%s", tail);
		bk_fail(j, PHG_ECHILD, detail[0] != '\0' ? detail : NULL,
		        c->timed_out ? "Raise backup.timeout in the plan, or narrow the backup scope."
		                     : NULL,
		        "%s", how);
		return;
	}
	bk_log(j, PHG_LOG_DEBUG, "pg_dump exited after %" PRIu64 " ms", c->elapsed_ms);
	phg_child_cleanup(c);
	bk_set_state(j, BK_STAT);
	bk_step(j);
}

/* Does the pg_restore --list output @l hold TABLE DATA of @t
 * ("name": any schema; "schema.name": that schema)? */
static int bk_list_has(const char *l, const char *t)
{
	static const char key[] = " TABLE DATA ";
	const char *dot = strchr(t, '.'), *name = dot != NULL ? dot + 1 : t;
	size_t slen = dot != NULL ? (size_t)(dot - t) : 0, nlen = strlen(name);
	const char *line, *eol, *p, *e;

	for (line = l; *line != '\0'; line = *eol != '\0' ? eol + 1 : eol) {
		eol = strchr(line, '\n');
		if (eol == NULL)
			eol = line + strlen(line);
		if (*line == ';')
			continue; /* a comment line */
		/* "ID; OID OID TABLE DATA SCHEMA NAME OWNER" */
		for (p = line; p + sizeof(key) - 1 <= eol; p++)
			if (memcmp(p, key, sizeof(key) - 1) == 0)
				break;
		if (p + sizeof(key) - 1 > eol)
			continue;
		p += sizeof(key) - 1;
		e = memchr(p, ' ', (size_t)(eol - p));
		if (e == NULL)
			continue;
		if (dot != NULL && ((size_t)(e - p) != slen || memcmp(p, t, slen) != 0))
			continue;
		p = e + 1;
		if ((size_t)(eol - p) >= nlen && memcmp(p, name, nlen) == 0 &&
		    (p + nlen == eol || p[nlen] == ' ' || p[nlen] == '\r'))
			return 1;
	}
	return 0;
}

static void bk_on_list(phg_child_t *c)
{
	phg_backup_job_t *j = c->data;
	char how[256], tail[sizeof(j->err.detail) - 300], detail[sizeof(j->err.detail)];

	j->pending = 0;
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (c->spawn_error != 0) {
		bk_spawn_failed(j, "pg_restore", j->restore_bin, "PHG_PG_RESTORE");
		return;
	}
	if (bk_child_failed(c)) {
		bk_how_it_ended(c, "pg_restore", how, sizeof(how));
		phg_child_stderr_tail(c, tail, sizeof(tail));
		snprintf(detail, sizeof(detail), "%s.%s%s", how, tail[0] != '\0' ? "\n" : "", tail);
		bk_fail(j, PHG_ECHILD, detail, NULL, "pg_restore --list cannot read backup file \"%s\"",
		        j->path);
		return;
	}
	if (c->stdout_toobig) {
		snprintf(detail, sizeof(detail), "It is over %u bytes, the most phasegate reads.",
		         BK_LIST_MAX);
		bk_fail(j, PHG_ECHILD, detail, NULL,
		        "pg_restore --list output for backup file \"%s\" is too large", j->path);
		return;
	}
	for (size_t i = 0; i < j->tables.n; i++) {
		if (!bk_list_has(c->out.data != NULL ? c->out.data : "", j->tables.v[i])) {
			bk_fail(j, PHG_ECHILD, "pg_restore --list shows no TABLE DATA entry for it.", NULL,
			        "backup file \"%s\" does not contain table \"%s\"", j->path, j->tables.v[i]);
			return;
		}
	}
	phg_child_cleanup(c);
	bk_set_state(j, BK_HASH);
	bk_step(j);
}

/* -------------------------------------------------------------- STAT */

static void bk_on_stat(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;
	uint64_t size = req->statbuf.st_size;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (r < 0) {
		bk_fail(j, PHG_ECHILD, NULL, NULL, "could not read backup file \"%s\": %s", j->path,
		        uv_strerror(r));
		return;
	}
	if (size == 0) {
		bk_fail(j, PHG_ECHILD, "pg_dump exited with code 0 but wrote nothing.", NULL,
		        "backup file \"%s\" is empty", j->path);
		return;
	}
	j->res.size = size;
	bk_set_state(j, BK_LIST);
	bk_step(j);
}

/* -------------------------------------------------------------- HASH */

/* On the threadpool: touches only the hash_* fields and the path. */
static void bk_hash_work(uv_work_t *w)
{
	phg_backup_job_t *j = w->data;
	static const char hexd[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = NULL;
	unsigned char *buf = NULL;
	ssize_t n;
	int fd;

	j->hash_errno = 0;
	j->hash_bytes = 0;
	fd = open(j->partial, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		j->hash_errno = errno;
		return;
	}
	buf = malloc(BK_HASH_CHUNK);
	ctx = EVP_MD_CTX_new();
	if (buf == NULL || ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		j->hash_errno = ENOMEM;
		goto out;
	}
	for (;;) {
		n = read(fd, buf, BK_HASH_CHUNK);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			j->hash_errno = errno;
			goto out;
		}
		if (n == 0)
			break;
		if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
			j->hash_errno = EIO;
			goto out;
		}
		j->hash_bytes += (uint64_t)n;
	}
	/* durable before it is renamed and recorded (pg_dump syncs its own file,
	 * but a stand-in through PHG_PG_DUMP may not; this costs little after it) */
	if (fsync(fd) != 0) {
		j->hash_errno = errno;
		goto out;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
		j->hash_errno = EIO;
		goto out;
	}
	for (unsigned int i = 0; i < mdlen; i++) {
		j->hash_hex[2 * i] = hexd[md[i] >> 4];
		j->hash_hex[2 * i + 1] = hexd[md[i] & 15];
	}
	j->hash_hex[64] = '\0';
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	close(fd);
}

static void bk_on_rename(uv_fs_t *req);
static void bk_syncdir_work(uv_work_t *w);
static void bk_syncdir_done(uv_work_t *w, int status);

static void bk_hash_done(uv_work_t *w, int status)
{
	phg_backup_job_t *j = w->data;
	int r;

	j->pending = 0;
	if (j->canceled || status == UV_ECANCELED) {
		bk_cleanup(j);
		return;
	}
	if (j->hash_errno != 0) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not read and sync backup file \"%s\": %s", j->path,
		        strerror(j->hash_errno));
		return;
	}
	if (j->hash_bytes != j->res.size) {
		char detail[128];

		snprintf(detail, sizeof(detail), "It had %" PRIu64 " bytes, then %" PRIu64 ".",
		         j->res.size, j->hash_bytes);
		bk_fail(j, PHG_ECHILD, detail, NULL, "backup file \"%s\" changed while it was verified",
		        j->path);
		return;
	}
	snprintf(j->res.sha256, sizeof(j->res.sha256), "sha256:%s", j->hash_hex);
	bk_set_state(j, BK_RENAME);
	j->req.data = j;
	r = uv_fs_rename(j->loop, &j->req, j->partial, j->path, bk_on_rename);
	if (r < 0) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not rename \"%s\" to \"%s\": %s", j->partial, j->path,
		        uv_strerror(r));
		return;
	}
	j->pending = 1;
}

static void bk_on_rename(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (r < 0) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not rename \"%s\" to \"%s\": %s", j->partial, j->path,
		        uv_strerror(r));
		return;
	}
	j->partial_made = 0;
	bk_set_state(j, BK_SYNCDIR);
	j->work.data = j;
	r = uv_queue_work(j->loop, &j->work, bk_syncdir_work, bk_syncdir_done);
	if (r < 0) {
		bk_fail(j, PHG_EIO, NULL, NULL, "could not queue the sync of \"%s\": %s", j->dir,
		        uv_strerror(r));
		return;
	}
	j->pending = 1;
}

/* On the threadpool: the directory entry of the rename reaches the disk. */
static void bk_syncdir_work(uv_work_t *w)
{
	phg_backup_job_t *j = w->data;
	int fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	j->hash_errno = 0;
	if (fd < 0 || fsync(fd) != 0)
		j->hash_errno = errno;
	if (fd >= 0)
		close(fd);
}

static void bk_syncdir_done(uv_work_t *w, int status)
{
	phg_backup_job_t *j = w->data;

	j->pending = 0;
	(void)status; /* RENAME and SYNCDIR are never canceled: the file is final */
	if (j->hash_errno != 0) {
		bk_fail(j, PHG_EIO, NULL, NULL,
		        "could not sync backup directory \"%s\" (\"%s\" may not survive a crash): %s",
		        j->dir, j->path, strerror(j->hash_errno));
		return;
	}
	if (j->canceled)
		bk_log(j, PHG_LOG_INFO, "backup canceled after it was verified; \"%s\" is kept",
		       j->path);
	j->res.path = j->path;
	bk_finish(j);
}

/* ------------------------------------------------------------ driver */

/* Start the step of the current state. */
/* ---- SWEEP: a kill -9 during pg_dump leaves STEM-<time>.dump.partial ---- */

static void bk_sweep_next(phg_backup_job_t *j);

static void bk_on_sweep_unlink(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	int r = (int)req->result;
	const char *name = j->stale.v[j->stale_i];

	uv_fs_req_cleanup(req);
	j->pending = 0;
	if (r == 0)
		bk_log(j, PHG_LOG_INFO, "removed %s/%s, a partial backup an interrupted run left", j->dir,
		       name);
	else if (r != UV_ENOENT)
		bk_log(j, PHG_LOG_WARN, "could not remove the partial backup %s/%s: %s", j->dir, name,
		       uv_strerror(r));
	j->stale_i++;
	bk_sweep_next(j);
}

static void bk_sweep_next(phg_backup_job_t *j)
{
	char *p;
	int r;

	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	if (j->stale_i >= j->stale.n) {
		bk_set_state(j, BK_RESERVE);
		bk_step(j);
		return;
	}
	p = phg_asprintf("%s/%s", j->dir, j->stale.v[j->stale_i]);
	j->req.data = j;
	r = uv_fs_unlink(j->loop, &j->req, p, bk_on_sweep_unlink);
	free(p);
	if (r < 0) {
		j->stale_i++;
		bk_sweep_next(j);
		return;
	}
	j->pending = 1;
}

static void bk_on_scandir(uv_fs_t *req)
{
	phg_backup_job_t *j = req->data;
	uv_dirent_t ent;
	size_t sl = strlen(j->stem);

	j->pending = 0;
	if (req->result >= 0) {
		while (uv_fs_scandir_next(req, &ent) != UV_EOF) {
			size_t n = strlen(ent.name);

			if (n > sl + 1 + 13 && strncmp(ent.name, j->stem, sl) == 0 && ent.name[sl] == '-' &&
			    strcmp(ent.name + n - 13, ".dump.partial") == 0)
				phg_strv_push(&j->stale, ent.name);
		}
	}
	uv_fs_req_cleanup(req);
	j->stale_i = 0;
	bk_sweep_next(j);
}

static void bk_step(phg_backup_job_t *j)
{
	phg_child_opts_t co;
	int r = 0;

	if (j->canceled) {
		bk_cleanup(j);
		return;
	}
	j->req.data = j;
	switch (j->state) {
	case BK_MKDIR:
		r = bk_mkdir(j, j->dir);
		if (r < 0) {
			bk_fail(j, PHG_EIO, NULL, NULL, "could not create backup directory \"%s\": %s", j->dir,
			        uv_strerror(r));
			return;
		}
		break;
	case BK_SWEEP:
		r = uv_fs_scandir(j->loop, &j->req, j->dir, 0, bk_on_scandir);
		if (r < 0) { /* not worth failing the backup for */
			bk_set_state(j, BK_RESERVE);
			bk_step(j);
			return;
		}
		break;
	case BK_RESERVE:
		r = uv_fs_open(j->loop, &j->req, j->partial, O_WRONLY | O_CREAT | O_EXCL, 0600,
		               bk_on_reserve);
		if (r < 0) {
			bk_fail(j, PHG_EIO, NULL, NULL, "could not write to backup directory \"%s\": %s", j->dir,
			        uv_strerror(r));
			return;
		}
		break;
	case BK_CHECK:
		r = uv_fs_stat(j->loop, &j->req, j->path, bk_on_check);
		if (r < 0) {
			bk_fail(j, PHG_EIO, NULL, NULL, "could not access backup file \"%s\": %s", j->path,
			        uv_strerror(r));
			return;
		}
		break;
	case BK_DUMP:
	case BK_LIST:
		memset(&co, 0, sizeof(co));
		co.stderr_max = BK_STDERR_MAX;
		co.timeout_ms = j->timeout_ms;
		co.kill_grace_ms = j->grace_ms;
		if (j->state == BK_DUMP) {
			co.file = j->dump_bin;
			co.args = j->dump_argv;
			co.env = j->env;
			co.fd3 = j->passfd;
		} else {
			co.file = j->restore_bin;
			co.args = j->list_argv;
			co.stdout_max = j->tables.n > 0 ? BK_LIST_MAX : 0; /* else: exit code only */
		}
		/* pg_dump compresses on this machine: after the application */
		co.nice = 10;
		/* a dump outliving a kill -9 of phasegate would hold its lock */
		co.die_with_parent = 1;
		phg_child_cleanup(&j->child);
		j->child.data = j;
		r = phg_child_spawn(j->loop, &j->child, &co, j->state == BK_DUMP ? bk_on_dump : bk_on_list);
		if (r < 0) {
			bk_fail(j, PHG_ECHILD, NULL, NULL, "could not start %s",
			        j->state == BK_DUMP ? "pg_dump" : "pg_restore");
			return;
		}
		if (j->child.pid != 0)
			bk_log(j, PHG_LOG_DEBUG, "%s started",
			       j->state == BK_DUMP ? "pg_dump" : "pg_restore --list");
		break;
	case BK_STAT:
		r = uv_fs_stat(j->loop, &j->req, j->partial, bk_on_stat);
		if (r < 0) {
			bk_fail(j, PHG_ECHILD, NULL, NULL, "could not read backup file \"%s\": %s", j->path,
			        uv_strerror(r));
			return;
		}
		break;
	case BK_HASH:
		j->work.data = j;
		r = uv_queue_work(j->loop, &j->work, bk_hash_work, bk_hash_done);
		if (r < 0) {
			bk_fail(j, PHG_EIO, NULL, NULL, "could not queue the checksum of \"%s\": %s", j->path,
			        uv_strerror(r));
			return;
		}
		break;
	default:
		return;
	}
	j->pending = 1;
}

/* ------------------------------------------------------------- setup */

static char **argv_new(size_t n)
{
	return phg_calloc(n + 1, sizeof(char *));
}

/* "name" -> "\"name\"", "s.name" -> "\"s\".\"name\"": a pg_dump pattern that
 * matches exactly that name (quotes make it literal and case-sensitive). */
static char *bk_table_pattern(const char *t)
{
	phg_buf_t b;
	char *s;

	phg_buf_init(&b, 4 * strlen(t) + 16);
	phg_buf_adds(&b, "\"");
	for (const char *p = t; *p != '\0'; p++) {
		if (*p == '.')
			phg_buf_adds(&b, "\".\"");
		else if (*p == '"')
			phg_buf_adds(&b, "\"\"");
		else
			phg_buf_add(&b, p, 1);
	}
	phg_buf_adds(&b, "\"");
	s = phg_buf_take(&b);
	if (s == NULL)
		abort();
	return s;
}

static int bk_table_ok(const char *t)
{
	const char *dot = strchr(t, '.');

	if (t[0] == '\0' || t[0] == '.')
		return 0;
	if (dot == NULL)
		return 1;
	return dot[1] != '\0' && strchr(dot + 1, '.') == NULL;
}

/* KEY of "KEY=VALUE" equals @key? */
static int env_is(const char *kv, const char *key)
{
	size_t n = strlen(key);

	return strncmp(kv, key, n) == 0 && kv[n] == '=';
}

/*
 * The password file pg_dump reads (see the top of this file): a memfd of
 * one line "*:*:*:*:PASSWORD" (":" and "\\" escaped), mode 0600.  Its
 * descriptor, or -1 with errno set.
 */
static int bk_passfile(const char *password)
{
	phg_buf_t b;
	int fd, saved;
	ssize_t w;

	fd = memfd_create("phasegate-pgpass", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	phg_buf_init(&b, 4 * strlen(password) + 16);
	phg_buf_adds(&b, "*:*:*:*:");
	for (const char *p = password; *p != '\0'; p++) {
		if (*p == ':' || *p == '\\')
			phg_buf_adds(&b, "\\");
		phg_buf_add(&b, p, 1);
	}
	phg_buf_adds(&b, "\n");
	if (fchmod(fd, 0600) != 0)
		saved = errno;
	else if (phg_buf_error(&b) != 0)
		saved = ENOMEM;
	else if ((w = write(fd, b.data, b.len)) != (ssize_t)b.len)
		saved = w < 0 ? errno : EIO;
	else
		saved = 0;
	if (b.data != NULL)
		memset(b.data, 0, b.len);
	phg_buf_free(&b);
	if (saved != 0) {
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * Our environment plus the conninfo's options as libpq variables (PGHOST,
 * PGPORT, ...), without PGPASSWORD: the password, from the conninfo or
 * inherited, is put in *@pass (the caller wipes it) for the password file.
 * NULL in *out when the conninfo is empty and there is no password
 * (inherit).  Options without an environment variable are named in a
 * warning.
 */
static int bk_build_env(const char *conninfo, char ***out, char **pass, phg_err_t *err)
{
	PQconninfoOption *opts = NULL, *o;
	char *errmsg = NULL;
	size_t n = 0, k = 0, nset = 0;
	const char *inherited = getenv("PGPASSWORD");
	char **env;

	*out = NULL;
	*pass = NULL;
	if ((conninfo == NULL || conninfo[0] == '\0') && inherited == NULL)
		return 0;
	if (conninfo == NULL || conninfo[0] == '\0') {
		opts = NULL;
	} else if (strncmp(conninfo, "postgresql://", 13) != 0 &&
	           strncmp(conninfo, "postgres://", 11) != 0 && strchr(conninfo, '=') == NULL) {
		opts = NULL; /* libpq reads a bare word as a database name */
	} else {
		opts = PQconninfoParse(conninfo, &errmsg);
		if (opts == NULL) {
			if (errmsg == NULL)
				return phg_err_set(err, PHG_ENOMEM, "out of memory");
			/* libpq's message may quote part of the string, and so the
			 * password: it is not shown. */
			PQfreemem(errmsg);
			phg_err_set(err, PHG_EINVAL, "invalid connection string");
			phg_err_detail(err, "libpq cannot parse it (it is not shown: it may hold a "
			                    "password).");
			phg_err_hint(err, "Use a libpq URI (postgresql://...) or key=value pairs.");
			return PHG_EINVAL;
		}
	}
	for (n = 0; environ != NULL && environ[n] != NULL; n++)
		;
	if (opts != NULL)
		for (o = opts; o->keyword != NULL; o++)
			nset++;
	env = argv_new(n + nset + 2);
	/* ours, minus what the conninfo sets and any password */
	for (size_t i = 0; i < n; i++) {
		int overridden = env_is(environ[i], "PGPASSWORD");

		if (opts == NULL) {
			overridden |= conninfo != NULL && conninfo[0] != '\0' &&
			              env_is(environ[i], "PGDATABASE");
		} else {
			for (o = opts; o->keyword != NULL; o++)
				if (o->val != NULL && o->envvar != NULL && env_is(environ[i], o->envvar))
					overridden = 1;
		}
		if (!overridden)
			env[k++] = phg_strdup(environ[i]);
	}
	if (opts == NULL) {
		if (conninfo != NULL && conninfo[0] != '\0')
			env[k++] = phg_asprintf("PGDATABASE=%s", conninfo);
	} else {
		for (o = opts; o->keyword != NULL; o++) {
			if (o->val == NULL)
				continue;
			if (strcmp(o->keyword, "password") == 0) {
				*pass = phg_strdup(o->val);
				continue;
			}
			if (o->envvar == NULL) {
				phg_log(PHG_LOG_WARN, NULL,
				        "connection option \"%s\" has no libpq environment variable and is "
				        "not passed to pg_dump",
				        o->keyword);
				continue;
			}
			env[k++] = phg_asprintf("%s=%s", o->envvar, o->val);
		}
		/* PQconninfoFree does not wipe: do it for the password. */
		for (o = opts; o->keyword != NULL; o++)
			if (o->val != NULL && strcmp(o->keyword, "password") == 0)
				memset(o->val, 0, strlen(o->val));
		PQconninfoFree(opts);
	}
	if (*pass == NULL && inherited != NULL && inherited[0] != '\0')
		*pass = phg_strdup(inherited);
	if (*pass != NULL) {
		/* ours would be read first otherwise: libpq takes PGPASSFILE */
		for (size_t i = 0; i < k; i++)
			if (env_is(env[i], "PGPASSFILE")) {
				free(env[i]);
				env[i] = env[--k];
				env[k] = NULL;
				i--;
			}
		env[k++] = phg_strdup("PGPASSFILE=/proc/self/fd/3");
	}
	env[k] = NULL;
	*out = env;
	return 0;
}

static char *bk_bin(const char *envvar, const char *dflt)
{
	const char *v = getenv(envvar);

	return phg_strdup(v != NULL && v[0] != '\0' ? v : dflt);
}

int phg_backup_start(uv_loop_t *loop, const phg_backup_opts_t *o, phg_backup_cb cb, void *arg,
                     phg_backup_job_t **out, phg_err_t *err)
{
	phg_backup_job_t *j;
	char stamp[32];
	struct tm tm;
	time_t now;
	size_t nt, dlen, k;
	char *password = NULL;
	int rc;

	if (out != NULL)
		*out = NULL;
	if (loop == NULL || o == NULL || cb == NULL || out == NULL)
		return phg_err_set(err, PHG_EINVAL, "phg_backup_start: missing argument");
	if (o->dir == NULL || o->dir[0] == '\0')
		return phg_err_set(err, PHG_EINVAL, "backup directory is empty");
	if (o->file_stem == NULL || o->file_stem[0] == '\0' || strchr(o->file_stem, '/') != NULL)
		return phg_err_set(err, PHG_EINVAL, "invalid backup file name \"%s\"",
		                   o->file_stem != NULL ? o->file_stem : "");
	if (o->compress > 9)
		return phg_err_set(err, PHG_EINVAL,
		                   "invalid backup compression level %" PRIu64 ": expected 0 to 9",
		                   o->compress);
	nt = o->tables != NULL ? o->tables->n : 0;
	for (size_t i = 0; i < nt; i++)
		if (o->tables->v[i] == NULL || !bk_table_ok(o->tables->v[i]))
			return phg_err_set(err, PHG_EINVAL, "invalid table name \"%s\" for the backup",
			                   o->tables->v[i] != NULL ? o->tables->v[i] : "");

	j = phg_calloc(1, sizeof(*j));
	rc = bk_build_env(o->conninfo, &j->env, &password, err);
	if (rc == 0 && password != NULL) {
		j->passfd = bk_passfile(password);
		if (j->passfd < 0)
			rc = phg_err_set(err, PHG_EIO, "could not make the password file for pg_dump: %s",
			                 strerror(errno));
		wipe_free(password);
	}
	if (rc != 0) {
		bk_destroy(j);
		return rc;
	}
	j->loop = loop;
	j->cb = cb;
	j->arg = arg;
	j->timeout_ms = o->timeout_ms;
	j->grace_ms = o->kill_grace_ms > 0 ? o->kill_grace_ms : BK_DEFAULT_GRACE_MS;
	j->t0 = uv_hrtime() / 1000000u;

	/* DIR without trailing slashes ("/" stays "/") */
	dlen = strlen(o->dir);
	while (dlen > 1 && o->dir[dlen - 1] == '/')
		dlen--;
	j->dir = phg_asprintf("%.*s", (int)dlen, o->dir);
	/* UTC to the millisecond: two attempts at a phase within one second
	 * (a quick failure, then a retry) still get distinct files */
	{
		uv_timeval64_t tv;
		char sec[24];

		if (uv_gettimeofday(&tv) != 0) {
			tv.tv_sec = time(NULL);
			tv.tv_usec = 0;
		}
		now = (time_t)tv.tv_sec;
		if (gmtime_r(&now, &tm) == NULL ||
		    strftime(sec, sizeof(sec), "%Y%m%dT%H%M%S", &tm) == 0)
			snprintf(sec, sizeof(sec), "%lld", (long long)now);
		snprintf(stamp, sizeof(stamp), "%.20s.%03uZ", sec,
		         (unsigned)((uint64_t)tv.tv_usec / 1000u % 1000u));
	}
	j->path = phg_asprintf("%s%s%s-%s.dump", j->dir, strcmp(j->dir, "/") == 0 ? "" : "/",
	                       o->file_stem, stamp);
	j->partial = phg_asprintf("%s.partial", j->path);
	j->stem = phg_strdup(o->file_stem);

	j->dump_bin = bk_bin("PHG_PG_DUMP", "pg_dump");
	j->restore_bin = bk_bin("PHG_PG_RESTORE", "pg_restore");
	j->dump_argv = argv_new(5 + 2 * nt);
	k = 0;
	j->dump_argv[k++] = phg_strdup(j->dump_bin);
	j->dump_argv[k++] = phg_strdup("--no-password");
	j->dump_argv[k++] = phg_strdup("--format=custom");
	j->dump_argv[k++] = phg_asprintf("--compress=%" PRIu64, o->compress);
	j->dump_argv[k++] = phg_asprintf("--file=%s", j->partial);
	for (size_t i = 0; i < nt; i++) {
		j->dump_argv[k++] = phg_strdup("-t");
		j->dump_argv[k++] = bk_table_pattern(o->tables->v[i]);
	}
	j->list_argv = argv_new(3);
	j->list_argv[0] = phg_strdup(j->restore_bin);
	j->list_argv[1] = phg_strdup("--list");
	j->list_argv[2] = phg_strdup(j->partial);
	j->tables.n = nt;
	j->tables.v = nt > 0 ? phg_calloc(nt, sizeof(char *)) : NULL;
	for (size_t i = 0; i < nt; i++)
		j->tables.v[i] = phg_strdup(o->tables->v[i]);

	bk_set_state(j, BK_MKDIR);
	j->req.data = j;
	rc = bk_mkdir(j, j->dir);
	if (rc < 0) {
		phg_err_set(err, PHG_EIO, "could not create backup directory \"%s\": %s", j->dir,
		            uv_strerror(rc));
		bk_destroy(j);
		return PHG_EIO;
	}
	j->pending = 1;
	*out = j;
	return 0;
}

void phg_backup_cancel(phg_backup_job_t *j)
{
	if (j == NULL)
		return;
	if (j->state == BK_DONE) {
		bk_destroy(j);
		return;
	}
	if (j->canceled)
		return;
	j->canceled = 1;
	bk_log(j, PHG_LOG_DEBUG, "backup %s: canceled in state %s", j->path, bk_state_name(j->state));
	switch (j->state) {
	case BK_DUMP:
	case BK_LIST:
		phg_child_stop(&j->child);
		break;
	case BK_HASH:
		uv_cancel((uv_req_t *)&j->work);
		break;
	case BK_MKDIR:
	case BK_SWEEP:
	case BK_RESERVE:
	case BK_CHECK:
	case BK_STAT:
		uv_cancel((uv_req_t *)&j->req);
		break;
	default:
		break; /* RENAME, SYNCDIR, CLEANUP: let them finish */
	}
}

void phg_backup_free(phg_backup_job_t *j)
{
	if (j == NULL)
		return;
	if (j->state != BK_DONE) {
		phg_backup_cancel(j); /* still running: it frees itself when done */
		return;
	}
	bk_destroy(j);
}
