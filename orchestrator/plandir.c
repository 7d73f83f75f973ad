/*
 * plandir.c - a directory of plans, a migration history as Alembic users
 * know it (`versions/`, `upgrade head`, `downgrade`, `current`, `history`).
 *
 * Every command that takes PLAN.yaml also takes a directory: its *.yaml and
 * *.yml files are plans, run in file-name order (001-..., 002-...).  Each
 * plan keeps its own runs, lock and state in the database exactly as when
 * it is given alone; the directory only orders them:
 *
 *   apply DIR       each plan that is not completed, in order, stopping at
 *                   the first failure with its exit code; a completed plan
 *                   is never re-run, and a completed plan whose file
 *                   changed is drift (exit 2), as for one plan;
 *   rollback DIR    later plans first: all of them, or those after --to;
 *   status DIR      each plan's state, which one is current and which head;
 *   current DIR     the database's place in the directory, in two lines.
 *
 * `--to NAME` names a plan (its name, or its file name with or without the
 * extension), `--to NAME:PHASE` a phase of one.  A plan's `requires:` must
 * come before it in the directory, and two plans may not share a name:
 * both are refused when the directory is loaded, before anything runs.
 *
 * Everything here happens before a loop starts or between the runs of one
 * plan after another; each plan's run is its own engine (commands.c).
 */
#include "plandir.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "buf.h"
#include "diag.h"
#include "engine.h"
#include "log.h"
#include "plan.h"

typedef struct {
	char *path;
	char *base; /* file name without .yaml/.yml */
	phg_plan_t *plan;
	json_t *diags; /* validate --format json: its diagnostics */
} dplan_t;

typedef struct {
	const char *dir;
	dplan_t *v;
	size_t n;
	phg_strv_t names;      /* the plans' names, for history */
	phg_diag_format_t fmt; /* validate --format: how errors are said */
	json_t *diags;         /* --format json: the directory's own errors */
} plandir_t;

static int by_path(const void *a, const void *b)
{
	return strcmp(((const dplan_t *)a)->base, ((const dplan_t *)b)->base);
}

static void dir_free(plandir_t *d)
{
	for (size_t i = 0; i < d->n; i++) {
		phg_plan_free(d->v[i].plan);
		free(d->v[i].path);
		free(d->v[i].base);
		json_decref(d->v[i].diags);
	}
	free(d->v);
	phg_strv_clear(&d->names);
	json_decref(d->diags);
	memset(d, 0, sizeof(*d));
}

static const char *yaml_ext(const char *name)
{
	size_t n = strlen(name);

	if (n > 5 && strcmp(name + n - 5, ".yaml") == 0)
		return name + n - 5;
	if (n > 4 && strcmp(name + n - 4, ".yml") == 0)
		return name + n - 4;
	return NULL;
}

/* The plan files of @dir, sorted (nothing loaded yet).  0, or exit 2. */
static int dir_list(plandir_t *d, const char *dir)
{
	DIR *dh = opendir(dir);
	struct dirent *de;
	size_t cap = 0;

	memset(d, 0, sizeof(*d));
	d->dir = dir;
	if (dh == NULL) {
		phg_log_plain(PHG_LOG_ERROR, "cannot read the directory \"%s\": %s", dir,
		              strerror(errno));
		return PHG_EXIT_USAGE;
	}
	while ((de = readdir(dh)) != NULL) {
		const char *ext = yaml_ext(de->d_name);
		struct stat sb;
		char *path;

		if (de->d_name[0] == '.' || ext == NULL)
			continue;
		path = phg_asprintf("%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", de->d_name);
		if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			free(path);
			continue;
		}
		if (d->n == cap) {
			cap = cap ? cap * 2 : 16;
			d->v = phg_realloc(d->v, cap * sizeof(*d->v));
		}
		d->v[d->n].path = path;
		d->v[d->n].base = phg_asprintf("%.*s", (int)(ext - de->d_name), de->d_name);
		d->v[d->n].plan = NULL;
		d->v[d->n].diags = NULL;
		d->n++;
	}
	closedir(dh);
	if (d->n == 0) {
		phg_log_plain(PHG_LOG_ERROR, "the directory \"%s\" holds no plan (no *.yaml or *.yml "
		                             "file)",
		              dir);
		return PHG_EXIT_USAGE;
	}
	qsort(d->v, d->n, sizeof(*d->v), by_path);
	return 0;
}

static int dir_find(const plandir_t *d, const char *name)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].plan != NULL && strcmp(d->v[i].plan->name, name) == 0)
			return (int)i;
	return -1;
}

/* An error of the directory about plan file @file: a line on stderr, a
 * GitHub annotation, or a diagnostic of the --format json document. */
static void dir_error(plandir_t *d, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void dir_error(plandir_t *d, const char *file, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (d->fmt == PHG_DIAG_GITHUB)
		printf("::error file=%s::%s\n", file, msg);
	else if (d->fmt == PHG_DIAG_COLLECT && d->diags != NULL)
		json_array_append_new(d->diags, json_pack("{s:s,s:s,s:n,s:n,s:s}", "severity", "error",
		                                          "file", file, "line", "col", "message", msg));
	else
		phg_log_plain(PHG_LOG_ERROR, "%s: %s", file, msg);
}

/* The directory's own rules, once every plan loaded: unique names, and
 * each `requires` an earlier plan.  Every violation is said; 0 or 2. */
static int dir_rules(plandir_t *d)
{
	int bad = 0;

	for (size_t i = 0; i < d->n; i++) {
		const phg_plan_t *p = d->v[i].plan;
		int j = dir_find(d, p->name);

		if (j >= 0 && (size_t)j < i) {
			dir_error(d, d->v[i].path, "plan name \"%s\" is also the name of %s", p->name,
			          d->v[j].path);
			if (d->fmt == PHG_DIAG_TEXT)
				phg_log_note("HINT", "Each plan of a directory has a name of its own: the "
				                     "database records runs by plan name.");
			bad = 1;
		}
		for (size_t r = 0; r < p->requires.n; r++) {
			int k = dir_find(d, p->requires.v[r]);

			if (k < 0) {
				dir_error(d, d->v[i].path, "plan \"%s\" requires plan \"%s\", which is not in "
				                           "the directory \"%s\"",
				          p->name, p->requires.v[r], d->dir);
				bad = 1;
			} else if ((size_t)k > i) {
				dir_error(d, d->v[i].path, "plan \"%s\" requires plan \"%s\", but %s comes "
				                           "after it in file-name order",
				          p->name, p->requires.v[r], d->v[k].path);
				if (d->fmt == PHG_DIAG_TEXT)
					phg_log_note("HINT", "Plans run in file-name order: rename the files so "
					                     "that \"%s\" sorts before \"%s\".",
					             d->v[k].base, d->v[i].base);
				bad = 1;
			}
		}
	}
	return bad ? PHG_EXIT_USAGE : 0;
}

/* List and load @dir; every plan's diagnostics are said (@fmt: as
 * validate --format asks).  0, or 2. */
static int dir_load(plandir_t *d, const char *dir, const char *env, phg_diag_format_t fmt)
{
	int rc = dir_list(d, dir), bad = 0;

	d->fmt = fmt;
	if (fmt == PHG_DIAG_COLLECT)
		d->diags = json_array();
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < d->n; i++) {
		phg_err_t err;

		if (fmt == PHG_DIAG_COLLECT) {
			d->v[i].diags = json_array();
			phg_diag_set_format(PHG_DIAG_COLLECT, d->v[i].diags);
		}
		phg_err_clear(&err);
		rc = phg_plan_load(d->v[i].path, stderr, &d->v[i].plan, &err);
		if (rc == PHG_EIO && fmt == PHG_DIAG_COLLECT)
			json_array_append_new(d->v[i].diags,
			                      json_pack("{s:s,s:s,s:n,s:n,s:s}", "severity", "error",
			                                "file", d->v[i].path, "line", "col", "message",
			                                err.msg));
		else if (rc == PHG_EIO)
			dir_error(d, d->v[i].path, "%s", err.msg);
		if (rc != 0) {
			bad = 1;
			continue;
		}
		if (env != NULL && phg_plan_select_env(d->v[i].plan, env, &err) != 0) {
			dir_error(d, d->v[i].path, "%s", err.msg);
			bad = 1;
		}
		phg_strv_push(&d->names, d->v[i].plan->name);
	}
	if (bad)
		return PHG_EXIT_USAGE;
	return dir_rules(d);
}

/* --to NAME or NAME:PHASE: the plan's index, and the phase (or NULL) in
 * *@phase (pointing into @to).  -1 after saying what is wrong. */
static int dir_to(const plandir_t *d, const char *to, const char **phase, char *buf, size_t len)
{
	const char *colon = strchr(to, ':');

	*phase = NULL;
	snprintf(buf, len, "%.*s", colon ? (int)(colon - to) : (int)strlen(to), to);
	if (colon != NULL) {
		*phase = colon + 1;
		if (**phase == '\0') {
			phg_log_plain(PHG_LOG_ERROR, "--to \"%s\": no phase after \":\"", to);
			return -1;
		}
	}
	for (size_t i = 0; i < d->n; i++) {
		const char *file = strrchr(d->v[i].path, '/');

		file = file ? file + 1 : d->v[i].path;
		if (strcmp(d->v[i].plan->name, buf) == 0 || strcmp(d->v[i].base, buf) == 0 ||
		    strcmp(file, buf) == 0)
			return (int)i;
	}
	phg_log_plain(PHG_LOG_ERROR, "--to \"%s\": no plan \"%s\" in the directory \"%s\"", to, buf,
	              d->dir);
	{
		phg_buf_t b;

		phg_buf_init(&b, 64 * 1024);
		for (size_t i = 0; i < d->n; i++)
			phg_buf_printf(&b, "%s%s", i ? ", " : "", d->v[i].plan->name);
		phg_log_note("HINT", "Its plans, in order: %s (a plan's name or its file name; "
		                     "NAME:PHASE for a phase).",
		             b.data);
		phg_buf_free(&b);
	}
	return -1;
}

/* ---- the state of each plan ---- */

typedef struct {
	json_t *st;    /* status --json of the plan */
	const char *state;
	long long run; /* 0: never ran */
	int drift;
} dstate_t;

static void states_free(dstate_t *s, size_t n);

/* Each plan's state on the database, or NULL with *@rc the exit code. */
static dstate_t *dir_states(const plandir_t *d, const phg_run_opts_t *o, int *rc)
{
	dstate_t *out = phg_calloc(d->n, sizeof(*out));

	*rc = 0;
	for (size_t i = 0; i < d->n; i++) {
		phg_run_opts_t so = *o;

		so.json = 1;
		so.plans = NULL;
		*rc = phg_status_json(d->v[i].plan, &so, &out[i].st);
		if (*rc != 0 || out[i].st == NULL) {
			if (*rc == 0)
				*rc = PHG_EXIT_RUNTIME;
			states_free(out, d->n);
			return NULL;
		}
		out[i].state = json_string_value(json_object_get(out[i].st, "state"));
		if (out[i].state == NULL)
			out[i].state = "not_started";
		out[i].run = (long long)json_integer_value(json_object_get(out[i].st, "run_id"));
		out[i].drift = json_is_true(json_object_get(out[i].st, "drift"));
	}
	return out;
}

static void states_free(dstate_t *s, size_t n)
{
	for (size_t i = 0; s != NULL && i < n; i++)
		json_decref(s[i].st);
	free(s);
}

static int is_state(const dstate_t *s, const char *name)
{
	return strcmp(s->state, name) == 0;
}

/* current: the last plan of the longest completed prefix (-1: none). */
static int dir_current(const plandir_t *d, const dstate_t *s)
{
	int cur = -1;

	for (size_t i = 0; i < d->n && is_state(&s[i], "completed"); i++)
		cur = (int)i;
	return cur;
}

/* ---- the commands ---- */

static int dir_validate(const plandir_t *d, phg_diag_format_t f, int loaded)
{
	if (f == PHG_DIAG_COLLECT) {
		json_t *o = json_pack("{s:s,s:b}", "directory", d->dir, "valid", loaded == 0);
		json_t *plans = json_array();
		char *s;

		for (size_t i = 0; i < d->n; i++) {
			const phg_plan_t *p = d->v[i].plan;

			json_array_append_new(plans, json_pack("{s:s,s:b,s:o,s:o,s:o,s:O}", "file",
			                                       d->v[i].path, "valid", p != NULL, "plan",
			                                       p ? json_string(p->name) : json_null(),
			                                       "checksum",
			                                       p ? json_string(p->checksum) : json_null(),
			                                       "phases",
			                                       p ? json_integer((json_int_t)p->nphases)
			                                         : json_null(),
			                                       "diagnostics", d->v[i].diags));
		}
		json_object_set_new(o, "plans", plans);
		json_object_set(o, "diagnostics", d->diags);
		s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
		json_decref(o);
		return loaded;
	}
	if (loaded != 0)
		return loaded;
	for (size_t i = 0; i < d->n; i++) {
		const phg_plan_t *p = d->v[i].plan;

		if (f == PHG_DIAG_GITHUB)
			printf("::notice file=%s::plan \"%s\" is valid: %zu phase(s), checksum %s\n",
			       d->v[i].path, p->name, p->nphases, p->checksum);
		else
			printf("%s: ok: plan \"%s\", %zu phase(s), checksum %s\n", d->v[i].path, p->name,
			       p->nphases, p->checksum);
	}
	if (f == PHG_DIAG_TEXT)
		printf("%s: ok: %zu plan(s) in order, head \"%s\"\n", d->dir, d->n,
		       d->v[d->n - 1].plan->name);
	return PHG_EXIT_OK;
}

static int dir_plan(const plandir_t *d)
{
	for (size_t i = 0; i < d->n; i++) {
		printf("-- ===== plan %zu/%zu: %s =====\n", i + 1, d->n, d->v[i].path);
		fflush(stdout);
		phg_cli_render(d->v[i].plan);
	}
	return PHG_EXIT_OK;
}

static int dir_apply(const plandir_t *d, const phg_run_opts_t *o)
{
	int to = (int)d->n - 1, rc;
	const char *phase = NULL;
	char name[256];
	dstate_t *s;

	if (o->to_phase != NULL && (to = dir_to(d, o->to_phase, &phase, name, sizeof(name))) < 0)
		return PHG_EXIT_USAGE;
	if ((s = dir_states(d, o, &rc)) == NULL)
		return rc;
	for (int i = 0; i <= to; i++) {
		phg_run_opts_t po = *o;
		phg_plan_t *p = d->v[i].plan;

		po.to_phase = i == to ? phase : NULL;
		if (is_state(&s[i], "completed") && !s[i].drift) {
			phg_log(PHG_LOG_INFO, NULL, "plan \"%s\" (%s) is completed (run %lld): skipped",
			        p->name, d->v[i].path, s[i].run);
			continue;
		}
		if (o->dry_run) {
			printf("-- ===== plan %d/%zu: %s =====\n", i + 1, d->n, d->v[i].path);
			fflush(stdout);
			rc = phg_cli_dry_run(p, &po);
		} else {
			phg_log(PHG_LOG_INFO, NULL, "plan %d/%zu: \"%s\" (%s)", i + 1, d->n, p->name,
			        d->v[i].path);
			rc = phg_cmd_apply(p, &po);
		}
		if (rc != 0) {
			phg_log(PHG_LOG_ERROR, NULL, "apply of the directory stopped at plan \"%s\" (%s, "
			                             "exit %d)%s",
			        p->name, d->v[i].path, rc,
			        i < to ? ": the plans after it were not started" : "");
			states_free(s, d->n);
			return rc;
		}
	}
	if (!o->dry_run && phase != NULL)
		phg_log(PHG_LOG_INFO, NULL, "the directory \"%s\" is applied up to phase \"%s\" of "
		                            "plan \"%s\"",
		        d->dir, phase, d->v[to].plan->name);
	else if (!o->dry_run)
		phg_log(PHG_LOG_INFO, NULL, "the directory \"%s\" is applied up to plan \"%s\"%s",
		        d->dir, d->v[to].plan->name, to == (int)d->n - 1 ? " (head)" : "");
	states_free(s, d->n);
	return PHG_EXIT_OK;
}

/* one pass of rollback DIR over the plans it reverts, later ones first
 * (--to NAME keeps NAME, --to NAME:PHASE reverts it down to PHASE); @check:
 * each plan's rollback only checks (nothing is written) */
static int rollback_pass(const plandir_t *d, const phg_run_opts_t *o, const dstate_t *s,
                         int to, const char *phase, int check, int *any)
{
	phg_strv_t reverting = {0};
	int rc = 0;

	/* a plan reverted by this command requiring another is no obstacle */
	for (int i = (int)d->n - 1; i > to; i--)
		phg_strv_push(&reverting, d->v[i].plan->name);
	for (int i = (int)d->n - 1; rc == 0 && (i > to || (i == to && phase != NULL)); i--) {
		phg_run_opts_t po = *o;
		phg_plan_t *p = d->v[i].plan;
		phg_log_level_t was = phg_log_get_level();

		if (is_state(&s[i], "not_started") || is_state(&s[i], "rolled_back"))
			continue;
		po.to_phase = i == to ? phase : NULL;
		po.reverting = &reverting;
		po.check_only = check;
		if (check && was < PHG_LOG_WARN)
			phg_log_set_level(PHG_LOG_WARN);
		if (!check)
			phg_log(PHG_LOG_INFO, NULL, "rolling back plan %d/%zu: \"%s\" (%s, %s)", i + 1,
			        d->n, p->name, d->v[i].path, s[i].state);
		*any = 1;
		rc = phg_cmd_rollback(p, &po);
		phg_log_set_level(was);
		if (rc != 0 && check)
			phg_log(PHG_LOG_ERROR, NULL, "rollback of the directory refused: plan \"%s\" (%s) "
			                             "cannot be rolled back (exit %d); no plan was touched",
			        p->name, d->v[i].path, rc);
		else if (rc != 0)
			phg_log(PHG_LOG_ERROR, NULL, "rollback of the directory stopped at plan \"%s\" (%s, "
			                             "exit %d): the plans before it were not touched",
			        p->name, d->v[i].path, rc);
	}
	phg_strv_clear(&reverting);
	return rc;
}

static int dir_rollback(const plandir_t *d, const phg_run_opts_t *o)
{
	int to = -1, rc, any = 0;
	const char *phase = NULL;
	char name[256];
	dstate_t *s;

	if (o->to_phase != NULL && (to = dir_to(d, o->to_phase, &phase, name, sizeof(name))) < 0)
		return PHG_EXIT_USAGE;
	if ((s = dir_states(d, o, &rc)) == NULL)
		return rc;
	/* every plan to revert can be, before any is touched: the lock, the
	 * Alembic revision, the plans requiring it, each step revertible (what
	 * one plan's rollback checks first) */
	rc = rollback_pass(d, o, s, to, phase, 1, &any);
	if (rc == 0)
		rc = rollback_pass(d, o, s, to, phase, 0, &any);
	if (rc == 0 && !any)
		phg_log(PHG_LOG_INFO, NULL, "nothing to roll back: no plan %s of \"%s\" is applied",
		        to >= 0 ? "after the one named" : "", d->dir);
	states_free(s, d->n);
	return rc;
}

/* finalize DIR: each completed plan, in order (those with nothing left
 * finish at once) */
static int dir_finalize(const plandir_t *d, phg_run_opts_t *o)
{
	int rc;
	dstate_t *s = dir_states(d, o, &rc);

	for (size_t i = 0; s != NULL && rc == 0 && i < d->n; i++) {
		if (!is_state(&s[i], "completed") || s[i].drift)
			continue;
		o->finalize = 1;
		rc = phg_cmd_apply(d->v[i].plan, o);
		o->finalize = 0;
	}
	states_free(s, d->n);
	return rc;
}

/* status and current: the plans' states, and where the database stands */
static int dir_status(const plandir_t *d, const phg_run_opts_t *o, int current)
{
	int rc, cur, behind = 0;
	dstate_t *s = dir_states(d, o, &rc);

	if (s == NULL)
		return rc;
	cur = dir_current(d, s);
	for (size_t i = (size_t)(cur + 1); i < d->n; i++)
		behind++;
	if (o->json) {
		json_t *out = json_object(), *plans = json_array();
		char *text;

		json_object_set_new(out, "directory", json_string(d->dir));
		json_object_set_new(out, "head", json_string(d->v[d->n - 1].plan->name));
		json_object_set_new(out, "current", cur >= 0 ? json_string(d->v[cur].plan->name)
		                                             : json_null());
		json_object_set_new(out, "behind", json_integer(behind));
		for (size_t i = 0; i < d->n; i++) {
			json_t *p = current ? json_object() : json_incref(s[i].st);

			if (current) {
				static const char *const keys[] = {"plan", "state", "run_id", "drift"};

				for (size_t k = 0; k < 4; k++) {
					json_t *v = json_object_get(s[i].st, keys[k]);

					json_object_set(p, keys[k], v ? v : json_null());
				}
			}
			if (json_object_get(p, "run_id") == NULL)
				json_object_set_new(p, "run_id", json_null());
			if (json_is_null(json_object_get(p, "drift")) || json_object_get(p, "drift") == NULL)
				json_object_set_new(p, "drift", json_false());
			json_object_set_new(p, "file", json_string(d->v[i].path));
			json_array_append_new(plans, p);
		}
		json_object_set_new(out, "plans", plans);
		text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", text);
		free(text);
		json_decref(out);
	} else if (current) {
		if (cur < 0)
			printf("current: none (no plan of %s has completed on this database)\n", d->dir);
		else
			printf("current: %s (%s), completed in run %lld%s\n", d->v[cur].plan->name,
			       d->v[cur].path, s[cur].run, cur == (int)d->n - 1 ? " (head)" : "");
		if (cur < (int)d->n - 1)
			printf("head:    %s (%s): %d plan(s) to apply\n", d->v[d->n - 1].plan->name,
			       d->v[d->n - 1].path, behind);
		for (size_t i = (size_t)(cur + 1); i < d->n; i++)
			if (!is_state(&s[i], "not_started") && !is_state(&s[i], "rolled_back"))
				printf("%s %s (%s): %s, run %lld\n",
				       is_state(&s[i], "completed") ? "applied:" : "unfinished:",
				       d->v[i].plan->name, d->v[i].path, s[i].state, s[i].run);
	} else {
		printf("directory: %s (%zu plans)\n", d->dir, d->n);
		printf("  %-3s %-28s %-28s %-12s %-8s %s\n", "#", "FILE", "PLAN", "STATE", "RUN",
		       "PHASES");
		for (size_t i = 0; i < d->n; i++) {
			json_t *ph = json_object_get(s[i].st, "phases"), *x;
			size_t k, applied = 0;
			char run[32];

			json_array_foreach(ph, k, x) {
				const char *pst = json_string_value(json_object_get(x, "state"));

				applied += pst != NULL && strcmp(pst, "applied") == 0;
			}
			snprintf(run, sizeof(run), "%lld", s[i].run);
			printf("  %-3zu %-28s %-28s %-12s %-8s %zu/%zu%s%s%s\n", i + 1, d->v[i].base,
			       d->v[i].plan->name, s[i].state, s[i].run ? run : "-", applied,
			       json_array_size(ph), s[i].drift ? "  DRIFT: the file changed since" : "",
			       (int)i == cur ? "  <- current" : "",
			       i == d->n - 1 ? "  (head)" : "");
		}
		if (cur < 0)
			printf("current: none; head: %s (%d plan(s) to apply)\n",
			       d->v[d->n - 1].plan->name, behind);
		else if (cur == (int)d->n - 1)
			printf("current: %s (head)\n", d->v[cur].plan->name);
		else
			printf("current: %s; head: %s (%d plan(s) to apply)\n", d->v[cur].plan->name,
			       d->v[d->n - 1].plan->name, behind);
	}
	states_free(s, d->n);
	return PHG_EXIT_OK;
}

/* events, report, pause, resume: the plan of the newest run (pause/resume:
 * of an unfinished one). */
static int dir_newest(const plandir_t *d, const phg_run_opts_t *o, int unfinished, int *idx)
{
	int rc;
	dstate_t *s = dir_states(d, o, &rc);

	*idx = -1;
	for (size_t i = 0; s != NULL && i < d->n; i++) {
		if (s[i].run == 0)
			continue;
		if (unfinished && (is_state(&s[i], "completed") || is_state(&s[i], "rolled_back")))
			continue;
		if (*idx < 0 || s[i].run > s[*idx].run)
			*idx = (int)i;
	}
	states_free(s, d->n);
	if (rc == 0 && *idx < 0) {
		phg_log_plain(PHG_LOG_ERROR, "no plan of \"%s\" has %s run on this database", d->dir,
		              unfinished ? "an unfinished" : "a");
		rc = PHG_EXIT_RUNTIME;
	}
	return rc;
}

int phg_dir_cmd(const char *cmd, const char *dir, phg_run_opts_t *o, phg_diag_format_t vformat,
                const char *from, const char *attestation)
{
	plandir_t d;
	int rc, idx;

	rc = dir_load(&d, dir, strcmp(cmd, "promote") == 0 ? NULL : o->env,
	              strcmp(cmd, "validate") == 0 ? vformat : PHG_DIAG_TEXT);
	if (strcmp(cmd, "validate") == 0) {
		if (d.n > 0 || vformat == PHG_DIAG_TEXT)
			rc = dir_validate(&d, vformat, rc);
		dir_free(&d);
		return rc;
	}
	if (rc != 0) {
		dir_free(&d);
		return rc;
	}
	if (strcmp(cmd, "plan") == 0) {
		rc = dir_plan(&d);
	} else if (strcmp(cmd, "apply") == 0) {
		rc = dir_apply(&d, o);
	} else if (strcmp(cmd, "rollback") == 0) {
		rc = dir_rollback(&d, o);
	} else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "current") == 0) {
		rc = dir_status(&d, o, cmd[0] == 'c');
	} else if (strcmp(cmd, "finalize") == 0) {
		rc = dir_finalize(&d, o);
	} else if (strcmp(cmd, "history") == 0) {
		o->plans = &d.names;
		rc = phg_cmd_history(d.v[0].plan, o);
		o->plans = NULL;
	} else if (strcmp(cmd, "promote") == 0 && attestation != NULL) {
		phg_log_plain(PHG_LOG_ERROR, "an attestation is of one plan: promote the directory "
		                             "\"%s\" with --from ENV, or each plan file with its own",
		              dir);
		rc = PHG_EXIT_USAGE;
	} else if (strcmp(cmd, "promote") == 0) {
		rc = 0;
		for (size_t i = 0; i < d.n && rc == 0; i++) {
			phg_log(PHG_LOG_INFO, NULL, "promoting plan %zu/%zu: \"%s\" (%s)", i + 1, d.n,
			        d.v[i].plan->name, d.v[i].path);
			rc = phg_cmd_promote(d.v[i].plan, from, o->to_phase, o->yes, attestation);
		}
	} else if (o->run != 0) {
		phg_log_plain(PHG_LOG_ERROR, "%s --run N needs the plan file, not a directory", cmd);
		rc = PHG_EXIT_USAGE;
	} else if ((rc = dir_newest(&d, o, strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0,
	                            &idx)) == 0) {
		phg_plan_t *p = d.v[idx].plan;

		phg_log(PHG_LOG_INFO, NULL, "%s of plan \"%s\" (%s), the newest run of the directory",
		        cmd, p->name, d.v[idx].path);
		if (strcmp(cmd, "events") == 0)
			rc = phg_cmd_events(p, o);
		else if (strcmp(cmd, "report") == 0)
			rc = phg_cmd_report(p, o);
		else
			rc = phg_cmd_pause(p, o, cmd[0] == 'p');
	}
	dir_free(&d);
	return rc;
}
