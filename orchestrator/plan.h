/*
 * plan.h - the typed plan (SPEC.md section 2) and the plan loader.
 *
 * The loader reads a YAML plan into a phg_plan_t through table-driven
 * mapping handlers: every mapping (top level, settings, a check, a step
 * kind's arguments ...) is described by a NULL-terminated phg_field_t table
 * that names its keys, their types and where the value is stored.
 * Step kinds (phases/) publish their argument tables the same way, so adding
 * a step kind never touches the loader.
 *
 * Every error is reported as FILE:LINE:COL: message (1-based) followed by the
 * source line and a caret, and loading fails with PHG_EPLAN.
 *
 * Ownership: phg_plan_load() returns a plan the caller frees with
 * phg_plan_free(); every string and array inside belongs to the plan.
 */
#ifndef PHG_PLAN_H
#define PHG_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

/* Hard caps of the loader (each refused with its own message). */
#define PHG_PLAN_MAX_FILE (1024 * 1024) /* bytes */
#define PHG_PLAN_MAX_SCALAR (64 * 1024) /* bytes of one scalar */
#define PHG_PLAN_MAX_DEPTH 16           /* nesting of mappings/sequences */
#define PHG_IDENT_MAX 63                /* PostgreSQL NAMEDATALEN - 1 */

typedef struct phg_pos_s {
	int line; /* 1-based; 0 = unknown / absent */
	int col;  /* 1-based */
} phg_pos_t;

typedef struct phg_strv_s {
	char **v;
	size_t n;
} phg_strv_t;

typedef struct phg_kv_s {
	char *key;
	char *value;
	phg_pos_t pos; /* of the key */
} phg_kv_t;

typedef struct phg_kvv_s {
	phg_kv_t *v;
	size_t n;
} phg_kvv_t;

typedef struct phg_intv_s {
	long *v;
	size_t n;
} phg_intv_t;

/* PHG_FT_IDENT_LISTS: lists of identifiers, with where each list starts. */
typedef struct phg_strvv_s {
	phg_strv_t *v;
	phg_pos_t *pos;
	size_t n;
} phg_strvv_t;

/* PHG_FT_MAP_LIST: @n items of the field's sub_size bytes each, one after
 * the other in @v, each loaded by the field's sub table; @pos is where each
 * item starts, @field_pos (n x the sub table's length) where each of its
 * values was written (line 0: key absent).  phg_maplist_field_pos() reads it. */
typedef struct phg_maplist_s {
	void *v;
	size_t n;
	phg_pos_t *pos;
	phg_pos_t *field_pos;
} phg_maplist_t;

/* ---- field tables: how a YAML mapping maps onto a C struct ---- */

typedef enum phg_ftype_e {
	PHG_FT_STRING,     /* char *: any scalar (may be empty only if FL_EMPTY_OK) */
	PHG_FT_IDENT,      /* char *: SQL identifier [A-Za-z_][A-Za-z0-9_$]*, <= 63 */
	PHG_FT_TABLE,      /* char *: IDENT or IDENT.IDENT (schema-qualified) */
	PHG_FT_IDENT_LIST, /* phg_strv_t: sequence of IDENT (a single scalar is a list of one) */
	PHG_FT_SQL,        /* char *: SQL fragment the plan owns (set, where, up, down, check) */
	PHG_FT_SQLTYPE,    /* char *: a type name such as varchar(20), numeric(10,2), text[] */
	PHG_FT_BOOL,       /* int: true/false */
	PHG_FT_UINT,       /* uint64_t: decimal integer within [min, max] */
	PHG_FT_DURATION,   /* uint64_t milliseconds: 250ms, 2s, 1m, 1h, or 0 */
	PHG_FT_ENUM,       /* int: index into enum_values */
	PHG_FT_STRMAP,     /* phg_kvv_t: mapping of scalar -> scalar (headers) */
	PHG_FT_INT_LIST,   /* phg_intv_t: sequence of integers within [min, max] */
	PHG_FT_MAP,        /* nested struct at offset, described by sub */
	PHG_FT_BUDGET,     /* phg_budget_t: 2x, 1.5x (of a baseline), 20ms (absolute) or off */
	PHG_FT_SQL_LIST,   /* phg_strv_t: sequence of SQL fragments, each parsed as PHG_FT_SQL
	                      (a single scalar is a list of one) */
	PHG_FT_IDENT_LISTS, /* phg_strvv_t: sequence of IDENT_LIST; a sequence of scalars
	                       only is one list, a scalar item a list of one */
	PHG_FT_MAP_LIST,   /* phg_maplist_t: sequence of mappings, each described by sub */
} phg_ftype_t;

#define PHG_FL_REQUIRED 0x1u  /* missing key is an error */
#define PHG_FL_EMPTY_OK 0x2u  /* an empty string scalar is accepted */
#define PHG_FL_ANYCASE 0x8u   /* PHG_FT_ENUM: matched case-insensitively, as SQL keywords */
#define PHG_FL_NAMES 0x10u    /* PHG_FT_IDENT_LIST: the items are names such as plan
                                 names ([A-Za-z0-9_.-]{1,63}), not SQL identifiers */
#define PHG_FL_SHORTHAND 0x4u /* PHG_FT_MAP: a scalar stands for its first sub-key
                                 (`throttle: off` = `throttle: { budget: off }`) */

typedef struct phg_field_s {
	const char *key;
	phg_ftype_t type;
	size_t offset;                       /* where the value is stored */
	unsigned flags;                      /* PHG_FL_* */
	uint64_t min, max;                   /* PHG_FT_UINT / PHG_FT_INT_LIST bounds,
	                                        PHG_FT_DURATION bounds in ms;
	                                        max 0 = no upper bound */
	const char *const *enum_values;      /* PHG_FT_ENUM: NULL-terminated */
	const struct phg_field_s *sub;       /* PHG_FT_MAP, PHG_FT_MAP_LIST */
	size_t sub_size;                     /* PHG_FT_MAP_LIST: bytes of one item */
	const char *what;                    /* for messages: "a column name" */
	int sql;                             /* PHG_FT_SQL: the place the fragment is
	                                        pasted into, a phg_sqlf_t (sqlparse.h);
	                                        0 = whole statements */
	const char *def;                     /* default as YAML scalar text, parsed
	                                        like a written value when the key is
	                                        absent; NULL = zero / NULL / empty */
} phg_field_t;

/* ---- diagnostics ---- */

/* Collects errors and warnings with their positions; created by the loader.
 * Step kinds' check callbacks report through it. */
typedef struct phg_diag_s phg_diag_t;

void phg_diag_error(phg_diag_t *d, phg_pos_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void phg_diag_warn(phg_diag_t *d, phg_pos_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The position in the file of byte @off of the value of the scalar that
 * starts at @scalar (a field's position: phg_step_field_pos()), through
 * its quotes, escapes and block indentation. */
phg_pos_t phg_diag_scalar_pos(const phg_diag_t *d, phg_pos_t scalar, size_t off);

/* ---- the plan ---- */

typedef enum phg_on_failure_e {
	PHG_ON_FAILURE_ROLLBACK_PHASE = 0,
	PHG_ON_FAILURE_ROLLBACK_PLAN,
	PHG_ON_FAILURE_STOP,
} phg_on_failure_t;

/* settings.finalize: when a completed plan's irreversible finalize ops (the
 * physical DROP of a drop_column's tombstone) run */
typedef enum phg_finalize_e {
	PHG_FINALIZE_ON_COMPLETE = 0, /* as the plan completes */
	PHG_FINALIZE_MANUAL,          /* by `phasegate finalize`; rollback works until then */
} phg_finalize_t;

/* A latency budget: off, a factor of a baseline measured just before, or an
 * absolute limit. */
typedef struct phg_budget_s {
	int off;
	uint64_t factor_milli; /* 2x = 2000; 0 when absolute */
	uint64_t abs_us;       /* 20ms = 20000; 0 when relative */
} phg_budget_t;

/* settings.throttle: what the application feels while a backfill runs
 * (orchestrator/throttle.h). */
typedef struct phg_throttle_cfg_s {
	phg_budget_t budget;   /* default 2x */
	char *probe;           /* SQL without parameters; NULL: a key lookup on the table */
	uint64_t interval_ms;  /* default 20: one probe every */
	uint64_t baseline_ms;  /* default 500: measured before the first batch */
	uint64_t floor_ms;     /* default 2: a relative budget is never below */
	uint64_t max_sleep_ms; /* default 1000: the longest sleep between batches */
} phg_throttle_cfg_t;

typedef struct phg_settings_s {
	uint64_t lock_timeout_ms;      /* default 2000 */
	uint64_t lock_retries;         /* default 20, attempts */
	uint64_t statement_timeout_ms; /* default 0 = none */
	char *state_schema;            /* default "phasegate" */
	int on_failure;                /* phg_on_failure_t, default rollback-phase */
	/* extensions (docs/plan-format.md) */
	uint64_t retry_backoff_ms;     /* default 200: first backoff before jitter */
	uint64_t retry_backoff_max_ms; /* default 10000: backoff ceiling */
	uint64_t connect_timeout_ms;   /* default 10000 per attempt */
	uint64_t connect_retries;      /* default 3 attempts */
	phg_throttle_cfg_t throttle;   /* the latency budget of backfills */
	uint64_t max_replica_lag_ms;   /* default 10000; 0 = not watched */
	uint64_t gate_timeout_ms;      /* default 5m: a verify gate with no verdict by then fails */
	int finalize;                  /* phg_finalize_t, default on-complete */
} phg_settings_t;

typedef struct phg_check_s {
	char *name;
	phg_pos_t pos;
	char *url;
	char *method;             /* default "GET" */
	phg_kvv_t headers;        /* values may hold ${VAR}, expanded at run time */
	char *body;               /* optional request body */
	phg_intv_t expect_status; /* empty = any 2xx */
	char *expect_body;        /* optional substring */
	phg_kvv_t expect_json;    /* optional: dotted path -> expected scalar text */
	uint64_t timeout_ms;      /* default 2000 */
	uint64_t interval_ms;     /* default 1000 */
	uint64_t successes;       /* default 3 */
	uint64_t failures;        /* default 2 */
	uint64_t soak_ms;         /* default 0 */
	uint64_t max_latency_ms;  /* default 0 = no limit */
	int insecure;             /* default false: TLS is verified */
} phg_check_t;

/* notify: a webhook told of the run's turning points (orchestrator/notify.c) */
typedef struct phg_notify_s {
	phg_pos_t pos;
	char *url;                /* ${VAR} expanded when sent */
	char *method;             /* default POST */
	phg_kvv_t headers;        /* values may hold ${VAR} */
	phg_strv_t events;        /* start gate_failed rollback paused completed failed;
	                           * empty: every one */
	uint64_t timeout_ms;      /* per attempt, default 5s */
	uint64_t retries;         /* attempts after the first, default 2 */
} phg_notify_t;

/* The turning points a notification can be sent for. */
#define PHG_NOTIFY_EVENTS "start, gate_failed, rollback, paused, completed, failed"

typedef struct phg_env_s {
	char *name;
	phg_pos_t pos;
	char *url_env;            /* resolved: the env's own, else the plan's */
	phg_settings_t settings;  /* resolved: plan settings + env overrides */
	phg_check_t *checks;      /* resolved: every plan check, env overrides applied */
	size_t nchecks;
	int is_protected;         /* `protected: true`: apply/rollback confirm first */
} phg_env_t;

typedef enum phg_backup_scope_e {
	PHG_BACKUP_SCOPE_TABLES = 0,
	PHG_BACKUP_SCOPE_DATABASE,
} phg_backup_scope_t;

typedef struct phg_backup_s {
	char *dir;           /* default "./backups" */
	int scope;           /* phg_backup_scope_t */
	uint64_t timeout_ms; /* default 1h: pg_dump killed past it */
	uint64_t compress;   /* pg_dump -Z level, default 1 */
} phg_backup_t;

/* `alembic: { requires, stamps, table }`: the Alembic revision the database
 * must be at before the plan touches anything, and the one the plan's
 * completion writes (in the transaction that records it); a rollback of the
 * plan puts `requires` back.  Not configured: stamps == NULL. */
typedef struct phg_alembic_s {
	char *requires; /* revision id */
	char *stamps;   /* revision id */
	char *table;    /* default "alembic_version" (name or schema.name) */
} phg_alembic_t;

struct phg_step_kind_s;
struct phg_phase_s;

typedef struct phg_step_s {
	const struct phg_step_kind_s *kind;
	phg_pos_t pos;          /* of the kind key (e.g. "add_column") */
	size_t index;           /* 0-based within its phase */
	struct phg_phase_s *phase;
	void *args;             /* kind->args_size bytes, filled per kind->fields */
	phg_pos_t *field_pos;   /* parallel to kind->fields; line 0 = key absent */
} phg_step_t;

typedef struct phg_phase_s {
	char *name;
	phg_pos_t pos;
	size_t index;           /* 0-based */
	phg_step_t *steps;
	size_t nsteps;
	phg_strv_t verify;      /* check names (validated to exist) */
	phg_strv_t watch;
	int backup;             /* backup: true */
	char checksum[72];      /* "sha256:" + hex of the phase's canonical form */
} phg_phase_t;

typedef struct phg_plan_s {
	char *file;             /* path as given */
	char *source;           /* whole file, NUL-terminated */
	size_t source_len;
	char checksum[72];      /* "sha256:" + 64 hex digits of the canonical form */
	char file_checksum[72]; /* the same over the file's bytes (what runs before
	                         * the canonical checksum recorded; still accepted) */
	char *canonical;        /* the plan as data: one line of JSON (plan_load.c) */
	int stand_in;           /* the file is gone: only the name and url_env are real,
	                         * and the recorded plan is read from the run (cli.c) */
	uint64_t version;       /* 1 */
	char *name;
	char *description;
	char *url_env;          /* target.url_env, default "DATABASE_URL" */
	phg_settings_t settings;
	phg_check_t *checks;
	size_t nchecks;
	phg_env_t *envs;
	size_t nenvs;
	phg_backup_t backup;
	phg_notify_t *notify;
	size_t nnotify;
	phg_phase_t *phases;
	size_t nphases;
	phg_strv_t requires;    /* `requires:` plan names that must be completed first */
	phg_alembic_t alembic;
	const phg_env_t *env;   /* selected by phg_plan_select_env, or NULL */
	/* private (plan_load.c): the plan's own settings, checks and url_env.
	 * settings/checks/url_env above alias these, or the selected
	 * environment's; phg_plan_free() frees these and the environments. */
	phg_settings_t own_settings_;
	phg_check_t *own_checks_;
	size_t own_nchecks_;
	char *own_url_env_;
} phg_plan_t;

/*
 * Load and validate @path.  On success *out is a plan the caller frees with
 * phg_plan_free() and 0 is returned; warnings (e.g. lock-unsafe SQL) are
 * still printed to @diag_out.  On failure every error is printed to
 * @diag_out as FILE:LINE:COL: message + source line + caret, *out is NULL,
 * and PHG_EPLAN (or PHG_EIO when the file cannot be read, with the reason
 * in @err) is returned.
 */
int phg_plan_load(const char *path, FILE *diag_out, phg_plan_t **out,
                  phg_err_t *err);

/* Same, from memory; @name is used in messages. @data need not be NUL-terminated. */
int phg_plan_load_buffer(const char *name, const char *data, size_t len,
                         FILE *diag_out, phg_plan_t **out, phg_err_t *err);

void phg_plan_free(phg_plan_t *plan);

/* The settings of a plan that sets none: the loader's own defaults (its
 * field table is the one place they are written).  Free with
 * phg_settings_clear(). */
void phg_settings_defaults(phg_settings_t *out);
void phg_settings_clear(phg_settings_t *s);

/* Select environment @name (NULL = none): plan->settings, plan->checks and
 * plan->url_env become the environment's resolved values.  Unknown name:
 * PHG_EUSAGE with the known names in @err. */
int phg_plan_select_env(phg_plan_t *plan, const char *name, phg_err_t *err);

const phg_check_t *phg_plan_find_check(const phg_plan_t *plan, const char *name);
const phg_phase_t *phg_plan_find_phase(const phg_plan_t *plan, const char *name);

/* Where the value of field @key of @step was written (line 0 if absent). */
phg_pos_t phg_step_field_pos(const phg_step_t *step, const char *key);
/* Where the value of key @key of item @i of @list (loaded by field table
 * @sub) was written (line 0 if absent; the item starts at @list->pos[@i]). */
phg_pos_t phg_maplist_field_pos(const phg_field_t *sub, const phg_maplist_t *list, size_t i,
                                const char *key);

/* ---- helpers shared by the loader and step kinds (plan_util.c) ---- */

/* Append a copy of @s to @v. */
void phg_strv_push(phg_strv_t *v, const char *s);
/* Free every string and the array; @v is empty afterwards. */
void phg_strv_clear(phg_strv_t *v);

/* "250ms", "2s", "1m", "1h", "0" -> milliseconds. 0 or PHG_EINVAL / PHG_ETOOBIG. */
int phg_parse_duration(const char *s, uint64_t *ms);
/* A latency budget: "off", a factor from 1x to 1000x with up to three
 * decimals ("2x", "1.5x"), or a duration from 1ms to 10m ("20ms").
 * 0 or PHG_EINVAL. */
int phg_parse_budget(const char *s, phg_budget_t *out);

/* The database URL of the target, from $@url_env.  With an environment
 * selected (@plan->env) it must be set and not empty: NULL and PHG_EUSAGE
 * in @err (exit 2) otherwise.  Without one, unset means "" -- the PG*
 * variables and libpq's defaults, as psql does it. */
const char *phg_target_url(const phg_plan_t *plan, const char *url_env, phg_err_t *err);

/* Whether a checksum recorded with a run is this plan's: its canonical
 * checksum, or (for runs recorded before the canonical form) the file's. */
/* A contract phase: the one that may drop and rename, since the release
 * that stops using the old names is out.  It is backed up first (backup:
 * true), or says so in its name ("contract", "contract-jobs"...).  The SQL
 * lint refuses DROP and RENAME elsewhere. */
int phg_phase_is_contract(const phg_phase_t *ph);

int phg_plan_checksum_is(const phg_plan_t *plan, const char *sum);

/* Load the plan a run recorded (its canonical form, runs.plan_json) and
 * select environment @env (NULL: none) in it.  0, or an error in @err. */
int phg_plan_load_recorded(const char *canonical, long long run, const char *env,
                           phg_plan_t **out, phg_err_t *err);

/* The phases that differ between the plan as applied (@was) and now (@now),
 * appended to @out as `"name" (changed), "x" (added), "y" (removed)`.  The
 * number of them: 0 when only the order of phases or the rest of the plan
 * (settings, checks, environments ...) changed. */
struct phg_buf_s;
size_t phg_plan_diff_phases(const phg_plan_t *was, const phg_plan_t *now,
                            struct phg_buf_s *out);
/* Strict decimal unsigned integer, no sign, no spaces. 0, PHG_EINVAL or PHG_ETOOBIG. */
int phg_parse_uint(const char *s, uint64_t *out);
/* Strict decimal signed integer (optional '-', digits, nothing else) within
 * [@min, @max]: 0, PHG_EINVAL, or PHG_ETOOBIG when out of range. */
int phg_parse_int64(const char *s, long long min, long long max, long long *out);
/* phg_parse_int64() for a number the database sent (a count, an id, a
 * progress counter): @fallback and *@bad = 1 when it is not one. */
long long phg_db_num(const char *s, long long min, long long max, long long fallback, int *bad);
/* 1 if @s is a plain SQL identifier phasegate accepts, else 0. */
int phg_ident_ok(const char *s);
/* 1 if @s is IDENT or IDENT.IDENT. */
int phg_table_ok(const char *s);
/* 1 if @s looks like a type name: letters, digits, _ space ( ) , [ ] . and
 * nothing that could end or comment a statement. */
int phg_sqltype_ok(const char *s);

#endif /* PHG_PLAN_H */
