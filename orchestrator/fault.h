/*
 * fault.h - named fault points: where phasegate can be made to die as a
 * `kill -9` would, so tests can prove that every recorded state resumes.
 *
 * The engine and the executor call phg_fault() at every run/phase/step
 * transition (right after it committed, before acting on it) and at every
 * op boundary.  Two environment variables, read once:
 *
 *   PHG_FAULT=NAME[:N]   at the N-th (default 1st) time point NAME is
 *                        reached, the process sends itself SIGKILL: no
 *                        handler, no atexit, no flush -- exactly kill -9.
 *   PHG_FAULT_LOG=FILE   append the name of every point reached, one per
 *                        line (a clean run lists the points to try).
 *
 * Unset (the normal case), phg_fault() costs one branch.  Point names are
 * documented in docs/fault-points.md; they are made of the plan's phase
 * names and numbers, e.g. "step:backfill:1:applied" or
 * "op:apply:contract:2:0:committed".
 */
#ifndef PHG_FAULT_H
#define PHG_FAULT_H

/* Reach the point named by @fmt.  May not return (SIGKILL). */
void phg_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* 1 when PHG_FAULT or PHG_FAULT_LOG is set (callers may skip building
 * names).  */
int phg_fault_enabled(void);

#endif /* PHG_FAULT_H */
