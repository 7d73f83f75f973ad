/*
 * cli.c - the command line (SPEC section 1): parsing, --help texts,
 * `validate`, `plan` and `apply --dry-run` rendering; the commands that
 * talk to the database are in engine.c and report.c.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "diag.h"
#include "engine.h"
#include "log.h"
#include "plan.h"
#include "plandir.h"
#include "step.h"

typedef struct cmd_s {
	const char *name;
	const char *usage;
	const char *help;
	unsigned opts; /* OPT_* accepted */
	int needs_plan;
	const char *exits; /* the exit codes it can return (README "Exit codes") */
	const char *summary; /* one line for the top-level help */
} cmd_t;

#define OPT_ENV 0x01u
#define OPT_TO 0x02u
#define OPT_DRY 0x04u
#define OPT_JSON 0x08u
#define OPT_FROM 0x10u
#define OPT_YES 0x20u
#define OPT_URLENV 0x40u
#define OPT_FORMAT 0x80u
#define OPT_RUN 0x100u
#define OPT_FOLLOW 0x200u
#define OPT_ATTEST 0x400u
#define OPT_OUTPUT 0x800u
#define OPT_STRICT 0x1000u
#define OPT_TAKEOVER 0x2000u

#define GONE_HELP                                                                            \
	"  --url-env V  the plan file is gone: PLAN is the plan's name, the database comes\n"     \
	"               from $V (default DATABASE_URL; with --env, required), and the plan\n"      \
	"               is the one its last run recorded\n"

static const cmd_t commands[] = {
	{"validate", "phasegate validate PLAN.yaml|DIR [--strict] [--format text|json|github]",
	 "Parse and lint the plan; touch nothing. Every SQL fragment is parsed by PostgreSQL's\n"
	 "own parser in the statement it goes into. Errors are printed as FILE:LINE:COL: message\n"
	 "with the source line and a caret (exit 2); lint warnings do not fail (exit 0).\n"
	 "A statement holding the comment `-- phasegate:safety_assured` is acknowledged: the\n"
	 "lint says nothing of it.\n"
	 "  --strict         lint warnings are errors (exit 2)\n"
	 "  --format json    one JSON document on stdout: {file, valid, plan, checksum, phases,\n"
	 "                   diagnostics: [{severity, file, line, col, message}]}\n"
	 "  --format github  GitHub Actions annotations on stdout (::error file=,line=,col=::)\n",
	 OPT_FORMAT | OPT_STRICT, 1,
	 "0 valid (lint warnings do not fail without --strict), 2 invalid plan or bad invocation",
	 "parse and lint the plan; touch nothing"},
	{"plan", "phasegate plan PLAN.yaml|DIR [--env E]",
	 "Print every SQL statement and action of the plan, in order, with the lock settings\n"
	 "they run under; connects to nothing.\n",
	 OPT_ENV, 1,
	 "0, 2 invalid plan or bad invocation",
	 "print every SQL statement and action, in order; connect to nothing"},
	{"apply", "phasegate apply PLAN.yaml|DIR [--env E] [--to PHASE] [--dry-run] [--yes] [--takeover]",
	 "Apply the plan's phases in order, gating each one; resumable: run it again after a\n"
	 "crash, kill -9 or Ctrl-C and it continues from the last checkpoint.\n"
	 "  --to PHASE   stop after PHASE (apply continues later)\n"
	 "  --dry-run    show the current state and what apply would run; change nothing\n"
	 "  --yes        a protected environment without asking (CI; no terminal: required)\n"
	 "  --takeover   the plan's lock is held by the server session of a phasegate that is\n"
	 "               gone (killed on this host): cancel, then terminate that session, and\n"
	 "               resume from the recorded state (refused when the holder is alive)\n",
	 OPT_ENV | OPT_TO | OPT_DRY | OPT_YES | OPT_TAKEOVER, 1,
	 "0 done, 1 runtime error (database unreachable, connection lost), 2 bad invocation/plan/unset variable/drift, 3 failed and rolled back, 4 rollback failed or on_failure stop, 5 plan locked by another run, 130 interrupted",
	 "apply the phases in order, gated; resumable"},
	{"finalize", "phasegate finalize PLAN.yaml|DIR [--env E] [--yes]",
	 "Run what a completed plan with `settings: { finalize: manual }` left undone: the\n"
	 "irreversible drops (a drop_column's hidden column dropped for good). Until then the\n"
	 "plan is completed and `rollback` restores everything; after it, no rollback past them.\n"
	 "Of a directory: each completed plan, in order.\n"
	 "  --yes        a protected environment without asking\n",
	 OPT_ENV | OPT_YES, 1,
	 "0 done (or nothing left), 1 runtime error, 2 bad invocation or plan, or the plan is not completed, 5 plan locked, 130 interrupted",
	 "run a completed plan's deferred drops (finalize: manual)"},
	{"status", "phasegate status PLAN.yaml|DIR [--env E] [--json] [--url-env V]",
	 "Show the plan's last run on the database: its state and each phase's and step's.\n"
	 "When the file differs from the plan as applied, the phases shown are the recorded\n"
	 "ones (and drift is said).\n" GONE_HELP,
	 OPT_ENV | OPT_JSON | OPT_URLENV, 1,
	 "0, 1 database unreachable, 2 bad invocation or plan",
	 "the plan's last run on the database, phase by phase"},
	{"rollback", "phasegate rollback PLAN.yaml|DIR [--env E] [--to PHASE] [--yes] [--takeover] [--url-env V]",
	 "Revert applied phases in reverse order: all of them, or down to (and excluding)\n"
	 "--to PHASE. Refuses before touching anything when a step cannot be reverted (exit 4).\n"
	 "Works from the plan as the run recorded it when the file changed since (or is gone).\n"
	 "  --yes        a protected environment without asking (CI; no terminal: required)\n"
	 "  --takeover   as for apply: end the session of a phasegate that is gone\n"
	 GONE_HELP,
	 OPT_ENV | OPT_TO | OPT_YES | OPT_URLENV | OPT_TAKEOVER, 1,
	 "0 done, 1 runtime error, 2 bad invocation or plan, 4 cannot be reverted or revert failed, 5 plan locked, 130 interrupted",
	 "revert applied phases in reverse order"},
	{"promote", "phasegate promote PLAN.yaml|DIR (--from ENV | --attestation FILE) --to ENV [--yes]",
	 "Apply the plan to --to only if --from has a completed run of the same plan checksum.\n"
	 "  --attestation FILE  instead of --from, when --to's job cannot reach the source\n"
	 "               database: the source's `status --env ENV --json`, saved to FILE (signed\n"
	 "               with an HMAC when PHASEGATE_ATTEST_KEY is set, and then verified)\n"
	 "  --yes        a protected --to environment without asking\n",
	 OPT_FROM | OPT_TO | OPT_YES | OPT_ATTEST, 1,
	 "0 promoted, 1 runtime error, 2 bad invocation, 3/4/5/130 as apply, 6 promotion refused",
	 "apply to one environment what another completed"},
	{"pause", "phasegate pause PLAN.yaml|DIR [--env E]",
	 "Pause the plan's running apply, from any machine that reaches the database: it stops\n"
	 "after its current backfill batch and waits, keeping its lock (recorded in the state\n"
	 "schema; status shows it).\n",
	 OPT_ENV, 1,
	 "0 paused, 1 no unfinished run or database unreachable, 2 bad invocation or plan",
	 "pause the running apply between backfill batches"},
	{"resume", "phasegate resume PLAN.yaml|DIR [--env E]",
	 "Let a paused apply go on.\n", OPT_ENV, 1,
	 "0 resumed, 1 no unfinished run or database unreachable, 2 bad invocation or plan",
	 "let a paused apply go on"},
	{"events", "phasegate events PLAN.yaml|DIR [--env E] [--run N] [--follow] [--json] [--url-env V]",
	 "Print the events recorded in the database for the plan's newest run (or run N):\n"
	 "transitions, gate probes, backfill progress, lock retries, throttle and pause\n"
	 "decisions, backups, oldest first. From any machine that reaches the database.\n"
	 "  --run N      that run (history lists them)\n"
	 "  --follow     keep printing new events while the run is running (Ctrl-C stops)\n"
	 "  --json       one JSON object per line, as --log-format json prints them\n"
	 GONE_HELP,
	 OPT_ENV | OPT_JSON | OPT_RUN | OPT_FOLLOW | OPT_URLENV, 1,
	 "0, 1 no such run or database unreachable, 2 bad invocation or plan, 130 interrupted",
	 "the recorded events of a run; --follow watches it live"},
	{"report", "phasegate report PLAN.yaml|DIR [--env E] [--run N] -o FILE.html [--url-env V]",
	 "Write one self-contained HTML page of the plan's newest run (or run N), built from its\n"
	 "recorded events: identity and outcome, an SVG timeline (a lane per phase with its\n"
	 "steps, gates, backups, lock retries; a lane per health check with every probe), the\n"
	 "backfill's rows/s and batch size, the backups with sha256, the rollback. No network,\n"
	 "no script: attach it to the change ticket. Prints the file's path.\n"
	 "  -o, --output FILE  where (written whole, then renamed into place)\n"
	 "  --run N      that run\n" GONE_HELP,
	 OPT_ENV | OPT_RUN | OPT_OUTPUT | OPT_URLENV, 1,
	 "0, 1 no such run, database unreachable or the file cannot be written, 2 bad invocation or plan",
	 "a run as one self-contained HTML page, with a timeline"},
	{"current", "phasegate current PLAN.yaml|DIR [--env E] [--json]",
	 "Where the database stands in a directory of plans (Alembic's `current`): the last plan\n"
	 "of the directory's completed prefix, and the head (its last plan) with how many plans\n"
	 "are still to apply; a plan after the current one that is applied or unfinished is\n"
	 "named too. Of one plan file: its state.\n"
	 "  --json       {directory, head, current, behind, plans: [{plan, state, run_id, drift,\n"
	 "               file}]}\n",
	 OPT_ENV | OPT_JSON, 1,
	 "0, 1 database unreachable, 2 bad invocation or plan",
	 "where the database stands in a directory of plans"},
	{"history", "phasegate history [PLAN.yaml|DIR] [--env E] [--json] [--url-env V]",
	 "List the runs recorded in the database (of PLAN, when given; else every plan, using\n"
	 "$DATABASE_URL, or $V with --url-env V). --env keeps the runs of that environment.\n"
	 "An apply and a later rollback of its run are entries of their own. PLAN may be the\n"
	 "name of a plan whose file is gone (then --url-env V as for status).\n",
	 OPT_ENV | OPT_JSON | OPT_URLENV, 0,
	 "0, 1 database unreachable, 2 bad invocation or plan",
	 "the runs recorded in the database"},
	{NULL, NULL, NULL, 0, 0, NULL, NULL},
};

/* `CMD --help` and `help CMD`: usage, what it does, every option, the exit codes */
static void print_help(const cmd_t *c)
{
	printf("usage: %s\n\n%s", c->usage, c->help);
	printf("\nOptions of every command: -v/--verbose (debug log; -vv every state change), "
	       "-q/--quiet (errors only), -h/--help,\n  --log-format text|json (json: one object "
	       "per line on stderr: every log line, event and the exit; docs/events.md).\n");
	if (c->opts & OPT_ENV)
		printf("  --env E      the plan's environment E (its database variable must be set)\n");
	if (c->opts & OPT_JSON)
		printf("  --json       one JSON document on stdout\n");
	printf("\nExit codes: %s.\n", c->exits);
}

static void usage_all(FILE *f)
{
	fputs("phasegate - zero-downtime PostgreSQL schema changes, phase by phase, gated on\n"
	      "health checks and verified backups, rolled back automatically when a gate fails.\n\n"
	      "Commands:\n",
	      f);
	for (const cmd_t *c = commands; c->name != NULL; c++)
		fprintf(f, "  %-10s %s\n", c->name, c->summary);
	fputs("\nUsage:\n", f);
	for (const cmd_t *c = commands; c->name != NULL; c++)
		fprintf(f, "  %s\n", c->usage);
	fputs("  phasegate --version | --help | COMMAND --help | help COMMAND\n\n"
	      "Options for every command: -v/--verbose (debug log; -vv every state change),\n"
	      "-q/--quiet (errors only), --log-format text|json (docs/events.md).\n"
	      "The database comes from the variable the plan names (target.url_env, default\n"
	      "DATABASE_URL: a libpq URI or conninfo); PGHOST, PGUSER, PGPASSWORD, .pgpass ... work\n"
	      "as in psql.\n\n"
	      "Exit codes: 0 success; 1 runtime error; 2 bad invocation or invalid plan; 3 a step or\n"
	      "gate failed and the automatic rollback completed; 4 a rollback failed or is\n"
	      "impossible; 5 another run holds the plan's lock; 6 promotion refused;\n"
	      "130 interrupted (state saved, apply resumes).\n",
	      f);
}

static int usage_error(const cmd_t *c, const char *fmt, const char *arg)
{
	char msg[1024];

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(msg, sizeof(msg), fmt, arg);
#pragma GCC diagnostic pop
	phg_log_plain(PHG_LOG_ERROR, "%s", msg);
	if (phg_log_is_json())
		phg_log_note("HINT", "usage: %s", c != NULL ? c->usage : "phasegate --help");
	else if (c != NULL)
		fprintf(stderr, "usage: %s\n", c->usage);
	else
		fputs("Try \"phasegate --help\".\n", stderr);
	return PHG_EXIT_USAGE;
}

/* ---- rendering (plan, apply --dry-run) ---- */

static void render_step(const phg_plan_t *plan, const phg_step_t *step, phg_dir_t dir,
                        phg_buf_t *out)
{
	phg_ops_t ops = {0};
	phg_err_t err;

	phg_err_clear(&err);
	if (phg_step_build(plan, step, dir, 0, NULL, NULL, &ops, &err) != 0)
		phg_buf_printf(out, "-- (cannot render: %s)\n", err.msg);
	phg_ops_render(&ops, &plan->settings, out);
	phg_ops_free(&ops);
}

static void render_list(phg_buf_t *out, const char *what, const phg_strv_t *v)
{
	if (v->n == 0)
		return;
	phg_buf_printf(out, "-- %s:", what);
	for (size_t i = 0; i < v->n; i++)
		phg_buf_printf(out, "%s %s", i ? "," : "", v->v[i]);
	phg_buf_adds(out, "\n");
}

/* @done: per phase, 1 when already applied (skipped); NULL = render all. */
static void render_plan(const phg_plan_t *plan, const int *done, phg_buf_t *out)
{
	const phg_settings_t *s = &plan->settings;
	static const char *const on_failure[] = {"rollback-phase", "rollback-plan", "stop"};

	phg_buf_printf(out, "-- plan \"%s\" (%s)\n", plan->name, plan->checksum);
	if (plan->env != NULL)
		phg_buf_printf(out, "-- environment \"%s\"\n", plan->env->name);
	phg_buf_printf(out,
	               "-- database from $%s; state in schema \"%s\"\n"
	               "-- every DDL statement: lock_timeout %" PRIu64 " ms, up to %" PRIu64
	               " attempts with jittered exponential backoff (%" PRIu64 " ms .. %" PRIu64
	               " ms)\n"
	               "-- statement_timeout for scans and backfill batches: %" PRIu64
	               " ms (0 = none); on failure: %s\n\n",
	               plan->url_env, s->state_schema, s->lock_timeout_ms, s->lock_retries,
	               s->retry_backoff_ms, s->retry_backoff_max_ms, s->statement_timeout_ms,
	               on_failure[s->on_failure]);
	if (plan->requires.n > 0)
		render_list(out, "requires the completed plans", &plan->requires);
	if (plan->alembic.stamps != NULL)
		phg_buf_printf(out, "-- Alembic: %s must hold revision \"%s\" before anything runs; the "
		                    "plan's completion writes \"%s\" (in the same transaction); a "
		                    "rollback writes \"%s\" back\n\n",
		               plan->alembic.table, plan->alembic.requires, plan->alembic.stamps,
		               plan->alembic.requires);
	for (size_t p = 0; p < plan->nphases; p++) {
		const phg_phase_t *ph = &plan->phases[p];

		phg_buf_printf(out, "-- ===== phase %zu/%zu \"%s\"%s =====\n", p + 1, plan->nphases,
		               ph->name, done && done[p] ? " (already applied: skipped)" : "");
		if (done && done[p]) {
			phg_buf_adds(out, "\n");
			continue;
		}
		if (ph->backup)
			phg_buf_printf(out, "-- gate before: verified pg_dump backup (%s) into %s\n",
			               plan->backup.scope == PHG_BACKUP_SCOPE_DATABASE ? "whole database"
			                                                               : "tables touched",
			               plan->backup.dir);
		render_list(out, "watched throughout", &ph->watch);
		for (size_t i = 0; i < ph->nsteps; i++) {
			size_t before;

			phg_buf_printf(out, "-- step %zu: %s\n", i + 1, ph->steps[i].kind->name);
			before = out->len;
			render_step(plan, &ph->steps[i], PHG_DIR_APPLY, out);
			if (out->len == before)
				/* a rename_column swapped with the drop_column before it */
				phg_buf_adds(out, "-- (nothing of its own: it runs in the transaction of the "
				                  "drop_column above, the swap)\n\n");
		}
		render_list(out, "gate after: verify", &ph->verify);
		phg_buf_adds(out, "\n");
	}
	/* what happens when the plan completes */
	{
		phg_buf_t fin;

		phg_buf_init(&fin, 16 * 1024 * 1024);
		for (size_t p = 0; p < plan->nphases; p++) {
			for (size_t i = 0; i < plan->phases[p].nsteps; i++)
				render_step(plan, &plan->phases[p].steps[i], PHG_DIR_FINALIZE, &fin);
		}
		if (fin.len > 0 && plan->settings.finalize == PHG_FINALIZE_MANUAL)
			phg_buf_printf(out, "-- ===== when every phase is applied; the drops only at "
			                    "`phasegate finalize` (finalize: manual) =====\n%s",
			               fin.data);
		else if (fin.len > 0)
			phg_buf_printf(out, "-- ===== when every phase is applied =====\n%s", fin.data);
		phg_buf_free(&fin);
	}
}

int phg_cli_render(phg_plan_t *plan)
{
	phg_buf_t out;

	phg_buf_init(&out, 64u * 1024 * 1024);
	render_plan(plan, NULL, &out);
	fwrite(out.data, 1, out.len, stdout);
	phg_buf_free(&out);
	return PHG_EXIT_OK;
}

int phg_cli_dry_run(phg_plan_t *plan, const phg_run_opts_t *o)
{
	json_t *st = NULL;
	int rc = phg_status_json(plan, o, &st);
	int *done;
	phg_buf_t out;
	size_t i;
	json_t *ph;

	if (rc != 0 || st == NULL)
		return rc ? rc : PHG_EXIT_RUNTIME;
	done = phg_calloc(plan->nphases, sizeof(int));
	json_array_foreach(json_object_get(st, "phases"), i, ph) {
		if (i < plan->nphases &&
		    strcmp(json_string_value(json_object_get(ph, "state")), "applied") == 0)
			done[i] = 1;
	}
	printf("-- dry run: nothing is changed. Current state of the plan on this database: %s%s\n",
	       json_string_value(json_object_get(st, "state")),
	       json_is_true(json_object_get(st, "drift")) ? " (recorded with another checksum!)" : "");
	phg_buf_init(&out, 64u * 1024 * 1024);
	if (strcmp(json_string_value(json_object_get(st, "state")), "completed") == 0)
		phg_buf_adds(&out, "-- the plan is completed: apply has nothing to do\n");
	else
		render_plan(plan, done, &out);
	fwrite(out.data, 1, out.len, stdout);
	phg_buf_free(&out);
	free(done);
	json_decref(st);
	return PHG_EXIT_OK;
}

/* `current` of one plan file: its state in one line (or --json) */
static int cmd_current(phg_plan_t *plan, const phg_run_opts_t *o)
{
	json_t *st = NULL;
	int rc = phg_status_json(plan, o, &st);
	json_t *run;

	if (rc != 0 || st == NULL)
		return rc ? rc : PHG_EXIT_RUNTIME;
	run = json_object_get(st, "run_id");
	if (o->json) {
		json_t *out = json_object();

		json_object_set(out, "plan", json_object_get(st, "plan"));
		json_object_set(out, "state", json_object_get(st, "state"));
		json_object_set(out, "run_id", run ? run : json_null());
		json_object_set_new(out, "drift", json_boolean(json_is_true(json_object_get(st, "drift"))));
		char *text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);

		printf("%s\n", text);
		free(text);
		json_decref(out);
	} else if (json_is_integer(run)) {
		printf("%s: %s, run %lld%s\n", plan->name,
		       json_string_value(json_object_get(st, "state")),
		       (long long)json_integer_value(run),
		       json_is_true(json_object_get(st, "drift")) ? " (the file changed since)" : "");
	} else {
		printf("%s: not applied on this database\n", plan->name);
	}
	json_decref(st);
	return PHG_EXIT_OK;
}

static int is_dir(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* ---- main ---- */

/* validate --format json|github: the plan's diagnostics for a machine */
static int validate_machine(const char *file, phg_diag_format_t f, json_t *diags)
{
	phg_plan_t *plan = NULL;
	phg_err_t err;
	int rc;

	phg_err_clear(&err);
	rc = phg_plan_load(file, stderr, &plan, &err);
	if (rc == PHG_EIO) {
		/* no position to annotate: the file itself */
		if (f == PHG_DIAG_GITHUB)
			printf("::error file=%s::%s\n", file, err.msg);
		else
			json_array_append_new(diags, json_pack("{s:s,s:s,s:n,s:n,s:s}", "severity", "error",
			                                       "file", file, "line", "col", "message",
			                                       err.msg));
	}
	if (f == PHG_DIAG_COLLECT) {
		json_t *o = json_pack("{s:s,s:b}", "file", file, "valid", plan != NULL);
		char *s;

		json_object_set_new(o, "plan", plan ? json_string(plan->name) : json_null());
		json_object_set_new(o, "checksum", plan ? json_string(plan->checksum) : json_null());
		json_object_set_new(o, "phases", plan ? json_integer((json_int_t)plan->nphases)
		                                      : json_null());
		json_object_set_new(o, "diagnostics", json_incref(diags));
		s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
		json_decref(o);
	} else if (plan != NULL) {
		printf("::notice file=%s::plan \"%s\" is valid: %zu phase(s), checksum %s\n", file,
		       plan->name, plan->nphases, plan->checksum);
	}
	rc = plan != NULL ? PHG_EXIT_OK : PHG_EXIT_USAGE;
	phg_plan_free(plan);
	return rc;
}

/* The plan of a rollback or status whose file is gone: @name must be a plan
 * name; a stand-in carries it and the database variable until the command
 * reads the plan its last run recorded (phg_plan_as_recorded). */
int phg_plan_stand_in(const char *name, const char *url_env, const char *env, phg_plan_t **out)
{
	phg_buf_t y;
	phg_err_t err;
	size_t n = strlen(name);
	int rc;

	*out = NULL;
	if (n == 0 || n > 63 || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                                     "0123456789_.-") != n) {
		phg_log_plain(PHG_LOG_ERROR, "cannot read \"%s\": %s", name, strerror(ENOENT));
		return PHG_EXIT_USAGE;
	}
	if (env != NULL && url_env == NULL) {
		phg_log_plain(PHG_LOG_ERROR, "cannot read \"%s\": %s", name, strerror(ENOENT));
		phg_log_note("HINT", "Without its file, the database of environment \"%s\" is unknown: "
		                     "give --url-env VAR, the variable that holds it.",
		             env);
		return PHG_EXIT_USAGE;
	}
	phg_buf_init(&y, 64 * 1024);
	phg_buf_printf(&y, "version: 1\nname: \"%s\"\ntarget: { url_env: \"%s\" }\n"
	                   "phases: [{name: recorded, steps: [{sql: {up: SELECT 1, down: SELECT 1}}]}]\n",
	               name, url_env ? url_env : "DATABASE_URL");
	phg_err_clear(&err);
	rc = phg_plan_load_buffer(name, y.data, y.len, stderr, out, &err);
	phg_buf_free(&y);
	if (rc != 0)
		return PHG_EXIT_USAGE; /* an invalid --url-env: said by the loader */
	(*out)->stand_in = 1;
	return 0;
}

/* The options, GNU style (getopt_long): anywhere on the line, --env=prod or
 * --env prod, -vv, and -- ends them.  Which ones a command takes is checked
 * once the command is known (cmd_t.opts). */
static const struct option long_opts[] = {
	{"help", no_argument, NULL, 'h'},     {"version", no_argument, NULL, 'V'},
	{"verbose", no_argument, NULL, 'v'},  {"quiet", no_argument, NULL, 'q'},
	{"env", required_argument, NULL, 'e'}, {"to", required_argument, NULL, 't'},
	{"from", required_argument, NULL, 'f'}, {"dry-run", no_argument, NULL, 'n'},
	{"yes", no_argument, NULL, 'y'},      {"json", no_argument, NULL, 'j'},
	{"url-env", required_argument, NULL, 'u'},
	{"log-format", required_argument, NULL, 'L'},
	{"format", required_argument, NULL, 'F'},
	{"run", required_argument, NULL, 'r'},
	{"follow", no_argument, NULL, 'w'},
	{"attestation", required_argument, NULL, 'a'},
	{"output", required_argument, NULL, 'o'},
	{"strict", no_argument, NULL, 'S'},
	{"takeover", no_argument, NULL, 'T'},
	{NULL, 0, NULL, 0},
};

static int cli_main(int argc, char **argv);

int phg_cli_main(int argc, char **argv)
{
	int rc;

	phg_log_set_json(0);
	phg_log_set_run(NULL, NULL, 0, NULL);
	phg_diag_set_strict(0);
	rc = cli_main(argc, argv);
	phg_diag_set_strict(0);
	phg_log_status_clear();
	phg_log_exit(rc); /* --log-format json: the outcome, as the last line */
	return rc;
}

static int cli_main(int argc, char **argv)
{
	const cmd_t *c = NULL;
	const char *file = NULL, *cmd = NULL;
	phg_run_opts_t o;
	phg_plan_t *plan = NULL;
	phg_err_t err;
	const char *from = NULL, *url_env = NULL, *attestation = NULL;
	phg_diag_format_t vformat = PHG_DIAG_TEXT;
	json_t *diags = NULL;
	unsigned seen = 0, bad_need = 0;
	int help = 0, version = 0, verbose = 0, quiet = 0, ch, rc;
	char badbuf[64];

	memset(&o, 0, sizeof(o));
	optind = 0; /* a full reset: phg_cli_main may run more than once */
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":hVvqyo:", long_opts, NULL)) != -1) {
		const char *name = argv[optind - 1];

		switch (ch) {
		case 'h': help = 1; break;
		case 'V': version = 1; break;
		case 'v': verbose++; break;
		case 'q': quiet = 1; break;
		case 'e': o.env = optarg; seen |= OPT_ENV; break;
		case 't': o.to_phase = optarg; seen |= OPT_TO; break;
		case 'f': from = optarg; seen |= OPT_FROM; break;
		case 'n': o.dry_run = 1; seen |= OPT_DRY; break;
		case 'y': o.yes = 1; seen |= OPT_YES; break;
		case 'j': o.json = 1; seen |= OPT_JSON; break;
		case 'u': url_env = optarg; seen |= OPT_URLENV; break;
		case 'r':
			if (phg_parse_int64(optarg, 1, LLONG_MAX, &o.run) != 0)
				return usage_error(NULL, "--run needs a run id (a positive number), not \"%s\"",
				                   optarg);
			seen |= OPT_RUN;
			break;
		case 'w': o.follow = 1; seen |= OPT_FOLLOW; break;
		case 'a': attestation = optarg; seen |= OPT_ATTEST; break;
		case 'o': o.output = optarg; seen |= OPT_OUTPUT; break;
		case 'S': phg_diag_set_strict(1); seen |= OPT_STRICT; break;
		case 'T': o.takeover = 1; seen |= OPT_TAKEOVER; break;
		case 'F':
			if (strcmp(optarg, "json") == 0)
				vformat = PHG_DIAG_COLLECT;
			else if (strcmp(optarg, "github") == 0)
				vformat = PHG_DIAG_GITHUB;
			else if (strcmp(optarg, "text") != 0)
				return usage_error(NULL, "--format must be text, json or github, not \"%s\"",
				                   optarg);
			seen |= OPT_FORMAT;
			break;
		case 'L':
			if (strcmp(optarg, "json") == 0)
				phg_log_set_json(1);
			else if (strcmp(optarg, "text") != 0)
				return usage_error(NULL, "--log-format must be text or json, not \"%s\"",
				                   optarg);
			break;
		case ':':
			return usage_error(NULL, "option \"%s\" needs a value", name);
		default:
			if (optopt != 0)
				snprintf(badbuf, sizeof(badbuf), "-%c", optopt);
			else
				snprintf(badbuf, sizeof(badbuf), "%s", name);
			return usage_error(NULL, "unknown option \"%s\"", badbuf);
		}
		if ((ch == 'e' || ch == 't' || ch == 'f' || ch == 'u' || ch == 'a' || ch == 'o') &&
		    optarg[0] == '\0')
			return usage_error(NULL, "option \"%s\" needs a value", name);
	}
	if (verbose > 0)
		phg_log_set_level(verbose > 1 ? PHG_LOG_TRACE : PHG_LOG_DEBUG);
	if (quiet)
		phg_log_set_level(PHG_LOG_ERROR);
	if (version) {
		printf("phasegate %s\n", PHG_VERSION);
		return PHG_EXIT_OK;
	}
	if (optind < argc)
		cmd = argv[optind++];
	if (cmd == NULL && help) {
		usage_all(stdout);
		return PHG_EXIT_OK;
	}
	if (cmd == NULL)
		return usage_error(NULL, "%s", "missing command");
	if (strcmp(cmd, "help") == 0) {
		/* `phasegate help CMD` is `phasegate CMD --help` */
		if (optind >= argc) {
			usage_all(stdout);
			return PHG_EXIT_OK;
		}
		for (const cmd_t *k = commands; k->name != NULL; k++)
			if (strcmp(k->name, argv[optind]) == 0) {
				print_help(k);
				return PHG_EXIT_OK;
			}
		return usage_error(NULL, "unknown command \"%s\"", argv[optind]);
	}
	for (const cmd_t *k = commands; k->name != NULL; k++)
		if (strcmp(k->name, cmd) == 0)
			c = k;
	if (c == NULL)
		return usage_error(NULL, "unknown command \"%s\"", cmd);
	if (help) {
		print_help(c);
		return PHG_EXIT_OK;
	}
	/* an option the command does not take */
	bad_need = seen & ~c->opts;
	if (bad_need != 0) {
		static const struct {
			unsigned bit;
			const char *name;
		} names[] = {{OPT_ENV, "--env"}, {OPT_TO, "--to"},   {OPT_FROM, "--from"},
		             {OPT_DRY, "--dry-run"}, {OPT_YES, "--yes"}, {OPT_JSON, "--json"},
		             {OPT_URLENV, "--url-env"}, {OPT_FORMAT, "--format"},
		             {OPT_RUN, "--run"}, {OPT_FOLLOW, "--follow"},
		             {OPT_ATTEST, "--attestation"}, {OPT_OUTPUT, "--output"},
		             {OPT_STRICT, "--strict"}, {OPT_TAKEOVER, "--takeover"}};

		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (bad_need & names[i].bit)
				return usage_error(c, "option \"%s\" is not valid here", names[i].name);
	}
	if (optind < argc)
		file = argv[optind++];
	if (optind < argc)
		return usage_error(c, "unexpected argument \"%s\"", argv[optind]);
	if (file == NULL && c->needs_plan)
		return usage_error(c, "%s", "missing PLAN.yaml");
	if (strcmp(c->name, "report") == 0 && o.output == NULL)
		return usage_error(c, "%s", "report needs -o FILE.html");
	if (strcmp(c->name, "promote") == 0 && from != NULL && attestation != NULL)
		return usage_error(c, "%s", "give --from ENV or --attestation FILE, not both");
	if (strcmp(c->name, "promote") == 0 && ((from == NULL && attestation == NULL) ||
	                                        o.to_phase == NULL))
		return usage_error(c, "%s", "promote needs --from ENV (or --attestation FILE) and --to ENV");
	if (strcmp(c->name, "promote") == 0 && from != NULL && strcmp(from, o.to_phase) == 0)
		return usage_error(c, "cannot promote from \"%s\" to itself: --from and --to must differ",
		                   from);

	phg_err_clear(&err);
	o.db_env = url_env;
	if (vformat != PHG_DIAG_TEXT) {
		diags = json_array();
		phg_diag_set_format(vformat, diags);
	} else if (phg_log_is_json()) {
		phg_diag_set_format(PHG_DIAG_JSON, NULL);
	}
	if (file != NULL && is_dir(file)) {
		if (url_env != NULL)
			return usage_error(c, "--url-env is for a plan whose file is gone; \"%s\" is a "
			                      "directory",
			                   file);
		rc = phg_dir_cmd(c->name, file, &o, vformat, from, attestation);
		phg_diag_set_format(PHG_DIAG_TEXT, NULL);
		json_decref(diags);
		return rc;
	}
	if (vformat != PHG_DIAG_TEXT && file != NULL) {
		rc = validate_machine(file, vformat, diags);
		phg_diag_set_format(PHG_DIAG_TEXT, NULL);
		json_decref(diags);
		return rc;
	}
	if (file != NULL && (c->opts & OPT_URLENV) && access(file, F_OK) != 0 && errno == ENOENT) {
		/* rollback/status/history of a plan whose file is gone */
		if ((rc = phg_plan_stand_in(file, url_env, o.env, &plan)) != 0)
			return rc;
	} else if (file != NULL && url_env != NULL) {
		return usage_error(c, "--url-env is for a plan whose file is gone; \"%s\" exists (the "
		                      "database comes from its url_env)",
		                   file);
	} else if (file != NULL) {
		rc = phg_plan_load(file, stderr, &plan, &err);
		if (rc == PHG_EIO) {
			phg_log_plain(PHG_LOG_ERROR, "%s", err.msg);
			return PHG_EXIT_USAGE;
		}
		if (rc != 0)
			return PHG_EXIT_USAGE;
		if (o.env != NULL && strcmp(c->name, "promote") != 0 &&
		    phg_plan_select_env(plan, o.env, &err) != 0) {
			phg_log_plain(PHG_LOG_ERROR, "%s", err.msg);
			if (err.detail[0])
				phg_log_note("DETAIL", "%s", err.detail);
			phg_plan_free(plan);
			return PHG_EXIT_USAGE;
		}
	}

	if (strcmp(c->name, "validate") == 0) {
		printf("%s: ok: plan \"%s\", %zu phase(s), checksum %s\n", file, plan->name,
		       plan->nphases, plan->checksum);
		rc = PHG_EXIT_OK;
	} else if (strcmp(c->name, "plan") == 0) {
		rc = phg_cli_render(plan);
	} else if (strcmp(c->name, "apply") == 0) {
		rc = o.dry_run ? phg_cli_dry_run(plan, &o) : phg_requires_check(plan, &o);
		if (rc == 0 && !o.dry_run)
			rc = phg_cmd_apply(plan, &o);
	} else if (strcmp(c->name, "finalize") == 0) {
		o.finalize = 1;
		rc = phg_cmd_apply(plan, &o);
	} else if (strcmp(c->name, "current") == 0) {
		rc = cmd_current(plan, &o);
	} else if (strcmp(c->name, "status") == 0) {
		rc = phg_cmd_status(plan, &o);
	} else if (strcmp(c->name, "rollback") == 0) {
		rc = phg_cmd_rollback(plan, &o);
	} else if (strcmp(c->name, "history") == 0) {
		rc = phg_cmd_history(plan, &o);
	} else if (strcmp(c->name, "events") == 0) {
		rc = phg_cmd_events(plan, &o);
	} else if (strcmp(c->name, "report") == 0) {
		rc = phg_cmd_report(plan, &o);
	} else if (strcmp(c->name, "pause") == 0 || strcmp(c->name, "resume") == 0) {
		rc = phg_cmd_pause(plan, &o, c->name[0] == 'p');
	} else {
		rc = phg_cmd_promote(plan, from, o.to_phase, o.yes, attestation);
	}
	phg_plan_free(plan);
	return rc;
}
