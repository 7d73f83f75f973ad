/*
 * fuzz_plan_load.c - libFuzzer target: the plan loader on any bytes (YAML
 * parsing, the field tables, every step kind's check, the SQL parser on
 * every fragment, the canonical checksum), then environment selection and
 * the offline build of every step's ops, as `plan` does.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "plan.h"
#include "step.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FILE *devnull;
	phg_plan_t *plan = NULL;
	phg_err_t err;

	if (devnull == NULL)
		devnull = fopen("/dev/null", "w");
	phg_err_clear(&err);
	if (phg_plan_load_buffer("fuzz.yaml", (const char *)data, size, devnull, &plan, &err) != 0)
		return 0;
	if (plan->nenvs > 0)
		(void)phg_plan_select_env(plan, plan->envs[0].name, &err);
	for (size_t p = 0; p < plan->nphases; p++)
		for (size_t i = 0; i < plan->phases[p].nsteps; i++) {
			const phg_step_t *st = &plan->phases[p].steps[i];

			for (int dir = PHG_DIR_APPLY; dir <= PHG_DIR_FINALIZE; dir++) {
				phg_ops_t ops = {0};

				phg_err_clear(&err);
				(void)phg_step_build(plan, st, (phg_dir_t)dir, 1, NULL, NULL, &ops, &err);
				phg_ops_free(&ops);
			}
		}
	phg_plan_free(plan);
	return 0;
}
