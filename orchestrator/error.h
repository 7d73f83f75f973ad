/*
 * error.h - phasegate's error codes and the bounded error detail buffer.
 *
 * Every function that can fail returns 0 or one negative PHG_E* code from
 * the PHG_ERRNO_MAP table below (the shape of libuv's UV_ERRNO_MAP).  The
 * table also gives each code its name and a short message.
 *
 * Detail goes into a phg_err_t the caller owns.  The first cause wins:
 * phg_err_set() does nothing when the buffer already holds an error, so a
 * low-level cause is not overwritten by the generic failure of its caller.
 */
#ifndef PHG_ERROR_H
#define PHG_ERROR_H

#include <stddef.h>

/* XX(NAME, message) -- codes are numbered in order, starting at -1. */
#define PHG_ERRNO_MAP(XX)                                                    \
	XX(NOMEM, "out of memory")                                               \
	XX(INVAL, "invalid argument")                                            \
	XX(TOOBIG, "value too large")                                            \
	XX(IO, "input/output error")                                             \
	XX(PLAN, "invalid plan")                                                 \
	XX(USAGE, "bad invocation")                                              \
	XX(CONNECT, "cannot connect to the database")                            \
	XX(PG, "database error")                                                 \
	XX(LOCK_TIMEOUT, "lock not available")                                   \
	XX(LOCKED, "plan is locked by another run")                              \
	XX(CANCELED, "operation canceled")                                       \
	XX(TIMEOUT, "operation timed out")                                       \
	XX(STEP, "step failed")                                                  \
	XX(GATE, "gate failed")                                                  \
	XX(IRREVERSIBLE, "step cannot be reverted")                              \
	XX(ROLLBACK, "rollback failed")                                          \
	XX(DRIFT, "plan changed since it was applied")                           \
	XX(PROMOTE, "promotion refused")                                         \
	XX(HTTP, "http request failed")                                          \
	XX(CHILD, "child process failed")                                        \
	XX(INTERRUPTED, "interrupted")                                           \
	XX(STATE, "inconsistent run state")

enum {
	PHG_E__FIRST = 0,
#define PHG_XX_ENUM(name, msg) PHG_E__N_##name,
	PHG_ERRNO_MAP(PHG_XX_ENUM)
#undef PHG_XX_ENUM
};

#define PHG_XX_CODE(name, msg) PHG_E##name = -PHG_E__N_##name,
enum { PHG_ERRNO_MAP(PHG_XX_CODE) };
#undef PHG_XX_CODE

/* Short name ("PHG_EPLAN") and message of a code; never NULL. */
const char *phg_err_name(int code);
const char *phg_strerror(int code);

/*
 * Error detail, PostgreSQL style: a short lowercase primary message that
 * quotes the user's names, then optional detail and hint sentences.
 * SQL errors also carry their SQLSTATE.
 */
typedef struct phg_err_s {
	int code;           /* 0 = no error recorded */
	char sqlstate[6];   /* "" unless the cause is a server error */
	char msg[512];      /* primary */
	char detail[1024];  /* sentence(s), may be empty */
	char hint[512];     /* sentence(s), may be empty */
} phg_err_t;

void phg_err_clear(phg_err_t *e);

/* Record code + primary message, unless @e already holds an error.
 * Returns @code so callers can `return phg_err_set(e, PHG_EINVAL, ...)`.
 * @e may be NULL. */
int phg_err_set(phg_err_t *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill detail/hint of the error already recorded (no-op on NULL @e). */
void phg_err_detail(phg_err_t *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void phg_err_hint(phg_err_t *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Copy @src into @dst unless @dst already holds an error. */
void phg_err_copy(phg_err_t *dst, const phg_err_t *src);

#endif /* PHG_ERROR_H */
