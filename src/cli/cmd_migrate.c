/* privax migrate: bring the configured usage store's schema to the newest version and apply
 * retention. ClickHouse: creates the database, llm_requests, the daily and monthly aggregate
 * tables with their materialized views, the operator views and schema_migrations, one
 * statement per HTTP request; every statement is idempotent, so running it twice changes
 * nothing, and a table an operator dropped is created again. Then drops month partitions
 * older than store.retention_months. SQLite: the schema is migrated when the file is opened;
 * retention deletes older rows. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>

#include "cli/cmd.h"
#include "config/config.h"
#include "store/store.h"

static void migrate_help(FILE *out)
{
    fprintf(out, "usage: privax migrate --config FILE [--json]\n"
                 "\n"
                 "Create or update the usage store's schema (SQLite, or ClickHouse when\n"
                 "store.clickhouse is configured) and drop data older than\n"
                 "store.retention_months (default 18). Safe to run any number of times.\n");
}

int cli_cmd_migrate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    int json = 0;
    int opt;
    char err[1024];
    struct px_config *cfg = NULL;
    struct store *st = NULL;
    int rc = EX_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:jh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            migrate_help(stdout);
            return EX_OK;
        default:
            migrate_help(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc || config_path == NULL) {
        fprintf(stderr, "privax migrate: --config FILE is required\n");
        return EX_USAGE;
    }
    if (cli_config_load(config_path, &cfg) != EX_OK) {
        return EX_CONFIG;
    }
    const struct store_ops *ops = store_ops_for(cfg);
    if (ops->open(&st, cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "privax migrate: %s\n", err);
        rc = EX_UNAVAILABLE;
        goto out;
    }
    struct store_migrate_result res;
    if (ops->migrate(st, cfg, &res) < 0) {
        fprintf(stderr, "privax migrate: %s store: %s\n", ops->name, store_errmsg(st));
        rc = EX_UNAVAILABLE;
        goto out;
    }
    char cut[16];
    time_t cut_s = (time_t)(res.retention_cut_ms / 1000);
    struct tm tm;
    gmtime_r(&cut_s, &tm);
    if (strftime(cut, sizeof(cut), "%Y-%m-%d", &tm) == 0) {
        cut[0] = '\0';
    }
    if (json) {
        json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:s,s:I}", "store", ops->name, "target",
                              cfg->ch_url ? cfg->ch_database : cfg->sqlite_path, "version_before",
                              res.version_before, "version_after", res.version_after, "statements",
                              res.statements, "retention_months", cfg->retention_months,
                              "retention_cut", cut, "removed", (json_int_t)res.removed);
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\n");
        json_decref(j);
    } else {
        printf("%s %s: schema version %d -> %d (%d statements)\n", ops->name,
               cfg->ch_url ? cfg->ch_database : cfg->sqlite_path, res.version_before,
               res.version_after, res.statements);
        printf("retention: %d months, data before %s removed (%" PRId64 " %s)\n",
               cfg->retention_months, cut, res.removed, cfg->ch_url ? "partitions" : "rows");
    }
out:
    store_close(st);
    px_config_free(cfg);
    return rc;
}
