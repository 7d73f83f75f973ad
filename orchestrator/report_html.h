/*
 * report_html.h - the run report as one self-contained HTML file.
 */
#ifndef PHG_REPORT_HTML_H
#define PHG_REPORT_HTML_H

#include <stdio.h>

#include <jansson.h>

/* Write the report of @doc = {"run": {...the runs row, started_ms,
 * finished_ms}, "events": [{id, ms, at, phase, step, kind, message, data}],
 * "backups": [{phase, path, size, sha256, taken_at}]} to @f.  0 or -1. */
int phg_report_html(FILE *f, const char *plan_name, json_t *doc);

#endif /* PHG_REPORT_HTML_H */
