/* privax scale's arithmetic with exact numbers: the sustained GPU level, the hourly scan
 * (p95 queue, peak concurrent users, "regularly"), revenue the way billing counts it, the
 * verdicts and the N / N+1 table; and reading values out of a /metrics text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "core/err.h"
#include "ops/promtext.h"
#include "ops/scale.h"

#define HOUR INT64_C(3600000)

static void test_defaults_match_config(void **state)
{
    (void)state;
    char path[] = "/tmp/px-test-scale-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "auth:\n  tokens:\n    - {id: p, token: t}\n"
                       "backends:\n  - {name: b, url: \"http://127.0.0.1:1\", protocol: ollama}\n"
                       "models:\n  - {name: m, backends: [b]}\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    struct px_config *cfg = NULL;
    char err[256];
    int rc = px_config_load(path, &cfg, err, sizeof(err));
    unlink(path);
    if (rc != 0) {
        print_error("%s\n", err);
        fail();
    }
    struct px_config d;
    memset(&d, 0, sizeof(d));
    scale_config_defaults(&d);
    assert_int_equal(d.scale_gpu_pct, cfg->scale_gpu_pct);
    assert_int_equal(d.scale_gpu_window_s, cfg->scale_gpu_window_s);
    assert_int_equal(d.scale_queue_ms, cfg->scale_queue_ms);
    assert_int_equal(d.scale_monthly_tokens, cfg->scale_monthly_tokens);
    assert_int_equal(d.scale_users, cfg->scale_users);
    assert_int_equal(d.scale_window_days, cfg->scale_window_days);
    assert_int_equal(d.scale_regular_pct, cfg->scale_regular_pct);
    assert_int_equal(d.scale_node_cost_cents, cfg->scale_node_cost_cents);
    assert_int_equal(d.scale_node_tokens, cfg->scale_node_tokens);
    assert_int_equal(d.scale_node_users, cfg->scale_node_users);
    assert_int_equal(d.scale_breakeven_pence, cfg->scale_breakeven_pence);
    /* The seed's figures. */
    assert_int_equal(cfg->scale_node_cost_cents, 30000);
    assert_int_equal(cfg->scale_node_tokens, 130000000);
    assert_int_equal(cfg->scale_breakeven_pence, 50000);
    px_config_free(cfg);
}

static void test_gpu_level(void **state)
{
    (void)state;
    double level;
    size_t known;
    /* 10 samples at 1 s; window 10 s: the 10th percentile of 10 values is the smallest. */
    double h[12] = {0, 0, 99, 95, 90, 85, 97, 98, 99, 100, 81, 96};
    assert_int_equal(scale_gpu_level(h, 12, 1000, 10, &level, &known), 0);
    assert_int_equal(known, 10);
    assert_true(level == 81);
    /* A window of 20 s needs 16 known samples: only 12 -> not enough. */
    assert_int_equal(scale_gpu_level(h, 12, 1000, 20, &level, &known), -1);
    assert_true(level == -1);
    /* Unknown samples (-1) count against coverage: 8 of 10 known is just enough. */
    double g[10] = {-1, 90, 90, 90, -1, 90, 90, 90, 90, 50};
    assert_int_equal(scale_gpu_level(g, 10, 1000, 10, &level, &known), 0);
    assert_int_equal(known, 8);
    assert_true(level == 50);
    g[1] = -1; /* 7 of 10 */
    assert_int_equal(scale_gpu_level(g, 10, 1000, 10, &level, &known), -1);
    /* 20 samples: the 10th percentile is the 2nd smallest (nearest rank ceil(2) = 2). */
    double k[20];
    for (int i = 0; i < 20; i++) {
        k[i] = 100 - i;
    }
    assert_int_equal(scale_gpu_level(k, 20, 500, 10, &level, &known), 0);
    assert_true(level == 82);
    /* Window shorter than one interval: the last sample alone. */
    assert_int_equal(scale_gpu_level(k, 20, 5000, 1, &level, &known), 0);
    assert_true(level == 81);
    assert_int_equal(scale_gpu_level(k, 0, 1000, 10, &level, &known), -1);
    assert_int_equal(scale_gpu_level(k, 20, 0, 10, &level, &known), -1);
}

static struct scale_row row(int64_t t, int64_t lat, int64_t q, const char *tenant, const char *user)
{
    struct scale_row r = {.event_time_ms = t,
                          .latency_ms = lat,
                          .queue_ms = q,
                          .served = 1,
                          .tenant_id = tenant,
                          .user_id = user};
    return r;
}

static void test_scan_queue_hours(void **state)
{
    (void)state;
    struct scale_scan *s = scale_scan_new(5000, 25);
    int64_t base = 1000 * HOUR;
    /* 10 hours of 20 rows each. Hour h: 18 rows with queue 100 and 2 rows with queue
     * q_h; the p95 of 20 values is the 19th smallest, so it is q_h when q_h > 100. */
    static const int64_t qh[10] = {0, 7000, 0, 6000, 0, 0, 9000, 0, 0, 0};
    for (int h = 0; h < 10; h++) {
        for (int i = 0; i < 20; i++) {
            struct scale_row r = row(base + h * HOUR + i * 1000, 10, i < 2 ? qh[h] : 100, "t", "u");
            assert_int_equal(scale_scan_add(s, &r), 0);
        }
    }
    /* Not served (rejected before routing): ignored entirely. */
    struct scale_row rej = row(base + 10 * HOUR, 0, 999999, "t", "x");
    rej.served = 0;
    assert_int_equal(scale_scan_add(s, &rej), 0);
    /* Out of order: refused. */
    struct scale_row old = row(base, 1, 1, "t", "u");
    assert_int_equal(scale_scan_add(s, &old), PX_EPARSE);
    struct scale_scan_result res;
    scale_scan_finish(s, 25, &res);
    assert_int_equal(res.rows, 200);
    assert_int_equal(res.hours, 10);
    assert_int_equal(res.queue_hours_over, 3);
    assert_int_equal(res.worst_queue_p95_ms, 9000);
    /* 25% of 10 hours -> the 3rd largest hourly p95 = 6000: over 5000. */
    assert_int_equal(res.queue_regular_p95_ms, 6000);
    assert_int_equal(res.distinct_users, 1);
    scale_scan_free(s);

    /* The same rows with regular_pct 40: the 4th largest is 100 (an ordinary hour). */
    s = scale_scan_new(5000, 25);
    for (int h = 0; h < 10; h++) {
        for (int i = 0; i < 20; i++) {
            struct scale_row r = row(base + h * HOUR + i * 1000, 10, i < 2 ? qh[h] : 100, "t", "u");
            scale_scan_add(s, &r);
        }
    }
    scale_scan_finish(s, 40, &res);
    assert_int_equal(res.queue_regular_p95_ms, 100);
    scale_scan_free(s);
}

static void test_scan_concurrent_users(void **state)
{
    (void)state;
    struct scale_scan *s = scale_scan_new(5000, 2);
    int64_t t0 = 500 * HOUR;
    struct scale_row rows[] = {
        row(t0 + 0, 100, 0, "acme", "a"),   /* a: [0, 100) */
        row(t0 + 50, 100, 0, "acme", "b"),  /* b: [50, 150) */
        row(t0 + 55, 1, 0, "acme", "d"),    /* d: [55, 56): a, b, d -> 3 */
        row(t0 + 60, 10, 0, "acme", "a"),   /* a again: still a, b -> 2 */
        row(t0 + 100, 100, 0, "acme", "c"), /* a ended at 100: b, c -> 2 */
        row(t0 + 100, 1, 0, "beta", "a"),   /* another tenant's "a" is another user */
        row(t0 + 100, 0, 0, "beta", ""),    /* anonymous user of beta */
        /* The next hour: one user at a time. */
        row(t0 + HOUR, 10, 0, "acme", "a"),
        row(t0 + HOUR + 20, 10, 0, "acme", "b"),
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        assert_int_equal(scale_scan_add(s, &rows[i]), 0);
    }
    struct scale_scan_result res;
    scale_scan_finish(s, 50, &res);
    assert_int_equal(res.hours, 2);
    assert_int_equal(res.peak_users, 4); /* at t0+100: b, c, beta/a, beta/"" */
    assert_int_equal(res.users_hours_over, 1);
    assert_int_equal(res.distinct_users, 6);
    /* 50% of 2 hours -> the largest hourly peak. */
    assert_int_equal(res.users_regular_peak, 4);
    scale_scan_free(s);
}

static void test_scan_many_users(void **state)
{
    (void)state;
    /* Enough users to rehash the table several times while rows are in flight. */
    struct scale_scan *s = scale_scan_new(5000, 25);
    int64_t t0 = 10 * HOUR;
    char user[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        struct scale_row r = row(t0 + i, 1000000, 0, "t", user);
        assert_int_equal(scale_scan_add(s, &r), 0);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        struct scale_row r = row(t0 + 2000000 + i, 1, 0, "t", user);
        assert_int_equal(scale_scan_add(s, &r), 0);
    }
    struct scale_scan_result res;
    scale_scan_finish(s, 10, &res);
    assert_int_equal(res.peak_users, 5000);
    assert_int_equal(res.distinct_users, 5000);
    scale_scan_free(s);
}

static struct px_tier_cfg tiers[3] = {
    {.name = "starter",
     .monthly_tokens = 5000000,
     .price_pence = 3900,
     .overage_pence_per_mtok = 500},
    {.name = "pro",
     .monthly_tokens = 25000000,
     .price_pence = 14900,
     .overage_pence_per_mtok = 500},
    {.name = "capped",
     .monthly_tokens = 1000,
     .price_pence = 1000,
     .overage_pence_per_mtok = 500,
     .overage = PX_OVERAGE_BLOCK},
};
static struct px_tenant_cfg tenants[3] = {
    {.id = "pinned", .tier = 1, .pinned = 1},
    {.id = "small", .tier = 0, .monthly_tokens = 1000000},
    {.id = "idle", .tier = 1, .pinned = 1},
};

static void cfg_init(struct px_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->tiers = tiers;
    cfg->ntiers = 3;
    cfg->tenants = tenants;
    cfg->ntenants = 3;
    cfg->default_tier = 0;
    scale_config_defaults(cfg);
}

static void test_revenue(void **state)
{
    (void)state;
    struct px_config cfg;
    cfg_init(&cfg);
    struct scale_tenant_usage t[] = {
        {"pinned", "starter", 1000, 1, 0},   /* pinned to pro: 149.00 */
        {"over", "starter", 6500000, 1, 0},  /* 39.00 + 1.5M over x 5.00 = 7.50 */
        {"small", "starter", 2000001, 1, 0}, /* override 1M: 39.00 + 1000001 over = 5.000005 */
        {"unknown-tier", "gold", 10, 1, 0},  /* default tier: 39.00 */
        {"pro-user", "pro", 25000000, 1, 0}, /* exactly the allowance: 149.00 */
        {"odd", "starter", 5000001, 1, 0},   /* 1 token over: 0.0005p rounds to 0 */
        {"half", "starter", 5001000, 1, 0},  /* 1000 over: 0.5p rounds up to 1 */
        {"blocked", "capped", 5000, 1, 0},   /* a tier that blocks: no overage charge */
        {"typo", "starter", 0, 3, 3},        /* every request refused: not a customer */
        {"", "starter", 0, 2, 2},            /* no tenant header: not a customer */
    };
    int64_t base, over;
    int64_t total = scale_revenue_pence(&cfg, t, sizeof(t) / sizeof(t[0]), &base, &over);
    /* ... and "idle", pinned to pro with no usage, pays pro's price too. */
    assert_int_equal(base, 14900 + 3900 + 3900 + 3900 + 14900 + 3900 + 3900 + 1000 + 14900);
    assert_int_equal(over, 750 + 500 + 0 + 0 + 0 + 1 + 0);
    assert_int_equal(total, base + over);
    /* No usage at all: the pinned tenants' subscriptions. */
    assert_int_equal(scale_revenue_pence(&cfg, t, 0, NULL, NULL), 2 * 14900);
}

static void test_evaluate(void **state)
{
    (void)state;
    struct px_config cfg;
    cfg_init(&cfg);
    struct scale_inputs in;
    memset(&in, 0, sizeof(in));
    in.nodes = 2;
    in.gpus_known = 2;
    in.gpus_total = 2;
    in.gpu_level_sum = 95 + 70; /* mean 82.5 > 80 */
    in.store_known = 1;
    in.month_tokens = 60000000;
    in.month_elapsed_ms = 10 * 24 * HOUR;
    in.month_length_ms = 30 * 24 * HOUR; /* projected 180M */
    in.revenue_pence = 120000;
    in.scan_known = 1;
    in.window_days = 7;
    in.scan.hours = 20;
    in.scan.queue_regular_p95_ms = 4000;
    in.scan.users_regular_peak = 26;
    struct scale_report r;
    scale_evaluate(&cfg, &in, &r);
    assert_string_equal(r.t[0].key, "gpu_utilization");
    assert_true(r.t[0].value == 82.5);
    assert_int_equal(r.t[0].verdict, SCALE_YES);
    assert_string_equal(r.t[1].key, "queue_delay");
    assert_true(r.t[1].value == 4000);
    assert_int_equal(r.t[1].verdict, SCALE_NO);
    assert_string_equal(r.t[2].key, "monthly_tokens");
    assert_int_equal(r.t[2].verdict, SCALE_NO); /* 60M so far, even if 180M projected */
    assert_string_equal(r.t[3].key, "concurrent_users");
    assert_int_equal(r.t[3].verdict, SCALE_YES);
    assert_int_equal(r.add_node, 1);
    assert_int_equal(r.projected_tokens, 180000000);
    assert_int_equal(r.cap[0].nodes, 2);
    assert_int_equal(r.cap[0].cost_cents, 60000);
    assert_int_equal(r.cap[0].tokens, 260000000);
    assert_int_equal(r.cap[0].users, 50);
    assert_int_equal(r.cap[0].breakeven_pence, 100000);
    assert_int_equal(r.cap[0].revenue_pence, 120000);
    assert_int_equal(r.cap[0].covered, 1);
    assert_int_equal(r.cap[1].nodes, 3);
    assert_int_equal(r.cap[1].cost_cents, 90000);
    assert_int_equal(r.cap[1].tokens, 390000000);
    assert_int_equal(r.cap[1].breakeven_pence, 150000);
    assert_int_equal(r.cap[1].covered, 0);
    assert_true(r.cap[1].tokens_used_pct > 46.15 && r.cap[1].tokens_used_pct < 46.16);

    /* Exactly at a threshold is not over it. */
    in.gpu_level_sum = 160;
    in.scan.users_regular_peak = 25;
    scale_evaluate(&cfg, &in, &r);
    assert_int_equal(r.t[0].verdict, SCALE_NO);
    assert_int_equal(r.t[3].verdict, SCALE_NO);
    assert_int_equal(r.add_node, 0);

    /* No GPU figures and no store: unknown, and unknown never advises a node. */
    memset(&in, 0, sizeof(in));
    in.nodes = 1;
    scale_evaluate(&cfg, &in, &r);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r.t[i].verdict, SCALE_UNKNOWN);
    }
    assert_int_equal(r.add_node, 0);
    assert_int_equal(r.cap[0].cost_cents, 30000);
    assert_int_equal(r.cap[1].nodes, 2);
    assert_string_equal(scale_verdict_name(SCALE_YES), "add a node");
}

static void test_promtext(void **state)
{
    (void)state;
    const char *t = "# HELP x help\n"
                    "# TYPE x counter\n"
                    "x{a=\"1\",b=\"q\\\"z\"} 3\n"
                    "x{a=\"2\"} 4.5\n"
                    "x 1 1700000000000\n"
                    "xy 100\n"
                    "x{a=\"1\" 7\n"
                    "x{a=\"3\"} notanumber\n"
                    "q_bucket{tier=\"pro\",le=\"5\"} 2\n"
                    "q_bucket{tier=\"pro\",le=\"+Inf\"} 3\n"
                    "q_bucket{tier=\"starter\",le=\"5\"} 10\n"
                    "inf +Inf";
    double sum;
    assert_int_equal(ops_prom_sum(t, strlen(t), "x", NULL, &sum), 3);
    assert_true(sum == 8.5);
    const char *m1[] = {"a", "1", NULL};
    assert_int_equal(ops_prom_sum(t, strlen(t), "x", m1, &sum), 1);
    assert_true(sum == 3);
    const char *m2[] = {"b", "q\"z", NULL};
    assert_int_equal(ops_prom_sum(t, strlen(t), "x", m2, &sum), 1);
    const char *m3[] = {"le", "5", NULL};
    assert_int_equal(ops_prom_sum(t, strlen(t), "q_bucket", m3, &sum), 2);
    assert_true(sum == 12);
    const char *m4[] = {"le", "5", "tier", "pro", NULL};
    assert_int_equal(ops_prom_sum(t, strlen(t), "q_bucket", m4, &sum), 1);
    assert_true(sum == 2);
    assert_int_equal(ops_prom_sum(t, strlen(t), "missing", NULL, &sum), 0);
    assert_true(sum == 0);
    assert_int_equal(ops_prom_sum(t, strlen(t), "inf", NULL, &sum), 1);
    assert_int_equal(ops_prom_sum("", 0, "x", NULL, &sum), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_config),
        cmocka_unit_test(test_gpu_level),
        cmocka_unit_test(test_scan_queue_hours),
        cmocka_unit_test(test_scan_concurrent_users),
        cmocka_unit_test(test_scan_many_users),
        cmocka_unit_test(test_revenue),
        cmocka_unit_test(test_evaluate),
        cmocka_unit_test(test_promtext),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
