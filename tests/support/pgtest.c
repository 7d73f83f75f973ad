/*
 * pgtest.c - blocking libpq helpers that give a C test its own database in
 * the throwaway cluster of tests/harness/pg.sh.
 */
#include "pgtest.h"

#include <libpq-fe.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libpq's maximum identifier length minus one (NAMEDATALEN - 1). */
#define PGTEST_MAX_NAME 63

static int env_loaded;

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL) {
		fputs("pgtest: out of memory\n", stderr);
		abort();
	}
	return p;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	char *s;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		fputs("pgtest: bad format\n", stderr);
		abort();
	}
	s = xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

/*
 * Decode one shell word as pg.sh writes it (printf %q, or quoted): plain
 * characters, backslash escapes, '...' and "..." .  Stops at unquoted
 * whitespace or the end of the line.  Returns 0, or -1 if @out is too small
 * or a quote is not closed.
 */
static int shell_word(const char *s, char *out, size_t cap)
{
	size_t n = 0;
	char quote = 0;
	char c;

	for (; *s != '\0' && *s != '\n'; s++) {
		c = *s;
		if (quote == '\'') {
			if (c == '\'') {
				quote = 0;
				continue;
			}
		} else if (quote == '"') {
			if (c == '"') {
				quote = 0;
				continue;
			}
			if (c == '\\' && s[1] != '\0' && strchr("$`\"\\", s[1]) != NULL)
				c = *++s;
		} else if (c == '\'' || c == '"') {
			quote = c;
			continue;
		} else if (c == '\\' && s[1] != '\0' && s[1] != '\n') {
			c = *++s;
		} else if (c == ' ' || c == '\t' || c == '\r') {
			break;
		}
		if (n + 1 >= cap)
			return -1;
		out[n++] = c;
	}
	if (quote != 0)
		return -1;
	out[n] = '\0';
	return 0;
}

/* Parse "export NAME=VALUE" (the "export " is optional); setenv it.
 * Blank lines and comments are skipped.  Returns 0 or -1. */
static int load_line(const char *line)
{
	char name[128], value[4096];
	const char *p = line, *eq;
	size_t len;

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0' || *p == '\n' || *p == '#')
		return 0;
	if (strncmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
		p += 6;
		while (*p == ' ' || *p == '\t')
			p++;
	}
	eq = strchr(p, '=');
	if (eq == NULL || eq == p)
		return -1;
	len = (size_t)(eq - p);
	if (len >= sizeof(name))
		return -1;
	memcpy(name, p, len);
	name[len] = '\0';
	if (strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			 "0123456789_") != len ||
	    (name[0] >= '0' && name[0] <= '9'))
		return -1;
	if (shell_word(eq + 1, value, sizeof(value)) != 0)
		return -1;
	if (setenv(name, value, 1) != 0)
		return -1;
	return 0;
}

int pgtest_env_load(void)
{
	static const char *const foreign[] = {"PGDATABASE", "PGSERVICE",
					      "PGHOSTADDR", "PGOPTIONS",
					      "PGPASSWORD", "PGSSLMODE"};
	const char *path = getenv("PHG_TEST_STATE");
	const char *bin, *old_path;
	char line[8192];
	unsigned lineno = 0;
	size_t i;
	FILE *f;

	if (env_loaded)
		return 0;
	if (path == NULL || path[0] == '\0') {
		fputs("pgtest: PHG_TEST_STATE is not set; run this test through "
		      "ctest (it needs the `pg` fixture), or start a cluster with "
		      "tests/harness/pg.sh start STATE_FILE and export "
		      "PHG_TEST_STATE=STATE_FILE\n",
		      stderr);
		return -1;
	}
	f = fopen(path, "r");
	if (f == NULL) {
		fprintf(stderr, "pgtest: cannot open state file \"%s\": %s\n", path,
			strerror(errno));
		return -1;
	}
	for (i = 0; i < sizeof(foreign) / sizeof(foreign[0]); i++)
		unsetenv(foreign[i]);
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		if (load_line(line) != 0) {
			fprintf(stderr, "pgtest: %s:%u: cannot parse \"%.*s\"\n", path,
				lineno, (int)strcspn(line, "\n"), line);
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	if (getenv("PGHOST") == NULL || getenv("PGPORT") == NULL) {
		fprintf(stderr, "pgtest: state file \"%s\" sets no PGHOST/PGPORT\n",
			path);
		return -1;
	}
	bin = getenv("PHG_TEST_PGBIN");
	if (bin != NULL && bin[0] != '\0') {
		char *p;

		old_path = getenv("PATH");
		p = xasprintf("%s%s%s", bin, old_path ? ":" : "",
			      old_path ? old_path : "");
		setenv("PATH", p, 1);
		free(p);
	}
	env_loaded = 1;
	return 0;
}

static PGconn *connect_to(const char *conninfo)
{
	PGconn *conn = PQconnectdb(conninfo);

	if (conn == NULL) {
		fputs("pgtest: out of memory\n", stderr);
		return NULL;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "pgtest: cannot connect to \"%s\": %s", conninfo,
			PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* The maintenance database, host/port/user from the environment; notices
 * such as "database ... does not exist, skipping" are not shown. */
static PGconn *connect_admin(void)
{
	return connect_to("dbname=postgres connect_timeout=10 "
			  "options='-c client_min_messages=warning'");
}

static void print_error(const char *sql, PGconn *conn, const PGresult *res)
{
	const char *sqlstate = NULL, *msg;

	if (res != NULL) {
		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		msg = PQresultErrorMessage(res);
		if (msg[0] == '\0')
			msg = PQresStatus(PQresultStatus(res));
	} else {
		msg = PQerrorMessage(conn);
	}
	fprintf(stderr, "pgtest: SQL failed%s%s%s: %s\n  %s%s", sqlstate ? " (" : "",
		sqlstate ? sqlstate : "", sqlstate ? ")" : "", sql, msg,
		msg[0] != '\0' && msg[strlen(msg) - 1] == '\n' ? "" : "\n");
}

/* Run @sql on @conn: 0 or -1 (printed). */
static int exec_on(PGconn *conn, const char *sql)
{
	PGresult *res = PQexec(conn, sql);
	int rc = 0;

	switch (PQresultStatus(res)) {
	case PGRES_COMMAND_OK:
	case PGRES_TUPLES_OK:
	case PGRES_EMPTY_QUERY:
		break;
	default:
		print_error(sql, conn, res);
		rc = -1;
	}
	PQclear(res);
	return rc;
}

static int check_name(const char *name)
{
	if (name == NULL || name[0] == '\0' || strlen(name) > PGTEST_MAX_NAME) {
		fprintf(stderr, "pgtest: bad database name \"%s\" (1 to %d bytes)\n",
			name ? name : "(null)", PGTEST_MAX_NAME);
		return -1;
	}
	return 0;
}

/* DROP DATABASE IF EXISTS (FORCE), then CREATE DATABASE when @create. */
static int recreate(const char *name, int create)
{
	PGconn *conn;
	char *ident, *sql;
	int rc;

	if (check_name(name) != 0 || pgtest_env_load() != 0)
		return -1;
	conn = connect_admin();
	if (conn == NULL)
		return -1;
	ident = PQescapeIdentifier(conn, name, strlen(name));
	if (ident == NULL) {
		fprintf(stderr, "pgtest: cannot quote \"%s\": %s", name,
			PQerrorMessage(conn));
		PQfinish(conn);
		return -1;
	}
	sql = xasprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", ident);
	rc = exec_on(conn, sql);
	free(sql);
	if (rc == 0 && create) {
		sql = xasprintf("CREATE DATABASE %s", ident);
		rc = exec_on(conn, sql);
		free(sql);
	}
	PQfreemem(ident);
	PQfinish(conn);
	return rc;
}

/* Percent-encode @s for a URI; '/' is kept when @keep_slash. */
static char *uri_encode(const char *s, int keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = xmalloc(strlen(s) * 3 + 1), *o = out;
	unsigned char c;

	for (; *s != '\0'; s++) {
		c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
		    c == '~' || (keep_slash && c == '/')) {
			*o++ = (char)c;
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return out;
}

char *pgtest_create_db(const char *name)
{
	char *edb, *ehost, *uri;

	if (recreate(name, 1) != 0) {
		fprintf(stderr, "pgtest: could not create database \"%s\"\n",
			name ? name : "(null)");
		return NULL;
	}
	edb = uri_encode(name, 0);
	ehost = uri_encode(getenv("PGHOST"), 1);
	uri = xasprintf("postgresql:///%s?host=%s&port=%s&user=postgres", edb,
			ehost, getenv("PGPORT"));
	free(edb);
	free(ehost);
	return uri;
}

void pgtest_drop_db(const char *name)
{
	if (recreate(name, 0) != 0)
		fprintf(stderr, "pgtest: could not drop database \"%s\"\n",
			name ? name : "(null)");
}

int pgtest_exec(const char *conninfo, const char *sql)
{
	PGconn *conn = connect_to(conninfo);
	int rc;

	if (conn == NULL)
		return -1;
	rc = exec_on(conn, sql);
	PQfinish(conn);
	return rc;
}

char *pgtest_scalar(const char *conninfo, const char *sql)
{
	PGconn *conn = connect_to(conninfo);
	PGresult *res;
	char *val = NULL;

	if (conn == NULL)
		return NULL;
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		print_error(sql, conn, res);
	} else if (PQntuples(res) < 1 || PQnfields(res) < 1) {
		fprintf(stderr, "pgtest: query returned no row: %s\n", sql);
	} else if (!PQgetisnull(res, 0, 0)) {
		const char *v = PQgetvalue(res, 0, 0);
		size_t n = strlen(v);

		val = xmalloc(n + 1);
		memcpy(val, v, n + 1);
	}
	PQclear(res);
	PQfinish(conn);
	return val;
}
