/*
 * plandir.h - a directory of plans (plandir.c): every command that takes
 * PLAN.yaml also takes a directory, whose plans run in file-name order.
 */
#ifndef PHG_PLANDIR_H
#define PHG_PLANDIR_H

#include "diag.h"
#include "engine.h"

/* Run command @cmd ("apply", "status", "current", ...) on the directory
 * @dir; the exit code of SPEC section 1. */
int phg_dir_cmd(const char *cmd, const char *dir, phg_run_opts_t *o, phg_diag_format_t vformat,
                const char *from, const char *attestation);

/* cli.c: `plan` and `apply --dry-run` of one plan, to stdout. */
int phg_cli_render(phg_plan_t *plan);
int phg_cli_dry_run(phg_plan_t *plan, const phg_run_opts_t *o);
/* cli.c: the plan of a command whose file is gone, by name (a stand-in:
 * only its name and database variable are real).  0, or exit 2. */
int phg_plan_stand_in(const char *name, const char *url_env, const char *env, phg_plan_t **out);

#endif /* PHG_PLANDIR_H */
