/*
 * report_html.c - `phasegate report`: one self-contained HTML file of a run
 * (no network, no script), built from what the state schema recorded: the
 * run, its events and its backups (phg_report_html()).
 *
 * The page: the run's identity and outcome; an SVG timeline with a lane per
 * phase (its attempts, steps, gates, backups, lock retries, failures) and a
 * lane per health check (each probe a dot coloured by its verdict, its
 * latency in the tooltip), pause intervals and throttle decisions; the
 * backfill's rows/s and batch size over time; the backups with their
 * sha256; the rollback, if there was one; every event.
 */
#include "report_html.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define W 1100       /* the SVG's width */
#define LABEL_W 170  /* the lane labels */
#define PLOT_W (W - LABEL_W - 20)
#define LANE_H 30

typedef struct {
	double t0, t1; /* ms: the time axis */
	phg_buf_t *b;
} page_t;

static void esc(phg_buf_t *b, const char *s)
{
	for (; s != NULL && *s; s++) {
		switch (*s) {
		case '&': phg_buf_adds(b, "&amp;"); break;
		case '<': phg_buf_adds(b, "&lt;"); break;
		case '>': phg_buf_adds(b, "&gt;"); break;
		case '"': phg_buf_adds(b, "&quot;"); break;
		case '\'': phg_buf_adds(b, "&#39;"); break;
		default: phg_buf_add(b, s, 1); break;
		}
	}
}

static const char *str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s != NULL ? s : "";
}

static double num(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	return json_is_number(v) ? json_number_value(v) : json_is_string(v) ? atof(json_string_value(v)) : 0;
}

static double xpos(const page_t *p, double ms)
{
	double span = p->t1 - p->t0 > 1 ? p->t1 - p->t0 : 1;
	double x = LABEL_W + (ms - p->t0) / span * PLOT_W;

	return x < LABEL_W ? LABEL_W : x > LABEL_W + PLOT_W ? LABEL_W + PLOT_W : x;
}

static const char *state_colour(const char *st)
{
	if (strcmp(st, "applied") == 0 || strcmp(st, "completed") == 0)
		return "#2e9d4a";
	if (strcmp(st, "failed") == 0)
		return "#d33c3c";
	if (strcmp(st, "rolled_back") == 0 || strcmp(st, "reverted") == 0)
		return "#9a7b4f";
	return "#5b7fd6"; /* running, interrupted, pending */
}

/* The phases, in the order the run first touched them. */
static size_t phase_names(json_t *events, const char **names, size_t max)
{
	size_t n = 0, i;
	json_t *e;

	json_array_foreach(events, i, e) {
		const char *ph = json_string_value(json_object_get(e, "phase"));
		size_t k;

		if (ph == NULL)
			continue;
		for (k = 0; k < n && strcmp(names[k], ph) != 0; k++)
			;
		if (k == n && n < max)
			names[n++] = ph;
	}
	return n;
}

static size_t check_names(json_t *events, const char **names, size_t max)
{
	size_t n = 0, i;
	json_t *e;

	json_array_foreach(events, i, e) {
		const char *c;
		size_t k;

		if (strcmp(str(e, "kind"), "probe") != 0)
			continue;
		c = json_string_value(json_object_get(json_object_get(e, "data"), "check"));
		if (c == NULL)
			continue;
		for (k = 0; k < n && strcmp(names[k], c) != 0; k++)
			;
		if (k == n && n < max)
			names[n++] = c;
	}
	return n;
}

static int lane_of(const char **names, size_t n, const char *s)
{
	for (size_t k = 0; s != NULL && k < n; k++)
		if (strcmp(names[k], s) == 0)
			return (int)k;
	return -1;
}

static void axis(page_t *p, double y, double h)
{
	double span = (p->t1 - p->t0) / 1000.0, step = 1;
	static const double steps[] = {0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600};

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		step = steps[i];
		if (span / step <= 12)
			break;
	}
	for (double s = 0; s <= span + 1e-9; s += step) {
		double x = xpos(p, p->t0 + s * 1000);

		phg_buf_printf(p->b,
		               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
		               "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">%gs</text>\n",
		               x, y, x, y + h, x, y + h + 14, s);
	}
}

/* An interval of a lane, with its tooltip. */
static void bar(page_t *p, double a, double z, double y, double h, const char *colour,
                const char *cls, const char *title)
{
	double x0 = xpos(p, a), x1 = xpos(p, z);

	phg_buf_printf(p->b, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
	                     "fill=\"%s\"><title>",
	               cls, x0, y, x1 - x0 < 2 ? 2 : x1 - x0, h, colour);
	esc(p->b, title);
	phg_buf_adds(p->b, "</title></rect>\n");
}

static void marker(page_t *p, double ms, double y, const char *shape, const char *colour,
                   const char *cls, const char *title)
{
	double x = xpos(p, ms);

	if (strcmp(shape, "diamond") == 0)
		phg_buf_printf(p->b, "<path class=\"%s\" d=\"M%.1f %.1f l6 6 l-6 6 l-6 -6 z\" stroke=\"#fff\" fill=\"%s\">",
		               cls, x, y - 6, colour);
	else if (strcmp(shape, "square") == 0)
		phg_buf_printf(p->b, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" "
		                     "fill=\"%s\">",
		               cls, x - 4.5, y - 4.5, colour);
		else if (strcmp(shape, "tick") == 0)
		phg_buf_printf(p->b, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"2\" height=\"14\" "
		                     "fill=\"%s\">",
		               cls, x - 1, y - 7, colour);
	else
		phg_buf_printf(p->b, "<circle class=\"%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\">",
		               cls, x, y, colour);
	phg_buf_adds(p->b, "<title>");
	esc(p->b, title);
	phg_buf_printf(p->b, "</title></%s>\n", strcmp(shape, "diamond") == 0  ? "path"
	                                        : strcmp(shape, "circle") == 0 ? "circle"
	                                                                       : "rect");
}

static void timeline(page_t *p, json_t *events)
{
	const char *phases[64], *checks[32];
	size_t np = phase_names(events, phases, 64), nc = check_names(events, checks, 32), i;
	double open[64], sopen[64][16], pause_at = -1;
	double top = 10, h = (double)(np + nc) * LANE_H + 10;
	json_t *e;
	char title[1024];

	for (size_t k = 0; k < 64; k++) {
		open[k] = -1;
		for (size_t s = 0; s < 16; s++)
			sopen[k][s] = -1;
	}
	phg_buf_printf(p->b, "<svg id=\"timeline\" width=\"%d\" "
	                     "height=\"%.0f\" role=\"img\" aria-label=\"timeline\">\n",
	               W, top + h + 30);
	for (size_t k = 0; k < np; k++) {
		phg_buf_printf(p->b, "<text x=\"8\" y=\"%.1f\" class=\"lane\">phase ",
		               top + (double)k * LANE_H + 19);
		esc(p->b, phases[k]);
		phg_buf_adds(p->b, "</text>\n");
	}
	for (size_t k = 0; k < nc; k++) {
		phg_buf_printf(p->b, "<text x=\"8\" y=\"%.1f\" class=\"lane\">check ",
		               top + (double)(np + k) * LANE_H + 19);
		esc(p->b, checks[k]);
		phg_buf_adds(p->b, "</text>\n");
	}
	axis(p, top, h);
	json_array_foreach(events, i, e) {
		const char *kind = str(e, "kind"), *ph = json_string_value(json_object_get(e, "phase"));
		json_t *d = json_object_get(e, "data");
		double ms = num(e, "ms"), y;
		int lane = lane_of(phases, np, ph);
		long step = (long)num(e, "step");

		y = top + (double)(lane < 0 ? 0 : lane) * LANE_H;
		if (strcmp(kind, "phase_state") == 0 && lane >= 0) {
			const char *to = str(d, "to");

			if (strcmp(to, "running") == 0) {
				open[lane] = ms;
			} else if (open[lane] >= 0) {
				snprintf(title, sizeof(title), "phase %s: %s (%.1f s)", ph, to,
				         (ms - open[lane]) / 1000.0);
				bar(p, open[lane], ms, y + 4, 12, state_colour(to), "phase", title);
				open[lane] = -1;
			}
		} else if (strcmp(kind, "step_state") == 0 && lane >= 0 && step >= 1 && step <= 16) {
			const char *to = str(d, "to");

			if (strcmp(to, "running") == 0 || strcmp(to, "reverting") == 0) {
				sopen[lane][step - 1] = ms;
			} else if (sopen[lane][step - 1] >= 0) {
				snprintf(title, sizeof(title), "step %ld (%s) of %s: %s", step,
				         str(e, "step_kind")[0] ? str(e, "step_kind") : "step", ph, to);
				bar(p, sopen[lane][step - 1], ms, y + 18, 7, state_colour(to), "step", title);
				sopen[lane][step - 1] = -1;
			}
		} else if (strcmp(kind, "gate_passed") == 0 || strcmp(kind, "gate_failed") == 0) {
			snprintf(title, sizeof(title), "%s: %s", kind, str(e, "message"));
			marker(p, ms, y + 10, "diamond", kind[5] == 'p' ? "#2e9d4a" : "#d33c3c", "gate", title);
		} else if (strcmp(kind, "backup") == 0) {
			snprintf(title, sizeof(title), "backup %s (%.0f bytes, %s)", str(d, "path"),
			         num(d, "size"), str(d, "sha256"));
			marker(p, ms, y + 10, "square", "#3b6fd1", "backup", title);
		} else if (strcmp(kind, "lock_retry") == 0 || strcmp(kind, "step_failed") == 0) {
			snprintf(title, sizeof(title), "%s: %s", kind, str(e, "message"));
			marker(p, ms, y + 10, "tick", "#d33c3c", kind[0] == 'l' ? "lockretry" : "failure",
			       title);
		} else if (strncmp(kind, "throttle", 8) == 0) {
			snprintf(title, sizeof(title), "%s: %s", kind, str(e, "message"));
			marker(p, ms, y + 26, "tick", "#e39b21", "throttle", title);
		} else if (strcmp(kind, "probe") == 0) {
			int cl = lane_of(checks, nc, json_string_value(json_object_get(d, "check")));

			if (cl < 0)
				continue;
			snprintf(title, sizeof(title), "%s check %s: %s, HTTP %.0f, %.0f ms%s%s", str(d, "gate"),
			         str(d, "check"), json_is_true(json_object_get(d, "ok")) ? "pass" : "FAIL",
			         num(d, "status"), num(d, "latency_ms"), str(d, "reason")[0] ? ": " : "",
			         str(d, "reason"));
			marker(p, ms, top + (double)(np + (size_t)cl) * LANE_H + 15, "circle",
			       json_is_true(json_object_get(d, "ok")) ? "#2e9d4a" : "#d33c3c", "probe", title);
		} else if (strcmp(kind, "paused") == 0) {
			pause_at = ms;
		} else if (strcmp(kind, "resumed") == 0 && pause_at >= 0) {
			bar(p, pause_at, ms, top, h - 10, "rgba(240,200,60,0.25)", "pause", "paused by an operator");
			pause_at = -1;
		}
	}
	/* what was still open when the events end */
	for (size_t k = 0; k < np; k++)
		if (open[k] >= 0)
			bar(p, open[k], p->t1, top + (double)k * LANE_H + 4, 12, "#5b7fd6", "phase",
			    "still running when the record ends");
	phg_buf_adds(p->b, "</svg>\n");
}

/* rows/s and batch size of the backfills, on the same time axis */
static void backfill_chart(page_t *p, json_t *events)
{
	double maxr = 1, maxb = 1, hh = 120;
	size_t i, n = 0;
	json_t *e;

	json_array_foreach(events, i, e) {
		json_t *d = json_object_get(e, "data");

		if (strncmp(str(e, "kind"), "backfill_", 9) != 0 || !json_is_object(d))
			continue;
		if (num(d, "rows_per_s") > maxr)
			maxr = num(d, "rows_per_s");
		if (num(d, "batch_size") > maxb)
			maxb = num(d, "batch_size");
		n++;
	}
	if (n == 0) {
		phg_buf_adds(p->b, "<p class=\"none\">No backfill in this run.</p>\n");
		return;
	}
	phg_buf_printf(p->b, "<svg id=\"backfill\" width=\"%d\" "
	                     "height=\"%.0f\">\n<text x=\"8\" y=\"20\" class=\"lane\">rows/s (max %.0f)"
	                     "</text><text x=\"8\" y=\"38\" class=\"lane b\">batch size (max %.0f)"
	                     "</text>\n",
	               W, hh + 40, maxr, maxb);
	axis(p, 10, hh);
	for (int pass = 0; pass < 2; pass++) {
		phg_buf_printf(p->b, "<polyline class=\"%s\" fill=\"none\" points=\"",
		               pass ? "batch" : "rate");
		json_array_foreach(events, i, e) {
			json_t *d = json_object_get(e, "data");
			double v;

			if (strncmp(str(e, "kind"), "backfill_", 9) != 0 || !json_is_object(d))
				continue;
			v = pass ? num(d, "batch_size") / maxb : num(d, "rows_per_s") / maxr;
			phg_buf_printf(p->b, "%.1f,%.1f ", xpos(p, num(e, "ms")), 10 + hh - v * hh);
		}
		phg_buf_adds(p->b, "\"/>\n");
	}
	json_array_foreach(events, i, e) {
		json_t *d = json_object_get(e, "data");
		char title[512];

		if (strncmp(str(e, "kind"), "backfill_", 9) != 0 || !json_is_object(d))
			continue;
		snprintf(title, sizeof(title), "%s", str(e, "message"));
		marker(p, num(e, "ms"), 10 + hh - num(d, "rows_per_s") / maxr * hh, "circle", "#5b7fd6",
		       "progress", title);
	}
	phg_buf_adds(p->b, "</svg>\n");
}

static void kv(phg_buf_t *b, const char *k, const char *v)
{
	phg_buf_adds(b, "<tr><th>");
	esc(b, k);
	phg_buf_adds(b, "</th><td>");
	esc(b, v != NULL && v[0] ? v : "—");
	phg_buf_adds(b, "</td></tr>\n");
}

int phg_report_html(FILE *f, const char *plan_name, json_t *doc)
{
	json_t *run = json_object_get(doc, "run"), *events = json_object_get(doc, "events");
	json_t *backups = json_object_get(doc, "backups"), *e;
	phg_buf_t b;
	page_t p;
	size_t i, nrb = 0;
	char who[300], runid[32];
	const char *state = str(run, "state");

	phg_buf_init(&b, 256u * 1024 * 1024);
	p.b = &b;
	p.t0 = num(run, "started_ms");
	p.t1 = num(run, "finished_ms");
	json_array_foreach(events, i, e) {
		double ms = num(e, "ms");

		if (p.t0 <= 0 || ms < p.t0)
			p.t0 = ms;
		if (ms > p.t1)
			p.t1 = ms;
	}
	if (p.t1 <= p.t0)
		p.t1 = p.t0 + 1000;
	snprintf(who, sizeof(who), "%s@%s", str(run, "who"), str(run, "host"));
	snprintf(runid, sizeof(runid), "%.0f", num(run, "id"));
	phg_buf_adds(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	                 "<meta name=\"viewport\" content=\"width=device-width\">\n<title>phasegate "
	                 "report: ");
	esc(&b, plan_name);
	phg_buf_printf(&b, " run %s</title>\n", runid);
	phg_buf_adds(&b,
	             "<style>\n"
	             "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fff}\n"
	             "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\n"
	             "table{border-collapse:collapse}th,td{text-align:left;padding:3px 10px 3px 0;"
	             "vertical-align:top}\n"
	             "table.list td,table.list th{border-bottom:1px solid #e4e7ec;padding:4px 10px}\n"
	             ".outcome{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;"
	             "font-weight:600}\n"
	             "svg{display:block;margin:6px 0;background:#fafbfc;border:1px solid #e4e7ec}\n"
	             ".lane{font-size:12px;fill:#1d2430}.lane.b{fill:#e39b21}.tick{font-size:10px;"
	             "fill:#667}\n"
	             ".grid{stroke:#e4e7ec}.rate{stroke:#5b7fd6;stroke-width:2}.batch{stroke:#e39b21;"
	             "stroke-width:2;stroke-dasharray:4 3}\n"
	             "code{font:12px ui-monospace,monospace;word-break:break-all}.none{color:#667}\n"
	             "</style></head><body>\n<h1>");
	esc(&b, plan_name);
	phg_buf_printf(&b, " — run %s</h1>\n<p><span class=\"outcome\" id=\"outcome\" "
	                   "style=\"background:%s\">",
	               runid, state_colour(state));
	esc(&b, state);
	phg_buf_adds(&b, "</span> ");
	esc(&b, str(run, "note"));
	phg_buf_adds(&b, "</p>\n<table id=\"identity\">\n");
	kv(&b, "plan", plan_name);
	kv(&b, "checksum", str(run, "checksum"));
	kv(&b, "environment", str(run, "env"));
	kv(&b, "target", str(run, "target"));
	kv(&b, "last action", str(run, "action"));
	kv(&b, "started", str(run, "started_at"));
	kv(&b, "finished", str(run, "finished_at"));
	kv(&b, "by", who);
	kv(&b, "promoted from", str(run, "promoted_from"));
	kv(&b, "error", str(run, "error"));
	phg_buf_adds(&b, "</table>\n<h2>Timeline</h2>\n<p class=\"none\">Bars: phases (upper) and "
	                 "steps (lower), green applied, red failed, brown rolled back. Diamonds: "
	                 "gates. Squares: backups. Red ticks: lock retries and failures; orange: "
	                 "throttle decisions. Dots: health-check probes. Hover for details.</p>\n");
	timeline(&p, events);
	phg_buf_adds(&b, "<h2>Backfill</h2>\n");
	backfill_chart(&p, events);
	phg_buf_adds(&b, "<h2>Backups</h2>\n");
	if (json_array_size(backups) == 0) {
		phg_buf_adds(&b, "<p class=\"none\">No backup in this run.</p>\n");
	} else {
		phg_buf_adds(&b, "<table class=\"list\" id=\"backups\"><tr><th>phase</th><th>file</th>"
		                 "<th>bytes</th><th>sha256</th><th>taken</th></tr>\n");
		json_array_foreach(backups, i, e) {
			phg_buf_adds(&b, "<tr><td>");
			esc(&b, str(e, "phase"));
			phg_buf_adds(&b, "</td><td><code>");
			esc(&b, str(e, "path"));
			phg_buf_printf(&b, "</code></td><td>%.0f</td><td><code>", num(e, "size"));
			esc(&b, str(e, "sha256"));
			phg_buf_adds(&b, "</code></td><td>");
			esc(&b, str(e, "taken_at"));
			phg_buf_adds(&b, "</td></tr>\n");
		}
		phg_buf_adds(&b, "</table>\n");
	}
	json_array_foreach(events, i, e) {
		json_t *d = json_object_get(e, "data");

		if ((strcmp(str(e, "kind"), "phase_state") == 0 || strcmp(str(e, "kind"), "run_state") == 0) &&
		    strcmp(str(d, "to"), "rolled_back") == 0)
			nrb++;
	}
	phg_buf_adds(&b, "<h2>Rollback</h2>\n");
	if (nrb == 0) {
		phg_buf_adds(&b, "<p class=\"none\">Nothing was rolled back.</p>\n");
	} else {
		phg_buf_adds(&b, "<table class=\"list\" id=\"rollback\">\n");
		json_array_foreach(events, i, e) {
			const char *k = str(e, "kind");

			if (strcmp(k, "gate_failed") != 0 && strcmp(k, "step_failed") != 0 &&
			    strcmp(str(json_object_get(e, "data"), "to"), "rolled_back") != 0 &&
			    strcmp(str(json_object_get(e, "data"), "to"), "reverted") != 0)
				continue;
			phg_buf_adds(&b, "<tr><td>");
			esc(&b, str(e, "at"));
			phg_buf_adds(&b, "</td><td>");
			esc(&b, str(e, "phase"));
			phg_buf_adds(&b, "</td><td>");
			esc(&b, k);
			phg_buf_adds(&b, "</td><td>");
			esc(&b, str(e, "message"));
			phg_buf_adds(&b, "</td></tr>\n");
		}
		phg_buf_adds(&b, "</table>\n");
	}
	phg_buf_printf(&b, "<h2>Events</h2>\n<details><summary>%zu events</summary>\n"
	                   "<table class=\"list\" id=\"events\">\n",
	               json_array_size(events));
	json_array_foreach(events, i, e) {
		phg_buf_adds(&b, "<tr><td>");
		esc(&b, str(e, "at"));
		phg_buf_adds(&b, "</td><td>");
		esc(&b, str(e, "phase"));
		phg_buf_adds(&b, "</td><td>");
		esc(&b, str(e, "kind"));
		phg_buf_adds(&b, "</td><td>");
		esc(&b, str(e, "message"));
		phg_buf_adds(&b, "</td></tr>\n");
	}
	phg_buf_adds(&b, "</table></details>\n<p class=\"none\">Made by phasegate from the run's "
	                 "recorded events.</p>\n</body></html>\n");
	if (phg_buf_error(&b) != 0 || fwrite(b.data, 1, b.len, f) != b.len) {
		phg_buf_free(&b);
		return -1;
	}
	phg_buf_free(&b);
	return 0;
}
