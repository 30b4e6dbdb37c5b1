/* The Prometheus exposition: label escaping, bounded labels, counters, cumulative histogram
 * buckets with exact sums, gauges, and unknown GPU figures left out (never made up). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "metrics/metrics.h"

static struct px_tier_cfg tiers[2] = {{.name = "starter"}, {.name = "pro"}};
static struct px_model_cfg models[2] = {{.name = "qwen2.5-coder:7b"}, {.name = "m\"x\\y"}};
static struct px_backend_cfg backends[2] = {{.name = "gpu0", .max_concurrency = 4},
                                            {.name = "gpu1", .max_concurrency = 2}};
static struct px_config cfg = {
    .node_id = "n1",
    .tiers = tiers,
    .ntiers = 2,
    .models = models,
    .nmodels = 2,
    .backends = backends,
    .nbackends = 2,
};

static void ev_init(struct usage_event *ev, const char *tier, const char *model,
                    const char *backend, int status)
{
    memset(ev, 0, sizeof(*ev));
    snprintf(ev->plan_tier, sizeof(ev->plan_tier), "%s", tier);
    snprintf(ev->model_name, sizeof(ev->model_name), "%s", model);
    snprintf(ev->backend, sizeof(ev->backend), "%s", backend);
    ev->status_code = status;
    ev->ttft_ms = -1;
}

static char *render(struct metrics *m, const struct metrics_gauges *g, struct buf *b)
{
    struct metrics_gauges empty = {0};
    buf_init(b, 1 << 20);
    assert_int_equal(metrics_render(m, g ? g : &empty, b), 0);
    return b->data;
}

static void assert_line(const char *text, const char *line)
{
    char want[512];
    snprintf(want, sizeof(want), "\n%s\n", line);
    if (strstr(text, want) == NULL) {
        print_error("missing line: %s\n---\n%s\n", line, text);
        fail();
    }
}

static void test_escape_label(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "plain"},
        {"", ""},
        {"a\"b", "a\\\"b"},
        {"back\\slash", "back\\\\slash"},
        {"new\nline", "new\\nline"},
        {"\\\"\n", "\\\\\\\"\\n"},
        {"tab\tand üñí", "tab\tand üñí"}, /* only \\, \" and \n are escaped */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 100);
        assert_int_equal(metrics_escape_label(&b, cases[i].in), 0);
        assert_string_equal(b.len ? b.data : "", cases[i].out);
        buf_cleanup(&b);
    }
    struct buf small;
    buf_init(&small, 3);
    assert_int_equal(metrics_escape_label(&small, "a\"b"), PX_EOVERFLOW);
    buf_cleanup(&small);
}

static void test_counters_and_bounded_labels(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(&cfg);
    struct usage_event ev;
    for (int i = 0; i < 3; i++) {
        ev_init(&ev, "pro", "qwen2.5-coder:7b", "gpu0", 200);
        ev.prompt_tokens = 10;
        ev.completion_tokens = 5;
        metrics_observe(m, &ev);
    }
    /* Whatever clients send ends up in one "_other" series per label, never in a label. */
    for (int i = 0; i < 500; i++) {
        char model[32], tier[32];
        snprintf(model, sizeof(model), "attacker-%d", i);
        snprintf(tier, sizeof(tier), "tier-%d", i);
        ev_init(&ev, tier, model, "", 404);
        metrics_observe(m, &ev);
    }
    ev_init(&ev, "starter", "m\"x\\y", "gpu1", 999); /* odd status: "other" */
    metrics_observe(m, &ev);
    assert_int_equal(metrics_requests(m), 504);
    struct buf b;
    const char *t = render(m, NULL, &b);
    assert_line(t, "privax_requests_total{tier=\"pro\",model=\"qwen2.5-coder:7b\",backend=\"gpu0\","
                   "status=\"200\"} 3");
    assert_line(t, "privax_requests_total{tier=\"_other\",model=\"_other\",backend=\"none\","
                   "status=\"404\"} 500");
    assert_line(t, "privax_requests_total{tier=\"starter\",model=\"m\\\"x\\\\y\",backend=\"gpu1\","
                   "status=\"other\"} 1");
    assert_line(t, "privax_tokens_total{tier=\"pro\",model=\"qwen2.5-coder:7b\",backend=\"gpu0\","
                   "status=\"200\",kind=\"prompt\"} 30");
    assert_line(t, "privax_tokens_total{tier=\"pro\",model=\"qwen2.5-coder:7b\",backend=\"gpu0\","
                   "status=\"200\",kind=\"completion\"} 15");
    assert_null(strstr(t, "attacker"));
    assert_null(strstr(t, "tier-1"));
    /* Every family is announced once, with HELP before TYPE. */
    assert_non_null(strstr(t, "# HELP privax_requests_total "));
    assert_non_null(strstr(t, "# TYPE privax_requests_total counter\n"));
    buf_cleanup(&b);
    metrics_free(m);
}

static void test_histograms_cumulative_exact_sum(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(&cfg);
    struct usage_event ev;
    static const int64_t lat[] = {50, 150, 700000};
    for (size_t i = 0; i < 3; i++) {
        ev_init(&ev, "starter", "qwen2.5-coder:7b", "gpu0", 200);
        ev.latency_ms = lat[i];
        ev.ttft_ms = i == 0 ? -1 : 30; /* no first byte: no TTFT observation */
        ev.queue_ms = i == 2 ? 6000 : 0;
        metrics_observe(m, &ev);
    }
    /* Rejected before routing: no latency sample; it never queued either. */
    ev_init(&ev, "starter", "qwen2.5-coder:7b", "", 429);
    ev.latency_ms = 1;
    metrics_observe(m, &ev);
    /* Timed out in the queue: a queue sample without a backend. */
    ev_init(&ev, "pro", "qwen2.5-coder:7b", "", 503);
    ev.queue_ms = 30000;
    metrics_observe(m, &ev);

    struct buf b;
    const char *t = render(m, NULL, &b);
    const char *q = "privax_request_duration_seconds_bucket{model=\"qwen2.5-coder:7b\",le=";
    char line[256];
    snprintf(line, sizeof(line), "%s\"0.1\"} 1", q);
    assert_line(t, line);
    snprintf(line, sizeof(line), "%s\"0.25\"} 2", q);
    assert_line(t, line);
    snprintf(line, sizeof(line), "%s\"600\"} 2", q);
    assert_line(t, line);
    snprintf(line, sizeof(line), "%s\"+Inf\"} 3", q);
    assert_line(t, line);
    assert_line(t, "privax_request_duration_seconds_sum{model=\"qwen2.5-coder:7b\"} 700.200");
    assert_line(t, "privax_request_duration_seconds_count{model=\"qwen2.5-coder:7b\"} 3");
    /* Configured models appear even with no observation; "_other" only once used. */
    assert_line(t, "privax_request_duration_seconds_count{model=\"m\\\"x\\\\y\"} 0");
    assert_null(strstr(t, "privax_request_duration_seconds_count{model=\"_other\"}"));
    assert_line(t, "privax_time_to_first_token_seconds_count{model=\"qwen2.5-coder:7b\"} 2");
    assert_line(t, "privax_time_to_first_token_seconds_bucket{model=\"qwen2.5-coder:7b\","
                   "le=\"0.025\"} 0");
    assert_line(t, "privax_time_to_first_token_seconds_bucket{model=\"qwen2.5-coder:7b\","
                   "le=\"0.05\"} 2");
    assert_line(t, "privax_queue_wait_seconds_count{tier=\"starter\"} 3");
    assert_line(t, "privax_queue_wait_seconds_bucket{tier=\"starter\",le=\"5\"} 2");
    assert_line(t, "privax_queue_wait_seconds_bucket{tier=\"starter\",le=\"10\"} 3");
    assert_line(t, "privax_queue_wait_seconds_sum{tier=\"starter\"} 6.000");
    assert_line(t, "privax_queue_wait_seconds_bucket{tier=\"pro\",le=\"30\"} 1");
    assert_line(t, "privax_queue_wait_seconds_sum{tier=\"pro\"} 30.000");
    buf_cleanup(&b);
    metrics_free(m);
}

static void test_gauges_and_unknown_gpu(void **state)
{
    (void)state;
    struct metrics *m = metrics_new(&cfg);
    struct metrics_backend mb[2] = {{"gpu0", 1, 3, 4}, {"gpu1", 0, 0, 2}};
    struct gpu_reading gpus[2] = {{0, 95.5, 1024, 16384}, {1, -1, -1, 8192}};
    struct metrics_gauges g = {
        .node_id = "node\"1",
        .version = "0.1.0",
        .uptime_s = 12,
        .inflight = 3,
        .queue_length = 2,
        .queue_oldest_ms = 1500,
        .backends = mb,
        .nbackends = 2,
        .usage_backlog = 7,
        .usage_last_commit_ms = 1700000000123,
        .usage_spool_bytes = 4096,
        .usage_spool_max_bytes = 1 << 30,
        .usage_shipped = 99,
        .usage_ship_failures = 2,
        .usage_store_up = 1,
        .limits_mode = "local",
        .gpu_source = "file",
        .gpus = gpus,
        .ngpus = 2,
        .gpu_samples_ok = 5,
        .gpu_samples_failed = 1,
    };
    struct buf b;
    const char *t = render(m, &g, &b);
    assert_line(t, "privax_info{node_id=\"node\\\"1\",version=\"0.1.0\"} 1");
    assert_line(t, "privax_inflight_requests 3");
    assert_line(t, "privax_queue_length 2");
    assert_line(t, "privax_queue_oldest_wait_seconds 1.500");
    assert_line(t, "privax_backend_up{backend=\"gpu0\"} 1");
    assert_line(t, "privax_backend_up{backend=\"gpu1\"} 0");
    assert_line(t, "privax_backend_inflight_requests{backend=\"gpu0\"} 3");
    assert_line(t, "privax_backend_max_concurrency{backend=\"gpu1\"} 2");
    assert_line(t, "privax_usage_backlog 7");
    assert_line(t, "privax_usage_last_commit_timestamp_seconds 1700000000.123");
    assert_line(t, "privax_usage_spool_bytes 4096");
    assert_line(t, "privax_usage_spool_max_bytes 1073741824");
    assert_line(t, "privax_usage_store_up 1");
    assert_line(t, "privax_usage_shipped_rows_total 99");
    assert_line(t, "privax_usage_ship_failures_total 2");
    assert_line(t, "privax_usage_dropped_rows_total 0");
    assert_line(t, "privax_limits_mode{mode=\"local\"} 1");
    assert_line(t, "privax_gpu_source{source=\"file\"} 1");
    assert_line(t, "privax_gpu_samples_total{result=\"error\"} 1");
    assert_line(t, "privax_gpu_utilization_ratio{gpu=\"0\"} 0.9550");
    assert_line(t, "privax_gpu_memory_used_bytes{gpu=\"0\"} 1073741824");
    assert_line(t, "privax_gpu_memory_total_bytes{gpu=\"1\"} 8589934592");
    /* GPU 1's utilisation and used memory are unknown: no sample at all. */
    assert_null(strstr(t, "privax_gpu_utilization_ratio{gpu=\"1\"}"));
    assert_null(strstr(t, "privax_gpu_memory_used_bytes{gpu=\"1\"}"));
    assert_true(b.len > 0 && b.data[b.len - 1] == '\n');
    buf_cleanup(&b);

    /* No commit yet, no GPUs: those series are absent, their families still announced. */
    g.usage_last_commit_ms = 0;
    g.ngpus = 0;
    t = render(m, &g, &b);
    assert_null(strstr(t, "\nprivax_usage_last_commit_timestamp_seconds "));
    assert_null(strstr(t, "\nprivax_gpu_utilization_ratio{"));
    assert_non_null(strstr(t, "# TYPE privax_gpu_utilization_ratio gauge\n"));
    buf_cleanup(&b);

    /* A buffer too small: an error, not a silently cut exposition. */
    buf_init(&b, 100);
    assert_int_equal(metrics_render(m, &g, &b), PX_EOVERFLOW);
    buf_cleanup(&b);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_label),
        cmocka_unit_test(test_counters_and_bounded_labels),
        cmocka_unit_test(test_histograms_cumulative_exact_sum),
        cmocka_unit_test(test_gauges_and_unknown_gpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
