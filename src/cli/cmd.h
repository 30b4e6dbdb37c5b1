#ifndef PX_CLI_CMD_H
#define PX_CLI_CMD_H

#include <stdint.h>

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

/* "YYYY-MM" to [first ms of the month, first ms of the next) in UTC: 0, or PX_EPARSE for
 * anything else (period.c). */
int cli_parse_month(const char *s, int64_t *since_ms, int64_t *until_ms);

#define PX_VERSION "0.1.0"

#endif
