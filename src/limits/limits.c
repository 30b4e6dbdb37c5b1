/* Tenant table and local decisions. Every tenant that asks gets an entry holding its two
 * GCRA timestamps and its month-to-date tokens; entries are never evicted while the month
 * runs (the month counter must survive), which is fine for the tenant counts a platform has
 * (about 200 bytes each). See limits.h for the model. */
#include "limits/limits.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/mem.h"
#include "limits/bucket.h"
#include "limits/internal.h"
#include "store/store.h"

#define LIM_PENDING_TICK_MS 5

struct lim_tenant {
    char *id;
    uint64_t hash;
    int64_t rpm_tat_ns; /* local GCRA state, monotonic ns */
    int64_t tpm_tat_ns;
    int64_t month_used;      /* tokens this month (store at start-up + since) */
    struct lim_tenant *next; /* hash chain */
};

struct limiter {
    uv_loop_t *loop;
    const struct px_config *cfg;
    struct lim_tenant **table;
    size_t nbuckets; /* power of two */
    size_t count;
    int month_key;           /* YYYYMM the month counters belong to */
    time_t month_end;        /* when month_key is computed again (unix seconds) */
    struct lim_redis *redis; /* NULL in local mode */
    int fail_open;           /* on_redis_error: open */
    int64_t nodes;           /* degraded mode divides limits by this */
    uint64_t redis_timeout_ms;
    struct lim_pending *wait_head, *wait_tail; /* admissions waiting for Redis */
    uv_timer_t wait_timer;                     /* expires them after redis_timeout_ms */
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int lim__month_key(void)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    return (tm.tm_year + 1900) * 100 + tm.tm_mon + 1;
}

/* A new month: every month counter starts again from zero. */
static void roll_month(struct limiter *l)
{
    /* Checked on every admission: compare with the cached end of the month instead of
     * breaking the clock into a date each time. */
    time_t now = time(NULL);
    if (now < l->month_end) {
        return;
    }
    int key = lim__month_key();
    l->month_end = now + (time_t)(lim__ms_to_next_month() / 1000);
    if (key == l->month_key) {
        return;
    }
    l->month_key = key;
    for (size_t i = 0; i < l->nbuckets; i++) {
        for (struct lim_tenant *t = l->table[i]; t; t = t->next) {
            t->month_used = 0;
        }
    }
}

static void grow(struct limiter *l)
{
    size_t n = l->nbuckets * 2;
    struct lim_tenant **nt = px_calloc(n, sizeof(*nt));
    for (size_t i = 0; i < l->nbuckets; i++) {
        struct lim_tenant *t = l->table[i];
        while (t) {
            struct lim_tenant *next = t->next;
            t->next = nt[t->hash & (n - 1)];
            nt[t->hash & (n - 1)] = t;
            t = next;
        }
    }
    free(l->table);
    l->table = nt;
    l->nbuckets = n;
}

static struct lim_tenant *tenant_get(struct limiter *l, const char *id)
{
    uint64_t h = fnv1a(id);
    for (struct lim_tenant *t = l->table[h & (l->nbuckets - 1)]; t; t = t->next) {
        if (t->hash == h && strcmp(t->id, id) == 0) {
            return t;
        }
    }
    if (l->count >= l->nbuckets) {
        grow(l);
    }
    struct lim_tenant *t = px_calloc(1, sizeof(*t));
    t->id = px_strdup(id);
    t->hash = h;
    t->next = l->table[h & (l->nbuckets - 1)];
    l->table[h & (l->nbuckets - 1)] = t;
    l->count++;
    return t;
}

void lim_plan_for(const struct px_config *cfg, const char *tenant, size_t tier,
                  struct lim_plan *out)
{
    const struct px_tier_cfg *t = &cfg->tiers[tier];
    out->tier = t->name;
    out->rpm = t->rpm;
    out->tpm = t->tpm;
    out->max_context = t->max_context;
    out->monthly_tokens = t->monthly_tokens;
    out->default_max_tokens = t->default_max_tokens;
    out->block_at_allowance = t->overage == PX_OVERAGE_BLOCK;
    long ti = px_config_tenant(cfg, tenant, strlen(tenant));
    if (ti >= 0) {
        const struct px_tenant_cfg *tc = &cfg->tenants[ti];
        out->rpm = tc->rpm > 0 ? tc->rpm : out->rpm;
        out->tpm = tc->tpm > 0 ? tc->tpm : out->tpm;
        out->max_context = tc->max_context > 0 ? tc->max_context : out->max_context;
        out->monthly_tokens = tc->monthly_tokens > 0 ? tc->monthly_tokens : out->monthly_tokens;
    }
}

/* Milliseconds from now to the first second of next month (UTC). */
int64_t lim__ms_to_next_month(void)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_mon += 1;
    time_t next = timegm(&tm);
    return (int64_t)(next - now) * 1000;
}

static void month_fields(const struct lim_plan *p, int64_t used, struct lim_decision *d)
{
    d->month_used = used;
    d->month_allowance = p->monthly_tokens;
    d->overage = used >= p->monthly_tokens;
    d->warn = used * 5 >= p->monthly_tokens * 4;
}

/* The local decision, with limits divided by `divisor` (1, or the node count when Redis is
 * unreachable and the policy is open). commit: take the reservation when allowed. */
static void local_decide(struct limiter *l, struct lim_tenant *t, const struct lim_plan *p,
                         int64_t reserve, int64_t divisor, int commit, struct lim_decision *d)
{
    roll_month(l);
    int64_t now = mono_ns();
    struct lim_rate rpm, tpm;
    lim_rate_init(&rpm, p->rpm / divisor);
    lim_rate_init(&tpm, p->tpm / divisor);
    memset(d, 0, sizeof(*d));
    month_fields(p, t->month_used, d);
    int64_t w;
    if ((w = lim_gcra_wait_ns(t->rpm_tat_ns, &rpm, now, 1)) > 0) {
        d->verdict = LIM_RPM;
        d->retry_after_ms = w / 1000000 + 1;
    } else if ((w = lim_gcra_wait_ns(t->tpm_tat_ns, &tpm, now, reserve)) > 0) {
        d->verdict = LIM_TPM;
        d->retry_after_ms = w / 1000000 + 1;
    } else if (p->block_at_allowance && d->overage) {
        d->verdict = LIM_MONTHLY;
        d->retry_after_ms = lim__ms_to_next_month();
    } else if (commit) {
        t->rpm_tat_ns = lim_gcra_take(t->rpm_tat_ns, &rpm, now, 1);
        t->tpm_tat_ns = lim_gcra_take(t->tpm_tat_ns, &tpm, now, reserve);
    }
    d->rpm_limit = rpm.limit;
    d->rpm_remaining = lim_gcra_remaining(t->rpm_tat_ns, &rpm, now);
    d->rpm_reset_ms = lim_gcra_reset_ns(t->rpm_tat_ns, now) / 1000000;
    d->tpm_limit = tpm.limit;
    d->tpm_remaining = lim_gcra_remaining(t->tpm_tat_ns, &tpm, now);
    d->tpm_reset_ms = lim_gcra_reset_ns(t->tpm_tat_ns, now) / 1000000;
}

/* ---- the Redis waiting list ---- */

static void wait_unlink(struct limiter *l, struct lim_pending *p)
{
    if (!p->prev && l->wait_head != p) {
        return; /* not linked */
    }
    if (p->prev) {
        p->prev->next = p->next;
    } else {
        l->wait_head = p->next;
    }
    if (p->next) {
        p->next->prev = p->prev;
    } else {
        l->wait_tail = p->prev;
    }
    p->prev = p->next = NULL;
    if (!l->wait_head) {
        uv_timer_stop(&l->wait_timer);
    }
}

void lim__pending_release(struct limiter *l, struct lim_pending *p)
{
    wait_unlink(l, p);
    if (!p->in_redis) {
        free(p);
    }
}

void lim__answer(struct limiter *l, struct lim_pending *p, const struct lim_decision *d)
{
    wait_unlink(l, p);
    if (p->answered) {
        return;
    }
    p->answered = 1;
    if (!p->cancelled) {
        p->cb(p->ud, d);
    }
}

void lim__fallback(struct limiter *l, struct lim_pending *p)
{
    struct lim_decision d;
    if (p->cancelled) {
        /* Nobody is waiting for this answer: take nothing from the local buckets. */
        memset(&d, 0, sizeof(d));
        d.verdict = LIM_UNAVAILABLE;
    } else if (l->fail_open) {
        local_decide(l, tenant_get(l, p->tenant), &p->plan, p->reserve, l->nodes, 1, &d);
    } else {
        memset(&d, 0, sizeof(d));
        d.verdict = LIM_UNAVAILABLE;
        d.retry_after_ms = 1000;
    }
    lim__answer(l, p, &d);
}

static void on_wait_tick(uv_timer_t *h)
{
    struct limiter *l = h->data;
    uint64_t now = uv_now(l->loop);
    while (l->wait_head && l->wait_head->deadline_ms <= now) {
        struct lim_pending *p = l->wait_head;
        char qt[2 * USAGE_ID_MAX + 4];
        px_log(PX_LOG_WARN, "tenant=%s event=redis_slow timeout_ms=%llu policy=%s",
               px_log_quote(qt, sizeof(qt), p->tenant), (unsigned long long)l->redis_timeout_ms,
               l->fail_open ? "open" : "closed");
        lim_redis__timed_out(l->redis);
        lim__fallback(l, p); /* unlinks p; p stays allocated until hiredis calls back */
    }
}

/* ---- public ---- */

struct lim_pending *lim_admit(struct limiter *l, const char *tenant, const struct lim_plan *p,
                              int64_t reserve_tokens, lim_admit_fn cb, void *ud)
{
    if (!l->redis) {
        struct lim_decision d;
        local_decide(l, tenant_get(l, tenant), p, reserve_tokens, 1, 1, &d);
        cb(ud, &d);
        return NULL;
    }
    struct lim_pending *pd = px_calloc(1, sizeof(*pd));
    pd->l = l;
    snprintf(pd->tenant, sizeof(pd->tenant), "%s", tenant);
    pd->plan = *p;
    pd->reserve = reserve_tokens;
    pd->cb = cb;
    pd->ud = ud;
    if (lim_redis__admit(l->redis, pd) != 0) {
        lim__fallback(l, pd);
        free(pd);
        return NULL;
    }
    pd->deadline_ms = uv_now(l->loop) + l->redis_timeout_ms;
    pd->prev = l->wait_tail;
    if (l->wait_tail) {
        l->wait_tail->next = pd;
    } else {
        l->wait_head = pd;
        uv_timer_start(&l->wait_timer, on_wait_tick, LIM_PENDING_TICK_MS, LIM_PENDING_TICK_MS);
    }
    l->wait_tail = pd;
    return pd;
}

void lim_admit_cancel(struct lim_pending *pending)
{
    if (pending) {
        pending->cancelled = 1;
    }
}

void lim_settle(struct limiter *l, const char *tenant, const struct lim_plan *p,
                int64_t reserved_tokens, int64_t actual_tokens)
{
    roll_month(l);
    struct lim_tenant *t = tenant_get(l, tenant);
    struct lim_rate tpm;
    lim_rate_init(&tpm, l->redis ? p->tpm / l->nodes : p->tpm);
    t->tpm_tat_ns = lim_gcra_take(t->tpm_tat_ns, &tpm, mono_ns(), actual_tokens - reserved_tokens);
    t->month_used += actual_tokens;
    if (l->redis) {
        lim_redis__settle(l->redis, tenant, p, actual_tokens - reserved_tokens, actual_tokens);
    }
}

void lim__note_month(struct limiter *l, const char *tenant, int64_t used)
{
    struct lim_tenant *t = tenant_get(l, tenant);
    if (used > t->month_used) {
        t->month_used = used; /* the shared figure, for headers and degraded mode */
    }
}

void lim__each_month(struct limiter *l, void (*fn)(void *ud, const char *tenant, int64_t used),
                     void *ud)
{
    for (size_t i = 0; i < l->nbuckets; i++) {
        for (struct lim_tenant *t = l->table[i]; t; t = t->next) {
            if (t->month_used > 0) {
                fn(ud, t->id, t->month_used);
            }
        }
    }
}

void lim_peek(struct limiter *l, const char *tenant, const struct lim_plan *p,
              struct lim_decision *out)
{
    int64_t div = l->redis && !lim_redis__healthy(l->redis) ? l->nodes : 1;
    local_decide(l, tenant_get(l, tenant), p, 0, div, 0, out);
}

const char *lim_mode(const struct limiter *l)
{
    if (!l->redis) {
        return "local";
    }
    return lim_redis__healthy(l->redis) ? "redis" : "degraded";
}

/* Month-to-date usage from the store, so a restart does not hand every tenant a fresh
 * allowance. */
static int preload_month(struct limiter *l, struct store *st)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    struct store_usage_query q = {
        .tenant_id = NULL, .since_ms = (int64_t)timegm(&tm) * 1000, .until_ms = INT64_MAX};
    struct store_usage_row *rows = NULL;
    size_t n = 0;
    int rc = store_usage(st, &q, &rows, &n);
    if (rc != 0) {
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        tenant_get(l, rows[i].tenant_id)->month_used = rows[i].total_tokens;
    }
    free(rows);
    return 0;
}

int lim_new(struct limiter **out, uv_loop_t *loop, const struct px_config *cfg, struct store *st)
{
    struct limiter *l = px_calloc(1, sizeof(*l));
    l->loop = loop;
    l->cfg = cfg;
    l->nbuckets = 64;
    l->table = px_calloc(l->nbuckets, sizeof(*l->table));
    l->month_key = lim__month_key();
    l->fail_open = cfg->on_redis_error == 0;
    l->nodes = cfg->limits_nodes > 0 ? cfg->limits_nodes : 1;
    l->redis_timeout_ms = cfg->redis_timeout_ms;
    uv_timer_init(loop, &l->wait_timer);
    l->wait_timer.data = l;
    /* A store that is down at start (a shared ClickHouse) must not keep the gateway down:
     * serve, and say loudly that monthly allowances count only from now. */
    if (st && preload_month(l, st) != 0) {
        px_log(PX_LOG_ERROR,
               "event=limits_preload_failed msg=\"month-to-date usage unavailable; monthly "
               "allowances count from zero until the next start\" error=\"%s\"",
               store_errmsg(st));
    }
    int rc = 0;
    if (cfg->redis_url && cfg->redis_url[0]) {
        rc = lim_redis__new(&l->redis, l, loop, cfg);
        if (rc != 0) {
            lim_free(l);
            return rc;
        }
    }
    *out = l;
    return 0;
}

static void on_wait_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void lim_free(struct limiter *l)
{
    if (!l) {
        return;
    }
    while (l->wait_head) {
        struct lim_pending *p = l->wait_head;
        struct lim_decision d = {.verdict = LIM_UNAVAILABLE, .retry_after_ms = 1000};
        lim__answer(l, p, &d);
    }
    lim_redis__free(l->redis); /* hiredis calls back every pending reply with NULL */
    for (size_t i = 0; i < l->nbuckets; i++) {
        struct lim_tenant *t = l->table[i];
        while (t) {
            struct lim_tenant *next = t->next;
            free(t->id);
            free(t);
            t = next;
        }
    }
    free(l->table);
    uv_timer_stop(&l->wait_timer);
    uv_close((uv_handle_t *)&l->wait_timer, on_wait_timer_closed);
}
