/*
 * plan_load.c - the plan loader: YAML text -> typed, validated phg_plan_t.
 *
 * Two stages.  First libyaml's event API builds a small node tree that keeps
 * every node's position (anchors, aliases, tags, a second document, nesting
 * past PHG_PLAN_MAX_DEPTH, scalars past PHG_PLAN_MAX_SCALAR and duplicate
 * keys are refused here).  Then every mapping is loaded by one function,
 * load_map(), driven by a phg_field_t table: the plan's own tables below
 * (top level, target, settings, check, environment, backup, phase) and each
 * step kind's kind->fields.  Keys a table does not describe are either
 * "extras" the caller handles itself (checks, environments, phases, steps,
 * verify, watch) or an error naming the allowed keys.  After loading, each
 * step kind's check callback runs on its step.
 *
 * Errors do not stop the load: each is collected with its position in a
 * phg_diag_t (diag.c) and all are printed at the end, sorted by position.
 */
#include "plan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <yaml.h>

#include "../phases/step.h"
#include "buf.h"
#include "diag.h"
#include "sqlparse.h"

#define PG_INT_MAX_MS 2147483647u /* lock_timeout / statement_timeout are int ms */

/* ------------------------------------------------------------------ */
/* quoting user text in messages                                      */
/* ------------------------------------------------------------------ */

#define QUOTE_SHOWN 64 /* bytes of the user's text shown in a message */

typedef struct {
	char b[QUOTE_SHOWN * 4 + 8];
} quote_t;

/* "text" with control characters escaped, cut after QUOTE_SHOWN bytes. */
static const char *quote(quote_t *q, const char *s)
{
	size_t o = 0, i = 0;

	q->b[o++] = '"';
	for (; i < QUOTE_SHOWN && s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			q->b[o++] = '\\';
			q->b[o++] = (char)c;
		} else if (c == '\n') {
			q->b[o++] = '\\';
			q->b[o++] = 'n';
		} else if (c == '\t') {
			q->b[o++] = '\\';
			q->b[o++] = 't';
		} else if (c < 0x20 || c == 0x7f) {
			static const char hex[] = "0123456789abcdef";

			q->b[o++] = '\\';
			q->b[o++] = 'x';
			q->b[o++] = hex[c >> 4];
			q->b[o++] = hex[c & 15];
		} else {
			q->b[o++] = (char)c;
		}
	}
	if (s[i] != '\0') {
		/* do not cut a UTF-8 character in two */
		while (o > 1 && ((unsigned char)q->b[o - 1] & 0xC0) == 0x80)
			o--;
		if (o > 1 && (unsigned char)q->b[o - 1] >= 0xC0)
			o--;
		memcpy(q->b + o, "...", 3);
		o += 3;
	}
	q->b[o++] = '"';
	q->b[o] = '\0';
	return q->b;
}

/* The compound literal lives until the end of the enclosing block. */
#define Q(s) quote(&(quote_t){{0}}, (s))

/* ------------------------------------------------------------------ */
/* the node tree                                                      */
/* ------------------------------------------------------------------ */

typedef enum { N_SCALAR, N_MAP, N_SEQ, N_BAD } ntype_t;

typedef struct node_s node_t;
struct node_s {
	ntype_t type;   /* N_BAD: refused (and reported) while parsing */
	int plain;      /* scalar written without quotes */
	int block;      /* block-style collection */
	phg_pos_t pos;  /* first character */
	phg_pos_t end;  /* just past the last character */
	char *str;      /* scalar, NUL-terminated */
	size_t len;
	node_t **kids;  /* map: key, value, key, value ...; seq: items */
	size_t n, cap;
	unsigned char *skip; /* map, per pair: key already reported, ignore */
};

#define NPAIRS(m) ((m)->n / 2)
#define KEY(m, i) ((m)->kids[2 * (i)])
#define VAL(m, i) ((m)->kids[2 * (i) + 1])

static void node_free(node_t *n)
{
	if (n == NULL)
		return;
	for (size_t i = 0; i < n->n; i++)
		node_free(n->kids[i]);
	free(n->kids);
	free(n->skip);
	free(n->str);
	free(n);
}

static phg_pos_t mark_pos(yaml_mark_t m)
{
	phg_pos_t p;

	p.line = (int)m.line + 1;
	p.col = (int)m.column + 1;
	return p;
}

static int is_null(const node_t *n)
{
	if (n->type != N_SCALAR || !n->plain)
		return 0;
	return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
	       strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

/* "found ..." part of a type error. */
static const char *found(const node_t *n, quote_t *q)
{
	switch (n->type) {
	case N_MAP:
		return "a mapping";
	case N_SEQ:
		return "a sequence";
	case N_SCALAR:
		if (is_null(n))
			return "an empty value";
		return quote(q, n->str);
	case N_BAD:
		break;
	}
	return "an invalid node";
}

/* ------------------------------------------------------------------ */
/* the canonical form                                                 */
/* ------------------------------------------------------------------ */

static void sha256_hex(const void *data, size_t len, char out[72])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	static const char hex[] = "0123456789abcdef";
	char *o = out;

	out[0] = '\0';
	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
		return;
	memcpy(o, "sha256:", 7);
	o += 7;
	for (unsigned i = 0; i < mdlen && i < 32; i++) {
		*o++ = hex[md[i] >> 4];
		*o++ = hex[md[i] & 15];
	}
	*o = '\0';
}

/*
 * The plan as data, without its spelling: a mapping is a JSON object, a
 * sequence an array, a plain null (empty, ~, null) is null, and every other
 * scalar is a string, however it was quoted or folded.  Comments, layout,
 * key order, quoting style, a BOM and line endings do not survive.
 */
static json_t *canon(const node_t *n)
{
	json_t *j;

	if (is_null(n))
		return json_null();
	switch (n->type) {
	case N_SCALAR:
		return json_stringn(n->str, n->len);
	case N_MAP:
		j = json_object();
		for (size_t i = 0; i < NPAIRS(n); i++)
			json_object_setn_new(j, KEY(n, i)->str, KEY(n, i)->len, canon(VAL(n, i)));
		return j;
	case N_SEQ:
		j = json_array();
		for (size_t i = 0; i < n->n; i++)
			json_array_append_new(j, canon(n->kids[i]));
		return j;
	case N_BAD:
		break;
	}
	return json_null();
}

/* One line of JSON, keys sorted; also a valid YAML flow document, which is
 * how a recorded plan is loaded again (phg_plan_load_buffer). */
#define CANON_FLAGS (JSON_SORT_KEYS | JSON_INDENT(0) | JSON_ENCODE_ANY)

static char *canon_text(const node_t *n)
{
	json_t *j = canon(n);
	char *text = json_dumps(j, CANON_FLAGS);

	json_decref(j);
	return text;
}

typedef struct {
	const char *s;
	size_t len;
	size_t i;
	const node_t *k;
} keyref_t;

static int keyref_cmp(const void *a, const void *b)
{
	const keyref_t *x = a, *y = b;
	int c;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	c = memcmp(x->s, y->s, x->len);
	if (c != 0)
		return c;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Mark and report non-scalar and duplicate keys of a finished mapping. */
static void map_check_keys(phg_diag_t *d, node_t *m)
{
	size_t np = NPAIRS(m), nk = 0;
	keyref_t *refs;

	m->skip = phg_calloc(np ? np : 1, 1);
	refs = phg_calloc(np ? np : 1, sizeof(*refs));
	for (size_t i = 0; i < np; i++) {
		const node_t *k = KEY(m, i);

		if (k->type == N_BAD) {
			m->skip[i] = 1;
		} else if (k->type != N_SCALAR) {
			m->skip[i] = 1;
			phg_diag_error(d, k->pos, "mapping keys must be scalars, found %s",
			               found(k, &(quote_t){{0}}));
		} else {
			refs[nk].s = k->str;
			refs[nk].len = k->len;
			refs[nk].i = i;
			refs[nk].k = k;
			nk++;
		}
	}
	qsort(refs, nk, sizeof(*refs), keyref_cmp);
	for (size_t j = 1, first = 0; j < nk; j++) {
		if (refs[j].len == refs[first].len &&
		    memcmp(refs[j].s, refs[first].s, refs[j].len) == 0) {
			m->skip[refs[j].i] = 1;
			phg_diag_error(d, refs[j].k->pos, "duplicate key %s (first defined at line %d)",
			               Q(refs[j].s), refs[first].k->pos.line);
		} else {
			first = j;
		}
	}
	free(refs);
}

static void report_yaml_error(phg_diag_t *d, const yaml_parser_t *p, const char *src,
                              size_t len)
{
	phg_pos_t pos;
	const char *problem = p->problem ? p->problem : "syntax error";
	size_t off;

	if (p->error == YAML_MEMORY_ERROR) {
		phg_diag_error(d, (phg_pos_t){1, 1}, "out of memory while parsing the plan");
		return;
	}
	if (p->error == YAML_READER_ERROR)
		pos = phg_diag_pos_at(d, p->problem_offset);
	else
		pos = mark_pos(p->problem_mark);
	off = phg_diag_offset(d, pos);
	if (off < len && src[off] == '\t') {
		phg_diag_error(d, pos, "invalid YAML: %s (a tab: indent with spaces, not tabs)",
		               problem);
		return;
	}
	if (p->context != NULL && (p->context_mark.line != p->problem_mark.line ||
	                           p->context_mark.column != p->problem_mark.column)) {
		phg_diag_error(d, pos, "invalid YAML: %s (%s that starts at line %d, column %d)",
		               problem, p->context, (int)p->context_mark.line + 1,
		               (int)p->context_mark.column + 1);
		return;
	}
	if (p->context != NULL)
		phg_diag_error(d, pos, "invalid YAML: %s (%s)", problem, p->context);
	else
		phg_diag_error(d, pos, "invalid YAML: %s", problem);
}

/* Anchors, aliases and tags: refused (they make a plan hard to review). */
static int refuse_props(phg_diag_t *d, phg_pos_t pos, const yaml_char_t *anchor,
                        const yaml_char_t *tag, const char *src, size_t len)
{
	if (anchor != NULL) {
		phg_diag_error(d, pos, "anchors and aliases are not supported (found anchor \"&%s\")",
		               (const char *)anchor);
		return 1;
	}
	if (tag != NULL) {
		/* show the tag as written ("!!str"), not resolved */
		size_t a = phg_diag_offset(d, pos), b = a;
		char text[64];

		while (b < len && b - a < sizeof(text) - 1 && src[b] != ' ' && src[b] != '\t' &&
		       src[b] != '\n' && src[b] != '\r')
			b++;
		if (b > a && src[a] == '!') {
			memcpy(text, src + a, b - a);
			text[b - a] = '\0';
		} else {
			snprintf(text, sizeof(text), "%s", (const char *)tag);
		}
		phg_diag_error(d, pos, "YAML tags are not supported (found %s)", Q(text));
		return 1;
	}
	return 0;
}

static node_t *node_new(ntype_t type, const yaml_event_t *ev)
{
	node_t *n = phg_calloc(1, sizeof(*n));

	n->type = type;
	n->pos = mark_pos(ev->start_mark);
	n->end = mark_pos(ev->end_mark);
	return n;
}

static void node_push(node_t *parent, node_t *kid)
{
	if (parent->n == parent->cap) {
		parent->cap = parent->cap ? parent->cap * 2 : 8;
		parent->kids = phg_realloc(parent->kids, parent->cap * sizeof(node_t *));
	}
	parent->kids[parent->n++] = kid;
}

/*
 * Parse @src into a tree.  0, or -1 when parsing had to stop (the reason is
 * in @d).  *rootp is NULL for an empty stream; the caller frees it either way.
 */
static int build_tree(phg_diag_t *d, const char *src, size_t len, node_t **rootp)
{
	yaml_parser_t p;
	yaml_event_t ev;
	node_t *stack[PHG_PLAN_MAX_DEPTH];
	size_t depth = 0;
	int ndocs = 0, rc = 0, done = 0;

	*rootp = NULL;
	if (!yaml_parser_initialize(&p)) {
		phg_diag_error(d, (phg_pos_t){1, 1}, "out of memory while parsing the plan");
		return -1;
	}
	yaml_parser_set_input_string(&p, (const unsigned char *)src, len);
	yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
	while (!done) {
		node_t *n = NULL;

		if (!yaml_parser_parse(&p, &ev)) {
			report_yaml_error(d, &p, src, len);
			rc = -1;
			break;
		}
		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			done = 1;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (++ndocs > 1) {
				phg_diag_error(d, mark_pos(ev.start_mark),
				               "more than one YAML document (a plan is one document)");
				rc = -1;
				done = 1;
			}
			break;
		case YAML_ALIAS_EVENT:
			phg_diag_error(d, mark_pos(ev.start_mark),
			               "anchors and aliases are not supported (found alias \"*%s\")",
			               (const char *)ev.data.alias.anchor);
			n = node_new(N_BAD, &ev);
			break;
		case YAML_SCALAR_EVENT:
			n = node_new(N_SCALAR, &ev);
			refuse_props(d, n->pos, ev.data.scalar.anchor,
			             ev.data.scalar.tag, src, len);
			if (ev.data.scalar.length > PHG_PLAN_MAX_SCALAR) {
				phg_diag_error(d, n->pos,
				               "value too long: %zu bytes (the limit is %d bytes)",
				               ev.data.scalar.length, PHG_PLAN_MAX_SCALAR);
				n->type = N_BAD;
			} else if (memchr(ev.data.scalar.value, '\0', ev.data.scalar.length) != NULL) {
				phg_diag_error(d, n->pos, "value contains a NUL character");
				n->type = N_BAD;
			} else {
				n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
				n->len = ev.data.scalar.length;
				n->str = phg_calloc(n->len + 1, 1);
				memcpy(n->str, ev.data.scalar.value, n->len);
			}
			break;
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT:
			if (depth == PHG_PLAN_MAX_DEPTH) {
				phg_diag_error(d, mark_pos(ev.start_mark),
				               "nesting is deeper than %d levels", PHG_PLAN_MAX_DEPTH);
				rc = -1;
				done = 1;
				break;
			}
			if (ev.type == YAML_SEQUENCE_START_EVENT) {
				n = node_new(N_SEQ, &ev);
				refuse_props(d, n->pos, ev.data.sequence_start.anchor,
				             ev.data.sequence_start.tag, src, len);
				n->block = ev.data.sequence_start.style != YAML_FLOW_SEQUENCE_STYLE;
			} else {
				n = node_new(N_MAP, &ev);
				refuse_props(d, n->pos, ev.data.mapping_start.anchor,
				             ev.data.mapping_start.tag, src, len);
				n->block = ev.data.mapping_start.style != YAML_FLOW_MAPPING_STYLE;
			}
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT: {
			node_t *c = stack[--depth];

			/* a block collection ends where its last item ends, not at
			 * the next token (which may be lines of comments away) */
			if (c->block && c->n > 0)
				c->end = c->kids[c->n - 1]->end;
			else
				c->end = mark_pos(ev.end_mark);
			if (c->type == N_MAP)
				map_check_keys(d, c);
			break;
		}
		default:
			break;
		}
		if (n != NULL) {
			if (depth > 0)
				node_push(stack[depth - 1], n);
			else if (*rootp == NULL)
				*rootp = n;
			else
				node_free(n); /* cannot happen: one document */
			if (n->type == N_SEQ || n->type == N_MAP)
				stack[depth++] = n;
		}
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&p);
	return rc;
}

/* ------------------------------------------------------------------ */
/* field tables of the plan itself                                     */
/* ------------------------------------------------------------------ */

static const char *const on_failure_values[] = {"rollback-phase", "rollback-plan", "stop",
                                                NULL};
static const char *const backup_scope_values[] = {"tables", "database", NULL};
static const char *const finalize_values[] = {"on-complete", "manual", NULL};

static const phg_field_t throttle_fields[] = {
	{.key = "budget", .type = PHG_FT_BUDGET, .offset = offsetof(phg_throttle_cfg_t, budget),
	 .def = "2x", .what = "a factor of the baseline such as 2x, a duration such as 20ms, or off"},
	{.key = "probe", .type = PHG_FT_SQL, .offset = offsetof(phg_throttle_cfg_t, probe),
	 .sql = PHG_SQLF_QUERY,
	 .what = "a cheap query the application runs, such as \"SELECT 1 FROM jobs WHERE id = 1\""},
	{.key = "interval", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_throttle_cfg_t, interval_ms), .min = 5, .max = 10000, .def = "20ms",
	 .what = "a duration from 5ms to 10s such as 20ms"},
	{.key = "baseline", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_throttle_cfg_t, baseline_ms), .min = 50, .max = 600000,
	 .def = "500ms", .what = "a duration from 50ms to 10m such as 500ms"},
	{.key = "floor", .type = PHG_FT_DURATION, .offset = offsetof(phg_throttle_cfg_t, floor_ms),
	 .max = 60000, .def = "2ms", .what = "a duration up to 1m such as 2ms"},
	{.key = "max_sleep", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_throttle_cfg_t, max_sleep_ms), .min = 1, .max = 600000,
	 .def = "1s", .what = "a duration from 1ms to 10m such as 1s"},
	{0},
};

static const phg_field_t settings_fields[] = {
	{.key = "lock_timeout", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, lock_timeout_ms), .min = 1, .max = PG_INT_MAX_MS,
	 .def = "2s", .what = "a duration from 1ms to 596h such as 2s"},
	{.key = "lock_retries", .type = PHG_FT_UINT,
	 .offset = offsetof(phg_settings_t, lock_retries), .min = 1, .max = 1000, .def = "20",
	 .what = "a number of attempts from 1 to 1000"},
	{.key = "statement_timeout", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, statement_timeout_ms), .max = PG_INT_MAX_MS,
	 .def = "0", .what = "a duration up to 596h such as 30m, or 0 for none"},
	{.key = "state_schema", .type = PHG_FT_IDENT,
	 .offset = offsetof(phg_settings_t, state_schema), .def = "phasegate",
	 .what = "a schema name"},
	{.key = "on_failure", .type = PHG_FT_ENUM, .offset = offsetof(phg_settings_t, on_failure),
	 .enum_values = on_failure_values, .def = "rollback-phase", .what = "a failure policy"},
	{.key = "finalize", .type = PHG_FT_ENUM, .offset = offsetof(phg_settings_t, finalize),
	 .enum_values = finalize_values, .def = "on-complete",
	 .what = "when the irreversible drops run: on-complete or manual (phasegate finalize)"},
	{.key = "retry_backoff", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, retry_backoff_ms), .def = "200ms",
	 .what = "a duration such as 200ms"},
	{.key = "retry_backoff_max", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, retry_backoff_max_ms), .def = "10s",
	 .what = "a duration such as 10s"},
	{.key = "connect_timeout", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, connect_timeout_ms), .min = 1, .def = "10s",
	 .what = "a duration of at least 1ms such as 10s"},
	{.key = "connect_retries", .type = PHG_FT_UINT,
	 .offset = offsetof(phg_settings_t, connect_retries), .min = 1, .max = 100, .def = "3",
	 .what = "a number of attempts from 1 to 100"},
	{.key = "throttle", .type = PHG_FT_MAP, .offset = offsetof(phg_settings_t, throttle),
	 .flags = PHG_FL_SHORTHAND, .sub = throttle_fields,
	 .what = "a mapping {budget, probe, interval, baseline, floor, max_sleep}, or a budget"},
	{.key = "max_replica_lag", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, max_replica_lag_ms), .max = PG_INT_MAX_MS, .def = "10s",
	 .what = "a duration such as 10s, or 0 to not watch replicas"},
	{.key = "gate_timeout", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_settings_t, gate_timeout_ms), .min = 1000, .def = "5m",
	 .what = "a duration of at least 1s such as 5m"},
	{0},
};

static const phg_field_t check_fields[] = {
	{.key = "url", .type = PHG_FT_STRING, .offset = offsetof(phg_check_t, url),
	 .flags = PHG_FL_REQUIRED, .what = "an http:// or https:// URL"},
	{.key = "method", .type = PHG_FT_STRING, .offset = offsetof(phg_check_t, method),
	 .def = "GET", .what = "an HTTP method such as GET"},
	{.key = "headers", .type = PHG_FT_STRMAP, .offset = offsetof(phg_check_t, headers),
	 .what = "a mapping of header names to values"},
	{.key = "body", .type = PHG_FT_STRING, .offset = offsetof(phg_check_t, body),
	 .flags = PHG_FL_EMPTY_OK, .what = "a request body"},
	{.key = "expect_status", .type = PHG_FT_INT_LIST,
	 .offset = offsetof(phg_check_t, expect_status), .min = 100, .max = 599,
	 .what = "HTTP status codes from 100 to 599"},
	{.key = "expect_body", .type = PHG_FT_STRING, .offset = offsetof(phg_check_t, expect_body),
	 .what = "a substring of the response body"},
	{.key = "expect_json", .type = PHG_FT_STRMAP, .offset = offsetof(phg_check_t, expect_json),
	 .what = "a mapping of dotted JSON paths to expected values"},
	{.key = "timeout", .type = PHG_FT_DURATION, .offset = offsetof(phg_check_t, timeout_ms),
	 .min = 1, .def = "2s", .what = "a duration of at least 1ms such as 2s"},
	{.key = "interval", .type = PHG_FT_DURATION, .offset = offsetof(phg_check_t, interval_ms),
	 .min = 1, .def = "1s", .what = "a duration of at least 1ms such as 1s"},
	{.key = "successes", .type = PHG_FT_UINT, .offset = offsetof(phg_check_t, successes),
	 .min = 1, .max = 1000, .def = "3", .what = "a count from 1 to 1000"},
	{.key = "failures", .type = PHG_FT_UINT, .offset = offsetof(phg_check_t, failures),
	 .min = 1, .max = 1000, .def = "2", .what = "a count from 1 to 1000"},
	{.key = "soak", .type = PHG_FT_DURATION, .offset = offsetof(phg_check_t, soak_ms),
	 .def = "0", .what = "a duration such as 10s, or 0"},
	{.key = "max_latency", .type = PHG_FT_DURATION,
	 .offset = offsetof(phg_check_t, max_latency_ms), .def = "0",
	 .what = "a duration such as 500ms, or 0 for no limit"},
	{.key = "insecure", .type = PHG_FT_BOOL, .offset = offsetof(phg_check_t, insecure),
	 .def = "false", .what = "true or false"},
	{0},
};

static const phg_field_t backup_fields[] = {
	{.key = "dir", .type = PHG_FT_STRING, .offset = offsetof(phg_backup_t, dir),
	 .def = "./backups", .what = "a directory"},
	{.key = "scope", .type = PHG_FT_ENUM, .offset = offsetof(phg_backup_t, scope),
	 .enum_values = backup_scope_values, .def = "tables", .what = "a backup scope"},
	{.key = "timeout", .type = PHG_FT_DURATION, .offset = offsetof(phg_backup_t, timeout_ms),
	 .min = 1, .def = "1h", .what = "a duration of at least 1ms such as 1h"},
	{.key = "compress", .type = PHG_FT_UINT, .offset = offsetof(phg_backup_t, compress),
	 .min = 0, .max = 9, .def = "1", .what = "a compression level from 0 to 9"},
	{0},
};

/* target: { url_env } lands in plan->url_env (the sub-struct is that one member). */
static const phg_field_t target_fields[] = {
	{.key = "url_env", .type = PHG_FT_STRING, .offset = 0, .def = "DATABASE_URL",
	 .what = "an environment variable name"},
	{0},
};

static const phg_field_t alembic_fields[] = {
	{.key = "requires", .type = PHG_FT_STRING, .offset = offsetof(phg_alembic_t, requires),
	 .flags = PHG_FL_REQUIRED, .what = "the Alembic revision the database must be at"},
	{.key = "stamps", .type = PHG_FT_STRING, .offset = offsetof(phg_alembic_t, stamps),
	 .flags = PHG_FL_REQUIRED, .what = "the Alembic revision the completed plan writes"},
	{.key = "table", .type = PHG_FT_TABLE, .offset = offsetof(phg_alembic_t, table),
	 .def = "alembic_version", .what = "Alembic's version table (name or schema.name)"},
	{0},
};

static const phg_field_t top_fields[] = {
	{.key = "version", .type = PHG_FT_UINT, .offset = offsetof(phg_plan_t, version),
	 .flags = PHG_FL_REQUIRED, .what = "the plan format version, 1"},
	{.key = "name", .type = PHG_FT_STRING, .offset = offsetof(phg_plan_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a plan name"},
	{.key = "description", .type = PHG_FT_STRING, .offset = offsetof(phg_plan_t, description),
	 .flags = PHG_FL_EMPTY_OK, .what = "a description"},
	{.key = "target", .type = PHG_FT_MAP, .offset = offsetof(phg_plan_t, url_env),
	 .sub = target_fields, .what = "a mapping {url_env}"},
	{.key = "settings", .type = PHG_FT_MAP, .offset = offsetof(phg_plan_t, settings),
	 .sub = settings_fields, .what = "a mapping of settings"},
	{.key = "backup", .type = PHG_FT_MAP, .offset = offsetof(phg_plan_t, backup),
	 .sub = backup_fields, .what = "a mapping of backup settings"},
	{.key = "requires", .type = PHG_FT_IDENT_LIST, .offset = offsetof(phg_plan_t, requires),
	 .flags = PHG_FL_NAMES, .what = "a list of plan names"},
	{.key = "alembic", .type = PHG_FT_MAP, .offset = offsetof(phg_plan_t, alembic),
	 .sub = alembic_fields, .what = "a mapping {requires, stamps, table}"},
	{0},
};

static const phg_field_t env_fields[] = {
	{.key = "url_env", .type = PHG_FT_STRING, .offset = offsetof(phg_env_t, url_env),
	 .what = "an environment variable name"},
	{.key = "protected", .type = PHG_FT_BOOL, .offset = offsetof(phg_env_t, is_protected),
	 .def = "false", .what = "true or false"},
	{0},
};

static const phg_field_t phase_fields[] = {
	{.key = "name", .type = PHG_FT_STRING, .offset = offsetof(phg_phase_t, name),
	 .flags = PHG_FL_REQUIRED, .what = "a phase name"},
	{.key = "backup", .type = PHG_FT_BOOL, .offset = offsetof(phg_phase_t, backup),
	 .def = "false", .what = "true or false"},
	{0},
};

/* ------------------------------------------------------------------ */
/* freeing and copying by table                                        */
/* ------------------------------------------------------------------ */

static void kvv_free(phg_kvv_t *v)
{
	for (size_t i = 0; i < v->n; i++) {
		free(v->v[i].key);
		free(v->v[i].value);
	}
	free(v->v);
	v->v = NULL;
	v->n = 0;
}

static void free_fields(const phg_field_t *fields, void *base);

static void free_value(const phg_field_t *f, void *p)
{
	switch (f->type) {
	case PHG_FT_STRING:
	case PHG_FT_IDENT:
	case PHG_FT_TABLE:
	case PHG_FT_SQL:
	case PHG_FT_SQLTYPE:
		free(*(char **)p);
		*(char **)p = NULL;
		break;
	case PHG_FT_IDENT_LIST:
	case PHG_FT_SQL_LIST:
		phg_strv_clear(p);
		break;
	case PHG_FT_IDENT_LISTS: {
		phg_strvv_t *v = p;

		for (size_t i = 0; i < v->n; i++)
			phg_strv_clear(&v->v[i]);
		free(v->v);
		free(v->pos);
		memset(v, 0, sizeof(*v));
		break;
	}
	case PHG_FT_MAP_LIST: {
		phg_maplist_t *v = p;

		for (size_t i = 0; i < v->n; i++)
			free_fields(f->sub, (char *)v->v + i * f->sub_size);
		free(v->v);
		free(v->pos);
		free(v->field_pos);
		memset(v, 0, sizeof(*v));
		break;
	}
	case PHG_FT_STRMAP:
		kvv_free(p);
		break;
	case PHG_FT_INT_LIST: {
		phg_intv_t *v = p;

		free(v->v);
		v->v = NULL;
		v->n = 0;
		break;
	}
	case PHG_FT_MAP:
		free_fields(f->sub, p);
		break;
	case PHG_FT_BOOL:
	case PHG_FT_UINT:
	case PHG_FT_DURATION:
	case PHG_FT_ENUM:
	case PHG_FT_BUDGET:
		break;
	}
}

static void free_fields(const phg_field_t *fields, void *base)
{
	if (fields == NULL || base == NULL)
		return;
	for (const phg_field_t *f = fields; f->key != NULL; f++)
		free_value(f, (char *)base + f->offset);
}

static void copy_fields(const phg_field_t *fields, void *dst, const void *src);
static size_t nfields(const phg_field_t *f);

static void strv_copy(phg_strv_t *dv, const phg_strv_t *sv)
{
	dv->v = sv->n ? phg_calloc(sv->n, sizeof(char *)) : NULL;
	for (size_t i = 0; i < sv->n; i++)
		dv->v[i] = phg_strdup(sv->v[i]);
	dv->n = sv->n;
}

static void copy_value(const phg_field_t *f, void *d, const void *s)
{
	switch (f->type) {
	case PHG_FT_STRING:
	case PHG_FT_IDENT:
	case PHG_FT_TABLE:
	case PHG_FT_SQL:
	case PHG_FT_SQLTYPE:
		*(char **)d = phg_strdup(*(char *const *)s);
		break;
	case PHG_FT_IDENT_LIST:
	case PHG_FT_SQL_LIST:
		strv_copy(d, s);
		break;
	case PHG_FT_IDENT_LISTS: {
		const phg_strvv_t *sv = s;
		phg_strvv_t *dv = d;

		dv->v = sv->n ? phg_calloc(sv->n, sizeof(phg_strv_t)) : NULL;
		dv->pos = sv->n ? phg_calloc(sv->n, sizeof(phg_pos_t)) : NULL;
		for (size_t i = 0; i < sv->n; i++) {
			strv_copy(&dv->v[i], &sv->v[i]);
			dv->pos[i] = sv->pos[i];
		}
		dv->n = sv->n;
		break;
	}
	case PHG_FT_MAP_LIST: {
		const phg_maplist_t *sv = s;
		phg_maplist_t *dv = d;
		size_t nf = nfields(f->sub);

		dv->v = sv->n ? phg_calloc(sv->n, f->sub_size) : NULL;
		dv->pos = sv->n ? phg_calloc(sv->n, sizeof(phg_pos_t)) : NULL;
		dv->field_pos = sv->n && nf ? phg_calloc(sv->n * nf, sizeof(phg_pos_t)) : NULL;
		for (size_t i = 0; i < sv->n; i++) {
			copy_fields(f->sub, (char *)dv->v + i * f->sub_size,
			            (const char *)sv->v + i * f->sub_size);
			dv->pos[i] = sv->pos[i];
		}
		if (dv->field_pos != NULL)
			memcpy(dv->field_pos, sv->field_pos, sv->n * nf * sizeof(phg_pos_t));
		dv->n = sv->n;
		break;
	}
	case PHG_FT_STRMAP: {
		const phg_kvv_t *sv = s;
		phg_kvv_t *dv = d;

		dv->v = sv->n ? phg_calloc(sv->n, sizeof(phg_kv_t)) : NULL;
		for (size_t i = 0; i < sv->n; i++) {
			dv->v[i].key = phg_strdup(sv->v[i].key);
			dv->v[i].value = phg_strdup(sv->v[i].value);
			dv->v[i].pos = sv->v[i].pos;
		}
		dv->n = sv->n;
		break;
	}
	case PHG_FT_INT_LIST: {
		const phg_intv_t *sv = s;
		phg_intv_t *dv = d;

		dv->v = sv->n ? phg_calloc(sv->n, sizeof(long)) : NULL;
		if (sv->n)
			memcpy(dv->v, sv->v, sv->n * sizeof(long));
		dv->n = sv->n;
		break;
	}
	case PHG_FT_MAP:
		copy_fields(f->sub, d, s);
		break;
	case PHG_FT_BOOL:
	case PHG_FT_ENUM:
		*(int *)d = *(const int *)s;
		break;
	case PHG_FT_UINT:
	case PHG_FT_DURATION:
		*(uint64_t *)d = *(const uint64_t *)s;
		break;
	case PHG_FT_BUDGET:
		*(phg_budget_t *)d = *(const phg_budget_t *)s;
		break;
	}
}

static void copy_fields(const phg_field_t *fields, void *dst, const void *src)
{
	for (const phg_field_t *f = fields; f->key != NULL; f++)
		copy_value(f, (char *)dst + f->offset, (const char *)src + f->offset);
}

static void check_free(phg_check_t *c)
{
	free(c->name);
	free_fields(check_fields, c);
}

static void check_copy(phg_check_t *d, const phg_check_t *s)
{
	memset(d, 0, sizeof(*d));
	d->name = phg_strdup(s->name);
	d->pos = s->pos;
	copy_fields(check_fields, d, s);
}

/* ------------------------------------------------------------------ */
/* the table-driven loader                                             */
/* ------------------------------------------------------------------ */

typedef struct {
	phg_diag_t *d;
	phg_plan_t *plan;
	const char *src; /* what positions refer to (after a byte order mark) */
	size_t len;
} ld_t;

typedef enum {
	LM_NORMAL,   /* missing keys: required error, else the default */
	LM_OVERLAY,  /* only the keys written change the struct (environments) */
	LM_DEFAULTS, /* no mapping: defaults only, nothing required */
} lmode_t;

/* A key the caller handles itself; load_map() fills val and kpos. */
typedef struct {
	const char *key;
	const node_t *val;
	phg_pos_t kpos;
} extra_t;

static const char TOP_WHERE[] = "the plan";

static size_t nfields(const phg_field_t *f)
{
	size_t n = 0;

	while (f[n].key != NULL)
		n++;
	return n;
}

static int field_index(const phg_field_t *f, const char *key)
{
	for (int i = 0; f[i].key != NULL; i++)
		if (strcmp(f[i].key, key) == 0)
			return i;
	return -1;
}

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[65];

	if (la > 64 || lb > 64)
		return (size_t)-1;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j], ca = (unsigned char)a[i - 1], cb = (unsigned char)b[j - 1];
			size_t best = diag + (ca != cb && (ca | 0x20) != (cb | 0x20));

			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			diag = up;
			row[j] = best;
		}
	}
	return row[lb];
}

/* The closest of @cands to @word when it is a plausible typo, else NULL. */
static const char *suggest(const char *word, const char *const *cands, size_t n)
{
	const char *best = NULL;
	size_t bestd = 3;

	for (size_t i = 0; i < n; i++) {
		size_t dist = edit_distance(word, cands[i]);

		if (dist < bestd && dist < strlen(cands[i])) {
			bestd = dist;
			best = cands[i];
		}
	}
	return best;
}

/* "unknown NOUN "x" in WHERE[, did you mean "y"?] (LISTNAME: a, b, c)" */
static void unknown_name(ld_t *ld, phg_pos_t pos, const char *noun, const char *name,
                         const char *where, const char *listname, const char *const *cands,
                         size_t n)
{
	phg_buf_t b;
	const char *s = suggest(name, cands, n);
	char *list;

	phg_buf_init(&b, 64 * 1024);
	for (size_t i = 0; i < n; i++)
		phg_buf_printf(&b, "%s%s", i ? ", " : "", cands[i]);
	list = phg_buf_take(&b);
	if (s != NULL)
		phg_diag_error(ld->d, pos, "unknown %s %s%s%s, did you mean %s? (%s: %s)", noun,
		               Q(name), where ? " in " : "", where ? where : "", Q(s), listname, list);
	else
		phg_diag_error(ld->d, pos, "unknown %s %s%s%s (%s: %s)", noun, Q(name),
		               where ? " in " : "", where ? where : "", listname, list);
	free(list);
}

static void unknown_key(ld_t *ld, const node_t *key, const phg_field_t *fields,
                        const extra_t *extras, const char *where)
{
	const char *cands[64];
	size_t n = 0;

	for (size_t i = 0; fields[i].key != NULL && n < 64; i++)
		cands[n++] = fields[i].key;
	for (size_t i = 0; extras != NULL && extras[i].key != NULL && n < 64; i++)
		cands[n++] = extras[i].key;
	unknown_name(ld, key->pos, "key", key->str, where, "allowed keys", cands, n);
}

static void type_error(ld_t *ld, const node_t *n, const char *expected, const char *key,
                       const char *where)
{
	if (n->type == N_BAD)
		return;
	phg_diag_error(ld->d, n->pos, "expected %s for %s in %s, found %s", expected, Q(key),
	               where, found(n, &(quote_t){{0}}));
}

static int blank(const char *s)
{
	for (; *s != '\0'; s++)
		if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
			return 0;
	return 1;
}

static const char IDENT_RULE[] =
    "letters, digits, \"_\" and \"$\", not starting with a digit, at most 63 bytes";

/* A SQL fragment parsed in the statement it is pasted into (sqlparse.h):
 * a syntax error is reported where it is inside the scalar. */
static int sql_field_ok(ld_t *ld, const phg_field_t *f, const node_t *n, const char *key,
                        const char *where)
{
	char msg[PHG_SQL_MSG_MAX];
	size_t at;

	if (phg_sql_syntax((phg_sqlf_t)f->sql, n->str, &at, msg) == 0)
		return 0;
	phg_diag_error(ld->d, phg_diag_scalar_pos(ld->d, n->pos, at), "invalid SQL in %s in %s: %s", Q(key), where,
	               msg);
	return -1;
}

/* Convert one scalar for a scalar-typed field. 0 or -1 (reported). */
static int conv_scalar(ld_t *ld, const phg_field_t *f, const node_t *n, void *p,
                       const char *key, const char *where)
{
	const char *s = n->str, *what = f->what ? f->what : "a value";
	uint64_t u = 0;
	int rc;

	if (is_null(n) && !(f->type == PHG_FT_STRING && (f->flags & PHG_FL_EMPTY_OK) && n->len == 0)) {
		phg_diag_error(ld->d, n->pos, "missing value for %s in %s: expected %s", Q(key), where,
		               what);
		return -1;
	}
	switch (f->type) {
	case PHG_FT_STRING:
	case PHG_FT_SQL:
		if (!(f->flags & PHG_FL_EMPTY_OK) && blank(s)) {
			phg_diag_error(ld->d, n->pos, "empty value for %s in %s: expected %s", Q(key),
			               where, what);
			return -1;
		}
		if (f->type == PHG_FT_SQL && sql_field_ok(ld, f, n, key, where) != 0)
			return -1;
		*(char **)p = phg_strdup(is_null(n) ? "" : s);
		return 0;
	case PHG_FT_IDENT:
		if (!phg_ident_ok(s)) {
			phg_diag_error(ld->d, n->pos, "invalid value %s for %s in %s: expected %s (%s)",
			               Q(s), Q(key), where, what, IDENT_RULE);
			return -1;
		}
		*(char **)p = phg_strdup(s);
		return 0;
	case PHG_FT_TABLE:
		if (!phg_table_ok(s)) {
			phg_diag_error(ld->d, n->pos,
			               "invalid value %s for %s in %s: expected %s (name or "
			               "schema.name; a name is %s)",
			               Q(s), Q(key), where, what, IDENT_RULE);
			return -1;
		}
		*(char **)p = phg_strdup(s);
		return 0;
	case PHG_FT_SQLTYPE:
		if (!phg_sqltype_ok(s)) {
			phg_diag_error(ld->d, n->pos,
			               "invalid value %s for %s in %s: expected %s (letters, digits, "
			               "spaces, \"_\", \",\", \".\" and balanced parentheses or brackets)",
			               Q(s), Q(key), where, what);
			return -1;
		}
		*(char **)p = phg_strdup(s);
		return 0;
	case PHG_FT_BOOL:
		if (strcmp(s, "true") == 0) {
			*(int *)p = 1;
		} else if (strcmp(s, "false") == 0) {
			*(int *)p = 0;
		} else {
			phg_diag_error(ld->d, n->pos, "invalid value %s for %s in %s: expected true or false",
			               Q(s), Q(key), where);
			return -1;
		}
		return 0;
	case PHG_FT_UINT:
	case PHG_FT_DURATION: {
		int dur = f->type == PHG_FT_DURATION;
		const char *noun = dur ? "duration" : "number";
		uint64_t max = f->max ? f->max : UINT64_MAX;

		rc = dur ? phg_parse_duration(s, &u) : phg_parse_uint(s, &u);
		if (rc == 0 && (u < f->min || u > max)) {
			phg_diag_error(ld->d, n->pos, "%s %s for %s in %s is out of range: expected %s",
			               noun, Q(s), Q(key), where, what);
			return -1;
		}
		if (rc == PHG_ETOOBIG) {
			phg_diag_error(ld->d, n->pos, "%s %s for %s in %s is too large: expected %s", noun,
			               Q(s), Q(key), where, what);
			return -1;
		}
		if (rc != 0 && s[0] == '-') {
			phg_diag_error(ld->d, n->pos, "negative %s %s for %s in %s: expected %s", noun,
			               Q(s), Q(key), where, what);
			return -1;
		}
		if (rc != 0 && dur) {
			phg_diag_error(ld->d, n->pos,
			               "invalid duration %s for %s in %s: expected digits followed by "
			               "ms, s, m or h (250ms, 2s, 1m, 1h), or 0",
			               Q(s), Q(key), where);
			return -1;
		}
		if (rc != 0) {
			phg_diag_error(ld->d, n->pos, "invalid number %s for %s in %s: expected %s", Q(s),
			               Q(key), where, what);
			return -1;
		}
		*(uint64_t *)p = u;
		return 0;
	}
	case PHG_FT_ENUM: {
		phg_buf_t b;
		char *list;

		for (int i = 0; f->enum_values[i] != NULL; i++) {
			if ((f->flags & PHG_FL_ANYCASE) ? strcasecmp(f->enum_values[i], s) == 0
			                                : strcmp(f->enum_values[i], s) == 0) {
				*(int *)p = i;
				return 0;
			}
		}
		phg_buf_init(&b, 4096);
		for (int i = 0; f->enum_values[i] != NULL; i++)
			phg_buf_printf(&b, "%s%s", i ? ", " : "", f->enum_values[i]);
		list = phg_buf_take(&b);
		phg_diag_error(ld->d, n->pos, "invalid value %s for %s in %s: expected one of %s", Q(s),
		               Q(key), where, list);
		free(list);
		return -1;
	}
	case PHG_FT_BUDGET:
		if (phg_parse_budget(s, p) != 0) {
			phg_diag_error(ld->d, n->pos, "invalid value %s for %s in %s: expected %s", Q(s),
			               Q(key), where, what);
			return -1;
		}
		return 0;
	case PHG_FT_IDENT_LIST:
	case PHG_FT_SQL_LIST:
	case PHG_FT_IDENT_LISTS:
	case PHG_FT_MAP_LIST:
	case PHG_FT_STRMAP:
	case PHG_FT_INT_LIST:
	case PHG_FT_MAP:
		break;
	}
	return -1;
}

static void load_map(ld_t *ld, const node_t *map, const phg_field_t *fields, void *base,
                     const char *where, phg_pos_t at, phg_pos_t *fpos, extra_t *extras,
                     lmode_t mode);

static int name_ok(const char *s);
static const char NAME_RULE[] = "1 to 63 letters, digits, \"_\", \".\" or \"-\"";

/* A list field: a sequence of scalars, or one scalar as a list of one. */
static void load_list(ld_t *ld, const phg_field_t *f, const node_t *n, void *p,
                      const char *key, const char *where)
{
	const node_t *const *items = (const node_t *const *)&n;
	size_t count = 1;
	phg_field_t one = *f; /* each item converted as a scalar of this kind */

	if (n->type == N_SEQ) {
		items = (const node_t *const *)n->kids;
		count = n->n;
	} else if (n->type != N_SCALAR) {
		type_error(ld, n, "a list", key, where);
		return;
	}
	if (count == 0 && (f->flags & PHG_FL_REQUIRED)) {
		phg_diag_error(ld->d, n->pos, "empty list for %s in %s: expected %s", Q(key), where,
		               f->what ? f->what : "at least one item");
		return;
	}
	one.type = f->type == PHG_FT_IDENT_LIST
	               ? ((f->flags & PHG_FL_NAMES) ? PHG_FT_STRING : PHG_FT_IDENT)
	           : f->type == PHG_FT_SQL_LIST ? PHG_FT_SQL
	                                        : PHG_FT_UINT;
	one.flags = 0;
	if (f->type == PHG_FT_IDENT_LIST || f->type == PHG_FT_SQL_LIST) {
		phg_strv_t *v = p;

		v->v = phg_calloc(count, sizeof(char *));
		for (size_t i = 0; i < count; i++) {
			char *s = NULL;

			if (items[i]->type != N_SCALAR) {
				type_error(ld, items[i], "a scalar", key, where);
				continue;
			}
			if (conv_scalar(ld, &one, items[i], &s, key, where) != 0)
				continue;
			if ((f->flags & PHG_FL_NAMES) && !name_ok(s)) {
				phg_diag_error(ld->d, items[i]->pos, "invalid name %s in %s in %s: expected %s",
				               Q(s), Q(key), where, NAME_RULE);
				free(s);
				continue;
			}
			v->v[v->n++] = s;
		}
	} else {
		phg_intv_t *v = p;

		one.what = f->what;
		v->v = phg_calloc(count, sizeof(long));
		for (size_t i = 0; i < count; i++) {
			uint64_t u;

			if (items[i]->type != N_SCALAR) {
				type_error(ld, items[i], "a scalar", key, where);
				continue;
			}
			if (conv_scalar(ld, &one, items[i], &u, key, where) == 0)
				v->v[v->n++] = (long)u;
		}
	}
}

/* PHG_FT_IDENT_LISTS: `[[a, b], [c]]` is two lists, `[a, b]` (scalars only)
 * or `a` one; a scalar among lists is a list of one. */
static void load_lists(ld_t *ld, const phg_field_t *f, const node_t *n, phg_strvv_t *v,
                       const char *key, const char *where)
{
	phg_field_t one = *f; /* each list loaded as an IDENT_LIST, never empty */
	int nested = 0;

	one.type = PHG_FT_IDENT_LIST;
	one.flags = PHG_FL_REQUIRED;
	one.what = "one or more names";
	for (size_t i = 0; n->type == N_SEQ && i < n->n; i++)
		nested |= n->kids[i]->type == N_SEQ;
	if (n->type == N_SEQ && n->n == 0) {
		if (f->flags & PHG_FL_REQUIRED)
			phg_diag_error(ld->d, n->pos, "empty list for %s in %s: expected %s", Q(key),
			               where, f->what ? f->what : "at least one list");
		return;
	}
	if (!nested) {
		v->v = phg_calloc(1, sizeof(phg_strv_t));
		v->pos = phg_calloc(1, sizeof(phg_pos_t));
		v->pos[0] = n->pos;
		v->n = 1;
		load_list(ld, &one, n, &v->v[0], key, where);
		return;
	}
	v->v = phg_calloc(n->n, sizeof(phg_strv_t));
	v->pos = phg_calloc(n->n, sizeof(phg_pos_t));
	for (size_t i = 0; i < n->n; i++) {
		const node_t *it = n->kids[i];

		if (it->type == N_BAD)
			continue;
		if (it->type == N_MAP || is_null(it)) {
			type_error(ld, it, "a list of names", key, where);
			continue;
		}
		v->pos[v->n] = it->pos;
		load_list(ld, &one, it, &v->v[v->n++], key, where);
	}
}

/* PHG_FT_MAP_LIST: a sequence of mappings, each loaded by f->sub into an
 * item of f->sub_size bytes; messages name "item N of KEY of WHERE". */
static void load_map_list(ld_t *ld, const phg_field_t *f, const node_t *n, phg_maplist_t *v,
                          const char *key, const char *where)
{
	size_t nf = nfields(f->sub);
	char sub[512];

	if (n->type != N_SEQ) {
		type_error(ld, n, "a list of mappings", key, where);
		return;
	}
	if (n->n == 0) {
		if (f->flags & PHG_FL_REQUIRED)
			phg_diag_error(ld->d, n->pos, "empty list for %s in %s: expected %s", Q(key),
			               where, f->what ? f->what : "at least one item");
		return;
	}
	v->v = phg_calloc(n->n, f->sub_size);
	v->pos = phg_calloc(n->n, sizeof(phg_pos_t));
	v->field_pos = phg_calloc(n->n * (nf ? nf : 1), sizeof(phg_pos_t));
	for (size_t i = 0; i < n->n; i++) {
		const node_t *it = n->kids[i];

		if (it->type != N_MAP) {
			type_error(ld, it, "a mapping", key, where);
			continue;
		}
		snprintf(sub, sizeof(sub), "item %zu of %s of %s", i + 1, Q(key), where);
		load_map(ld, it, f->sub, (char *)v->v + v->n * f->sub_size, sub, it->pos,
		         v->field_pos + v->n * nf, NULL, LM_NORMAL);
		v->pos[v->n++] = it->pos;
	}
}

static void load_strmap(ld_t *ld, const node_t *n, phg_kvv_t *v, const char *key,
                        const char *where)
{
	char sub[512];

	if (n->type != N_MAP) {
		type_error(ld, n, "a mapping", key, where);
		return;
	}
	snprintf(sub, sizeof(sub), "%s of %s", Q(key), where);
	v->v = phg_calloc(NPAIRS(n) ? NPAIRS(n) : 1, sizeof(phg_kv_t));
	for (size_t i = 0; i < NPAIRS(n); i++) {
		const node_t *k = KEY(n, i), *val = VAL(n, i);
		phg_kv_t *kv;

		if (n->skip[i])
			continue;
		if (k->len == 0 || is_null(k)) {
			phg_diag_error(ld->d, k->pos, "empty key in %s", sub);
			continue;
		}
		if (val->type != N_SCALAR) {
			type_error(ld, val, "a scalar", k->str, sub);
			continue;
		}
		kv = &v->v[v->n++];
		kv->key = phg_strdup(k->str);
		kv->value = phg_strdup(is_null(val) ? "" : val->str);
		kv->pos = k->pos;
	}
}

static void load_value(ld_t *ld, const phg_field_t *f, const node_t *n, void *p,
                       const char *where, lmode_t mode)
{
	const char *key = f->key;

	if (n->type == N_BAD)
		return;
	if (mode == LM_OVERLAY && f->type != PHG_FT_MAP)
		free_value(f, p);
	switch (f->type) {
	case PHG_FT_MAP: {
		char sub[512];

		if (where == TOP_WHERE)
			snprintf(sub, sizeof(sub), "%s", key);
		else
			snprintf(sub, sizeof(sub), "%s of %s", Q(key), where);
		if (n->type == N_SCALAR && (f->flags & PHG_FL_SHORTHAND)) {
			/* `throttle: off`: the first sub-key, the others as they were */
			if (mode != LM_OVERLAY)
				load_map(ld, NULL, f->sub, p, sub, n->pos, NULL, NULL, LM_DEFAULTS);
			load_value(ld, &f->sub[0], n, (char *)p + f->sub[0].offset, sub, mode);
			return;
		}
		if (n->type != N_MAP) {
			type_error(ld, n, "a mapping", key, where);
			return;
		}
		load_map(ld, n, f->sub, p, sub, n->pos, NULL, NULL,
		         mode == LM_OVERLAY ? LM_OVERLAY : LM_NORMAL);
		return;
	}
	case PHG_FT_STRMAP:
		load_strmap(ld, n, p, key, where);
		return;
	case PHG_FT_IDENT_LIST:
	case PHG_FT_SQL_LIST:
	case PHG_FT_INT_LIST:
	case PHG_FT_IDENT_LISTS:
	case PHG_FT_MAP_LIST:
		if (is_null(n)) {
			phg_diag_error(ld->d, n->pos, "missing value for %s in %s: expected %s", Q(key),
			               where, f->what ? f->what : "a list");
			return;
		}
		if (f->type == PHG_FT_IDENT_LISTS)
			load_lists(ld, f, n, p, key, where);
		else if (f->type == PHG_FT_MAP_LIST)
			load_map_list(ld, f, n, p, key, where);
		else
			load_list(ld, f, n, p, key, where);
		return;
	default:
		break;
	}
	if (n->type != N_SCALAR) {
		type_error(ld, n, "a scalar", key, where);
		return;
	}
	conv_scalar(ld, f, n, p, key, where);
}

/*
 * Load mapping @map into @base as @fields describe.  @at is where a missing
 * key is reported.  @fpos (parallel to @fields, may be NULL) receives the
 * position of each value written.  Keys listed in @extras are returned to
 * the caller in them.  @map may be NULL with LM_DEFAULTS.
 */
static void load_map(ld_t *ld, const node_t *map, const phg_field_t *fields, void *base,
                     const char *where, phg_pos_t at, phg_pos_t *fpos, extra_t *extras,
                     lmode_t mode)
{
	size_t nf = nfields(fields);
	unsigned char *seen = phg_calloc(nf ? nf : 1, 1);

	if (map != NULL && map->type == N_BAD) {
		free(seen);
		return;
	}
	if (map != NULL) {
		for (size_t i = 0; i < NPAIRS(map); i++) {
			const node_t *k = KEY(map, i), *v = VAL(map, i);
			int idx;
			size_t e;

			if (map->skip[i])
				continue;
			idx = field_index(fields, k->str);
			if (idx >= 0) {
				seen[idx] = 1;
				if (fpos != NULL)
					fpos[idx] = v->pos;
				load_value(ld, &fields[idx], v, (char *)base + fields[idx].offset, where,
				           mode);
				continue;
			}
			for (e = 0; extras != NULL && extras[e].key != NULL; e++)
				if (strcmp(extras[e].key, k->str) == 0)
					break;
			if (extras != NULL && extras[e].key != NULL) {
				extras[e].val = v;
				extras[e].kpos = k->pos;
				continue;
			}
			unknown_key(ld, k, fields, extras, where);
		}
	}
	for (size_t i = 0; i < nf && mode != LM_OVERLAY; i++) {
		const phg_field_t *f = &fields[i];
		void *p = (char *)base + f->offset;

		if (seen[i])
			continue;
		if (f->flags & PHG_FL_REQUIRED) {
			if (mode == LM_NORMAL)
				phg_diag_error(ld->d, at, "missing required key %s in %s", Q(f->key), where);
		} else if (f->def != NULL) {
			node_t def = {.type = N_SCALAR, .plain = 1, .pos = at, .end = at};

			def.str = (char *)f->def;
			def.len = strlen(f->def);
			load_value(ld, f, &def, p, where, LM_NORMAL);
		} else if (f->type == PHG_FT_MAP) {
			load_map(ld, NULL, f->sub, p, where, at, NULL, NULL, LM_DEFAULTS);
		}
	}
	free(seen);
}

/* ------------------------------------------------------------------ */
/* the plan's parts                                                     */
/* ------------------------------------------------------------------ */

/* An Alembic revision id: alembic_version.version_num is varchar(32). */
static int revision_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 32 && name_ok(s);
}

/* Plan, phase, check and environment names: [A-Za-z0-9_.-]{1,63}. */
static int name_ok(const char *s)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++) {
		char c = s[n];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return 0;
	}
	return n >= 1 && n <= 63;
}


static int envvar_ok(const char *s)
{
	if (s == NULL || !((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return 0;
	for (s++; *s != '\0'; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		      *s == '_'))
			return 0;
	return 1;
}

static void check_envvar(ld_t *ld, const char *s, phg_pos_t pos, const char *where)
{
	if (s != NULL && pos.line > 0 && !envvar_ok(s))
		phg_diag_error(ld->d, pos,
		               "invalid value %s for \"url_env\" in %s: expected an environment "
		               "variable name (letters, digits and \"_\", not starting with a digit)",
		               Q(s), where);
}

/* URL and method of a check (those written: @fpos parallel to check_fields). */
static void check_check(ld_t *ld, const phg_check_t *c, const phg_pos_t *fpos,
                        const char *where)
{
	int iu = field_index(check_fields, "url"), im = field_index(check_fields, "method");

	if (c->url != NULL && fpos[iu].line > 0) {
		const char *rest = NULL;

		if (strncmp(c->url, "${", 2) == 0)
			rest = c->url; /* the scheme comes from the environment at run time */
		else if (strncmp(c->url, "http://", 7) == 0)
			rest = c->url + 7;
		else if (strncmp(c->url, "https://", 8) == 0)
			rest = c->url + 8;
		if (rest == NULL || *rest == '\0' || *rest == '/' || strpbrk(c->url, " \t\r\n") != NULL)
			phg_diag_error(ld->d, fpos[iu],
			               "invalid value %s for \"url\" in %s: expected an http:// or "
			               "https:// URL",
			               Q(c->url), where);
	}
	if (c->method != NULL && fpos[im].line > 0) {
		const char *m = c->method;

		while (*m >= 'A' && *m <= 'Z')
			m++;
		if (*m != '\0' || c->method[0] == '\0')
			phg_diag_error(ld->d, fpos[im],
			               "invalid value %s for \"method\" in %s: expected an HTTP method "
			               "in capitals such as GET or POST",
			               Q(c->method), where);
	}
}

static const phg_field_t notify_fields[] = {
	{.key = "url", .type = PHG_FT_STRING, .offset = offsetof(phg_notify_t, url),
	 .flags = PHG_FL_REQUIRED, .what = "an http:// or https:// URL (a Slack incoming webhook)"},
	{.key = "method", .type = PHG_FT_STRING, .offset = offsetof(phg_notify_t, method),
	 .def = "POST", .what = "an HTTP method such as POST"},
	{.key = "headers", .type = PHG_FT_STRMAP, .offset = offsetof(phg_notify_t, headers),
	 .what = "a mapping of header names to values"},
	{.key = "events", .type = PHG_FT_IDENT_LIST, .offset = offsetof(phg_notify_t, events),
	 .what = "a list of " PHG_NOTIFY_EVENTS},
	{.key = "timeout", .type = PHG_FT_DURATION, .offset = offsetof(phg_notify_t, timeout_ms),
	 .min = 1, .def = "5s", .what = "a duration of at least 1ms such as 5s"},
	{.key = "retries", .type = PHG_FT_UINT, .offset = offsetof(phg_notify_t, retries),
	 .max = 10, .def = "2", .what = "a count from 0 to 10"},
	{0},
};

static void load_notify(ld_t *ld, const node_t *n)
{
	static const char *const names[] = {"start", "gate_failed", "rollback", "paused",
	                                    "completed", "failed", NULL};
	phg_plan_t *plan = ld->plan;
	size_t nf = nfields(notify_fields);

	if (n == NULL || n->type == N_BAD || is_null(n))
		return;
	if (n->type != N_SEQ) {
		type_error(ld, n, "a list of webhooks", "notify", TOP_WHERE);
		return;
	}
	plan->notify = phg_calloc(n->n ? n->n : 1, sizeof(phg_notify_t));
	for (size_t i = 0; i < n->n; i++) {
		const node_t *v = n->kids[i];
		phg_notify_t *w = &plan->notify[plan->nnotify++];
		phg_pos_t *fpos;
		char where[64];
		int ie = field_index(notify_fields, "events"), iu = field_index(notify_fields, "url");

		w->pos = v->pos;
		snprintf(where, sizeof(where), "notify item %zu", i + 1);
		if (v->type != N_MAP) {
			if (v->type != N_BAD)
				phg_diag_error(ld->d, v->pos, "expected a mapping for %s, found %s", where,
				               found(v, &(quote_t){{0}}));
			load_map(ld, NULL, notify_fields, w, where, v->pos, NULL, NULL, LM_DEFAULTS);
			continue;
		}
		fpos = phg_calloc(nf, sizeof(phg_pos_t));
		load_map(ld, v, notify_fields, w, where, v->pos, fpos, NULL, LM_NORMAL);
		if (w->url != NULL && strncmp(w->url, "http://", 7) != 0 &&
		    strncmp(w->url, "https://", 8) != 0 && strncmp(w->url, "${", 2) != 0)
			phg_diag_error(ld->d, fpos[iu], "invalid url %s in %s: expected http:// or https://",
			               Q(w->url), where);
		for (size_t k = 0; k < w->events.n; k++) {
			size_t j;

			for (j = 0; names[j] != NULL && strcmp(names[j], w->events.v[k]) != 0; j++)
				;
			if (names[j] == NULL)
				phg_diag_error(ld->d, fpos[ie], "unknown event %s in %s: expected one of %s",
				               Q(w->events.v[k]), where, PHG_NOTIFY_EVENTS);
		}
		free(fpos);
	}
}

static void load_checks(ld_t *ld, const node_t *n)
{
	phg_plan_t *plan = ld->plan;
	size_t nf = nfields(check_fields);

	if (n == NULL || n->type == N_BAD)
		return;
	if (is_null(n))
		return; /* `checks:` with nothing: no checks */
	if (n->type != N_MAP) {
		type_error(ld, n, "a mapping of check names to checks", "checks", TOP_WHERE);
		return;
	}
	plan->checks = phg_calloc(NPAIRS(n) ? NPAIRS(n) : 1, sizeof(phg_check_t));
	for (size_t i = 0; i < NPAIRS(n); i++) {
		const node_t *k = KEY(n, i), *v = VAL(n, i);
		phg_check_t *c;
		phg_pos_t *fpos;
		char where[256];

		if (n->skip[i])
			continue;
		c = &plan->checks[plan->nchecks++];
		c->name = phg_strdup(k->str);
		c->pos = k->pos;
		if (!name_ok(k->str))
			phg_diag_error(ld->d, k->pos, "invalid check name %s: expected %s", Q(k->str),
			               NAME_RULE);
		snprintf(where, sizeof(where), "check %s", Q(k->str));
		if (v->type != N_MAP) {
			if (v->type != N_BAD)
				phg_diag_error(ld->d, v->pos, "expected a mapping for %s, found %s", where,
				               found(v, &(quote_t){{0}}));
			load_map(ld, NULL, check_fields, c, where, k->pos, NULL, NULL, LM_DEFAULTS);
			continue;
		}
		fpos = phg_calloc(nf, sizeof(phg_pos_t));
		load_map(ld, v, check_fields, c, where, k->pos, fpos, NULL, LM_NORMAL);
		check_check(ld, c, fpos, where);
		free(fpos);
	}
}

static phg_check_t *find_check_in(phg_check_t *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].name != NULL && strcmp(v[i].name, name) == 0)
			return &v[i];
	return NULL;
}

static void known_checks_error(ld_t *ld, phg_pos_t pos, const char *name, const char *where)
{
	const phg_plan_t *plan = ld->plan;
	const char *cands[256];
	size_t n = 0;

	if (plan->nchecks == 0) {
		phg_diag_error(ld->d, pos, "unknown check %s in %s: the plan defines no checks",
		               Q(name), where);
		return;
	}
	for (size_t i = 0; i < plan->nchecks && n < 256; i++)
		cands[n++] = plan->checks[i].name;
	unknown_name(ld, pos, "check", name, where, "known checks", cands, n);
}

static void load_env(ld_t *ld, phg_env_t *env, const node_t *k, const node_t *v)
{
	phg_plan_t *plan = ld->plan;
	extra_t extras[] = {{.key = "checks"}, {.key = "settings"}, {0}};
	phg_pos_t fpos[2] = {{0, 0}, {0, 0}};
	char where[256];

	env->name = phg_strdup(k->str);
	env->pos = k->pos;
	if (!name_ok(k->str))
		phg_diag_error(ld->d, k->pos, "invalid environment name %s: expected %s", Q(k->str),
		               NAME_RULE);
	snprintf(where, sizeof(where), "environment %s", Q(k->str));

	copy_fields(settings_fields, &env->settings, &plan->settings);
	env->checks = phg_calloc(plan->nchecks ? plan->nchecks : 1, sizeof(phg_check_t));
	for (size_t i = 0; i < plan->nchecks; i++)
		check_copy(&env->checks[i], &plan->checks[i]);
	env->nchecks = plan->nchecks;

	if (v->type == N_MAP) {
		load_map(ld, v, env_fields, env, where, k->pos, fpos, extras, LM_NORMAL);
	} else if (!is_null(v) && v->type != N_BAD) {
		phg_diag_error(ld->d, v->pos, "expected a mapping for %s, found %s", where,
		               found(v, &(quote_t){{0}}));
	}
	check_envvar(ld, env->url_env, fpos[0], where);
	if (env->url_env == NULL)
		env->url_env = phg_strdup(plan->url_env);

	if (extras[1].val != NULL) { /* settings overrides */
		char sw[300];

		snprintf(sw, sizeof(sw), "settings of %s", where);
		if (extras[1].val->type == N_MAP)
			load_map(ld, extras[1].val, settings_fields, &env->settings, sw, extras[1].kpos,
			         NULL, NULL, LM_OVERLAY);
		else
			type_error(ld, extras[1].val, "a mapping", "settings", where);
	}
	if (extras[0].val != NULL) { /* check overrides */
		const node_t *cn = extras[0].val;
		size_t nf = nfields(check_fields);

		if (cn->type != N_MAP) {
			type_error(ld, cn, "a mapping of check names to overrides", "checks", where);
			return;
		}
		for (size_t i = 0; i < NPAIRS(cn); i++) {
			const node_t *ck = KEY(cn, i), *cv = VAL(cn, i);
			phg_check_t *c;
			phg_pos_t *cpos;
			char cw[300];

			if (cn->skip[i])
				continue;
			c = find_check_in(env->checks, env->nchecks, ck->str);
			snprintf(cw, sizeof(cw), "check %s of %s", Q(ck->str), where);
			if (c == NULL) {
				char w2[300];

				snprintf(w2, sizeof(w2), "\"checks\" of %s", where);
				known_checks_error(ld, ck->pos, ck->str, w2);
				continue;
			}
			if (cv->type != N_MAP) {
				if (cv->type != N_BAD)
					phg_diag_error(ld->d, cv->pos, "expected a mapping for %s, found %s", cw,
					               found(cv, &(quote_t){{0}}));
				continue;
			}
			cpos = phg_calloc(nf, sizeof(phg_pos_t));
			load_map(ld, cv, check_fields, c, cw, ck->pos, cpos, NULL, LM_OVERLAY);
			check_check(ld, c, cpos, cw);
			free(cpos);
		}
	}
}

static void load_envs(ld_t *ld, const node_t *n)
{
	phg_plan_t *plan = ld->plan;

	if (n == NULL || n->type == N_BAD || is_null(n))
		return;
	if (n->type != N_MAP) {
		type_error(ld, n, "a mapping of environment names to environments", "environments",
		           TOP_WHERE);
		return;
	}
	plan->envs = phg_calloc(NPAIRS(n) ? NPAIRS(n) : 1, sizeof(phg_env_t));
	for (size_t i = 0; i < NPAIRS(n); i++) {
		if (n->skip[i])
			continue;
		load_env(ld, &plan->envs[plan->nenvs++], KEY(n, i), VAL(n, i));
	}
}

/* verify / watch: check names that must exist. */
static void load_check_refs(ld_t *ld, const node_t *n, phg_strv_t *out, const char *key,
                            const char *where)
{
	const node_t *const *items = (const node_t *const *)&n;
	size_t count = 1;
	char w[300];

	if (n == NULL || n->type == N_BAD)
		return;
	snprintf(w, sizeof(w), "%s of %s", Q(key), where);
	if (n->type == N_SEQ) {
		items = (const node_t *const *)n->kids;
		count = n->n;
	} else if (n->type != N_SCALAR || is_null(n)) {
		type_error(ld, n, "a list of check names", key, where);
		return;
	}
	out->v = phg_calloc(count ? count : 1, sizeof(char *));
	for (size_t i = 0; i < count; i++) {
		const node_t *it = items[i];
		int dup = 0;

		if (it->type != N_SCALAR || is_null(it)) {
			type_error(ld, it, "a check name", key, where);
			continue;
		}
		if (find_check_in(ld->plan->checks, ld->plan->nchecks, it->str) == NULL) {
			known_checks_error(ld, it->pos, it->str, w);
			continue;
		}
		for (size_t j = 0; j < out->n; j++)
			dup |= strcmp(out->v[j], it->str) == 0;
		if (dup) {
			phg_diag_error(ld->d, it->pos, "check %s is listed twice in %s", Q(it->str), w);
			continue;
		}
		out->v[out->n++] = phg_strdup(it->str);
	}
}

static void step_free(phg_step_t *st)
{
	if (st->kind != NULL && st->args != NULL)
		free_fields(st->kind->fields, st->args);
	free(st->args);
	free(st->field_pos);
	st->args = NULL;
	st->field_pos = NULL;
	st->kind = NULL;
}

/* A node refused while parsing anywhere under @n. */
static int has_bad(const node_t *n)
{
	if (n->type == N_BAD)
		return 1;
	for (size_t i = 0; i < n->n; i++)
		if (has_bad(n->kids[i]))
			return 1;
	return 0;
}

static void load_step(ld_t *ld, phg_phase_t *ph, size_t idx, const node_t *n,
                      const char *pwhere)
{
	phg_step_t *st = &ph->steps[idx];
	const phg_step_kind_t *kind;
	const node_t *k, *v;
	size_t before = phg_diag_errors(ld->d);
	char where[128];

	st->index = idx;
	st->phase = ph;
	st->pos = n->pos;
	if (n->type == N_BAD)
		return;
	if (n->type != N_MAP) {
		phg_diag_error(ld->d, n->pos,
		               "expected a mapping {kind: {arguments}} for step %zu of %s, found %s",
		               idx + 1, pwhere, found(n, &(quote_t){{0}}));
		return;
	}
	if (NPAIRS(n) == 0) {
		phg_diag_error(ld->d, n->pos,
		               "empty step %zu of %s: expected a mapping {kind: {arguments}}", idx + 1,
		               pwhere);
		return;
	}
	if (NPAIRS(n) > 1) {
		const node_t *k1 = KEY(n, 1);

		if (!n->skip[0] && !n->skip[1])
			phg_diag_error(ld->d, k1->pos,
			               "step %zu of %s has more than one key (%s and %s): a step is one "
			               "mapping {kind: {arguments}}, with the arguments indented under "
			               "the kind",
			               idx + 1, pwhere, Q(KEY(n, 0)->str), Q(k1->str));
		else if (!n->skip[1])
			phg_diag_error(ld->d, k1->pos, "step %zu of %s has more than one key", idx + 1,
			               pwhere);
		return;
	}
	if (n->skip[0])
		return;
	k = KEY(n, 0);
	v = VAL(n, 0);
	st->pos = k->pos;
	kind = phg_step_kind_find(k->str);
	if (kind == NULL) {
		const char *cands[64];
		size_t nk = 0;

		for (size_t i = 0; phg_step_kinds[i] != NULL && nk < 64; i++)
			cands[nk++] = phg_step_kinds[i]->name;
		unknown_name(ld, k->pos, "step kind", k->str, NULL, "known kinds", cands, nk);
		return;
	}
	snprintf(where, sizeof(where), "%s step", kind->name);
	if (v->type != N_MAP) {
		if (v->type != N_BAD)
			phg_diag_error(ld->d, v->pos, "expected a mapping of arguments for %s, found %s",
			               where, found(v, &(quote_t){{0}}));
		return;
	}
	st->kind = kind;
	st->args = phg_calloc(1, kind->args_size);
	st->field_pos = phg_calloc(nfields(kind->fields) + 1, sizeof(phg_pos_t));
	load_map(ld, v, kind->fields, st->args, where, k->pos, st->field_pos, NULL, LM_NORMAL);
	/* kind checks and later steps never see half a step: not after an error
	 * here, nor when a value was refused (and reported) while parsing -- an
	 * alias, an oversized scalar -- which leaves its field unset */
	if (phg_diag_errors(ld->d) != before || has_bad(v))
		step_free(st);
}

static void phase_checksum(phg_phase_t *ph, const node_t *n)
{
	char *text = canon_text(n);

	if (text != NULL)
		sha256_hex(text, strlen(text), ph->checksum);
	free(text);
}

static void load_phase(ld_t *ld, size_t idx, const node_t *n)
{
	phg_plan_t *plan = ld->plan;
	phg_phase_t *ph = &plan->phases[idx];
	extra_t extras[] = {{.key = "steps"}, {.key = "verify"}, {.key = "watch"}, {0}};
	phg_pos_t fpos[2] = {{0, 0}, {0, 0}};
	char where[128];
	const node_t *steps;

	ph->index = idx;
	ph->pos = n->pos;
	if (n->type == N_BAD)
		return;
	if (n->type != N_MAP) {
		phg_diag_error(ld->d, n->pos, "expected a mapping for phase %zu, found %s", idx + 1,
		               found(n, &(quote_t){{0}}));
		return;
	}
	snprintf(where, sizeof(where), "phase %zu", idx + 1);
	for (size_t i = 0; i < NPAIRS(n); i++) { /* name the phase in messages */
		const node_t *k = KEY(n, i), *v = VAL(n, i);

		if (!n->skip[i] && strcmp(k->str, "name") == 0 && v->type == N_SCALAR &&
		    !is_null(v) && name_ok(v->str))
			snprintf(where, sizeof(where), "phase %s", Q(v->str));
	}
	load_map(ld, n, phase_fields, ph, where, n->pos, fpos, extras, LM_NORMAL);
	if (ph->name != NULL) {
		if (!name_ok(ph->name)) {
			phg_diag_error(ld->d, fpos[0], "invalid phase name %s: expected %s", Q(ph->name),
			               NAME_RULE);
		} else {
			for (size_t j = 0; j < idx; j++) {
				if (plan->phases[j].name != NULL && strcmp(plan->phases[j].name, ph->name) == 0) {
					phg_diag_error(ld->d, fpos[0],
					               "duplicate phase name %s (first defined at line %d)",
					               Q(ph->name), plan->phases[j].pos.line);
					break;
				}
			}
		}
	}
	load_check_refs(ld, extras[1].val, &ph->verify, "verify", where);
	load_check_refs(ld, extras[2].val, &ph->watch, "watch", where);

	steps = extras[0].val;
	if (steps == NULL) {
		phg_diag_error(ld->d, n->pos, "missing required key \"steps\" in %s", where);
	} else if (steps->type == N_BAD) {
		/* reported */
	} else if (is_null(steps) || (steps->type == N_SEQ && steps->n == 0)) {
		phg_diag_error(ld->d, steps->pos, "%s has no steps: \"steps\" must list at least one step",
		               where);
	} else if (steps->type != N_SEQ) {
		type_error(ld, steps, "a list of steps", "steps", where);
	} else {
		ph->steps = phg_calloc(steps->n, sizeof(phg_step_t));
		ph->nsteps = steps->n;
		for (size_t i = 0; i < steps->n && !phg_diag_full(ld->d); i++)
			load_step(ld, ph, i, steps->kids[i], where);
	}
	phase_checksum(ph, n);
}

static void load_phases(ld_t *ld, const node_t *n, phg_pos_t root_pos)
{
	phg_plan_t *plan = ld->plan;

	if (n == NULL) {
		phg_diag_error(ld->d, root_pos, "missing required key \"phases\" in %s", TOP_WHERE);
		return;
	}
	if (n->type == N_BAD)
		return;
	if (is_null(n) || (n->type == N_SEQ && n->n == 0)) {
		phg_diag_error(ld->d, n->pos, "the plan has no phases: \"phases\" must list at least one phase");
		return;
	}
	if (n->type != N_SEQ) {
		type_error(ld, n, "a list of phases", "phases", TOP_WHERE);
		return;
	}
	plan->phases = phg_calloc(n->n, sizeof(phg_phase_t));
	plan->nphases = n->n;
	for (size_t i = 0; i < n->n && !phg_diag_full(ld->d); i++)
		load_phase(ld, i, n->kids[i]);
}

static void load_top(ld_t *ld, const node_t *root)
{
	phg_plan_t *plan = ld->plan;
	extra_t extras[] = {{.key = "checks"}, {.key = "environments"}, {.key = "phases"},
	                    {.key = "notify"}, {0}};
	phg_pos_t fpos[12] = {{0, 0}};
	int iv = field_index(top_fields, "version"), in = field_index(top_fields, "name");
	int ir = field_index(top_fields, "requires"), ia = field_index(top_fields, "alembic");
	phg_pos_t url_env_pos = {0, 0};

	/* a version that does not parse stays 1: reported once, as unparsable */
	plan->version = 1;
	load_map(ld, root, top_fields, plan, TOP_WHERE, root->pos, fpos, extras, LM_NORMAL);
	if (fpos[iv].line > 0 && plan->version != 1)
		phg_diag_error(ld->d, fpos[iv], "unsupported plan version %llu (expected 1)",
		               (unsigned long long)plan->version);
	if (plan->name != NULL && !name_ok(plan->name))
		phg_diag_error(ld->d, fpos[in], "invalid plan name %s: expected %s", Q(plan->name),
		               NAME_RULE);
	for (size_t i = 0; plan->name != NULL && i < plan->requires.n; i++)
		if (strcmp(plan->requires.v[i], plan->name) == 0)
			phg_diag_error(ld->d, fpos[ir], "plan %s requires itself", Q(plan->name));
	if (plan->alembic.stamps != NULL && plan->alembic.requires != NULL) {
		const char *r = plan->alembic.requires, *s = plan->alembic.stamps;

		if (!revision_ok(r) || !revision_ok(s))
			phg_diag_error(ld->d, fpos[ia], "invalid Alembic revision %s in \"alembic\": "
			                                "expected 1 to 32 of [A-Za-z0-9_.-]",
			               Q(revision_ok(r) ? s : r));
		else if (strcmp(r, s) == 0)
			phg_diag_error(ld->d, fpos[ia], "\"alembic\" requires and stamps the same "
			                                "revision %s: stamps must be the plan's own",
			               Q(r));
	}
	/* target.url_env: find where it was written */
	for (size_t i = 0; i < NPAIRS(root); i++) {
		const node_t *k = KEY(root, i), *v = VAL(root, i);

		if (root->skip[i] || strcmp(k->str, "target") != 0 || v->type != N_MAP)
			continue;
		for (size_t j = 0; j < NPAIRS(v); j++)
			if (!v->skip[j] && strcmp(KEY(v, j)->str, "url_env") == 0)
				url_env_pos = VAL(v, j)->pos;
	}
	check_envvar(ld, plan->url_env, url_env_pos, "target");

	load_checks(ld, extras[0].val);
	load_notify(ld, extras[3].val);
	load_envs(ld, extras[1].val);
	load_phases(ld, extras[2].val, root->pos);
}

/* Each loaded step's kind checks it (after the whole plan is loaded). */
static void check_steps(ld_t *ld)
{
	phg_plan_t *plan = ld->plan;

	for (size_t p = 0; p < plan->nphases; p++) {
		phg_phase_t *ph = &plan->phases[p];

		for (size_t s = 0; s < ph->nsteps; s++) {
			phg_step_t *st = &ph->steps[s];

			if (st->kind != NULL && st->args != NULL && st->kind->check != NULL)
				st->kind->check(plan, st, ld->d);
		}
	}
}

/* The first NUL byte or invalid UTF-8 sequence is refused. */
static int check_text(phg_diag_t *d, const unsigned char *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		unsigned c = s[i];
		size_t n;
		uint32_t cp;

		if (c == 0) {
			phg_diag_error(d, phg_diag_pos_at(d, i),
			               "not a text file: NUL byte found (a plan is UTF-8 YAML text)");
			return -1;
		}
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF) {
			n = 2;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 3;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 4;
			cp = c & 0x07;
		} else {
			n = 0;
			cp = 0;
		}
		for (size_t j = 1; n != 0 && j < n; j++) {
			if (i + j >= len || (s[i + j] & 0xC0) != 0x80) {
				n = 0;
				break;
			}
			cp = (cp << 6) | (s[i + j] & 0x3F);
		}
		if (n == 0 || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		    (cp >= 0xD800 && cp <= 0xDFFF)) {
			phg_diag_error(d, phg_diag_pos_at(d, i),
			               "not a text file: invalid UTF-8 byte 0x%02x (a plan is UTF-8 YAML "
			               "text)",
			               c);
			return -1;
		}
		i += n;
	}
	return 0;
}


static void sync_own(phg_plan_t *plan)
{
	plan->own_settings_ = plan->settings;
	plan->own_checks_ = plan->checks;
	plan->own_nchecks_ = plan->nchecks;
	plan->own_url_env_ = plan->url_env;
}

void phg_settings_defaults(phg_settings_t *out)
{
	phg_diag_t *d = phg_diag_new("(defaults)", "", 0);
	ld_t ld = {.d = d, .plan = NULL, .src = "", .len = 0};

	memset(out, 0, sizeof(*out));
	load_map(&ld, NULL, settings_fields, out, "settings", (phg_pos_t){1, 1}, NULL, NULL,
	         LM_DEFAULTS);
	phg_diag_free(d);
}

void phg_settings_clear(phg_settings_t *s)
{
	free(s->state_schema);
	free(s->throttle.probe);
	memset(s, 0, sizeof(*s));
}

int phg_plan_load_buffer(const char *name, const char *data, size_t len, FILE *diag_out,
                         phg_plan_t **out, phg_err_t *err)
{
	phg_plan_t *plan = phg_calloc(1, sizeof(*plan));
	const char *src;
	size_t srclen, nerr;
	phg_diag_t *d;
	node_t *root = NULL;
	ld_t ld;

	*out = NULL;
	if (data == NULL)
		len = 0;
	plan->file = phg_strdup(name);
	plan->source = phg_calloc(len + 1, 1);
	if (len > 0)
		memcpy(plan->source, data, len);
	plan->source_len = len;
	sha256_hex(plan->source, len, plan->file_checksum);

	/* positions and phase checksums refer to the text after a UTF-8 BOM */
	src = plan->source;
	srclen = len;
	if (srclen >= 3 && memcmp(src, "\xEF\xBB\xBF", 3) == 0) {
		src += 3;
		srclen -= 3;
	}
	d = phg_diag_new(name, src, srclen);
	ld.d = d;
	ld.plan = plan;
	ld.src = src;
	ld.len = srclen;

	if (len > PHG_PLAN_MAX_FILE) {
		phg_diag_error(d, (phg_pos_t){1, 1}, "plan file is too large: more than %d bytes",
		               PHG_PLAN_MAX_FILE);
	} else if (check_text(d, (const unsigned char *)src, srclen) == 0 &&
	           build_tree(d, src, srclen, &root) == 0) {
		if (root != NULL && (plan->canonical = canon_text(root)) != NULL)
			sha256_hex(plan->canonical, strlen(plan->canonical), plan->checksum);
		if (root == NULL || is_null(root))
			phg_diag_error(d, (phg_pos_t){1, 1},
			               "the plan is empty: expected a mapping with version, name and "
			               "phases");
		else if (root->type == N_MAP)
			load_top(&ld, root);
		else if (root->type != N_BAD)
			phg_diag_error(d, root->pos, "expected a mapping at the top of the plan, found %s",
			               found(root, &(quote_t){{0}}));
		check_steps(&ld);
	}
	node_free(root);
	sync_own(plan);

	phg_diag_print(d, diag_out);
	nerr = phg_diag_errors(d);
	phg_diag_free(d);
	if (nerr > 0) {
		phg_plan_free(plan);
		phg_err_set(err, PHG_EPLAN, "invalid plan \"%s\"", name);
		phg_err_detail(err, "%zu error%s found.", nerr, nerr == 1 ? "" : "s");
		return PHG_EPLAN;
	}
	*out = plan;
	return 0;
}

int phg_plan_load(const char *path, FILE *diag_out, phg_plan_t **out, phg_err_t *err)
{
	size_t cap = 64 * 1024, len = 0;
	char *data;
	int fd, rc;

	*out = NULL;
	/* O_NONBLOCK: a FIFO or a device never blocks the open; only a regular
	 * file is a plan */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return phg_err_set(err, PHG_EIO, "cannot read \"%s\": %s", path, strerror(errno));
	{
		struct stat st;

		if (fstat(fd, &st) != 0) {
			int e = errno;

			close(fd);
			return phg_err_set(err, PHG_EIO, "cannot read \"%s\": %s", path, strerror(e));
		}
		if (!S_ISREG(st.st_mode)) {
			close(fd);
			return phg_err_set(err, PHG_EIO, "cannot read \"%s\": %s", path,
			                   S_ISDIR(st.st_mode) ? strerror(EISDIR)
			                                       : "not a regular file (a plan is a file)");
		}
	}
	data = phg_calloc(cap, 1);
	for (;;) {
		ssize_t n;

		if (len == cap) {
			if (cap > PHG_PLAN_MAX_FILE)
				break; /* read past the cap: enough to refuse it */
			cap *= 2;
			data = phg_realloc(data, cap);
		}
		n = read(fd, data + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			close(fd);
			free(data);
			return phg_err_set(err, PHG_EIO, "cannot read \"%s\": %s", path, strerror(e));
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	rc = phg_plan_load_buffer(path, data, len, diag_out, out, err);
	free(data);
	return rc;
}

void phg_plan_free(phg_plan_t *plan)
{
	if (plan == NULL)
		return;
	for (size_t i = 0; i < plan->nphases; i++) {
		phg_phase_t *ph = &plan->phases[i];

		for (size_t s = 0; s < ph->nsteps; s++)
			step_free(&ph->steps[s]);
		free(ph->steps);
		free(ph->name);
		phg_strv_clear(&ph->verify);
		phg_strv_clear(&ph->watch);
	}
	free(plan->phases);
	for (size_t i = 0; i < plan->own_nchecks_; i++)
		check_free(&plan->own_checks_[i]);
	free(plan->own_checks_);
	free_fields(settings_fields, &plan->own_settings_);
	free(plan->own_url_env_);
	for (size_t i = 0; i < plan->nenvs; i++) {
		phg_env_t *e = &plan->envs[i];

		free(e->name);
		free(e->url_env);
		free_fields(settings_fields, &e->settings);
		for (size_t c = 0; c < e->nchecks; c++)
			check_free(&e->checks[c]);
		free(e->checks);
	}
	free(plan->envs);
	for (size_t i = 0; i < plan->nnotify; i++)
		free_fields(notify_fields, &plan->notify[i]);
	free(plan->notify);
	free_fields(backup_fields, &plan->backup);
	free_fields(alembic_fields, &plan->alembic);
	phg_strv_clear(&plan->requires);
	free(plan->name);
	free(plan->description);
	free(plan->source);
	free(plan->canonical);
	free(plan->file);
	free(plan);
}

int phg_plan_select_env(phg_plan_t *plan, const char *name, phg_err_t *err)
{
	phg_buf_t b;
	char *list;

	if (name == NULL) {
		plan->settings = plan->own_settings_;
		plan->checks = plan->own_checks_;
		plan->nchecks = plan->own_nchecks_;
		plan->url_env = plan->own_url_env_;
		plan->env = NULL;
		return 0;
	}
	for (size_t i = 0; i < plan->nenvs; i++) {
		const phg_env_t *e = &plan->envs[i];

		if (strcmp(e->name, name) != 0)
			continue;
		plan->settings = e->settings;
		plan->checks = e->checks;
		plan->nchecks = e->nchecks;
		plan->url_env = e->url_env;
		plan->env = e;
		return 0;
	}
	if (plan->nenvs == 0)
		return phg_err_set(err, PHG_EUSAGE,
		                   "unknown environment \"%s\": plan \"%s\" defines no environments",
		                   name, plan->name);
	phg_buf_init(&b, 64 * 1024);
	for (size_t i = 0; i < plan->nenvs; i++)
		phg_buf_printf(&b, "%s%s", i ? ", " : "", plan->envs[i].name);
	list = phg_buf_take(&b);
	phg_err_set(err, PHG_EUSAGE, "unknown environment \"%s\" (known environments: %s)", name,
	            list);
	free(list);
	return PHG_EUSAGE;
}

const phg_check_t *phg_plan_find_check(const phg_plan_t *plan, const char *name)
{
	for (size_t i = 0; i < plan->nchecks; i++)
		if (strcmp(plan->checks[i].name, name) == 0)
			return &plan->checks[i];
	return NULL;
}

const phg_phase_t *phg_plan_find_phase(const phg_plan_t *plan, const char *name)
{
	for (size_t i = 0; i < plan->nphases; i++)
		if (plan->phases[i].name != NULL && strcmp(plan->phases[i].name, name) == 0)
			return &plan->phases[i];
	return NULL;
}

phg_pos_t phg_step_field_pos(const phg_step_t *step, const char *key)
{
	phg_pos_t none = {0, 0};
	int i;

	if (step == NULL || step->kind == NULL || step->field_pos == NULL)
		return none;
	i = field_index(step->kind->fields, key);
	return i < 0 ? none : step->field_pos[i];
}

phg_pos_t phg_maplist_field_pos(const phg_field_t *sub, const phg_maplist_t *list, size_t i,
                                const char *key)
{
	phg_pos_t none = {0, 0};
	int k;

	if (list == NULL || i >= list->n || list->pos == NULL)
		return none;
	k = field_index(sub, key);
	if (k < 0 || list->field_pos == NULL)
		return none;
	return list->field_pos[i * nfields(sub) + (size_t)k];
}
