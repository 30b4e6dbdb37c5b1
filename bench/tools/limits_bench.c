/* limits_bench: what one plan-limit check costs, through privax's own limiter code.
 *
 *   limits_bench CONFIG local N   N admissions (lim_admit) each followed by its settle
 *                                 (lim_settle), one after another on one thread, as the
 *                                 request path does them: in-process GCRA, no I/O
 *   limits_bench CONFIG redis N [GAP_US]
 *                                 the same against the Redis in limits.redis: each admission
 *                                 is one EVALSHA and the loop runs until its answer; the
 *                                 settle is sent without waiting (as privax does). GAP_US:
 *                                 sleep that long between checks (10000 = 100 checks/s, so
 *                                 every admission finds Redis and this process idle, as
 *                                 privax at 100 req/s does); 0 = back to back
 *
 * The tenant is the config's first pinned tenant (its tier and overrides), else "bench" on
 * the default tier; its limits must be out of reach (bench/run's config: rpm 1e9), so every
 * check takes the full "allow" path. Local: the N checks run in rounds of N/10 and the report
 * gives the median and best round in ns per check (admit + settle): the cost without the
 * loop, the parser or the network around it. Redis: the round trip of each admission as the
 * limiter sees it (from lim_admit to its callback), p50/p99/max in µs. Prints one JSON line.
 * Built by bench/run against build-bench's static libraries; not part of the product. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "limits/limits.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct admit_state {
    long answered;
    long refused; /* any verdict but ALLOW: the limits were not out of reach */
};

static void on_admit(void *ud, const struct lim_decision *d)
{
    struct admit_state *s = ud;
    s->answered++;
    if (d->verdict != LIM_ALLOW) {
        s->refused++;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t pct(const int64_t *sorted, long n, double p)
{
    long k = (long)((p * (double)n + 99.0) / 100.0); /* nearest rank, as bench/run's pctl */
    k = k < 1 ? 1 : (k > n ? n : k);
    return sorted[k - 1];
}

/* The request path's reservation: prompt estimate + max_tokens (bench/run asks for 64). */
#define RESERVE 80
#define ACTUAL  40

static int run_local(struct limiter *l, const char *tenant, const struct lim_plan *p, long n,
                     struct admit_state *s)
{
    enum { ROUNDS = 10 };
    double per[ROUNDS];
    long each = n / ROUNDS > 0 ? n / ROUNDS : 1;
    /* Warm-up: the tenant's entry is created on first use, like after a start. */
    for (long i = 0; i < 1000; i++) {
        lim_admit(l, tenant, p, RESERVE, on_admit, s);
        lim_settle(l, tenant, p, RESERVE, ACTUAL);
    }
    long warm = s->answered;
    int64_t t0 = now_ns();
    for (int r = 0; r < ROUNDS; r++) {
        int64_t a = now_ns();
        for (long i = 0; i < each; i++) {
            lim_admit(l, tenant, p, RESERVE, on_admit, s);
            lim_settle(l, tenant, p, RESERVE, ACTUAL);
        }
        per[r] = (double)(now_ns() - a) / (double)each;
    }
    int64_t total = now_ns() - t0;
    if (s->answered - warm != each * ROUNDS) {
        fprintf(stderr, "limits_bench: %ld callbacks for %ld admissions\n", s->answered - warm,
                each * ROUNDS);
        return 1;
    }
    double sorted[ROUNDS];
    memcpy(sorted, per, sizeof(per));
    for (int i = 1; i < ROUNDS; i++) { /* insertion sort: ten values */
        double v = sorted[i];
        int j = i - 1;
        while (j >= 0 && sorted[j] > v) {
            sorted[j + 1] = sorted[j];
            j--;
        }
        sorted[j + 1] = v;
    }
    printf("{\"mode\":\"local\",\"checks\":%ld,\"ns_per_check\":%.1f,\"ns_per_check_best\":%.1f,"
           "\"ns_per_check_mean\":%.1f,\"refused\":%ld,\"tier\":\"%s\"}\n",
           each * ROUNDS, (sorted[ROUNDS / 2 - 1] + sorted[ROUNDS / 2]) / 2, sorted[0],
           (double)total / (double)(each * ROUNDS), s->refused, p->tier);
    return s->refused != 0;
}

static int run_redis(uv_loop_t *loop, struct limiter *l, const char *tenant,
                     const struct lim_plan *p, long n, long gap_us, struct admit_state *s)
{
    /* Connected (hiredis async on the loop) before anything is timed. */
    int64_t deadline = now_ns() + 5000000000LL;
    while (strcmp(lim_mode(l), "redis") != 0 && now_ns() < deadline) {
        uv_run(loop, UV_RUN_ONCE);
    }
    if (strcmp(lim_mode(l), "redis") != 0) {
        fprintf(stderr, "limits_bench: no Redis connection within 5 s (mode %s)\n", lim_mode(l));
        return 1;
    }
    int64_t *lat = calloc((size_t)n, sizeof(*lat));
    if (!lat) {
        return 1;
    }
    long warm = n / 10 > 100 ? 100 : n / 10;
    long done = 0;
    int64_t t0 = now_ns();
    for (long i = -warm; i < n; i++) {
        long before = s->answered;
        int64_t a = now_ns();
        lim_admit(l, tenant, p, RESERVE, on_admit, s);
        while (s->answered == before) {
            uv_run(loop, UV_RUN_ONCE);
        }
        int64_t b = now_ns();
        lim_settle(l, tenant, p, RESERVE, ACTUAL);
        if (i >= 0) {
            lat[done++] = b - a;
        }
        if (gap_us > 0) {
            uv_run(loop, UV_RUN_NOWAIT); /* the settle goes out now, as in privax */
            struct timespec ts = {gap_us / 1000000, (gap_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
    }
    int64_t total = now_ns() - t0;
    const char *mode = lim_mode(l); /* "degraded" if an answer was late (a local decision) */
    qsort(lat, (size_t)done, sizeof(*lat), cmp_i64);
    printf("{\"mode\":\"redis\",\"checks\":%ld,\"gap_us\":%ld,\"p50_us\":%.1f,\"p90_us\":%.1f,"
           "\"p99_us\":%.1f,\"max_us\":%.1f,\"us_per_check_mean\":%.1f,\"refused\":%ld,"
           "\"limiter_mode\":\"%s\"}\n",
           done, gap_us, (double)pct(lat, done, 50) / 1e3, (double)pct(lat, done, 90) / 1e3,
           (double)pct(lat, done, 99) / 1e3, (double)lat[done - 1] / 1e3,
           (double)total / 1e3 / (double)(done + warm), s->refused, mode);
    free(lat);
    return s->refused != 0 || strcmp(mode, "redis") != 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5 || (strcmp(argv[2], "local") != 0 && strcmp(argv[2], "redis") != 0)) {
        fprintf(stderr, "usage: limits_bench CONFIG local N | redis N [GAP_US]\n");
        return 2;
    }
    long n = atol(argv[3]);
    long gap_us = argc == 5 ? atol(argv[4]) : 0;
    if (n < 10) {
        fprintf(stderr, "limits_bench: N must be at least 10\n");
        return 2;
    }
    int redis = strcmp(argv[2], "redis") == 0;
    char err[512];
    struct px_config *cfg;
    if (px_config_load(argv[1], &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "limits_bench: %s\n", err);
        return 1;
    }
    if (redis != (cfg->redis_url && cfg->redis_url[0])) {
        fprintf(stderr, "limits_bench: mode %s but the config %s limits.redis\n", argv[2],
                redis ? "has no" : "sets");
        return 2;
    }
    const char *tenant = "bench";
    size_t tier = cfg->default_tier;
    for (size_t i = 0; i < cfg->ntenants; i++) {
        if (cfg->tenants[i].pinned) {
            tenant = cfg->tenants[i].id;
            tier = cfg->tenants[i].tier;
            break;
        }
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct limiter *l;
    /* No store: month-to-date usage would only be read once at start, outside the timing. */
    if (lim_new(&l, &loop, cfg, NULL) != 0) {
        fprintf(stderr, "limits_bench: lim_new failed\n");
        return 1;
    }
    struct lim_plan plan;
    lim_plan_for(cfg, tenant, tier, &plan);
    struct admit_state s = {0};
    int rc = redis ? run_redis(&loop, l, tenant, &plan, n, gap_us, &s)
                   : run_local(l, tenant, &plan, n, &s);
    if (s.refused) {
        fprintf(stderr, "limits_bench: %ld checks were refused: the tenant's limits are in reach\n",
                s.refused);
    }
    lim_free(l);
    uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks */
    uv_loop_close(&loop);
    px_config_free(cfg);
    return rc;
}
