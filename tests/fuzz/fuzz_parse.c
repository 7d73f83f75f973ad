/*
 * fuzz_parse.c - libFuzzer target: the strict parsers of durations,
 * latency budgets and numbers (plan_util.c) on any string; what they accept
 * must be in range.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	uint64_t u;
	long long ll;
	phg_budget_t b;

	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	(void)phg_parse_duration(s, &u);
	(void)phg_parse_budget(s, &b);
	(void)phg_parse_uint(s, &u);
	if (phg_parse_int64(s, -1000, 1000, &ll) == 0 && (ll < -1000 || ll > 1000))
		abort();
	free(s);
	return 0;
}
