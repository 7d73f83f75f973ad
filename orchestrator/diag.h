/*
 * diag.h - the plan loader's diagnostics collector (private to the loader).
 *
 * A phg_diag_t holds the errors and warnings found while loading one plan,
 * each with its 1-based position, and prints them in order of appearance as
 *
 *   FILE:LINE:COL: message                 (errors)
 *   FILE:LINE:COL: warning: message        (warnings)
 *   <the source line>
 *   <a caret under COL>
 *
 * Step kinds report through phg_diag_error()/phg_diag_warn() (plan.h).
 * Columns count UTF-8 characters, as libyaml's marks do; lines break at
 * "\n", "\r\n", "\r", U+0085, U+2028 and U+2029, as in YAML.
 */
#ifndef PHG_DIAG_H
#define PHG_DIAG_H

#include <stddef.h>
#include <stdio.h>

#include "plan.h"

/* Errors printed at most; past that one line says how many were left out. */
#define PHG_DIAG_MAX_ERRORS 50

/* @file is the name used in messages, @src/@len the source text the
 * positions refer to; both are borrowed and must outlive the phg_diag_t.
 * The caller frees it with phg_diag_free(). */
phg_diag_t *phg_diag_new(const char *file, const char *src, size_t len);
void phg_diag_free(phg_diag_t *d);

size_t phg_diag_errors(const phg_diag_t *d);
size_t phg_diag_warnings(const phg_diag_t *d);

/* 1 once so many diagnostics were collected that loading should stop. */
int phg_diag_full(const phg_diag_t *d);

/* Sorts the diagnostics by position and prints them to @out (may be NULL:
 * nothing printed). */
void phg_diag_print(phg_diag_t *d, FILE *out);

/* How phg_diag_print writes (for every load after it is set):
 *   TEXT    FILE:LINE:COL: message, the source line and a caret (default)
 *   JSON    one log object per diagnostic on stderr (--log-format json)
 *   GITHUB  ::error file=F,line=L,col=C::message on stdout (validate --format github)
 *   COLLECT appended to the array given (validate --format json) */
typedef enum { PHG_DIAG_TEXT, PHG_DIAG_JSON, PHG_DIAG_GITHUB, PHG_DIAG_COLLECT } phg_diag_format_t;
struct json_t;
void phg_diag_set_format(phg_diag_format_t f, struct json_t *collect);

/* validate --strict: warnings are reported and counted as errors (for
 * every load after it is set). */
void phg_diag_set_strict(int on);

/* Position of the byte at @offset of the source (1-based line and column). */
phg_pos_t phg_diag_pos_at(const phg_diag_t *d, size_t offset);
/* Byte offset of @pos in the source (clamped to the source length). */
size_t phg_diag_offset(const phg_diag_t *d, phg_pos_t pos);

#endif /* PHG_DIAG_H */
