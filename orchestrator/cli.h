/*
 * cli.h - the command line: parse argv, run the command, return the exit
 * code of SPEC section 1.
 */
#ifndef PHG_CLI_H
#define PHG_CLI_H

int phg_cli_main(int argc, char **argv);

#endif /* PHG_CLI_H */
