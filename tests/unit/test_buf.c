/*
 * test_buf.c - the capped buffer (buf.h) and the error table and detail
 * buffer (error.h).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"

static void test_buf_starts_empty(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 100);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.max, 100);
	phg_buf_free(&b);
	assert_null(b.data);
}

static void test_buf_add_keeps_nul_terminated(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 100);
	assert_int_equal(phg_buf_add(&b, "abcXYZ", 3), 0);
	assert_int_equal(b.len, 3);
	assert_string_equal(b.data, "abc");
	assert_int_equal(phg_buf_adds(&b, "def"), 0);
	assert_string_equal(b.data, "abcdef");
	assert_int_equal(b.len, 6);
	assert_int_equal(phg_buf_add(&b, "", 0), 0);
	assert_string_equal(b.data, "abcdef");
	phg_buf_free(&b);
}

static void test_buf_grows_past_first_block(void **state)
{
	phg_buf_t b;
	char chunk[101];
	size_t i;

	(void)state;
	memset(chunk, 'x', 100);
	chunk[100] = '\0';
	phg_buf_init(&b, 10000);
	for (i = 0; i < 50; i++)
		assert_int_equal(phg_buf_adds(&b, chunk), 0);
	assert_int_equal(b.len, 5000);
	assert_int_equal(strlen(b.data), 5000);
	assert_true(b.cap > b.len);
	assert_int_equal(b.data[4999], 'x');
	phg_buf_free(&b);
}

static void test_buf_cap_exact_fits(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 8);
	assert_int_equal(phg_buf_adds(&b, "12345678"), 0);
	assert_int_equal(b.len, 8);
	assert_string_equal(b.data, "12345678");
	assert_true(b.cap <= b.max + 1);
	phg_buf_free(&b);
}

static void test_buf_cap_add_too_big_leaves_buffer_unchanged(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 8);
	assert_int_equal(phg_buf_adds(&b, "12345"), 0);
	assert_int_equal(phg_buf_adds(&b, "6789"), PHG_ETOOBIG);
	assert_int_equal(b.len, 5);
	assert_string_equal(b.data, "12345");
	/* The error is sticky: what would still fit is refused too, so a
	 * statement built in pieces is never used with a piece missing. */
	assert_int_equal(phg_buf_error(&b), PHG_ETOOBIG);
	assert_int_equal(phg_buf_adds(&b, "678"), PHG_ETOOBIG);
	assert_string_equal(b.data, "12345");
	assert_int_equal(b.len, 5);
	/* reset starts over */
	phg_buf_reset(&b);
	assert_int_equal(phg_buf_error(&b), 0);
	assert_int_equal(phg_buf_adds(&b, "12345678"), 0);
	assert_int_equal(phg_buf_adds(&b, "9"), PHG_ETOOBIG);
	assert_string_equal(b.data, "12345678");
	assert_int_equal(b.len, 8);
	phg_buf_free(&b);
}

static void test_buf_cap_huge_add_no_overflow(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 16);
	assert_int_equal(phg_buf_adds(&b, "ab"), 0);
	/* len + n would wrap around SIZE_MAX: must still be TOOBIG. */
	assert_int_equal(phg_buf_add(&b, "x", SIZE_MAX), PHG_ETOOBIG);
	assert_int_equal(phg_buf_add(&b, "x", SIZE_MAX - 1), PHG_ETOOBIG);
	assert_string_equal(b.data, "ab");
	assert_int_equal(b.len, 2);
	phg_buf_free(&b);
}

static void test_buf_cap_zero(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 0);
	assert_int_equal(phg_buf_add(&b, "", 0), 0);
	assert_int_equal(b.len, 0);
	assert_int_equal(phg_buf_adds(&b, "a"), PHG_ETOOBIG);
	assert_int_equal(b.len, 0);
	phg_buf_free(&b);
}

static void test_buf_printf(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 1024);
	assert_int_equal(phg_buf_printf(&b, "%s=%d", "batch", 42), 0);
	assert_string_equal(b.data, "batch=42");
	assert_int_equal(phg_buf_printf(&b, ", %05.1f%%", 3.5), 0);
	assert_string_equal(b.data, "batch=42, 003.5%");
	assert_int_equal(b.len, strlen("batch=42, 003.5%"));
	assert_int_equal(phg_buf_printf(&b, "%s", ""), 0);
	assert_int_equal(b.len, strlen("batch=42, 003.5%"));
	phg_buf_free(&b);
}

static void test_buf_printf_too_big_leaves_buffer_unchanged(void **state)
{
	phg_buf_t b;

	(void)state;
	phg_buf_init(&b, 10);
	assert_int_equal(phg_buf_printf(&b, "%d", 12345), 0);
	assert_int_equal(phg_buf_printf(&b, "-%s-", "toolong"), PHG_ETOOBIG);
	assert_int_equal(b.len, 5);
	assert_string_equal(b.data, "12345");
	assert_int_equal(phg_buf_printf(&b, "%s", "abcde"), PHG_ETOOBIG);
	assert_int_equal(phg_buf_adds(&b, "a"), PHG_ETOOBIG);
	assert_string_equal(b.data, "12345");
	assert_int_equal(phg_buf_error(&b), PHG_ETOOBIG);
	phg_buf_free(&b);
}

static void test_buf_reset_keeps_memory(void **state)
{
	phg_buf_t b;
	char *before;

	(void)state;
	phg_buf_init(&b, 100);
	assert_int_equal(phg_buf_adds(&b, "hello"), 0);
	before = b.data;
	phg_buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_ptr_equal(b.data, before);
	assert_string_equal(b.data, "");
	assert_int_equal(phg_buf_adds(&b, "again"), 0);
	assert_string_equal(b.data, "again");
	phg_buf_free(&b);
}

static void test_buf_take_hands_over_and_empties(void **state)
{
	phg_buf_t b;
	char *s;

	(void)state;
	phg_buf_init(&b, 100);
	assert_int_equal(phg_buf_printf(&b, "step %d of %d", 2, 5), 0);
	s = phg_buf_take(&b);
	assert_non_null(s);
	assert_string_equal(s, "step 2 of 5");
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	assert_int_equal(b.max, 100);
	/* The buffer is usable again, independently of the taken string. */
	assert_int_equal(phg_buf_adds(&b, "next"), 0);
	assert_string_equal(b.data, "next");
	assert_string_equal(s, "step 2 of 5");
	free(s);
	phg_buf_free(&b);
}

static void test_buf_take_empty_gives_empty_string(void **state)
{
	phg_buf_t b;
	char *s;

	(void)state;
	phg_buf_init(&b, 100);
	s = phg_buf_take(&b);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);
	phg_buf_free(&b);
}

static void test_helpers(void **state)
{
	char *s;
	int *v;

	(void)state;
	assert_null(phg_strdup(NULL));
	s = phg_strdup("plan");
	assert_string_equal(s, "plan");
	free(s);
	s = phg_asprintf("%s:%d:%d", "x.yaml", 3, 5);
	assert_string_equal(s, "x.yaml:3:5");
	free(s);
	v = phg_calloc(4, sizeof(*v));
	assert_int_equal(v[0] | v[1] | v[2] | v[3], 0);
	v = phg_realloc(v, 8 * sizeof(*v));
	assert_non_null(v);
	free(v);
}

/* ------------------------------------------------------------ error.h */

static void test_err_codes_are_distinct_negative_with_names(void **state)
{
	static const int codes[] = {
#define XX(name, msg) PHG_E##name,
		PHG_ERRNO_MAP(XX)
#undef XX
	};
	static const char *const names[] = {
#define XX(name, msg) "PHG_E" #name,
		PHG_ERRNO_MAP(XX)
#undef XX
	};
	static const char *const msgs[] = {
#define XX(name, msg) msg,
		PHG_ERRNO_MAP(XX)
#undef XX
	};
	size_t i, j, n = sizeof(codes) / sizeof(codes[0]);

	(void)state;
	assert_true(n > 0);
	for (i = 0; i < n; i++) {
		assert_true(codes[i] < 0);
		assert_int_equal(codes[i], -(int)(i + 1));
		assert_string_equal(phg_err_name(codes[i]), names[i]);
		assert_string_equal(phg_strerror(codes[i]), msgs[i]);
		for (j = 0; j < i; j++)
			assert_int_not_equal(codes[i], codes[j]);
	}
}

static void test_err_name_and_strerror(void **state)
{
	(void)state;
	assert_string_equal(phg_err_name(PHG_EPLAN), "PHG_EPLAN");
	assert_string_equal(phg_err_name(PHG_ETOOBIG), "PHG_ETOOBIG");
	assert_string_equal(phg_strerror(PHG_ENOMEM), "out of memory");
	assert_string_equal(phg_strerror(PHG_ELOCKED),
			    "plan is locked by another run");
	assert_string_equal(phg_err_name(0), "OK");
	assert_string_equal(phg_strerror(0), "success");
	/* Unknown codes still give a string, never NULL. */
	assert_string_equal(phg_err_name(-9999), "PHG_E?");
	assert_string_equal(phg_strerror(-9999), "unknown error");
	assert_string_equal(phg_err_name(7), "PHG_E?");
	assert_string_equal(phg_strerror(7), "unknown error");
}

static void test_err_first_cause_wins(void **state)
{
	phg_err_t e;

	(void)state;
	phg_err_clear(&e);
	assert_int_equal(e.code, 0);
	assert_string_equal(e.msg, "");
	assert_int_equal(phg_err_set(&e, PHG_ELOCK_TIMEOUT,
				     "lock on table \"%s\" not available", "jobs"),
			 PHG_ELOCK_TIMEOUT);
	phg_err_detail(&e, "Tried %d times.", 20);
	phg_err_hint(&e, "Look for long transactions.");
	/* The caller's generic failure returns its code but keeps the cause. */
	assert_int_equal(phg_err_set(&e, PHG_ESTEP, "step \"%s\" failed", "add"),
			 PHG_ESTEP);
	phg_err_detail(&e, "other detail");
	phg_err_hint(&e, "other hint");
	assert_int_equal(e.code, PHG_ELOCK_TIMEOUT);
	assert_string_equal(e.msg, "lock on table \"jobs\" not available");
	assert_string_equal(e.detail, "Tried 20 times.");
	assert_string_equal(e.hint, "Look for long transactions.");
	assert_string_equal(e.sqlstate, "");

	/* Once cleared, a new cause is recorded. */
	phg_err_clear(&e);
	assert_int_equal(phg_err_set(&e, PHG_EIO, "cannot read \"%s\"", "p.yaml"),
			 PHG_EIO);
	assert_int_equal(e.code, PHG_EIO);
	assert_string_equal(e.msg, "cannot read \"p.yaml\"");
	assert_string_equal(e.detail, "");
}

static void test_err_null_is_allowed(void **state)
{
	(void)state;
	assert_int_equal(phg_err_set(NULL, PHG_EINVAL, "x %d", 1), PHG_EINVAL);
	phg_err_detail(NULL, "d");
	phg_err_hint(NULL, "h");
	phg_err_clear(NULL);
	phg_err_copy(NULL, NULL);
}

static void test_err_long_message_truncated(void **state)
{
	phg_err_t e;
	char big[2000];

	(void)state;
	memset(big, 'm', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	phg_err_clear(&e);
	phg_err_set(&e, PHG_EPLAN, "%s", big);
	assert_int_equal(strlen(e.msg), sizeof(e.msg) - 1);
	phg_err_detail(&e, "%s", big);
	assert_int_equal(strlen(e.detail), sizeof(e.detail) - 1);
}

static void test_err_copy_first_cause_wins(void **state)
{
	phg_err_t src, dst;

	(void)state;
	phg_err_clear(&src);
	phg_err_clear(&dst);
	/* Copying "no error" records nothing. */
	phg_err_copy(&dst, &src);
	assert_int_equal(dst.code, 0);

	phg_err_set(&src, PHG_EPG, "relation \"%s\" does not exist", "jobs");
	memcpy(src.sqlstate, "42P01", 6);
	phg_err_copy(&dst, &src);
	assert_int_equal(dst.code, PHG_EPG);
	assert_string_equal(dst.sqlstate, "42P01");
	assert_string_equal(dst.msg, "relation \"jobs\" does not exist");

	phg_err_clear(&src);
	phg_err_set(&src, PHG_EHTTP, "later");
	phg_err_copy(&dst, &src);
	assert_int_equal(dst.code, PHG_EPG);
	assert_string_equal(dst.msg, "relation \"jobs\" does not exist");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buf_starts_empty),
		cmocka_unit_test(test_buf_add_keeps_nul_terminated),
		cmocka_unit_test(test_buf_grows_past_first_block),
		cmocka_unit_test(test_buf_cap_exact_fits),
		cmocka_unit_test(test_buf_cap_add_too_big_leaves_buffer_unchanged),
		cmocka_unit_test(test_buf_cap_huge_add_no_overflow),
		cmocka_unit_test(test_buf_cap_zero),
		cmocka_unit_test(test_buf_printf),
		cmocka_unit_test(test_buf_printf_too_big_leaves_buffer_unchanged),
		cmocka_unit_test(test_buf_reset_keeps_memory),
		cmocka_unit_test(test_buf_take_hands_over_and_empties),
		cmocka_unit_test(test_buf_take_empty_gives_empty_string),
		cmocka_unit_test(test_helpers),
		cmocka_unit_test(test_err_codes_are_distinct_negative_with_names),
		cmocka_unit_test(test_err_name_and_strerror),
		cmocka_unit_test(test_err_first_cause_wins),
		cmocka_unit_test(test_err_null_is_allowed),
		cmocka_unit_test(test_err_long_message_truncated),
		cmocka_unit_test(test_err_copy_first_cause_wins),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
