/*
 * store.c - the state schema: its DDL, the names of the states, and every
 * statement that reads or writes it (see store.h).
 */
#include "store.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "step.h"

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

/* ---- a step's row ---- */

void phg_step_row_init(phg_step_row_t *r)
{
	memset(r, 0, sizeof(*r));
	r->state = PHG_STEP_PENDING;
	r->op_started = -1;
	r->bf_pass = 1;
}

void phg_step_row_clear(phg_step_row_t *r)
{
	json_decref(r->memo);
	phg_strv_clear(&r->bf_last);
	phg_strv_clear(&r->bf_high);
	phg_step_row_init(r);
}

void phg_store_step_cols(phg_buf_t *out, const char *a)
{
	phg_buf_printf(out,
	               "%sstate, %sprogress, %srevert_progress, %sfinal_progress, %sop_started, "
	               "%sbf_pass, array_to_json(%sbf_last)::text, %sbf_rows, %sbf_batches, "
	               "%smemo::text, array_to_json(%sbf_high)::text",
	               a, a, a, a, a, a, a, a, a, a, a);
}

/* A text[] column as JSON (NULL: @set = 0). */
static void col_strv(const PGresult *res, int row, int col, phg_strv_t *out, int *set, int *bad)
{
	json_error_t jerr;
	json_t *a, *v;
	size_t i;

	phg_strv_clear(out);
	if (set != NULL)
		*set = !PQgetisnull(res, row, col);
	if (PQgetisnull(res, row, col))
		return;
	a = json_loads(PQgetvalue(res, row, col), 0, &jerr);
	if (!json_is_array(a))
		*bad = 1;
	json_array_foreach(a, i, v) {
		phg_strv_push(out, json_is_string(v) ? json_string_value(v) : "");
	}
	json_decref(a);
}

static int col_int(const PGresult *res, int row, int col, int *bad)
{
	return (int)phg_db_num(PQgetvalue(res, row, col), INT_MIN, INT_MAX, 0, bad);
}

int phg_store_step_read(const PGresult *res, int row, int c, phg_step_row_t *r)
{
	int bad = 0;
	json_error_t jerr;

	r->state = phg_step_state_parse(PQgetvalue(res, row, c));
	r->progress = col_int(res, row, c + 1, &bad);
	r->revert_progress = col_int(res, row, c + 2, &bad);
	r->final_progress = col_int(res, row, c + 3, &bad);
	r->op_started = PQgetisnull(res, row, c + 4) ? -1 : col_int(res, row, c + 4, &bad);
	r->bf_pass = col_int(res, row, c + 5, &bad);
	col_strv(res, row, c + 6, &r->bf_last, NULL, &bad);
	col_strv(res, row, c + 10, &r->bf_high, &r->bf_high_set, &bad);
	r->bf_rows = phg_db_num(PQgetvalue(res, row, c + 7), 0, LLONG_MAX, 0, &bad);
	r->bf_batches = phg_db_num(PQgetvalue(res, row, c + 8), 0, LLONG_MAX, 0, &bad);
	json_decref(r->memo);
	r->memo = json_loads(PQgetvalue(res, row, c + 9), 0, &jerr);
	if (!json_is_object(r->memo)) {
		json_decref(r->memo);
		r->memo = json_object();
		bad = 1;
	}
	return bad || r->state < 0 ? PHG_ESTATE : 0;
}

static void step_where(phg_buf_t *out, long long run, int pi, int si)
{
	phg_buf_printf(out, " WHERE run_id = %lld AND phase_idx = %d AND idx = %d", run, pi, si);
}

void phg_store_step_select_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                               int si)
{
	phg_buf_adds(out, "SELECT ");
	phg_store_step_cols(out, "");
	phg_buf_printf(out, " FROM %s.steps", schema_q);
	step_where(out, run, pi, si);
}

/* ---- transitions ---- */

/* a timestamp as UTC ISO 8601 text */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

void phg_store_run_state_sql(phg_buf_t *out, const char *schema_q, long long run, int state,
                             const char *action, const char *note_lit, const char *who_lit,
                             const char *host_lit)
{
	const char *n = note_lit ? note_lit : "NULL";
	int final = state == PHG_RUN_COMPLETED || state == PHG_RUN_ROLLED_BACK ||
	            state == PHG_RUN_FAILED;

	phg_buf_printf(out, "UPDATE %s.runs r SET ", schema_q);
	if (strcmp(action, "rollback") == 0)
		/* a rollback takes the run over from its apply: what the apply had
		 * come to is kept, so history shows the two as entries of their own
		 * (every SET expression reads the row as it was) */
		phg_buf_printf(out,
		               "apply_outcome = CASE WHEN action = 'apply' THEN jsonb_build_object("
		               "'state', state, 'finished_at', " TS("finished_at") ", 'phases_applied', "
		               "(SELECT count(*) FROM %s.phases p WHERE p.run_id = r.id AND p.state = "
		               "'applied'), 'note', note, 'error', error) ELSE apply_outcome END, "
		               "rollback_start = CASE WHEN action = 'apply' THEN jsonb_build_object("
		               "'started_at', " TS("now()") ", 'who', %s::text, 'host', %s::text) ELSE "
		               "rollback_start END, ",
		               schema_q, who_lit ? who_lit : "NULL", host_lit ? host_lit : "NULL");
	phg_buf_printf(out,
	               "state = '%s', action = '%s', note = %s, "
	               "error = %s, updated_at = now(), finished_at = %s WHERE id = %lld "
	               "RETURNING state",
	               phg_run_state_name(state), action, n,
	               state == PHG_RUN_FAILED ? n : state == PHG_RUN_RUNNING ? "NULL" : "error",
	               final ? "now()" : "NULL", run);
}

void phg_store_phase_state_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                               int state)
{
	phg_buf_printf(out,
	               "UPDATE %s.phases p SET state = '%s'%s%s WHERE run_id = %lld AND idx = %d "
	               "RETURNING state, EXISTS (SELECT 1 FROM %s.backups b WHERE b.run_id = "
	               "p.run_id AND b.phase = p.name AND b.taken_at >= p.started_at)",
	               schema_q, phg_phase_state_name(state),
	               state == PHG_PHASE_RUNNING ? ", started_at = now(), finished_at = NULL" : "",
	               state == PHG_PHASE_APPLIED || state == PHG_PHASE_FAILED ||
	                       state == PHG_PHASE_ROLLED_BACK
	                   ? ", finished_at = now()"
	                   : "",
	               run, pi, schema_q);
}

void phg_store_step_state_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, int old, int state)
{
	phg_buf_printf(out, "UPDATE %s.steps SET state = '%s', updated_at = now()", schema_q,
	               phg_step_state_name(state));
	if (state == PHG_STEP_RUNNING && (old == PHG_STEP_PENDING || old == PHG_STEP_REVERTED))
		/* a fresh attempt: the defaults of phg_step_row_init() */
		phg_buf_adds(out, ", progress = 0, revert_progress = 0, final_progress = 0, "
		                  "op_started = NULL, memo = '{}', bf_pass = 1, bf_last = NULL, "
		                  "bf_high = NULL, bf_rows = 0, bf_batches = 0");
	if (state == PHG_STEP_REVERTING && old != PHG_STEP_REVERTING)
		/* an op that was started (index build, http request) may have
		 * happened: the revert must undo it too */
		phg_buf_adds(out, ", progress = GREATEST(progress, COALESCE(op_started + 1, 0)), "
		                  "revert_progress = 0, op_started = NULL, bf_pass = 1, "
		                  "bf_last = NULL, bf_high = NULL, bf_rows = 0, bf_batches = 0");
	if (state == PHG_STEP_FAILED && old == PHG_STEP_REVERTING)
		/* its own partial work was undone: it starts over next time */
		phg_buf_adds(out, ", progress = 0, memo = '{}'");
	step_where(out, run, pi, si);
	phg_buf_adds(out, " RETURNING ");
	phg_store_step_cols(out, "");
}

/* ---- the executor's records ---- */

const char *phg_store_counter_column(int dir)
{
	return dir == 1 ? "revert_progress" : dir == 2 ? "final_progress" : "progress";
}

void phg_store_progress_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si,
                            int dir, size_t value)
{
	/* a committed op leaves no backfill cursor behind: the step's next
	 * backfill op (drop_column's revert has two) starts from the start */
	phg_buf_printf(out,
	               "UPDATE %s.steps SET %s = %zu, op_started = NULL, bf_pass = 1, bf_last = NULL, "
	               "bf_high = NULL, updated_at = now()",
	               schema_q, phg_store_counter_column(dir), value);
	step_where(out, run, pi, si);
}

void phg_store_memo_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si,
                        const char *memo_sql)
{
	phg_buf_printf(out, "UPDATE %s.steps SET memo = memo || coalesce((%s), '{}'::jsonb)",
	               schema_q, memo_sql);
	step_where(out, run, pi, si);
}

void phg_store_op_started_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, long op)
{
	if (op >= 0)
		phg_buf_printf(out, "UPDATE %s.steps SET op_started = %ld, updated_at = now()",
		               schema_q, op);
	else
		phg_buf_printf(out, "UPDATE %s.steps SET op_started = NULL, updated_at = now()",
		               schema_q);
	step_where(out, run, pi, si);
}

void phg_store_high_water_sql(phg_buf_t *out, const char *schema_q, long long run, int pi,
                              int si, const char *max_key_sql, const char *count_sql)
{
	phg_buf_printf(out, "UPDATE %s.steps SET bf_high = coalesce((%s), '{}'::text[]), "
	                    "updated_at = now()",
	               schema_q, max_key_sql);
	step_where(out, run, pi, si);
	phg_buf_printf(out, " RETURNING array_to_json(bf_high)::text, (%s)",
	               count_sql != NULL ? count_sql : "NULL::bigint");
}

void phg_store_sweep_sql(phg_buf_t *out, const char *schema_q, long long run, int pi, int si)
{
	phg_buf_printf(out, "UPDATE %s.steps SET bf_pass = 2, bf_last = NULL, updated_at = now()",
	               schema_q);
	step_where(out, run, pi, si);
}

/* ---- runs ---- */

/* A column of runs r added by a later version: read without failing on a
 * state schema that an older phasegate made and no apply has upgraded yet
 * (status and history never change the schema); NULL when missing. */
#define COL(c) "(to_jsonb(r) ->> '" c "')"

void phg_store_last_run_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "SELECT id, checksum, state, action, " COL("plan_json") " FROM %s.runs r "
	               "WHERE plan = $1 ORDER BY id DESC LIMIT 1",
	               schema_q);
}

void phg_store_dependents_sql(phg_buf_t *out, const char *schema_q)
{
	/* the newest run of every other plan of the environment, not rolled
	 * back, whose recorded plan requires $1 */
	phg_buf_printf(out,
	               "SELECT r.plan, r.id, r.state FROM %s.runs r WHERE r.plan <> $1 "
	               "AND r.id = (SELECT max(x.id) FROM %s.runs x WHERE x.plan = r.plan "
	               "AND x.env = r.env) AND r.env = coalesce($2, '') "
	               "AND r.state <> 'rolled_back' AND " COL("plan_json") " IS NOT NULL "
	               "AND (" COL("plan_json") ")::jsonb -> 'requires' ? $1 ORDER BY r.id",
	               schema_q, schema_q);
}

void phg_store_load_run_sql(phg_buf_t *out, const char *schema_q, long long run)
{
	phg_buf_adds(out, "SELECT p.idx, p.state, s.idx, ");
	phg_store_step_cols(out, "s.");
	phg_buf_printf(out,
	               ", EXISTS (SELECT 1 FROM %s.backups b WHERE b.run_id = p.run_id AND "
	               "b.phase = p.name AND b.taken_at >= p.started_at) "
	               "FROM %s.phases p LEFT JOIN %s.steps s ON s.run_id = p.run_id AND "
	               "s.phase_idx = p.idx WHERE p.run_id = %lld ORDER BY p.idx, s.idx",
	               schema_q, schema_q, schema_q, run);
}

void phg_store_create_run_sql(phg_buf_t *b, const char *schema_q, const phg_plan_t *plan,
                              const char *plan_lit, const char *sum_lit, const char *env_lit,
                              const char *user_lit, const char *host_lit,
                              const char *target_lit, const char *from_lit,
                              const char *canon_lit, int pid, const char *const *names,
                              const char *const *sums)
{
	int first = 1;

	phg_buf_printf(b,
	               "BEGIN; WITH r AS (INSERT INTO %s.runs (plan, checksum, env, action, state, who, "
	               "host, target, promoted_from, plan_json, pid, version) VALUES (%s, %s, %s, "
	               "'apply', 'running', %s, %s, %s, %s, %s, %d, '%s') "
	               "RETURNING id), p AS (INSERT INTO %s.phases (run_id, idx, name, checksum, state) "
	               "SELECT r.id, v.idx, v.name, v.sum, 'pending' FROM r, (VALUES ",
	               schema_q, plan_lit, sum_lit, env_lit, user_lit, host_lit, target_lit, from_lit,
	               canon_lit, pid, PHG_VERSION,
	               schema_q);
	for (size_t p = 0; p < plan->nphases; p++)
		phg_buf_printf(b, "%s(%zu, %s, %s)", p ? ", " : "", p, names[p], sums[p]);
	phg_buf_printf(b, ") AS v(idx, name, sum) RETURNING run_id) INSERT INTO %s.steps (run_id, "
	                  "phase_idx, idx, kind, state) SELECT r.id, v.p, v.s, v.kind, 'pending' FROM "
	                  "r, (VALUES ",
	               schema_q);
	for (size_t p = 0; p < plan->nphases; p++)
		for (size_t s = 0; s < plan->phases[p].nsteps; s++) {
			phg_buf_printf(b, "%s(%zu, %zu, '%s')", first ? "" : ", ", p, s,
			               plan->phases[p].steps[s].kind->name);
			first = 0;
		}
	phg_buf_printf(b, ") AS v(p, s, kind) WHERE (SELECT count(*) FROM p) >= 0; "
	                  "COMMIT; SELECT max(id) FROM %s.runs WHERE plan = %s",
	               schema_q, plan_lit);
}

void phg_store_lock_holder_run_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "SELECT r.id, r.state, date_trunc('second', r.started_at)::text, "
	               "coalesce(r.who, '?'), coalesce(r.host, '?'), coalesce(r.pid::text, '?'), "
	               "h.client_pid::text, h.host FROM (SELECT 1) one "
	               "LEFT JOIN LATERAL (SELECT * FROM %s.runs WHERE plan = $1 ORDER BY id DESC "
	               "LIMIT 1) r ON true "
	               "LEFT JOIN %s.lock_holders h ON h.plan = $1 AND h.backend_pid = $2::int",
	               schema_q, schema_q);
}

/* ---- events and backups ---- */

void phg_store_event_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "INSERT INTO %s.events (run_id, phase, step, kind, message, data) "
	               "VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
	               schema_q);
}

void phg_store_backup_sql(phg_buf_t *out, const char *schema_q, long long run,
                          const char *phase_lit, const char *path_lit, int whole_database,
                          uint64_t size, const char *sum_lit, uint64_t duration_ms)
{
	phg_buf_printf(out,
	               "INSERT INTO %s.backups (run_id, phase, path, scope, size, sha256, duration_ms) "
	               "VALUES (%lld, %s, %s, '%s', %" PRIu64 ", %s, %" PRIu64 ")",
	               schema_q, run, phase_lit, path_lit, whole_database ? "database" : "tables",
	               size, sum_lit, duration_ms);
}

/* ---- status and history ---- */

/* a timestamp as UTC ISO 8601 text */


void phg_store_status_run_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "SELECT id, checksum, state, env, action, " TS("started_at") ", "
	               TS("finished_at") ", note, EXISTS (SELECT 1 FROM pg_locks l WHERE "
	               PHG_PLAN_LOCK_HELD("$2", "$1") "), error, "
	               TS("(" COL("paused_at") ")::timestamptz") ", " COL("paused_by") ", "
	               COL("held") ", " TS("(" COL("held_at") ")::timestamptz") ", "
	               "(SELECT data::text FROM %s.events e WHERE e.run_id = r.id "
	               "AND e.kind = 'throttle' ORDER BY e.id DESC LIMIT 1), " COL("target") " "
	               "FROM %s.runs r WHERE plan = $1 ORDER BY id DESC LIMIT 1",
	               schema_q, schema_q);
}

void phg_store_status_phases_sql(phg_buf_t *out, const char *schema_q, long long run)
{
	phg_buf_printf(out,
	               "SELECT p.idx, p.state, " TS("p.started_at") ", " TS("p.finished_at") ", "
	               "s.idx, s.state, s.bf_rows, " TS("s.updated_at") ", s.kind FROM %s.phases p "
	               "LEFT JOIN %s.steps s ON "
	               "s.run_id = p.run_id AND s.phase_idx = p.idx WHERE p.run_id = %lld "
	               "ORDER BY p.idx, s.idx",
	               schema_q, schema_q, run);
}

void phg_store_status_checks_sql(phg_buf_t *out, const char *schema_q, long long run)
{
	phg_buf_printf(out,
	               "SELECT DISTINCT ON (data->>'check') data->>'check', data::text, " TS("at")
	               " FROM %s.events WHERE run_id = %lld AND kind = 'probe' "
	               "ORDER BY data->>'check', id DESC",
	               schema_q, run);
}

void phg_store_events_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "WITH r AS (SELECT * FROM %s.runs WHERE plan = $1 AND id = coalesce($2::bigint, "
	               "(SELECT max(id) FROM %s.runs WHERE plan = $1))) "
	               "SELECT e.id, to_char(e.at AT TIME ZONE 'UTC', "
	               "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), e.phase, e.step, e.kind, e.message, "
	               "e.data::text, r.checksum, r.env, r.id, r.state, EXISTS (SELECT 1 FROM pg_locks l "
	               "WHERE " PHG_PLAN_LOCK_HELD("$4", "$1") ") "
	               "FROM r LEFT JOIN %s.events e ON e.run_id = r.id AND e.id > $3::bigint "
	               "ORDER BY e.id LIMIT 500",
	               schema_q, schema_q, schema_q);
}

void phg_store_report_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "WITH r AS (SELECT * FROM %1$s.runs WHERE plan = $1 AND id = coalesce($2::bigint, "
	               "(SELECT max(id) FROM %1$s.runs WHERE plan = $1))) "
	               "SELECT json_build_object("
	               "'run', (SELECT (to_jsonb(r) - 'plan_json') || jsonb_build_object('started_ms', "
	               "extract(epoch FROM r.started_at) * 1000, 'finished_ms', extract(epoch FROM "
	               "r.finished_at) * 1000, 'started_at', " TS("r.started_at") ", 'finished_at', "
	               TS("r.finished_at") ") FROM r), "
	               "'events', (SELECT coalesce(json_agg(json_build_object('id', e.id, 'ms', "
	               "round(extract(epoch FROM e.at) * 1000), 'at', to_char(e.at AT TIME ZONE 'UTC', "
	               "'HH24:MI:SS.MS'), 'phase', e.phase, 'step', e.step, 'kind', e.kind, "
	               "'message', e.message, 'data', e.data) ORDER BY e.id), '[]') FROM %1$s.events e, r "
	               "WHERE e.run_id = r.id), "
	               "'backups', (SELECT coalesce(json_agg(json_build_object('phase', b.phase, 'path', "
	               "b.path, 'size', b.size, 'sha256', b.sha256, 'taken_at', " TS("b.taken_at") ") "
	               "ORDER BY b.id), '[]') FROM %1$s.backups b, r WHERE b.run_id = r.id))::text "
	               "FROM r",
	               schema_q);
}

#define HISTORY_COUNTS                                                                       \
	"(SELECT count(*) FROM %1$s.phases p WHERE p.run_id = r.id), "                           \
	"(SELECT count(*) FROM %1$s.backups k WHERE k.run_id = r.id), "

void phg_store_history_sql(phg_buf_t *out, const char *schema_q)
{
	/* one entry per apply and per later rollback of a run: a run a rollback
	 * took over kept its apply's outcome (apply_outcome) */
	const char *filter = "($1::text IS NULL OR r.plan = $1) AND ($2::text IS NULL OR r.env = $2)";

	phg_buf_adds(out, "SELECT * FROM (SELECT r.id, r.plan, r.checksum, r.env, 'apply'::text, "
	                  "a->>'state', " TS("r.started_at") ", a->>'finished_at', r.who, r.host, "
	                  "(a->>'phases_applied')::bigint, ");
	phg_buf_printf(out, HISTORY_COUNTS, schema_q);
	phg_buf_printf(out, "a->>'note', a->>'error', " COL("target") ", " COL("promoted_from") ", 1 "
	                    "AS part FROM %s.runs r CROSS JOIN LATERAL (SELECT to_jsonb(r) -> "
	                    "'apply_outcome' AS a) x WHERE jsonb_typeof(a) = 'object' AND %s "
	                    "UNION ALL ",
	               schema_q, filter);
	phg_buf_printf(out, "SELECT r.id, r.plan, r.checksum, r.env, r.action, r.state, "
	                    "coalesce(b->>'started_at', " TS("r.started_at") "), " TS("r.finished_at")
	                    ", coalesce(b->>'who', r.who), coalesce(b->>'host', r.host), "
	                    "(SELECT count(*) FROM %s.phases p WHERE p.run_id = r.id AND p.state = "
	                    "'applied'), ",
	               schema_q);
	phg_buf_printf(out, HISTORY_COUNTS, schema_q);
	phg_buf_printf(out, "r.note, r.error, " COL("target") ", " COL("promoted_from") ", 2 FROM "
	                    "%s.runs r CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(to_jsonb(r) "
	                    "-> 'rollback_start') = 'object' THEN to_jsonb(r) -> 'rollback_start' "
	                    "END AS b) y WHERE %s) h ORDER BY 1, 18",
	               schema_q, filter);
}

void phg_store_paused_expr(phg_buf_t *out, const char *schema_q, int p)
{
	phg_buf_printf(out, "(SELECT paused_at IS NOT NULL FROM %s.runs WHERE id = $%d::bigint)",
	               schema_q, p);
}

void phg_store_pause_sql(phg_buf_t *out, const char *schema_q)
{
	/* the newest run of the plan that is not over */
	phg_buf_printf(out,
	               "UPDATE %s.runs SET paused_at = CASE WHEN $2::boolean THEN now() END, "
	               "paused_by = CASE WHEN $2::boolean THEN $3 END "
	               "WHERE id = (SELECT id FROM %s.runs WHERE plan = $1 AND "
	               "($4::text IS NULL OR env = $4) ORDER BY id DESC LIMIT 1) "
	               "AND state IN ('running', 'interrupted', 'failed') RETURNING id, state",
	               schema_q, schema_q);
}

void phg_store_paused_sql(phg_buf_t *out, const char *schema_q, long long run)
{
	phg_buf_printf(out, "SELECT paused_at IS NOT NULL, coalesce(paused_by, '?') FROM %s.runs "
	                    "WHERE id = %lld",
	               schema_q, run);
}

void phg_store_replica_lag_sql(phg_buf_t *out, const char *schema_q)
{
	/* the hold is recorded only when it starts or ends */
	phg_buf_printf(out,
	               "WITH r AS (SELECT application_name AS name, state, "
	               "extract(epoch FROM replay_lag) * 1000 AS lag FROM pg_stat_replication), "
	               "w AS (SELECT coalesce(max(lag), 0)::bigint AS lag, count(*) AS n, "
	               "count(*) FILTER (WHERE state IS NULL) AS hidden, "
	               "(SELECT name FROM r ORDER BY lag DESC NULLS LAST LIMIT 1) AS worst FROM r), "
	               "h AS (UPDATE %s.runs SET held = CASE WHEN w.lag > $2::bigint THEN $3 END, "
	               "held_at = CASE WHEN w.lag > $2::bigint THEN now() END FROM w "
	               "WHERE id = $1::bigint AND (held IS NULL) = (w.lag > $2::bigint) RETURNING 1) "
	               "SELECT lag, n, hidden, coalesce(worst, ''), (SELECT count(*) FROM h) FROM w",
	               schema_q);
}

void phg_store_checkpoint_cte(phg_buf_t *out, const char *schema_q, int p)
{
	phg_buf_printf(out,
	               "ck AS (UPDATE %s.steps SET bf_last = (SELECT k FROM last), "
	               "bf_rows = bf_rows + (SELECT count(*) FROM upd), bf_batches = bf_batches + 1, "
	               "updated_at = now() WHERE run_id = $%d::bigint AND phase_idx = $%d::int "
	               "AND idx = $%d::int AND EXISTS (SELECT 1 FROM batch) RETURNING bf_rows)",
	               schema_q, p, p + 1, p + 2);
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
	               "  version text,\n"
	               "  paused_at timestamptz,\n"
	               "  paused_by text,\n"
	               "  held text,\n"
	               "  held_at timestamptz,\n"
	               "  target text,\n"
	               "  promoted_from text,\n"
	               "  plan_json text,\n"
	               "  apply_outcome jsonb,\n"
	               "  rollback_start jsonb);\n"
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
	               "  bf_high text[],\n"
	               "  bf_rows bigint NOT NULL DEFAULT 0,\n"
	               "  bf_batches bigint NOT NULL DEFAULT 0,\n"
	               "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
	               "  PRIMARY KEY (run_id, phase_idx, idx),\n"
	               "  FOREIGN KEY (run_id, phase_idx) REFERENCES %s.phases ON DELETE CASCADE);\n",
	               s, s);
	/* a state schema from before pause/resume */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'paused_at') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN paused_at timestamptz, ADD COLUMN paused_by text; "
	               "END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before the high-water mark */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.steps'::regclass AND attname = 'bf_high') THEN "
	               "ALTER TABLE %s.steps ADD COLUMN bf_high text[]; END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before the replica-lag hold */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'held') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN held text, ADD COLUMN held_at timestamptz; "
	               "END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before the recorded target */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'target') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN target text; END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before promotion sources were recorded */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'promoted_from') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN promoted_from text; END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before history's entries of their own for an
	 * apply and its later rollback */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'apply_outcome') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN apply_outcome jsonb, ADD COLUMN rollback_start "
	               "jsonb; END IF; END $phg$;\n",
	               s, s);
	/* a state schema from before the recorded plan */
	phg_buf_printf(o,
	               "DO $phg$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
	               "'%s.runs'::regclass AND attname = 'plan_json') THEN "
	               "ALTER TABLE %s.runs ADD COLUMN plan_json text; END IF; END $phg$;\n",
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
	               "  taken_at timestamptz NOT NULL DEFAULT now());\n",
	               s);
	/* who holds each plan's lock: the server session, and the phasegate
	 * process and host behind it (a kill -9 leaves the session running) */
	phg_buf_printf(o,
	               "CREATE TABLE IF NOT EXISTS %s.lock_holders (\n"
	               "  plan text PRIMARY KEY,\n"
	               "  backend_pid int NOT NULL,\n"
	               "  client_pid int NOT NULL,\n"
	               "  host text NOT NULL,\n"
	               "  since timestamptz NOT NULL DEFAULT now());\n"
	               "COMMIT;\n",
	               s);
}

void phg_store_lock_holder_set_sql(phg_buf_t *out, const char *schema_q)
{
	phg_buf_printf(out,
	               "INSERT INTO %s.lock_holders (plan, backend_pid, client_pid, host) "
	               "VALUES ($1, pg_backend_pid(), $2::int, $3) ON CONFLICT (plan) DO UPDATE SET "
	               "backend_pid = EXCLUDED.backend_pid, client_pid = EXCLUDED.client_pid, "
	               "host = EXCLUDED.host, since = now()",
	               schema_q);
}
