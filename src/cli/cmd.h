#ifndef PX_CLI_CMD_H
#define PX_CLI_CMD_H

/* Subcommand handlers: each lives in cmd_<name>.c, gets argv after the subcommand name
 * (argv[0] is the subcommand) and returns a <sysexits.h> code. */

int cli_cmd_serve(int argc, char **argv);
int cli_cmd_sim(int argc, char **argv);
int cli_cmd_usage(int argc, char **argv);
int cli_cmd_bill(int argc, char **argv);
int cli_cmd_migrate(int argc, char **argv);
int cli_cmd_config(int argc, char **argv);
int cli_cmd_nodes(int argc, char **argv);
int cli_cmd_scale(int argc, char **argv);

#define PX_VERSION "0.1.0"

#endif
