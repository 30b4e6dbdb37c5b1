/* Usage writer tests over a fake store (an ops struct defined here): a store that fails N
 * times then succeeds loses nothing and doubles nothing; batches respect batch_max; rows are
 * committed within flush_ms without a full batch; a store that never recovers is given up at
 * the stop deadline with PX_ESTORE and without leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "store/store.h"
#include "usage/writer.h"

#define FAKE_MAX_ROWS 4096

struct fake_store {
    struct store base;       /* must be first */
    pthread_mutex_t mu;      /* guards the fields below (insert runs on the writer) */
    int fail_left;           /* inserts still to fail; -1 = fail forever */
    int calls;               /* insert calls, failed ones included */
    int failed;              /* failed insert calls */
    size_t max_batch;        /* largest n seen */
    int seen[FAKE_MAX_ROWS]; /* commits per request number (parsed from request_id) */
    size_t committed;        /* rows committed */
};

static int fake_insert(struct store *st, struct usage_event *const *rows, size_t n)
{
    struct fake_store *f = (struct fake_store *)st;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    if (n > f->max_batch) {
        f->max_batch = n;
    }
    if (f->fail_left != 0) {
        if (f->fail_left > 0) {
            f->fail_left--;
        }
        f->failed++;
        pthread_mutex_unlock(&f->mu);
        return PX_ESTORE; /* all or none: nothing recorded */
    }
    for (size_t i = 0; i < n; i++) {
        long id = strtol(rows[i]->request_id, NULL, 10);
        if (id >= 0 && id < FAKE_MAX_ROWS) {
            f->seen[id]++;
        }
        f->committed++;
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
    return e;
}

static size_t committed(struct fake_store *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->committed;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void test_fail_then_succeed(void **state)
{
    (void)state;
    struct fake_store *f = fake_new(3);
    struct usage_writer *w;
    assert_int_equal(usage_writer_start(&w, &f->base, 10, 50), 0);
    for (int i = 0; i < 500; i++) {
        usage_writer_push(w, ev(i));
    }
    assert_true(usage_writer_backlog(w) > 0);
    /* Backoff 100 + 200 + 400 ms, then everything goes through. */
    uint64_t deadline = px_mono_ms() + 5000;
    while (committed(f) < 500 && px_mono_ms() < deadline) {
        struct timespec ts = {0, 10 * 1000000L};
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
}

static void test_flush_interval(void **state)
{
    (void)state;
    struct fake_store *f = fake_new(0);
    struct usage_writer *w;
    assert_int_equal(usage_writer_start(&w, &f->base, 30, 1000), 0);
    assert_int_equal(usage_writer_last_commit_ms(w), 0);
    usage_writer_push(w, ev(1));
    uint64_t t0 = px_mono_ms();
    while (committed(f) < 1 && px_mono_ms() - t0 < 2000) {
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* One row, far below batch_max, still lands within about flush_ms. */
    assert_int_equal(committed(f), 1);
    assert_true(px_mono_ms() - t0 < 1000);
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    fake_free(f);
}

static void test_stop_flushes(void **state)
{
    (void)state;
    struct fake_store *f = fake_new(0);
    struct usage_writer *w;
    /* A long flush interval: only stop can make these rows land now. */
    assert_int_equal(usage_writer_start(&w, &f->base, 60000, 100000), 0);
    for (int i = 0; i < 1000; i++) {
        usage_writer_push(w, ev(i));
    }
    assert_int_equal(usage_writer_stop(w, 1000), 0);
    assert_int_equal(f->committed, 1000);
    fake_free(f);
}

static void test_store_never_recovers(void **state)
{
    (void)state;
    struct fake_store *f = fake_new(-1);
    struct usage_writer *w;
    assert_int_equal(usage_writer_start(&w, &f->base, 5, 10), 0);
    for (int i = 0; i < 25; i++) {
        usage_writer_push(w, ev(i));
    }
    uint64_t t0 = px_mono_ms();
    assert_int_equal(usage_writer_stop(w, 300), PX_ESTORE);
    /* Gives up near the deadline, not after a full 5 s backoff step. */
    assert_true(px_mono_ms() - t0 < 2000);
    assert_int_equal(f->committed, 0);
    fake_free(f);
}

static void test_stop_null(void **state)
{
    (void)state;
    assert_int_equal(usage_writer_stop(NULL, 0), 0);
}

int main(void)
{
    /* The failure paths log one line per retry and per lost row by design; keep test output
     * to cmocka's lines. */
    px_log_min_level = PX_LOG_ERROR + 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_then_succeed), cmocka_unit_test(test_flush_interval),
        cmocka_unit_test(test_stop_flushes),      cmocka_unit_test(test_store_never_recovers),
        cmocka_unit_test(test_stop_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
