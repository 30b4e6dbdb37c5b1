/* The shared usage store: ClickHouse over its HTTP interface (libcurl easy; every call
 * blocks, so it runs on the usage shipper thread, a CLI command or a libuv worker, never on
 * the event loop).
 *
 * Design note (the schema and the dedup design are in docs/internals/usage_store.md).
 * - One statement per HTTP request (18.16 accepts no more). DDL and SELECTs go in the POST
 *   body; an INSERT puts "INSERT INTO ... FORMAT JSONEachRow" in the query parameter and the
 *   rows in the body. SELECTs use FORMAT JSON with wait_end_of_query=1 (the server buffers,
 *   so an error is a 500, not a 200 cut short) and unquoted 64-bit integers.
 * - What counts as success: curl finished the transfer, HTTP 200, and for an INSERT an empty
 *   body, for a SELECT a whole JSON document whose "rows" matches its "data". A 200 whose body
 *   holds "Code: N, e.displayText() = DB::Exception..." (an error after the headers went out)
 *   or a reply cut short is a failure. A failure to connect is STORE_ENOTSENT (the rows
 *   certainly did not land); every other INSERT failure is ambiguous.
 * - Exactly once: llm_requests is a ReplacingMergeTree ordered by (tenant_id, event_time,
 *   spool_id, spool_seq), and reads of raw rows use FINAL, so a stray duplicate can never be
 *   counted; and the shipper never creates one, because after an ambiguous failure it asks
 *   landed() which rows of the batch are stored (after waiting for the failed INSERT, tagged
 *   with a query_id, to leave system.processes) and re-sends only the others. That second
 *   part is what keeps the daily/monthly aggregate tables (fed by materialized views at
 *   insert time, where FINAL cannot help) exact.
 * - Times: event_time is DateTime (unix seconds, sent as a JSON number) plus event_ms
 *   (0-999); DateTime64 does not exist in 18.16. Every row passes store_row_check before it is
 *   encoded (18.16 wraps out-of-range integers and swallows malformed dates silently). */
#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "store/store.h"

#define CH_BODY_MAX     (512u * 1024 * 1024) /* request body cap (100k rows * ~1.5 KiB) */
#define CH_RESP_MAX     (64u * 1024 * 1024)  /* response cap */
#define CH_ROWS_MAX     100000               /* groups returned by one report query */
#define CH_CONNECT_MS   2000                 /* connect timeout */
#define CH_SCHEMA_LAST  2                    /* newest schema version in steps[] */
#define CH_DATETIME_MAX 4294967295LL         /* DateTime is UInt32 seconds */

struct store_ch {
    struct store base;       /* must be first */
    CURL *curl;              /* one easy handle, reused (keep-alive) */
    struct curl_slist *hdrs; /* extra request headers (no Expect: 100-continue) */
    char url[1100];          /* store.clickhouse.url, no trailing slash */
    char db[65];             /* database name (checked identifier) */
    char user[65];           /* user name (checked identifier) */
    char password[512];      /* from the password_env variable, "" when none */
    long timeout_ms;         /* whole-request timeout */
    struct buf body;         /* request body being built */
    struct buf resp;         /* response body */
    long status;             /* HTTP status of the last request */
    char failed_qid[96];     /* query_id of an INSERT that failed ambiguously, "" = none */
    uint64_t nqueries;       /* counter for query ids */
    char errmsg[600];        /* last failure */
};

static int ch_fail(struct store_ch *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ch_fail(struct store_ch *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
    va_end(ap);
    return PX_ESTORE;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    struct store_ch *c = ud;
    /* Over the cap: returning less than given makes curl fail the transfer. */
    return buf_append(&c->resp, p, size * n) == 0 ? size * n : 0;
}

/* The first line of an error body, for messages. */
static void first_line(const struct buf *b, char *out, size_t cap)
{
    size_t n = 0;
    const char *s = b->data ? b->data : "";
    while (n < b->len && n + 1 < cap && s[n] != '\n' && s[n] != '\r') {
        out[n] = s[n];
        n++;
    }
    out[n] = '\0';
    px_utf8_sanitize(out);
}

static int body_has_exception(const struct buf *b)
{
    return b->len > 0 && (strstr(b->data, "DB::Exception") != NULL ||
                          (b->len >= 6 && memcmp(b->data, "Code: ", 6) == 0));
}

/* POST one statement. query_param: the statement when the body is data (INSERT), else NULL
 * and the body is the statement. extra: more URL parameters ("&a=b"), may be "". 0 when the
 * server answered 200 with no exception; STORE_ENOTSENT when it could not be reached;
 * PX_ESTORE otherwise (errmsg says why). */
static int ch_post(struct store_ch *c, const char *query_param, const char *body, size_t len,
                   const char *extra)
{
    char url[2048];
    char *q = NULL;
    if (query_param != NULL) {
        q = curl_easy_escape(c->curl, query_param, 0);
        if (q == NULL) {
            return ch_fail(c, "cannot encode the query");
        }
    }
    int n = snprintf(url, sizeof(url), "%s/?database=%s%s%s%s", c->url, c->db, q ? "&query=" : "",
                     q ? q : "", extra);
    curl_free(q);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        return ch_fail(c, "URL too long");
    }
    buf_reset(&c->resp);
    c->status = 0;
    /* An INSERT never goes over a reused connection: when a kept-alive connection turns out to
     * be dead, libcurl silently sends the request again on a new one, and if the server had
     * in fact received and run the first copy (e.g. while shutting down) the rows land twice
     * with no error for us to see. A fresh connection per INSERT costs one loopback or LAN
     * connect per batch. */
    long fresh = query_param != NULL ? 1L : 0L;
    curl_easy_setopt(c->curl, CURLOPT_FRESH_CONNECT, fresh);
    curl_easy_setopt(c->curl, CURLOPT_FORBID_REUSE, fresh);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    CURLcode rc = curl_easy_perform(c->curl);
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &c->status);
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
        snprintf(c->errmsg, sizeof(c->errmsg), "%.300s: %s", c->url, curl_easy_strerror(rc));
        return STORE_ENOTSENT;
    }
    if (rc != CURLE_OK) {
        /* Timeouts, resets, a reply cut short (chunked body without its end): the server may
         * or may not have done the work. */
        snprintf(c->errmsg, sizeof(c->errmsg), "%.300s: %s (HTTP %ld)", c->url,
                 curl_easy_strerror(rc), c->status);
        return PX_ESTORE;
    }
    if (c->status != 200 || body_has_exception(&c->resp)) {
        char line[400];
        first_line(&c->resp, line, sizeof(line));
        snprintf(c->errmsg, sizeof(c->errmsg), "HTTP %ld: %s", c->status,
                 line[0] ? line : "(empty body)");
        return PX_ESTORE;
    }
    return 0;
}

/* Run a DDL or other statement that returns nothing of interest. */
static int ch_exec(struct store_ch *c, const char *sql)
{
    int rc = ch_post(c, NULL, sql, strlen(sql), "");
    return rc == STORE_ENOTSENT ? PX_ESTORE : rc;
}

/* Run a SELECT (without FORMAT) and parse its JSON: *data is the "data" array (borrowed from
 * *doc, which the caller json_decref()s). */
static int ch_select(struct store_ch *c, const char *sql, json_t **doc, json_t **data)
{
    char *full = NULL;
    size_t n = strlen(sql) + 16;
    full = px_malloc(n);
    snprintf(full, n, "%s FORMAT JSON", sql);
    int rc = ch_post(c, NULL, full, strlen(full),
                     "&wait_end_of_query=1&output_format_json_quote_64bit_integers=0");
    free(full);
    if (rc != 0) {
        return rc == STORE_ENOTSENT ? PX_ESTORE : rc;
    }
    json_error_t jerr;
    json_t *j = json_loadb(c->resp.data ? c->resp.data : "", c->resp.len, 0, &jerr);
    json_t *d = j ? json_object_get(j, "data") : NULL;
    json_t *rows = j ? json_object_get(j, "rows") : NULL;
    if (!json_is_array(d) || !json_is_integer(rows) ||
        (size_t)json_integer_value(rows) != json_array_size(d)) {
        json_decref(j);
        return ch_fail(c, "incomplete or malformed JSON reply: %s",
                       j ? "rows mismatch" : jerr.text);
    }
    *doc = j;
    *data = d;
    return 0;
}

/* Append s as a SQL string literal ('...' with \ and ' escaped). */
static int sql_quote(struct buf *b, const char *s)
{
    int rc = buf_append(b, "'", 1);
    for (const char *p = s; *p && rc == 0; p++) {
        if (*p == '\\' || *p == '\'') {
            rc = buf_append(b, "\\", 1);
        }
        rc = rc ? rc : buf_append(b, p, 1);
    }
    return rc ? rc : buf_append(b, "'", 1);
}

/* Append s as a JSON string. Bytes >= 0x80 pass as they are (rows are checked UTF-8). */
static int json_quote(struct buf *b, const char *s)
{
    int rc = buf_append(b, "\"", 1);
    const char *run = s;
    for (const char *p = s; rc == 0; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch != '\0' && ch >= 0x20 && ch != '"' && ch != '\\') {
            continue;
        }
        rc = buf_append(b, run, (size_t)(p - run));
        if (ch == '\0' || rc) {
            break;
        }
        rc = ch == '"' || ch == '\\' ? buf_printf(b, "\\%c", ch) : buf_printf(b, "\\u%04x", ch);
        run = p + 1;
    }
    return rc ? rc : buf_append(b, "\"", 1);
}

static const char insert_cols[] =
    "event_time, event_ms, request_id, tenant_id, user_id, api_key_id, plan_tier, model_name,"
    " provider, backend, request_type, stream, prompt_tokens, completion_tokens, total_tokens,"
    " usage_estimated, queue_ms, ttft_ms, latency_ms, status_code, success, error_code,"
    " input_chars, output_chars, gpu_id, node_id, overage, spool_id, spool_seq";

static int encode_row(struct buf *b, const struct usage_event *e)
{
    int rc = buf_printf(b, "{\"event_time\":%" PRId64 ",\"event_ms\":%d", e->event_time_ms / 1000,
                        (int)(e->event_time_ms % 1000));
#define JS(name)                                                                                   \
    rc = rc ? rc : buf_append_str(b, ",\"" #name "\":");                                           \
    rc = rc ? rc : json_quote(b, e->name);
#define JI(name) rc = rc ? rc : buf_printf(b, ",\"" #name "\":%lld", (long long)e->name);
    /* One column per entry, in insert_cols order (left alone by clang-format). */
    /* clang-format off */
    JS(request_id) JS(tenant_id) JS(user_id) JS(api_key_id) JS(plan_tier) JS(model_name)
    JS(provider) JS(backend) JS(request_type) JI(stream) JI(prompt_tokens) JI(completion_tokens)
    JI(total_tokens) JI(usage_estimated) JI(queue_ms) JI(ttft_ms) JI(latency_ms) JI(status_code)
    JI(success) JS(error_code) JI(input_chars) JI(output_chars) JI(gpu_id) JS(node_id) JI(overage);
    /* clang-format on */
#undef JS
#undef JI
    rc = rc ? rc
            : buf_printf(b, ",\"spool_id\":%" PRIu64 ",\"spool_seq\":%" PRIu64 "}\n", e->spool_id,
                         e->spool_seq);
    return rc;
}

static int ch_insert(struct store *st, struct usage_event *const *rows, size_t n)
{
    struct store_ch *c = (struct store_ch *)st;
    char why[160];
    char sql[1024];
    char extra[160];
    if (n == 0) {
        return 0;
    }
    buf_reset(&c->body);
    for (size_t i = 0; i < n; i++) {
        /* The shipper checked already; this is the store refusing to send what it cannot
         * store faithfully, whoever calls it. */
        if (store_row_check(rows[i], why, sizeof(why)) < 0) {
            snprintf(c->errmsg, sizeof(c->errmsg), "row %zu (spool_seq %" PRIu64 "): %s", i,
                     rows[i]->spool_seq, why);
            return STORE_ENOTSENT;
        }
        if (encode_row(&c->body, rows[i]) < 0) {
            return ch_fail(c, "batch larger than the request cap");
        }
    }
    snprintf(sql, sizeof(sql), "INSERT INTO %s.llm_requests (%s) FORMAT JSONEachRow", c->db,
             insert_cols);
    char qid[96];
    snprintf(qid, sizeof(qid), "privax-%016" PRIx64 "-%" PRIu64 "-%" PRIu64, rows[0]->spool_id,
             rows[0]->spool_seq, ++c->nqueries);
    snprintf(extra, sizeof(extra), "&query_id=%s", qid);
    int rc = ch_post(c, sql, c->body.data, c->body.len, extra);
    if (rc == 0) {
        /* An INSERT answers with an empty body; anything else is not a plain success. */
        if (c->resp.len > 0 && strspn(c->resp.data, " \r\n\t") != c->resp.len) {
            char line[300];
            first_line(&c->resp, line, sizeof(line));
            snprintf(c->errmsg, sizeof(c->errmsg), "unexpected reply to INSERT: %s", line);
            rc = PX_ESTORE;
        }
    }
    if (rc == PX_ESTORE) {
        memcpy(c->failed_qid, qid, sizeof(qid));
    }
    return rc;
}

/* Wait until the failed INSERT (if any) is no longer running, so that what landed is final. */
static int wait_failed_insert(struct store_ch *c)
{
    if (c->failed_qid[0] == '\0') {
        return 0;
    }
    uint64_t deadline = px_mono_ms() + (uint64_t)c->timeout_ms;
    for (;;) {
        char sql[256];
        json_t *doc;
        json_t *data;
        snprintf(sql, sizeof(sql),
                 "SELECT count() AS n FROM system.processes WHERE query_id = '%s'", c->failed_qid);
        int rc = ch_select(c, sql, &doc, &data);
        if (rc < 0) {
            return rc;
        }
        json_int_t running = json_integer_value(json_object_get(json_array_get(data, 0), "n"));
        json_decref(doc);
        if (running == 0) {
            c->failed_qid[0] = '\0';
            return 0;
        }
        if (px_mono_ms() >= deadline) {
            return ch_fail(c, "the failed INSERT %s is still running", c->failed_qid);
        }
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int ch_landed(struct store *st, struct usage_event *const *rows, size_t n,
                     unsigned char *present)
{
    struct store_ch *c = (struct store_ch *)st;
    int rc = wait_failed_insert(c);
    if (rc < 0) {
        return rc;
    }
    memset(present, 0, n);
    /* Rows of one batch come from one spool; loop over spool ids anyway. */
    for (size_t start = 0; start < n;) {
        uint64_t sid = rows[start]->spool_id;
        uint64_t lo = UINT64_MAX;
        uint64_t hi = 0;
        int64_t tlo = INT64_MAX;
        int64_t thi = 0;
        for (size_t i = start; i < n; i++) {
            if (rows[i]->spool_id != sid) {
                continue;
            }
            lo = rows[i]->spool_seq < lo ? rows[i]->spool_seq : lo;
            hi = rows[i]->spool_seq > hi ? rows[i]->spool_seq : hi;
            tlo = rows[i]->event_time_ms < tlo ? rows[i]->event_time_ms : tlo;
            thi = rows[i]->event_time_ms > thi ? rows[i]->event_time_ms : thi;
        }
        char sql[512];
        json_t *doc;
        json_t *data;
        /* No FINAL: a duplicate must show up here too. The time bounds prune partitions. */
        snprintf(sql, sizeof(sql),
                 "SELECT spool_seq FROM %s.llm_requests WHERE spool_id = %" PRIu64
                 " AND spool_seq >= %" PRIu64 " AND spool_seq <= %" PRIu64
                 " AND event_time >= toDateTime(%" PRId64 ") AND event_time <= toDateTime(%" PRId64
                 ")",
                 c->db, sid, lo, hi, tlo / 1000, thi / 1000);
        if ((rc = ch_select(c, sql, &doc, &data)) < 0) {
            return rc;
        }
        size_t k;
        json_t *v;
        json_array_foreach(data, k, v)
        {
            uint64_t seq = (uint64_t)json_integer_value(json_object_get(v, "spool_seq"));
            for (size_t i = start; i < n; i++) {
                if (rows[i]->spool_id == sid && rows[i]->spool_seq == seq) {
                    present[i] = 1;
                }
            }
        }
        json_decref(doc);
        /* Next spool id not yet handled. */
        size_t next = n;
        for (size_t i = start + 1; i < n; i++) {
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++) {
                seen = rows[j]->spool_id == rows[i]->spool_id;
            }
            if (!seen) {
                next = i;
                break;
            }
        }
        start = next;
    }
    return 0;
}

/* ---- reports ---- */

static const char *const ch_group_expr[] = {
    [STORE_BY_TENANT] = "tenant_id",
    [STORE_BY_NODE] = "node_id",
    [STORE_BY_MODEL] = "model_name",
    [STORE_BY_DAY] = "toString(toDate(event_time, 'UTC'))",
};

/* The tier of the latest successful row, else of the latest row; the greater name wins a tie
 * within one millisecond (as in SQLite). */
#define CH_TIER_EXPR                                                                               \
    "argMax(plan_tier, (success, toUInt64(event_time) * 1000 + event_ms, plan_tier))"

/* WHERE clause for [since, until) in ms (clamped to DateTime's range), and a tenant. */
static int where_clause(struct buf *b, const struct store_usage_query *q)
{
    int64_t since = q->since_ms < 0 ? 0 : q->since_ms;
    int64_t until =
        q->until_ms > (CH_DATETIME_MAX + 1) * 1000 ? (CH_DATETIME_MAX + 1) * 1000 : q->until_ms;
    int rc = buf_printf(b,
                        " WHERE event_time >= toDateTime(%" PRId64 ")"
                        " AND toUInt64(event_time) <= %" PRId64
                        " AND toUInt64(event_time) * 1000 + event_ms >= %" PRId64
                        " AND toUInt64(event_time) * 1000 + event_ms < %" PRId64,
                        since / 1000, until / 1000, since, until);
    if (rc == 0 && q->tenant_id != NULL) {
        rc = buf_append_str(b, " AND tenant_id = ");
        rc = rc ? rc : sql_quote(b, q->tenant_id);
    }
    return rc;
}

static void copy_str(char *dst, size_t cap, json_t *v)
{
    snprintf(dst, cap, "%s", json_is_string(v) ? json_string_value(v) : "");
}

static int64_t get_i64(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int64_t)json_integer_value(v)
           : json_is_real(v)  ? (int64_t)json_real_value(v)
                              : 0;
}

static double get_f64(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : 0;
}

/* Run a report query whose columns are named k, requests, prompt, completion, total, errors,
 * avg_lat, overage, tier, p95, and turn it into rows. */
static int run_report(struct store_ch *c, const struct store_usage_query *q, const char *sql,
                      struct store_usage_row **out, size_t *nout)
{
    json_t *doc;
    json_t *data;
    int rc = ch_select(c, sql, &doc, &data);
    if (rc < 0) {
        return rc;
    }
    size_t n = json_array_size(data);
    if (n > CH_ROWS_MAX) {
        json_decref(doc);
        return ch_fail(c, "more than %d groups", CH_ROWS_MAX);
    }
    struct store_usage_row *rows = px_calloc(n ? n : 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(data, i);
        struct store_usage_row *r = &rows[i];
        copy_str(r->key, sizeof(r->key), json_object_get(o, "k"));
        if (q->by == STORE_BY_TENANT) {
            copy_str(r->tenant_id, sizeof(r->tenant_id), json_object_get(o, "k"));
        } else if (q->tenant_id != NULL) {
            snprintf(r->tenant_id, sizeof(r->tenant_id), "%s", q->tenant_id);
        }
        copy_str(r->plan_tier, sizeof(r->plan_tier), json_object_get(o, "tier"));
        r->requests = get_i64(o, "requests");
        r->prompt_tokens = get_i64(o, "prompt");
        r->completion_tokens = get_i64(o, "completion");
        r->total_tokens = get_i64(o, "total");
        r->errors = get_i64(o, "errors");
        r->avg_latency_ms = get_f64(o, "avg_lat");
        r->p95_latency_ms = get_f64(o, "p95");
        r->overage_tokens = get_i64(o, "overage");
    }
    json_decref(doc);
    *out = rows;
    *nout = n;
    return 0;
}

/* Every raw row of q's period in event_time order (privax scale's hourly figures), read in
 * pages so that no reply nears CH_RESP_MAX. FINAL: a stray duplicate is never counted twice. */
#define CH_SCAN_PAGE 50000

static int ch_scan(struct store *st, const struct store_usage_query *q, store_scan_fn fn, void *ud)
{
    struct store_ch *c = (struct store_ch *)st;
    struct buf b;
    buf_init(&b, 4096);
    int rc = 0;
    for (uint64_t offset = 0;; offset += CH_SCAN_PAGE) {
        buf_reset(&b);
        rc = buf_printf(&b,
                        "SELECT toUInt64(event_time) * 1000 + event_ms AS t, latency_ms, queue_ms,"
                        " total_tokens, status_code, tenant_id, user_id, backend"
                        " FROM %s.llm_requests FINAL",
                        c->db);
        rc = rc ? rc : where_clause(&b, q);
        rc = rc ? rc
                : buf_printf(&b, " ORDER BY t, spool_id, spool_seq LIMIT %d OFFSET %" PRIu64,
                             CH_SCAN_PAGE, offset);
        if (rc != 0) {
            rc = ch_fail(c, "scan query too long");
            break;
        }
        json_t *doc;
        json_t *data;
        if ((rc = ch_select(c, b.data, &doc, &data)) < 0) {
            break;
        }
        size_t n = json_array_size(data);
        for (size_t i = 0; i < n && rc == 0; i++) {
            json_t *o = json_array_get(data, i);
            const char *t = json_string_value(json_object_get(o, "tenant_id"));
            const char *u = json_string_value(json_object_get(o, "user_id"));
            const char *be = json_string_value(json_object_get(o, "backend"));
            struct store_scan_row r = {
                .event_time_ms = get_i64(o, "t"),
                .latency_ms = get_i64(o, "latency_ms"),
                .queue_ms = get_i64(o, "queue_ms"),
                .total_tokens = get_i64(o, "total_tokens"),
                .status_code = (int)get_i64(o, "status_code"),
                .tenant_id = t ? t : "",
                .user_id = u ? u : "",
                .backend = be ? be : "",
            };
            rc = fn(ud, &r);
        }
        json_decref(doc);
        if (rc != 0 || n < CH_SCAN_PAGE) {
            break;
        }
    }
    buf_cleanup(&b);
    return rc;
}

static int ch_usage(struct store *st, const struct store_usage_query *q,
                    struct store_usage_row **out, size_t *nout)
{
    struct store_ch *c = (struct store_ch *)st;
    struct buf b;
    *out = NULL;
    *nout = 0;
    if ((unsigned)q->by > STORE_BY_DAY) {
        return ch_fail(c, "unknown grouping %d", (int)q->by);
    }
    buf_init(&b, 8192);
    /* Nearest-rank p95: the ceil(0.95 n)-th smallest latency, exactly as SQLite's. */
    int rc = buf_printf(
        &b,
        "SELECT %s AS k, count() AS requests, sum(prompt_tokens) AS prompt,"
        " sum(completion_tokens) AS completion, sum(total_tokens) AS total,"
        " toUInt64(countIf(success = 0)) AS errors, avg(latency_ms) AS avg_lat,"
        " sumIf(total_tokens, overage != 0) AS overage, %s AS tier,"
        " arrayElement(arraySort(groupArray(latency_ms)), toUInt64(intDiv(count() * 95 + 99, 100)))"
        " AS p95 FROM %s.llm_requests FINAL",
        ch_group_expr[q->by], q->by == STORE_BY_TENANT ? CH_TIER_EXPR : "''", c->db);
    rc = rc ? rc : where_clause(&b, q);
    rc = rc ? rc : buf_append_str(&b, " GROUP BY k ORDER BY k");
    rc = rc ? ch_fail(c, "query too long") : run_report(c, q, b.data, out, nout);
    buf_cleanup(&b);
    return rc;
}

/* 1 when ms is 00:00:00.000 UTC of some day; *day_s is that time in seconds. */
static int day_aligned(int64_t ms)
{
    return ms >= 0 && ms % 86400000 == 0;
}

static int month_aligned(int64_t ms)
{
    return day_aligned(ms) && store_month_start_ms(ms, 0) == ms;
}

static int ch_totals(struct store *st, const struct store_usage_query *q,
                     struct store_usage_row **out, size_t *nout)
{
    struct store_ch *c = (struct store_ch *)st;
    *out = NULL;
    *nout = 0;
    int64_t until =
        q->until_ms > (CH_DATETIME_MAX + 1) * 1000 ? (CH_DATETIME_MAX + 1) * 1000 : q->until_ms;
    if ((q->by != STORE_BY_TENANT && q->by != STORE_BY_DAY) || !day_aligned(q->since_ms) ||
        !day_aligned(until)) {
        /* Not what the aggregates can answer: the raw rows can. */
        return ch_usage(st, q, out, nout);
    }
    int monthly = q->by == STORE_BY_TENANT && month_aligned(q->since_ms) && month_aligned(until);
    const char *table = monthly ? "llm_usage_monthly" : "llm_usage_daily";
    const char *col = monthly ? "month" : "day";
    struct buf b;
    buf_init(&b, 8192);
    int rc = buf_printf(
        &b,
        "SELECT %s AS k, countMerge(requests) AS requests, sumMerge(prompt_sum) AS prompt,"
        " sumMerge(completion_sum) AS completion, sumMerge(total_sum) AS total,"
        " sumMerge(errors) AS errors, sumMerge(overage_sum) AS overage, %s AS tier"
        " FROM %s.%s WHERE %s >= toDate(%" PRId64 ") AND %s < toDate(%" PRId64 ")",
        q->by == STORE_BY_TENANT ? "tenant_id" : "toString(day)",
        q->by == STORE_BY_TENANT ? "argMaxMerge(tier)" : "''", c->db, table, col,
        q->since_ms / 86400000, col, until / 86400000);
    if (rc == 0 && q->tenant_id != NULL) {
        rc = buf_append_str(&b, " AND tenant_id = ");
        rc = rc ? rc : sql_quote(&b, q->tenant_id);
    }
    rc = rc ? rc : buf_append_str(&b, " GROUP BY k ORDER BY k");
    rc = rc ? ch_fail(c, "query too long") : run_report(c, q, b.data, out, nout);
    buf_cleanup(&b);
    return rc;
}

/* ---- schema ---- */

/* Each step's statements are idempotent (IF NOT EXISTS), one per HTTP request, valid on 18.16
 * and on current ClickHouse (no DateTime64, TTL, LowCardinality, Map or CREATE OR REPLACE).
 * %1$s is the database. A step is run when its version is not recorded yet, or when one of
 * the tables it creates is missing (an operator dropped it: migrate puts it back). */
struct ch_step {
    int version;
    const char *description;
    const char *tables[4]; /* tables/views the step creates, to notice a missing one */
    const char *sql[6];
};

/* Aggregate columns are named apart from the llm_requests columns: in ClickHouse an alias
 * shadows a column of the same name, so "sumState(total_tokens) AS total_tokens" would turn
 * a later total_tokens into a nested aggregate. */
#define AGG_COLS                                                                                   \
    " tenant_id String,"                                                                           \
    " requests AggregateFunction(count),"                                                          \
    " prompt_sum AggregateFunction(sum, UInt64),"                                                  \
    " completion_sum AggregateFunction(sum, UInt64),"                                              \
    " total_sum AggregateFunction(sum, UInt64),"                                                   \
    " errors AggregateFunction(sum, UInt64),"                                                      \
    " overage_sum AggregateFunction(sum, UInt64),"                                                 \
    " latency_sum AggregateFunction(sum, UInt64),"                                                 \
    " tier AggregateFunction(argMax, String, Tuple(UInt64, String))"

#define AGG_SELECT                                                                                 \
    " tenant_id, countState() AS requests, sumState(prompt_tokens) AS prompt_sum,"                 \
    " sumState(completion_tokens) AS completion_sum, sumState(total_tokens) AS total_sum,"         \
    " sumState(toUInt64(success = 0)) AS errors,"                                                  \
    " sumState(if(overage != 0, total_tokens, toUInt64(0))) AS overage_sum,"                       \
    " sumState(toUInt64(latency_ms)) AS latency_sum,"                                              \
    " argMaxState(plan_tier, (toUInt64(event_time) * 1000 + event_ms, plan_tier)) AS tier"

static const struct ch_step ch_steps[] = {
    {1,
     "llm_requests, daily and monthly per-tenant aggregates",
     {"llm_requests", "llm_usage_daily", "llm_usage_daily_mv", "llm_usage_monthly"},
     {
         "CREATE TABLE IF NOT EXISTS %1$s.llm_requests ("
         " event_time DateTime, event_ms UInt16, request_id String, tenant_id String,"
         " user_id String, api_key_id String, plan_tier String, model_name String,"
         " provider String, backend String, request_type String, stream UInt8,"
         " prompt_tokens UInt64, completion_tokens UInt64, total_tokens UInt64,"
         " usage_estimated UInt8, queue_ms UInt32, ttft_ms Int32, latency_ms UInt32,"
         " status_code UInt16, success UInt8, error_code String, input_chars UInt64,"
         " output_chars UInt64, gpu_id Int16, node_id String, overage UInt8,"
         " spool_id UInt64, spool_seq UInt64"
         ") ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time)"
         " ORDER BY (tenant_id, event_time, spool_id, spool_seq)",
         "CREATE TABLE IF NOT EXISTS %1$s.llm_usage_daily (day Date," AGG_COLS
         ") ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (tenant_id, day)",
         "CREATE MATERIALIZED VIEW IF NOT EXISTS %1$s.llm_usage_daily_mv TO %1$s.llm_usage_daily"
         " AS SELECT toDate(event_time, 'UTC') AS day," AGG_SELECT
         " FROM %1$s.llm_requests GROUP BY day, tenant_id",
         "CREATE TABLE IF NOT EXISTS %1$s.llm_usage_monthly (month Date," AGG_COLS
         ") ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(month)"
         " ORDER BY (tenant_id, month)",
         "CREATE MATERIALIZED VIEW IF NOT EXISTS %1$s.llm_usage_monthly_mv"
         " TO %1$s.llm_usage_monthly AS SELECT toStartOfMonth(toDate(event_time, 'UTC')) AS "
         "month," AGG_SELECT " FROM %1$s.llm_requests GROUP BY month, tenant_id",
         NULL,
     }},
    {2,
     "views for operators: per-node distribution (last hour) and monthly totals",
     {"llm_node_distribution_1h", "llm_monthly_totals", NULL, NULL},
     {
         "CREATE VIEW IF NOT EXISTS %1$s.llm_node_distribution_1h AS SELECT node_id,"
         " count() AS requests, sum(total_tokens) AS tokens FROM %1$s.llm_requests FINAL"
         " WHERE event_time >= now() - INTERVAL 1 HOUR GROUP BY node_id",
         "CREATE VIEW IF NOT EXISTS %1$s.llm_monthly_totals AS SELECT month, tenant_id,"
         " countMerge(requests) AS requests, sumMerge(total_sum) AS total_tokens,"
         " sumMerge(overage_sum) AS overage_tokens, argMaxMerge(tier) AS plan_tier"
         " FROM %1$s.llm_usage_monthly GROUP BY month, tenant_id",
         NULL,
     }},
};

/* The 18.16 "%1$s" positional form is POSIX printf; formatting goes through a helper so
 * -Wformat-nonliteral has one place to look at. */
static int ddl(struct store_ch *c, const char *fmt, int *count)
{
    char sql[4096];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    int n = snprintf(sql, sizeof(sql), fmt, c->db);
#pragma GCC diagnostic pop
    if (n < 0 || (size_t)n >= sizeof(sql)) {
        return ch_fail(c, "statement too long");
    }
    (*count)++;
    return ch_exec(c, sql);
}

static int table_exists(json_t *names, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v)
    {
        if (strcmp(json_string_value(json_object_get(v, "name")), name) == 0) {
            return 1;
        }
    }
    return 0;
}

static int ch_migrate(struct store *st, const struct px_config *cfg,
                      struct store_migrate_result *res)
{
    struct store_ch *c = (struct store_ch *)st;
    char sql[1024];
    json_t *doc = NULL;
    json_t *data;
    int rc;

    memset(res, 0, sizeof(*res));
    /* The database parameter of the URL must name an existing database, so the first
     * statement runs against "default". */
    char db[sizeof(c->db)];
    memcpy(db, c->db, sizeof(db));
    memcpy(c->db, "default", sizeof("default"));
    snprintf(sql, sizeof(sql), "CREATE DATABASE IF NOT EXISTS %s", db);
    rc = ch_exec(c, sql);
    memcpy(c->db, db, sizeof(db));
    res->statements++;
    if (rc < 0) {
        return rc;
    }
    snprintf(sql, sizeof(sql),
             "CREATE TABLE IF NOT EXISTS %s.schema_migrations (version UInt32,"
             " applied_at DateTime, description String) ENGINE = MergeTree ORDER BY version",
             c->db);
    res->statements++;
    if ((rc = ch_exec(c, sql)) < 0) {
        return rc;
    }
    snprintf(sql, sizeof(sql), "SELECT max(version) AS v FROM %s.schema_migrations", c->db);
    if ((rc = ch_select(c, sql, &doc, &data)) < 0) {
        return rc;
    }
    res->version_before = (int)get_i64(json_array_get(data, 0), "v");
    json_decref(doc);
    snprintf(sql, sizeof(sql), "SELECT name FROM system.tables WHERE database = '%s'", c->db);
    if ((rc = ch_select(c, sql, &doc, &data)) < 0) {
        return rc;
    }
    for (size_t i = 0; i < sizeof(ch_steps) / sizeof(ch_steps[0]) && rc == 0; i++) {
        const struct ch_step *s = &ch_steps[i];
        int missing = 0;
        for (size_t t = 0; t < 4 && s->tables[t]; t++) {
            missing |= !table_exists(data, s->tables[t]);
        }
        if (s->version <= res->version_before && !missing) {
            continue;
        }
        if (s->version <= res->version_before) {
            px_log(PX_LOG_WARN, "msg=\"schema objects missing; re-creating\" version=%d",
                   s->version);
        }
        for (size_t k = 0; k < 6 && s->sql[k] && rc == 0; k++) {
            rc = ddl(c, s->sql[k], &res->statements);
        }
        if (rc == 0 && s->version > res->version_before) {
            snprintf(sql, sizeof(sql),
                     "INSERT INTO %s.schema_migrations (version, applied_at, description)"
                     " SELECT %d, now(), '%s'",
                     c->db, s->version, s->description);
            res->statements++;
            rc = ch_exec(c, sql);
        }
    }
    json_decref(doc);
    if (rc < 0) {
        return rc;
    }
    res->version_after =
        CH_SCHEMA_LAST > res->version_before ? CH_SCHEMA_LAST : res->version_before;

    /* Retention: drop whole month partitions older than the cut (no TTL in 18.16). */
    res->retention_cut_ms = store_month_start_ms(px_now_ms(), cfg->retention_months);
    time_t cut_s = (time_t)(res->retention_cut_ms / 1000);
    struct tm tm;
    gmtime_r(&cut_s, &tm);
    long cut_yyyymm = (long)(tm.tm_year + 1900) * 100 + tm.tm_mon + 1;
    snprintf(sql, sizeof(sql),
             "SELECT DISTINCT table, partition FROM system.parts WHERE database = '%s' AND active"
             " AND table IN ('llm_requests', 'llm_usage_daily', 'llm_usage_monthly')"
             " ORDER BY table, partition",
             c->db);
    if ((rc = ch_select(c, sql, &doc, &data)) < 0) {
        return rc;
    }
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v)
    {
        const char *table = json_string_value(json_object_get(v, "table"));
        const char *part = json_string_value(json_object_get(v, "partition"));
        char *end = NULL;
        long p = part ? strtol(part, &end, 10) : 0;
        if (table == NULL || end == part || *end != '\0' || p >= cut_yyyymm) {
            continue;
        }
        snprintf(sql, sizeof(sql), "ALTER TABLE %s.%s DROP PARTITION %ld", c->db, table, p);
        res->statements++;
        if ((rc = ch_exec(c, sql)) < 0) {
            break;
        }
        res->removed++;
        px_log(PX_LOG_INFO, "msg=\"retention: partition dropped\" table=%s partition=%ld", table,
               p);
    }
    json_decref(doc);
    return rc;
}

/* ---- lifecycle ---- */

static void ch_close(struct store *st)
{
    struct store_ch *c = (struct store_ch *)st;
    if (c == NULL) {
        return;
    }
    if (c->curl) {
        curl_easy_cleanup(c->curl);
    }
    curl_slist_free_all(c->hdrs);
    buf_cleanup(&c->body);
    buf_cleanup(&c->resp);
    /* The password does not outlive the store in memory we free. */
    memset(c->password, 0, sizeof(c->password));
    free(c);
}

/* No network I/O here: a ClickHouse that is down must not stop privax from starting (the
 * spool absorbs the rows); the first query reports the problem. */
static int ch_open(struct store **out, const struct px_config *cfg, char *err, size_t errcap)
{
    struct store_ch *c = px_calloc(1, sizeof(*c));
    *out = NULL;
    c->base.ops = &store_clickhouse_ops;
    buf_init(&c->body, CH_BODY_MAX);
    buf_init(&c->resp, CH_RESP_MAX);
    snprintf(c->url, sizeof(c->url), "%s", cfg->ch_url ? cfg->ch_url : "");
    snprintf(c->db, sizeof(c->db), "%s", cfg->ch_database ? cfg->ch_database : "privax");
    snprintf(c->user, sizeof(c->user), "%s", cfg->ch_user ? cfg->ch_user : "default");
    c->timeout_ms = cfg->ch_timeout_ms ? (long)cfg->ch_timeout_ms : 30000;
    if (cfg->ch_password_env != NULL) {
        const char *pw = getenv(cfg->ch_password_env);
        if (pw == NULL) {
            snprintf(err, errcap, "clickhouse: environment variable %s (password_env) is not set",
                     cfg->ch_password_env);
            ch_close(&c->base);
            return PX_ECONFIG;
        }
        if (strlen(pw) >= sizeof(c->password)) {
            snprintf(err, errcap, "clickhouse: the password in %s is too long",
                     cfg->ch_password_env);
            ch_close(&c->base);
            return PX_ECONFIG;
        }
        memcpy(c->password, pw, strlen(pw) + 1);
    }
    c->curl = curl_easy_init();
    if (c->curl == NULL) {
        snprintf(err, errcap, "clickhouse: curl_easy_init failed");
        ch_close(&c->base);
        return PX_ESTORE;
    }
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)CH_CONNECT_MS);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(c->curl, CURLOPT_USERNAME, c->user);
    curl_easy_setopt(c->curl, CURLOPT_PASSWORD, c->password);
    curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    /* curl would otherwise send "Expect: 100-continue" for large bodies and wait for it. */
    c->hdrs = curl_slist_append(NULL, "Expect:");
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->hdrs);
    *out = &c->base;
    return 0;
}

static const char *ch_errmsg(struct store *st)
{
    return ((struct store_ch *)st)->errmsg;
}

const struct store_ops store_clickhouse_ops = {
    .name = "clickhouse",
    .open = ch_open,
    .open_reader = ch_open,
    .insert = ch_insert,
    .landed = ch_landed,
    .usage = ch_usage,
    .totals = ch_totals,
    .migrate = ch_migrate,
    .close = ch_close,
    .errmsg = ch_errmsg,
    .scan = ch_scan,
};
