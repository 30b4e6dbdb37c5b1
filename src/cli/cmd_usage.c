/* privax usage: usage for a period (a calendar month in UTC by default, or --since/--until)
 * from the usage store, per tenant (default), node, model or day, as a table or, with --json,
 * an array of objects built with jansson. Reads only: when the SQLite file does not exist yet
 * the report is empty and no file is created. The same query runs on SQLite and ClickHouse
 * (store usage op), so both stores print the same report. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "cli/cmd.h"
#include "config/config.h"
#include "core/err.h"
#include "core/util.h"
#include "store/store.h"

/* One report line: the store's aggregate plus what the config says the tenant may use. */
struct usage_line {
    const struct store_usage_row *row; /* borrowed from the store's result */
    int64_t allowance;                 /* monthly tokens allowed, 0 when the tier is unknown */
    double used_pct;                   /* total_tokens / allowance * 100, 1 decimal */
};

/* Round a non-negative value to one decimal (without libm). */
static double round1(double x)
{
    return (double)(int64_t)(x * 10 + 0.5) / 10;
}

static void usage_help(FILE *out)
{
    fprintf(out,
            "usage: privax usage --config FILE [--tenant T] [--by tenant|node|model|day]\n"
            "                    [--month YYYY-MM | --since DATE [--until DATE]] [--json]\n"
            "\n"
            "Usage for one calendar month (UTC; default: the current month) or a period:\n"
            "requests, prompt/completion/total tokens, errors, average and p95 latency; per\n"
            "tenant also the tier's monthly allowance and the share of it used.\n"
            "\n"
            "  --config FILE    the gateway's config (for the store and the tiers)\n"
            "  --tenant T       only this tenant\n"
            "  --by G           group by tenant (default), node, model or day (UTC)\n"
            "  --month YYYY-MM  the month to report\n"
            "  --since DATE     from DATE (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC), inclusive\n"
            "  --until DATE     to DATE, exclusive (default: no end)\n"
            "  --json           a JSON array of objects instead of a table\n");
}

/* "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SS[Z]" (UTC) to ms. Rejects anything else. */
static int parse_date(const char *s, int64_t *ms)
{
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%d", &tm);
    if (end == NULL) {
        return PX_EPARSE;
    }
    if (*end == 'T') {
        end = strptime(end + 1, "%H:%M:%S", &tm);
        if (end == NULL) {
            return PX_EPARSE;
        }
        end += *end == 'Z';
    }
    if (*end != '\0' || tm.tm_year < 70) {
        return PX_EPARSE;
    }
    /* strptime takes 2026-02-30 and 23:59:60; timegm would roll them into the next day.
     * A date that does not come back unchanged is not a real one. */
    struct tm want = tm;
    time_t t = timegm(&tm);
    if (tm.tm_mday != want.tm_mday || tm.tm_mon != want.tm_mon || tm.tm_year != want.tm_year ||
        tm.tm_hour != want.tm_hour || tm.tm_min != want.tm_min || tm.tm_sec != want.tm_sec) {
        return PX_EPARSE;
    }
    *ms = (int64_t)t * 1000;
    return 0;
}

static void current_month(char out[8])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    /* strftime rather than snprintf: the compiler cannot bound tm fields for %d. */
    if (strftime(out, 8, "%Y-%m", &tm) != 7) {
        out[0] = '\0';
    }
}

static const char *const group_names[] = {"tenant", "node", "model", "day"};

static int print_json(const struct usage_line *lines, size_t n, enum store_group by)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const struct store_usage_row *r = lines[i].row;
        json_t *o = json_object();
        json_object_set_new(o, group_names[by], json_string(r->key));
        if (by == STORE_BY_TENANT) {
            json_object_set_new(o, "tier", json_string(r->plan_tier));
        }
        json_object_set_new(o, "requests", json_integer(r->requests));
        json_object_set_new(o, "prompt_tokens", json_integer(r->prompt_tokens));
        json_object_set_new(o, "completion_tokens", json_integer(r->completion_tokens));
        json_object_set_new(o, "total_tokens", json_integer(r->total_tokens));
        json_object_set_new(o, "errors", json_integer(r->errors));
        json_object_set_new(o, "avg_latency_ms", json_real(round1(r->avg_latency_ms)));
        json_object_set_new(o, "p95_latency_ms", json_integer((json_int_t)r->p95_latency_ms));
        if (by == STORE_BY_TENANT) {
            json_object_set_new(o, "allowance", json_integer(lines[i].allowance));
            json_object_set_new(o, "used_pct", json_real(lines[i].used_pct));
            json_object_set_new(o, "overage_tokens", json_integer(r->overage_tokens));
        }
        json_array_append_new(arr, o);
    }
    int rc =
        json_dumpf(arr, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    json_decref(arr);
    if (rc != 0) {
        return EX_IOERR;
    }
    printf("\n");
    return EX_OK;
}

#define USAGE_NCOLS 12

static int print_table(const struct usage_line *lines, size_t n, const char *period,
                       enum store_group by)
{
    const char *head[USAGE_NCOLS] = {
        group_names[by],     "tier",         "requests", "prompt_tokens",
        "completion_tokens", "total_tokens", "errors",   "avg_latency_ms",
        "p95_latency_ms",    "allowance",    "used_pct", "overage_tokens",
    };
    /* Tier, allowance, used_pct and overage are per-tenant figures. */
    int ncols = by == STORE_BY_TENANT ? USAGE_NCOLS : USAGE_NCOLS - 4;
    if (by != STORE_BY_TENANT) {
        for (int c = 1; c < ncols; c++) {
            head[c] = head[c + 1];
        }
    }
    int width[USAGE_NCOLS];
    for (int c = 0; c < ncols; c++) {
        width[c] = (int)strlen(head[c]);
    }
    /* Cells are formatted twice (widths, then output) rather than stored: n is small and
     * this keeps every buffer fixed-size. */
    char cell[USAGE_NCOLS][160];
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            for (int c = 0; c < ncols; c++) {
                printf(c == 0 ? "%-*s" : "  %*s", width[c], head[c]);
            }
            printf("\n");
        }
        for (size_t i = 0; i < n; i++) {
            const struct store_usage_row *r = lines[i].row;
            /* Rows refused before the tenant or model was known group under an empty key. */
            snprintf(cell[0], sizeof(cell[0]), "%s", r->key[0] ? r->key : "(none)");
            snprintf(cell[1], sizeof(cell[1]), "%s", r->plan_tier);
            snprintf(cell[2], sizeof(cell[2]), "%" PRId64, r->requests);
            snprintf(cell[3], sizeof(cell[3]), "%" PRId64, r->prompt_tokens);
            snprintf(cell[4], sizeof(cell[4]), "%" PRId64, r->completion_tokens);
            snprintf(cell[5], sizeof(cell[5]), "%" PRId64, r->total_tokens);
            snprintf(cell[6], sizeof(cell[6]), "%" PRId64, r->errors);
            snprintf(cell[7], sizeof(cell[7]), "%.1f", r->avg_latency_ms);
            snprintf(cell[8], sizeof(cell[8]), "%.0f", r->p95_latency_ms);
            snprintf(cell[9], sizeof(cell[9]), "%" PRId64, lines[i].allowance);
            snprintf(cell[10], sizeof(cell[10]), "%.1f%%", lines[i].used_pct);
            snprintf(cell[11], sizeof(cell[11]), "%" PRId64, r->overage_tokens);
            if (by != STORE_BY_TENANT) {
                memmove(cell[1], cell[2], sizeof(cell[0]) * (USAGE_NCOLS - 2));
            }
            for (int c = 0; c < ncols; c++) {
                if (pass == 0) {
                    int w = (int)strlen(cell[c]);
                    width[c] = w > width[c] ? w : width[c];
                } else {
                    printf(c == 0 ? "%-*s" : "  %*s", width[c], cell[c]);
                }
            }
            if (pass == 1) {
                printf("\n");
            }
        }
    }
    if (n == 0) {
        printf("(no usage in %s)\n", period);
    }
    return EX_OK;
}

int cli_cmd_usage(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"tenant", required_argument, NULL, 't'},
        {"month", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'},
        {"by", required_argument, NULL, 'b'},
        {"since", required_argument, NULL, 's'},
        {"until", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *tenant = NULL;
    const char *month_arg = NULL;
    const char *since_arg = NULL;
    const char *until_arg = NULL;
    char period[80];
    enum store_group by = STORE_BY_TENANT;
    int json = 0;
    int opt;
    struct px_config *cfg = NULL;
    struct store *st = NULL;
    struct store_usage_row *rows = NULL;
    struct usage_line *lines = NULL;
    size_t nrows = 0;
    int64_t since_ms;
    int64_t until_ms;
    int rc;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:t:m:jb:s:u:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            tenant = optarg;
            break;
        case 'm':
            month_arg = optarg;
            break;
        case 's':
            since_arg = optarg;
            break;
        case 'u':
            until_arg = optarg;
            break;
        case 'b': {
            int found = -1;
            for (int g = 0; g < 4; g++) {
                found = strcmp(optarg, group_names[g]) == 0 ? g : found;
            }
            if (found < 0) {
                fprintf(stderr, "privax usage: --by must be tenant, node, model or day\n");
                return EX_USAGE;
            }
            by = (enum store_group)found;
            break;
        }
        case 'j':
            json = 1;
            break;
        case 'h':
            usage_help(stdout);
            return EX_OK;
        default:
            usage_help(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc || config_path == NULL) {
        fprintf(stderr, "privax usage: %s\n",
                config_path ? "unexpected argument" : "--config FILE is required");
        usage_help(stderr);
        return EX_USAGE;
    }
    if (month_arg && (since_arg || until_arg)) {
        fprintf(stderr, "privax usage: give --month or --since/--until, not both\n");
        return EX_USAGE;
    }
    if (since_arg || until_arg) {
        since_ms = 0;
        until_ms = INT64_MAX;
        if ((since_arg && parse_date(since_arg, &since_ms) < 0) ||
            (until_arg && parse_date(until_arg, &until_ms) < 0)) {
            fprintf(stderr, "privax usage: --since/--until must be YYYY-MM-DD or "
                            "YYYY-MM-DDTHH:MM:SSZ (UTC)\n");
            return EX_USAGE;
        }
        if (since_ms > until_ms) {
            fprintf(stderr, "privax usage: --since %s is after --until %s\n", since_arg, until_arg);
            return EX_USAGE;
        }
        snprintf(period, sizeof(period), "%s .. %s", since_arg ? since_arg : "the start",
                 until_arg ? until_arg : "now");
    } else {
        char month[8];
        if (month_arg == NULL) {
            current_month(month);
        } else if (strlen(month_arg) < sizeof(month)) {
            memcpy(month, month_arg, strlen(month_arg) + 1);
        } else {
            month[0] = '\0';
        }
        if (cli_parse_month(month, &since_ms, &until_ms) < 0) {
            fprintf(stderr, "privax usage: --month must be YYYY-MM (e.g. 2025-03), got '%s'\n",
                    month_arg);
            return EX_USAGE;
        }
        snprintf(period, sizeof(period), "%s", month);
    }

    if ((rc = cli_config_load(config_path, &cfg)) != EX_OK ||
        (rc = cli_store_open_report("usage", cfg, &st)) != EX_OK) {
        goto out;
    }
    if (st != NULL) {
        struct store_usage_query q = {
            .tenant_id = tenant, .since_ms = since_ms, .until_ms = until_ms, .by = by};
        if (store_usage(st, &q, &rows, &nrows) < 0) {
            rc = cli_store_fail("usage", st);
            goto out;
        }
    }
    lines = calloc(nrows ? nrows : 1, sizeof(*lines));
    if (lines == NULL) {
        rc = EX_OSERR;
        goto out;
    }
    for (size_t i = 0; i < nrows; i++) {
        lines[i].row = &rows[i];
        if (by == STORE_BY_TENANT) {
            store_tenant_plan(cfg, rows[i].tenant_id, rows[i].plan_tier, &lines[i].allowance);
        }
        lines[i].used_pct =
            lines[i].allowance > 0
                ? round1((double)rows[i].total_tokens * 100.0 / (double)lines[i].allowance)
                : 0;
    }
    rc = json ? print_json(lines, nrows, by) : print_table(lines, nrows, period, by);
out:
    free(lines);
    free(rows);
    store_close(st);
    px_config_free(cfg);
    return rc;
}
