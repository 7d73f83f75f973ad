/*
 * test_throttle.c - the pure parts of the latency budget (throttle.h) and
 * its plan syntax: budgets parse as written and are refused otherwise, the
 * budget follows the baseline with its floor, the percentile is the nearest
 * rank, and the duty cycle doubles over budget, eases off under 80% of it and
 * never exceeds max_sleep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "plan.h"
#include "throttle.h"

static void test_parse_budget(void **state)
{
	phg_budget_t b;

	(void)state;
	assert_int_equal(phg_parse_budget("2x", &b), 0);
	assert_int_equal(b.factor_milli, 2000);
	assert_int_equal(b.abs_us, 0);
	assert_int_equal(b.off, 0);
	assert_int_equal(phg_parse_budget("1.5x", &b), 0);
	assert_int_equal(b.factor_milli, 1500);
	assert_int_equal(phg_parse_budget("1.125x", &b), 0);
	assert_int_equal(b.factor_milli, 1125);
	assert_int_equal(phg_parse_budget("20ms", &b), 0);
	assert_int_equal(b.abs_us, 20000);
	assert_int_equal(b.factor_milli, 0);
	assert_int_equal(phg_parse_budget("off", &b), 0);
	assert_int_equal(b.off, 1);
	/* refused */
	const char *bad[] = {"", "x", "0.5x", "0x", "2", "2y", "1.x", "-2x", "2 x", "0",
	                     "0ms", "11m", "on", "2xx", "1001x", NULL};
	for (int i = 0; bad[i] != NULL; i++)
		if (phg_parse_budget(bad[i], &b) == 0)
			fail_msg("budget \"%s\" was accepted", bad[i]);
}

static void test_budget_us(void **state)
{
	phg_budget_t b;

	(void)state;
	phg_parse_budget("2x", &b);
	assert_int_equal(phg_budget_us(&b, 3000, 1), 6000);
	assert_int_equal(phg_budget_us(&b, 200, 1), 1000); /* the floor */
	assert_int_equal(phg_budget_us(&b, 200, 0), 400);
	phg_parse_budget("20ms", &b);
	assert_int_equal(phg_budget_us(&b, 50000, 1), 20000); /* absolute: no baseline */
	phg_parse_budget("off", &b);
	assert_true(phg_budget_us(&b, 1, 1) == UINT64_MAX);
}

static void test_percentile(void **state)
{
	uint64_t v[100];

	(void)state;
	assert_int_equal(phg_percentile(v, 0, 99), 0);
	for (int i = 0; i < 100; i++)
		v[i] = (uint64_t)(100 - i); /* 100..1, unsorted */
	assert_int_equal(phg_percentile(v, 100, 99), 99);
	assert_int_equal(phg_percentile(v, 100, 50), 50);
	assert_int_equal(phg_percentile(v, 100, 100), 100);
	v[0] = 7;
	assert_int_equal(phg_percentile(v, 1, 99), 7);
	v[0] = 5;
	v[1] = 9;
	v[2] = 1;
	assert_int_equal(phg_percentile(v, 3, 99), 9); /* few samples: the max */
}

static void test_duty_cycle(void **state)
{
	uint64_t s = 0;
	double f;

	(void)state;
	phg_throttle_next(0, 0, 1000, &s, &f);
	assert_int_equal(s, 0);
	assert_true(f == 1.0);
	phg_throttle_next(1, 0, 1000, &s, &f);
	assert_int_equal(s, 10);
	assert_true(f == 0.5);
	phg_throttle_next(1, s, 1000, &s, &f);
	assert_int_equal(s, 20);
	for (int i = 0; i < 20; i++)
		phg_throttle_next(1, s, 1000, &s, &f);
	assert_int_equal(s, 1000); /* never beyond max_sleep */
	phg_throttle_next(0, s, 1000, &s, &f);
	assert_int_equal(s, 1000); /* within budget: held */
	phg_throttle_next(-1, s, 1000, &s, &f);
	assert_int_equal(s, 500);
	assert_true(f > 1.0);
	for (int i = 0; i < 30; i++)
		phg_throttle_next(-1, s, 1000, &s, &f);
	assert_int_equal(s, 0); /* eased off to none */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_budget),
	    cmocka_unit_test(test_budget_us),
	    cmocka_unit_test(test_percentile),
	    cmocka_unit_test(test_duty_cycle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
