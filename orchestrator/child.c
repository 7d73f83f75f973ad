/*
 * child.c - one child process on the libuv loop: spawn, capped capture of
 * stdout/stderr, timeout with SIGTERM then SIGKILL, and a done callback that
 * runs only once the exit callback ran, every pipe hit EOF and every handle
 * is closed (the shape of Neovim's libuv_proc.c / proc.c).
 */
#include "child.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

#define CHILD_DEFAULT_GRACE_MS 5000

enum {
	TIMER_NONE = 0,
	TIMER_TIMEOUT, /* the child's time is up: SIGTERM */
	TIMER_GRACE,   /* SIGTERM was not enough: SIGKILL */
	TIMER_DRAIN,   /* exited, but a pipe is still open: give up on it */
};

static void child_on_close(uv_handle_t *h);
static void child_maybe_done(phg_child_t *c);
static void child_on_timer(uv_timer_t *t);

const char *phg_child_state_name(phg_child_state_t s)
{
	switch (s) {
	case PHG_CHILD_IDLE:
		return "idle";
	case PHG_CHILD_RUNNING:
		return "running";
	case PHG_CHILD_TERMINATING:
		return "terminating";
	case PHG_CHILD_KILLING:
		return "killing";
	case PHG_CHILD_DRAINING:
		return "draining";
	case PHG_CHILD_DONE:
		return "done";
	}
	return "?";
}

/* The one function that changes c->state. */
static void child_set_state(phg_child_t *c, phg_child_state_t s)
{
	phg_logctx_t ctx;

	if (c->state == s)
		return;
	memset(&ctx, 0, sizeof(ctx));
	ctx.pid = c->pid;
	phg_log(PHG_LOG_TRACE, &ctx, "child process state %s -> %s", phg_child_state_name(c->state),
	        phg_child_state_name(s));
	c->state = s;
}

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000u;
}

/* ------------------------------------------------------------- handles */

static void child_close(phg_child_t *c, uv_handle_t *h, int *open)
{
	if (!*open)
		return;
	*open = 0;
	uv_close(h, child_on_close);
}

static void child_on_close(uv_handle_t *h)
{
	phg_child_t *c = h->data;

	c->open_handles--;
	child_maybe_done(c);
}

/*
 * Once the child exited (or never started) and both pipes are closed, close
 * the timer; once every handle is closed, report.  Nothing touches @c after
 * the callback: it may free it.
 */
static void child_maybe_done(phg_child_t *c)
{
	phg_child_cb cb;

	if (c->state != PHG_CHILD_DRAINING)
		return;
	if (c->pout_open || c->perr_open || c->proc_open)
		return;
	child_close(c, (uv_handle_t *)&c->timer, &c->timer_open);
	if (c->open_handles > 0)
		return;
	child_set_state(c, PHG_CHILD_DONE);
	cb = c->cb;
	c->cb = NULL;
	if (cb != NULL)
		cb(c);
}

static void child_timer_start(phg_child_t *c, int role, uint64_t ms)
{
	if (!c->timer_open)
		return;
	c->timer_role = role;
	uv_timer_start(&c->timer, child_on_timer, ms, 0);
}

/* ----------------------------------------------------------------- I/O */

static void child_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	phg_child_t *c = h->data;

	(void)suggested;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* Keep the last b->max bytes of everything appended. */
static void child_keep_tail(phg_child_t *c, phg_buf_t *b, const char *p, size_t n)
{
	size_t drop;

	if (b->len + n > b->max) {
		c->stderr_truncated = 1;
		if (n >= b->max) {
			phg_buf_reset(b);
			p += n - b->max;
			n = b->max;
		} else {
			drop = b->len + n - b->max;
			memmove(b->data, b->data + drop, b->len - drop);
			b->len -= drop;
			b->data[b->len] = '\0';
		}
	}
	if (phg_buf_add(b, p, n) != 0)
		c->stderr_truncated = 1; /* out of memory: keep what we have */
}

static void child_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	phg_child_t *c = s->data;
	int is_out = s == (uv_stream_t *)&c->pout;

	if (nread > 0) {
		if (is_out) {
			if (!c->stdout_toobig && phg_buf_add(&c->out, buf->base, (size_t)nread) != 0)
				c->stdout_toobig = 1; /* the rest is read and dropped */
		} else {
			child_keep_tail(c, &c->err, buf->base, (size_t)nread);
		}
		return;
	}
	if (nread == 0)
		return; /* EAGAIN */
	if (nread != UV_EOF && c->read_error == 0)
		c->read_error = (int)nread;
	if (is_out)
		child_close(c, (uv_handle_t *)&c->pout, &c->pout_open);
	else
		child_close(c, (uv_handle_t *)&c->perr, &c->perr_open);
	child_maybe_done(c);
}

/* ------------------------------------------------------------- signals */

static void child_signal(phg_child_t *c, int sig)
{
	phg_logctx_t ctx;
	int rc;

	/* Only before the exit callback: after it the pid may be reused.  Until
	 * libuv reaps the child (and calls the exit callback right after) the pid
	 * is the child's, alive or a zombie. */
	if (c->exited || !c->proc_open || c->pid <= 0)
		return; /* never kill(0) / kill(-1): our own group or everyone */
	memset(&ctx, 0, sizeof(ctx));
	ctx.pid = c->pid;
	/* the whole group the child leads (it was spawned detached: setsid), so
	 * a wrapper's own children stop too; only while the child still leads
	 * it, else the child alone */
	rc = getpgid((pid_t)c->pid) == (pid_t)c->pid ? uv_kill(-c->pid, sig) : UV_ESRCH;
	if (rc != 0)
		rc = uv_process_kill(&c->proc, sig);
	phg_log(PHG_LOG_DEBUG, &ctx, "sent %s to child process%s%s",
	        sig == SIGKILL ? "SIGKILL" : sig == SIGTERM ? "SIGTERM" : "a signal",
	        rc == 0 ? "" : ": ", rc == 0 ? "" : uv_strerror(rc));
}

static void child_on_timer(uv_timer_t *t)
{
	phg_child_t *c = t->data;
	int role = c->timer_role;

	c->timer_role = TIMER_NONE;
	switch (role) {
	case TIMER_TIMEOUT:
		if (c->exited)
			return;
		c->timed_out = 1;
		child_signal(c, SIGTERM);
		child_set_state(c, PHG_CHILD_TERMINATING);
		child_timer_start(c, TIMER_GRACE, c->grace_ms);
		break;
	case TIMER_GRACE:
		if (c->exited)
			return;
		c->sigkilled = 1;
		child_signal(c, SIGKILL);
		child_set_state(c, PHG_CHILD_KILLING);
		break;
	case TIMER_DRAIN:
		if (c->pout_open || c->perr_open)
			c->pipes_abandoned = 1;
		child_close(c, (uv_handle_t *)&c->pout, &c->pout_open);
		child_close(c, (uv_handle_t *)&c->perr, &c->perr_open);
		child_maybe_done(c);
		break;
	default:
		break;
	}
}

static void child_on_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
	phg_child_t *c = p->data;

	c->exited = 1;
	c->exit_status = exit_status;
	c->term_signal = term_signal;
	c->elapsed_ms = now_ms() - c->started_at;
	if (c->timer_open)
		uv_timer_stop(&c->timer);
	c->timer_role = TIMER_NONE;
	child_set_state(c, PHG_CHILD_DRAINING);
	child_close(c, (uv_handle_t *)&c->proc, &c->proc_open);
	if (c->pout_open || c->perr_open)
		child_timer_start(c, TIMER_DRAIN, c->grace_ms);
	child_maybe_done(c);
}

/* ---------------------------------------------------------- public API */

/* util-linux (essential in Debian): sets the parent-death signal, then execs */
#define PHG_SETPRIV "/usr/bin/setpriv"

/* @file can be executed (as a path, or found in PATH): only then is it
 * wrapped, so a missing program still fails the spawn itself (ENOENT). */
static int runnable(const char *file)
{
	const char *path = getenv("PATH"), *p;
	char buf[4096];

	if (strchr(file, '/') != NULL)
		return access(file, X_OK) == 0;
	for (p = path; p != NULL && *p != '\0';) {
		size_t n = strcspn(p, ":");

		if (n > 0 && n + strlen(file) + 2 < sizeof(buf)) {
			snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, file);
			if (access(buf, X_OK) == 0)
				return 1;
		}
		p += n;
		if (*p == ':')
			p++;
	}
	return 0;
}

int phg_child_spawn(uv_loop_t *loop, phg_child_t *c, const phg_child_opts_t *o, phg_child_cb cb)
{
	uv_process_options_t po;
	uv_stdio_container_t stdio[4];
	void *data;
	char **wrapped = NULL;
	int rc;

	if (loop == NULL || c == NULL || o == NULL || cb == NULL || o->file == NULL ||
	    o->args == NULL || o->args[0] == NULL)
		return PHG_EINVAL;
	data = c->data;
	memset(c, 0, sizeof(*c));
	c->data = data;
	c->loop = loop;
	c->cb = cb;
	c->timeout_ms = o->timeout_ms;
	c->grace_ms = o->kill_grace_ms > 0 ? o->kill_grace_ms : CHILD_DEFAULT_GRACE_MS;
	c->stdout_max = o->stdout_max;
	c->stderr_max = o->stderr_max;
	phg_buf_init(&c->out, o->stdout_max);
	phg_buf_init(&c->err, o->stderr_max);

	rc = uv_timer_init(loop, &c->timer);
	if (rc != 0)
		return PHG_EIO; /* nothing to close: a failed init leaves no handle */
	c->timer.data = c;
	c->timer_open = 1;
	c->open_handles++;

	memset(stdio, 0, sizeof(stdio));
	stdio[0].flags = UV_IGNORE; /* libuv gives fds 0-2 /dev/null when ignored */
	stdio[1].flags = UV_IGNORE;
	stdio[2].flags = UV_IGNORE;
	stdio[3].flags = UV_INHERIT_FD; /* only when o->fd3 (stdio_count 4) */
	stdio[3].data.fd = o->fd3;
	if (o->stdout_max > 0 && uv_pipe_init(loop, &c->pout, 0) == 0) {
		c->pout.data = c;
		c->pout_open = 1;
		c->open_handles++;
		stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
		stdio[1].data.stream = (uv_stream_t *)&c->pout;
	}
	if (o->stderr_max > 0 && uv_pipe_init(loop, &c->perr, 0) == 0) {
		c->perr.data = c;
		c->perr_open = 1;
		c->open_handles++;
		stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
		stdio[2].data.stream = (uv_stream_t *)&c->perr;
	}

	memset(&po, 0, sizeof(po));
	po.file = o->file;
	po.args = o->args;
	if (o->die_with_parent && access(PHG_SETPRIV, X_OK) == 0 && runnable(o->file)) {
		/* setpriv --pdeathsig KILL -- FILE ARGS...: the same process, which
		 * the kernel kills when we die (a DETACHED child has its own
		 * session: nothing else would) */
		size_t n = 0;

		while (o->args != NULL && o->args[n] != NULL)
			n++;
		wrapped = phg_calloc(n + 5, sizeof(char *));
		wrapped[0] = (char *)PHG_SETPRIV;
		wrapped[1] = (char *)"--pdeathsig";
		wrapped[2] = (char *)"KILL";
		wrapped[3] = (char *)"--";
		wrapped[4] = (char *)o->file;
		for (size_t i = 1; i < n; i++)
			wrapped[4 + i] = o->args[i];
		po.file = PHG_SETPRIV;
		po.args = wrapped;
	}
	po.env = o->env;
	po.cwd = o->cwd;
	po.exit_cb = child_on_exit;
	po.stdio_count = o->fd3 > 0 ? 4 : 3;
	po.stdio = stdio;
	po.flags = UV_PROCESS_DETACHED;
	c->proc.data = c;
	c->started_at = now_ms();
	rc = uv_spawn(loop, &c->proc, &po);
	free(wrapped);
	/* The process handle is initialized even when the spawn fails, and must
	 * be closed then too. */
	c->proc_open = 1;
	c->open_handles++;
	if (rc != 0) {
		c->spawn_error = rc;
		child_set_state(c, PHG_CHILD_DRAINING);
		child_close(c, (uv_handle_t *)&c->proc, &c->proc_open);
		child_close(c, (uv_handle_t *)&c->pout, &c->pout_open);
		child_close(c, (uv_handle_t *)&c->perr, &c->perr_open);
		child_maybe_done(c); /* closes the timer; the cb runs from the loop */
		return 0;
	}
	c->pid = c->proc.pid;
	/* right after the spawn: a busy machine gives the application first */
	if (o->nice > 0)
		(void)uv_os_setpriority(c->pid, o->nice);
	child_set_state(c, PHG_CHILD_RUNNING);
	if (c->pout_open && uv_read_start((uv_stream_t *)&c->pout, child_alloc, child_on_read) != 0)
		child_close(c, (uv_handle_t *)&c->pout, &c->pout_open);
	if (c->perr_open && uv_read_start((uv_stream_t *)&c->perr, child_alloc, child_on_read) != 0)
		child_close(c, (uv_handle_t *)&c->perr, &c->perr_open);
	if (c->timeout_ms > 0)
		child_timer_start(c, TIMER_TIMEOUT, c->timeout_ms);
	return 0;
}

void phg_child_stop(phg_child_t *c)
{
	if (c == NULL || c->state != PHG_CHILD_RUNNING)
		return;
	c->stopped = 1;
	child_signal(c, SIGTERM);
	child_set_state(c, PHG_CHILD_TERMINATING);
	child_timer_start(c, TIMER_GRACE, c->grace_ms);
}

void phg_child_cleanup(phg_child_t *c)
{
	if (c == NULL)
		return;
	phg_buf_free(&c->out);
	phg_buf_free(&c->err);
}

void phg_child_stderr_tail(const phg_child_t *c, char *dst, size_t cap)
{
	const char *s, *end, *start, *p;
	size_t len, room, want;

	if (cap == 0)
		return;
	dst[0] = '\0';
	if (c == NULL || c->err.data == NULL)
		return;
	s = c->err.data;
	len = c->err.len;
	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' ||
	                   s[len - 1] == '\t'))
		len--;
	while (len > 0 && (s[0] == '\n' || s[0] == '\r')) {
		s++;
		len--;
	}
	room = cap - 1;
	if (len == 0)
		return;
	if (!c->stderr_truncated && len <= room) {
		memcpy(dst, s, len);
		dst[len] = '\0';
		return;
	}
	/* The last whole lines that fit after a "...\n". */
	if (room <= 4)
		return;
	want = room - 4;
	end = s + len;
	start = len > want ? end - want : s;
	if (start > s ? start[-1] != '\n' : c->stderr_truncated) {
		/* @start is inside a line (or the first kept line lost its head). */
		p = memchr(start, '\n', (size_t)(end - start));
		if (p != NULL && p + 1 < end) {
			start = p + 1;
		} else {
			/* One line longer than the room: its end, at a UTF-8 boundary. */
			while (start < end && ((unsigned char)*start & 0xC0) == 0x80)
				start++;
		}
	}
	memcpy(dst, "...\n", 4);
	memcpy(dst + 4, start, (size_t)(end - start));
	dst[4 + (end - start)] = '\0';
}
