/*
 * test_plan.c - the plan loader (orchestrator/plan_load.c) and its helpers
 * (plan_util.c): typed values, defaults, environments, positions,
 * checksums, strict scalar parsers, error reporting and the free path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "plan.h"
#include "step.h"

/* ---- helpers ---- */

typedef struct {
	char *text;
	size_t len;
	FILE *f;
} capture_t;

static void capture_open(capture_t *c)
{
	c->text = NULL;
	c->len = 0;
	c->f = open_memstream(&c->text, &c->len);
	assert_non_null(c->f);
}

static void capture_close(capture_t *c)
{
	fclose(c->f);
	c->f = NULL;
}

/* Load @yaml; the diagnostics printed go to *diag (caller frees). */
static int load(const char *yaml, phg_plan_t **plan, char **diag)
{
	capture_t c;
	phg_err_t err = {0};
	int rc;

	capture_open(&c);
	rc = phg_plan_load_buffer("t.yaml", yaml, strlen(yaml), c.f, plan, &err);
	capture_close(&c);
	if (rc == 0) {
		assert_int_equal(err.code, 0);
	} else {
		assert_int_equal(err.code, rc);
		assert_null(*plan);
	}
	*diag = c.text;
	return rc;
}

static phg_plan_t *load_ok(const char *yaml)
{
	phg_plan_t *plan = NULL;
	char *diag = NULL;
	int rc = load(yaml, &plan, &diag);

	if (rc != 0)
		fail_msg("plan refused (%d):\n%s", rc, diag);
	assert_string_equal(diag, ""); /* no warnings either */
	free(diag);
	return plan;
}

/* A plan that loads with exactly the one warning containing @warning. */
static phg_plan_t *load_warned(const char *yaml, const char *warning)
{
	phg_plan_t *plan = NULL;
	char *diag = NULL;
	int rc = load(yaml, &plan, &diag);

	if (rc != 0)
		fail_msg("plan refused (%d):\n%s", rc, diag);
	if (strstr(diag, warning) == NULL ||
	    strstr(strstr(diag, "warning:") + 1, "warning:") != NULL)
		fail_msg("expected the one warning \"%s\", got:\n%s", warning, diag);
	free(diag);
	return plan;
}

/* The diagnostics of a plan that must be refused. */
static char *load_bad(const char *yaml)
{
	phg_plan_t *plan = (phg_plan_t *)1;
	char *diag = NULL;

	assert_int_equal(load(yaml, &plan, &diag), PHG_EPLAN);
	assert_null(plan);
	return diag;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL)
		fail_msg("expected to find\n  %s\nin\n%s", needle, hay);
}

static const void *argp(const phg_step_t *st, const char *key)
{
	for (const phg_field_t *f = st->kind->fields; f->key != NULL; f++)
		if (strcmp(f->key, key) == 0)
			return (const char *)st->args + f->offset;
	fail_msg("step kind %s has no field %s", st->kind->name, key);
	return NULL;
}

static const phg_field_t *fieldp(const phg_field_t *fields, const char *key)
{
	for (const phg_field_t *f = fields; f->key != NULL; f++)
		if (strcmp(f->key, key) == 0)
			return f;
	fail_msg("no field %s", key);
	return NULL;
}

#define ARG_STR(st, k) (*(char *const *)argp((st), (k)))
#define ARG_INT(st, k) (*(const int *)argp((st), (k)))
#define ARG_U64(st, k) (*(const uint64_t *)argp((st), (k)))
#define ARG_STRV(st, k) ((const phg_strv_t *)argp((st), (k)))
#define ARG_KVV(st, k) ((const phg_kvv_t *)argp((st), (k)))

static int enum_index(const phg_step_t *st, const char *key, const char *value)
{
	const phg_field_t *f = fieldp(st->kind->fields, key);

	for (int i = 0; f->enum_values[i] != NULL; i++)
		if (strcmp(f->enum_values[i], value) == 0)
			return i;
	fail_msg("%s is not a value of %s", value, key);
	return -1;
}

static void sha256_of(const char *s, size_t n, char out[72])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	assert_true(EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL));
	memcpy(out, "sha256:", 7);
	for (unsigned i = 0; i < 32; i++)
		snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

static void assert_checksum_format(const char *c)
{
	assert_int_equal(strlen(c), 7 + 64);
	assert_memory_equal(c, "sha256:", 7);
	for (size_t i = 7; i < 71; i++)
		assert_non_null(strchr("0123456789abcdef", c[i]));
}

/* ---- the SPEC section 2 example ---- */

static const char spec_plan[] =
    "version: 1\n"
    "name: jobs-status-rewrite            # unique per database\n"
    "description: Replace jobs.status by a validated column without downtime.\n"
    "\n"
    "target:\n"
    "  url_env: DATABASE_URL               # default\n"
    "\n"
    "environments:                         # optional; `--env NAME` selects one\n"
    "  staging: { url_env: STAGING_DATABASE_URL }\n"
    "  prod:    { url_env: PROD_DATABASE_URL, checks: { api: { url: \"https://api.example/healthz\" } } }\n"
    "\n"
    "settings:                             # all optional; defaults shown\n"
    "  lock_timeout: 2s\n"
    "  lock_retries: 20\n"
    "  statement_timeout: 0\n"
    "  state_schema: phasegate\n"
    "  on_failure: rollback-phase          # rollback-phase | rollback-plan | stop\n"
    "\n"
    "checks:                               # named HTTP health checks\n"
    "  api:\n"
    "    url: http://127.0.0.1:8080/healthz\n"
    "    method: GET\n"
    "    headers: { Authorization: \"Bearer ${HEALTH_TOKEN}\" }\n"
    "    expect_status: [200]              # default: any 2xx\n"
    "    expect_body: '\"status\":\"ok\"'      # optional substring\n"
    "    timeout: 2s                       # per request\n"
    "    interval: 1s\n"
    "    successes: 3\n"
    "    failures: 2\n"
    "    soak: 10s\n"
    "    max_latency: 500ms\n"
    "\n"
    "backup:\n"
    "  dir: ./backups\n"
    "  scope: tables\n"
    "\n"
    "phases:\n"
    "  - name: expand\n"
    "    steps:\n"
    "      - add_column: { table: jobs, column: new_status, type: \"varchar(20)\" }\n"
    "    verify: [api]                     # gate after the steps\n"
    "  - name: dual-write\n"
    "    steps:\n"
    "      - http:\n"
    "          method: PUT\n"
    "          url: http://127.0.0.1:8080/flags/dual_write\n"
    "          body: '{\"enabled\": true}'\n"
    "          revert: { body: '{\"enabled\": false}' }\n"
    "      # or  - sync_trigger: { table: jobs, from: status, to: new_status }\n"
    "    verify: [api]\n"
    "  - name: backfill\n"
    "    steps:\n"
    "      - backfill: { table: jobs, set: \"new_status = status\", where: \"new_status IS NULL\", batch_size: 5000 }\n"
    "    watch: [api]\n"
    "    verify: [api]\n"
    "  - name: enforce\n"
    "    steps:\n"
    "      - set_not_null: { table: jobs, column: new_status }\n"
    "  - name: contract\n"
    "    backup: true                      # gate before the steps: a verified pg_dump\n"
    "    steps:\n"
    "      - drop_column:   { table: jobs, column: status }\n"
    "      - rename_column: { table: jobs, column: new_status, to: status }\n"
    "    verify: [api]\n";

static void test_spec_example(void **state)
{
	phg_plan_t *plan = load_ok(spec_plan);
	const phg_check_t *api;
	const phg_phase_t *ph;
	const phg_step_t *st;

	(void)state;
	assert_int_equal(plan->version, 1);
	assert_string_equal(plan->name, "jobs-status-rewrite");
	assert_string_equal(plan->description,
	                    "Replace jobs.status by a validated column without downtime.");
	assert_string_equal(plan->file, "t.yaml");
	assert_int_equal(plan->source_len, strlen(spec_plan));
	assert_string_equal(plan->source, spec_plan);
	assert_string_equal(plan->url_env, "DATABASE_URL");

	assert_int_equal(plan->settings.lock_timeout_ms, 2000);
	assert_int_equal(plan->settings.lock_retries, 20);
	assert_int_equal(plan->settings.statement_timeout_ms, 0);
	assert_string_equal(plan->settings.state_schema, "phasegate");
	assert_int_equal(plan->settings.on_failure, PHG_ON_FAILURE_ROLLBACK_PHASE);

	assert_int_equal(plan->nchecks, 1);
	api = phg_plan_find_check(plan, "api");
	assert_non_null(api);
	assert_ptr_equal(api, &plan->checks[0]);
	assert_null(phg_plan_find_check(plan, "nope"));
	assert_string_equal(api->name, "api");
	assert_int_equal(api->pos.line, 20);
	assert_int_equal(api->pos.col, 3);
	assert_string_equal(api->url, "http://127.0.0.1:8080/healthz");
	assert_string_equal(api->method, "GET");
	assert_int_equal(api->headers.n, 1);
	assert_string_equal(api->headers.v[0].key, "Authorization");
	assert_string_equal(api->headers.v[0].value, "Bearer ${HEALTH_TOKEN}");
	assert_int_equal(api->headers.v[0].pos.line, 23);
	assert_int_equal(api->expect_status.n, 1);
	assert_int_equal(api->expect_status.v[0], 200);
	assert_string_equal(api->expect_body, "\"status\":\"ok\"");
	assert_null(api->body);
	assert_int_equal(api->expect_json.n, 0);
	assert_int_equal(api->timeout_ms, 2000);
	assert_int_equal(api->interval_ms, 1000);
	assert_int_equal(api->successes, 3);
	assert_int_equal(api->failures, 2);
	assert_int_equal(api->soak_ms, 10000);
	assert_int_equal(api->max_latency_ms, 500);
	assert_int_equal(api->insecure, 0);

	assert_string_equal(plan->backup.dir, "./backups");
	assert_int_equal(plan->backup.scope, PHG_BACKUP_SCOPE_TABLES);
	assert_int_equal(plan->backup.timeout_ms, 3600000);
	assert_int_equal(plan->backup.compress, 1);

	assert_int_equal(plan->nphases, 5);
	assert_string_equal(plan->phases[0].name, "expand");
	assert_string_equal(plan->phases[1].name, "dual-write");
	assert_string_equal(plan->phases[4].name, "contract");
	assert_null(phg_plan_find_phase(plan, "nope"));
	ph = phg_plan_find_phase(plan, "backfill");
	assert_ptr_equal(ph, &plan->phases[2]);
	assert_int_equal(ph->index, 2);
	assert_int_equal(ph->pos.line, 51);
	assert_int_equal(ph->pos.col, 5);
	assert_int_equal(ph->watch.n, 1);
	assert_string_equal(ph->watch.v[0], "api");
	assert_int_equal(ph->verify.n, 1);
	assert_int_equal(plan->phases[3].verify.n, 0);
	assert_int_equal(plan->phases[3].backup, 0);
	assert_int_equal(plan->phases[4].backup, 1);
	assert_int_equal(plan->phases[4].nsteps, 2);

	/* add_column: kind, typed args, default, positions */
	st = &plan->phases[0].steps[0];
	assert_ptr_equal(st->kind, phg_step_kind_find("add_column"));
	assert_ptr_equal(st->phase, &plan->phases[0]);
	assert_int_equal(st->index, 0);
	assert_int_equal(st->pos.line, 40);
	assert_int_equal(st->pos.col, 9);
	assert_string_equal(ARG_STR(st, "table"), "jobs");
	assert_string_equal(ARG_STR(st, "column"), "new_status");
	assert_string_equal(ARG_STR(st, "type"), "varchar(20)");
	assert_null(ARG_STR(st, "default"));
	assert_int_equal(ARG_INT(st, "nullable"), 1); /* def "true" */
	assert_int_equal(phg_step_field_pos(st, "type").line, 40);
	assert_int_equal(phg_step_field_pos(st, "type").col, 62);
	assert_int_equal(phg_step_field_pos(st, "default").line, 0);
	assert_int_equal(phg_step_field_pos(st, "no_such_key").line, 0);

	/* http: default method overridden, nested revert */
	st = &plan->phases[1].steps[0];
	assert_string_equal(st->kind->name, "http");
	assert_string_equal(ARG_STR(st, "method"), "PUT");
	assert_string_equal(ARG_STR(st, "body"), "{\"enabled\": true}");
	assert_int_equal(phg_step_field_pos(st, "revert").line, 48);
	assert_int_equal(phg_step_field_pos(st, "revert").col, 19);

	st = &plan->phases[2].steps[0];
	assert_string_equal(ARG_STR(st, "set"), "new_status = status");
	assert_string_equal(ARG_STR(st, "where"), "new_status IS NULL");
	assert_int_equal(ARG_U64(st, "batch_size"), 5000);
	assert_int_equal(ARG_STRV(st, "key")->n, 0);

	st = &plan->phases[4].steps[1];
	assert_string_equal(st->kind->name, "rename_column");
	assert_string_equal(ARG_STR(st, "to"), "status");
	assert_int_equal(st->index, 1);

	/* environments */
	assert_int_equal(plan->nenvs, 2);
	assert_string_equal(plan->envs[0].name, "staging");
	assert_string_equal(plan->envs[0].url_env, "STAGING_DATABASE_URL");
	assert_int_equal(plan->envs[0].nchecks, 1);
	assert_string_equal(plan->envs[0].checks[0].url, "http://127.0.0.1:8080/healthz");
	assert_string_equal(plan->envs[1].name, "prod");
	assert_int_equal(plan->envs[1].pos.line, 10);
	assert_string_equal(plan->envs[1].url_env, "PROD_DATABASE_URL");
	assert_string_equal(plan->envs[1].checks[0].url, "https://api.example/healthz");
	/* the fields not overridden are the plan's */
	assert_int_equal(plan->envs[1].checks[0].soak_ms, 10000);
	assert_string_equal(plan->envs[1].checks[0].headers.v[0].value, "Bearer ${HEALTH_TOKEN}");
	assert_string_equal(plan->envs[1].settings.state_schema, "phasegate");
	/* the plan's own check is untouched */
	assert_string_equal(plan->checks[0].url, "http://127.0.0.1:8080/healthz");

	assert_checksum_format(plan->checksum);
	for (size_t i = 0; i < plan->nphases; i++)
		assert_checksum_format(plan->phases[i].checksum);
	phg_plan_free(plan);
}

static void test_select_env(void **state)
{
	phg_plan_t *plan = load_ok(spec_plan);
	phg_err_t err = {0};

	(void)state;
	assert_null(plan->env);
	assert_int_equal(phg_plan_select_env(plan, "prod", &err), 0);
	assert_non_null(plan->env);
	assert_string_equal(plan->env->name, "prod");
	assert_string_equal(plan->url_env, "PROD_DATABASE_URL");
	assert_string_equal(phg_plan_find_check(plan, "api")->url, "https://api.example/healthz");

	assert_int_equal(phg_plan_select_env(plan, "staging", &err), 0);
	assert_string_equal(plan->url_env, "STAGING_DATABASE_URL");
	assert_string_equal(phg_plan_find_check(plan, "api")->url, "http://127.0.0.1:8080/healthz");

	assert_int_equal(phg_plan_select_env(plan, "qa", &err), PHG_EUSAGE);
	assert_int_equal(err.code, PHG_EUSAGE);
	assert_contains(err.msg, "unknown environment \"qa\"");
	assert_contains(err.msg, "staging, prod");
	/* a refused selection keeps the current one */
	assert_string_equal(plan->url_env, "STAGING_DATABASE_URL");

	assert_int_equal(phg_plan_select_env(plan, NULL, &err), 0);
	assert_null(plan->env);
	assert_string_equal(plan->url_env, "DATABASE_URL");
	assert_int_equal(phg_plan_select_env(plan, "prod", &err), 0);
	phg_plan_free(plan); /* frees once whatever is selected (valgrind) */
}

/* ---- every step kind, every setting, environment overrides ---- */

static const char all_kinds_plan[] =
    "version: 1\n"
    "name: all-kinds\n"
    "target:\n"
    "  url_env: APP_DB\n"
    "environments:\n"
    "  prod:\n"
    "    url_env: PROD_DB\n"
    "    settings: { lock_timeout: 5s, on_failure: stop }\n"
    "    checks:\n"
    "      api: { url: \"https://api.example/healthz\", timeout: 3s, headers: { X-Env: prod } }\n"
    "  staging: {}\n"
    "settings:\n"
    "  lock_timeout: 250ms\n"
    "  lock_retries: 5\n"
    "  statement_timeout: 1m\n"
    "  state_schema: deploy_state\n"
    "  on_failure: rollback-plan\n"
    "  retry_backoff: 100ms\n"
    "  retry_backoff_max: 1h\n"
    "  connect_timeout: 3s\n"
    "  connect_retries: 7\n"
    "checks:\n"
    "  api:\n"
    "    url: http://127.0.0.1:8080/healthz\n"
    "  flags:\n"
    "    url: http://127.0.0.1:8080/flags\n"
    "    method: POST\n"
    "    body: '{\"q\": 1}'\n"
    "    expect_status: [200, 204]\n"
    "    expect_json: { status: ok, db.ready: \"true\" }\n"
    "    insecure: true\n"
    "backup:\n"
    "  dir: /var/backups/pg\n"
    "  scope: database\n"
    "  timeout: 30m\n"
    "  compress: 9\n"
    "phases:\n"
    "  - name: expand\n"
    "    backup: true\n"
    "    steps:\n"
    "      - add_column: { table: public.jobs, column: new_status, type: \"varchar(20)\", default: \"'pending'\", nullable: false }\n"
    "      - create_index: { table: jobs, columns: [new_status, id], name: jobs_new_status_idx, unique: true, where: \"new_status IS NOT NULL\", method: gin }\n"
    "      - add_check: { table: jobs, name: jobs_status_ck, check: \"new_status <> ''\" }\n"
    "      - add_foreign_key:\n"
    "          table: jobs\n"
    "          name: jobs_owner_fk\n"
    "          columns: [owner_id]\n"
    "          references: { table: public.users, columns: [id] }\n"
    "          on_delete: set null\n"
    "      - sync_trigger: { table: jobs, from: status, to: new_status, expr: \"upper(status)\", down_expr: \"lower(new_status)\" }\n"
    "    verify: [api, flags]\n"
    "    watch: flags\n"
    "  - name: flip\n"
    "    steps:\n"
    "      - http:\n"
    "          method: PUT\n"
    "          url: http://127.0.0.1:8080/flags/x\n"
    "          headers: { Authorization: \"Bearer ${TOKEN}\" }\n"
    "          body: \"\"\n"
    "          revert: { method: DELETE, body: '{\"x\": false}' }\n"
    "      - sql: { up: \"UPDATE flags SET enabled = true WHERE id = 1\", down: \"UPDATE flags SET enabled = false WHERE id = 1\", transaction: false }\n"
    "  - name: backfill\n"
    "    steps:\n"
    "      - backfill: { table: jobs, set: \"new_status = status\", where: \"new_status IS NULL\", key: id, batch_size: 1000000 }\n"
    "  - name: contract\n"
    "    steps:\n"
    "      - set_not_null: { table: jobs, column: new_status }\n"
    "      - drop_column: { table: jobs, column: status }\n"
    "      - rename_column: { table: jobs, column: new_status, to: status }\n"
    "      - set_default: { table: jobs, column: status, default: \"'queued'\" }\n"
    "      - drop_default: { table: jobs, column: created_at }\n"
    "      - drop_index: { index: app.jobs_x }\n"
    "      - drop_constraint: { table: jobs, constraint: jobs_status_ck }\n"
    "      - rename_table: { table: app.old_jobs, to: older_jobs }\n"
    "      - create_table: { table: reviews, columns: [{ name: id, type: bigint }] }\n"
    "      - drop_table: { table: legacy_jobs }\n"

    "      - alter_column_type: { table: jobs, column: title, type: varchar, from: text }\n"
    "      - create_enum: { name: app.job_state, values: [queued, done] }\n"
    "      - add_enum_value: { type: app.job_state, value: running, before: done }\n";

static void test_all_kinds(void **state)
{
	/* add_enum_value always warns: it cannot be reverted */
	phg_plan_t *plan = load_warned(all_kinds_plan, "add_enum_value cannot be reverted");
	const phg_step_t *st;
	const phg_check_t *flags;
	const phg_env_t *prod, *staging;
	int seen[32] = {0};
	size_t nkinds = 0;

	(void)state;
	assert_string_equal(plan->url_env, "APP_DB");
	assert_int_equal(plan->settings.lock_timeout_ms, 250);
	assert_int_equal(plan->settings.lock_retries, 5);
	assert_int_equal(plan->settings.statement_timeout_ms, 60000);
	assert_string_equal(plan->settings.state_schema, "deploy_state");
	assert_int_equal(plan->settings.on_failure, PHG_ON_FAILURE_ROLLBACK_PLAN);
	assert_int_equal(plan->settings.retry_backoff_ms, 100);
	assert_int_equal(plan->settings.retry_backoff_max_ms, 3600000);
	assert_int_equal(plan->settings.connect_timeout_ms, 3000);
	assert_int_equal(plan->settings.connect_retries, 7);
	assert_string_equal(plan->backup.dir, "/var/backups/pg");
	assert_int_equal(plan->backup.scope, PHG_BACKUP_SCOPE_DATABASE);
	assert_int_equal(plan->backup.timeout_ms, 30 * 60000);
	assert_int_equal(plan->backup.compress, 9);

	/* every registered kind appears once in this plan */
	for (size_t p = 0; p < plan->nphases; p++)
		for (size_t s = 0; s < plan->phases[p].nsteps; s++)
			for (size_t k = 0; phg_step_kinds[k] != NULL; k++)
				if (plan->phases[p].steps[s].kind == phg_step_kinds[k])
					seen[k]++;
	for (size_t k = 0; phg_step_kinds[k] != NULL; k++, nkinds++)
		if (seen[k] != 1)
			fail_msg("step kind %s appears %d times", phg_step_kinds[k]->name, seen[k]);
	assert_int_equal(nkinds, 21);

	flags = phg_plan_find_check(plan, "flags");
	assert_string_equal(flags->method, "POST");
	assert_string_equal(flags->body, "{\"q\": 1}");
	assert_int_equal(flags->expect_status.n, 2);
	assert_int_equal(flags->expect_status.v[1], 204);
	assert_int_equal(flags->expect_json.n, 2);
	assert_string_equal(flags->expect_json.v[1].key, "db.ready");
	assert_string_equal(flags->expect_json.v[1].value, "true");
	assert_int_equal(flags->insecure, 1);

	st = &plan->phases[0].steps[0];
	assert_string_equal(ARG_STR(st, "table"), "public.jobs");
	assert_string_equal(ARG_STR(st, "default"), "'pending'");
	assert_int_equal(ARG_INT(st, "nullable"), 0);
	st = &plan->phases[0].steps[1];
	assert_int_equal(ARG_STRV(st, "columns")->n, 2);
	assert_string_equal(ARG_STRV(st, "columns")->v[1], "id");
	assert_int_equal(ARG_INT(st, "unique"), 1);
	assert_int_equal(ARG_INT(st, "method"), enum_index(st, "method", "gin"));
	st = &plan->phases[0].steps[2];
	assert_string_equal(ARG_STR(st, "check"), "new_status <> ''");
	st = &plan->phases[0].steps[3];
	assert_string_equal(st->kind->name, "add_foreign_key");
	assert_int_equal(ARG_INT(st, "on_delete"), enum_index(st, "on_delete", "set null"));
	{
		const phg_field_t *ref = fieldp(st->kind->fields, "references");
		const char *base = (const char *)argp(st, "references");
		const phg_field_t *rt = fieldp(ref->sub, "table"), *rc = fieldp(ref->sub, "columns");
		const phg_strv_t *cols = (const phg_strv_t *)(base + rc->offset);

		assert_string_equal(*(char *const *)(base + rt->offset), "public.users");
		assert_int_equal(cols->n, 1);
		assert_string_equal(cols->v[0], "id");
	}
	assert_int_equal(phg_step_field_pos(st, "on_delete").line, 49);
	assert_int_equal(phg_step_field_pos(st, "on_delete").col, 22);
	st = &plan->phases[0].steps[4];
	assert_string_equal(ARG_STR(st, "down_expr"), "lower(new_status)");
	assert_int_equal(plan->phases[0].verify.n, 2);
	assert_int_equal(plan->phases[0].watch.n, 1); /* a scalar is a list of one */
	assert_string_equal(plan->phases[0].watch.v[0], "flags");
	assert_int_equal(plan->phases[0].backup, 1);

	st = &plan->phases[1].steps[0];
	assert_string_equal(ARG_STR(st, "body"), "");
	assert_int_equal(ARG_KVV(st, "headers")->n, 1);
	assert_string_equal(ARG_KVV(st, "headers")->v[0].value, "Bearer ${TOKEN}");
	st = &plan->phases[1].steps[1];
	assert_int_equal(ARG_INT(st, "transaction"), 0);
	assert_string_equal(ARG_STR(st, "down"), "UPDATE flags SET enabled = false WHERE id = 1");
	st = &plan->phases[2].steps[0];
	assert_int_equal(ARG_U64(st, "batch_size"), 1000000);
	assert_int_equal(ARG_STRV(st, "key")->n, 1);
	assert_string_equal(ARG_STRV(st, "key")->v[0], "id");
	st = &plan->phases[3].steps[3];
	assert_string_equal(st->kind->name, "set_default");
	assert_string_equal(ARG_STR(st, "default"), "'queued'");
	st = &plan->phases[3].steps[4];
	assert_string_equal(st->kind->name, "drop_default");
	assert_string_equal(ARG_STR(st, "column"), "created_at");
	st = &plan->phases[3].steps[5];
	assert_string_equal(st->kind->name, "drop_index");
	assert_string_equal(ARG_STR(st, "index"), "app.jobs_x");
	assert_null(ARG_STR(st, "table"));
	st = &plan->phases[3].steps[6];
	assert_string_equal(st->kind->name, "drop_constraint");
	assert_string_equal(ARG_STR(st, "constraint"), "jobs_status_ck");
	st = &plan->phases[3].steps[7];
	assert_string_equal(st->kind->name, "rename_table");
	assert_string_equal(ARG_STR(st, "to"), "older_jobs");
	st = &plan->phases[3].steps[10];
	assert_string_equal(st->kind->name, "alter_column_type");
	assert_string_equal(ARG_STR(st, "type"), "varchar");
	assert_string_equal(ARG_STR(st, "from"), "text");
	st = &plan->phases[3].steps[11];
	assert_string_equal(st->kind->name, "create_enum");
	assert_int_equal(ARG_STRV(st, "values")->n, 2);
	assert_string_equal(ARG_STRV(st, "values")->v[1], "done");
	st = &plan->phases[3].steps[12];
	assert_string_equal(st->kind->name, "add_enum_value");
	assert_string_equal(ARG_STR(st, "before"), "done");

	/* environment resolution */
	prod = &plan->envs[0];
	staging = &plan->envs[1];
	assert_string_equal(prod->name, "prod");
	assert_string_equal(prod->url_env, "PROD_DB");
	assert_string_equal(staging->url_env, "APP_DB"); /* the plan's */
	assert_int_equal(prod->settings.lock_timeout_ms, 5000);
	assert_int_equal(prod->settings.on_failure, PHG_ON_FAILURE_STOP);
	assert_int_equal(prod->settings.lock_retries, 5); /* the plan's */
	assert_string_equal(prod->settings.state_schema, "deploy_state");
	assert_int_equal(staging->settings.lock_timeout_ms, 250);
	assert_int_equal(prod->nchecks, 2);
	assert_string_equal(prod->checks[0].name, "api");
	assert_string_equal(prod->checks[0].url, "https://api.example/healthz");
	assert_int_equal(prod->checks[0].timeout_ms, 3000);
	assert_int_equal(prod->checks[0].interval_ms, 1000);
	assert_int_equal(prod->checks[0].headers.n, 1);
	assert_string_equal(prod->checks[0].headers.v[0].key, "X-Env");
	assert_string_equal(prod->checks[1].name, "flags");
	assert_int_equal(prod->checks[1].expect_json.n, 2);
	assert_int_equal(plan->checks[0].timeout_ms, 2000);
	assert_int_equal(plan->checks[0].headers.n, 0);

	assert_int_equal(phg_plan_select_env(plan, "prod", NULL), 0);
	assert_int_equal(plan->settings.lock_timeout_ms, 5000);
	assert_string_equal(plan->url_env, "PROD_DB");
	assert_int_equal(phg_plan_find_check(plan, "api")->timeout_ms, 3000);
	phg_plan_free(plan);
}

static void test_defaults(void **state)
{
	phg_plan_t *plan = load_warned("version: 1\n"
	                           "name: minimal\n"
	                           "checks:\n"
	                           "  up: { url: \"http://localhost/\" }\n"
	                           "  env_url: { url: \"${HEALTH_URL}/healthz\" }\n"
	                           "phases:\n"
	                           "  - name: only\n"
	                           "    steps:\n"
	                           "      - sql: { up: \"SELECT 1\" }\n",
	                               "sql step without `down`");
	const phg_check_t *c = &plan->checks[0];
	const phg_step_t *st = &plan->phases[0].steps[0];

	(void)state;
	assert_null(plan->description);
	assert_string_equal(plan->url_env, "DATABASE_URL");
	assert_int_equal(plan->settings.lock_timeout_ms, 2000);
	assert_int_equal(plan->settings.lock_retries, 20);
	assert_int_equal(plan->settings.statement_timeout_ms, 0);
	assert_string_equal(plan->settings.state_schema, "phasegate");
	assert_int_equal(plan->settings.on_failure, PHG_ON_FAILURE_ROLLBACK_PHASE);
	assert_int_equal(plan->settings.retry_backoff_ms, 200);
	assert_int_equal(plan->settings.retry_backoff_max_ms, 10000);
	assert_int_equal(plan->settings.connect_timeout_ms, 10000);
	assert_int_equal(plan->settings.connect_retries, 3);
	assert_string_equal(c->method, "GET");
	assert_int_equal(c->timeout_ms, 2000);
	assert_int_equal(c->interval_ms, 1000);
	assert_int_equal(c->successes, 3);
	assert_int_equal(c->failures, 2);
	assert_int_equal(c->soak_ms, 0);
	assert_int_equal(c->max_latency_ms, 0);
	assert_int_equal(c->insecure, 0);
	assert_int_equal(c->expect_status.n, 0);
	assert_null(c->expect_body);
	assert_string_equal(plan->backup.dir, "./backups");
	assert_int_equal(plan->backup.scope, PHG_BACKUP_SCOPE_TABLES);
	assert_int_equal(plan->backup.timeout_ms, 3600000);
	assert_int_equal(plan->backup.compress, 1);
	assert_int_equal(plan->nenvs, 0);
	assert_string_equal(plan->checks[1].url, "${HEALTH_URL}/healthz");
	assert_int_equal(ARG_INT(st, "transaction"), 1);
	assert_null(ARG_STR(st, "down"));
	assert_int_equal(plan->phases[0].backup, 0);
	phg_plan_free(plan);
}

/* ---- checksums ---- */

static void test_checksums(void **state)
{
	char *changed = strdup(spec_plan), *p, want[72];
	phg_plan_t *a, *b;

	(void)state;
	/* change only the backfill phase: batch_size 5000 -> 4000 */
	p = strstr(changed, "batch_size: 5000");
	assert_non_null(p);
	p[12] = '4';
	a = load_ok(spec_plan);
	b = load_ok(changed);

	sha256_of(spec_plan, strlen(spec_plan), want);
	assert_string_equal(a->file_checksum, want);
	sha256_of(a->canonical, strlen(a->canonical), want);
	assert_string_equal(a->checksum, want);
	assert_string_not_equal(a->checksum, b->checksum);
	for (size_t i = 0; i < a->nphases; i++) {
		if (i == 2)
			assert_string_not_equal(a->phases[i].checksum, b->phases[i].checksum);
		else
			assert_string_equal(a->phases[i].checksum, b->phases[i].checksum);
	}
	/* a phase's checksum is that of its canonical form: keys sorted, every
	 * scalar a string however it was quoted */
	sha256_of("{\"name\": \"enforce\", \"steps\": [{\"set_not_null\": {\"column\": "
	          "\"new_status\", \"table\": \"jobs\"}}]}",
	          strlen("{\"name\": \"enforce\", \"steps\": [{\"set_not_null\": {\"column\": "
	                 "\"new_status\", \"table\": \"jobs\"}}]}"),
	          want);
	assert_string_equal(a->phases[3].checksum, want);

	/* comments, layout, quoting, key order and CRLF line endings do not count */
	{
		const char *respelled =
		    "# the same plan, spelled differently\r\n"
		    "{version: 1, \"name\": 'jobs-status-rewrite', phases: [\r\n"
		    "  {steps: [{add_column: {table: jobs, column: x, type: int}}], name: one}]}\r\n";
		const char *plain =
		    "version: 1\nname: jobs-status-rewrite\nphases:\n"
		    "  - name: one   # first\n    steps:\n"
		    "      - add_column:\n          table: jobs\n          column: x\n"
		    "          type: \"int\"\n";
		phg_plan_t *x = load_ok(respelled), *y = load_ok(plain), *z;

		assert_string_equal(x->checksum, y->checksum);
		assert_string_equal(x->phases[0].checksum, y->phases[0].checksum);
		assert_string_not_equal(x->file_checksum, y->file_checksum);
		assert_true(phg_plan_checksum_is(x, y->checksum));
		assert_true(phg_plan_checksum_is(y, y->file_checksum));
		assert_false(phg_plan_checksum_is(y, x->file_checksum));
		/* the canonical form is itself a plan, with the same checksum */
		z = load_ok(y->canonical);
		assert_string_equal(z->checksum, y->checksum);
		assert_string_equal(z->canonical, y->canonical);
		phg_plan_free(x);
		phg_plan_free(y);
		phg_plan_free(z);
	}
	/* and so is the SPEC example's, escapes and block scalars included */
	{
		phg_plan_t *z = load_ok(a->canonical);

		assert_string_equal(z->checksum, a->checksum);
		for (size_t i = 0; i < a->nphases; i++)
			assert_string_equal(z->phases[i].checksum, a->phases[i].checksum);
		phg_plan_free(z);
	}

	/* the same text loads to the same checksums */
	phg_plan_free(b);
	b = load_ok(spec_plan);
	for (size_t i = 0; i < a->nphases; i++)
		assert_string_equal(a->phases[i].checksum, b->phases[i].checksum);
	phg_plan_free(a);
	phg_plan_free(b);
	free(changed);
}

/* ---- strict scalar parsers ---- */

static void test_parse_duration(void **state)
{
	static const struct {
		const char *s;
		int rc;
		uint64_t ms;
	} cases[] = {
	    {"0", 0, 0},
	    {"0ms", 0, 0},
	    {"250ms", 0, 250},
	    {"2s", 0, 2000},
	    {"1m", 0, 60000},
	    {"1h", 0, 3600000},
	    {"5124095576030h", 0, 5124095576030ull * 3600000ull},
	    {"18446744073709551615ms", 0, UINT64_MAX},
	    {"5124095576031h", PHG_ETOOBIG, 0},
	    {"18446744073709551616ms", PHG_ETOOBIG, 0},
	    {"99999999999999999999s", PHG_ETOOBIG, 0},
	    {"2 s", PHG_EINVAL, 0},
	    {" 2s", PHG_EINVAL, 0},
	    {"2s ", PHG_EINVAL, 0},
	    {"-1", PHG_EINVAL, 0},
	    {"-1s", PHG_EINVAL, 0},
	    {"+1s", PHG_EINVAL, 0},
	    {"1.5s", PHG_EINVAL, 0},
	    {"5", PHG_EINVAL, 0},
	    {"s", PHG_EINVAL, 0},
	    {"", PHG_EINVAL, 0},
	    {"2S", PHG_EINVAL, 0},
	    {"2sec", PHG_EINVAL, 0},
	    {"2d", PHG_EINVAL, 0},
	    {"1h30m", PHG_EINVAL, 0},
	    {"99999999999999999999", PHG_EINVAL, 0},
	};

	(void)state;
	assert_int_equal(phg_parse_duration(NULL, &(uint64_t){0}), PHG_EINVAL);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t ms = 12345;
		int rc = phg_parse_duration(cases[i].s, &ms);

		if (rc != cases[i].rc)
			fail_msg("phg_parse_duration(\"%s\") = %d, want %d", cases[i].s, rc, cases[i].rc);
		if (rc == 0 && ms != cases[i].ms)
			fail_msg("phg_parse_duration(\"%s\") = %llu ms, want %llu", cases[i].s,
			         (unsigned long long)ms, (unsigned long long)cases[i].ms);
		if (rc != 0)
			assert_int_equal(ms, 12345); /* untouched on error */
	}
}

static void test_parse_uint(void **state)
{
	static const struct {
		const char *s;
		int rc;
		uint64_t v;
	} cases[] = {
	    {"0", 0, 0},
	    {"42", 0, 42},
	    {"007", 0, 7},
	    {"18446744073709551615", 0, UINT64_MAX},
	    {"18446744073709551616", PHG_ETOOBIG, 0},
	    {"99999999999999999999", PHG_ETOOBIG, 0},
	    {"99999999999999999999x", PHG_EINVAL, 0},
	    {"-1", PHG_EINVAL, 0},
	    {"+1", PHG_EINVAL, 0},
	    {" 1", PHG_EINVAL, 0},
	    {"1 ", PHG_EINVAL, 0},
	    {"1.0", PHG_EINVAL, 0},
	    {"0x10", PHG_EINVAL, 0},
	    {"1e3", PHG_EINVAL, 0},
	    {"", PHG_EINVAL, 0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 777;
		int rc = phg_parse_uint(cases[i].s, &v);

		if (rc != cases[i].rc)
			fail_msg("phg_parse_uint(\"%s\") = %d, want %d", cases[i].s, rc, cases[i].rc);
		if (rc == 0 && v != cases[i].v)
			fail_msg("phg_parse_uint(\"%s\") = %llu", cases[i].s, (unsigned long long)v);
		if (rc != 0)
			assert_int_equal(v, 777);
	}
}

/* Numbers from the database: the end pointer and the range are checked. */
static void test_parse_int64(void **state)
{
	static const struct {
		const char *s;
		long long min, max;
		int rc;
		long long v;
	} cases[] = {
	    {"0", 0, 10, 0, 0},
	    {"-5", -10, 10, 0, -5},
	    {"10", 0, 10, 0, 10},
	    {"11", 0, 10, PHG_ETOOBIG, 0},
	    {"-1", 0, 10, PHG_ETOOBIG, 0},
	    {"2147483648", -2147483648LL, 2147483647LL, PHG_ETOOBIG, 0},
	    {"9223372036854775808", 0, LLONG_MAX, PHG_ETOOBIG, 0},
	    {"12abc", 0, 100, PHG_EINVAL, 0},
	    {"", 0, 100, PHG_EINVAL, 0},
	    {" 1", 0, 100, PHG_EINVAL, 0},
	    {"+1", 0, 100, PHG_EINVAL, 0},
	    {"1.5", 0, 100, PHG_EINVAL, 0},
	};
	int bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		long long v = 777;
		int rc = phg_parse_int64(cases[i].s, cases[i].min, cases[i].max, &v);

		if (rc != cases[i].rc)
			fail_msg("phg_parse_int64(\"%s\") = %d, want %d", cases[i].s, rc, cases[i].rc);
		if (rc == 0 && v != cases[i].v)
			fail_msg("phg_parse_int64(\"%s\") = %lld", cases[i].s, v);
		if (rc != 0)
			assert_int_equal(v, 777);
	}
	assert_int_equal(phg_db_num("42", 0, 100, -1, &bad), 42);
	assert_int_equal(bad, 0);
	assert_int_equal(phg_db_num("x", 0, 100, -1, &bad), -1);
	assert_int_equal(bad, 1);
}

static void test_identifiers(void **state)
{
	char name[80];

	(void)state;
	assert_true(phg_ident_ok("jobs"));
	assert_true(phg_ident_ok("_x"));
	assert_true(phg_ident_ok("a$b"));
	assert_true(phg_ident_ok("Jobs_2"));
	assert_false(phg_ident_ok(NULL));
	assert_false(phg_ident_ok(""));
	assert_false(phg_ident_ok("1a"));
	assert_false(phg_ident_ok("$a"));
	assert_false(phg_ident_ok("jobs; DROP TABLE jobs"));
	assert_false(phg_ident_ok("a-b"));
	assert_false(phg_ident_ok("a.b"));
	assert_false(phg_ident_ok("a b"));
	assert_false(phg_ident_ok("\"jobs\""));
	assert_false(phg_ident_ok("caf\xc3\xa9"));
	memset(name, 'a', 63);
	name[63] = '\0';
	assert_true(phg_ident_ok(name));
	name[63] = 'a';
	name[64] = '\0';
	assert_false(phg_ident_ok(name));

	assert_true(phg_table_ok("jobs"));
	assert_true(phg_table_ok("public.jobs"));
	assert_false(phg_table_ok("a.b.c"));
	assert_false(phg_table_ok(".jobs"));
	assert_false(phg_table_ok("jobs."));
	assert_false(phg_table_ok("public.1jobs"));
	assert_false(phg_table_ok("jobs; DROP TABLE jobs"));
	assert_false(phg_table_ok(NULL));
	assert_false(phg_table_ok(name)); /* 64 bytes */

	assert_true(phg_sqltype_ok("varchar(20)"));
	assert_true(phg_sqltype_ok("numeric(10,2)"));
	assert_true(phg_sqltype_ok("numeric(10, 2)"));
	assert_true(phg_sqltype_ok("text[]"));
	assert_true(phg_sqltype_ok("int[][]"));
	assert_true(phg_sqltype_ok("double precision"));
	assert_true(phg_sqltype_ok("timestamp with time zone"));
	assert_true(phg_sqltype_ok("public.my_type"));
	assert_false(phg_sqltype_ok(NULL));
	assert_false(phg_sqltype_ok(""));
	assert_false(phg_sqltype_ok(" "));
	assert_false(phg_sqltype_ok("int; DROP TABLE jobs"));
	assert_false(phg_sqltype_ok("int -- comment"));
	assert_false(phg_sqltype_ok("varchar(20"));
	assert_false(phg_sqltype_ok("varchar)20("));
	assert_false(phg_sqltype_ok("text[)"));
	assert_false(phg_sqltype_ok("\"MyType\""));
	assert_false(phg_sqltype_ok("text'"));
	assert_false(phg_sqltype_ok("int/*x*/"));
}

/* ---- errors ---- */

static void test_errors(void **state)
{
	char *diag;

	(void)state;
	/* several errors at once, in order of position, with line and caret */
	diag = load_bad("version: 1\n"
	                "name: x\n"
	                "settings:\n"
	                "  lock_timeout: 2 s\n"
	                "phases:\n"
	                "  - name: a\n"
	                "    steps:\n"
	                "      - add_column: { table: \"jobs; DROP TABLE jobs\", column: c }\n");
	assert_contains(diag, "t.yaml:4:17: invalid duration \"2 s\" for \"lock_timeout\" in "
	                      "settings");
	assert_contains(diag, "  lock_timeout: 2 s\n                ^\n");
	assert_contains(diag, "t.yaml:8:9: missing required key \"type\" in add_column step\n");
	assert_contains(diag, "t.yaml:8:30: invalid value \"jobs; DROP TABLE jobs\" for \"table\"");
	assert_true(strstr(diag, ":4:17:") < strstr(diag, ":8:9:"));
	assert_true(strstr(diag, ":8:9:") < strstr(diag, ":8:30:"));
	free(diag);

	diag = load_bad("");
	assert_string_equal(diag, "t.yaml:1:1: the plan is empty: expected a mapping with "
	                          "version, name and phases\n\n^\n");
	free(diag);

	diag = load_bad("version: 1\nname: x\nphases:\n  - name: a\n    steps:\n"
	                "      - add_column: { table: t, column: c, type: int, nullable: false }\n");
	assert_contains(diag, "t.yaml:6:65: column \"c\" is NOT NULL without a default");
	free(diag);
}

static void test_limits(void **state)
{
	size_t n = PHG_PLAN_MAX_FILE + 1;
	char *big = malloc(n + 1), *diag;
	phg_plan_t *plan = (phg_plan_t *)1;
	phg_err_t err = {0};
	capture_t c;

	(void)state;
	memset(big, '#', n);
	big[n] = '\0';
	capture_open(&c);
	assert_int_equal(phg_plan_load_buffer("big.yaml", big, n, c.f, &plan, &err), PHG_EPLAN);
	capture_close(&c);
	assert_null(plan);
	assert_contains(c.text, "big.yaml:1:1: plan file is too large: more than 1048576 bytes\n");
	assert_contains(c.text, "..."); /* the long line is shown as a window */
	assert_true(strlen(c.text) < 1000);
	free(c.text);
	free(big);

	/* nesting past PHG_PLAN_MAX_DEPTH */
	{
		char deep[256] = "a: ";

		memset(deep + 3, '[', PHG_PLAN_MAX_DEPTH + 1);
		deep[3 + PHG_PLAN_MAX_DEPTH + 1] = '\0';
		diag = load_bad(deep);
		assert_contains(diag, "t.yaml:1:19: nesting is deeper than 16 levels\n");
		free(diag);
	}

	/* a scalar past PHG_PLAN_MAX_SCALAR */
	{
		size_t len = PHG_PLAN_MAX_SCALAR + 1;
		char *y = malloc(len + 64);

		memcpy(y, "description: ", 13);
		memset(y + 13, 'x', len);
		y[13 + len] = '\0';
		diag = load_bad(y);
		assert_contains(diag, "t.yaml:1:14: value too long: 65537 bytes (the limit is 65536 "
		                      "bytes)\n");
		free(diag);
		free(y);
	}

	/* more than 50 errors: the first 50 are shown, then one line says so */
	{
		char *y = malloc(64 * 1024), *p;
		size_t shown = 0;

		snprintf(y, 64 * 1024, "%s",
		         "version: 1\nname: x\nphases: [ {name: a, steps: [ {sql: {up: SELECT 1}} ]} ]\n");
		for (int i = 0; i < 60; i++)
			snprintf(y + strlen(y), 64, "bad%d: 1\n", i);
		diag = load_bad(y);
		for (p = diag; (p = strstr(p, ": unknown key")) != NULL; p++)
			shown++;
		assert_int_equal(shown, 50);
		assert_contains(diag, "t.yaml: too many errors; only the first 50 are shown\n");
		assert_contains(diag, "unknown key \"bad49\"");
		assert_null(strstr(diag, "\"bad50\""));
		free(diag);
		free(y);
	}
}

static void test_load_file(void **state)
{
	char path[] = "/tmp/phg_test_plan_XXXXXX";
	int fd = mkstemp(path);
	phg_plan_t *plan = NULL;
	phg_err_t err = {0};
	capture_t c;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, spec_plan, strlen(spec_plan)), (ssize_t)strlen(spec_plan));
	close(fd);
	capture_open(&c);
	assert_int_equal(phg_plan_load(path, c.f, &plan, &err), 0);
	capture_close(&c);
	assert_string_equal(c.text, "");
	free(c.text);
	assert_string_equal(plan->file, path);
	assert_int_equal(plan->nphases, 5);
	phg_plan_free(plan);
	unlink(path);

	plan = (phg_plan_t *)1;
	assert_int_equal(phg_plan_load(path, NULL, &plan, &err), PHG_EIO);
	assert_null(plan);
	assert_contains(err.msg, "cannot read \"/tmp/phg_test_plan_");
	assert_contains(err.msg, "No such file or directory");

	/* a FIFO (nobody writing) must not block the load, nor a directory
	 * pass for a plan: only a regular file is read */
	assert_int_equal(mkfifo(path, 0600), 0);
	phg_err_clear(&err);
	assert_int_equal(phg_plan_load(path, NULL, &plan, &err), PHG_EIO);
	assert_contains(err.msg, "not a regular file");
	unlink(path);
	phg_err_clear(&err);
	assert_int_equal(phg_plan_load("/tmp", NULL, &plan, &err), PHG_EIO);
	assert_contains(err.msg, "Is a directory");
}

/* Load and free plans repeatedly, refused ones too: run under valgrind
 * (--leak-check=full --error-exitcode=1) this proves the free path. */
static void test_free_path(void **state)
{
	static const char *const refused[] = {
	    "a: &x 1\nb: *x\n",
	    "version: 1\nname: x\nphases:\n\t- name: a\n",
	    "version: 1\nname: x\nenvironments: { p: { checks: { nope: {url: x} } } }\n"
	    "checks: { api: { url: \"http://x\", headers: {a: b} } }\n"
	    "phases: [ {name: a, steps: [ {http: {url: x, headers: {a: 1}, revert: {url: y}}} ], "
	    "verify: [api, zz]} ]\n",
	    "version: 1\nname: x\nphases: [ {name: a, steps: [ {add_foreign_key: {table: t, name: "
	    "f, columns: [a, b], references: {table: u, columns: [c]}}} ]} ]\n",
	    "version: 1\nname: x\nphases: [ {name: a, steps: [ {create_index: {table: t, name: i, "
	    "columns: [a, \"b c\"]}} ]} ]\n",
	    "version: 1\nversion: 2\n",
	};

	(void)state;
	for (int round = 0; round < 3; round++) {
		phg_plan_t *plan = load_warned(all_kinds_plan, "add_enum_value cannot be reverted");

		assert_int_equal(phg_plan_select_env(plan, "staging", NULL), 0);
		phg_plan_free(plan);
		for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
			free(load_bad(refused[i]));
	}
	phg_plan_free(NULL);
}

/* The loader's list types create_table uses (PHG_FT_MAP_LIST,
 * PHG_FT_IDENT_LISTS, PHG_FT_SQL_LIST): items, positions, shorthands, and
 * errors that name the item. */
static void test_table_lists(void **state)
{
	static const char head[] = "version: 1\nname: t\nphases:\n  - name: contract\n"
	                           "    steps:\n      - create_table:\n";
	phg_plan_t *plan;
	const phg_step_t *st;
	const phg_field_t *cf;
	const phg_maplist_t *cols;
	const phg_strvv_t *uq;
	char *yaml, *diag;

	(void)state;
	yaml = phg_asprintf("%s"
	                    "          table: app.reviews\n"                       /* 7 */
	                    "          columns:\n"                                 /* 8 */
	                    "            - { name: id, type: bigint, identity: true }\n"
	                    "            - name: job_id\n"                         /* 10 */
	                    "              type: bigint\n"
	                    "              references: jobs(id)\n"                 /* 12 */
	                    "          unique: [[job_id, id], id]\n"               /* 13 */
	                    "          checks: [\"job_id > 0\", \"id <> job_id\"]\n",
	                    head);
	plan = load_ok(yaml);
	free(yaml);
	st = &plan->phases[0].steps[0];
	cf = fieldp(st->kind->fields, "columns");
	cols = (const phg_maplist_t *)argp(st, "columns");
	assert_int_equal(cols->n, 2);
	assert_string_equal(*(char *const *)((const char *)cols->v + cf->sub_size +
	                                     fieldp(cf->sub, "name")->offset),
	                    "job_id");
	assert_int_equal(*(const int *)((const char *)cols->v + fieldp(cf->sub, "identity")->offset), 1);
	assert_int_equal(cols->pos[1].line, 10);
	assert_int_equal(cols->pos[1].col, 15);
	assert_int_equal(phg_maplist_field_pos(cf->sub, cols, 1, "references").line, 12);
	assert_int_equal(phg_maplist_field_pos(cf->sub, cols, 1, "references").col, 27);
	assert_int_equal(phg_maplist_field_pos(cf->sub, cols, 1, "default").line, 0);
	uq = (const phg_strvv_t *)argp(st, "unique");
	assert_int_equal(uq->n, 2); /* a scalar among lists is a list of one */
	assert_int_equal(uq->v[0].n, 2);
	assert_string_equal(uq->v[0].v[1], "id");
	assert_int_equal(uq->v[1].n, 1);
	assert_int_equal(uq->pos[1].line, 13);
	assert_int_equal(uq->pos[1].col, 34);
	assert_int_equal(ARG_STRV(st, "checks")->n, 2);
	assert_string_equal(ARG_STRV(st, "checks")->v[1], "id <> job_id");
	phg_plan_free(plan);

	/* a flat list is one constraint; one check is a list of one */
	yaml = phg_asprintf("%s          table: r\n          columns: [{name: a, type: int}, {name: b, "
	                    "type: int}]\n          unique: [a, b]\n          checks: \"a > b\"\n",
	                    head);
	plan = load_ok(yaml);
	free(yaml);
	st = &plan->phases[0].steps[0];
	uq = (const phg_strvv_t *)argp(st, "unique");
	assert_int_equal(uq->n, 1);
	assert_int_equal(uq->v[0].n, 2);
	assert_int_equal(ARG_STRV(st, "checks")->n, 1);
	phg_plan_free(plan);

	/* errors name the item, the key and where they are */
	yaml = phg_asprintf("%s          table: r\n          columns:\n            - {name: a, type: int, "
	                    "not_nul: true}\n            - b\n          unique: [[a], []]\n"
	                    "          checks: [\"a >\"]\n",
	                    head);
	diag = load_bad(yaml);
	free(yaml);
	assert_contains(diag, ":9:36: unknown key \"not_nul\" in item 1 of \"columns\" of create_table "
	                      "step, did you mean \"not_null\"?");
	assert_contains(diag, ":10:15: expected a mapping for \"columns\" in create_table step, found "
	                      "\"b\"");
	assert_contains(diag, ":11:25: empty list for \"unique\" in create_table step: expected one or more names");
	assert_contains(diag, ":12:24: invalid SQL in \"checks\" in create_table step");
	free(diag);
	yaml = phg_asprintf("%s          table: r\n          columns: {name: a, type: int}\n", head);
	diag = load_bad(yaml);
	free(yaml);
	assert_contains(diag, ":8:20: expected a list of mappings for \"columns\" in create_table step");
	free(diag);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_spec_example),
	    cmocka_unit_test(test_select_env),
	    cmocka_unit_test(test_all_kinds),
	    cmocka_unit_test(test_table_lists),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_checksums),
	    cmocka_unit_test(test_parse_duration),
	    cmocka_unit_test(test_parse_uint),
	    cmocka_unit_test(test_parse_int64),
	    cmocka_unit_test(test_identifiers),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_load_file),
	    cmocka_unit_test(test_free_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
