/* Prometheus metrics: request counters and latency histograms kept on the loop thread, and
 * the text exposition (format 0.0.4) rendered on demand.
 *
 * Design note. A request series is the tuple (tier, model, backend, status), each label an
 * index into the config's own lists (plus one "_other" slot, and "none" for backends), so
 * the number of series is bounded by the config whatever clients send. Series live in an
 * open-addressing hash table keyed by the packed tuple; rendering sorts them so the output
 * is stable (handy for diffs and tests). Histograms are fixed arrays indexed by model or
 * tier. Durations are kept in integer milliseconds and printed as seconds with three
 * decimals, so sums are exact. */
#include "metrics/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/mem.h"

/* Bucket upper bounds in ms, and the same as Prometheus "le" strings in seconds. The queue
 * buckets include 5 s, the seed's "queue delay" threshold. */
static const uint64_t lat_le_ms[] = {100,   250,   500,   1000,   2500,   5000,  10000,
                                     20000, 30000, 60000, 120000, 300000, 600000};
static const char *const lat_le[] = {"0.1", "0.25", "0.5", "1",   "2.5", "5",  "10",
                                     "20",  "30",   "60",  "120", "300", "600"};
static const uint64_t ttft_le_ms[] = {25,   50,   100,   250,   500,   1000,
                                      2500, 5000, 10000, 30000, 60000, 120000};
static const char *const ttft_le[] = {"0.025", "0.05", "0.1", "0.25", "0.5", "1",
                                      "2.5",   "5",    "10",  "30",   "60",  "120"};
static const uint64_t queue_le_ms[] = {10,   50,   100,   250,   500,   1000,
                                       2500, 5000, 10000, 30000, 60000, 300000};
static const char *const queue_le[] = {"0.01", "0.05", "0.1", "0.25", "0.5", "1",
                                       "2.5",  "5",    "10",  "30",   "60",  "300"};
/* Limit checks (admission by the limiter) in microseconds: local checks take well under 10
 * µs; a Redis round trip on loopback is 0.05-0.3 ms, so the buckets are fine there. */
static const uint64_t lim_le_us[] = {10,   25,   50,   100,   200,   300,    500,
                                     1000, 2500, 5000, 10000, 50000, 250000, 1000000};
static const char *const lim_le[] = {"0.00001", "0.000025", "0.00005", "0.0001", "0.0002",
                                     "0.0003",  "0.0005",   "0.001",   "0.0025", "0.005",
                                     "0.01",    "0.05",     "0.25",    "1"};
#define NBUCKETS 14 /* the largest bucket list above */

_Static_assert(sizeof(lat_le_ms) / sizeof(lat_le_ms[0]) == sizeof(lat_le) / sizeof(lat_le[0]),
               "latency buckets");
_Static_assert(sizeof(ttft_le_ms) / sizeof(ttft_le_ms[0]) == sizeof(ttft_le) / sizeof(ttft_le[0]),
               "ttft buckets");
_Static_assert(sizeof(queue_le_ms) / sizeof(queue_le_ms[0]) ==
                   sizeof(queue_le) / sizeof(queue_le[0]),
               "queue buckets");
_Static_assert(sizeof(lim_le_us) / sizeof(lim_le_us[0]) == sizeof(lim_le) / sizeof(lim_le[0]),
               "limits buckets");
_Static_assert(sizeof(lat_le_ms) / sizeof(lat_le_ms[0]) <= NBUCKETS, "NBUCKETS");
_Static_assert(sizeof(lim_le_us) / sizeof(lim_le_us[0]) <= NBUCKETS, "NBUCKETS");

struct hist {
    uint64_t count;            /* observations */
    uint64_t sum;              /* their sum, in the histogram's unit (ms or µs) */
    uint64_t bucket[NBUCKETS]; /* observations <= le[i] and > le[i-1] (not cumulative) */
};

struct series {
    uint64_t key; /* packed (tier, model, backend, status) + 1; 0 = empty slot */
    uint32_t tier, model, backend;
    int status;                 /* 100..599, or 0 for anything else */
    uint64_t requests;          /* requests finished */
    uint64_t prompt_tokens;     /* their prompt tokens */
    uint64_t completion_tokens; /* their completion tokens */
};

struct metrics {
    const struct px_config *cfg;
    size_t ntier, nmodel, nbackend; /* label slots: configured + "_other" (+ "none") */
    struct series *tab;             /* open addressing, cap entries */
    size_t cap;                     /* power of two */
    size_t used;                    /* series stored */
    struct hist *latency;           /* by model slot */
    struct hist *ttft;              /* by model slot */
    struct hist *queue;             /* by tier slot */
    struct hist limits[3];          /* limit checks, µs, by lim_mode(): local, redis, degraded */
    uint64_t requests;              /* all observed */
};

struct metrics *metrics_new(const struct px_config *cfg)
{
    struct metrics *m = px_calloc(1, sizeof(*m));
    m->cfg = cfg;
    m->ntier = cfg->ntiers + 1;
    m->nmodel = cfg->nmodels + 1;
    m->nbackend = cfg->nbackends + 2; /* configured, "none", "_other" */
    m->cap = 64;
    m->tab = px_calloc(m->cap, sizeof(*m->tab));
    m->latency = px_calloc(m->nmodel, sizeof(*m->latency));
    m->ttft = px_calloc(m->nmodel, sizeof(*m->ttft));
    m->queue = px_calloc(m->ntier, sizeof(*m->queue));
    return m;
}

void metrics_free(struct metrics *m)
{
    if (m == NULL) {
        return;
    }
    free(m->tab);
    free(m->latency);
    free(m->ttft);
    free(m->queue);
    free(m);
}

uint64_t metrics_requests(const struct metrics *m)
{
    return m->requests;
}

/* Label slot of a tier, model or backend name: its config index, or "_other". */
static uint32_t tier_slot(const struct metrics *m, const char *s)
{
    long i = px_config_tier(m->cfg, s, strlen(s));
    return i >= 0 ? (uint32_t)i : (uint32_t)m->cfg->ntiers;
}

static uint32_t model_slot(const struct metrics *m, const char *s)
{
    long i = px_config_model(m->cfg, s, strlen(s));
    return i >= 0 ? (uint32_t)i : (uint32_t)m->cfg->nmodels;
}

static uint32_t backend_slot(const struct metrics *m, const char *s)
{
    if (s[0] == '\0') {
        return (uint32_t)m->cfg->nbackends; /* "none" */
    }
    long i = px_config_backend(m->cfg, s, strlen(s));
    return i >= 0 ? (uint32_t)i : (uint32_t)m->cfg->nbackends + 1;
}

static uint64_t pack(const struct metrics *m, uint32_t t, uint32_t mo, uint32_t b, int status)
{
    return ((((uint64_t)t * m->nmodel + mo) * m->nbackend + b) * 600 + (uint64_t)status) + 1;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static struct series *slot_for(struct series *tab, size_t cap, uint64_t key)
{
    size_t i = (size_t)mix(key) & (cap - 1);
    while (tab[i].key != 0 && tab[i].key != key) {
        i = (i + 1) & (cap - 1);
    }
    return &tab[i];
}

static void grow(struct metrics *m)
{
    size_t ncap = m->cap * 2;
    struct series *nt = px_calloc(ncap, sizeof(*nt));
    for (size_t i = 0; i < m->cap; i++) {
        if (m->tab[i].key != 0) {
            *slot_for(nt, ncap, m->tab[i].key) = m->tab[i];
        }
    }
    free(m->tab);
    m->tab = nt;
    m->cap = ncap;
}

static struct series *series_get(struct metrics *m, uint32_t t, uint32_t mo, uint32_t b, int status)
{
    if (m->used >= METRICS_SERIES_MAX) {
        /* Full (a config with thousands of models and backends): fold new tuples into one. */
        struct series *s = slot_for(m->tab, m->cap, pack(m, t, mo, b, status));
        if (s->key != 0) {
            return s;
        }
        t = (uint32_t)m->cfg->ntiers;
        mo = (uint32_t)m->cfg->nmodels;
        b = (uint32_t)m->cfg->nbackends + 1;
        status = 0;
    }
    uint64_t key = pack(m, t, mo, b, status);
    struct series *s = slot_for(m->tab, m->cap, key);
    if (s->key == 0) {
        if ((m->used + 1) * 2 > m->cap) {
            grow(m);
            s = slot_for(m->tab, m->cap, key);
        }
        s->key = key;
        s->tier = t;
        s->model = mo;
        s->backend = b;
        s->status = status;
        m->used++;
    }
    return s;
}

static void hist_observe(struct hist *h, const uint64_t *le, size_t nle, int64_t value)
{
    uint64_t v = value > 0 ? (uint64_t)value : 0;
    h->count++;
    h->sum += v;
    for (size_t i = 0; i < nle; i++) {
        if (v <= le[i]) {
            h->bucket[i]++;
            return;
        }
    }
    /* Above the last bound: only in +Inf (count). */
}

void metrics_observe(struct metrics *m, const struct usage_event *ev)
{
    uint32_t t = tier_slot(m, ev->plan_tier);
    uint32_t mo = model_slot(m, ev->model_name);
    uint32_t b = backend_slot(m, ev->backend);
    int status = ev->status_code >= 100 && ev->status_code <= 599 ? ev->status_code : 0;
    struct series *s = series_get(m, t, mo, b, status);
    s->requests++;
    s->prompt_tokens += ev->prompt_tokens > 0 ? (uint64_t)ev->prompt_tokens : 0;
    s->completion_tokens += ev->completion_tokens > 0 ? (uint64_t)ev->completion_tokens : 0;
    m->requests++;
    int routed = ev->backend[0] != '\0';
    if (routed) {
        hist_observe(&m->latency[mo], lat_le_ms, sizeof(lat_le_ms) / sizeof(lat_le_ms[0]),
                     ev->latency_ms);
        if (ev->ttft_ms >= 0) {
            hist_observe(&m->ttft[mo], ttft_le_ms, sizeof(ttft_le_ms) / sizeof(ttft_le_ms[0]),
                         ev->ttft_ms);
        }
    }
    if (routed || ev->queue_ms > 0) {
        hist_observe(&m->queue[t], queue_le_ms, sizeof(queue_le_ms) / sizeof(queue_le_ms[0]),
                     ev->queue_ms);
    }
}

static const char *const lim_modes[] = {"local", "redis", "degraded"};

void metrics_observe_limits(struct metrics *m, const char *mode, uint64_t us)
{
    size_t k = 2;
    for (size_t i = 0; i < 2; i++) {
        if (strcmp(mode, lim_modes[i]) == 0) {
            k = i;
        }
    }
    hist_observe(&m->limits[k], lim_le_us, sizeof(lim_le_us) / sizeof(lim_le_us[0]),
                 us > INT64_MAX ? INT64_MAX : (int64_t)us);
}

/* ------------------------------------------------------------------------------------------
 * Rendering. Every append goes through struct out, which remembers the first failure so the
 * code below need not check each call. */

struct out {
    struct buf *b;
    int rc;
};

int metrics_escape_label(struct buf *out, const char *s)
{
    const char *run = s;
    int rc = 0;
    for (const char *p = s; *p != '\0' && rc == 0; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (esc != NULL) {
            rc = buf_append(out, run, (size_t)(p - run));
            if (rc == 0) {
                rc = buf_append(out, esc, 2);
            }
            run = p + 1;
        }
    }
    return rc == 0 ? buf_append_str(out, run) : rc;
}

static void put(struct out *o, const char *s)
{
    if (o->rc == 0) {
        o->rc = buf_append_str(o->b, s);
    }
}

static void putf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void putf(struct out *o, const char *fmt, ...)
{
    if (o->rc != 0) {
        return;
    }
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        o->rc = PX_EOVERFLOW; /* every format here is short: a bug, not input */
        return;
    }
    o->rc = buf_append(o->b, tmp, (size_t)n);
}

/* name="value" with the value escaped; first 1 for the first label (no comma). */
static void label(struct out *o, int first, const char *name, const char *value)
{
    putf(o, "%s%s=\"", first ? "" : ",", name);
    if (o->rc == 0) {
        o->rc = metrics_escape_label(o->b, value);
    }
    put(o, "\"");
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    putf(o, "# HELP %s ", name);
    put(o, help); /* help texts are constants without backslashes or newlines */
    putf(o, "\n# TYPE %s %s\n", name, type);
}

/* v in ms (per_s 1000) or µs (per_s 1000000), printed as exact decimal seconds. */
static void seconds(struct out *o, uint64_t v, uint64_t per_s)
{
    putf(o, per_s == 1000 ? "%llu.%03llu" : "%llu.%06llu", (unsigned long long)(v / per_s),
         (unsigned long long)(v % per_s));
}

static const char *tier_name(const struct metrics *m, uint32_t i)
{
    return i < m->cfg->ntiers ? m->cfg->tiers[i].name : "_other";
}

static const char *lim_mode_name(const struct metrics *m, uint32_t i)
{
    (void)m;
    return lim_modes[i];
}

static const char *model_name(const struct metrics *m, uint32_t i)
{
    return i < m->cfg->nmodels ? m->cfg->models[i].name : "_other";
}

static const char *backend_name(const struct metrics *m, uint32_t i)
{
    if (i < m->cfg->nbackends) {
        return m->cfg->backends[i].name;
    }
    return i == m->cfg->nbackends ? "none" : "_other";
}

static int cmp_series(const void *a, const void *b)
{
    const struct series *x = *(const struct series *const *)a;
    const struct series *y = *(const struct series *const *)b;
    return (x->key > y->key) - (x->key < y->key);
}

static void series_labels(struct out *o, const struct metrics *m, const struct series *s)
{
    label(o, 1, "tier", tier_name(m, s->tier));
    label(o, 0, "model", model_name(m, s->model));
    label(o, 0, "backend", backend_name(m, s->backend));
    if (s->status != 0) {
        putf(o, ",status=\"%d\"", s->status);
    } else {
        put(o, ",status=\"other\"");
    }
}

static void render_requests(struct out *o, const struct metrics *m)
{
    const struct series **v = px_malloc((m->used ? m->used : 1) * sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->tab[i].key != 0) {
            v[n++] = &m->tab[i];
        }
    }
    qsort(v, n, sizeof(*v), cmp_series);
    family(o, "privax_requests_total", "counter",
           "Requests finished (one per usage row), by plan tier, model, backend and HTTP status.");
    for (size_t i = 0; i < n; i++) {
        put(o, "privax_requests_total{");
        series_labels(o, m, v[i]);
        putf(o, "} %llu\n", (unsigned long long)v[i]->requests);
    }
    family(o, "privax_tokens_total", "counter",
           "Tokens of finished requests, by plan tier, model, backend, HTTP status and kind "
           "(prompt or completion).");
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            put(o, "privax_tokens_total{");
            series_labels(o, m, v[i]);
            putf(o, ",kind=\"%s\"} %llu\n", k ? "completion" : "prompt",
                 (unsigned long long)(k ? v[i]->completion_tokens : v[i]->prompt_tokens));
        }
    }
    free(v);
}

static void render_hist(struct out *o, const char *name, const char *help, const char *lname,
                        const char *(*lvalue)(const struct metrics *, uint32_t),
                        const struct hist *h, size_t nh, size_t nconfigured, const char *const *le,
                        size_t nle, uint64_t per_s, const struct metrics *m)
{
    family(o, name, "histogram", help);
    for (size_t i = 0; i < nh; i++) {
        if (i >= nconfigured && h[i].count == 0) {
            continue; /* "_other" only once something was counted there */
        }
        uint64_t cum = 0;
        for (size_t k = 0; k <= nle; k++) {
            cum += k < nle ? h[i].bucket[k] : 0;
            putf(o, "%s_bucket{", name);
            label(o, 1, lname, lvalue(m, (uint32_t)i));
            putf(o, ",le=\"%s\"} %llu\n", k < nle ? le[k] : "+Inf",
                 (unsigned long long)(k < nle ? cum : h[i].count));
        }
        putf(o, "%s_sum{", name);
        label(o, 1, lname, lvalue(m, (uint32_t)i));
        put(o, "} ");
        seconds(o, h[i].sum, per_s);
        putf(o, "\n%s_count{", name);
        label(o, 1, lname, lvalue(m, (uint32_t)i));
        putf(o, "} %llu\n", (unsigned long long)h[i].count);
    }
}

static void render_gauges(struct out *o, const struct metrics_gauges *g)
{
    family(o, "privax_info", "gauge", "Always 1; the labels say which node and version.");
    put(o, "privax_info{");
    label(o, 1, "node_id", g->node_id ? g->node_id : "");
    if (g->version != NULL) {
        label(o, 0, "version", g->version);
    }
    put(o, "} 1\n");
    family(o, "privax_uptime_seconds", "gauge", "Seconds since the gateway started.");
    putf(o, "privax_uptime_seconds %llu\n", (unsigned long long)g->uptime_s);
    family(o, "privax_inflight_requests", "gauge",
           "Chat requests in flight (waiting in the queue or relaying).");
    putf(o, "privax_inflight_requests %llu\n", (unsigned long long)g->inflight);
    family(o, "privax_queue_length", "gauge", "Requests waiting for a free backend slot.");
    putf(o, "privax_queue_length %llu\n", (unsigned long long)g->queue_length);
    family(o, "privax_queue_oldest_wait_seconds", "gauge",
           "How long the oldest waiting request has waited (0 when none waits).");
    put(o, "privax_queue_oldest_wait_seconds ");
    seconds(o, g->queue_oldest_ms, 1000);
    put(o, "\n");

    family(o, "privax_backend_up", "gauge",
           "1 when the backend is serving, 0 when it is marked down or on trial.");
    for (size_t i = 0; i < g->nbackends; i++) {
        put(o, "privax_backend_up{");
        label(o, 1, "backend", g->backends[i].name);
        putf(o, "} %d\n", g->backends[i].up ? 1 : 0);
    }
    family(o, "privax_backend_inflight_requests", "gauge",
           "Requests holding one of the backend's slots.");
    for (size_t i = 0; i < g->nbackends; i++) {
        put(o, "privax_backend_inflight_requests{");
        label(o, 1, "backend", g->backends[i].name);
        putf(o, "} %d\n", g->backends[i].inflight);
    }
    family(o, "privax_backend_max_concurrency", "gauge", "The backend's slots (max_concurrency).");
    for (size_t i = 0; i < g->nbackends; i++) {
        put(o, "privax_backend_max_concurrency{");
        label(o, 1, "backend", g->backends[i].name);
        putf(o, "} %d\n", g->backends[i].max_concurrency);
    }

    family(o, "privax_usage_backlog", "gauge",
           "Usage rows handed to the writer and not yet committed to the store.");
    putf(o, "privax_usage_backlog %llu\n", (unsigned long long)g->usage_backlog);
    family(o, "privax_usage_last_commit_timestamp_seconds", "gauge",
           "Unix time of the last usage batch committed to the store (absent before the first).");
    if (g->usage_last_commit_ms > 0) {
        put(o, "privax_usage_last_commit_timestamp_seconds ");
        seconds(o, (uint64_t)g->usage_last_commit_ms, 1000);
        put(o, "\n");
    }
    family(o, "privax_usage_spool_bytes", "gauge",
           "Size of the local usage spool on disk (rows not yet confirmed by the store).");
    putf(o, "privax_usage_spool_bytes %llu\n", (unsigned long long)g->usage_spool_bytes);
    if (g->usage_spool_max_bytes > 0) {
        family(o, "privax_usage_spool_max_bytes", "gauge",
               "The spool's cap (usage.spool_max_bytes).");
        putf(o, "privax_usage_spool_max_bytes %llu\n",
             (unsigned long long)g->usage_spool_max_bytes);
    }
    family(o, "privax_usage_store_up", "gauge",
           "1 when the last attempt to write to the usage store succeeded, else 0.");
    putf(o, "privax_usage_store_up %d\n", g->usage_store_up ? 1 : 0);
    family(o, "privax_usage_shipped_rows_total", "counter", "Usage rows the store confirmed.");
    putf(o, "privax_usage_shipped_rows_total %llu\n", (unsigned long long)g->usage_shipped);
    family(o, "privax_usage_ship_failures_total", "counter",
           "Failed attempts to write to the store.");
    putf(o, "privax_usage_ship_failures_total %llu\n", (unsigned long long)g->usage_ship_failures);
    family(o, "privax_usage_dropped_rows_total", "counter",
           "Usage rows lost (spool full and the memory queue at its cap); should stay 0.");
    putf(o, "privax_usage_dropped_rows_total %llu\n", (unsigned long long)g->usage_dropped);
    family(o, "privax_limits_mode", "gauge", "Always 1; the mode label says how limits are kept.");
    put(o, "privax_limits_mode{");
    label(o, 1, "mode", g->limits_mode ? g->limits_mode : "");
    put(o, "} 1\n");

    family(o, "privax_gpu_source", "gauge",
           "Always 1; the source label says where GPU figures "
           "come from (nvml, command, file or none).");
    put(o, "privax_gpu_source{");
    label(o, 1, "source", g->gpu_source ? g->gpu_source : "none");
    put(o, "} 1\n");
    family(o, "privax_gpu_samples_total", "counter", "GPU samples taken, by result.");
    putf(o, "privax_gpu_samples_total{result=\"ok\"} %llu\n",
         (unsigned long long)g->gpu_samples_ok);
    putf(o, "privax_gpu_samples_total{result=\"error\"} %llu\n",
         (unsigned long long)g->gpu_samples_failed);
    /* Unknown figures have no sample at all: an absent series, never a made-up number. */
    family(o, "privax_gpu_utilization_ratio", "gauge",
           "GPU utilisation over the driver's last period, 0 to 1.");
    for (size_t i = 0; i < g->ngpus; i++) {
        if (g->gpus[i].util_pct >= 0) {
            putf(o, "privax_gpu_utilization_ratio{gpu=\"%d\"} %.4f\n", g->gpus[i].id,
                 g->gpus[i].util_pct / 100.0);
        }
    }
    family(o, "privax_gpu_memory_used_bytes", "gauge", "GPU memory in use.");
    for (size_t i = 0; i < g->ngpus; i++) {
        if (g->gpus[i].mem_used_mib >= 0) {
            putf(o, "privax_gpu_memory_used_bytes{gpu=\"%d\"} %llu\n", g->gpus[i].id,
                 (unsigned long long)(g->gpus[i].mem_used_mib * 1048576.0 + 0.5));
        }
    }
    family(o, "privax_gpu_memory_total_bytes", "gauge", "GPU memory installed.");
    for (size_t i = 0; i < g->ngpus; i++) {
        if (g->gpus[i].mem_total_mib >= 0) {
            putf(o, "privax_gpu_memory_total_bytes{gpu=\"%d\"} %llu\n", g->gpus[i].id,
                 (unsigned long long)(g->gpus[i].mem_total_mib * 1048576.0 + 0.5));
        }
    }
}

int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct buf *b)
{
    struct out o = {.b = b, .rc = 0};
    render_requests(&o, m);
    render_hist(&o, "privax_request_duration_seconds",
                "Time from arrival to the end of the response, for requests that reached a "
                "backend, by model.",
                "model", model_name, m->latency, m->nmodel, m->cfg->nmodels, lat_le,
                sizeof(lat_le) / sizeof(lat_le[0]), 1000, m);
    render_hist(&o, "privax_time_to_first_token_seconds",
                "Time from arrival to the first byte of the answer sent to the client, by model.",
                "model", model_name, m->ttft, m->nmodel, m->cfg->nmodels, ttft_le,
                sizeof(ttft_le) / sizeof(ttft_le[0]), 1000, m);
    render_hist(&o, "privax_queue_wait_seconds",
                "Time spent waiting in privax's queue for a backend slot, by plan tier.", "tier",
                tier_name, m->queue, m->ntier, m->cfg->ntiers, queue_le,
                sizeof(queue_le) / sizeof(queue_le[0]), 1000, m);
    render_hist(&o, "privax_limits_check_seconds",
                "Time from asking the limiter to its decision (a Redis round trip in redis "
                "mode), by the limits mode at the decision.",
                "mode", lim_mode_name, m->limits, 3, 2, lim_le, sizeof(lim_le) / sizeof(lim_le[0]),
                1000000, m);
    render_gauges(&o, g);
    return o.rc;
}
