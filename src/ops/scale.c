/* privax scale's rules (see scale.h and docs/internals/scale.md).
 *
 * Design note on "regularly". The seed says to add a node when queue delays over 5 s and
 * more than 25 concurrent users happen regularly, not once. Both are measured per hour of
 * the window that had traffic (hourly p95 of queue_ms; hourly peak of distinct users in
 * flight), and the value reported is the hourly figure reached in at least regular_pct of
 * those hours: the k-th largest hourly value, k = ceil(hours x regular_pct / 100). So the
 * value is directly comparable with the threshold, and "value > threshold" means "over the
 * threshold in at least regular_pct of the active hours".
 *
 * Concurrent users: a row is in flight from event_time to event_time + latency_ms. Rows come
 * in arrival order; before each arrival, every row that ended at or before it is retired
 * (a min-heap on end time), and a per-user count of rows in flight says how many distinct
 * users are in flight. The peak over arrivals is the exact peak, since the count only rises
 * at an arrival. */
#include "ops/scale.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/mem.h"
#include "store/store.h"

#define HOUR_MS INT64_C(3600000)

void scale_config_defaults(struct px_config *cfg)
{
    /* The same values as scale_opts[] in src/config/config.c (a unit test compares them). */
    cfg->scale_gpu_pct = 80;
    cfg->scale_gpu_window_s = 300;
    cfg->scale_queue_ms = 5000;
    cfg->scale_monthly_tokens = 100000000;
    cfg->scale_users = 25;
    cfg->scale_window_days = 7;
    cfg->scale_regular_pct = 10;
    cfg->scale_node_cost_cents = 30000;
    cfg->scale_node_tokens = 130000000;
    cfg->scale_node_users = 25;
    cfg->scale_breakeven_pence = 50000;
}

/* ------------------------------------------------------------------------------------------
 * GPU */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int scale_gpu_level(const double *hist, size_t n, uint64_t interval_ms, uint64_t window_s,
                    double *level, size_t *known)
{
    *level = -1;
    *known = 0;
    if (interval_ms == 0) {
        return -1;
    }
    uint64_t w = (window_s * 1000 + interval_ms - 1) / interval_ms;
    if (w == 0) {
        w = 1;
    }
    size_t take = n < w ? n : (size_t)w;
    double *v = px_malloc((take ? take : 1) * sizeof(*v));
    size_t k = 0;
    for (size_t i = n - take; i < n; i++) {
        if (hist[i] >= 0) {
            v[k++] = hist[i];
        }
    }
    *known = k;
    if (k == 0 || (uint64_t)k * 5 < w * 4) {
        free(v);
        return -1;
    }
    qsort(v, k, sizeof(*v), cmp_double);
    *level = v[(k + 9) / 10 - 1]; /* nearest rank: the ceil(0.1 k)-th smallest */
    free(v);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * The scan */

struct user_ent {
    char *key;    /* "tenant\x1fuser", NULL = empty slot */
    int64_t live; /* rows of this user in flight */
};

struct end_ent {
    int64_t end_ms; /* when the row stops being in flight */
    size_t user;    /* index into utab[] */
};

struct i64v {
    int64_t *v;
    size_t n, cap;
};

struct scale_scan {
    int64_t queue_limit_ms; /* hourly p95 queue limit */
    int64_t users_limit;    /* hourly peak users limit */
    int64_t last_ms;        /* event_time of the previous row */
    int64_t hour;           /* current hour number, or -1 before the first row */
    struct i64v q;          /* queue_ms of the current hour's rows */
    int64_t hour_peak;      /* peak users in flight within the current hour */
    struct user_ent *utab;  /* open addressing on key */
    size_t ucap, uused;     /* slots, used slots */
    struct end_ent *heap;   /* min-heap on end_ms */
    size_t nheap, hcap;     /* entries, allocated */
    int64_t live_users;     /* users with live > 0 */
    struct i64v p95s;       /* per finished hour: p95 queue_ms */
    struct i64v peaks;      /* per finished hour: peak users in flight */
    int finished;           /* scale_scan_finish ran */
    struct scale_scan_result res;
};

static void push64(struct i64v *a, int64_t x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = px_realloc(a->v, a->cap * sizeof(*a->v));
    }
    a->v[a->n++] = x;
}

struct scale_scan *scale_scan_new(int64_t queue_ms, int64_t users)
{
    struct scale_scan *s = px_calloc(1, sizeof(*s));
    s->queue_limit_ms = queue_ms;
    s->users_limit = users;
    s->hour = -1;
    s->last_ms = INT64_MIN;
    s->ucap = 256;
    s->utab = px_calloc(s->ucap, sizeof(*s->utab));
    return s;
}

void scale_scan_free(struct scale_scan *s)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->ucap; i++) {
        free(s->utab[i].key);
    }
    free(s->utab);
    free(s->heap);
    free(s->q.v);
    free(s->p95s.v);
    free(s->peaks.v);
    free(s);
}

static uint64_t fnv1a(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = a; *p; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    }
    h = (h ^ 0x1f) * 1099511628211ULL;
    for (const char *p = b; *p; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    }
    return h;
}

static int key_eq(const char *key, const char *tenant, const char *user)
{
    size_t tl = strlen(tenant);
    return strncmp(key, tenant, tl) == 0 && key[tl] == '\x1f' && strcmp(key + tl + 1, user) == 0;
}

static size_t probe(const struct user_ent *tab, size_t cap, uint64_t h, const char *tenant,
                    const char *user)
{
    size_t i = (size_t)h & (cap - 1);
    while (tab[i].key != NULL && !key_eq(tab[i].key, tenant, user)) {
        i = (i + 1) & (cap - 1);
    }
    return i;
}

/* Index of (tenant, user) in utab, adding it. The table only grows, so indexes held by the
 * heap stay valid across a rehash only through this remap: rehash moves entries, so the heap
 * is rewritten with the new indexes. */
static size_t user_index(struct scale_scan *s, const char *tenant, const char *user)
{
    uint64_t h = fnv1a(tenant, user);
    size_t i = probe(s->utab, s->ucap, h, tenant, user);
    if (s->utab[i].key != NULL) {
        return i;
    }
    if ((s->uused + 1) * 2 > s->ucap) {
        size_t ncap = s->ucap * 2;
        struct user_ent *nt = px_calloc(ncap, sizeof(*nt));
        size_t *moved = px_malloc(s->ucap * sizeof(*moved));
        for (size_t k = 0; k < s->ucap; k++) {
            if (s->utab[k].key == NULL) {
                continue;
            }
            char *sep = strchr(s->utab[k].key, '\x1f');
            *sep = '\0';
            size_t j = probe(nt, ncap, fnv1a(s->utab[k].key, sep + 1), s->utab[k].key, sep + 1);
            *sep = '\x1f';
            nt[j] = s->utab[k];
            moved[k] = j;
        }
        for (size_t k = 0; k < s->nheap; k++) {
            s->heap[k].user = moved[s->heap[k].user];
        }
        free(moved);
        free(s->utab);
        s->utab = nt;
        s->ucap = ncap;
        i = probe(s->utab, s->ucap, h, tenant, user);
    }
    size_t tl = strlen(tenant), ul = strlen(user);
    char *key = px_malloc(tl + ul + 2);
    memcpy(key, tenant, tl);
    key[tl] = '\x1f';
    memcpy(key + tl + 1, user, ul + 1);
    s->utab[i].key = key;
    s->utab[i].live = 0;
    s->uused++;
    s->res.distinct_users++;
    return i;
}

static void heap_push(struct scale_scan *s, int64_t end_ms, size_t user)
{
    if (s->nheap == s->hcap) {
        s->hcap = s->hcap ? s->hcap * 2 : 256;
        s->heap = px_realloc(s->heap, s->hcap * sizeof(*s->heap));
    }
    size_t i = s->nheap++;
    while (i > 0 && s->heap[(i - 1) / 2].end_ms > end_ms) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i].end_ms = end_ms;
    s->heap[i].user = user;
}

static struct end_ent heap_pop(struct scale_scan *s)
{
    struct end_ent top = s->heap[0];
    struct end_ent last = s->heap[--s->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap) {
            break;
        }
        if (c + 1 < s->nheap && s->heap[c + 1].end_ms < s->heap[c].end_ms) {
            c++;
        }
        if (s->heap[c].end_ms >= last.end_ms) {
            break;
        }
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->nheap > 0) {
        s->heap[i] = last;
    }
    return top;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void close_hour(struct scale_scan *s)
{
    if (s->q.n == 0) {
        return;
    }
    qsort(s->q.v, s->q.n, sizeof(s->q.v[0]), cmp_i64);
    int64_t p95 = s->q.v[(s->q.n * 95 + 99) / 100 - 1];
    push64(&s->p95s, p95);
    push64(&s->peaks, s->hour_peak);
    s->res.hours++;
    s->res.queue_hours_over += p95 > s->queue_limit_ms;
    s->res.users_hours_over += s->hour_peak > s->users_limit;
    if (p95 > s->res.worst_queue_p95_ms) {
        s->res.worst_queue_p95_ms = p95;
    }
    s->q.n = 0;
    s->hour_peak = 0;
}

int scale_scan_add(struct scale_scan *s, const struct scale_row *r)
{
    if (s->finished || r->event_time_ms < s->last_ms) {
        return PX_EPARSE;
    }
    s->last_ms = r->event_time_ms;
    if (!r->served) {
        return 0;
    }
    int64_t hour = r->event_time_ms / HOUR_MS;
    if (hour != s->hour) {
        close_hour(s);
        s->hour = hour;
    }
    while (s->nheap > 0 && s->heap[0].end_ms <= r->event_time_ms) {
        struct end_ent e = heap_pop(s);
        if (--s->utab[e.user].live == 0) {
            s->live_users--;
        }
    }
    size_t u = user_index(s, r->tenant_id ? r->tenant_id : "", r->user_id ? r->user_id : "");
    if (s->utab[u].live++ == 0) {
        s->live_users++;
    }
    int64_t lat = r->latency_ms > 0 ? r->latency_ms : 0;
    heap_push(s, r->event_time_ms + lat, u);
    if (s->live_users > s->hour_peak) {
        s->hour_peak = s->live_users;
    }
    if (s->live_users > s->res.peak_users) {
        s->res.peak_users = s->live_users;
    }
    push64(&s->q, r->queue_ms > 0 ? r->queue_ms : 0);
    s->res.rows++;
    return 0;
}

/* The k-th largest of v (k >= 1), k = ceil(n x pct / 100). Sorts v. */
static int64_t regular_value(struct i64v *v, int64_t pct)
{
    if (v->n == 0) {
        return 0;
    }
    qsort(v->v, v->n, sizeof(v->v[0]), cmp_i64);
    size_t k = (size_t)(((int64_t)v->n * pct + 99) / 100);
    if (k == 0) {
        k = 1;
    }
    return v->v[v->n - k];
}

void scale_scan_finish(struct scale_scan *s, int64_t regular_pct, struct scale_scan_result *out)
{
    if (!s->finished) {
        close_hour(s);
        s->res.queue_regular_p95_ms = regular_value(&s->p95s, regular_pct);
        s->res.users_regular_peak = regular_value(&s->peaks, regular_pct);
        s->finished = 1;
    }
    *out = s->res;
}

/* ------------------------------------------------------------------------------------------
 * Revenue */

int64_t scale_revenue_pence(const struct px_config *cfg, const struct scale_tenant_usage *t,
                            size_t n, int64_t *base_out, int64_t *overage_out)
{
    /* The same rules as privax bill (src/cli/cmd_bill.c), through the same store helpers:
     * store_tenant_plan picks the tier and allowance, store_overage_pence prices the tokens
     * over it (only for tiers that bill overage), and tenants pinned to a tier pay its price
     * even in a month without usage. */
    int64_t base = 0, overage = 0;
    for (size_t i = 0; i < n && cfg->ntiers > 0; i++) {
        if (!store_tenant_billable(cfg, t[i].tenant_id, t[i].requests, t[i].errors)) {
            continue;
        }
        int64_t allowance = 0;
        size_t tier = store_tenant_plan(cfg, t[i].tenant_id, t[i].plan_tier, &allowance);
        const struct px_tier_cfg *tc = &cfg->tiers[tier];
        base += tc->price_pence;
        if (tc->overage == PX_OVERAGE_BILL && t[i].total_tokens > allowance) {
            overage +=
                store_overage_pence(t[i].total_tokens - allowance, tc->overage_pence_per_mtok);
        }
    }
    for (size_t k = 0; k < cfg->ntenants && cfg->ntiers > 0; k++) {
        int seen = !cfg->tenants[k].pinned;
        for (size_t i = 0; i < n && !seen; i++) {
            seen = strcmp(t[i].tenant_id, cfg->tenants[k].id) == 0;
        }
        if (!seen) {
            int64_t allowance;
            base += cfg->tiers[store_tenant_plan(cfg, cfg->tenants[k].id, NULL, &allowance)]
                        .price_pence;
        }
    }
    if (base_out != NULL) {
        *base_out = base;
    }
    if (overage_out != NULL) {
        *overage_out = overage;
    }
    return base + overage;
}

/* ------------------------------------------------------------------------------------------
 * The report */

const char *scale_verdict_name(enum scale_verdict v)
{
    return v == SCALE_YES ? "add a node" : v == SCALE_NO ? "ok" : "unknown";
}

static void set(struct scale_trigger *t, const char *key, const char *label, const char *unit,
                double threshold)
{
    memset(t, 0, sizeof(*t));
    t->key = key;
    t->label = label;
    t->unit = unit;
    t->threshold = threshold;
    t->verdict = SCALE_UNKNOWN;
}

void scale_evaluate(const struct px_config *cfg, const struct scale_inputs *in,
                    struct scale_report *out)
{
    memset(out, 0, sizeof(*out));
    struct scale_trigger *t = &out->t[0];

    set(t, "gpu_utilization", "GPU utilisation, sustained", "%", (double)cfg->scale_gpu_pct);
    if (in->gpus_known > 0) {
        t->value = in->gpu_level_sum / (double)in->gpus_known;
        t->verdict = t->value > t->threshold ? SCALE_YES : SCALE_NO;
        snprintf(t->detail, sizeof(t->detail),
                 "mean over %zu GPU(s) of the level each held 90%% of the last %llu s%s",
                 in->gpus_known, (unsigned long long)cfg->scale_gpu_window_s,
                 in->gpus_total > in->gpus_known ? "; some GPUs lack samples" : "");
    } else if (in->gpus_total > 0) {
        snprintf(t->detail, sizeof(t->detail),
                 "no GPU has 80%% of its samples over the last %llu s yet",
                 (unsigned long long)cfg->scale_gpu_window_s);
    } else {
        snprintf(t->detail, sizeof(t->detail), "no GPU figures from any node (see gpu.source)");
    }

    int64_t days = in->window_days;
    t = &out->t[1];
    set(t, "queue_delay", "Queue delay, hourly p95", "ms", (double)cfg->scale_queue_ms);
    if (in->scan_known) {
        t->value = (double)in->scan.queue_regular_p95_ms;
        t->verdict = in->scan.hours > 0 && t->value > t->threshold ? SCALE_YES : SCALE_NO;
        snprintf(t->detail, sizeof(t->detail),
                 "reached in >= %lld%% of %lld active hour(s) over %lld day(s); %lld hour(s) over, "
                 "worst %lld ms",
                 (long long)cfg->scale_regular_pct, (long long)in->scan.hours, (long long)days,
                 (long long)in->scan.queue_hours_over, (long long)in->scan.worst_queue_p95_ms);
    } else {
        snprintf(t->detail, sizeof(t->detail), "%s",
                 in->store_known ? "the store cannot list rows (no scan)" : "no usage store read");
    }

    t = &out->t[2];
    set(t, "monthly_tokens", "Tokens this month", "tokens", (double)cfg->scale_monthly_tokens);
    if (in->store_known) {
        t->value = (double)in->month_tokens;
        t->verdict = t->value > t->threshold ? SCALE_YES : SCALE_NO;
        if (in->month_elapsed_ms > 0) {
            __extension__ __int128 p = (__int128)in->month_tokens * in->month_length_ms;
            out->projected_tokens = (int64_t)(p / in->month_elapsed_ms);
        }
        snprintf(t->detail, sizeof(t->detail),
                 "all tenants, this UTC month so far; on this pace %lld for the month",
                 (long long)out->projected_tokens);
    } else {
        snprintf(t->detail, sizeof(t->detail), "no usage store read");
    }

    t = &out->t[3];
    set(t, "concurrent_users", "Concurrent users, hourly peak", "users", (double)cfg->scale_users);
    if (in->scan_known) {
        t->value = (double)in->scan.users_regular_peak;
        t->verdict = in->scan.hours > 0 && t->value > t->threshold ? SCALE_YES : SCALE_NO;
        snprintf(t->detail, sizeof(t->detail),
                 "reached in >= %lld%% of %lld active hour(s); %lld hour(s) over, peak %lld, "
                 "%lld distinct users",
                 (long long)cfg->scale_regular_pct, (long long)in->scan.hours,
                 (long long)in->scan.users_hours_over, (long long)in->scan.peak_users,
                 (long long)in->scan.distinct_users);
    } else {
        snprintf(t->detail, sizeof(t->detail), "%s",
                 in->store_known ? "the store cannot list rows (no scan)" : "no usage store read");
    }

    for (int i = 0; i < 4; i++) {
        out->add_node |= out->t[i].verdict == SCALE_YES;
    }
    int64_t projected = in->store_known ? out->projected_tokens : 0;
    for (int i = 0; i < 2; i++) {
        struct scale_capacity *c = &out->cap[i];
        c->nodes = in->nodes + i;
        c->cost_cents = c->nodes * cfg->scale_node_cost_cents;
        c->tokens = c->nodes * cfg->scale_node_tokens;
        c->users = c->nodes * cfg->scale_node_users;
        c->breakeven_pence = c->nodes * cfg->scale_breakeven_pence;
        c->tokens_used_pct = c->tokens > 0 ? (double)projected * 100.0 / (double)c->tokens : 0;
        c->revenue_pence = in->store_known ? in->revenue_pence : 0;
        c->covered = c->revenue_pence >= c->breakeven_pence;
    }
}
