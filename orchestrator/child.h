/*
 * child.h - one child process on the libuv loop.
 *
 * uv_spawn (libuv reaps the child: phasegate never installs a SIGCHLD
 * handler of its own); stdin is /dev/null; stdout and stderr go into capped
 * buffers (stdout may be discarded instead); an optional timeout sends
 * SIGTERM, then SIGKILL after a grace period if the child is still alive.
 *
 * The child is "done" only when the exit callback has run, every pipe has
 * reached EOF (or was given up on, see below) and every handle is closed:
 * then, and only then, the done callback runs, exactly once.  From that
 * callback on the library no longer touches the phg_child_t, so the caller
 * may free it there.
 *
 * A grandchild that inherited a pipe could hold it open after the child
 * exited: the pipes are then given up on (closed) kill_grace_ms after the
 * exit, and `pipes_abandoned` says so.
 *
 *	phg_child_t *c = phg_calloc(1, sizeof(*c));
 *	phg_child_opts_t o = {.file = "pg_restore", .args = argv,
 *	                      .stdout_max = 8u << 20, .stderr_max = 4096};
 *	c->data = me;
 *	phg_child_spawn(loop, c, &o, on_done);     // on_done(c) always runs once
 */
#ifndef PHG_CHILD_H
#define PHG_CHILD_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"

typedef struct phg_child_s phg_child_t;

/* All handles closed; the results below are final.  May free @c. */
typedef void (*phg_child_cb)(phg_child_t *c);

typedef enum phg_child_state_e {
	PHG_CHILD_IDLE = 0,
	PHG_CHILD_RUNNING,     /* spawned, not exited */
	PHG_CHILD_TERMINATING, /* SIGTERM sent */
	PHG_CHILD_KILLING,     /* SIGKILL sent */
	PHG_CHILD_DRAINING,    /* exited (or never started); waiting for EOF and closes */
	PHG_CHILD_DONE,        /* done callback called */
} phg_child_state_t;

typedef struct phg_child_opts_s {
	const char *file;      /* program; searched in PATH when it has no '/' */
	char **args;           /* NULL-terminated argv; args[0] is the name shown */
	char **env;            /* NULL-terminated "K=V" list, or NULL: inherit ours */
	const char *cwd;       /* NULL: ours */
	size_t stdout_max;     /* 0: stdout goes to /dev/null */
	size_t stderr_max;     /* 0: stderr goes to /dev/null; else its last bytes are kept */
	uint64_t timeout_ms;   /* 0 = none */
	uint64_t kill_grace_ms; /* SIGTERM -> SIGKILL; 0 means 5000 */
	int nice;              /* >0: a lower CPU priority (uv_os_setpriority); 0: ours */
	int die_with_parent;   /* 1: the child is killed when phasegate dies, even by
	                        * kill -9 (PR_SET_PDEATHSIG, set by util-linux's
	                        * setpriv before it execs the program) */
	int fd3;               /* >0: this descriptor of ours is the child's fd 3
	                        * (backup.c: the password file, a memfd) */
} phg_child_opts_t;

struct phg_child_s {
	void *data; /* the caller's */

	/* results, final when the done callback runs */
	long pid;              /* 0 if the spawn failed */
	int spawn_error;       /* 0 or the libuv error of uv_spawn (UV_ENOENT: no such program) */
	int exited;            /* the exit callback ran */
	int64_t exit_status;   /* when exited */
	int term_signal;       /* when exited: the signal that ended it, 0 = none */
	int timed_out;         /* the timeout fired (SIGTERM was sent) */
	int sigkilled;         /* SIGKILL was sent */
	int stopped;           /* phg_child_stop() was called */
	int stdout_toobig;     /* more than stdout_max bytes: the rest was read and dropped */
	int stderr_truncated;  /* stderr kept only its last stderr_max bytes */
	int pipes_abandoned;   /* a pipe stayed open after the exit and was closed */
	int read_error;        /* 0 or the first libuv read error on a pipe */
	uint64_t elapsed_ms;   /* spawn -> exit */
	phg_buf_t out;         /* stdout (when stdout_max > 0); owned, freed by phg_child_cleanup */
	phg_buf_t err;         /* stderr tail (when stderr_max > 0); same */

	/* private */
	phg_child_state_t state;
	uv_loop_t *loop;
	phg_child_cb cb;
	uv_process_t proc;
	uv_pipe_t pout, perr;
	uv_timer_t timer;
	int timer_role;
	int open_handles;      /* initialized, not yet closed */
	int pout_open, perr_open, timer_open, proc_open;
	uint64_t timeout_ms, grace_ms, started_at;
	size_t stdout_max, stderr_max;
	char rbuf[65536];
};

/*
 * Start the child.  Returns 0, and @cb runs exactly once later (also when
 * the spawn itself failed: spawn_error says why, e.g. UV_ENOENT for a
 * program not found); or PHG_EINVAL for bad arguments (PHG_EIO if even the
 * timer cannot be set up), and @cb never runs.  @cb never runs from inside
 * this call.
 * @c is caller-allocated and must stay valid until @cb; it is zeroed here
 * except c->data.  The option strings are copied by libuv during the call.
 */
int phg_child_spawn(uv_loop_t *loop, phg_child_t *c, const phg_child_opts_t *o, phg_child_cb cb);

/*
 * Ask the child to stop: SIGTERM now, SIGKILL after the grace period if it
 * is still alive.  Nothing happens if it already exited or was stopped.
 * The done callback still runs, once everything is closed.
 */
void phg_child_stop(phg_child_t *c);

/* Free the output buffers (call from or after the done callback). */
void phg_child_cleanup(phg_child_t *c);

/*
 * The last whole lines of the captured stderr that fit in @cap bytes
 * (including the NUL), trailing blank lines dropped, "..." in front when
 * lines were left out.  "" when there is nothing.
 */
void phg_child_stderr_tail(const phg_child_t *c, char *dst, size_t cap);

const char *phg_child_state_name(phg_child_state_t s);

#endif /* PHG_CHILD_H */
