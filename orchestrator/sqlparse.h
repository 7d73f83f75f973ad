/*
 * sqlparse.h - the SQL a plan owns, read by PostgreSQL's own parser
 * (libpg_query, Debian libpg-query-dev: the grammar of PostgreSQL 15).
 *
 * Two services, both offline (no database):
 *
 *  - phg_sql_syntax(): a fragment (`set`, `where`, `check`, `expr`,
 *    `default`...) parsed in the statement it is pasted into, and held to
 *    the shape of its place: a `set` is a SET list and nothing more, a
 *    `where` one expression, statements are statements.  An error gives the
 *    byte offset inside the fragment, for FILE:LINE:COL.
 *
 *  - phg_lint_sql(): the lock-safety lint of whole statements, on the parse
 *    tree (not keywords).  A lint carries what earlier statements of the
 *    same sequence did (tables created, NOT NULL checks validated), so a
 *    sequence that does the safe thing step by step passes.
 *
 * A statement whose text holds the comment `phasegate:safety_assured`
 * (e.g. `-- phasegate:safety_assured: table is empty in every env`) is
 * acknowledged: its findings are not reported, only counted.
 */
#ifndef PHG_SQLPARSE_H
#define PHG_SQLPARSE_H

#include <stddef.h>

#include "plan.h"

/* The place a fragment is pasted into (phg_field_t.sql). */
typedef enum phg_sqlf_e {
	PHG_SQLF_STATEMENTS = 0, /* whole statements (sql up/down) */
	PHG_SQLF_QUERY,          /* exactly one SELECT (throttle.probe) */
	PHG_SQLF_SET,            /* UPDATE t SET <frag>: assignments only */
	PHG_SQLF_WHERE,          /* ... WHERE <frag>: one expression */
	PHG_SQLF_EXPR,           /* one value expression (sync_trigger expr) */
	PHG_SQLF_CHECK,          /* ADD CONSTRAINT c CHECK (<frag>) */
	PHG_SQLF_DEFAULT,        /* ADD COLUMN c ... DEFAULT <frag> */
} phg_sqlf_t;

#define PHG_SQL_MSG_MAX 512

/*
 * Parse @frag in its place @kind.  0 when it parses and has the shape of
 * its place; else -1 with *@at the byte offset in @frag the error points at
 * (clamped to strlen(@frag)) and @msg (PHG_SQL_MSG_MAX bytes) what is wrong.
 */
int phg_sql_syntax(phg_sqlf_t kind, const char *frag, size_t *at, char *msg);

/* ---- the lint ---- */

typedef enum { PHG_LINT_WARN = 1, PHG_LINT_ERROR = 2 } phg_lint_sev_t;

#define PHG_LINT_TX 0x1u       /* runs in one transaction: transaction control is an error */
#define PHG_LINT_REVERT 0x2u   /* a `down`: dropping what `up` made is its job */
#define PHG_LINT_CONTRACT 0x4u /* in a contract phase: DROP/RENAME are expected (warnings) */

typedef void (*phg_lint_report_fn)(void *arg, phg_lint_sev_t sev, size_t offset,
                                   const char *msg);

typedef struct phg_lint_s {
	unsigned flags;             /* PHG_LINT_* */
	phg_lint_report_fn report;  /* each finding: @offset is a byte in the SQL */
	void *arg;
	size_t errors, warnings;    /* reported */
	size_t assured;             /* findings acknowledged by phasegate:safety_assured */
	/* private: what the sequence did so far */
	phg_strv_t created_;        /* tables created ("schema.table" or "table") */
	phg_strv_t checks_;         /* "table\nconstraint\ncolumn": CHECK (column IS NOT NULL) */
	phg_strv_t proven_;         /* "table\ncolumn": a valid NOT NULL check exists */
} phg_lint_t;

void phg_lint_init(phg_lint_t *l, unsigned flags, phg_lint_report_fn report, void *arg);
void phg_lint_free(phg_lint_t *l);

/* Lint @sql (one or more statements).  0, or -1 when it does not parse
 * (reported as an error finding). */
int phg_lint_sql(phg_lint_t *l, const char *sql);

/* Tell @l that a valid CHECK (@check) exists on @table (an add_check step
 * earlier in the plan): when it is `column IS NOT NULL`, SET NOT NULL of
 * that column is proven and no longer a finding. */
void phg_lint_known_check(phg_lint_t *l, const char *table, const char *check);

#endif /* PHG_SQLPARSE_H */
