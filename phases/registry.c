/*
 * registry.c - the one table of step kinds.  Adding a step kind is one file
 * in phases/ and one line here.
 */
#include "step.h"

#include <string.h>

extern const phg_step_kind_t phg_kind_add_column;
extern const phg_step_kind_t phg_kind_drop_column;
extern const phg_step_kind_t phg_kind_rename_column;
extern const phg_step_kind_t phg_kind_set_not_null;
extern const phg_step_kind_t phg_kind_backfill;
extern const phg_step_kind_t phg_kind_create_index;
extern const phg_step_kind_t phg_kind_add_check;
extern const phg_step_kind_t phg_kind_add_foreign_key;
extern const phg_step_kind_t phg_kind_sync_trigger;
extern const phg_step_kind_t phg_kind_http;
extern const phg_step_kind_t phg_kind_sql;
extern const phg_step_kind_t phg_kind_set_default;
extern const phg_step_kind_t phg_kind_drop_default;
extern const phg_step_kind_t phg_kind_drop_index;
extern const phg_step_kind_t phg_kind_drop_constraint;
extern const phg_step_kind_t phg_kind_rename_table;
extern const phg_step_kind_t phg_kind_create_table;
extern const phg_step_kind_t phg_kind_drop_table;
extern const phg_step_kind_t phg_kind_alter_column_type;
extern const phg_step_kind_t phg_kind_create_enum;
extern const phg_step_kind_t phg_kind_add_enum_value;

const phg_step_kind_t *const phg_step_kinds[] = {
	&phg_kind_add_column,
	&phg_kind_drop_column,
	&phg_kind_rename_column,
	&phg_kind_set_not_null,
	&phg_kind_backfill,
	&phg_kind_create_index,
	&phg_kind_add_check,
	&phg_kind_add_foreign_key,
	&phg_kind_sync_trigger,
	&phg_kind_http,
	&phg_kind_sql,
	&phg_kind_set_default,
	&phg_kind_drop_default,
	&phg_kind_drop_index,
	&phg_kind_drop_constraint,
	&phg_kind_rename_table,
	&phg_kind_create_table,
	&phg_kind_drop_table,
	&phg_kind_alter_column_type,
	&phg_kind_create_enum,
	&phg_kind_add_enum_value,
	NULL,
};

const phg_step_kind_t *phg_step_kind_find(const char *name)
{
	for (size_t i = 0; phg_step_kinds[i] != NULL; i++)
		if (strcmp(phg_step_kinds[i]->name, name) == 0)
			return phg_step_kinds[i];
	return NULL;
}
