/*
 * test_pgtest.c - the C side of the harness: tests/support/pgtest gives a
 * test its own database in the throwaway cluster.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgtest.h"

static char *url;
static char dbname[64];

static int setup(void **state)
{
	(void)state;
	if (pgtest_env_load() != 0)
		return -1;
	snprintf(dbname, sizeof(dbname), "t_pgtest_%ld", (long)getpid());
	url = pgtest_create_db(dbname);
	return url == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	(void)state;
	pgtest_drop_db(dbname);
	free(url);
	url = NULL;
	return 0;
}

static void test_env_points_at_throwaway_cluster(void **state)
{
	const char *host = getenv("PGHOST");
	const char *dir = getenv("PHG_TEST_PGDIR");
	char *sock;

	(void)state;
	assert_non_null(host);
	assert_non_null(dir);
	assert_string_equal(host, dir);
	assert_non_null(getenv("PHG_TEST_PGBIN"));
	assert_non_null(strstr(url, "postgresql:///t_pgtest_"));
	assert_non_null(strstr(url, "&user=postgres"));
	sock = pgtest_scalar(url, "SHOW unix_socket_directories");
	assert_non_null(sock);
	assert_string_equal(sock, host);
	free(sock);
}

static void test_exec_and_scalar(void **state)
{
	char *v;

	(void)state;
	assert_int_equal(pgtest_exec(url, "CREATE TABLE jobs (id int PRIMARY KEY, "
					  "status text);"
					  "INSERT INTO jobs VALUES (1, 'queued'), "
					  "(2, NULL)"),
			 0);
	v = pgtest_scalar(url, "SELECT count(*) FROM jobs");
	assert_non_null(v);
	assert_string_equal(v, "2");
	free(v);
	v = pgtest_scalar(url, "SELECT current_database()");
	assert_non_null(v);
	assert_string_equal(v, dbname);
	free(v);
	v = pgtest_scalar(url, "SELECT status FROM jobs WHERE id = 1");
	assert_non_null(v);
	assert_string_equal(v, "queued");
	free(v);
	/* SQL NULL, no row and errors are all NULL. */
	assert_null(pgtest_scalar(url, "SELECT status FROM jobs WHERE id = 2"));
	assert_null(pgtest_scalar(url, "SELECT status FROM jobs WHERE id = 3"));
	assert_null(pgtest_scalar(url, "SELECT * FROM no_such_table"));
	assert_int_equal(pgtest_exec(url, "INSERT INTO jobs VALUES (1, 'dup')"), -1);
	v = pgtest_scalar(url, "SELECT count(*) FROM jobs");
	assert_string_equal(v, "2");
	free(v);
}

static void test_create_db_starts_fresh(void **state)
{
	char *again, *v;

	(void)state;
	assert_int_equal(pgtest_exec(url, "CREATE TABLE IF NOT EXISTS left_over (x int)"),
			 0);
	again = pgtest_create_db(dbname);
	assert_non_null(again);
	assert_string_equal(again, url);
	v = pgtest_scalar(again, "SELECT count(*) FROM pg_class "
				 "WHERE relname = 'left_over'");
	assert_string_equal(v, "0");
	free(v);
	free(again);
}

static void test_drop_db(void **state)
{
	char name[64], *u, *v;

	(void)state;
	snprintf(name, sizeof(name), "t_pgtest_drop_%ld", (long)getpid());
	u = pgtest_create_db(name);
	assert_non_null(u);
	pgtest_drop_db(name);
	/* The maintenance database; host, port, user from the loaded env. */
	v = pgtest_scalar("dbname=postgres", "SELECT count(*) FROM pg_database "
					     "WHERE datname LIKE 't_pgtest_drop_%'");
	assert_non_null(v);
	assert_string_equal(v, "0");
	free(v);
	free(u);
	pgtest_drop_db(name); /* dropping again is fine */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_env_points_at_throwaway_cluster),
		cmocka_unit_test(test_exec_and_scalar),
		cmocka_unit_test(test_create_db_starts_fresh),
		cmocka_unit_test(test_drop_db),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
