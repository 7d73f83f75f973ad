/*
 * fault.c - named fault points (see fault.h).
 */
#include "fault.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT_NAME_MAX 256

static struct {
	int loaded;
	int enabled;
	char target[FAULT_NAME_MAX];
	long nth;    /* the occurrence of target that kills */
	long hits;   /* occurrences of target so far */
	const char *log;
} fault;

static void fault_load(void)
{
	const char *spec = getenv("PHG_FAULT");
	const char *log = getenv("PHG_FAULT_LOG");

	fault.loaded = 1;
	fault.nth = 1;
	if (spec != NULL && *spec != '\0') {
		const char *colon = strrchr(spec, ':');
		size_t n = strlen(spec);

		/* NAME:N when what follows the last ':' is a number */
		if (colon != NULL && colon[1] != '\0' && strspn(colon + 1, "0123456789") ==
		                                             strlen(colon + 1)) {
			char *end;
			long v;

			errno = 0;
			v = strtol(colon + 1, &end, 10);
			if (errno == 0 && *end == '\0' && v > 0) {
				fault.nth = v;
				n = (size_t)(colon - spec);
			}
		}
		if (n >= sizeof(fault.target))
			n = sizeof(fault.target) - 1;
		memcpy(fault.target, spec, n);
		fault.target[n] = '\0';
		fault.enabled = 1;
	}
	if (log != NULL && *log != '\0') {
		fault.log = log;
		fault.enabled = 1;
	}
}

int phg_fault_enabled(void)
{
	if (!fault.loaded)
		fault_load();
	return fault.enabled;
}

void phg_fault(const char *fmt, ...)
{
	char name[FAULT_NAME_MAX];
	va_list ap;

	if (!phg_fault_enabled())
		return;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	if (fault.log != NULL) {
		/* test-only: a short O_APPEND write, so concurrent writers and a
		 * SIGKILL right after never tear a line */
		int fd = open(fault.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);

		if (fd >= 0) {
			char line[FAULT_NAME_MAX + 1];
			int n = snprintf(line, sizeof(line), "%s\n", name);

			if (n > 0 && write(fd, line, (size_t)n) < 0) {
				/* nothing to do: the log is best effort */
			}
			close(fd);
		}
	}
	if (fault.target[0] != '\0' && strcmp(name, fault.target) == 0 &&
	    ++fault.hits == fault.nth) {
		raise(SIGKILL);
		_exit(137); /* not reached */
	}
}
