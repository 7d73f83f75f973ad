/*
 * store.c - state names and the state schema DDL.
 */
#include "store.h"

#include <string.h>

static const char *const run_states[PHG_RUN__N] = {
	"not_started", "running", "interrupted", "completed", "failed", "rolled_back",
};
static const char *const phase_states[PHG_PHASE__N] = {
	"pending", "running", "applied", "failed", "rolled_back",
};
static const char *const step_states[PHG_STEP__N] = {
	"pending", "running", "applied", "failed", "reverting", "reverted", "finalized",
};

static const char *name_of(const char *const *names, int n, int s)
{
	return s >= 0 && s < n ? names[s] : "?";
}

static int parse_of(const char *const *names, int n, const char *s)
{
	for (int i = 0; s != NULL && i < n; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

const char *phg_run_state_name(int s)
{
	return name_of(run_states, PHG_RUN__N, s);
}

const char *phg_phase_state_name(int s)
{
	return name_of(phase_states, PHG_PHASE__N, s);
}

const char *phg_step_state_name(int s)
{
	return name_of(step_states, PHG_STEP__N, s);
}

int phg_run_state_parse(const char *s)
{
	return parse_of(run_states, PHG_RUN__N, s);
}

int phg_phase_state_parse(const char *s)
{
	return parse_of(phase_states, PHG_PHASE__N, s);
}

int phg_step_state_parse(const char *s)
{
	return parse_of(step_states, PHG_STEP__N, s);
}

void phg_store_schema_sql(phg_buf_t *o, const char *s)
{
	phg_buf_printf(o, "BEGIN;\n"
	                  "SELECT pg_advisory_xact_lock(%d, 0);\n"
	                  "CREATE SCHEMA IF NOT EXISTS %s;\n",
	               PHG_LOCK_CLASS, s);
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.runs (\n"
	               "  id bigserial PRIMARY KEY,\n"
	               "  plan text NOT NULL,\n"
	               "  checksum text NOT NULL,\n"
	               "  env text NOT NULL DEFAULT '',\n"
	               "  action text NOT NULL DEFAULT 'apply',\n"
	               "  state text NOT NULL,\n"
	               "  note text,\n"
	               "  error text,\n"
	               "  started_at timestamptz NOT NULL DEFAULT now(),\n"
	               "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
	               "  finished_at timestamptz,\n"
	               "  who text,\n"
	               "  host text,\n"
	               "  pid int,\n"
	               "  version text);\n"
	               "CREATE INDEX IF NOT EXISTS runs_plan_idx ON %s.runs (plan, id);\n",
	               s, s);
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.phases (\n"
	               "  run_id bigint NOT NULL REFERENCES %s.runs ON DELETE CASCADE,\n"
	               "  idx int NOT NULL,\n"
	               "  name text NOT NULL,\n"
	               "  checksum text NOT NULL,\n"
	               "  state text NOT NULL,\n"
	               "  started_at timestamptz,\n"
	               "  finished_at timestamptz,\n"
	               "  PRIMARY KEY (run_id, idx));\n",
	               s, s);
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.steps (\n"
	               "  run_id bigint NOT NULL,\n"
	               "  phase_idx int NOT NULL,\n"
	               "  idx int NOT NULL,\n"
	               "  kind text NOT NULL,\n"
	               "  state text NOT NULL,\n"
	               "  progress int NOT NULL DEFAULT 0,\n"
	               "  revert_progress int NOT NULL DEFAULT 0,\n"
	               "  final_progress int NOT NULL DEFAULT 0,\n"
	               "  op_started int,\n"
	               "  memo jsonb NOT NULL DEFAULT '{}',\n"
	               "  bf_pass int NOT NULL DEFAULT 1,\n"
	               "  bf_last text[],\n"
	               "  bf_rows bigint NOT NULL DEFAULT 0,\n"
	               "  bf_batches bigint NOT NULL DEFAULT 0,\n"
	               "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
	               "  PRIMARY KEY (run_id, phase_idx, idx),\n"
	               "  FOREIGN KEY (run_id, phase_idx) REFERENCES %s.phases ON DELETE CASCADE);\n",
	               s, s);
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.events (\n"
	               "  id bigserial PRIMARY KEY,\n"
	               "  run_id bigint,\n"
	               "  at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
	               "  phase text,\n"
	               "  step int,\n"
	               "  kind text NOT NULL,\n"
	               "  message text NOT NULL,\n"
	               "  data jsonb);\n"
	               "CREATE INDEX IF NOT EXISTS events_run_idx ON %s.events (run_id, id);\n",
	               s, s);
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.backups (\n"
	               "  id bigserial PRIMARY KEY,\n"
	               "  run_id bigint NOT NULL,\n"
	               "  phase text NOT NULL,\n"
	               "  path text NOT NULL,\n"
	               "  scope text NOT NULL,\n"
	               "  tables text[],\n"
	               "  size bigint NOT NULL,\n"
	               "  sha256 text NOT NULL,\n"
	               "  duration_ms bigint NOT NULL,\n"
	               "  taken_at timestamptz NOT NULL DEFAULT now());\n"
	               "COMMIT;\n",
	               s);
}
