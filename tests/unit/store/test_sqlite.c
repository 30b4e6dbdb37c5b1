/* SQLite store tests against a temp file: schema and pragmas, all-or-none batches, re-sent
 * rows not counted twice, per-tenant aggregates with exact nearest-rank p95, month bounds,
 * and the writer thread end to end over the real store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <sqlite3.h>

#include "config/config.h"
#include "core/err.h"
#include "core/mem.h"
#include "store/store.h"
#include "usage/writer.h"

struct fixture {
    char dir[64];         /* mkdtemp directory */
    char path[128];       /* the database file, in a subdirectory that open must create */
    struct px_config cfg; /* only sqlite_path is used */
    struct store *st;     /* open store */
};

static int setup(void **state)
{
    struct fixture *f = px_calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/px_test_sqlite_XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/sub/dir/usage.db", f->dir);
    f->cfg.sqlite_path = f->path;
    char err[256];
    const struct store_ops *ops = store_ops_for(&f->cfg);
    if (ops->open(&f->st, &f->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[160];
    store_close(f->st);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) {
        return -1;
    }
    free(f);
    return 0;
}

static struct usage_event *mk(const char *rid, const char *tenant, const char *tier, int64_t t_ms,
                              int64_t prompt, int64_t completion, int64_t latency, int success)
{
    struct usage_event *e = px_calloc(1, sizeof(*e));
    snprintf(e->request_id, sizeof(e->request_id), "%s", rid);
    snprintf(e->tenant_id, sizeof(e->tenant_id), "%s", tenant);
    snprintf(e->plan_tier, sizeof(e->plan_tier), "%s", tier);
    snprintf(e->model_name, sizeof(e->model_name), "qwen");
    snprintf(e->provider, sizeof(e->provider), "ollama");
    snprintf(e->request_type, sizeof(e->request_type), "chat");
    e->event_time_ms = t_ms;
    e->prompt_tokens = prompt;
    e->completion_tokens = completion;
    e->total_tokens = prompt + completion;
    e->latency_ms = latency;
    e->success = success;
    e->status_code = success ? 200 : 502;
    e->gpu_id = 0;
    e->ttft_ms = -1;
    return e;
}

static int64_t count_rows(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int64_t n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM llm_requests", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            n = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

static void test_schema(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT MAX(version) FROM schema_migrations", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 2);
    sqlite3_finalize(st);
    /* Every PRODUCT.md column exists. */
    static const char *const cols[] = {
        "event_time", "request_id",    "tenant_id",         "user_id",      "api_key_id",
        "plan_tier",  "model_name",    "provider",          "backend",      "request_type",
        "stream",     "prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated",
        "queue_ms",   "ttft_ms",       "latency_ms",        "status_code",  "success",
        "error_code", "input_chars",   "output_chars",      "gpu_id",       "node_id",
    };
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT %s FROM llm_requests", cols[i]);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);

    /* Reopening an existing file applies no migration twice. */
    struct store *again;
    char err[256];
    assert_int_equal(store_sqlite_ops.open(&again, &f->cfg, err, sizeof(err)), 0);
    store_close(again);
}

static void test_insert_idempotent(void **state)
{
    struct fixture *f = *state;
    struct usage_event *rows[3] = {
        mk("r1", "acme", "pro", 1000, 10, 5, 100, 1),
        mk("r2", "acme", "pro", 1001, 10, 5, 100, 1),
        mk("r3", "beta", "starter", 1002, 1, 1, 10, 0),
    };
    for (size_t i = 0; i < 3; i++) {
        rows[i]->spool_id = 77;
        rows[i]->spool_seq = i + 1;
    }
    assert_int_equal(store_insert(f->st, rows, 3), 0);
    /* The same batch again (a retry after an ambiguous failure) adds nothing. */
    assert_int_equal(store_insert(f->st, rows, 3), 0);
    assert_int_equal(count_rows(f->path), 3);
    assert_int_equal(store_insert(f->st, rows, 0), 0);
    /* A second request that reuses a request id is a second row (another spool record). */
    rows[0]->spool_seq = 4;
    assert_int_equal(store_insert(f->st, rows, 1), 0);
    assert_int_equal(count_rows(f->path), 4);
    for (size_t i = 0; i < 3; i++) {
        free(rows[i]);
    }
}

static void test_insert_all_or_none(void **state)
{
    struct fixture *f = *state;
    /* A trigger rejects one row of the batch: none of the batch may land. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TRIGGER boom BEFORE INSERT ON llm_requests"
                                  " WHEN NEW.request_id = 'bad' BEGIN SELECT RAISE(ABORT, 'boom');"
                                  " END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    struct usage_event *rows[3] = {mk("a1", "t", "pro", 1, 1, 1, 1, 1),
                                   mk("bad", "t", "pro", 2, 1, 1, 1, 1),
                                   mk("a2", "t", "pro", 3, 1, 1, 1, 1)};
    assert_int_equal(store_insert(f->st, rows, 3), PX_ESTORE);
    assert_non_null(strstr(store_errmsg(f->st), "boom"));
    assert_int_equal(count_rows(f->path), 0);
    assert_int_equal(sqlite3_exec(db, "DROP TRIGGER boom", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    /* The same batch goes in whole once the store accepts it. */
    assert_int_equal(store_insert(f->st, rows, 3), 0);
    assert_int_equal(count_rows(f->path), 3);
    for (size_t i = 0; i < 3; i++) {
        free(rows[i]);
    }
}

static void test_usage_aggregates(void **state)
{
    struct fixture *f = *state;
    /* acme: 20 rows, latencies 10, 20, ..., 200: nearest-rank p95 = ceil(19) = 19th = 190.
     * beta: 3 rows, latencies 5, 7, 100: p95 = ceil(2.85) = 3rd = 100. One error.
     * gamma: outside the period. Tier: the latest row's (acme moved to enterprise). */
    struct usage_event *rows[25];
    size_t n = 0;
    char rid[32];
    for (int i = 0; i < 20; i++) {
        snprintf(rid, sizeof(rid), "acme-%d", i);
        /* Insert latencies out of order so the p95 relies on the query's ordering. */
        int lat = ((i * 7) % 20 + 1) * 10;
        rows[n++] = mk(rid, "acme", i == 19 ? "enterprise" : "pro", 10000 + i, 100, 50, lat, 1);
    }
    rows[n++] = mk("b1", "beta", "starter", 10000, 3, 4, 5, 1);
    rows[n++] = mk("b2", "beta", "starter", 10001, 3, 4, 100, 0);
    rows[n++] = mk("b3", "beta", "starter", 10002, 3, 4, 7, 1);
    rows[n++] = mk("g1", "gamma", "pro", 20000, 1, 1, 1, 1);
    rows[n++] = mk("g0", "gamma", "pro", 9999, 1, 1, 1, 1);
    rows[0]->overage = 1;
    assert_int_equal(store_insert(f->st, rows, n), 0);

    struct store_usage_query q = {.tenant_id = NULL, .since_ms = 10000, .until_ms = 20000};
    struct store_usage_row *out;
    size_t nout;
    assert_int_equal(store_usage(f->st, &q, &out, &nout), 0);
    assert_int_equal(nout, 2);
    assert_string_equal(out[0].tenant_id, "acme");
    assert_string_equal(out[0].plan_tier, "enterprise");
    assert_int_equal(out[0].requests, 20);
    assert_int_equal(out[0].prompt_tokens, 2000);
    assert_int_equal(out[0].completion_tokens, 1000);
    assert_int_equal(out[0].total_tokens, 3000);
    assert_int_equal(out[0].errors, 0);
    assert_true(out[0].avg_latency_ms > 104.9 && out[0].avg_latency_ms < 105.1);
    assert_true(out[0].p95_latency_ms > 189.9 && out[0].p95_latency_ms < 190.1);
    assert_int_equal(out[0].overage_tokens, 150);
    assert_string_equal(out[1].tenant_id, "beta");
    assert_int_equal(out[1].requests, 3);
    assert_int_equal(out[1].errors, 1);
    assert_true(out[1].p95_latency_ms > 99.9 && out[1].p95_latency_ms < 100.1);
    free(out);

    q.tenant_id = "beta";
    assert_int_equal(store_usage(f->st, &q, &out, &nout), 0);
    assert_int_equal(nout, 1);
    assert_string_equal(out[0].tenant_id, "beta");
    free(out);

    q.tenant_id = "nobody";
    assert_int_equal(store_usage(f->st, &q, &out, &nout), 0);
    assert_int_equal(nout, 0);
    free(out);
    for (size_t i = 0; i < n; i++) {
        free(rows[i]);
    }
}

struct pusher {
    struct usage_writer *w; /* shared writer */
    int id;                 /* thread number, part of each request id */
    int n;                  /* events to push */
};

static void *push_many(void *arg)
{
    struct pusher *p = arg;
    for (int i = 0; i < p->n; i++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "w%d-%d", p->id, i);
        usage_writer_push(p->w, mk(rid, "acme", "pro", 50000, 1, 2, 3, 1));
    }
    return NULL;
}

static void test_writer_end_to_end(void **state)
{
    struct fixture *f = *state;
    struct usage_writer *w;
    char dir[128];
    char err[256];
    snprintf(dir, sizeof(dir), "%s/spool", f->dir);
    struct usage_writer_opts o = {.spool_dir = dir,
                                  .flush_ms = 20,
                                  .batch_max = 64,
                                  .fsync_ms = 50,
                                  .spool_max_bytes = 64 * 1024 * 1024,
                                  .memory_max_rows = 100000};
    assert_int_equal(usage_writer_start(&w, f->st, &o, err, sizeof(err)), 0);
    pthread_t th[4];
    struct pusher p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = (struct pusher){.w = w, .id = i, .n = 500};
        assert_int_equal(pthread_create(&th[i], NULL, push_many, &p[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    assert_int_equal(usage_writer_stop(w, 5000), 0);
    assert_int_equal(count_rows(f->path), 2000);
}

static void test_open_fails_cleanly(void **state)
{
    (void)state;
    struct px_config cfg = {.sqlite_path = (char *)(uintptr_t) "/proc/nope/usage.db"};
    struct store *st = (struct store *)(uintptr_t)1;
    char err[256];
    assert_int_equal(store_sqlite_ops.open(&st, &cfg, err, sizeof(err)) < 0, 1);
    assert_null(st);
    assert_non_null(strstr(err, "/proc/nope/usage.db"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_all_or_none, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage_aggregates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_end_to_end, setup, teardown),
        cmocka_unit_test(test_open_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
