/*
 * fuzz_expand.c - libFuzzer target: ${VAR} expansion (http.c) on any
 * string, with a few variables set; its error messages must never quote a
 * value, and a failure must leave the buffer as it was.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"
#include "http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setenv("PHG_FUZZ_TOKEN", "s3cret-token-value", 1);
	setenv("PHG_FUZZ_EMPTY", "", 1);
	setenv("PHG_FUZZ_PORT", "8080", 1);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size + 1);
	phg_buf_t out;
	phg_err_t err;

	if (in == NULL)
		return 0;
	memcpy(in, data, size);
	in[size] = '\0';
	phg_buf_init(&out, 64 * 1024);
	phg_buf_adds(&out, "x");
	phg_err_clear(&err);
	if (phg_expand_env(in, &out, &err) != 0) {
		if (out.len != 1 || strstr(err.msg, "s3cret-token-value") != NULL)
			abort(); /* an error kept bytes, or quoted a value */
	}
	phg_buf_free(&out);
	free(in);
	return 0;
}
