/* Usage writer tests over a fake store (an ops struct defined here) and a real spool in a temp
 * directory: a store that fails N times then succeeds loses nothing and doubles nothing;
 * batches respect batch_max; rows are shipped within flush_ms without a full batch; a store
 * that never recovers leaves the rows in the spool and a new writer ships them; a batch that
 * landed although the insert failed is not sent twice (landed check); rows left by an
 * earlier process are checked before they are sent; out-of-range rows go to rejected.jsonl;
 * a full spool says so and keeps its rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "store/store.h"
#include "usage/writer.h"

#define FAKE_MAX_ROWS 8192

struct fake_store {
    struct store base;            /* must be first */
    pthread_mutex_t mu;           /* guards the fields below (insert runs on the shipper) */
    int fail_left;                /* inserts still to fail; -1 = fail forever */
    int land_then_fail;           /* inserts that store the rows and then report PX_ESTORE */
    int notsent;                  /* failures say STORE_ENOTSENT */
    int calls;                    /* insert calls, failed ones included */
    int failed;                   /* failed insert calls */
    int landed_calls;             /* landed calls */
    size_t max_batch;             /* largest n seen */
    int seen[FAKE_MAX_ROWS];      /* stored copies per request number (parsed from request_id) */
    uint64_t seqs[FAKE_MAX_ROWS]; /* spool_seq stored per request number */
    size_t committed;             /* rows stored */
};

static void store_rows(struct fake_store *f, struct usage_event *const *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        long id = strtol(rows[i]->request_id, NULL, 10);
        if (id >= 0 && id < FAKE_MAX_ROWS) {
            f->seen[id]++;
            f->seqs[id] = rows[i]->spool_seq;
        }
        f->committed++;
    }
}

static int fake_insert(struct store *st, struct usage_event *const *rows, size_t n)
{
    struct fake_store *f = (struct fake_store *)st;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    if (n > f->max_batch) {
        f->max_batch = n;
    }
    if (f->land_then_fail > 0) {
        f->land_then_fail--;
        f->failed++;
        store_rows(f, rows, n);
        pthread_mutex_unlock(&f->mu);
        return PX_ESTORE; /* e.g. the reply was cut after the server committed */
    }
    if (f->fail_left != 0) {
        if (f->fail_left > 0) {
            f->fail_left--;
        }
        f->failed++;
        pthread_mutex_unlock(&f->mu);
        return f->notsent ? STORE_ENOTSENT : PX_ESTORE;
    }
    store_rows(f, rows, n);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

/* A row is present when its request number was stored with the same spool_seq. */
static int fake_landed(struct store *st, struct usage_event *const *rows, size_t n,
                       unsigned char *present)
{
    struct fake_store *f = (struct fake_store *)st;
    pthread_mutex_lock(&f->mu);
    f->landed_calls++;
    for (size_t i = 0; i < n; i++) {
        long id = strtol(rows[i]->request_id, NULL, 10);
        present[i] =
            id >= 0 && id < FAKE_MAX_ROWS && f->seen[id] > 0 && f->seqs[id] == rows[i]->spool_seq;
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static const char *fake_errmsg(struct store *st)
{
    (void)st;
    return "fake failure";
}

static const struct store_ops fake_ops = {
    .name = "fake",
    .insert = fake_insert,
    .landed = fake_landed,
    .errmsg = fake_errmsg,
};

static struct fake_store *fake_new(int fail_times)
{
    struct fake_store *f = px_calloc(1, sizeof(*f));
    f->base.ops = &fake_ops;
    f->fail_left = fail_times;
    pthread_mutex_init(&f->mu, NULL);
    return f;
}

static void fake_free(struct fake_store *f)
{
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static struct usage_event *ev(int id)
{
    struct usage_event *e = px_calloc(1, sizeof(*e));
    snprintf(e->request_id, sizeof(e->request_id), "%d", id);
    snprintf(e->tenant_id, sizeof(e->tenant_id), "t");
    e->event_time_ms = 1700000000000LL + id;
    e->total_tokens = 10;
    e->ttft_ms = -1;
    e->gpu_id = -1;
    return e;
}

static size_t committed(struct fake_store *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->committed;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void wait_committed(struct fake_store *f, size_t n, uint64_t ms)
{
    uint64_t deadline = px_mono_ms() + ms;
    while (committed(f) < n && px_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

struct tmp {
    char dir[64];   /* mkdtemp directory */
    char spool[96]; /* its spool subdirectory */
};

static void tmp_make(struct tmp *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/px_test_writer_XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->spool, sizeof(t->spool), "%s/spool", t->dir);
}

static void tmp_remove(struct tmp *t)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

static struct usage_writer *start(struct fake_store *f, struct tmp *t, uint64_t flush_ms,
                                  size_t batch_max, uint64_t max_bytes)
{
    struct usage_writer *w = NULL;
    char err[256];
    struct usage_writer_opts o = {.spool_dir = t->spool,
                                  .flush_ms = flush_ms,
                                  .batch_max = batch_max,
                                  .fsync_ms = 20,
                                  .spool_max_bytes = max_bytes,
                                  .memory_max_rows = 100000};
    int rc = usage_writer_start(&w, &f->base, &o, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "usage_writer_start: %s\n", err);
    }
    assert_int_equal(rc, 0);
    return w;
}

static void test_fail_then_succeed(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(3);
    struct usage_writer *w = start(f, &t, 10, 50, 64 << 20);
    for (int i = 0; i < 500; i++) {
        usage_writer_push(w, ev(i));
    }
    assert_true(usage_writer_backlog(w) > 0);
    /* Backoff 100 + 200 + 400 ms, then everything goes through. */
    wait_committed(f, 500, 10000);
    uint64_t deadline = px_mono_ms() + 2000;
    while (usage_writer_backlog(w) > 0 && px_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(usage_writer_backlog(w), 0);
    assert_true(usage_writer_last_commit_ms(w) > 0);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    assert_int_equal(f->failed, 3);
    assert_int_equal(f->committed, 500);
    for (int i = 0; i < 500; i++) {
        assert_int_equal(f->seen[i], 1); /* nothing lost, nothing doubled */
    }
    assert_true(f->max_batch <= 50);
    fake_free(f);
    tmp_remove(&t);
}

static void test_flush_interval(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(0);
    struct usage_writer *w = start(f, &t, 30, 1000, 64 << 20);
    assert_int_equal(usage_writer_last_commit_ms(w), 0);
    usage_writer_push(w, ev(1));
    uint64_t t0 = px_mono_ms();
    wait_committed(f, 1, 2000);
    /* One row, far below batch_max, still lands within about flush_ms. */
    assert_int_equal(committed(f), 1);
    assert_true(px_mono_ms() - t0 < 1000);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    fake_free(f);
    tmp_remove(&t);
}

static void test_stop_flushes(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(0);
    /* A long flush interval: only stop can make these rows land now. */
    struct usage_writer *w = start(f, &t, 60000, 100000, 64 << 20);
    for (int i = 0; i < 1000; i++) {
        usage_writer_push(w, ev(i));
    }
    assert_int_equal(usage_writer_stop(w, 5000), 0);
    assert_int_equal(f->committed, 1000);
    fake_free(f);
    tmp_remove(&t);
}

/* A store that never recovers: stop gives up at its deadline, the rows stay in the spool, and
 * the next writer (a restart) ships them, each exactly once. */
static void test_store_never_recovers_then_restart(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(-1);
    struct usage_writer *w = start(f, &t, 5, 10, 64 << 20);
    for (int i = 0; i < 25; i++) {
        usage_writer_push(w, ev(i));
    }
    uint64_t t0 = px_mono_ms();
    assert_int_equal(usage_writer_stop(w, 300), 0);
    /* Gives up near the deadline, not after a full 5 s backoff step. */
    assert_true(px_mono_ms() - t0 < 2000);
    assert_int_equal(f->committed, 0);
    fake_free(f);

    f = fake_new(0);
    w = start(f, &t, 5, 10, 64 << 20);
    wait_committed(f, 25, 5000);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    assert_int_equal(f->committed, 25);
    for (int i = 0; i < 25; i++) {
        assert_int_equal(f->seen[i], 1);
    }
    /* They were spooled by the first writer: it asked what landed before sending. */
    assert_true(f->landed_calls >= 1);
    fake_free(f);
    tmp_remove(&t);
}

/* The insert stores the batch but reports a failure (a cut reply): the retry asks what
 * landed and sends nothing twice. */
static void test_landed_then_failed(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(0);
    f->land_then_fail = 2;
    struct usage_writer *w = start(f, &t, 5, 40, 64 << 20);
    for (int i = 0; i < 100; i++) {
        usage_writer_push(w, ev(i));
    }
    wait_committed(f, 100, 5000);
    assert_int_equal(usage_writer_stop(w, 2000), 0);
    assert_int_equal(f->committed, 100);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(f->seen[i], 1);
    }
    assert_true(f->landed_calls >= 2);
    fake_free(f);
    tmp_remove(&t);
}

/* Failures that certainly sent nothing (connection refused) need no landed check. */
static void test_notsent_needs_no_check(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(2);
    f->notsent = 1;
    struct usage_writer *w = start(f, &t, 5, 100, 64 << 20);
    for (int i = 0; i < 10; i++) {
        usage_writer_push(w, ev(i));
    }
    wait_committed(f, 10, 5000);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    assert_int_equal(f->committed, 10);
    assert_int_equal(f->landed_calls, 0);
    fake_free(f);
    tmp_remove(&t);
}

/* Out-of-range rows are never sent; they are kept in rejected.jsonl. */
static void test_range_check_rejects(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(0);
    struct usage_writer *w = start(f, &t, 5, 100, 64 << 20);
    struct usage_event *bad = ev(1);
    bad->latency_ms = 70000LL * 1000000LL; /* > UInt32 */
    usage_writer_push(w, bad);
    struct usage_event *bad2 = ev(2);
    bad2->status_code = 70000; /* > UInt16: 18.16 would store 4464 */
    usage_writer_push(w, bad2);
    usage_writer_push(w, ev(3));
    wait_committed(f, 1, 5000);
    struct usage_writer_stats st;
    uint64_t deadline = px_mono_ms() + 3000;
    do {
        usage_writer_stats(w, &st);
    } while (st.spooled > 0 && px_mono_ms() < deadline);
    assert_int_equal(st.rejected, 2);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    assert_int_equal(f->committed, 1);
    assert_int_equal(f->seen[3], 1);
    char path[160];
    snprintf(path, sizeof(path), "%s/rejected.jsonl", t.spool);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[2048];
    int lines = 0;
    while (fgets(line, sizeof(line), fp)) {
        assert_non_null(strstr(line, "out of range"));
        lines++;
    }
    fclose(fp);
    assert_int_equal(lines, 2);
    fake_free(f);
    tmp_remove(&t);
}

/* A full spool: appends stop at the cap, /health would say degraded, nothing is dropped
 * while the memory queue has room, and everything ships once the store is back. */
static void test_spool_cap(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct fake_store *f = fake_new(-1);
    struct usage_writer *w = start(f, &t, 5, 50, 65536);
    for (int i = 0; i < 2000; i++) {
        usage_writer_push(w, ev(i));
    }
    struct usage_writer_stats st;
    uint64_t deadline = px_mono_ms() + 5000;
    do {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
        usage_writer_stats(w, &st);
    } while (!st.spool_full && px_mono_ms() < deadline);
    assert_int_equal(st.spool_full, 1);
    assert_true(usage_writer_degraded(&st));
    assert_true(st.spool_bytes <= 65536);
    assert_true(st.queued > 0);
    assert_int_equal(st.dropped, 0);
    /* The store comes back: every row goes through, once. */
    pthread_mutex_lock(&f->mu);
    f->fail_left = 0;
    pthread_mutex_unlock(&f->mu);
    wait_committed(f, 2000, 20000);
    assert_int_equal(usage_writer_stop(w, 5000), 0);
    assert_int_equal(f->committed, 2000);
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(f->seen[i], 1);
    }
    fake_free(f);
    tmp_remove(&t);
}

static void test_stop_null(void **state)
{
    (void)state;
    assert_int_equal(usage_writer_stop(NULL, 0), 0);
}

int main(void)
{
    px_log_min_level = getenv("PX_TEST_LOG") ? PX_LOG_DEBUG : PX_LOG_ERROR + 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_then_succeed),
        cmocka_unit_test(test_flush_interval),
        cmocka_unit_test(test_stop_flushes),
        cmocka_unit_test(test_store_never_recovers_then_restart),
        cmocka_unit_test(test_landed_then_failed),
        cmocka_unit_test(test_notsent_needs_no_check),
        cmocka_unit_test(test_range_check_rejects),
        cmocka_unit_test(test_spool_cap),
        cmocka_unit_test(test_stop_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
