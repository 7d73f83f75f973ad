/*
 * typechange.h - which ALTER COLUMN ... TYPE changes PostgreSQL makes
 * without rewriting the table: the one rule table shared by the SQL lint
 * (sqlparse.c, which sees only the new type) and the alter_column_type step
 * (phases/alter_column_type.c: validate, and the catalog check it runs
 * before the change).
 *
 * PostgreSQL skips the rewrite when the old type is binary coercible to the
 * new one (pg_cast castmethod 'b': varchar -> text, text -> varchar,
 * cidr -> inet, bit <-> varbit ...) with no length coercion left over, or the
 * new type is the same type with a modifier its length-coercion support
 * function proves needs no check: varchar(n) -> varchar(m >= n), varbit
 * likewise, numeric(p,s) -> numeric(p2 >= p, s), time/timestamp precision
 * raised; to the type without modifier always (ALTER TABLE docs, and
 * ATColumnChangeRequiresRewrite in tablecmds.c).  A column of a domain is
 * coerced to its base type by relabelling, its modifier forgotten.
 */
#ifndef PHG_TYPECHANGE_H
#define PHG_TYPECHANGE_H

#include <stddef.h>

#include "buf.h"

/* How a same-type modifier change is judged. */
typedef enum phg_widen_e {
	PHG_WIDEN_NONE = 0, /* only the same modifier, or none */
	PHG_WIDEN_LENGTH,   /* varchar, varbit: a larger length */
	PHG_WIDEN_NUMERIC,  /* numeric: same scale, larger precision */
	PHG_WIDEN_PREC,     /* time[tz], timestamp[tz]: larger precision (6 = the most) */
} phg_widen_t;

/* A type as a plan writes it (varchar(20), character varying, numeric(10,2),
 * timestamp(3) with time zone, a user type's name). */
typedef struct phg_sqltype_s {
	const char *typname; /* pg_catalog typname of a built-in phasegate knows, else NULL */
	phg_widen_t widen;
	int reachable;       /* some sensible type changes into it without a rewrite */
	int typmod;          /* the modifier PostgreSQL stores (atttypmod); -1: none */
	int array;           /* written with [] */
	char base[128];      /* the name without modifier and [] (for to_regtype) */
} phg_sqltype_t;

/* Parse @s (which phg_sqltype_ok accepted).  0, or -1 with @msg (@msgsz
 * bytes) saying what is wrong with its modifier. */
int phg_sqltype_parse(const char *s, phg_sqltype_t *out, char *msg, size_t msgsz);

/* The built-in type named @typname (pg_catalog typname or SQL spelling, as
 * the parser's last name gives it: varchar, int4, numeric), without
 * modifier, into @out: 1; 0 when phasegate does not know it. */
int phg_sqltype_builtin(const char *typname, phg_sqltype_t *out);

typedef enum phg_tc_e {
	PHG_TC_FREE = 0,  /* no rewrite */
	PHG_TC_REWRITE,   /* rewrites or scans the table */
	PHG_TC_UNKNOWN,   /* not a built-in pair: the catalog decides */
} phg_tc_t;

/* Whether changing a column of type @from to @to rewrites it; @why (may be
 * NULL) gets a short reason for PHG_TC_REWRITE ("narrows varchar"). */
phg_tc_t phg_type_change(const phg_sqltype_t *from, const phg_sqltype_t *to, const char **why);

/*
 * Append to @out an SQL boolean expression: a column of type @fo (an oid
 * expression) with modifier @fm (an int expression) changes to type @to,
 * modifier @tm, without a rewrite -- the rule above, decided on the
 * catalog (pg_type, pg_cast), the modifiers judged by the same table.
 * NULL when a type does not exist.
 */
void phg_type_rule_sql(phg_buf_t *out, const char *fo, const char *fm, const char *to,
                       const char *tm);

/*
 * Append an SQL boolean expression: no index of table @rel (a regclass
 * expression) on column number @att (an int expression) is rebuilt when
 * the column becomes of type @to (an oid expression).  PostgreSQL keeps an
 * index only when its operator classes stay the same (varchar and text both
 * use text_ops; bpchar has its own), and it has no expression, no predicate
 * and is valid (CheckIndexCompatible).
 */
void phg_type_index_sql(phg_buf_t *out, const char *rel, const char *att, const char *to);

#endif /* PHG_TYPECHANGE_H */
