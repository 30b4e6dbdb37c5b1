/* What several subcommands do the same way: load the config, open the usage store for a
 * report, report a store error, read --timeout-ms. Each prints its own message, so the
 * commands' stderr text and exit codes stay one thing. */
#include "cli/cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <sysexits.h>
#include <unistd.h>

#include "config/config.h"
#include "store/store.h"

int cli_config_load(const char *path, struct px_config **cfg)
{
    char err[1024];
    if (px_config_load(path, cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return EX_CONFIG;
    }
    return EX_OK;
}

int cli_store_has_data(const struct px_config *cfg)
{
    return cfg->ch_url != NULL || access(cfg->sqlite_path, F_OK) == 0;
}

int cli_store_open_report(const char *cmd, const struct px_config *cfg, struct store **st)
{
    char err[1024];
    *st = NULL;
    if (!cli_store_has_data(cfg)) {
        return EX_OK;
    }
    if (store_open_reader(cfg, st, err, sizeof(err)) < 0) {
        fprintf(stderr, "privax %s: %s\n", cmd, err);
        return EX_UNAVAILABLE;
    }
    return EX_OK;
}

int cli_store_fail(const char *cmd, struct store *st)
{
    fprintf(stderr, "privax %s: %s store: %s\n", cmd, st->ops->name, store_errmsg(st));
    return EX_UNAVAILABLE;
}

int cli_parse_timeout_ms(const char *cmd, const char *arg, long *timeout_ms)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*end != '\0' || v < 1 || v > 600000) {
        fprintf(stderr, "privax %s: --timeout-ms must be 1..600000\n", cmd);
        return EX_USAGE;
    }
    *timeout_ms = v;
    return EX_OK;
}
