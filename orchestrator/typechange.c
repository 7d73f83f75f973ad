/*
 * typechange.c - the rule table of rewrite-free type changes; see
 * typechange.h.
 *
 * The table holds the built-in types a plan names most (their SQL
 * spellings, how their modifier is stored, how it may widen) and the
 * binary-coercible casts between them (pg_cast castmethod 'b').  validate
 * and the lint judge by it offline; at apply time phg_type_rule_sql() asks
 * the catalog's pg_cast instead, with the same modifier rules, so a type the
 * table does not know (a user's domain, oid -> regclass) is judged there.
 */
#include "typechange.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
	MOD_NONE,    /* takes no modifier */
	MOD_CHARLEN, /* (n): typmod n + 4 (varchar, bpchar) */
	MOD_NUMERIC, /* (p[,s]): ((p << 16) | s) + 4 */
	MOD_BITS,    /* (n): typmod n (bit, varbit) */
	MOD_PREC,    /* (p), 0..6: typmod p */
} modkind_t;

typedef struct {
	const char *typname;
	const char *spell[5]; /* SQL spellings, NULL-terminated */
	modkind_t mod;
	int def_mod;          /* typmod when written without modifier (char: char(1)) */
	phg_widen_t widen;
} builtin_t;

static const builtin_t builtins[] = {
	{"varchar", {"varchar", "character varying", "char varying", NULL}, MOD_CHARLEN, -1,
	 PHG_WIDEN_LENGTH},
	{"bpchar", {"bpchar", NULL}, MOD_CHARLEN, -1, PHG_WIDEN_NONE},
	{"bpchar", {"character", "char", NULL}, MOD_CHARLEN, 5, PHG_WIDEN_NONE},
	{"text", {"text", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"numeric", {"numeric", "decimal", "dec", NULL}, MOD_NUMERIC, -1, PHG_WIDEN_NUMERIC},
	{"varbit", {"varbit", "bit varying", NULL}, MOD_BITS, -1, PHG_WIDEN_LENGTH},
	{"bit", {"bit", NULL}, MOD_BITS, 1, PHG_WIDEN_NONE},
	{"timestamp", {"timestamp", "timestamp without time zone", NULL}, MOD_PREC, -1,
	 PHG_WIDEN_PREC},
	{"timestamptz", {"timestamptz", "timestamp with time zone", NULL}, MOD_PREC, -1,
	 PHG_WIDEN_PREC},
	{"time", {"time", "time without time zone", NULL}, MOD_PREC, -1, PHG_WIDEN_PREC},
	{"timetz", {"timetz", "time with time zone", NULL}, MOD_PREC, -1, PHG_WIDEN_PREC},
	{"interval", {"interval", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"inet", {"inet", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"cidr", {"cidr", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"xml", {"xml", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"int2", {"int2", "smallint", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"int4", {"int4", "integer", "int", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"int8", {"int8", "bigint", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"float4", {"float4", "real", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"float8", {"float8", "double precision", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"bool", {"bool", "boolean", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"date", {"date", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"uuid", {"uuid", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"json", {"json", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"jsonb", {"jsonb", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"bytea", {"bytea", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"money", {"money", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
	{"oid", {"oid", NULL}, MOD_NONE, -1, PHG_WIDEN_NONE},
};

/* pg_cast castmethod 'b' between the types above.  `sensible`: a schema
 * change someone makes (int4 <-> oid is binary too, but no column type
 * anybody migrates), which makes the target reachable for validate. */
static const struct {
	const char *from, *to;
	int sensible;
} casts[] = {
	{"varchar", "text", 1}, {"text", "varchar", 1}, {"text", "bpchar", 1},
	{"varchar", "bpchar", 1}, {"cidr", "inet", 1},  {"bit", "varbit", 1},
	{"varbit", "bit", 1},     {"xml", "text", 1},   {"xml", "varchar", 1},
	{"xml", "bpchar", 1},     {"int4", "oid", 0},   {"oid", "int4", 0},
};

#define NBUILTINS (sizeof(builtins) / sizeof(builtins[0]))
#define NCASTS (sizeof(casts) / sizeof(casts[0]))

/* Is there a 'b' cast @from -> @to (sensible ones only when @sensible)? */
static int binary_cast(const char *from, const char *to, int sensible)
{
	for (size_t i = 0; i < NCASTS; i++)
		if ((from == NULL || strcmp(casts[i].from, from) == 0) && strcmp(casts[i].to, to) == 0 &&
		    (!sensible || casts[i].sensible))
			return 1;
	return 0;
}

static const builtin_t *find_builtin(const char *name)
{
	const char *n = name;

	if (strncmp(n, "pg_catalog.", 11) == 0)
		n += 11;
	for (size_t i = 0; i < NBUILTINS; i++)
		for (size_t k = 0; builtins[i].spell[k] != NULL; k++)
			if (strcmp(builtins[i].spell[k], n) == 0)
				return &builtins[i];
	return NULL;
}

static void fill(phg_sqltype_t *out, const builtin_t *b, int typmod)
{
	out->typname = b->typname;
	out->widen = b->widen;
	out->typmod = typmod;
	out->reachable = !out->array &&
	                 (b->widen != PHG_WIDEN_NONE || (typmod == -1 && b->mod != MOD_NONE) ||
	                  (typmod == -1 && binary_cast(NULL, b->typname, 1)));
}

int phg_sqltype_builtin(const char *typname, phg_sqltype_t *out)
{
	const builtin_t *b = find_builtin(typname);

	memset(out, 0, sizeof(*out));
	out->typmod = -1;
	if (b == NULL)
		return 0;
	snprintf(out->base, sizeof(out->base), "%s", b->typname);
	fill(out, b, b->def_mod);
	return 1;
}

/* A decimal integer of at most 8 digits at *@p; -1 if none. */
static long number(const char **p)
{
	long v = 0;
	int n = 0;

	while (**p == ' ')
		(*p)++;
	while (isdigit((unsigned char)**p) && n < 9) {
		v = v * 10 + (**p - '0');
		(*p)++;
		n++;
	}
	while (**p == ' ')
		(*p)++;
	return n == 0 || n > 8 ? -1 : v;
}

int phg_sqltype_parse(const char *s, phg_sqltype_t *out, char *msg, size_t msgsz)
{
	char mods[64] = "";
	size_t bn = 0, mn = 0;
	int in_mods = 0, had_mods = 0;
	const builtin_t *b;
	long m[2] = {-1, -1};
	int nm = 0, typmod;
	const char *p;

	memset(out, 0, sizeof(*out));
	out->typmod = -1;
	/* lower case, one space between words, the (modifier) taken out, [] noted */
	for (p = s; *p != '\0'; p++) {
		char c = (char)tolower((unsigned char)*p);

		if (c == '(' && !in_mods && !out->array) {
			in_mods = 1;
			had_mods++;
			continue;
		}
		if (c == ')' && in_mods) {
			in_mods = 0;
			continue;
		}
		if (in_mods) {
			if (mn + 1 < sizeof(mods))
				mods[mn++] = c;
			continue;
		}
		if (c == '[') {
			out->array = 1;
			continue;
		}
		if (out->array)
			continue; /* [] [3] ... */
		if (c == ' ' && (bn == 0 || out->base[bn - 1] == ' '))
			continue;
		if (bn + 1 < sizeof(out->base))
			out->base[bn++] = c;
	}
	while (bn > 0 && out->base[bn - 1] == ' ')
		bn--;
	out->base[bn] = '\0';
	mods[mn] = '\0';
	if (had_mods > 1) {
		snprintf(msg, msgsz, "type \"%s\" has more than one modifier", s);
		return -1;
	}
	b = find_builtin(out->base);
	if (b == NULL) {
		if (had_mods) {
			snprintf(msg, msgsz,
			         "type \"%s\": phasegate knows the modifiers of varchar, char, numeric, "
			         "bit, varbit, time and timestamp only",
			         s);
			return -1;
		}
		return 0; /* a user's type: the catalog decides */
	}
	typmod = b->def_mod;
	if (had_mods) {
		int bad = 0;

		p = mods;
		for (;;) {
			long v = number(&p);

			if (v < 0 || nm == 2) {
				bad = 1;
				break;
			}
			m[nm++] = v;
			if (*p != ',')
				break;
			p++;
		}
		if (bad || *p != '\0' || b->mod == MOD_NONE || (nm == 2 && b->mod != MOD_NUMERIC)) {
			snprintf(msg, msgsz, "type \"%s\": the modifier (%s) is not one %s takes", s, mods,
			         b->typname);
			return -1;
		}
		switch (b->mod) {
		case MOD_CHARLEN:
			if (m[0] < 1 || m[0] > 10485760)
				goto range;
			typmod = (int)m[0] + 4;
			break;
		case MOD_BITS:
			if (m[0] < 1 || m[0] > 83886080)
				goto range;
			typmod = (int)m[0];
			break;
		case MOD_NUMERIC:
			if (m[0] < 1 || m[0] > 1000 || (nm == 2 && m[1] > m[0]))
				goto range;
			typmod = (int)((m[0] << 16) | (nm == 2 ? m[1] : 0)) + 4;
			break;
		case MOD_PREC:
			if (m[0] > 6)
				goto range;
			typmod = (int)m[0];
			break;
		case MOD_NONE:
			break;
		}
	}
	fill(out, b, typmod);
	return 0;
range:
	snprintf(msg, msgsz, "type \"%s\": the modifier (%s) is out of range for %s", s, mods,
	         b->typname);
	return -1;
}

static int widens(phg_widen_t w, int fm, int tm)
{
	switch (w) {
	case PHG_WIDEN_LENGTH:
		return fm >= 0 && tm >= fm;
	case PHG_WIDEN_NUMERIC:
		return fm >= 0 && ((tm - 4) & 2047) == ((fm - 4) & 2047) &&
		       ((tm - 4) >> 16) >= ((fm - 4) >> 16);
	case PHG_WIDEN_PREC:
		return tm >= 6 || (fm >= 0 && tm >= fm);
	case PHG_WIDEN_NONE:
		break;
	}
	return 0;
}

phg_tc_t phg_type_change(const phg_sqltype_t *from, const phg_sqltype_t *to, const char **why)
{
	const char *dummy;

	if (why == NULL)
		why = &dummy;
	*why = "";
	if (from->array || to->array) {
		*why = "array types are converted element by element";
		return PHG_TC_REWRITE;
	}
	if (from->typname == NULL || to->typname == NULL)
		return PHG_TC_UNKNOWN;
	if (strcmp(from->typname, to->typname) == 0) {
		if (to->typmod == -1 || to->typmod == from->typmod ||
		    widens(to->widen, from->typmod, to->typmod))
			return PHG_TC_FREE;
		*why = from->typmod == -1 ? "adds a limit every row must be checked against"
		       : to->widen == PHG_WIDEN_NUMERIC ? "changes the scale or lowers the precision"
		       : to->widen == PHG_WIDEN_NONE    ? "changes a modifier that must match exactly"
		                                        : "narrows it";
		return PHG_TC_REWRITE;
	}
	if (!binary_cast(from->typname, to->typname, 0)) {
		*why = "converts every value (no binary-coercible cast)";
		return PHG_TC_REWRITE;
	}
	if (to->typmod != -1) {
		*why = "checks every value against the new modifier";
		return PHG_TC_REWRITE;
	}
	return PHG_TC_FREE;
}

/* phg_type_rule_sql(): the same-type modifier rule of widens(), on f.mod
 * (the old modifier) and @tm. */
static void widen_sql(phg_buf_t *out, phg_widen_t w, const char *tm)
{
	switch (w) {
	case PHG_WIDEN_LENGTH:
		phg_buf_printf(out, "f.mod >= 0 AND (%s) >= f.mod", tm);
		break;
	case PHG_WIDEN_NUMERIC:
		phg_buf_printf(out,
		               "f.mod >= 0 AND (((%s) - 4) & 2047) = ((f.mod - 4) & 2047) AND "
		               "(((%s) - 4) >> 16) >= ((f.mod - 4) >> 16)",
		               tm, tm);
		break;
	case PHG_WIDEN_PREC:
		phg_buf_printf(out, "(%s) >= 6 OR (f.mod >= 0 AND (%s) >= f.mod)", tm, tm);
		break;
	case PHG_WIDEN_NONE:
		phg_buf_adds(out, "false");
		break;
	}
}

void phg_type_rule_sql(phg_buf_t *out, const char *fo, const char *fm, const char *to,
                       const char *tm)
{
	/* a domain column is its base type, relabelled: its modifier is gone */
	phg_buf_printf(out,
	               "(SELECT CASE WHEN t.typtype = 'd' THEN false WHEN f.base = t.oid THEN "
	               "(%s) = -1 OR (%s) = f.mod OR (t.typnamespace = 'pg_catalog'::regnamespace AND CASE t.typname::text",
	               tm, tm);
	for (size_t i = 0; i < NBUILTINS; i++) {
		const builtin_t *b = &builtins[i];

		if (b->widen == PHG_WIDEN_NONE)
			continue;
		phg_buf_printf(out, " WHEN '%s' THEN ", b->typname);
		widen_sql(out, b->widen, tm);
	}
	phg_buf_printf(out,
	               " ELSE false END) ELSE (%s) = -1 AND EXISTS (SELECT 1 FROM pg_catalog.pg_cast c "
	               "WHERE c.castsource = f.base AND c.casttarget = t.oid AND c.castmethod = 'b') "
	               "END FROM pg_catalog.pg_type t, (SELECT CASE WHEN ft.typtype = 'd' THEN "
	               "ft.typbasetype ELSE ft.oid END AS base, CASE WHEN ft.typtype = 'd' THEN -1 "
	               "ELSE (%s) END AS mod FROM pg_catalog.pg_type ft WHERE ft.oid = (%s)) f "
	               "WHERE t.oid = (%s))",
	               tm, fm, fo, to);
}

void phg_type_index_sql(phg_buf_t *out, const char *rel, const char *att, const char *to)
{
	phg_buf_printf(
	    out,
	    "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = (%s) AND "
	    "((%s) = ANY (i.indkey::int2[]) OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend dp WHERE "
	    "dp.classid = 'pg_catalog.pg_class'::regclass AND dp.objid = i.indexrelid AND "
	    "dp.refclassid = 'pg_catalog.pg_class'::regclass AND dp.refobjid = (%s) AND "
	    "dp.refobjsubid = (%s))) AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL OR NOT "
	    "i.indisvalid OR EXISTS (SELECT 1 FROM unnest(i.indkey::int2[], i.indclass::oid[]) "
	    "AS k(katt, kopc) JOIN pg_catalog.pg_opclass o ON o.oid = k.kopc WHERE k.katt = (%s) AND "
	    "o.opcdefault AND o.oid IS DISTINCT FROM (SELECT d.oid FROM pg_catalog.pg_opclass d "
	    "WHERE d.opcmethod = o.opcmethod AND d.opcdefault AND (d.opcintype = (%s) OR EXISTS "
	    "(SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = (%s) AND c.casttarget = "
	    "d.opcintype AND c.castmethod = 'b')) ORDER BY d.opcintype = (%s) DESC, (SELECT "
	    "pt.typispreferred FROM pg_catalog.pg_type pt WHERE pt.oid = d.opcintype) DESC "
	    "LIMIT 1))))",
	    rel, att, rel, att, att, to, to, to);
}
