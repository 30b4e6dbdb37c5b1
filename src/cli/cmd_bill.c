/* privax bill: the bill for one calendar month (UTC), per tenant and per tier, from the usage
 * store's monthly totals (ClickHouse: the llm_usage_monthly aggregate; SQLite: the rows).
 *
 * Per tenant: the tier (pinned in config, else the tier of the tenant's latest row, else the
 * default tier), tokens used, the monthly allowance (tenant override, else the tier's), tokens
 * over it, the tier's base price, the overage charge and the total. Overage is charged pro
 * rata at the tier's overage_gbp_per_million (PRODUCT.md: GBP 5 per 1M), rounded to the
 * nearest penny (halves up), and only for tiers with overage: bill; a tier that blocks at the
 * allowance is charged no overage (tokens past it, admitted while in flight, are shown).
 * Tenants pinned to a tier in config pay the base price even in a month without usage.
 * All money is integer pence; --json gives pence and GBP strings. */
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
#include "store/store.h"

struct bill_line {
    char tenant[USAGE_ID_MAX + 1]; /* tenant id */
    size_t tier;                   /* index into cfg->tiers */
    int64_t requests;              /* requests in the month */
    int64_t tokens;                /* total tokens in the month */
    int64_t allowance;             /* monthly tokens included */
    int64_t overage_tokens;        /* tokens over the allowance */
    int64_t base_pence;            /* the tier's monthly price */
    int64_t overage_pence;         /* charge for the overage */
    int64_t total_pence;           /* base + overage */
};

static void bill_help(FILE *out)
{
    fprintf(out, "usage: privax bill --config FILE --month YYYY-MM [--json]\n"
                 "\n"
                 "The month's bill per tenant (tier, tokens, allowance, overage tokens, base\n"
                 "price, overage charge at the tier's price per 1M tokens, pro rata, total)\n"
                 "and the revenue per tier.\n");
}

static void gbp(char *out, size_t cap, int64_t pence)
{
    snprintf(out, cap, "%" PRId64 ".%02d", pence / 100, (int)(pence % 100));
}

static void price(const struct px_config *cfg, struct bill_line *b)
{
    const struct px_tier_cfg *t = &cfg->tiers[b->tier];
    b->overage_tokens = b->tokens > b->allowance ? b->tokens - b->allowance : 0;
    b->base_pence = t->price_pence;
    b->overage_pence = t->overage == PX_OVERAGE_BILL
                           ? store_overage_pence(b->overage_tokens, t->overage_pence_per_mtok)
                           : 0;
    b->total_pence = b->base_pence + b->overage_pence;
}

static int cmp_line(const void *a, const void *b)
{
    return strcmp(((const struct bill_line *)a)->tenant, ((const struct bill_line *)b)->tenant);
}

static int print_json(const struct px_config *cfg, const char *month, const struct bill_line *lines,
                      size_t n)
{
    char s[40];
    json_t *tenants = json_array();
    json_t *tiers = json_array();
    int64_t grand = 0;
    for (size_t i = 0; i < n; i++) {
        const struct bill_line *b = &lines[i];
        gbp(s, sizeof(s), b->total_pence);
        json_array_append_new(
            tenants,
            json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "tenant", b->tenant, "tier",
                      cfg->tiers[b->tier].name, "requests", (json_int_t)b->requests, "tokens",
                      (json_int_t)b->tokens, "allowance", (json_int_t)b->allowance,
                      "overage_tokens", (json_int_t)b->overage_tokens, "base_pence",
                      (json_int_t)b->base_pence, "overage_pence", (json_int_t)b->overage_pence,
                      "total_pence", (json_int_t)b->total_pence, "total_gbp", s));
        grand += b->total_pence;
    }
    for (size_t t = 0; t < cfg->ntiers; t++) {
        int64_t ntenants = 0, tokens = 0, over = 0, base = 0, overp = 0;
        for (size_t i = 0; i < n; i++) {
            if (lines[i].tier == t) {
                ntenants++;
                tokens += lines[i].tokens;
                over += lines[i].overage_tokens;
                base += lines[i].base_pence;
                overp += lines[i].overage_pence;
            }
        }
        gbp(s, sizeof(s), base + overp);
        json_array_append_new(tiers, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "tier",
                                               cfg->tiers[t].name, "tenants", (json_int_t)ntenants,
                                               "tokens", (json_int_t)tokens, "overage_tokens",
                                               (json_int_t)over, "base_pence", (json_int_t)base,
                                               "overage_pence", (json_int_t)overp, "revenue_pence",
                                               (json_int_t)(base + overp), "revenue_gbp", s));
    }
    gbp(s, sizeof(s), grand);
    json_t *j = json_pack("{s:s,s:o,s:o,s:I,s:s}", "month", month, "tenants", tenants, "tiers",
                          tiers, "total_pence", (json_int_t)grand, "total_gbp", s);
    int rc = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    printf("\n");
    return rc == 0 ? EX_OK : EX_IOERR;
}

static void print_table(const struct px_config *cfg, const char *month,
                        const struct bill_line *lines, size_t n)
{
    char a[40], b[40], c[40];
    int64_t grand = 0;
    printf("bill for %s (GBP)\n\n", month);
    printf("%-24s %-12s %14s %14s %14s %10s %10s %10s\n", "tenant", "tier", "tokens", "allowance",
           "overage_tok", "base", "overage", "total");
    for (size_t i = 0; i < n; i++) {
        const struct bill_line *l = &lines[i];
        gbp(a, sizeof(a), l->base_pence);
        gbp(b, sizeof(b), l->overage_pence);
        gbp(c, sizeof(c), l->total_pence);
        printf("%-24s %-12s %14" PRId64 " %14" PRId64 " %14" PRId64 " %10s %10s %10s\n", l->tenant,
               cfg->tiers[l->tier].name, l->tokens, l->allowance, l->overage_tokens, a, b, c);
        grand += l->total_pence;
    }
    printf("\n%-12s %8s %14s %10s %10s %10s\n", "tier", "tenants", "tokens", "base", "overage",
           "revenue");
    for (size_t t = 0; t < cfg->ntiers; t++) {
        int64_t nt = 0, tokens = 0, base = 0, overp = 0;
        for (size_t i = 0; i < n; i++) {
            if (lines[i].tier == t) {
                nt++;
                tokens += lines[i].tokens;
                base += lines[i].base_pence;
                overp += lines[i].overage_pence;
            }
        }
        gbp(a, sizeof(a), base);
        gbp(b, sizeof(b), overp);
        gbp(c, sizeof(c), base + overp);
        printf("%-12s %8" PRId64 " %14" PRId64 " %10s %10s %10s\n", cfg->tiers[t].name, nt, tokens,
               a, b, c);
    }
    gbp(a, sizeof(a), grand);
    printf("\ntotal revenue: %s\n", a);
}

int cli_cmd_bill(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"month", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *month = NULL;
    int json = 0;
    int opt;
    struct px_config *cfg = NULL;
    struct store *st = NULL;
    struct store_usage_row *rows = NULL;
    struct bill_line *lines = NULL;
    size_t nrows = 0;
    int64_t since_ms;
    int64_t until_ms;
    int rc = EX_OK;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:m:jh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'm':
            month = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            bill_help(stdout);
            return EX_OK;
        default:
            bill_help(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc || config_path == NULL || month == NULL) {
        fprintf(stderr, "privax bill: --config FILE and --month YYYY-MM are required\n");
        return EX_USAGE;
    }
    if (cli_parse_month(month, &since_ms, &until_ms) < 0) {
        fprintf(stderr, "privax bill: --month must be YYYY-MM (e.g. 2025-03), got '%s'\n", month);
        return EX_USAGE;
    }
    if ((rc = cli_config_load(config_path, &cfg)) != EX_OK ||
        (rc = cli_store_open_report("bill", cfg, &st)) != EX_OK) {
        goto out;
    }
    if (st != NULL) {
        struct store_usage_query q = {
            .since_ms = since_ms, .until_ms = until_ms, .by = STORE_BY_TENANT};
        if (store_totals(st, &q, &rows, &nrows) < 0) {
            rc = cli_store_fail("bill", st);
            goto out;
        }
    }
    lines = calloc(nrows + cfg->ntenants + 1, sizeof(*lines));
    if (lines == NULL) {
        rc = EX_OSERR;
        goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < nrows; i++) {
        if (!store_tenant_billable(cfg, rows[i].tenant_id, rows[i].requests, rows[i].errors)) {
            continue;
        }
        snprintf(lines[n].tenant, sizeof(lines[n].tenant), "%s", rows[i].tenant_id);
        lines[n].tier =
            store_tenant_plan(cfg, rows[i].tenant_id, rows[i].plan_tier, &lines[n].allowance);
        lines[n].requests = rows[i].requests;
        lines[n].tokens = rows[i].total_tokens;
        n++;
    }
    /* Pinned tenants subscribe whether they used anything or not. */
    for (size_t t = 0; t < cfg->ntenants; t++) {
        int seen = 0;
        for (size_t i = 0; i < nrows && !seen; i++) {
            seen = strcmp(rows[i].tenant_id, cfg->tenants[t].id) == 0;
        }
        if (!seen && cfg->tenants[t].pinned) {
            snprintf(lines[n].tenant, sizeof(lines[n].tenant), "%s", cfg->tenants[t].id);
            lines[n].tier = store_tenant_plan(cfg, cfg->tenants[t].id, NULL, &lines[n].allowance);
            n++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        price(cfg, &lines[i]);
    }
    qsort(lines, n, sizeof(*lines), cmp_line);
    if (json) {
        rc = print_json(cfg, month, lines, n);
    } else {
        print_table(cfg, month, lines, n);
    }
out:
    free(lines);
    free(rows);
    store_close(st);
    px_config_free(cfg);
    return rc;
}
