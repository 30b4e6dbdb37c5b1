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

/* Helpers shared by the subcommands (common.c). Each prints its own error to stderr and
 * returns a <sysexits.h> code; the main thread calls them. */

struct px_config;
struct store;

/* Load the config at path (borrowed). EX_OK and *cfg (owned by the caller, free with
 * px_config_free), or EX_CONFIG after printing the loader's "FILE:LINE: message". */
int cli_config_load(const char *path, struct px_config **cfg);

/* 1 when cfg's usage store may hold rows: ClickHouse is configured or the SQLite file
 * exists. A SQLite store that was never written to has no usage, and reports do not create
 * it to say so. */
int cli_store_has_data(const struct px_config *cfg);

/* Open cfg's usage store for a report by subcommand cmd ("usage", "bill"). EX_OK with *st
 * (owned by the caller, close with store_close), or with *st NULL when cli_store_has_data()
 * is 0; EX_UNAVAILABLE after printing "privax CMD: message". */
int cli_store_open_report(const char *cmd, const struct px_config *cfg, struct store **st);

/* Print "privax CMD: NAME store: message" for the last failure on st (borrowed) and return
 * EX_UNAVAILABLE. */
int cli_store_fail(const char *cmd, struct store *st);

/* --timeout-ms: EX_OK and *timeout_ms for a decimal 1..600000, else EX_USAGE after printing
 * "privax CMD: --timeout-ms must be 1..600000". */
int cli_parse_timeout_ms(const char *cmd, const char *arg, long *timeout_ms);

#define PX_VERSION "0.1.0"

#endif
