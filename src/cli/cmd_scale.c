/* privax scale: should we add a node? Reads every node's /health and /metrics and the usage
 * store, evaluates the seed's four triggers (src/ops/scale.h, docs/internals/scale.md) and
 * prints each value with its threshold and verdict, then the capacity and cost of N and N+1
 * nodes against this month's revenue (counted the way privax bill counts it).
 *
 *   privax scale --nodes FILE [--config FILE] [--json] [--timeout-ms N] [--now-ms MS]
 *
 * Without --config the thresholds and cost figures are the defaults and no store is read
 * (the store-based triggers are then unknown). Exit 0 with a report; 69 when the store could
 * not be read (the report is still printed, those triggers unknown); 64/78 for bad input. */
#include <curl/curl.h>
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
#include "core/buf.h"
#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"
#include "ops/fetch.h"
#include "ops/nodes.h"
#include "ops/promtext.h"
#include "ops/scale.h"
#include "store/store.h"

#define BODY_MAX (16 * 1024 * 1024) /* bytes of one /health or /metrics answer */
#define DAY_MS   INT64_C(86400000)

static void scale_help(FILE *out)
{
    fprintf(out,
            "usage: privax scale --nodes FILE [--config FILE] [--json] [--timeout-ms N]\n"
            "                    [--now-ms MS]\n"
            "\n"
            "Should another node be added? Evaluates the seed's triggers from the nodes'\n"
            "/health and /metrics and the usage store: sustained GPU utilisation, hourly p95\n"
            "queue delay, tokens this month, concurrent users; each with its value, threshold\n"
            "and verdict; then the capacity and cost of N and N+1 nodes against this month's\n"
            "revenue. Thresholds and cost figures: the config's scale section.\n"
            "\n"
            "  --nodes FILE     the nodes inventory (as for privax nodes)\n"
            "  --config FILE    a node's config: the store to read, tiers, scale figures\n"
            "  --json           a JSON object instead of the tables\n"
            "  --timeout-ms N   per-node HTTP timeout (default 5000)\n"
            "  --now-ms MS      evaluate the store as of this unix time in ms (default now)\n");
}

struct node_view {
    const struct ops_node *node;
    const char *status; /* ok | degraded | down | unreachable | error */
    int64_t inflight;   /* -1 unknown */
    int64_t queue;      /* -1 unknown */
    double queued_over; /* share of queue waits over the queue threshold since start, or -1 */
    json_t *gpus;       /* [{gpu_id, now_pct, sustained_pct, samples}] */
};

static const char *status_of(const struct ops_fetch *f, json_t *h)
{
    const char *st = json_string_value(json_object_get(h, "status"));
    if (f->status == 0) {
        return "unreachable";
    }
    if (f->status == 503 || (st != NULL && strcmp(st, "down") == 0)) {
        return "down";
    }
    if (f->status != 200 || st == NULL) {
        return "error";
    }
    return strcmp(st, "degraded") == 0 ? "degraded" : "ok";
}

/* GPUs of one node: levels into in, a summary into v->gpus. */
static void node_gpus(const struct px_config *cfg, json_t *h, struct node_view *v,
                      struct scale_inputs *in)
{
    json_t *gpu = json_object_get(h, "gpu");
    json_t *iv = json_object_get(gpu, "interval_ms");
    uint64_t interval_ms =
        json_is_integer(iv) && json_integer_value(iv) > 0 ? (uint64_t)json_integer_value(iv) : 0;
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(h, "gpus"), i, g)
    {
        json_t *hist = json_object_get(g, "utilization_history_pct");
        size_t n = json_array_size(hist);
        double *d = px_malloc((n ? n : 1) * sizeof(*d));
        for (size_t k = 0; k < n; k++) {
            json_t *x = json_array_get(hist, k);
            d[k] = json_is_number(x) ? json_number_value(x) : -1;
        }
        double level = -1;
        size_t known = 0;
        in->gpus_total++;
        if (scale_gpu_level(d, n, interval_ms, cfg->scale_gpu_window_s, &level, &known) == 0) {
            in->gpus_known++;
            in->gpu_level_sum += level;
        }
        free(d);
        json_t *now = json_object_get(g, "utilization_pct");
        json_array_append_new(
            v->gpus,
            json_pack("{s:O,s:o,s:o,s:I}", "gpu_id", json_object_get(g, "gpu_id"), "now_pct",
                      json_is_number(now) ? json_copy(now) : json_null(), "sustained_pct",
                      level >= 0 ? json_real(level) : json_null(), "samples", (json_int_t)known));
    }
}

static int64_t prom_value(const struct ops_fetch *m, const char *name, const char *const *match)
{
    double v;
    if (m->status != 200 ||
        ops_prom_sum(m->body.data ? m->body.data : "", m->body.len, name, match, &v) == 0) {
        return -1;
    }
    return (int64_t)v;
}

/* The share of queue waits over the threshold since the node started, from the histogram
 * bucket at the threshold (5 s is a bucket bound; another threshold takes the bound above). */
static double queued_over(const struct ops_fetch *m, int64_t threshold_ms)
{
    static const struct {
        int64_t ms;
        const char *le;
    } b[] = {{10, "0.01"},  {50, "0.05"},  {100, "0.1"},  {250, "0.25"},
             {500, "0.5"},  {1000, "1"},   {2500, "2.5"}, {5000, "5"},
             {10000, "10"}, {30000, "30"}, {60000, "60"}, {300000, "300"}};
    const char *le = NULL;
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]) && le == NULL; i++) {
        if (b[i].ms >= threshold_ms) {
            le = b[i].le;
        }
    }
    if (le == NULL) {
        return -1;
    }
    const char *const match[] = {"le", le, NULL};
    int64_t under = prom_value(m, "privax_queue_wait_seconds_bucket", match);
    int64_t count = prom_value(m, "privax_queue_wait_seconds_count", NULL);
    if (under < 0 || count <= 0) {
        return count == 0 ? 0 : -1;
    }
    return (double)(count - under) / (double)count;
}

/* ---- the store ------------------------------------------------------------------------- */

struct scan_ctx {
    struct scale_scan *scan;
};

static int on_row(void *ud, const struct store_scan_row *r)
{
    struct scan_ctx *c = ud;
    struct scale_row row = {
        .event_time_ms = r->event_time_ms,
        .latency_ms = r->latency_ms,
        .queue_ms = r->queue_ms,
        .served = r->backend[0] != '\0' || r->queue_ms > 0,
        .tenant_id = r->tenant_id,
        .user_id = r->user_id,
    };
    scale_scan_add(c->scan, &row); /* out-of-order rows (clock steps) are skipped */
    return 0;
}

struct month_figures {
    int64_t base_pence, overage_pence;
    size_t tenants;
};

/* Fill the store inputs. 0, or an error with a message in err. */
static int read_store(const struct px_config *cfg, int64_t now_ms, struct scale_inputs *in,
                      struct month_figures *mf, char *err, size_t errcap)
{
    struct store *st = NULL;
    struct store_usage_row *rows = NULL;
    struct scale_tenant_usage *tu = NULL;
    size_t nrows = 0;
    int rc;
    int64_t month0 = store_month_start_ms(now_ms, 0);
    int64_t month1 = store_month_start_ms(month0 + 32 * DAY_MS, 0);
    in->month_elapsed_ms = now_ms - month0;
    in->month_length_ms = month1 - month0;
    if (!cli_store_has_data(cfg)) {
        /* A store that was never written to: no usage, and nothing is created to say so. */
        in->store_known = 1;
        in->scan_known = 1;
        in->revenue_pence = scale_revenue_pence(cfg, NULL, 0, &mf->base_pence, &mf->overage_pence);
        return 0;
    }
    if ((rc = store_open_reader(cfg, &st, err, errcap)) < 0) {
        return rc;
    }
    struct store_usage_query q = {
        .since_ms = month0, .until_ms = now_ms + 1, .by = STORE_BY_TENANT};
    if ((rc = store_usage(st, &q, &rows, &nrows)) < 0) {
        snprintf(err, errcap, "%s store: %s", st->ops->name, store_errmsg(st));
        goto out;
    }
    tu = px_calloc(nrows ? nrows : 1, sizeof(*tu));
    for (size_t i = 0; i < nrows; i++) {
        tu[i].tenant_id = rows[i].tenant_id;
        tu[i].plan_tier = rows[i].plan_tier;
        tu[i].total_tokens = rows[i].total_tokens;
        tu[i].requests = rows[i].requests;
        tu[i].errors = rows[i].errors;
        in->month_tokens += rows[i].total_tokens;
    }
    in->revenue_pence = scale_revenue_pence(cfg, tu, nrows, &mf->base_pence, &mf->overage_pence);
    mf->tenants = nrows;
    in->store_known = 1;

    struct scan_ctx c = {.scan = scale_scan_new(cfg->scale_queue_ms, cfg->scale_users)};
    struct store_usage_query sq = {.since_ms = now_ms - cfg->scale_window_days * DAY_MS,
                                   .until_ms = now_ms + 1};
    rc = store_scan(st, &sq, on_row, &c);
    if (rc == 0) {
        scale_scan_finish(c.scan, cfg->scale_regular_pct, &in->scan);
        in->scan_known = 1;
    } else if (rc == -ENOSYS) {
        rc = 0; /* this store cannot list rows: those triggers stay unknown */
    } else {
        snprintf(err, errcap, "%s store: %s", st->ops->name, store_errmsg(st));
    }
    scale_scan_free(c.scan);
out:
    free(tu);
    free(rows);
    store_close(st);
    return rc;
}

/* ---- output ---------------------------------------------------------------------------- */

static void money(char *out, size_t cap, const char *sym, int64_t minor)
{
    snprintf(out, cap, "%s%" PRId64 ".%02d", sym, minor / 100, (int)(minor % 100));
}

static void value_text(char *out, size_t cap, const struct scale_trigger *t, double v)
{
    if (strcmp(t->unit, "%") == 0) {
        snprintf(out, cap, "%.1f%%", v);
    } else if (strcmp(t->unit, "tokens") == 0) {
        snprintf(out, cap, "%.0f", v);
    } else {
        snprintf(out, cap, "%.0f %s", v, t->unit);
    }
}

static json_t *money_json(int64_t minor)
{
    char s[48];
    money(s, sizeof(s), "", minor);
    return json_string(s);
}

static void print_json(const struct px_config *cfg, const char *nodes_path, int64_t now_ms,
                       struct node_view *v, size_t n, const struct scale_inputs *in,
                       const struct scale_report *r, const struct month_figures *mf,
                       const char *store_error)
{
    json_t *nodes = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(
            nodes,
            json_pack("{s:s,s:s,s:b,s:s,s:o,s:o,s:o,s:O}", "name", v[i].node->name, "url",
                      v[i].node->url, "backup", v[i].node->backup, "status", v[i].status,
                      "inflight", v[i].inflight >= 0 ? json_integer(v[i].inflight) : json_null(),
                      "queue_length", v[i].queue >= 0 ? json_integer(v[i].queue) : json_null(),
                      "queued_over_threshold_share",
                      v[i].queued_over >= 0 ? json_real(v[i].queued_over) : json_null(), "gpus",
                      v[i].gpus));
    }
    json_t *trig = json_array();
    for (int i = 0; i < 4; i++) {
        const struct scale_trigger *t = &r->t[i];
        json_array_append_new(
            trig, json_pack("{s:s,s:s,s:s,s:o,s:f,s:s,s:s}", "key", t->key, "label", t->label,
                            "unit", t->unit, "value",
                            t->verdict == SCALE_UNKNOWN ? json_null() : json_real(t->value),
                            "threshold", t->threshold, "verdict",
                            t->verdict == SCALE_YES  ? "add_node"
                            : t->verdict == SCALE_NO ? "ok"
                                                     : "unknown",
                            "detail", t->detail));
    }
    json_t *cap = json_array();
    for (int i = 0; i < 2; i++) {
        const struct scale_capacity *c = &r->cap[i];
        json_array_append_new(
            cap, json_pack("{s:I,s:o,s:I,s:I,s:o,s:f,s:o,s:b}", "nodes", (json_int_t)c->nodes,
                           "cost_usd", money_json(c->cost_cents), "tokens", (json_int_t)c->tokens,
                           "users", (json_int_t)c->users, "breakeven_gbp",
                           money_json(c->breakeven_pence), "tokens_used_pct", c->tokens_used_pct,
                           "revenue_gbp", money_json(c->revenue_pence), "covered", c->covered));
    }
    json_t *month = json_null();
    if (in->store_known) {
        month = json_pack("{s:I,s:I,s:o,s:o,s:o,s:I}", "tokens", (json_int_t)in->month_tokens,
                          "projected_tokens", (json_int_t)r->projected_tokens, "revenue_gbp",
                          money_json(in->revenue_pence), "base_gbp", money_json(mf->base_pence),
                          "overage_gbp", money_json(mf->overage_pence), "tenants",
                          (json_int_t)mf->tenants);
    }
    json_t *scan = json_null();
    if (in->scan_known) {
        scan = json_pack(
            "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "window_days", (json_int_t)in->window_days,
            "rows", (json_int_t)in->scan.rows, "hours", (json_int_t)in->scan.hours,
            "queue_hours_over", (json_int_t)in->scan.queue_hours_over, "worst_queue_p95_ms",
            (json_int_t)in->scan.worst_queue_p95_ms, "users_hours_over",
            (json_int_t)in->scan.users_hours_over, "peak_users", (json_int_t)in->scan.peak_users,
            "distinct_users", (json_int_t)in->scan.distinct_users, "regular_pct",
            (json_int_t)cfg->scale_regular_pct);
    }
    json_t *root = json_pack("{s:s,s:I,s:I,s:o,s:o,s:b,s:o,s:o,s:o,s:o}", "nodes_file", nodes_path,
                             "as_of_unix_ms", (json_int_t)now_ms, "node_count", (json_int_t)n,
                             "nodes", nodes, "triggers", trig, "add_node", r->add_node, "capacity",
                             cap, "month", month, "scan", scan, "store_error",
                             store_error ? json_string(store_error) : json_null());
    char *s = json_dumps(root, JSON_INDENT(2));
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(root);
}

static void print_text(const char *nodes_path, int64_t now_ms, struct node_view *v, size_t n,
                       const struct scale_inputs *in, const struct scale_report *r,
                       const struct month_figures *mf, const char *store_error)
{
    char when[32] = "";
    time_t secs = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &tm) == 0) {
        when[0] = '\0';
    }
    printf("privax scale: %zu node(s) in %s, as of %s\n\n", n, nodes_path, when);
    printf("%-16s %-11s %8s %6s  %-22s %-22s %s\n", "NODE", "STATUS", "INFLIGHT", "QUEUE",
           "GPU NOW", "GPU SUSTAINED", "QUEUED > LIMIT");
    for (size_t i = 0; i < n; i++) {
        char name[80], infl[24], queue[24], qo[24];
        struct buf now, sus;
        buf_init(&now, 200);
        buf_init(&sus, 200);
        size_t k;
        json_t *g;
        json_array_foreach(v[i].gpus, k, g)
        {
            json_t *a = json_object_get(g, "now_pct"), *b = json_object_get(g, "sustained_pct");
            int id = (int)json_integer_value(json_object_get(g, "gpu_id"));
            if (json_is_number(a)) {
                buf_printf(&now, "%s%d:%.0f%%", k ? " " : "", id, json_number_value(a));
            } else {
                buf_printf(&now, "%s%d:-", k ? " " : "", id);
            }
            if (json_is_number(b)) {
                buf_printf(&sus, "%s%d:%.0f%%", k ? " " : "", id, json_number_value(b));
            } else {
                buf_printf(&sus, "%s%d:-", k ? " " : "", id);
            }
        }
        snprintf(name, sizeof(name), "%s%s", v[i].node->name, v[i].node->backup ? " (b)" : "");
        snprintf(infl, sizeof(infl), v[i].inflight >= 0 ? "%" PRId64 : "-", v[i].inflight);
        snprintf(queue, sizeof(queue), v[i].queue >= 0 ? "%" PRId64 : "-", v[i].queue);
        if (v[i].queued_over >= 0) {
            snprintf(qo, sizeof(qo), "%.1f%%", v[i].queued_over * 100);
        } else {
            snprintf(qo, sizeof(qo), "-");
        }
        printf("%-16s %-11s %8s %6s  %-22s %-22s %s\n", name, v[i].status, infl, queue,
               now.len ? now.data : "-", sus.len ? sus.data : "-", qo);
        buf_cleanup(&now);
        buf_cleanup(&sus);
    }
    printf("\n%-32s %16s %16s  %s\n", "TRIGGER", "VALUE", "THRESHOLD", "VERDICT");
    int yes = 0;
    int unknown = 0;
    for (int i = 0; i < 4; i++) {
        const struct scale_trigger *t = &r->t[i];
        char val[48], thr[48];
        if (t->verdict == SCALE_UNKNOWN) {
            snprintf(val, sizeof(val), "unknown");
        } else {
            value_text(val, sizeof(val), t, t->value);
        }
        value_text(thr, sizeof(thr), t, t->threshold);
        printf("%-32s %16s %16s  %s\n", t->label, val, thr, scale_verdict_name(t->verdict));
        printf("    %s\n", t->detail);
        yes += t->verdict == SCALE_YES;
        unknown += t->verdict == SCALE_UNKNOWN;
    }
    if (store_error != NULL) {
        printf("\nstore: %s\n", store_error);
    }
    if (r->add_node) {
        printf("\nAdvice: add a node (%d of 4 triggers hold).\n\n", yes);
    } else if (unknown == 4) {
        /* Nothing could be measured: "no new node needed" would be a guess. */
        printf("\nAdvice: cannot tell (no trigger could be evaluated; see above).\n\n");
    } else if (unknown > 0) {
        printf("\nAdvice: no new node needed by the %d triggers that could be evaluated.\n\n",
               4 - unknown);
    } else {
        printf("\nAdvice: no new node needed.\n\n");
    }
    char a[48], b[48];
    printf("%-34s %16s %16s\n", "CAPACITY AND COST (per month)", "", "");
    snprintf(a, sizeof(a), "N = %" PRId64, r->cap[0].nodes);
    snprintf(b, sizeof(b), "N+1 = %" PRId64, r->cap[1].nodes);
    printf("%-34s %16s %16s\n", "nodes", a, b);
    money(a, sizeof(a), "$", r->cap[0].cost_cents);
    money(b, sizeof(b), "$", r->cap[1].cost_cents);
    printf("%-34s %16s %16s\n", "cost", a, b);
    printf("%-34s %16" PRId64 " %16" PRId64 "\n", "token capacity", r->cap[0].tokens,
           r->cap[1].tokens);
    if (in->store_known) {
        snprintf(a, sizeof(a), "%.1f%%", r->cap[0].tokens_used_pct);
        snprintf(b, sizeof(b), "%.1f%%", r->cap[1].tokens_used_pct);
        char label[64];
        snprintf(label, sizeof(label), "used at this pace (%" PRId64 ")", r->projected_tokens);
        printf("%-34s %16s %16s\n", label, a, b);
    }
    printf("%-34s %16" PRId64 " %16" PRId64 "\n", "concurrent users", r->cap[0].users,
           r->cap[1].users);
    money(a, sizeof(a), "GBP ", r->cap[0].breakeven_pence);
    money(b, sizeof(b), "GBP ", r->cap[1].breakeven_pence);
    printf("%-34s %16s %16s\n", "break-even revenue", a, b);
    if (in->store_known) {
        money(a, sizeof(a), "GBP ", r->cap[0].revenue_pence);
        printf("%-34s %16s %16s\n", "revenue this month", a, a);
        printf("%-34s %16s %16s\n", "covers break-even", r->cap[0].covered ? "yes" : "no",
               r->cap[1].covered ? "yes" : "no");
        money(a, sizeof(a), "GBP ", mf->base_pence);
        money(b, sizeof(b), "GBP ", mf->overage_pence);
        printf("    revenue = %s base + %s overage, %zu tenant(s) with usage\n", a, b, mf->tenants);
    }
}

/* ---- the command ----------------------------------------------------------------------- */

int cli_cmd_scale(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"nodes", required_argument, NULL, 'n'},
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"now-ms", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *nodes_path = NULL, *config_path = NULL;
    int json = 0, opt;
    long timeout_ms = 5000;
    int64_t now_ms = px_now_ms();
    char err[1024];
    optind = 1;
    while ((opt = getopt_long(argc, argv, "n:c:jt:w:h", longopts, NULL)) != -1) {
        char *end;
        switch (opt) {
        case 'n':
            nodes_path = optarg;
            break;
        case 'c':
            config_path = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 't':
            if (cli_parse_timeout_ms("scale", optarg, &timeout_ms) != EX_OK) {
                return EX_USAGE;
            }
            break;
        case 'w':
            errno = 0;
            now_ms = strtoll(optarg, &end, 10);
            if (*end != '\0' || errno != 0 || now_ms < 86400000) {
                fprintf(stderr, "privax scale: --now-ms must be a unix time in ms\n");
                return EX_USAGE;
            }
            break;
        case 'h':
            scale_help(stdout);
            return EX_OK;
        default:
            scale_help(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc || nodes_path == NULL) {
        fprintf(stderr, "privax scale: %s\n",
                nodes_path ? "unexpected argument" : "--nodes FILE is required");
        scale_help(stderr);
        return EX_USAGE;
    }
    struct px_config *cfg = NULL;
    struct px_config defaults;
    if (config_path != NULL) {
        if (cli_config_load(config_path, &cfg) != EX_OK) {
            return EX_CONFIG;
        }
    } else {
        memset(&defaults, 0, sizeof(defaults));
        scale_config_defaults(&defaults);
    }
    const struct px_config *c = cfg ? cfg : &defaults;
    struct ops_nodes *nodes = NULL;
    if (ops_nodes_load(nodes_path, &nodes, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        px_config_free(cfg);
        return EX_CONFIG;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "privax scale: curl_global_init failed\n");
        ops_nodes_free(nodes);
        px_config_free(cfg);
        return EX_SOFTWARE;
    }

    /* Every node's /health and /metrics at once. */
    size_t n = nodes->n;
    struct ops_fetch *f = px_calloc(2 * n, sizeof(*f));
    char **urls = px_calloc(2 * n, sizeof(*urls));
    for (size_t i = 0; i < 2 * n; i++) {
        const char *path = i < n ? "/health" : "/metrics";
        size_t len = strlen(nodes->v[i % n].url) + strlen(path) + 1;
        urls[i] = px_malloc(len);
        snprintf(urls[i], len, "%s%s", nodes->v[i % n].url, path);
        f[i].url = urls[i];
        buf_init(&f[i].body, BODY_MAX);
    }
    ops_fetch_all(f, 2 * n, (uint64_t)timeout_ms);

    struct scale_inputs in;
    memset(&in, 0, sizeof(in));
    in.nodes = (int64_t)n;
    in.window_days = c->scale_window_days;
    struct node_view *v = px_calloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        json_error_t je;
        json_t *h = f[i].status == 200 || f[i].status == 503
                        ? json_loadb(f[i].body.data ? f[i].body.data : "", f[i].body.len, 0, &je)
                        : NULL;
        v[i].node = &nodes->v[i];
        v[i].status = status_of(&f[i], h);
        v[i].gpus = json_array();
        v[i].inflight = prom_value(&f[n + i], "privax_inflight_requests", NULL);
        v[i].queue = prom_value(&f[n + i], "privax_queue_length", NULL);
        v[i].queued_over = queued_over(&f[n + i], c->scale_queue_ms);
        if (json_is_object(h)) {
            node_gpus(c, h, &v[i], &in);
        }
        json_decref(h);
    }

    int rc = EX_OK;
    const char *store_error = NULL;
    struct month_figures mf = {0};
    if (cfg != NULL) {
        int src = read_store(cfg, now_ms, &in, &mf, err, sizeof(err));
        if (src < 0) {
            store_error = err;
            in.store_known = 0;
            in.scan_known = 0;
            rc = EX_UNAVAILABLE;
            fprintf(stderr, "privax scale: %s\n", err);
        }
    }
    struct scale_report r;
    scale_evaluate(c, &in, &r);
    if (json) {
        print_json(c, nodes_path, now_ms, v, n, &in, &r, &mf, store_error);
    } else {
        print_text(nodes_path, now_ms, v, n, &in, &r, &mf, store_error);
    }

    for (size_t i = 0; i < n; i++) {
        json_decref(v[i].gpus);
    }
    for (size_t i = 0; i < 2 * n; i++) {
        buf_cleanup(&f[i].body);
        free(urls[i]);
    }
    free(v);
    free(urls);
    free(f);
    ops_nodes_free(nodes);
    px_config_free(cfg);
    curl_global_cleanup();
    return rc;
}
