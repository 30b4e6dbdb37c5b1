/* store_bench: rows per second into the usage store through privax's own code.
 *
 *   store_bench CONFIG writer ROWS     push ROWS usage events through the usage writer (the
 *                                      threads privax runs: spool, then the shipper in
 *                                      batches of usage.batch_max, one insert each) and wait
 *                                      until all are committed
 *   store_bench CONFIG direct ROWS     store_insert() in batches of usage.batch_max, one thread
 *   store_bench CONFIG flood SECONDS   like writer, for SECONDS, keeping the backlog bounded
 *
 * The store is the one CONFIG names: store.sqlite, or store.clickhouse (run `privax migrate`
 * first). With ClickHouse the clock stops only when the server's own count() of this run's
 * rows (request ids carry a per-run tag) equals the rows pushed: "shipped" is what the server
 * says it holds, not what the writer believes; `confirmed` and `distinct` (uniqExact of the
 * request ids: nothing doubled) are printed too. Rows look like real ones (every column set,
 * unique request ids). Prints one JSON line. bench/run defines PX_STORE_CH when the config has
 * the ClickHouse store (and usage.memory_max_rows), and PX_WRITER_OPTS when
 * usage/writer.h has the options struct (the writer with a local spool). Built by bench/run against
 * build-bench's static libraries; not part of the product. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

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

#ifdef PX_STORE_CH
/* ClickHouse only: the server's count() and uniqExact(request_id) of the rows whose request id
 * starts with prefix. 0, or -1 when the query failed. One statement per request (18.16). */
struct resp {
    char data[256];
    size_t len;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct resp *r = ud;
    size_t k = size * n;
    size_t room = sizeof(r->data) - 1 - r->len;
    memcpy(r->data + r->len, p, k < room ? k : room);
    r->len += k < room ? k : room;
    r->data[r->len] = '\0';
    return k;
}

static int ch_count(const struct px_config *cfg, const char *prefix, long *count, long *distinct)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(), uniqExact(request_id) FROM %s.llm_requests WHERE request_id LIKE "
             "'%s%%' FORMAT TabSeparated",
             cfg->ch_database ? cfg->ch_database : "privax", prefix);
    const char *pw = cfg->ch_password_env ? getenv(cfg->ch_password_env) : NULL;
    CURL *c = curl_easy_init();
    if (!c) {
        return -1;
    }
    struct resp r = {.len = 0};
    long status = 0;
    curl_easy_setopt(c, CURLOPT_URL, cfg->ch_url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, sql);
    curl_easy_setopt(c, CURLOPT_USERNAME, cfg->ch_user ? cfg->ch_user : "default");
    curl_easy_setopt(c, CURLOPT_PASSWORD, pw ? pw : "");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (cc != CURLE_OK || status != 200 || sscanf(r.data, "%ld\t%ld", count, distinct) != 2) {
        fprintf(stderr, "store_bench: count query failed: curl %d, HTTP %ld: %s\n", (int)cc, status,
                r.data);
        return -1;
    }
    return 0;
}
#endif

static const char *store_name(const struct px_config *cfg)
{
#ifdef PX_STORE_CH
    return cfg->ch_url ? "clickhouse" : "sqlite";
#else
    (void)cfg;
    return "sqlite";
#endif
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
#ifdef PX_STORE_CH
            /* One thread pushing in a loop (~2 µs a row) outruns the spool thread's appends,
             * which no gateway does (a row per answered request); past usage.memory_max_rows
             * queued the writer drops rows. Wait for the spool to catch up instead: the
             * pusher is never the bottleneck of this figure. */
            if ((rows & 1023) == 0) {
                struct usage_writer_stats ws;
                usage_writer_stats(w, &ws);
                if (ws.queued > cfg->usage_memory_max_rows / 2) {
                    usleep(500);
                    continue;
                }
            }
#endif
            usage_writer_push(w, make_row(rows, tag));
            rows++;
        }
        rc = usage_writer_stop(w, 60000) != 0;
        t1 = mono_s();
    }
    double tstop = t1;
    long confirmed = -1;
    long distinct = -1;
#ifdef PX_STORE_CH
    if (cfg->ch_url && rc == 0) {
        /* Until the server counts every row of this run (an INSERT answers once its block is
         * written, so this is normally the first query; a bounded wait otherwise). */
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "sb-%s-%d-", tag, (int)getpid());
        double give_up = mono_s() + 60;
        for (;;) {
            if (ch_count(cfg, prefix, &confirmed, &distinct) != 0) {
                rc = 1;
                break;
            }
            if (confirmed >= rows || mono_s() >= give_up) {
                break;
            }
            usleep(20000);
        }
        t1 = mono_s();
        rc = rc || confirmed != rows || distinct != rows;
    }
#endif
    double secs = t1 - t0;
    printf("{\"mode\":\"%s\",\"store\":\"%s\",\"rows\":%ld,\"seconds\":%.4f,\"rows_per_s\":%.0f,"
           "\"writer_done_s\":%.4f,\"confirmed\":%ld,\"distinct\":%ld,\"batch_max\":%zu,"
           "\"flush_ms\":%llu,\"ok\":%s}\n",
           mode, store_name(cfg), rows, secs, secs > 0 ? (double)rows / secs : 0.0, tstop - t0,
           confirmed, distinct, batch, (unsigned long long)cfg->usage_flush_ms,
           rc ? "false" : "true");
    store_close(st);
    px_config_free(cfg);
    return rc;
}
