/*
 * main.c - phasegate's entry point.
 */
#include "cli.h"

int main(int argc, char **argv)
{
	return phg_cli_main(argc, argv);
}
