/*
 * pgtest.h - a database for the C integration tests.
 *
 * ctest runs every tests/integration/test_*.c with PHG_TEST_STATE naming the
 * state file of the throwaway cluster that tests/harness/pg.sh started (the
 * `pg` fixture).  These helpers are blocking libpq: fine in test code, never
 * in phasegate itself.
 *
 *	char *url;
 *
 *	assert_int_equal(pgtest_env_load(), 0);
 *	url = pgtest_create_db("t_runner");
 *	assert_non_null(url);
 *	assert_int_equal(pgtest_exec(url, "CREATE TABLE t (id int)"), 0);
 *	...
 *	pgtest_drop_db("t_runner");
 *	free(url);
 *
 * Every function prints what went wrong to stderr.
 */
#ifndef PHG_PGTEST_H
#define PHG_PGTEST_H

/*
 * Read $PHG_TEST_STATE (lines `export NAME=VALUE`) and setenv() each
 * variable: PGHOST, PGPORT, PGUSER, PHG_TEST_PGDIR, PHG_TEST_PGBIN...  Also
 * unsets the libpq variables that would point elsewhere (PGDATABASE,
 * PGSERVICE, PGHOSTADDR, PGOPTIONS, PGPASSWORD, PGSSLMODE) and puts
 * PHG_TEST_PGBIN first in PATH, so a spawned pg_dump matches the server.
 * Returns 0, or -1 if the variable or the file is missing or malformed.
 * Idempotent; pgtest_create_db() and pgtest_drop_db() call it when needed.
 */
int pgtest_env_load(void);

/*
 * Create a fresh, empty database named exactly @name (dropped first if it
 * exists, with FORCE, so leftovers of a crashed run never get in the way).
 * Pick a name unique to the test, e.g. "t_runner_resume".
 * Returns a conninfo URI "postgresql:///NAME?host=...&port=...&user=postgres"
 * that the caller frees, or NULL on error.
 */
char *pgtest_create_db(const char *name);

/* Drop database @name if it exists (terminating its sessions). */
void pgtest_drop_db(const char *name);

/*
 * Run @sql (one or more statements) on a new connection to @conninfo.
 * Returns 0, or -1 after printing the statement and the server's error.
 */
int pgtest_exec(const char *conninfo, const char *sql);

/*
 * Run the query @sql and return the first column of its first row as a
 * string the caller frees.  Returns NULL for SQL NULL, and also (after
 * printing why) on error or when the query returns no row.
 */
char *pgtest_scalar(const char *conninfo, const char *sql);

#endif /* PHG_PGTEST_H */
