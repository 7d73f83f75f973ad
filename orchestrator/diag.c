/*
 * diag.c - errors and warnings of the plan loader, with their positions,
 * printed in order of appearance with the source line and a caret under the
 * column (netplan's src/error.c shape).
 */
#include "diag.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "buf.h"
#include "log.h"

/* Diagnostics kept at most: past it they are counted, not kept. */
#define DIAG_MAX_ENTRIES 1000
/* Source lines longer than this (in characters) are shown as a window. */
#define DIAG_LINE_SHOWN 160

typedef struct {
	phg_pos_t pos;
	int warn;
	size_t seq;
	char *msg;
} diag_entry_t;

struct phg_diag_s {
	const char *file;
	const char *src;
	size_t len;
	size_t *lines; /* byte offset where each line starts */
	size_t nlines;
	diag_entry_t *v;
	size_t n;
	size_t nerrors;
	size_t nwarnings;
};

/* Length of the line break at @p (0 if none), as YAML counts them. */
static size_t break_len(const unsigned char *p, size_t left)
{
	if (left >= 1 && p[0] == '\n')
		return 1;
	if (left >= 1 && p[0] == '\r')
		return (left >= 2 && p[1] == '\n') ? 2 : 1;
	if (left >= 2 && p[0] == 0xC2 && p[1] == 0x85)
		return 2;
	if (left >= 3 && p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))
		return 3;
	return 0;
}

/* Bytes of the UTF-8 character at @p; an invalid byte counts as one. */
static size_t char_len(const unsigned char *p, size_t left)
{
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		n = 2;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		n = 3;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		n = 4;
	else
		return 1;
	if (n > left)
		return 1;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xC0) != 0x80)
			return 1;
	return n;
}

phg_diag_t *phg_diag_new(const char *file, const char *src, size_t len)
{
	phg_diag_t *d = phg_calloc(1, sizeof(*d));
	const unsigned char *s = (const unsigned char *)src;
	size_t cap = 64;

	d->file = file;
	d->src = src;
	d->len = len;
	d->lines = phg_calloc(cap, sizeof(size_t));
	d->lines[d->nlines++] = 0;
	for (size_t i = 0; i < len;) {
		size_t b = break_len(s + i, len - i);

		if (b == 0) {
			i++;
			continue;
		}
		i += b;
		if (d->nlines == cap) {
			cap *= 2;
			d->lines = phg_realloc(d->lines, cap * sizeof(size_t));
		}
		d->lines[d->nlines++] = i;
	}
	return d;
}

void phg_diag_free(phg_diag_t *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].msg);
	free(d->v);
	free(d->lines);
	free(d);
}

size_t phg_diag_errors(const phg_diag_t *d)
{
	return d->nerrors;
}

size_t phg_diag_warnings(const phg_diag_t *d)
{
	return d->nwarnings;
}

int phg_diag_full(const phg_diag_t *d)
{
	return d->n >= DIAG_MAX_ENTRIES;
}

static void diag_add(phg_diag_t *d, phg_pos_t pos, int warn, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* validate --strict: every warning is an error (process-wide, like the
 * format) */
static int diag_strict;

void phg_diag_set_strict(int on)
{
	diag_strict = on;
}

static void diag_add(phg_diag_t *d, phg_pos_t pos, int warn, const char *fmt, va_list ap)
{
	va_list cp;
	int n;
	char *msg;

	if (warn && diag_strict)
		warn = 0;
	if (warn)
		d->nwarnings++;
	else
		d->nerrors++;
	if (d->n >= DIAG_MAX_ENTRIES)
		return;
	va_copy(cp, ap);
	n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0)
		n = 0;
	msg = phg_calloc((size_t)n + 1, 1);
	vsnprintf(msg, (size_t)n + 1, fmt, ap);
	if ((d->n & (d->n - 1)) == 0) /* 0, 1, 2, 4 ...: grow by doubling */
		d->v = phg_realloc(d->v, (d->n ? d->n * 2 : 1) * sizeof(*d->v));
	d->v[d->n].pos = pos;
	d->v[d->n].warn = warn;
	d->v[d->n].seq = d->n;
	d->v[d->n].msg = msg;
	d->n++;
}

void phg_diag_error(phg_diag_t *d, phg_pos_t pos, const char *fmt, ...)
{
	va_list ap;

	if (d == NULL)
		return;
	va_start(ap, fmt);
	diag_add(d, pos, 0, fmt, ap);
	va_end(ap);
}

void phg_diag_warn(phg_diag_t *d, phg_pos_t pos, const char *fmt, ...)
{
	va_list ap;

	if (d == NULL)
		return;
	va_start(ap, fmt);
	diag_add(d, pos, 1, fmt, ap);
	va_end(ap);
}

phg_pos_t phg_diag_pos_at(const phg_diag_t *d, size_t offset)
{
	const unsigned char *s = (const unsigned char *)d->src;
	size_t lo = 0, hi = d->nlines, col = 1;
	phg_pos_t pos;

	if (offset > d->len)
		offset = d->len;
	while (hi - lo > 1) { /* last line starting at or before offset */
		size_t mid = lo + (hi - lo) / 2;

		if (d->lines[mid] <= offset)
			lo = mid;
		else
			hi = mid;
	}
	for (size_t i = d->lines[lo]; i < offset; col++)
		i += char_len(s + i, d->len - i);
	pos.line = (int)lo + 1;
	pos.col = (int)col;
	return pos;
}

size_t phg_diag_offset(const phg_diag_t *d, phg_pos_t pos)
{
	const unsigned char *s = (const unsigned char *)d->src;
	size_t line, off;

	if (pos.line < 1)
		return 0;
	line = (size_t)pos.line - 1;
	if (line >= d->nlines)
		return d->len;
	off = d->lines[line];
	for (int c = 1; c < pos.col && off < d->len; c++)
		off += char_len(s + off, d->len - off);
	return off;
}

/* Where byte @off of the value of the scalar at @scalar is written in the file: the walk
 * undoes the scalar's quoting (a quote, '' and \x escapes), a block
 * scalar's header and indentation, and the folding of line breaks (a
 * break and the next line's indentation stand for one byte of the value).
 * Exact for single lines and literal blocks; near enough for the rest. */
phg_pos_t phg_diag_scalar_pos(const phg_diag_t *d, phg_pos_t scalar, size_t off)
{
	size_t i = phg_diag_offset(d, scalar), v = 0, indent = 0;
	const char *s = d->src;
	char quote = 0;
	int block = 0;

	if (i < d->len && (s[i] == '|' || s[i] == '>')) {
		block = 1;
		while (i < d->len && s[i] != '\n')
			i++;
		if (i < d->len)
			i++;
		for (size_t k = i; k < d->len && s[k] == ' '; k++)
			indent++;
		i += indent;
	} else if (i < d->len && (s[i] == '\'' || s[i] == '"')) {
		quote = s[i++];
	}
	while (v < off && i < d->len) {
		if (s[i] == '\n' || (s[i] == '\r' && i + 1 < d->len && s[i + 1] == '\n')) {
			size_t k = 0;

			i += s[i] == '\r' ? 2 : 1;
			if (block)
				while (k < indent && i < d->len && s[i] == ' ')
					i++, k++;
			else
				while (i < d->len && (s[i] == ' ' || s[i] == '\t'))
					i++;
		} else if (quote == '\'' && s[i] == '\'' && i + 1 < d->len && s[i + 1] == '\'') {
			i += 2;
		} else if (quote == '"' && s[i] == '\\' && i + 1 < d->len) {
			i += 2;
		} else {
			i++;
		}
		v++;
	}
	return phg_diag_pos_at(d, i);
}

static int entry_cmp(const void *a, const void *b)
{
	const diag_entry_t *x = a, *y = b;
	/* entries without a position go last */
	long lx = x->pos.line > 0 ? x->pos.line : 0x7fffffffL;
	long ly = y->pos.line > 0 ? y->pos.line : 0x7fffffffL;

	if (lx != ly)
		return lx < ly ? -1 : 1;
	if (x->pos.col != y->pos.col)
		return x->pos.col < y->pos.col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* One character of a source line as shown: control characters and invalid
 * bytes become '?', so a binary file cannot garble the terminal. */
static void put_char(const unsigned char *p, size_t n, FILE *out)
{
	if (n == 1) {
		if (p[0] == '\t' || (p[0] >= 0x20 && p[0] < 0x7f))
			fputc(p[0], out);
		else
			fputc('?', out);
		return;
	}
	if (n == 2 && p[0] == 0xC2 && p[1] < 0xA0) { /* C1 controls */
		fputc('?', out);
		return;
	}
	fwrite(p, 1, n, out);
}

static void print_source_line(const phg_diag_t *d, phg_pos_t pos, FILE *out)
{
	const unsigned char *s = (const unsigned char *)d->src;
	size_t start, end, nchars = 0, w0, w1, ci, col0;

	if (pos.line < 1 || (size_t)pos.line > d->nlines)
		return;
	start = d->lines[pos.line - 1];
	end = start;
	while (end < d->len && break_len(s + end, d->len - end) == 0) {
		end += char_len(s + end, d->len - end);
		nchars++;
	}
	col0 = pos.col > 0 ? (size_t)pos.col - 1 : 0;
	w0 = 0;
	w1 = nchars;
	if (nchars > DIAG_LINE_SHOWN) {
		w0 = col0 > DIAG_LINE_SHOWN / 2 ? col0 - DIAG_LINE_SHOWN / 2 : 0;
		w1 = w0 + DIAG_LINE_SHOWN < nchars ? w0 + DIAG_LINE_SHOWN : nchars;
	}
	if (w0 > 0)
		fputs("...", out);
	ci = 0;
	for (size_t i = start; i < end; ci++) {
		size_t n = char_len(s + i, end - i);

		if (ci >= w0 && ci < w1)
			put_char(s + i, n, out);
		i += n;
	}
	if (w1 < nchars)
		fputs("...", out);
	fputc('\n', out);

	if (w0 > 0)
		fputs("   ", out);
	ci = 0;
	for (size_t i = start; ci < col0; ci++) {
		int tab = i < end && s[i] == '\t';

		if (ci >= w0)
			fputc(tab ? '\t' : ' ', out);
		if (i < end)
			i += char_len(s + i, end - i);
	}
	fputs("^\n", out);
}

static phg_diag_format_t diag_format = PHG_DIAG_TEXT;
static json_t *diag_collect;

void phg_diag_set_format(phg_diag_format_t f, json_t *collect)
{
	diag_format = f;
	diag_collect = collect;
}

/* GitHub's workflow commands: %, CR and LF escaped in the message; also
 * , and : in properties */
static void gh_escape(FILE *f, const char *s, int prop)
{
	for (; *s; s++) {
		if (*s == '%')
			fputs("%25", f);
		else if (*s == '\r')
			fputs("%0D", f);
		else if (*s == '\n')
			fputs("%0A", f);
		else if (prop && *s == ':')
			fputs("%3A", f);
		else if (prop && *s == ',')
			fputs("%2C", f);
		else
			fputc(*s, f);
	}
}

/* One diagnostic in a machine-readable form (not TEXT). */
static void print_machine(const phg_diag_t *d, const diag_entry_t *e)
{
	json_t *o;

	switch (diag_format) {
	case PHG_DIAG_GITHUB:
		printf("::%s file=", e->warn ? "warning" : "error");
		gh_escape(stdout, d->file, 1);
		if (e->pos.line >= 1)
			printf(",line=%d,col=%d", e->pos.line, e->pos.col);
		fputs("::", stdout);
		gh_escape(stdout, e->msg, 0);
		fputc('\n', stdout);
		return;
	case PHG_DIAG_JSON:
		phg_log_diagnostic(e->warn, d->file, e->pos.line >= 1 ? e->pos.line : 0, e->pos.col,
		                   e->msg);
		return;
	case PHG_DIAG_COLLECT:
		o = json_pack("{s:s,s:s,s:s}", "severity", e->warn ? "warning" : "error", "file",
		              d->file, "message", e->msg);
		json_object_set_new(o, "line", e->pos.line >= 1 ? json_integer(e->pos.line) : json_null());
		json_object_set_new(o, "col", e->pos.line >= 1 ? json_integer(e->pos.col) : json_null());
		if (diag_collect != NULL)
			json_array_append(diag_collect, o);
		json_decref(o);
		return;
	case PHG_DIAG_TEXT:
		break;
	}
}

void phg_diag_print(phg_diag_t *d, FILE *out)
{
	size_t shown = 0, left_out = 0;
	const diag_entry_t *prev = NULL;

	if (out == NULL || d->n == 0)
		return;
	qsort(d->v, d->n, sizeof(*d->v), entry_cmp);
	for (size_t i = 0; i < d->n; i++) {
		const diag_entry_t *e = &d->v[i];

		if (prev != NULL && prev->pos.line == e->pos.line && prev->pos.col == e->pos.col &&
		    prev->warn == e->warn && strcmp(prev->msg, e->msg) == 0)
			continue; /* the same thing said twice */
		prev = e;
		if (!e->warn && shown >= PHG_DIAG_MAX_ERRORS) {
			left_out++;
			continue;
		}
		if (!e->warn)
			shown++;
		if (diag_format != PHG_DIAG_TEXT) {
			print_machine(d, e);
			continue;
		}
		if (e->pos.line < 1) {
			fprintf(out, "%s: %s%s\n", d->file, e->warn ? "warning: " : "", e->msg);
			continue;
		}
		fprintf(out, "%s:%d:%d: %s%s\n", d->file, e->pos.line, e->pos.col,
		        e->warn ? "warning: " : "", e->msg);
		print_source_line(d, e->pos, out);
	}
	if ((left_out > 0 || d->nerrors + d->nwarnings > d->n) && diag_format == PHG_DIAG_TEXT)
		fprintf(out, "%s: too many errors; only the first %d are shown\n", d->file,
		        PHG_DIAG_MAX_ERRORS);
	fflush(out);
}
