/* The usage API for the platform (Bearer auth, like the chat path):
 *
 *   GET  /v1/usage/{tenant}?period=day|week|month   totals for the current UTC day, ISO week
 *        (from Monday) or month, per day, and the month-to-date figures against the allowance
 *   POST /v1/usage/check {tenant_id, plan_tier, estimated_tokens}
 *        200 {"allowed": true, ...}, or 429 monthly_quota_exceeded when the tenant's tier
 *        blocks at its allowance and month-to-date + estimated would pass it; both carry
 *        monthly_tokens, allowance, percent_used and overage_tokens
 *
 * Store queries block (SQLite on disk, ClickHouse over HTTP), so they run on libuv's thread
 * pool (uv_queue_work) with a store handle opened for that one job (store_open_reader:
 * read-only SQLite, or a ClickHouse curl handle), never the writer's. The loop thread only
 * parses the request and, in the after-work callback, writes the answer. The job keeps the
 * config pointer (it outlives the loop) and never touches the gateway after queueing, since
 * a shutdown may free the gateway while a job runs; the request itself stays valid until the
 * answer ends it (server.h contract), even when the client has gone. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "gateway/internal.h"
#include "store/store.h"

#define UA_PREFIX       "/v1/usage/"
#define UA_ESTIMATE_MAX 1000000000000LL /* estimated_tokens cap */
#define UA_WARN_PCT     80              /* PRODUCT.md: warn at 80% of the allowance */
#define UA_DAY_MS       86400000LL

enum ua_kind {
    UA_GET = 0, /* GET /v1/usage/{tenant} */
    UA_CHECK,   /* POST /v1/usage/check */
};

struct ua_job {
    uv_work_t work;                         /* the libuv request; work.data = this */
    const struct px_config *cfg;            /* borrowed; outlives the loop */
    struct http_req *req;                   /* answered in after_work */
    enum ua_kind kind;                      /* which endpoint */
    char request_id[USAGE_ID_MAX + 1];      /* echoed */
    char tenant[USAGE_ID_MAX + 1];          /* the tenant asked about */
    char tier[33];                          /* check: plan_tier from the body, "" = none */
    char period[8];                         /* get: day | week | month */
    int64_t estimated;                      /* check: estimated_tokens */
    int64_t since_ms, until_ms;             /* get: the period */
    int64_t month_since_ms, month_until_ms; /* the current month */
    int rc;                                 /* 0, or the store failed */
    char err[300];                          /* the store's message */
    struct store_usage_row *days;           /* get: per-day totals, malloc'd */
    size_t ndays;                           /* entries in days */
    struct store_usage_row month;           /* month-to-date totals (zero when none) */
};

static void iso_time(char out[32], int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    if (strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        out[0] = '\0';
    }
}

/* Blocking part, on a pool thread. */
static void ua_work(uv_work_t *w)
{
    struct ua_job *j = w->data;
    struct store *st = NULL;
    char err[256];
    j->rc = 0;
    if (j->cfg->ch_url == NULL && access(j->cfg->sqlite_path, F_OK) != 0) {
        return; /* no SQLite file yet: no usage */
    }
    if (store_open_reader(j->cfg, &st, err, sizeof(err)) < 0) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "%s", err);
        return;
    }
    struct store_usage_row *rows = NULL;
    size_t n = 0;
    struct store_usage_query q = {.tenant_id = j->tenant,
                                  .since_ms = j->month_since_ms,
                                  .until_ms = j->month_until_ms,
                                  .by = STORE_BY_TENANT};
    if (store_totals(st, &q, &rows, &n) < 0) {
        goto fail;
    }
    if (n > 0) {
        j->month = rows[0];
    }
    free(rows);
    if (j->kind == UA_GET) {
        q.since_ms = j->since_ms;
        q.until_ms = j->until_ms;
        q.by = STORE_BY_DAY;
        if (store_totals(st, &q, &j->days, &j->ndays) < 0) {
            goto fail;
        }
    }
    store_close(st);
    return;
fail:
    j->rc = -1;
    snprintf(j->err, sizeof(j->err), "%s store: %s", st->ops->name, store_errmsg(st));
    store_close(st);
}

static void send_json(struct http_req *req, int status, const char *rid, json_t *j,
                      int retry_after_s)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    http_resp_header(req, "X-Request-ID", rid);
    if (retry_after_s > 0) {
        char v[24];
        snprintf(v, sizeof(v), "%d", retry_after_s);
        http_resp_header(req, "Retry-After", v);
    }
    http_resp_send(req, status, "application/json", s ? s : "{}", s ? strlen(s) : 2);
    free(s);
}

static double pct1(int64_t used, int64_t allowance)
{
    if (allowance <= 0) {
        return 0;
    }
    return (double)(int64_t)((double)used * 1000.0 / (double)allowance + 0.5) / 10.0;
}

/* The month-to-date block both answers share. */
static json_t *month_json(const struct ua_job *j, size_t tier, int64_t allowance)
{
    int64_t used = j->month.total_tokens;
    int64_t over = used > allowance ? used - allowance : 0;
    return json_pack("{s:s,s:I,s:I,s:I,s:f,s:I,s:b}", "tier", j->cfg->tiers[tier].name, "requests",
                     (json_int_t)j->month.requests, "monthly_tokens", (json_int_t)used, "allowance",
                     (json_int_t)allowance, "percent_used", pct1(used, allowance), "overage_tokens",
                     (json_int_t)over, "warning", used * 100 >= allowance * UA_WARN_PCT);
}

static void answer_get(struct ua_job *j)
{
    char since[32], until[32];
    int64_t allowance;
    size_t tier = store_tenant_plan(j->cfg, j->tenant,
                                    j->month.plan_tier[0] ? j->month.plan_tier : NULL, &allowance);
    json_t *days = json_array();
    struct store_usage_row sum = {0};
    for (size_t i = 0; i < j->ndays; i++) {
        const struct store_usage_row *r = &j->days[i];
        json_array_append_new(
            days, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "date", r->key, "requests",
                            (json_int_t)r->requests, "prompt_tokens", (json_int_t)r->prompt_tokens,
                            "completion_tokens", (json_int_t)r->completion_tokens, "total_tokens",
                            (json_int_t)r->total_tokens, "errors", (json_int_t)r->errors));
        sum.requests += r->requests;
        sum.prompt_tokens += r->prompt_tokens;
        sum.completion_tokens += r->completion_tokens;
        sum.total_tokens += r->total_tokens;
        sum.errors += r->errors;
    }
    iso_time(since, j->since_ms);
    iso_time(until, j->until_ms);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:o,s:o}", "tenant_id", j->tenant,
                          "period", j->period, "since", since, "until", until, "requests",
                          (json_int_t)sum.requests, "prompt_tokens", (json_int_t)sum.prompt_tokens,
                          "completion_tokens", (json_int_t)sum.completion_tokens, "total_tokens",
                          (json_int_t)sum.total_tokens, "errors", (json_int_t)sum.errors, "days",
                          days, "month", month_json(j, tier, allowance));
    send_json(j->req, 200, j->request_id, o, 0);
}

static void answer_check(struct ua_job *j)
{
    int64_t allowance;
    size_t tier = store_tenant_plan(j->cfg, j->tenant, j->tier[0] ? j->tier : NULL, &allowance);
    const struct px_tier_cfg *t = &j->cfg->tiers[tier];
    int64_t used = j->month.total_tokens;
    int64_t after = used + j->estimated;
    int64_t over = after > allowance ? after - allowance : 0;
    int blocked = t->overage == PX_OVERAGE_BLOCK && after > allowance;
    json_t *o = json_pack("{s:b,s:s,s:s,s:I,s:I,s:I,s:f,s:I,s:s,s:I,s:b}", "allowed", !blocked,
                          "tenant_id", j->tenant, "plan_tier", t->name, "monthly_tokens",
                          (json_int_t)used, "estimated_tokens", (json_int_t)j->estimated,
                          "allowance", (json_int_t)allowance, "percent_used", pct1(used, allowance),
                          "overage_tokens", (json_int_t)over, "overage",
                          t->overage == PX_OVERAGE_BLOCK ? "block" : "bill", "overage_charge_pence",
                          (json_int_t)(t->overage == PX_OVERAGE_BLOCK
                                           ? 0
                                           : store_overage_pence(over, t->overage_pence_per_mtok)),
                          "warning", after * 100 >= allowance * UA_WARN_PCT);
    if (!blocked) {
        send_json(j->req, 200, j->request_id, o, 0);
        return;
    }
    json_object_set_new(o, "error",
                        json_pack("{s:s,s:s,s:s}", "message",
                                  "monthly token allowance would be exceeded", "type",
                                  "rate_limit_error", "code", "monthly_quota_exceeded"));
    int64_t next_month = store_month_start_ms(px_now_ms(), -1);
    int64_t wait_s = (next_month - px_now_ms()) / 1000 + 1;
    send_json(j->req, 429, j->request_id, o, wait_s > 0 && wait_s < INT32_MAX ? (int)wait_s : 1);
}

static void ua_after(uv_work_t *w, int status)
{
    struct ua_job *j = w->data;
    if (status != 0 || j->rc != 0) {
        struct gw_error e;
        char qt[2 * USAGE_ID_MAX + 4];
        px_log(PX_LOG_WARN, "request_id=%s event=usage_api_store_failed tenant=%s err=\"%s\"",
               j->request_id, px_log_quote(qt, sizeof(qt), j->tenant),
               status ? uv_strerror(status) : j->err);
        gw_error_set(&e, 503, "server_error", "store_unavailable",
                     "the usage store cannot be read right now");
        e.retry_after_s = 5;
        gw_send_error(j->req, j->request_id, &e);
    } else if (j->kind == UA_GET) {
        answer_get(j);
    } else {
        answer_check(j);
    }
    free(j->days);
    free(j);
}

/* Auth like the chat path; the tenant comes from the path or the body, not X-Tenant-ID. 0, or
 * -1 after an error answer. */
static int ua_auth(struct gateway *gw, struct http_req *req, struct ua_job *j)
{
    struct gw_ident id;
    struct gw_error err;
    int rc = gw_identify(gw, req, &id, &err);
    snprintf(j->request_id, sizeof(j->request_id), "%s", id.request_id);
    if (j->request_id[0] == '\0') {
        px_uuid4(j->request_id);
    }
    /* A failure before authentication (bad X-Request-ID, bad or missing token) is the
     * answer; a missing X-Tenant-ID after it is not (this API names its tenant itself). */
    if (rc != 0 && id.api_key_id[0] == '\0') {
        gw_send_error(req, j->request_id, &err);
        return -1;
    }
    return 0;
}

static int valid_tenant(const char *s, size_t n)
{
    if (n == 0 || n > USAGE_ID_MAX || !px_utf8_valid(s, n)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            return 0;
        }
    }
    return 1;
}

static int hexv(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decode (p, n) into out (cap bytes). Length, or -1. */
static long pct_decode(const char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '%') {
            int h = i + 2 < n ? hexv(p[i + 1]) : -1;
            int l = h >= 0 ? hexv(p[i + 2]) : -1;
            if (h < 0 || l < 0) {
                return -1;
            }
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (o + 1 >= cap) {
            return -1;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return (long)o;
}

static void queue_job(struct gateway *gw, struct ua_job *j)
{
    j->work.data = j;
    j->month_since_ms = store_month_start_ms(px_now_ms(), 0);
    j->month_until_ms = store_month_start_ms(px_now_ms(), -1);
    int rc = uv_queue_work(gw->loop, &j->work, ua_work, ua_after);
    if (rc != 0) {
        struct gw_error e;
        gw_error_set(&e, 503, "server_error", "store_unavailable", "cannot queue the query");
        gw_send_error(j->req, j->request_id, &e);
        free(j);
    }
}

void gw_usage_get(struct gateway *gw, struct http_req *req)
{
    struct ua_job *j = px_calloc(1, sizeof(*j));
    struct gw_error e;
    j->cfg = gw->cfg;
    j->req = req;
    j->kind = UA_GET;
    if (ua_auth(gw, req, j) < 0) {
        free(j);
        return;
    }
    const char *path = req->path + strlen(UA_PREFIX);
    size_t plen = req->path_len - strlen(UA_PREFIX);
    const char *q = memchr(path, '?', plen);
    size_t tlen = q ? (size_t)(q - path) : plen;
    long n = pct_decode(path, tlen, j->tenant, sizeof(j->tenant));
    if (n < 0 || !valid_tenant(j->tenant, (size_t)n) || memchr(j->tenant, '/', (size_t)n)) {
        gw_error_set(&e, 400, "invalid_request_error", "invalid_value",
                     "the tenant in /v1/usage/{tenant} must be 1-128 bytes of text");
        goto bad;
    }
    /* period=day|week|month; default month. Other parameters are ignored. */
    snprintf(j->period, sizeof(j->period), "month");
    for (const char *p = q ? q + 1 : NULL; p && p < req->path + req->path_len;) {
        const char *amp = memchr(p, '&', (size_t)(req->path + req->path_len - p));
        size_t len = amp ? (size_t)(amp - p) : (size_t)(req->path + req->path_len - p);
        if (len > 7 && memcmp(p, "period=", 7) == 0) {
            const char *v = p + 7;
            size_t vl = len - 7;
            if (!((vl == 3 && memcmp(v, "day", 3) == 0) || (vl == 4 && memcmp(v, "week", 4) == 0) ||
                  (vl == 5 && memcmp(v, "month", 5) == 0))) {
                gw_error_set(&e, 400, "invalid_request_error", "invalid_value",
                             "period must be day, week or month");
                goto bad;
            }
            memcpy(j->period, v, vl);
            j->period[vl] = '\0';
        }
        p = amp ? amp + 1 : NULL;
    }
    int64_t now = px_now_ms();
    int64_t today = now - now % UA_DAY_MS;
    if (strcmp(j->period, "day") == 0) {
        j->since_ms = today;
        j->until_ms = today + UA_DAY_MS;
    } else if (strcmp(j->period, "week") == 0) {
        /* 1970-01-01 was a Thursday: days since then + 3, mod 7, is days since Monday. */
        int64_t dow = (today / UA_DAY_MS + 3) % 7;
        j->since_ms = today - dow * UA_DAY_MS;
        j->until_ms = j->since_ms + 7 * UA_DAY_MS;
    } else {
        j->since_ms = store_month_start_ms(now, 0);
        j->until_ms = store_month_start_ms(now, -1);
    }
    queue_job(gw, j);
    return;
bad:
    gw_send_error(req, j->request_id, &e);
    free(j);
}

void gw_usage_check(struct gateway *gw, struct http_req *req)
{
    struct ua_job *j = px_calloc(1, sizeof(*j));
    struct gw_error e;
    json_error_t jerr;
    json_t *body = NULL;
    j->cfg = gw->cfg;
    j->req = req;
    j->kind = UA_CHECK;
    if (ua_auth(gw, req, j) < 0) {
        free(j);
        return;
    }
    body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        gw_error_set(&e, 400, "invalid_request_error", "invalid_json",
                     "the body must be a JSON object");
        goto bad;
    }
    json_t *t = json_object_get(body, "tenant_id");
    json_t *tier = json_object_get(body, "plan_tier");
    json_t *est = json_object_get(body, "estimated_tokens");
    if (!json_is_string(t) || !valid_tenant(json_string_value(t), json_string_length(t))) {
        gw_error_set(&e, 400, "invalid_request_error", "invalid_value",
                     "tenant_id must be a string of 1-128 bytes");
        goto bad;
    }
    snprintf(j->tenant, sizeof(j->tenant), "%s", json_string_value(t));
    if (tier != NULL && !json_is_null(tier)) {
        if (!json_is_string(tier) ||
            px_config_tier(gw->cfg, json_string_value(tier), json_string_length(tier)) < 0) {
            gw_error_set(&e, 400, "invalid_request_error", "invalid_value",
                         "plan_tier must be one of the configured tiers");
            goto bad;
        }
        snprintf(j->tier, sizeof(j->tier), "%s", json_string_value(tier));
    }
    if (est != NULL && !json_is_null(est)) {
        if (!json_is_integer(est) || json_integer_value(est) < 0 ||
            json_integer_value(est) > UA_ESTIMATE_MAX) {
            gw_error_set(&e, 400, "invalid_request_error", "invalid_value",
                         "estimated_tokens must be an integer from 0 to 1000000000000");
            goto bad;
        }
        j->estimated = (int64_t)json_integer_value(est);
    }
    json_decref(body);
    queue_job(gw, j);
    return;
bad:
    json_decref(body);
    gw_send_error(req, j->request_id, &e);
    free(j);
}
