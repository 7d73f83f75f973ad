/*
 * plan_util.c - strict parsers and validators shared by the plan loader and
 * the step kinds: durations, unsigned integers, identifiers, type names.
 * None of them allocates; all are total over any NUL-terminated input.
 */
#include "plan.h"

#include <errno.h>
#include <stdlib.h>

#include "buf.h"

#include <string.h>

int phg_parse_int64(const char *s, long long min, long long max, long long *out)
{
	char *end;
	long long v;

	if (s == NULL || *s == '\0' || (*s != '-' && (*s < '0' || *s > '9')))
		return PHG_EINVAL; /* no leading space or '+' */
	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s || *end != '\0')
		return PHG_EINVAL;
	if (errno == ERANGE || v < min || v > max)
		return PHG_ETOOBIG;
	*out = v;
	return 0;
}

long long phg_db_num(const char *s, long long min, long long max, long long fallback, int *bad)
{
	long long v;

	if (phg_parse_int64(s, min, max, &v) != 0) {
		if (bad != NULL)
			*bad = 1;
		return fallback;
	}
	return v;
}

int phg_parse_uint(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (s == NULL || *s == '\0')
		return PHG_EINVAL;
	for (const char *p = s; *p != '\0'; p++) {
		unsigned dig;

		if (*p < '0' || *p > '9')
			return PHG_EINVAL;
		dig = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - dig) / 10) {
			/* keep scanning: "99999999999999999999x" is invalid, not too big */
			while (*p >= '0' && *p <= '9')
				p++;
			return *p == '\0' ? PHG_ETOOBIG : PHG_EINVAL;
		}
		v = v * 10 + dig;
	}
	*out = v;
	return 0;
}

typedef struct {
	const char *unit;
	uint64_t ms;
} duration_unit_t;

static const duration_unit_t duration_units[] = {
	{"ms", 1},
	{"s", 1000},
	{"m", 60 * 1000},
	{"h", 60 * 60 * 1000},
	{NULL, 0},
};

int phg_parse_duration(const char *s, uint64_t *ms)
{
	const char *p = s;
	uint64_t v = 0;
	int big = 0;

	if (s == NULL || *s < '0' || *s > '9')
		return PHG_EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned dig = (unsigned)(*p - '0');

		if (v > (UINT64_MAX - dig) / 10)
			big = 1;
		else
			v = v * 10 + dig;
	}
	if (*p == '\0') { /* a bare number is only accepted for zero */
		if (big || v != 0)
			return PHG_EINVAL;
		*ms = 0;
		return 0;
	}
	for (const duration_unit_t *u = duration_units; u->unit != NULL; u++) {
		if (strcmp(p, u->unit) != 0)
			continue;
		if (big || v > UINT64_MAX / u->ms)
			return PHG_ETOOBIG;
		*ms = v * u->ms;
		return 0;
	}
	return PHG_EINVAL;
}

const char *phg_target_url(const phg_plan_t *plan, const char *url_env, phg_err_t *err)
{
	const char *url = getenv(url_env);

	if (url != NULL && *url != '\0')
		return url;
	if (plan != NULL && plan->env != NULL) {
		phg_err_set(err, PHG_EUSAGE,
		            "environment \"%s\" takes its database from $%s, which is %s", plan->env->name,
		            url_env, url == NULL ? "not set" : "empty");
		phg_err_detail(err, "With --env, phasegate never falls back to the PG* variables or "
		                    "libpq's defaults: they could name another database. Nothing was "
		                    "changed.");
		phg_err_hint(err, "Set %s to the %s database's URL, or run without --env.", url_env,
		             plan->env->name);
		return NULL;
	}
	return "";
}

int phg_parse_budget(const char *s, phg_budget_t *out)
{
	uint64_t whole = 0, frac = 0, scale = 1000, ms;
	const char *p = s;

	memset(out, 0, sizeof(*out));
	if (s == NULL)
		return PHG_EINVAL;
	if (strcmp(s, "off") == 0) {
		out->off = 1;
		return 0;
	}
	if (*p >= '0' && *p <= '9' && s[strlen(s) - 1] == 'x') {
		/* a factor: digits, at most three decimals, then x */
		for (; *p >= '0' && *p <= '9' && whole < 100000; p++)
			whole = whole * 10 + (uint64_t)(*p - '0');
		if (*p == '.') {
			p++;
			if (!(*p >= '0' && *p <= '9'))
				return PHG_EINVAL;
			for (; *p >= '0' && *p <= '9' && scale > 1; p++) {
				scale /= 10;
				frac += (uint64_t)(*p - '0') * scale;
			}
		}
		if (strcmp(p, "x") != 0)
			return PHG_EINVAL;
		out->factor_milli = whole * 1000 + frac;
		return out->factor_milli >= 1000 && out->factor_milli <= 1000000 ? 0 : PHG_EINVAL;
	}
	if (phg_parse_duration(s, &ms) != 0 || ms < 1 || ms > 600000)
		return PHG_EINVAL;
	out->abs_us = ms * 1000;
	return 0;
}

static int ident_char(char c, int first)
{
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_')
		return 1;
	return !first && ((c >= '0' && c <= '9') || c == '$');
}

/* Length of the identifier at the start of @s (0 if none). */
static size_t ident_len(const char *s)
{
	size_t n = 0;

	while (s[n] != '\0' && ident_char(s[n], n == 0))
		n++;
	return n;
}

int phg_ident_ok(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	n = ident_len(s);
	return n > 0 && n <= PHG_IDENT_MAX && s[n] == '\0';
}

int phg_table_ok(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	n = ident_len(s);
	if (n == 0 || n > PHG_IDENT_MAX)
		return 0;
	if (s[n] == '\0')
		return 1;
	return s[n] == '.' && phg_ident_ok(s + n + 1);
}

int phg_sqltype_ok(const char *s)
{
	char stack[16];
	size_t depth = 0, n = 0;

	if (s == NULL || !ident_char(s[0], 1))
		return 0;
	for (const char *p = s; *p != '\0'; p++, n++) {
		char c = *p;

		if (n >= 256)
			return 0;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_' || c == ' ' || c == ',' || c == '.')
			continue;
		if (c == '(' || c == '[') {
			if (depth == sizeof(stack))
				return 0;
			stack[depth++] = c;
			continue;
		}
		if (c == ')' || c == ']') {
			if (depth == 0 || stack[depth - 1] != (c == ')' ? '(' : '['))
				return 0;
			depth--;
			continue;
		}
		return 0; /* ; - " ' and anything else */
	}
	return depth == 0;
}

void phg_strv_push(phg_strv_t *v, const char *s)
{
	v->v = phg_realloc(v->v, (v->n + 1) * sizeof(char *));
	v->v[v->n++] = phg_strdup(s);
}

void phg_strv_clear(phg_strv_t *v)
{
	for (size_t i = 0; i < v->n; i++)
		free(v->v[i]);
	free(v->v);
	v->v = NULL;
	v->n = 0;
}

int phg_plan_checksum_is(const phg_plan_t *plan, const char *sum)
{
	return sum != NULL &&
	       (strcmp(sum, plan->checksum) == 0 || strcmp(sum, plan->file_checksum) == 0);
}

int phg_plan_load_recorded(const char *canonical, long long run, const char *env,
                           phg_plan_t **out, phg_err_t *err)
{
	char name[64];
	int rc;

	*out = NULL;
	if (canonical == NULL || canonical[0] == '\0')
		return phg_err_set(err, PHG_ESTATE, "run %lld has no recorded plan (it was recorded "
		                                    "by an older phasegate)",
		                   run);
	snprintf(name, sizeof(name), "run %lld (as recorded)", run);
	rc = phg_plan_load_buffer(name, canonical, strlen(canonical), NULL, out, err);
	if (rc != 0)
		return phg_err_set(err, PHG_ESTATE, "the plan recorded with run %lld does not load", run);
	if ((rc = phg_plan_select_env(*out, env, err)) != 0) {
		phg_plan_free(*out);
		*out = NULL;
	}
	return rc;
}

static const phg_phase_t *phase_named(const phg_plan_t *plan, const char *name)
{
	for (size_t i = 0; i < plan->nphases; i++)
		if (strcmp(plan->phases[i].name, name) == 0)
			return &plan->phases[i];
	return NULL;
}

size_t phg_plan_diff_phases(const phg_plan_t *was, const phg_plan_t *now, phg_buf_t *out)
{
	size_t n = 0;

	for (size_t i = 0; i < now->nphases; i++) {
		const phg_phase_t *p = &now->phases[i], *q = phase_named(was, p->name);
		const char *what = NULL;

		if (q == NULL)
			what = "added";
		else if (strcmp(p->checksum, q->checksum) != 0)
			what = "changed";
		if (what != NULL)
			phg_buf_printf(out, "%s\"%s\" (%s)", n++ ? ", " : "", p->name, what);
	}
	for (size_t i = 0; i < was->nphases; i++)
		if (phase_named(now, was->phases[i].name) == NULL)
			phg_buf_printf(out, "%s\"%s\" (removed)", n++ ? ", " : "", was->phases[i].name);
	return n;
}

int phg_phase_is_contract(const phg_phase_t *ph)
{
	return ph->backup || (ph->name != NULL && strstr(ph->name, "contract") != NULL);
}
