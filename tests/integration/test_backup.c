/*
 * test_backup.c - the backup gate (orchestrator/backup.h) against the
 * throwaway cluster of tests/harness/pg.sh.
 *
 * Real pg_dump / pg_restore (the harness puts the server's bin directory
 * first in PATH) for the success cases; for the failures, a fake pg_dump:
 * this very binary, re-executed (libuv's test-spawn.c spawn_helper idea).
 * When PHG_FAKE_PG_DUMP_MODE is set in its environment, main() behaves as
 * pg_dump in that mode instead of running the tests:
 *
 *   fail              stderr "pg_dump: error: ... FATAL: boom", exit 1
 *   fail-noisy        20 KiB of stderr lines, then the cause, exit 1
 *   hang              sleep until a signal ends it (SIGTERM does)
 *   hang-ignore-term  ignore SIGTERM: only SIGKILL ends it
 *   garbage           random bytes into --file, exit 0
 *   empty             an empty --file, exit 0
 *   missing-table     the real pg_dump with --schema-only (no TABLE DATA)
 *   record            write argv and PGPASSWORD to $PHG_FAKE_RECORD, then
 *                     exec the real pg_dump
 * The hang modes write their pid to $PHG_FAKE_PIDFILE first.
 *
 * Every test runs its own loop and ends with uv_loop_close() == 0, and
 * frees the job inside its callback, as the engine does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "backup.h"
#include "buf.h"
#include "error.h"
#include "log.h"
#include "pgtest.h"

#define TEST_DB "t_backup"
#define RESTORE_DB "t_backup_restore"
#define SECRET "Sup3r-s3cret-pw"
#define NROWS 1000

static char *g_url;         /* conninfo URI of TEST_DB */
static char g_exe[4096];    /* this binary: the fake pg_dump */
static char g_tmp[256];     /* a temp dir for the whole run */
static int g_seq;

/* ------------------------------------------------------ the fake pg_dump */

static const char *fake_file_arg(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "--file=", 7) == 0)
			return argv[i] + 7;
	return NULL;
}

static void fake_pidfile(void)
{
	const char *pf = getenv("PHG_FAKE_PIDFILE");
	FILE *f;

	if (pf == NULL)
		return;
	f = fopen(pf, "w");
	if (f != NULL) {
		fprintf(f, "%ld\n", (long)getpid());
		fclose(f);
	}
}

/* Exec the real pg_dump (first in PATH) with our arguments plus @extra. */
static int fake_exec_real(int argc, char **argv, const char *extra)
{
	char **v = calloc((size_t)argc + 2, sizeof(char *));
	int k = 0;

	if (v == NULL)
		return 99;
	v[k++] = "pg_dump";
	for (int i = 1; i < argc; i++)
		v[k++] = argv[i];
	if (extra != NULL)
		v[k++] = (char *)extra;
	v[k] = NULL;
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	execvp("pg_dump", v);
	fprintf(stderr, "fake pg_dump: cannot exec pg_dump: %s\n", strerror(errno));
	return 98;
}

static int fake_pg_dump(const char *mode, int argc, char **argv)
{
	const char *file = fake_file_arg(argc, argv);

	if (strcmp(mode, "fail") == 0) {
		fputs("pg_dump: error: connection to server failed: FATAL: boom\n", stderr);
		return 1;
	}
	if (strcmp(mode, "fail-noisy") == 0) {
		for (int i = 1; i <= 400; i++)
			fprintf(stderr, "pg_dump: reading noise %d of 400 ..........................\n", i);
		fputs("pg_dump: error: query failed: the real cause\n", stderr);
		return 1;
	}
	if (strcmp(mode, "hang") == 0 || strcmp(mode, "hang-ignore-term") == 0) {
		if (strcmp(mode, "hang-ignore-term") == 0)
			signal(SIGTERM, SIG_IGN);
		fake_pidfile();
		for (;;)
			pause();
	}
	if (strcmp(mode, "garbage") == 0 || strcmp(mode, "empty") == 0) {
		FILE *f;

		if (file == NULL || (f = fopen(file, "wb")) == NULL)
			return 97;
		if (strcmp(mode, "garbage") == 0) {
			unsigned int seed = (unsigned int)getpid();

			for (int i = 0; i < 65536; i++)
				fputc(rand_r(&seed) & 0xff, f);
		}
		fclose(f);
		return 0;
	}
	if (strcmp(mode, "missing-table") == 0)
		return fake_exec_real(argc, argv, "--schema-only");
	if (strcmp(mode, "record") == 0) {
		const char *rec = getenv("PHG_FAKE_RECORD"), *pw = getenv("PGPASSWORD"), *pf;
		FILE *f, *pff;
		struct stat st;
		char line[512];

		if (rec == NULL || (f = fopen(rec, "w")) == NULL)
			return 96;
		for (int i = 0; i < argc; i++)
			fprintf(f, "argv=%s\n", argv[i]);
		fprintf(f, "PGPASSWORD=%s\n", pw != NULL ? pw : "(unset)");
		fprintf(f, "PGDATABASE=%s\n", getenv("PGDATABASE") ? getenv("PGDATABASE") : "(unset)");
		pf = getenv("PGPASSFILE");
		fprintf(f, "PGPASSFILE=%s\n", pf != NULL ? pf : "(unset)");
		/* what libpq will check and read: a regular file, 0600, one line */
		if (pf != NULL && stat(pf, &st) == 0 && (pff = fopen(pf, "r")) != NULL) {
			fprintf(f, "passfile_regular=%d\npassfile_mode=%o\n", S_ISREG(st.st_mode) ? 1 : 0,
			        (unsigned)(st.st_mode & 0777));
			if (fgets(line, sizeof(line), pff) != NULL)
				fprintf(f, "passfile=%s", line);
			fclose(pff);
		}
		fclose(f);
		return fake_exec_real(argc, argv, NULL);
	}
	fprintf(stderr, "fake pg_dump: unknown mode \"%s\"\n", mode);
	return 95;
}

/* ------------------------------------------------------------- helpers */

typedef struct run_s {
	int calls;
	int status;
	phg_err_t err;
	char path[2048];
	uint64_t size;
	char sha256[80];
	uint64_t duration_ms;
	long pid;
	uint64_t elapsed_ms; /* wall clock of the whole run */
} run_t;

static void print_run(const char *what, const run_t *r)
{
	fprintf(stderr, "%s: calls %d status %s (%d)\n  msg:    %s\n  detail: %s\n  hint:   %s\n",
	        what, r->calls, phg_err_name(r->status), r->status, r->err.msg, r->err.detail,
	        r->err.hint);
}

static void on_backup(phg_backup_job_t *job, int status, const phg_backup_result_t *res,
                      const phg_err_t *err, void *arg)
{
	run_t *r = arg;

	r->calls++;
	r->status = status;
	if (status == 0) {
		assert_non_null(res);
		assert_null(err);
		snprintf(r->path, sizeof(r->path), "%s", res->path);
		r->size = res->size;
		snprintf(r->sha256, sizeof(r->sha256), "%s", res->sha256);
		r->duration_ms = res->duration_ms;
		r->pid = res->pid;
	} else {
		assert_null(res);
		assert_non_null(err);
		r->err = *err;
	}
	phg_backup_free(job); /* inside the callback, as the engine does */
}

/* A fresh, empty directory path (not created) for one test. */
static char *new_dir(const char *name)
{
	return phg_asprintf("%s/%d-%s/nested/dir", g_tmp, ++g_seq, name);
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

/* @dir holds exactly @n entries (listed when it does not). */
static void assert_entries(const char *dir, int n)
{
	int got = count_entries(dir);

	if (got != n) {
		char *cmd = phg_asprintf("ls -la '%s' >&2", dir);

		fprintf(stderr, "expected %d entries in %s, got %d:\n", n, dir, got);
		if (system(cmd) != 0)
			fprintf(stderr, "(ls failed)\n");
		free(cmd);
	}
	assert_int_equal(got, n);
}

/* Run one backup on its own loop; the loop must close cleanly. */
static void run_backup(const phg_backup_opts_t *o, run_t *r)
{
	uv_loop_t loop;
	phg_backup_job_t *job = NULL;
	phg_err_t err;
	uint64_t t0;
	int rc;

	memset(r, 0, sizeof(*r));
	phg_err_clear(&err);
	assert_int_equal(uv_loop_init(&loop), 0);
	t0 = uv_hrtime();
	rc = phg_backup_start(&loop, o, on_backup, r, &job, &err);
	if (rc != 0)
		fprintf(stderr, "phg_backup_start: %s: %s\n", phg_err_name(rc), err.msg);
	assert_int_equal(rc, 0);
	assert_non_null(job);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	r->elapsed_ms = (uv_hrtime() - t0) / 1000000u;
	assert_int_equal(r->calls, 1);
	rc = uv_loop_close(&loop);
	if (rc != 0)
		fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
	assert_int_equal(rc, 0);
}

/* stdout of a shell command (all of it, up to 1 MiB). */
static char *cmd_output(const char *cmd)
{
	phg_buf_t b;
	char chunk[4096];
	size_t n;
	FILE *p = popen(cmd, "r");

	assert_non_null(p);
	phg_buf_init(&b, 1u << 20);
	while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
		assert_int_equal(phg_buf_add(&b, chunk, n), 0);
	assert_int_equal(pclose(p), 0);
	return phg_buf_take(&b);
}

static void assert_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL)
		fprintf(stderr, "expected to find \"%s\" in:\n%s\n", needle, hay);
	assert_non_null(strstr(hay, needle));
}

static void assert_not_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) != NULL)
		fprintf(stderr, "did not expect \"%s\" in:\n%s\n", needle, hay);
	assert_null(strstr(hay, needle));
}

static void assert_msg(const run_t *r, int status, const char *msg)
{
	if (r->status != status || strcmp(r->err.msg, msg) != 0) {
		fprintf(stderr, "expected status %s and msg \"%s\"\n", phg_err_name(status), msg);
		print_run("got", r);
	}
	assert_int_equal(r->status, status);
	assert_string_equal(r->err.msg, msg);
}

static void opts_init(phg_backup_opts_t *o, const char *dir, const phg_strv_t *tables)
{
	memset(o, 0, sizeof(*o));
	o->conninfo = g_url;
	o->dir = dir;
	o->file_stem = "plan-run1-contract";
	o->tables = tables;
	o->compress = 1;
	o->timeout_ms = 120000;
}

static char *g_jobs_v[] = {"jobs"};
static const phg_strv_t g_jobs = {g_jobs_v, 1};

/* Run a failing fake mode: @msg_fmt has one %s for the final path. */
static void run_fake(const char *mode, const phg_strv_t *tables, run_t *r, char **dir_out)
{
	phg_backup_opts_t o;
	char *dir = new_dir(mode);

	opts_init(&o, dir, tables);
	o.timeout_ms = 60000;
	setenv("PHG_PG_DUMP", g_exe, 1);
	setenv("PHG_FAKE_PG_DUMP_MODE", mode, 1);
	run_backup(&o, r);
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	unsetenv("PHG_PG_DUMP");
	*dir_out = dir;
}

/* The path the job would have used: DIR/STEM-<stamp>.dump, found from the
 * message (the stamp is not known in advance). */
static void assert_failed_file_msg(const run_t *r, const char *dir, const char *prefix,
                                   const char *suffix)
{
	char expect_start[2048];
	size_t pl, sl, ml = strlen(r->err.msg);

	snprintf(expect_start, sizeof(expect_start), "%s\"%s/plan-run1-contract-", prefix, dir);
	pl = strlen(expect_start);
	sl = strlen(suffix);
	if (r->status != PHG_ECHILD || ml < pl + sl || strncmp(r->err.msg, expect_start, pl) != 0 ||
	    strcmp(r->err.msg + ml - sl, suffix) != 0) {
		fprintf(stderr, "expected PHG_ECHILD and a msg like %s...%s\n", expect_start, suffix);
		print_run("got", r);
	}
	assert_int_equal(r->status, PHG_ECHILD);
	assert_true(ml >= pl + sl);
	assert_memory_equal(r->err.msg, expect_start, pl);
	assert_string_equal(r->err.msg + ml - sl, suffix);
	/* the stamp: YYYYmmddTHHMMSS.mmmZ.dump" */
	assert_int_equal(ml - pl - sl, strlen("20240101T000000.000Z.dump"));
}

static long read_pidfile(const char *pf)
{
	FILE *f = fopen(pf, "r");
	char line[64] = "";
	char *end;
	long pid;

	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	pid = strtol(line, &end, 10);
	assert_true(pid > 0);
	return pid;
}

/* ------------------------------------------------------------ fixtures */

static int group_setup(void **state)
{
	const char *tmpdir = getenv("TMPDIR");
	char *restore;
	size_t sz = sizeof(g_exe);

	(void)state;
	phg_log_set_level(PHG_LOG_WARN);
	if (pgtest_env_load() != 0)
		return -1;
	if (uv_exepath(g_exe, &sz) != 0)
		return -1;
	snprintf(g_tmp, sizeof(g_tmp), "%s/phg-backup-test.XXXXXX",
	         tmpdir != NULL && tmpdir[0] != '\0' ? tmpdir : "/tmp");
	if (mkdtemp(g_tmp) == NULL)
		return -1;
	g_url = pgtest_create_db(TEST_DB);
	if (g_url == NULL)
		return -1;
	if (pgtest_exec(g_url,
	                "CREATE TABLE jobs (id int PRIMARY KEY, status text NOT NULL);"
	                "INSERT INTO jobs SELECT g, 'status-' || g FROM generate_series(1, 1000) g;"
	                "CREATE TABLE other (id int PRIMARY KEY, v text);"
	                "INSERT INTO other SELECT g, 'v' FROM generate_series(1, 10) g;"
	                "CREATE SCHEMA app;"
	                "CREATE TABLE app.jobs (id int PRIMARY KEY, note text);"
	                "INSERT INTO app.jobs SELECT g, 'n' FROM generate_series(1, 7) g;") != 0)
		return -1;
	restore = pgtest_create_db(RESTORE_DB);
	if (restore == NULL)
		return -1;
	free(restore);
	return 0;
}

static int group_teardown(void **state)
{
	char *cmd;

	(void)state;
	pgtest_drop_db(RESTORE_DB);
	pgtest_drop_db(TEST_DB);
	free(g_url);
	if (g_tmp[0] != '\0' && strncmp(g_tmp, "/tmp/phg-backup-test.", 21) == 0) {
		cmd = phg_asprintf("rm -rf '%s'", g_tmp);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", g_tmp);
		free(cmd);
	}
	return 0;
}

/* --------------------------------------------------------------- tests */

/* tables = [jobs]: a verified file whose size and sha256 are right, that
 * lists jobs and not the other tables, and restores into a fresh database
 * with every row. */
static void test_backup_tables_and_restore(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	struct stat st;
	char *dir = new_dir("tables"), *out, *cmd, *restore_url, *n, *partial;
	const char *base;

	(void)state;
	opts_init(&o, dir, &g_jobs);
	run_backup(&o, &r);
	if (r.status != 0)
		print_run("backup", &r);
	assert_int_equal(r.status, 0);

	/* DIR/STEM-YYYYmmddTHHMMSS.mmmZ.dump, in the directory created with its parents */
	assert_memory_equal(r.path, dir, strlen(dir));
	base = r.path + strlen(dir);
	assert_memory_equal(base, "/plan-run1-contract-", 20);
	base += 20;
	assert_int_equal(strlen(base), strlen("20240101T000000.000Z.dump"));
	for (int i = 0; i < 19; i++)
		if (i != 8 && i != 15)
			assert_true(base[i] >= '0' && base[i] <= '9');
	assert_int_equal(base[8], 'T');
	assert_int_equal(base[15], '.');
	assert_string_equal(base + 19, "Z.dump");
	assert_entries(dir, 1); /* no .partial left */
	partial = phg_asprintf("%s.partial", r.path);
	assert_int_not_equal(access(partial, F_OK), 0);
	free(partial);

	assert_int_equal(stat(r.path, &st), 0);
	assert_true(st.st_size > 0);
	assert_int_equal((uint64_t)st.st_size, r.size);
	assert_true(r.pid > 0);

	cmd = phg_asprintf("sha256sum '%s'", r.path);
	out = cmd_output(cmd);
	free(cmd);
	assert_int_equal(strlen(r.sha256), 7 + 64);
	assert_memory_equal(r.sha256, "sha256:", 7);
	assert_memory_equal(out, r.sha256 + 7, 64);
	free(out);

	cmd = phg_asprintf("pg_restore --list '%s'", r.path);
	out = cmd_output(cmd);
	free(cmd);
	assert_contains(out, " TABLE DATA public jobs ");
	assert_not_contains(out, " TABLE DATA public other ");
	assert_not_contains(out, " TABLE DATA app jobs ");
	free(out);

	/* the restore recipe: pg_restore -d URL FILE into a fresh database */
	restore_url = pgtest_create_db(RESTORE_DB);
	assert_non_null(restore_url);
	cmd = phg_asprintf("pg_restore --exit-on-error -d '%s' '%s'", restore_url, r.path);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	n = pgtest_scalar(restore_url, "SELECT count(*) || ':' || sum(id) || ':' || "
	                               "count(*) FILTER (WHERE status = 'status-' || id) FROM jobs");
	assert_non_null(n);
	assert_string_equal(n, "1000:500500:1000");
	free(n);
	n = pgtest_scalar(restore_url, "SELECT count(*) FROM pg_tables WHERE tablename = 'other'");
	assert_string_equal(n, "0");
	free(n);
	free(restore_url);
	free(dir);
}

/* tables = NULL: the whole database, every table in the file. */
static void test_backup_whole_database(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	char *dir = new_dir("database"), *out, *cmd;

	(void)state;
	opts_init(&o, dir, NULL);
	o.compress = 0;
	run_backup(&o, &r);
	if (r.status != 0)
		print_run("backup", &r);
	assert_int_equal(r.status, 0);
	cmd = phg_asprintf("pg_restore --list '%s'", r.path);
	out = cmd_output(cmd);
	free(cmd);
	assert_contains(out, " TABLE DATA public jobs ");
	assert_contains(out, " TABLE DATA public other ");
	assert_contains(out, " TABLE DATA app jobs ");
	free(out);
	assert_entries(dir, 1);
	free(dir);
}

/* A schema-qualified table: exactly that one, not its namesake. */
static void test_backup_qualified_table(void **state)
{
	static char *v[] = {"app.jobs", "other"};
	static const phg_strv_t tables = {v, 2};
	phg_backup_opts_t o;
	run_t r;
	char *dir = new_dir("qualified"), *out, *cmd;

	(void)state;
	opts_init(&o, dir, &tables);
	run_backup(&o, &r);
	if (r.status != 0)
		print_run("backup", &r);
	assert_int_equal(r.status, 0);
	cmd = phg_asprintf("pg_restore --list '%s'", r.path);
	out = cmd_output(cmd);
	free(cmd);
	assert_contains(out, " TABLE DATA app jobs ");
	assert_contains(out, " TABLE DATA public other ");
	assert_not_contains(out, " TABLE DATA public jobs ");
	free(out);
	free(dir);
}

/* The password of the conninfo reaches pg_dump in PGPASSWORD, never argv. */
static void test_password_not_in_argv(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	char *dir = new_dir("record"), *rec = phg_asprintf("%s/%d-record.txt", g_tmp, ++g_seq);
	char *conninfo = phg_asprintf("%s&password=%s", g_url, SECRET);
	char *want, *out, *cmd;

	(void)state;
	assert_non_null(strchr(g_url, '?')); /* the harness gives a URI with parameters */
	opts_init(&o, dir, &g_jobs);
	o.conninfo = conninfo;
	setenv("PHG_PG_DUMP", g_exe, 1);
	setenv("PHG_FAKE_PG_DUMP_MODE", "record", 1);
	setenv("PHG_FAKE_RECORD", rec, 1);
	run_backup(&o, &r);
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	unsetenv("PHG_FAKE_RECORD");
	unsetenv("PHG_PG_DUMP");
	if (r.status != 0)
		print_run("backup", &r);
	assert_int_equal(r.status, 0);

	cmd = phg_asprintf("cat '%s'", rec);
	out = cmd_output(cmd);
	free(cmd);
	/* not in the environment (/proc/PID/environ): in a password file that
	 * is never on disk, 0600, given to pg_dump alone */
	assert_not_contains(out, "PGPASSWORD=" SECRET);
	assert_contains(out, "PGPASSWORD=(unset)\n");
	assert_contains(out, "PGPASSFILE=/proc/self/fd/3\n");
	assert_contains(out, "passfile_regular=1\npassfile_mode=600\n");
	assert_contains(out, "passfile=*:*:*:*:" SECRET "\n");
	assert_contains(out, "PGDATABASE=" TEST_DB "\n");
	/* ... argv has no trace of it, nor of any connection parameter */
	{
		char *p = out, *eol;
		int argi = 0;

		for (; (eol = strchr(p, '\n')) != NULL; p = eol + 1) {
			if (strncmp(p, "argv=", 5) != 0)
				continue;
			*eol = '\0';
			assert_not_contains(p, SECRET);
			assert_not_contains(p, "password=");
			if (argi++ > 0) { /* argv[0] is this binary's path */
				assert_not_contains(p, "host");
				assert_not_contains(p, "port");
				assert_not_contains(p, "user");
				assert_not_contains(p, "=" TEST_DB);
			}
			*eol = '\n';
		}
		assert_int_equal(argi, 7); /* pg_dump + 4 options + -t jobs */
	}
	assert_contains(out, "argv=--no-password\n");
	assert_contains(out, "argv=--format=custom\n");
	assert_contains(out, "argv=--compress=1\n");
	want = phg_asprintf("argv=--file=%s.partial\n", r.path);
	assert_contains(out, want);
	free(want);
	assert_contains(out, "argv=-t\nargv=\"jobs\"\n");
	free(out);

	/* an inherited PGPASSWORD takes the same way, ":" and "\\" escaped */
	o.conninfo = g_url;
	setenv("PGPASSWORD", "pw:with\\odd", 1);
	setenv("PHG_PG_DUMP", g_exe, 1);
	setenv("PHG_FAKE_PG_DUMP_MODE", "record", 1);
	setenv("PHG_FAKE_RECORD", rec, 1);
	run_backup(&o, &r);
	unsetenv("PGPASSWORD");
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	unsetenv("PHG_FAKE_RECORD");
	unsetenv("PHG_PG_DUMP");
	assert_int_equal(r.status, 0);
	cmd = phg_asprintf("cat '%s'", rec);
	out = cmd_output(cmd);
	free(cmd);
	assert_contains(out, "PGPASSWORD=(unset)\n");
	assert_contains(out, "passfile=*:*:*:*:pw\\:with\\\\odd\n");
	free(out);
	free(conninfo);
	free(rec);
	free(dir);
}

static void test_fake_fail(void **state)
{
	run_t r;
	char *dir;

	(void)state;
	run_fake("fail", &g_jobs, &r, &dir);
	assert_msg(&r, PHG_ECHILD, "pg_dump failed with exit code 1");
	assert_string_equal(r.err.detail, "pg_dump: error: connection to server failed: FATAL: boom");
	assert_entries(dir, 0);
	free(dir);
}

/* Lots of stderr: only its last lines reach the detail, whole lines. */
static void test_fake_fail_noisy(void **state)
{
	run_t r;
	char *dir;
	const char *last = "pg_dump: error: query failed: the real cause";
	size_t n;

	(void)state;
	run_fake("fail-noisy", &g_jobs, &r, &dir);
	assert_msg(&r, PHG_ECHILD, "pg_dump failed with exit code 1");
	n = strlen(r.err.detail);
	assert_true(n > 500 && n < sizeof(r.err.detail));
	assert_memory_equal(r.err.detail, "...\npg_dump: reading noise ", 26);
	assert_true(n >= strlen(last));
	assert_string_equal(r.err.detail + n - strlen(last), last);
	assert_contains(r.err.detail, "noise 400 of 400 ....");
	assert_not_contains(r.err.detail, "noise 1 of 400");
	assert_entries(dir, 0);
	free(dir);
}

static void test_fake_garbage(void **state)
{
	run_t r;
	char *dir;

	(void)state;
	run_fake("garbage", &g_jobs, &r, &dir);
	assert_failed_file_msg(&r, dir, "pg_restore --list cannot read backup file ", "\"");
	assert_contains(r.err.detail, "pg_restore failed with exit code 1.");
	assert_contains(r.err.detail, "pg_restore: error:");
	assert_entries(dir, 0);
	free(dir);
}

static void test_fake_empty(void **state)
{
	run_t r;
	char *dir;

	(void)state;
	run_fake("empty", &g_jobs, &r, &dir);
	assert_failed_file_msg(&r, dir, "backup file ", "\" is empty");
	assert_entries(dir, 0);
	free(dir);
}

static void test_fake_missing_table(void **state)
{
	run_t r;
	char *dir;

	(void)state;
	run_fake("missing-table", &g_jobs, &r, &dir);
	assert_failed_file_msg(&r, dir, "backup file ", "\" does not contain table \"jobs\"");
	assert_entries(dir, 0);
	free(dir);
}

static void run_hang(const char *mode, int expect_sigkill)
{
	phg_backup_opts_t o;
	run_t r;
	char *dir = new_dir(mode), *pf = phg_asprintf("%s/%d-pid", g_tmp, ++g_seq);
	long pid;

	opts_init(&o, dir, &g_jobs);
	o.timeout_ms = 500;
	o.kill_grace_ms = 500;
	setenv("PHG_PG_DUMP", g_exe, 1);
	setenv("PHG_FAKE_PG_DUMP_MODE", mode, 1);
	setenv("PHG_FAKE_PIDFILE", pf, 1);
	run_backup(&o, &r);
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	unsetenv("PHG_FAKE_PIDFILE");
	unsetenv("PHG_PG_DUMP");
	assert_msg(&r, PHG_ECHILD, "pg_dump timed out after 500 ms and was stopped");
	if (expect_sigkill) {
		assert_contains(r.err.detail, "did not exit on SIGTERM and was killed with SIGKILL");
		assert_true(r.elapsed_ms >= 1000);
	} else {
		assert_not_contains(r.err.detail, "SIGKILL");
	}
	assert_true(r.elapsed_ms >= 500);
	assert_true(r.elapsed_ms < 2500);
	pid = read_pidfile(pf);
	assert_int_equal(kill((pid_t)pid, 0), -1); /* gone, and reaped */
	assert_int_equal(errno, ESRCH);
	assert_entries(dir, 0);
	free(pf);
	free(dir);
}

static void test_fake_hang_timeout(void **state)
{
	(void)state;
	run_hang("hang", 0);
}

static void test_fake_hang_ignore_term(void **state)
{
	(void)state;
	run_hang("hang-ignore-term", 1);
}

static void test_missing_binaries(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	char *dir = new_dir("nobin");

	(void)state;
	opts_init(&o, dir, &g_jobs);
	setenv("PHG_PG_DUMP", "/nonexistent/bin/pg_dump", 1);
	run_backup(&o, &r);
	unsetenv("PHG_PG_DUMP");
	assert_msg(&r, PHG_ECHILD, "pg_dump program \"/nonexistent/bin/pg_dump\" was not found");
	assert_contains(r.err.hint, "PHG_PG_DUMP");
	assert_entries(dir, 0);

	setenv("PHG_PG_RESTORE", "no-such-pg_restore-here", 1);
	run_backup(&o, &r);
	unsetenv("PHG_PG_RESTORE");
	assert_msg(&r, PHG_ECHILD, "pg_restore program \"no-such-pg_restore-here\" was not found");
	assert_contains(r.err.hint, "PHG_PG_RESTORE");
	assert_entries(dir, 0);
	free(dir);
}

/* A directory under a regular file cannot be created, even by root. */
static void test_bad_directory(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	char *file = phg_asprintf("%s/%d-plainfile", g_tmp, ++g_seq);
	char *dir = phg_asprintf("%s/sub/dir", file), *want;
	FILE *f = fopen(file, "w");

	(void)state;
	assert_non_null(f);
	fclose(f);
	opts_init(&o, dir, &g_jobs);
	run_backup(&o, &r);
	want = phg_asprintf("could not create backup directory \"%s\": %s", dir,
	                    uv_strerror(UV_ENOTDIR));
	assert_msg(&r, PHG_EIO, want);
	free(want);

	/* the directory itself is the regular file */
	opts_init(&o, file, &g_jobs);
	run_backup(&o, &r);
	want = phg_asprintf("could not write to backup directory \"%s\": %s", file,
	                    uv_strerror(UV_ENOTDIR));
	assert_msg(&r, PHG_EIO, want);
	free(want);
	free(dir);
	free(file);
}

/* Canceling kills pg_dump, removes the partial file, never calls back, and
 * leaves no handle behind. */
static void on_cancel_timer(uv_timer_t *t)
{
	phg_backup_cancel(t->data);
	uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel(void **state)
{
	phg_backup_opts_t o;
	run_t r;
	uv_loop_t loop;
	uv_timer_t t;
	phg_backup_job_t *job = NULL;
	phg_err_t err;
	char *dir = new_dir("cancel"), *pf = phg_asprintf("%s/%d-pid", g_tmp, ++g_seq);
	uint64_t t0;
	long pid;

	(void)state;
	memset(&r, 0, sizeof(r));
	phg_err_clear(&err);
	opts_init(&o, dir, &g_jobs);
	o.kill_grace_ms = 300;
	setenv("PHG_PG_DUMP", g_exe, 1);
	setenv("PHG_FAKE_PG_DUMP_MODE", "hang-ignore-term", 1);
	setenv("PHG_FAKE_PIDFILE", pf, 1);
	assert_int_equal(uv_loop_init(&loop), 0);
	t0 = uv_hrtime();
	assert_int_equal(phg_backup_start(&loop, &o, on_backup, &r, &job, &err), 0);
	unsetenv("PHG_FAKE_PG_DUMP_MODE");
	unsetenv("PHG_FAKE_PIDFILE");
	unsetenv("PHG_PG_DUMP");
	assert_int_equal(uv_timer_init(&loop, &t), 0);
	t.data = job;
	assert_int_equal(uv_timer_start(&t, on_cancel_timer, 400, 0), 0);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_true((uv_hrtime() - t0) / 1000000u < 3000);
	assert_int_equal(r.calls, 0);
	assert_int_equal(uv_loop_close(&loop), 0);
	pid = read_pidfile(pf);
	assert_int_equal(kill((pid_t)pid, 0), -1);
	assert_int_equal(errno, ESRCH);
	assert_entries(dir, 0);
	free(pf);
	free(dir);
}

/* Bad options fail at once, and the callback never runs. */
static void test_bad_options(void **state)
{
	static char *v[] = {"a.b.c"};
	static const phg_strv_t bad = {v, 1};
	phg_backup_opts_t o;
	run_t r;
	uv_loop_t loop;
	phg_backup_job_t *job = NULL;
	phg_err_t err;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(uv_loop_init(&loop), 0);

	opts_init(&o, "/tmp", &bad);
	phg_err_clear(&err);
	assert_int_equal(phg_backup_start(&loop, &o, on_backup, &r, &job, &err), PHG_EINVAL);
	assert_null(job);

	opts_init(&o, "/tmp", NULL);
	o.compress = 10;
	phg_err_clear(&err);
	assert_int_equal(phg_backup_start(&loop, &o, on_backup, &r, &job, &err), PHG_EINVAL);

	opts_init(&o, "/tmp", NULL);
	o.conninfo = "host=x password=" SECRET " oops";
	phg_err_clear(&err);
	assert_int_equal(phg_backup_start(&loop, &o, on_backup, &r, &job, &err), PHG_EINVAL);
	assert_string_equal(err.msg, "invalid connection string");
	assert_not_contains(err.msg, SECRET);
	assert_not_contains(err.detail, SECRET);
	assert_not_contains(err.hint, SECRET);

	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(r.calls, 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(int argc, char **argv)
{
	const char *mode = getenv("PHG_FAKE_PG_DUMP_MODE");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backup_tables_and_restore),
	    cmocka_unit_test(test_backup_whole_database),
	    cmocka_unit_test(test_backup_qualified_table),
	    cmocka_unit_test(test_password_not_in_argv),
	    cmocka_unit_test(test_fake_fail),
	    cmocka_unit_test(test_fake_fail_noisy),
	    cmocka_unit_test(test_fake_garbage),
	    cmocka_unit_test(test_fake_empty),
	    cmocka_unit_test(test_fake_missing_table),
	    cmocka_unit_test(test_fake_hang_timeout),
	    cmocka_unit_test(test_fake_hang_ignore_term),
	    cmocka_unit_test(test_missing_binaries),
	    cmocka_unit_test(test_bad_directory),
	    cmocka_unit_test(test_cancel),
	    cmocka_unit_test(test_bad_options),
	};

	if (mode != NULL && mode[0] != '\0')
		return fake_pg_dump(mode, argc, argv);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
