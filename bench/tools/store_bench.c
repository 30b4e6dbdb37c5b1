/* store_bench: rows per second into the usage store through privax's own code.
 *
 *   store_bench CONFIG writer ROWS     push ROWS usage events through the usage writer (the
 *                                      thread privax runs: batches of usage.batch_max,
 *                                      one transaction each) and wait until all are committed
 *   store_bench CONFIG direct ROWS     store_insert() in batches of usage.batch_max, one thread
 *   store_bench CONFIG flood SECONDS   like writer, for SECONDS, keeping the backlog bounded
 *
 * The store is the one CONFIG names (store.sqlite). Rows look like real ones (every column
 * set, unique request ids). Prints one JSON line. bench/run defines PX_WRITER_OPTS when
 * usage/writer.h has the options struct (the writer with a local spool). Built by bench/run against build-bench's
 * static libraries; not part of the product. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "core/util.h"
#include "store/store.h"
#include "usage/writer.h"

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct usage_event *make_row(long i, const char *tag)
{
    struct usage_event *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    e->event_time_ms = px_now_ms();
    snprintf(e->request_id, sizeof(e->request_id), "sb-%s-%d-%ld", tag, (int)getpid(), i);
    snprintf(e->tenant_id, sizeof(e->tenant_id), "tenant-%ld", i % 97);
    snprintf(e->user_id, sizeof(e->user_id), "user-%ld", i % 1009);
    snprintf(e->api_key_id, sizeof(e->api_key_id), "bench");
    snprintf(e->plan_tier, sizeof(e->plan_tier), "pro");
    snprintf(e->model_name, sizeof(e->model_name), "qwen2.5-coder:7b");
    snprintf(e->provider, sizeof(e->provider), "vllm");
    snprintf(e->backend, sizeof(e->backend), "gpu%ld", i % 4);
    snprintf(e->request_type, sizeof(e->request_type), "chat");
    snprintf(e->node_id, sizeof(e->node_id), "store-bench");
    e->stream = (int)(i & 1);
    e->prompt_tokens = 24 + i % 100;
    e->completion_tokens = 192;
    e->total_tokens = e->prompt_tokens + e->completion_tokens;
    e->queue_ms = 0;
    e->ttft_ms = 1;
    e->latency_ms = 2;
    e->status_code = 200;
    e->success = 1;
    e->input_chars = 120;
    e->output_chars = 800;
    e->gpu_id = (int)(i % 4);
    return e;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: store_bench CONFIG writer|direct ROWS | flood SECONDS\n");
        return 2;
    }
    const char *mode = argv[2];
    double arg = atof(argv[3]);
    char err[512];
    struct px_config *cfg;
    if (px_config_load(argv[1], &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "store_bench: %s\n", err);
        return 1;
    }
    struct store *st;
    if (store_ops_for(cfg)->open(&st, cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "store_bench: %s\n", err);
        return 1;
    }
    size_t batch = cfg->usage_batch_max;
    char tag[32];
    snprintf(tag, sizeof(tag), "%ld", (long)time(NULL));
    long rows = 0;
    double t0 = mono_s(), t1;
    int rc = 0;
    if (strcmp(mode, "direct") == 0) {
        long n = (long)arg;
        struct usage_event **b = calloc(batch, sizeof(*b));
        while (rows < n) {
            size_t k = 0;
            while (k < batch && rows + (long)k < n) {
                b[k] = make_row(rows + (long)k, tag);
                k++;
            }
            if (store_insert(st, b, k) != 0) {
                fprintf(stderr, "store_bench: insert: %s\n", store_errmsg(st));
                rc = 1;
                break;
            }
            for (size_t i = 0; i < k; i++) {
                free(b[i]);
            }
            rows += (long)k;
        }
        t1 = mono_s();
        free(b);
    } else {
        struct usage_writer *w;
#ifdef PX_WRITER_OPTS
        /* The writer with a local spool (rows are made durable on disk before shipping). */
        struct usage_writer_opts o;
        char dir[4096];
        usage_writer_opts_from_config(&o, cfg, dir, sizeof(dir));
        if (usage_writer_start(&w, st, &o, err, sizeof(err)) != 0) {
            fprintf(stderr, "store_bench: writer start failed: %s\n", err);
            return 1;
        }
#else
        if (usage_writer_start(&w, st, cfg->usage_flush_ms, batch) != 0) {
            fprintf(stderr, "store_bench: writer start failed\n");
            return 1;
        }
#endif
        int flood = strcmp(mode, "flood") == 0;
        double until = t0 + arg;
        long n = flood ? -1 : (long)arg;
        for (;;) {
            if (flood ? mono_s() >= until : rows >= n) {
                break;
            }
            if (flood && usage_writer_backlog(w) > 8 * batch) {
                usleep(200);
                continue;
            }
            usage_writer_push(w, make_row(rows, tag));
            rows++;
        }
        double tpush = mono_s();
        rc = usage_writer_stop(w, 60000) != 0;
        t1 = mono_s();
        (void)tpush;
    }
    double secs = t1 - t0;
    printf("{\"mode\":\"%s\",\"rows\":%ld,\"seconds\":%.4f,\"rows_per_s\":%.0f,\"batch_max\":%zu,"
           "\"flush_ms\":%llu,\"ok\":%s}\n",
           mode, rows, secs, secs > 0 ? (double)rows / secs : 0.0, batch,
           (unsigned long long)cfg->usage_flush_ms, rc ? "false" : "true");
    store_close(st);
    px_config_free(cfg);
    return rc;
}
