/*
 * fuzz_sql.c - libFuzzer target: the SQL validator (sqlparse.c) on any
 * string: the syntax check of a fragment in each of its places (with the
 * offset it reports inside the fragment) and the lint of statements.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sqlparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *sql, msg[PHG_SQL_MSG_MAX];
	size_t at;
	phg_lint_t l;

	if (size > 16384)
		return 0;
	sql = malloc(size + 1);
	if (sql == NULL)
		return 0;
	memcpy(sql, data, size);
	sql[size] = '\0';
	for (int k = PHG_SQLF_STATEMENTS; k <= PHG_SQLF_DEFAULT; k++)
		if (phg_sql_syntax((phg_sqlf_t)k, sql, &at, msg) != 0 && at > strlen(sql))
			abort(); /* the offset must be inside the fragment */
	phg_lint_init(&l, PHG_LINT_TX, NULL, NULL);
	(void)phg_lint_sql(&l, sql);
	phg_lint_free(&l);
	phg_lint_init(&l, PHG_LINT_REVERT | PHG_LINT_CONTRACT, NULL, NULL);
	phg_lint_known_check(&l, "jobs", sql);
	(void)phg_lint_sql(&l, sql);
	phg_lint_free(&l);
	free(sql);
	return 0;
}
