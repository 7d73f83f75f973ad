/*
 * reconcile.c - the reconciler: phg_eng_reconcile() decides what an engine
 * does next (see below and engine.c), and the continuations that end each
 * action it starts: a step's ops ran, a failed step cleaned up after
 * itself, a step reverted, the plan finalized; the deciders of each goal
 * (apply, finalize, record a failure, revert), on_failure and the endings
 * of a rollback.  Before a revert, every step in it is checked to be
 * revertible (phg_eng_precheck_revert).
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void exit_rolled_back(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_ROLLED_BACK);
}

static void exit_rollback_failed(engine_t *e)
{
	phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
}

static const char *step_label(engine_t *e, int pi, int si, char *buf, size_t n)
{
	snprintf(buf, n, "step %d (%s) of phase \"%s\"", si + 1,
	         e->plan->phases[pi].steps[si].kind->name, e->plan->phases[pi].name);
	return buf;
}

/* Its irreversible finalize op committed: made permanent, whether or not the
 * `finalized` transition was written before a crash. */
int phg_eng_step_is_final(engine_t *e, int pi, int si)
{
	const step_rt_t *s = &e->ph[pi].steps[si];

	return s->state == PHG_STEP_FINALIZED ||
	       (s->final_progress > 0 && e->plan->phases[pi].steps[si].kind->final_irreversible);
}

int phg_eng_step_needs_revert(const step_rt_t *s)
{
	switch (s->state) {
	case PHG_STEP_RUNNING:
	case PHG_STEP_APPLIED:
	case PHG_STEP_REVERTING:
	case PHG_STEP_FINALIZED:
		return 1;
	case PHG_STEP_FAILED:
		return s->progress > 0 || s->op_started >= 0 || s->bf_batches > 0;
	default:
		return 0;
	}
}

/* Before touching anything: can every step of phases (lo, hi] be reverted? */
int phg_eng_precheck_revert(engine_t *e, int hi, int lo, phg_err_t *err)
{
	char lbl[256];

	for (int pi = hi; pi > lo; pi--) {
		for (int si = (int)e->plan->phases[pi].nsteps - 1; si >= 0; si--) {
			step_rt_t *s = &e->ph[pi].steps[si];
			phg_err_t berr;
			int rc;

			if (!phg_eng_step_needs_revert(s))
				continue;
			step_label(e, pi, si, lbl, sizeof(lbl));
			if (phg_eng_step_is_final(e, pi, si)) {
				phg_err_set(err, PHG_EIRREVERSIBLE, "cannot revert %s", lbl);
				phg_err_detail(err, "Its change was made permanent when the plan completed "
				                    "(a hidden column is dropped for good at that point).");
				phg_err_hint(err, "Nothing was changed. Restore the data from a backup if it "
				                  "is needed, or write a new plan that undoes the change.");
				return PHG_EIRREVERSIBLE;
			}
			phg_err_clear(&berr);
			rc = phg_eng_build_ops(e, pi, si, PHG_DIR_REVERT, &berr);
			phg_eng_ops_clear(e);
			if (rc == PHG_EIRREVERSIBLE) {
				phg_err_set(err, PHG_EIRREVERSIBLE, "cannot revert %s: %s", lbl, berr.msg);
				phg_err_detail(err, "Nothing was changed.");
				phg_err_hint(err, "Give the step a way back (`down` for sql, `revert` for "
				                  "http), or undo it by hand and mark the run with a new plan.");
				return rc;
			}
			if (rc != 0) {
				phg_err_copy(err, &berr);
				return rc;
			}
		}
	}
	return 0;
}

static void revert_failed(engine_t *e, const phg_err_t *cause)
{
	char lbl[256];
	phg_buf_t left;
	phg_err_t err;

	step_label(e, e->pi, e->si, lbl, sizeof(lbl));
	phg_eng_ctx(e, e->pi, e->si);
	phg_eng_report(e, PHG_LOG_ERROR, cause);
	phg_buf_init(&left, 64 * 1024);
	for (int pi = e->pi; pi > e->rb_lo; pi--) {
		for (int si = (int)e->plan->phases[pi].nsteps - 1; si >= 0; si--) {
			if (phg_eng_step_needs_revert(&e->ph[pi].steps[si]))
				phg_buf_printf(&left, "%s\"%s\" step %d (%s)", left.len ? ", " : "",
				               e->plan->phases[pi].name, si + 1,
				               e->plan->phases[pi].steps[si].kind->name);
		}
	}
	phg_err_clear(&err);
	phg_err_set(&err, PHG_EROLLBACK, "rollback failed at %s", lbl);
	phg_err_detail(&err, "Not reverted yet: %s. Everything after it in the plan was reverted.",
	               left.len ? left.data : "nothing");
	phg_err_hint(&err, "Fix the cause above, then run `phasegate rollback %s` to finish; "
	                   "`phasegate status` shows each step.",
	               e->plan->file);
	phg_buf_free(&left);
	phg_eng_ctx(e, -1, -1);
	phg_eng_report(e, PHG_LOG_ERROR, &err);
	e->goal = GOAL_END;
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, err.msg, exit_rollback_failed);
}

/* ---- the reconciler ----
 *
 * phg_eng_reconcile() is the one place that decides what the engine does
 * next.  It reads the recorded run, phase and step states (memory holds the
 * rows as they committed), the goal (apply, finalize, record a failure,
 * revert) and the in-memory results of what just finished (a gate passed
 * in this process, a failed step's own clean-up done, the error being
 * handled), and starts exactly one action: a transition, a step's ops, a
 * gate, a reload; its completion calls phg_eng_reconcile() again.  Normal
 * flow, resume after a crash (a loaded run is reconciled like any other),
 * failure, the automatic rollback, `rollback`, finalize and completion all
 * go through it.  The per-goal deciders below are its parts; none of them
 * keeps a cursor of its own.
 */

/* a step's ops ran (apply) */
static void step_ran(engine_t *e)
{
	if (e->watch_failed && !e->stop_requested &&
	    (e->failed_status == PHG_EINTERRUPTED ||
	     (e->failed_status == PHG_ESTEP && strcmp(e->step_err.sqlstate, "57014") == 0))) {
		phg_eng_gate_failed(e); /* the watch stopped the step at a safe point */
		return;
	}
	switch (e->failed_status) {
	case 0:
		phg_log(PHG_LOG_INFO, &e->log, "applied");
		phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_APPLIED, NULL,
		                  phg_eng_reconcile);
		return;
	case PHG_EINTERRUPTED:
		phg_eng_interrupt(e);
		return;
	case PHG_ECONNECT:
		phg_eng_fatal(e, PHG_EXIT_RUNTIME, &e->step_err);
		return;
	default:
		phg_eng_fail(e, e->pi, e->si);
		return;
	}
}

/* a failed step's own partial work was undone (or not) */
static void step_cleaned(engine_t *e)
{
	if (e->failed_status != 0) {
		phg_err_t cause = e->step_err;

		e->rb_lo = e->pi - 1;
		revert_failed(e, &cause);
		return;
	}
	e->fail_cleaned = 1;
	phg_eng_reconcile(e);
}

/* a step's revert ops ran */
static void step_reverted(engine_t *e)
{
	if (e->failed_status == PHG_EINTERRUPTED) {
		phg_eng_interrupt(e);
		return;
	}
	if (e->failed_status == PHG_ECONNECT) {
		phg_eng_fatal(e, PHG_EXIT_ROLLBACK_FAILED, &e->step_err);
		return;
	}
	if (e->failed_status != 0) {
		revert_failed(e, &e->step_err);
		return;
	}
	phg_eng_ctx(e, e->pi, e->si);
	{
		const phg_step_t *st = &e->plan->phases[e->pi].steps[e->si];
		const char *keeps =
		    st->kind->revert_keeps != NULL ? st->kind->revert_keeps(st) : NULL;

		const step_rt_t *rt = &e->ph[e->pi].steps[e->si];

		if (keeps != NULL && (rt->progress > 0 || rt->bf_rows > 0)) {
			phg_log(PHG_LOG_WARN, &e->log, "reverted, deliberately not undone: %s", keeps);
			if (e->kept++ == 0 && strcmp(st->kind->name, "backfill") == 0) {
				snprintf(e->kept_what, sizeof(e->kept_what),
				         "the updates of backfill step %zu of phase \"%s\" were",
				         (size_t)e->si + 1, e->plan->phases[e->pi].name);
				snprintf(e->kept_why, sizeof(e->kept_why), " (no `down`)");
			} else if (e->kept == 1) {
				snprintf(e->kept_what, sizeof(e->kept_what),
				         "what %s step %zu of phase \"%s\" did was", st->kind->name,
				         (size_t)e->si + 1, e->plan->phases[e->pi].name);
				snprintf(e->kept_why, sizeof(e->kept_why), " (%s)", keeps);
			}
		} else {
			phg_log(PHG_LOG_INFO, &e->log, "reverted");
		}
	}
	phg_eng_set_state(e, PHG_LVL_STEP, e->pi, e->si, PHG_STEP_REVERTED, NULL, phg_eng_reconcile);
}

/* the step's row as committed, before its revert ops are built from it */
static void revert_memo_loaded(engine_t *e)
{
	step_rt_t *s = &e->ph[e->pi].steps[e->si];
	phg_err_t err;

	phg_eng_act(e, ACT_IDLE);
	if (PQntuples(e->res) != 1 || phg_store_step_read(e->res, 0, 0, s) != 0) {
		phg_err_clear(&err);
		phg_err_set(&err, PHG_ESTATE, "the recorded state of the step is not valid");
		revert_failed(e, &err);
		return;
	}
	phg_err_clear(&err);
	if (phg_eng_build_ops(e, e->pi, e->si, PHG_DIR_REVERT, &err) != 0) {
		revert_failed(e, &err);
		return;
	}
	phg_eng_ctx(e, e->pi, e->si);
	if (e->ops.n > 0)
		phg_log(PHG_LOG_INFO, &e->log, "reverting: %s", e->ops.v[0].label);
	phg_eng_run_ops(e, e->pi, e->si, PHG_DIR_REVERT, step_reverted);
}

static void finalize_ran(engine_t *e)
{
	if (e->failed_status == PHG_EINTERRUPTED) {
		phg_eng_interrupt(e);
		return;
	}
	if (e->failed_status != 0) {
		phg_eng_ctx(e, e->pi, e->si);
		phg_eng_report(e, PHG_LOG_ERROR, &e->step_err);
		phg_log(PHG_LOG_ERROR, &e->log,
		        "completing the plan failed; every phase is applied; run apply again to "
		        "finish");
		phg_eng_exit(e, PHG_EXIT_RUNTIME);
		return;
	}
	phg_eng_reconcile(e);
}

static void run_completed(engine_t *e)
{
	double secs = (double)(phg_eng_now_ms() - e->started_ms) / 1000.0;

	phg_eng_ctx(e, -1, -1);
	if (e->o->finalize)
		phg_log(PHG_LOG_INFO, &e->log, "plan finalized: every drop is done; the plan can no "
		                               "longer be rolled back past them");
	else
		phg_log(PHG_LOG_INFO, &e->log, "plan completed: %zu phase(s) applied in %.1f s",
		        e->plan->nphases, secs);
	if (e->final_deferred > 0)
		phg_log(PHG_LOG_INFO, &e->log, "%zu step(s) keep what they dropped until `phasegate "
		                               "finalize` (settings.finalize: manual); `phasegate "
		                               "rollback` restores everything until then",
		        e->final_deferred);
	phg_eng_exit_ok(e);
}

static void paused(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	phg_log(PHG_LOG_INFO, &e->log,
	        "stopped after phase \"%s\" as asked (--to); run apply again to continue",
	        e->plan->phases[e->to_idx].name);
	phg_eng_exit_ok(e);
}

/* GOAL_APPLY: the first phase up to --to that is not applied moves on by
 * one action: start it, take its backup, start its watch, start or run its
 * next step, verify it, stop its watch, record it applied. */
static void next_apply(engine_t *e)
{
	int pi, si;
	phg_err_t err;

	if (e->watch_failed) {
		phg_eng_gate_failed(e);
		return;
	}
	for (pi = 0; pi <= e->to_idx; pi++)
		if (e->ph[pi].state != PHG_PHASE_APPLIED)
			break;
	if (pi > e->to_idx) {
		if ((size_t)e->to_idx + 1 == e->plan->nphases) {
			e->goal = GOAL_FINALIZE;
			phg_eng_reconcile(e);
		} else {
			char note[256];

			snprintf(note, sizeof(note), "stopped after phase \"%s\" (--to)",
			         e->plan->phases[e->to_idx].name);
			e->goal = GOAL_END;
			phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, paused);
		}
		return;
	}
	e->pi = pi;
	phg_eng_ctx(e, pi, -1);
	if (e->ph[pi].state != PHG_PHASE_RUNNING) {
		phg_log(PHG_LOG_INFO, &e->log, "phase %d/%zu \"%s\": starting (%zu step(s))", pi + 1,
		        e->plan->nphases, e->plan->phases[pi].name, e->plan->phases[pi].nsteps);
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_RUNNING, NULL, phg_eng_reconcile);
		return;
	}
	for (si = 0; (size_t)si < e->plan->phases[pi].nsteps; si++) {
		int s = e->ph[pi].steps[si].state;

		if (s != PHG_STEP_APPLIED && s != PHG_STEP_FINALIZED)
			break;
	}
	if ((size_t)si < e->plan->phases[pi].nsteps) {
		/* steps remain: the watch runs while they do; the backup gate
		 * comes before the first of them */
		if (phg_eng_watch_start(e, pi) != 0) {
			phg_eng_gate_failed(e);
			return;
		}
		if (e->plan->phases[pi].backup && !e->ph[pi].backed_up) {
			int started = 0;

			/* a step that left something behind: the backup would not show
			 * the database as it was before the phase any more */
			for (int k = 0; (size_t)k < e->plan->phases[pi].nsteps; k++)
				if (phg_eng_step_needs_revert(&e->ph[pi].steps[k]))
					started = 1;
			if (!started) {
				phg_eng_backup_start(e, pi);
				return;
			}
		}
	}
	if ((size_t)si == e->plan->phases[pi].nsteps) {
		if (e->plan->phases[pi].verify.n > 0 && !e->ph[pi].verified) {
			phg_eng_verify_start(e, pi);
			return;
		}
		if (e->watch_on) {
			phg_eng_watch_stop(e, phg_eng_reconcile);
			return;
		}
		phg_log(PHG_LOG_INFO, &e->log, "phase \"%s\" applied", e->plan->phases[pi].name);
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_APPLIED, NULL, phg_eng_reconcile);
		return;
	}
	e->si = si;
	if (e->ph[pi].steps[si].state != PHG_STEP_RUNNING) {
		phg_eng_set_state(e, PHG_LVL_STEP, pi, si, PHG_STEP_RUNNING, NULL, phg_eng_reconcile);
		return;
	}
	phg_err_clear(&err);
	phg_eng_ctx(e, pi, si);
	if (phg_eng_build_ops(e, pi, si, PHG_DIR_APPLY, &err) != 0) {
		e->step_err = err;
		e->failed_status = PHG_ESTEP;
		phg_eng_fail(e, pi, si);
		return;
	}
	{
		size_t done = (size_t)e->ph[pi].steps[si].progress;

		if (done < e->ops.n)
			phg_log(PHG_LOG_INFO, &e->log, "%s%s", e->ops.v[done].label,
			        done > 0 ? " (resuming)" : "");
	}
	phg_eng_run_ops(e, pi, si, PHG_DIR_APPLY, step_ran);
}

/* GOAL_FINALIZE: the first applied step whose finalize ops have not all
 * committed runs them; an irreversible one is then recorded finalized; when
 * none is left the run is completed. */
static void next_finalize(engine_t *e)
{
	phg_err_t err;

	e->final_deferred = 0; /* counted again on every pass */

	for (size_t pi = 0; pi < e->plan->nphases; pi++) {
		for (size_t si = 0; si < e->plan->phases[pi].nsteps; si++) {
			step_rt_t *s = &e->ph[pi].steps[si];
			const phg_step_t *step = &e->plan->phases[pi].steps[si];

			if (s->state != PHG_STEP_APPLIED)
				continue;
			if (step->kind->final_irreversible && e->st->finalize == PHG_FINALIZE_MANUAL &&
			    !e->o->finalize && s->final_progress == 0) {
				/* left for `phasegate finalize`: revertible until then */
				e->final_deferred++;
				continue;
			}
			phg_err_clear(&err);
			if (phg_eng_build_ops(e, (int)pi, (int)si, PHG_DIR_FINALIZE, &err) != 0) {
				phg_eng_report(e, PHG_LOG_ERROR, &err);
				phg_eng_exit(e, PHG_EXIT_RUNTIME);
				return;
			}
			e->pi = (int)pi;
			e->si = (int)si;
			if ((size_t)s->final_progress < e->ops.n) {
				phg_eng_ctx(e, (int)pi, (int)si);
				phg_log(PHG_LOG_INFO, &e->log, "plan complete: %s",
				        e->ops.v[s->final_progress].label);
				phg_eng_run_ops(e, (int)pi, (int)si, PHG_DIR_FINALIZE, finalize_ran);
				return;
			}
			if (step->kind->final_irreversible && e->ops.n > 0) {
				phg_eng_set_state(e, PHG_LVL_STEP, (int)pi, (int)si, PHG_STEP_FINALIZED, NULL,
				                  phg_eng_reconcile);
				return;
			}
			/* e.g. a sync trigger's unused function dropped: still revertible */
		}
	}
	e->goal = GOAL_END;
	phg_eng_ctx(e, -1, -1);
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_COMPLETED,
	                  e->final_deferred > 0 ? "completed; finalize pending" : NULL, run_completed);
}

static void on_failure_done(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	e->goal = GOAL_END;
	if (e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN) {
		phg_log(PHG_LOG_WARN, &e->log,
		        "automatic rollback complete: every phase of this run was reverted%s%s%s%s",
		        e->kept ? "; " : "", e->kept ? e->kept_what : "",
		        e->kept ? " not undone" : "", e->kept ? e->kept_why : "");
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, e->step_err.msg,
		                  exit_rolled_back);
		return;
	}
	if (e->kept > 0)
		phg_log(PHG_LOG_WARN, &e->log,
		        "automatic rollback complete: phase \"%s\" was reverted; the database is as it "
		        "was before it, except that %s not undone%s%s",
		        e->plan->phases[e->failed_phase].name, e->kept_what, e->kept_why,
		        e->kept > 1 ? " (and others)" : "");
	else
		phg_log(PHG_LOG_WARN, &e->log,
		        "automatic rollback complete: phase \"%s\" was reverted; the database is as it "
		        "was before it",
		        e->plan->phases[e->failed_phase].name);
	snprintf(e->run_action, sizeof(e->run_action), "apply");
	phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg, exit_rolled_back);
}

/* The failure is recorded: what on_failure says to do about it. */
static void on_failure(engine_t *e)
{
	phg_err_t err;
	int lo;

	phg_eng_ctx(e, -1, -1);
	if (e->st->on_failure == PHG_ON_FAILURE_STOP) {
		/* nothing was rolled back: exit 4, "an operator must look" (3
		 * promises the rollback completed) */
		phg_log(PHG_LOG_ERROR, &e->log,
		        "on_failure is \"stop\": phase \"%s\" is left as it is (state failed), "
		        "nothing was rolled back; an operator must look: fix the cause and run "
		        "apply to retry the phase, or rollback to undo it",
		        e->plan->phases[e->failed_phase].name);
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	lo = e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? -1 : e->failed_phase - 1;
	phg_err_clear(&err);
	if (phg_eng_precheck_revert(e, e->failed_phase, lo, &err) != 0) {
		phg_eng_report(e, PHG_LOG_ERROR, &err);
		phg_log(PHG_LOG_ERROR, &e->log, "the automatic rollback is impossible; the run is "
		                                "left failed for an operator to look at");
		phg_eng_exit(e, PHG_EXIT_ROLLBACK_FAILED);
		return;
	}
	phg_log(PHG_LOG_WARN, &e->log, "on_failure %s: rolling back automatically",
	        e->st->on_failure == PHG_ON_FAILURE_ROLLBACK_PLAN ? "rollback-plan" : "rollback-phase");
	snprintf(e->run_action, sizeof(e->run_action), "rollback");
	e->rb_lo = lo;
	e->rb_end = END_AUTO;
	e->goal = GOAL_REVERT;
	phg_eng_reconcile(e);
}

/* GOAL_FAIL: the failure of phase failed_phase (at step fail_si, or in a
 * gate when -1) is recorded from the inside out -- the watch stopped, the
 * step's own partial work undone where its kind says so, the step, the
 * phase and the run marked failed -- then on_failure decides. */
static void next_fail(engine_t *e)
{
	int pi = e->failed_phase, si = e->fail_si;

	if (e->watch_on) {
		phg_eng_watch_stop(e, phg_eng_reconcile);
		return;
	}
	if (si >= 0) {
		step_rt_t *s = &e->ph[pi].steps[si];
		const phg_step_t *step = &e->plan->phases[pi].steps[si];

		e->pi = pi;
		e->si = si;
		phg_eng_ctx(e, pi, si);
		if (s->state == PHG_STEP_RUNNING) {
			phg_eng_set_state(e, PHG_LVL_STEP, pi, si,
			                  step->kind->clean_on_fail && (s->progress > 0 || s->op_started >= 0)
			                      ? PHG_STEP_REVERTING
			                      : PHG_STEP_FAILED,
			                  NULL, phg_eng_reconcile);
			return;
		}
		if (s->state == PHG_STEP_REVERTING && !e->fail_cleaned) {
			phg_err_t err;

			phg_err_clear(&err);
			if (phg_eng_build_ops(e, pi, si, PHG_DIR_REVERT, &err) != 0) {
				e->rb_lo = pi - 1;
				revert_failed(e, &err);
				return;
			}
			phg_log(PHG_LOG_INFO, &e->log, "undoing the failed step's own partial work");
			phg_eng_run_ops(e, pi, si, PHG_DIR_REVERT, step_cleaned);
			return;
		}
		if (s->state == PHG_STEP_REVERTING) {
			e->failed_status = PHG_ESTEP; /* the original failure stays the reason */
			phg_eng_set_state(e, PHG_LVL_STEP, pi, si, PHG_STEP_FAILED, NULL, phg_eng_reconcile);
			return;
		}
	}
	if (e->ph[pi].state == PHG_PHASE_RUNNING) {
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_FAILED, NULL, phg_eng_reconcile);
		return;
	}
	if (e->run_state != PHG_RUN_FAILED) {
		phg_eng_ctx(e, -1, -1);
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_FAILED, e->step_err.msg,
		                  phg_eng_reconcile);
		return;
	}
	on_failure(e);
}

static void rollback_done(engine_t *e)
{
	phg_eng_ctx(e, -1, -1);
	e->goal = GOAL_END;
	if (e->rb_lo < 0) {
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: every phase reverted%s%s%s%s",
		        e->kept ? "; " : "", e->kept ? e->kept_what : "",
		        e->kept ? " deliberately not undone" : "", e->kept ? e->kept_why : "");
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_ROLLED_BACK, "rolled back", phg_eng_exit_ok);
	} else {
		char note[256];

		snprintf(note, sizeof(note), "rolled back to phase \"%s\"",
		         e->plan->phases[e->rb_lo].name);
		phg_log(PHG_LOG_INFO, &e->log, "rollback complete: %s%s%s%s%s", note,
		        e->kept ? "; " : "", e->kept ? e->kept_what : "",
		        e->kept ? " deliberately not undone" : "", e->kept ? e->kept_why : "");
		phg_eng_set_state(e, PHG_LVL_RUN, 0, 0, PHG_RUN_INTERRUPTED, note, phg_eng_exit_ok);
	}
}

/* GOAL_REVERT: the last phase after rb_lo that is neither pending nor
 * rolled back moves back by one action: its last step that needs it enters
 * reverting, or has its row read back and its revert ops run, or the phase
 * is recorded rolled back.  None left: the revert's ending (the `rollback`
 * command's, or the automatic rollback's). */
static void next_revert(engine_t *e)
{
	phg_buf_t b;
	int pi;

	for (pi = (int)e->plan->nphases - 1; pi > e->rb_lo; pi--)
		if (e->ph[pi].state != PHG_PHASE_PENDING && e->ph[pi].state != PHG_PHASE_ROLLED_BACK)
			break;
	if (pi <= e->rb_lo) {
		if (e->rb_end == END_AUTO)
			on_failure_done(e);
		else
			rollback_done(e);
		return;
	}
	e->pi = pi;
	for (e->si = (int)e->plan->phases[pi].nsteps - 1; e->si >= 0; e->si--)
		if (phg_eng_step_needs_revert(&e->ph[pi].steps[e->si]))
			break;
	if (e->si < 0) {
		phg_eng_ctx(e, pi, -1);
		phg_log(PHG_LOG_INFO, &e->log, "phase rolled back");
		phg_eng_set_state(e, PHG_LVL_PHASE, pi, 0, PHG_PHASE_ROLLED_BACK, NULL,
		                  phg_eng_reconcile);
		return;
	}
	if (e->ph[pi].steps[e->si].state != PHG_STEP_REVERTING) {
		phg_eng_set_state(e, PHG_LVL_STEP, pi, e->si, PHG_STEP_REVERTING, NULL,
		                  phg_eng_reconcile);
		return;
	}
	phg_eng_act(e, ACT_RELOAD);
	phg_buf_init(&b, 4096);
	phg_store_step_select_sql(&b, e->schema_q, e->run_id, pi, e->si);
	phg_eng_queryb(e, &b, revert_memo_loaded);
}

void phg_eng_fail(engine_t *e, int pi, int si)
{
	char lbl[256];

	e->failed_phase = pi;
	e->fail_si = si;
	e->fail_cleaned = 0;
	if (si >= 0) {
		phg_eng_ctx(e, pi, si);
		phg_eng_report(e, PHG_LOG_ERROR, &e->step_err);
		phg_log(PHG_LOG_ERROR, &e->log, "%s failed", step_label(e, pi, si, lbl, sizeof(lbl)));
		phg_eng_event_json(e, "step_failed", e->step_err.msg, phg_eng_err_json(&e->step_err));
	}
	e->watch_failed = 0; /* the rollback that follows must not be stopped by it */
	e->goal = GOAL_FAIL;
	phg_eng_reconcile(e);
}

void phg_eng_reconcile(engine_t *e)
{
	if (e->shutting_down)
		return;
	phg_eng_act(e, ACT_IDLE);
	/* a stop request ends the run at the next safe point: this one (the
	 * failure being recorded is finished first: a resumed apply retries it) */
	if (e->stop_requested && e->goal != GOAL_FAIL) {
		phg_eng_interrupt(e);
		return;
	}
	switch (e->goal) {
	case GOAL_APPLY:
		next_apply(e);
		return;
	case GOAL_FINALIZE:
		next_finalize(e);
		return;
	case GOAL_FAIL:
		next_fail(e);
		return;
	case GOAL_REVERT:
		next_revert(e);
		return;
	case GOAL_END:
	default:
		return; /* the run's last transition is being written */
	}
}

