/*
 * commands.c - the CLI front-ends that run an engine: apply, rollback,
 * promote.  Each checks its arguments and the ${VAR}s the plan needs before
 * touching anything, runs the engine on a loop of its own and returns the
 * process exit code of SPEC section 1.
 */
#include "engine_int.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "http.h"
#include "plandir.h"

static int env_preflight(const phg_plan_t *plan);

/* A protected environment: --yes, or its name typed on a terminal.  This
 * runs before the loop does (nothing else is waiting). */
static int confirm_protected(const phg_plan_t *plan, const phg_run_opts_t *o,
                             phg_engine_mode_t mode)
{
	const char *what = mode == PHG_ENGINE_APPLY ? "apply" : "rollback";
	char target[512], line[128];
	size_t n;

	if (plan->env == NULL || !plan->env->is_protected || o->yes)
		return 0;
	phg_conninfo_describe(phg_target_url(plan, plan->url_env, NULL), target, sizeof(target));
	if (!isatty(STDIN_FILENO) || !isatty(STDERR_FILENO)) {
		phg_log(PHG_LOG_ERROR, NULL, "environment \"%s\" is protected: %s needs --yes without a "
		                             "terminal",
		        plan->env->name, what);
		phg_log_note("DETAIL", "Target: %s. Nothing was changed.", target);
		return 1;
	}
	fprintf(stderr,
	        "Environment \"%s\" is protected.\n  %s plan \"%s\" on %s\nType the environment's "
	        "name to go on: ",
	        plan->env->name, what, plan->name, target);
	fflush(stderr);
	if (fgets(line, sizeof(line), stdin) == NULL)
		line[0] = '\0';
	n = strcspn(line, "\r\n");
	line[n] = '\0';
	if (strcmp(line, plan->env->name) == 0)
		return 0;
	phg_log(PHG_LOG_ERROR, NULL, "not confirmed: nothing was changed");
	return 1;
}

/* Every ${VAR} the run may need (check URLs and headers, http steps and
 * their reverts) must be set before anything is touched: exit 2 otherwise.
 * Each missing variable is reported once, with every place that uses it. */
#define MISSING_MAX 16

typedef struct {
	size_t n;
	struct {
		char msg[512];
		phg_strv_t places;
	} v[MISSING_MAX];
} missing_t;

static int expand_ok(missing_t *m, const char *s, const char *where, const char *name)
{
	phg_buf_t b;
	phg_err_t err;
	char place[512];
	size_t i;
	int rc;

	if (s == NULL)
		return 0;
	phg_buf_init(&b, 1024 * 1024);
	phg_err_clear(&err);
	rc = phg_expand_env(s, &b, &err);
	phg_buf_free(&b);
	if (rc == 0)
		return 0;
	for (i = 0; i < m->n && strcmp(m->v[i].msg, err.msg) != 0; i++)
		;
	if (i == m->n) {
		if (m->n == MISSING_MAX)
			return rc;
		snprintf(m->v[m->n++].msg, sizeof(m->v[0].msg), "%s", err.msg);
	}
	snprintf(place, sizeof(place), "%s \"%s\"", where, name);
	for (size_t k = 0; k < m->v[i].places.n; k++)
		if (strcmp(m->v[i].places.v[k], place) == 0)
			return rc;
	phg_strv_push(&m->v[i].places, place);
	return rc;
}

static void missing_report(missing_t *m)
{
	for (size_t i = 0; i < m->n; i++) {
		phg_strv_t *pl = &m->v[i].places;

		phg_buf_t b;

		phg_log(PHG_LOG_ERROR, NULL, "%s", m->v[i].msg);
		phg_buf_init(&b, 64 * 1024);
		for (size_t k = 0; k < pl->n; k++)
			phg_buf_printf(&b, "%s%s", k == 0 ? "" : k + 1 == pl->n ? " and " : ", ", pl->v[k]);
		phg_log_note("DETAIL", "In %s. Nothing was changed.", b.data);
		phg_buf_free(&b);
		phg_strv_clear(pl);
	}
	m->n = 0;
}

static int env_preflight(const phg_plan_t *plan)
{
	int bad = 0;
	phg_err_t terr;
	missing_t m = {0};

	/* never the wrong database: an environment's variable must be set */
	phg_err_clear(&terr);
	if (phg_target_url(plan, plan->url_env, &terr) == NULL) {
		phg_log_err(PHG_LOG_ERROR, NULL, &terr);
		return 1;
	}

	/* a notification never stops a run: an unset variable is a warning */
	for (size_t i = 0; i < plan->nnotify; i++) {
		const phg_notify_t *w = &plan->notify[i];
		phg_buf_t b;
		phg_err_t e;
		int unset = 0;

		phg_buf_init(&b, 64 * 1024);
		phg_err_clear(&e);
		unset |= phg_expand_env(w->url, &b, &e) != 0;
		for (size_t h = 0; h < w->headers.n && !unset; h++) {
			phg_buf_reset(&b);
			unset |= phg_expand_env(w->headers.v[h].value, &b, &e) != 0;
		}
		if (unset)
			phg_log(PHG_LOG_WARN, NULL, "notify item %zu will not be sent: %s", i + 1, e.msg);
		phg_buf_free(&b);
	}
	for (size_t i = 0; i < plan->nchecks; i++) {
		const phg_check_t *c = &plan->checks[i];

		bad |= expand_ok(&m, c->url, "the url of check", c->name) != 0;
		for (size_t h = 0; h < c->headers.n; h++) {
			char where[256];

			snprintf(where, sizeof(where), "header \"%s\" of check", c->headers.v[h].key);
			bad |= expand_ok(&m, c->headers.v[h].value, where, c->name) != 0;
		}
	}
	for (size_t p = 0; p < plan->nphases; p++) {
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			const phg_step_t *step = &plan->phases[p].steps[s];

			for (int dir = PHG_DIR_APPLY; dir <= PHG_DIR_REVERT; dir++) {
				phg_ops_t ops = {0};
				phg_err_t err;

				phg_err_clear(&err);
				phg_step_build(plan, step, (phg_dir_t)dir, 1, NULL, NULL, &ops, &err);
				for (size_t k = 0; k < ops.n; k++) {
					const phg_http_spec_t *h = ops.v[k].http;

					if (h == NULL)
						continue;
					bad |= expand_ok(&m, h->url, "the url of the http step of phase",
					                 plan->phases[p].name) != 0;
					for (size_t j = 0; j < h->headers.n; j++) {
						char where[256];

						snprintf(where, sizeof(where),
						         "header \"%s\" of the http step of phase",
						         h->headers.v[j].key);
						bad |= expand_ok(&m, h->headers.v[j].value, where,
						                 plan->phases[p].name) != 0;
					}
				}
				phg_ops_free(&ops);
			}
		}
	}
	missing_report(&m);
	return bad ? PHG_EINVAL : 0;
}

/* One engine on a loop of its own, run to the end. */
static int run_engine(phg_plan_t *plan, const phg_run_opts_t *o, phg_engine_mode_t mode)
{
	uv_loop_t loop;
	phg_engine_t *e;
	int code, rc;

	if (o->to_phase != NULL) {
		int idx;

		if (phg_eng_to_phase(plan, o->to_phase, &idx) != 0)
			return PHG_EXIT_USAGE;
	}
	if (env_preflight(plan) != 0)
		return PHG_EXIT_USAGE;
	if (!o->check_only && confirm_protected(plan, o, mode) != 0)
		return PHG_EXIT_USAGE;
	/* A connection lost mid-run (the server restarted, a failover): a new
	 * engine reconnects -- with backoff, up to connect_retries attempts --
	 * and resumes the run from its recorded state, as `apply` would; at most
	 * connect_retries times in one command. */
	for (uint64_t again = 0;; again++) {
		int lost = 0;

		if (uv_loop_init(&loop) != 0)
			return PHG_EXIT_RUNTIME;
		e = phg_engine_new(&loop, mode, plan, o, &code);
		if (e != NULL) {
			phg_engine_start(e);
			uv_run(&loop, UV_RUN_DEFAULT);
			lost = phg_engine_conn_lost(e);
			code = phg_engine_free(e);
		}
		rc = uv_loop_close(&loop);
		if (rc != 0) {
			phg_log(PHG_LOG_ERROR, NULL,
			        "internal error: the event loop still has handles (%s)", uv_strerror(rc));
			if (code == 0)
				code = PHG_EXIT_RUNTIME;
			return code;
		}
		if (!lost)
			return code;
		if (again >= plan->settings.connect_retries) {
			phg_log(PHG_LOG_ERROR, NULL,
			        "the connection was lost %" PRIu64 " times in this run; giving up: run %s "
			        "again to resume",
			        again + 1, mode == PHG_ENGINE_APPLY ? "apply" : "rollback");
			return code;
		}
		phg_log(PHG_LOG_WARN, NULL,
		        "reconnecting to resume the run (after a lost connection: %" PRIu64 "/%" PRIu64
		        ")",
		        again + 1, plan->settings.connect_retries);
	}
}

int phg_cmd_apply(phg_plan_t *plan, const phg_run_opts_t *o)
{
	return run_engine(plan, o, PHG_ENGINE_APPLY);
}

int phg_plan_as_recorded(const phg_plan_t *plan, const phg_run_opts_t *o, const char *what,
                         phg_plan_t **rec)
{
	json_t *last = NULL;
	const char *sum, *canon;
	long long run;
	phg_err_t err;
	phg_buf_t diff;
	int rc;

	*rec = NULL;
	if ((rc = phg_last_run_record(plan, o, &last)) != 0)
		return rc;
	if (last == NULL) {
		if (!plan->stand_in)
			return 0;
		phg_log(PHG_LOG_ERROR, NULL, "plan file \"%s\" does not exist, and no plan of that "
		                             "name has run on this database",
		        plan->name);
		phg_log_note("HINT", "The database comes from $%s; give the plan file, or the name of a "
		                     "plan that ran here (`phasegate history` lists them).",
		             plan->url_env);
		return PHG_EXIT_USAGE;
	}
	sum = json_string_value(json_object_get(last, "checksum"));
	canon = json_string_value(json_object_get(last, "plan_json"));
	run = (long long)json_integer_value(json_object_get(last, "run_id"));
	if (!plan->stand_in && phg_plan_checksum_is(plan, sum)) {
		json_decref(last);
		return 0; /* the file is the plan as applied */
	}
	if (canon == NULL && !plan->stand_in) {
		json_decref(last);
		return 0; /* an older run without its plan: the drift error says what to do */
	}
	phg_err_clear(&err);
	if (phg_plan_load_recorded(canon, run, o->env, rec, &err) != 0) {
		phg_log_err(PHG_LOG_ERROR, NULL, &err);
		if (canon == NULL)
			phg_log_note("HINT", "Give the plan file as it was applied (checksum %s).", sum);
		json_decref(last);
		return PHG_EXIT_USAGE;
	}
	/* the same database as the file (or the stand-in) named */
	(*rec)->url_env = plan->url_env;
	phg_buf_init(&diff, 64 * 1024);
	if (plan->stand_in)
		phg_log(PHG_LOG_INFO, NULL, "plan file \"%s\" does not exist: %s works from the plan "
		                            "as run %lld recorded it (checksum %s)",
		        plan->file, what, run, sum);
	else if (phg_plan_diff_phases(*rec, plan, &diff) > 0)
		phg_log(PHG_LOG_WARN, NULL, "plan file \"%s\" differs from the plan as run %lld "
		                            "applied it (phases %s): %s works from the plan as recorded",
		        plan->file, run, diff.data, what);
	else
		phg_log(PHG_LOG_WARN, NULL, "plan file \"%s\" differs from the plan as run %lld "
		                            "applied it (not in its phases): %s works from the plan as "
		                            "recorded",
		        plan->file, run, what);
	phg_buf_free(&diff);
	json_decref(last);
	return 0;
}

/* A plan another applied plan requires stays: roll that one back first. */
static int dependents_check(const phg_plan_t *plan, const phg_run_opts_t *o)
{
	json_t *deps = NULL, *d;
	size_t i;
	int rc = phg_dependents(plan, o, &deps), bad = 0;

	if (rc != 0) {
		json_decref(deps);
		return rc;
	}
	json_array_foreach(deps, i, d) {
		const char *name = json_string_value(json_object_get(d, "plan"));
		int ours = 0;

		for (size_t k = 0; o->reverting != NULL && k < o->reverting->n; k++)
			ours |= strcmp(o->reverting->v[k], name) == 0;
		if (ours)
			continue;
		phg_log(PHG_LOG_ERROR, NULL, "plan \"%s\" cannot be rolled back: plan \"%s\" requires "
		                             "it and is still applied (run %lld, %s)",
		        plan->name, name, (long long)json_integer_value(json_object_get(d, "run_id")),
		        json_string_value(json_object_get(d, "state")));
		phg_log_note("HINT", "Roll \"%s\" back first, or the directory of plans (`rollback "
		                     "DIR --to`), which reverts later plans first. Nothing was changed.",
		             name);
		bad = 1;
	}
	json_decref(deps);
	return bad ? PHG_EXIT_USAGE : 0;
}

int phg_cmd_rollback(phg_plan_t *plan, const phg_run_opts_t *o)
{
	phg_plan_t *rec = NULL;
	int rc = phg_plan_as_recorded(plan, o, "rollback", &rec);

	if (rc != 0)
		return rc;
	if ((rc = dependents_check(plan, o)) != 0) {
		phg_plan_free(rec);
		return rc;
	}
	rc = run_engine(rec ? rec : plan, o, PHG_ENGINE_ROLLBACK);
	phg_plan_free(rec);
	return rc;
}

/* The HMAC-SHA256 of an attestation (its object without "hmac", compact
 * with sorted keys) under @key: "hmac-sha256:" + hex, in @out. */
static int attest_hmac(json_t *st, const char *key, char out[96])
{
	json_t *c = json_deep_copy(st);
	char *text;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	static const char hex[] = "0123456789abcdef";

	json_object_del(c, "hmac");
	text = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(c);
	if (text == NULL || HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)text,
	                         strlen(text), md, &n) == NULL) {
		free(text);
		return -1;
	}
	free(text);
	memcpy(out, "hmac-sha256:", 12);
	for (unsigned i = 0; i < n && i < 32; i++) {
		out[12 + 2 * i] = hex[md[i] >> 4];
		out[13 + 2 * i] = hex[md[i] & 15];
	}
	out[12 + 2 * (n < 32 ? n : 32)] = '\0';
	return 0;
}

int phg_attest_sign(json_t *st)
{
	const char *key = getenv("PHASEGATE_ATTEST_KEY");
	char mac[96];

	if (key == NULL || key[0] == '\0')
		return 0;
	if (attest_hmac(st, key, mac) != 0)
		return -1;
	json_object_set_new(st, "hmac", json_string(mac));
	return 0;
}

/* promote --attestation: the source run as its `status --json` recorded
 * it, signed when PHASEGATE_ATTEST_KEY is set.  0, or an exit code. */
static int attestation_read(const char *path, json_t **out)
{
	json_error_t jerr;
	json_t *st = json_load_file(path, 0, &jerr);
	const char *key = getenv("PHASEGATE_ATTEST_KEY"), *mac;
	char want[96];

	*out = NULL;
	if (!json_is_object(st)) {
		phg_log(PHG_LOG_ERROR, NULL, "cannot read the attestation \"%s\": %s (line %d)", path,
		        jerr.text, jerr.line);
		json_decref(st);
		return PHG_EXIT_USAGE;
	}
	mac = json_string_value(json_object_get(st, "hmac"));
	if (key != NULL && key[0] != '\0') {
		if (mac == NULL || attest_hmac(st, key, want) != 0 || strlen(want) != strlen(mac) ||
		    CRYPTO_memcmp(want, mac, strlen(want)) != 0) {
			phg_log(PHG_LOG_ERROR, NULL, "the attestation \"%s\" does not verify: %s", path,
			        mac == NULL ? "it is not signed" : "its HMAC does not match");
			phg_log_note("HINT", "PHASEGATE_ATTEST_KEY is set: the attestation must be made "
			                     "(status --json) with the same key. Nothing was changed.");
			json_decref(st);
			return PHG_EXIT_PROMOTE_REFUSED;
		}
	} else if (mac != NULL) {
		phg_log(PHG_LOG_WARN, NULL, "the attestation \"%s\" is signed but PHASEGATE_ATTEST_KEY "
		                            "is not set: its HMAC is not checked",
		        path);
	}
	*out = st;
	return 0;
}

int phg_cmd_promote(phg_plan_t *plan, const char *from, const char *to, int yes,
                    const char *attestation)
{
	phg_run_opts_t o;
	phg_err_t err;
	json_t *st = NULL;
	const char *state, *sum;
	char source[256], from_buf[72];
	int rc;

	memset(&o, 0, sizeof(o));
	o.yes = yes;
	phg_err_clear(&err);
	if (attestation != NULL) {
		const char *p, *e;

		if ((rc = attestation_read(attestation, &st)) != 0)
			return rc;
		p = json_string_value(json_object_get(st, "plan"));
		e = json_string_value(json_object_get(st, "env"));
		if (p == NULL || strcmp(p, plan->name) != 0) {
			phg_log(PHG_LOG_ERROR, NULL, "promotion of plan \"%s\" to \"%s\" refused: the "
			                             "attestation is of plan \"%s\"",
			        plan->name, to, p ? p : "?");
			json_decref(st);
			return PHG_EXIT_PROMOTE_REFUSED;
		}
		snprintf(from_buf, sizeof(from_buf), "%s", e ? e : "?");
		from = from_buf;
		if (from != NULL && strcmp(from, to) == 0) {
			phg_log_plain(PHG_LOG_ERROR, "cannot promote from \"%s\" to itself", from);
			json_decref(st);
			return PHG_EXIT_USAGE;
		}
		if (phg_plan_select_env(plan, to, &err) != 0) {
			phg_log_plain(PHG_LOG_ERROR, "%s", err.msg);
			json_decref(st);
			return PHG_EXIT_USAGE;
		}
	} else {
		if (phg_plan_select_env(plan, from, &err) != 0 ||
		    phg_plan_select_env(plan, to, &err) != 0) {
			phg_log_plain(PHG_LOG_ERROR, "%s", err.msg);
			if (err.detail[0])
				phg_log_note("DETAIL", "%s", err.detail);
			return PHG_EXIT_USAGE;
		}
		phg_plan_select_env(plan, from, &err);
		o.env = from;
		rc = phg_status_json(plan, &o, &st);
		if (rc != 0 || st == NULL) {
			phg_log(PHG_LOG_ERROR, NULL, "cannot read the state of environment \"%s\"", from);
			json_decref(st);
			return rc ? rc : PHG_EXIT_RUNTIME;
		}
	}
	state = json_string_value(json_object_get(st, "state"));
	sum = json_string_value(json_object_get(st, "checksum"));
	if (state == NULL)
		state = "unknown";
	if (strcmp(state, "completed") != 0 || !phg_plan_checksum_is(plan, sum)) {
		json_t *id = json_object_get(st, "run_id");

		phg_log(PHG_LOG_ERROR, NULL, "promotion of plan \"%s\" from \"%s\" to \"%s\" refused",
		        plan->name, from, to);
		if (!json_is_integer(id))
			phg_log_note("DETAIL", "Environment \"%s\" has no run of this plan.", from);
		else if (!phg_plan_checksum_is(plan, sum))
			phg_log_note("DETAIL",
			             "The last run in \"%s\" (run %lld, %s) was of checksum %s; this file "
			             "has %s.",
			             from, (long long)json_integer_value(id), state, sum, plan->checksum);
		else
			phg_log_note("DETAIL", "The last run in \"%s\" (run %lld) is %s, not completed.",
			             from, (long long)json_integer_value(id), state);
		phg_log_note("HINT", "Apply this exact plan file to \"%s\" first%s.", from,
		             attestation ? ", and export its status --json again" : "");
		json_decref(st);
		return PHG_EXIT_PROMOTE_REFUSED;
	}
	phg_log(PHG_LOG_INFO, NULL, "environment \"%s\" completed run %lld of checksum %s: promoting to \"%s\"",
	        from, (long long)json_integer_value(json_object_get(st, "run_id")), sum, to);
	/* the new run records where it was promoted from */
	snprintf(source, sizeof(source), "%s run %lld (%s)%s", from,
	         (long long)json_integer_value(json_object_get(st, "run_id")), sum,
	         attestation ? ", by attestation" : "");
	json_decref(st);
	phg_plan_select_env(plan, to, &err);
	o.env = to;
	o.promoted_from = source;
	return phg_cmd_apply(plan, &o);
}

int phg_requires_check(const phg_plan_t *plan, const phg_run_opts_t *o)
{
	int bad = 0;

	for (size_t i = 0; i < plan->requires.n; i++) {
		const char *name = plan->requires.v[i];
		phg_plan_t *req = NULL;
		json_t *st = NULL;
		phg_run_opts_t so = *o;
		const char *state;
		int rc;

		if ((rc = phg_plan_stand_in(name, plan->url_env, NULL, &req)) != 0)
			return rc;
		so.json = 1;
		rc = phg_status_json(req, &so, &st);
		phg_plan_free(req);
		if (rc != 0 || st == NULL) {
			json_decref(st);
			return rc ? rc : PHG_EXIT_RUNTIME;
		}
		state = json_string_value(json_object_get(st, "state"));
		if (state == NULL || strcmp(state, "completed") != 0) {
			phg_log(PHG_LOG_ERROR, NULL, "plan \"%s\" requires plan \"%s\", which is %s on this "
			                             "database",
			        plan->name, name,
			        state == NULL || strcmp(state, "not_started") == 0 ? "not applied"
			        : strcmp(state, "rolled_back") == 0                ? "rolled back"
			                                                           : state);
			phg_log_note("HINT", "Apply \"%s\" first (or the directory of plans, which runs "
			                     "them in order). Nothing was changed.",
			             name);
			bad = 1;
		}
		json_decref(st);
	}
	return bad ? PHG_EXIT_USAGE : 0;
}
