/* The usage writer thread.
 *
 * Design note. Producers (the event loop, any thread) only link an event at the tail of a
 * list under a mutex and maybe signal a condvar: no allocation, no I/O, so a slow or dead
 * store never reaches a request. The writer thread sleeps until there is work:
 *   - the queue was empty: it waits untimed; the push that makes it non-empty signals and
 *     records when (first_ms), so a row is committed within flush_ms of its arrival;
 *   - batch_max rows are queued: the push that reaches it signals at once;
 *   - stop was asked for.
 * It then detaches up to batch_max events and hands them to store_insert() outside the lock.
 * A failed batch is kept, as is, and retried after a backoff that doubles from 100 ms to 5 s;
 * each failed attempt logs one line (not one per row). Rows are never dropped while the
 * writer runs; the store's UNIQUE request_id makes a retried batch that had in fact landed
 * harmless. The backlog (pushed, not yet committed) is an atomic so /health can read it
 * without the lock.
 *
 * Stop: sets stopping, and the thread drains everything still queued; while the store fails
 * it keeps retrying until the stop deadline, then logs the request ids it could not write,
 * frees them and reports PX_ESTORE. */
#include "usage/writer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

#define WRITER_BACKOFF_MIN_MS 100  /* first retry delay after a failed batch */
#define WRITER_BACKOFF_MAX_MS 5000 /* retry delay ceiling */

struct usage_writer {
    struct store *store;                /* borrowed; outlives the writer */
    uint64_t flush_ms;                  /* longest a queued row waits before a commit attempt */
    size_t batch_max;                   /* rows per transaction */
    pthread_t thread;                   /* the writer thread */
    pthread_mutex_t mu;                 /* guards the fields down to stop_deadline_ms */
    pthread_cond_t cv;                  /* signalled by push (first row, batch_max) and stop */
    struct usage_event *head;           /* queued events, oldest first */
    struct usage_event *tail;           /* last queued event, NULL when empty */
    size_t nqueued;                     /* events in head..tail */
    uint64_t first_ms;                  /* monotonic ms when the queue last became non-empty */
    int stopping;                       /* 1 once stop was called */
    uint64_t stop_deadline_ms;          /* monotonic ms after which a failing store is given up */
    struct usage_event **batch;         /* batch_max slots, owned by the thread */
    atomic_uint_fast64_t backlog;       /* pushed and not yet committed (or given up) */
    atomic_int_fast64_t last_commit_ms; /* wall ms of the last successful commit, 0 = none */
    size_t lost;                        /* rows given up at stop; read after join */
};

/* Absolute CLOCK_MONOTONIC time ms from now, for pthread_cond_timedwait. */
static struct timespec mono_deadline(uint64_t at_ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(at_ms / 1000);
    ts.tv_nsec = (long)(at_ms % 1000) * 1000000L;
    return ts;
}

/* Wait (lock held) until there is a batch to write or stop with an empty queue. 1: work. */
static int wait_for_work(struct usage_writer *w)
{
    for (;;) {
        if (w->nqueued == 0) {
            if (w->stopping) {
                return 0;
            }
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        uint64_t due = w->first_ms + w->flush_ms;
        if (w->stopping || w->nqueued >= w->batch_max || px_mono_ms() >= due) {
            return 1;
        }
        struct timespec ts = mono_deadline(due);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
}

/* Detach up to batch_max events from the queue head into w->batch (lock held). */
static size_t take_batch(struct usage_writer *w)
{
    size_t n = 0;
    while (n < w->batch_max && w->head != NULL) {
        struct usage_event *ev = w->head;
        w->head = ev->next;
        ev->next = NULL;
        w->batch[n++] = ev;
    }
    if (w->head == NULL) {
        w->tail = NULL;
    }
    w->nqueued -= n;
    /* What is left starts a new flush interval now. */
    w->first_ms = px_mono_ms();
    return n;
}

/* Write one batch, retrying with backoff. Returns 0 once committed, or PX_ESTORE when stop
 * was asked for and its deadline passed (the batch is then still unwritten). */
static int write_batch(struct usage_writer *w, size_t n)
{
    uint64_t backoff = WRITER_BACKOFF_MIN_MS;
    for (;;) {
        int rc = store_insert(w->store, w->batch, n);
        if (rc == 0) {
            atomic_fetch_sub(&w->backlog, n);
            atomic_store(&w->last_commit_ms, px_now_ms());
            return 0;
        }
        pthread_mutex_lock(&w->mu);
        int stopping = w->stopping;
        uint64_t deadline = w->stop_deadline_ms;
        pthread_mutex_unlock(&w->mu);
        uint64_t now = px_mono_ms();
        if (stopping && now >= deadline) {
            return PX_ESTORE;
        }
        px_log(PX_LOG_WARN,
               "msg=\"usage store insert failed\" rows=%zu backlog=%" PRIuFAST64
               " retry_in_ms=%" PRIu64 " err=\"%s\"",
               n, (uint_fast64_t)atomic_load(&w->backlog), backoff, store_errmsg(w->store));
        /* Sleep on the condvar so a stop can cut the wait short to its own deadline. */
        uint64_t until = now + backoff;
        pthread_mutex_lock(&w->mu);
        for (;;) {
            uint64_t limit =
                w->stopping && w->stop_deadline_ms < until ? w->stop_deadline_ms : until;
            if (px_mono_ms() >= limit) {
                break;
            }
            struct timespec ts = mono_deadline(limit);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        pthread_mutex_unlock(&w->mu);
        backoff = backoff * 2 > WRITER_BACKOFF_MAX_MS ? WRITER_BACKOFF_MAX_MS : backoff * 2;
    }
}

/* Give up on n rows at stop: name each so an operator can replay them from the logs. */
static void give_up(struct usage_writer *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        px_log(PX_LOG_ERROR,
               "msg=\"usage row not written\" request_id=%s tenant=%s total_tokens=%" PRId64,
               w->batch[i]->request_id, w->batch[i]->tenant_id, w->batch[i]->total_tokens);
        free(w->batch[i]);
    }
    atomic_fetch_sub(&w->backlog, n);
    w->lost += n;
}

static void *writer_main(void *arg)
{
    struct usage_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    while (wait_for_work(w)) {
        size_t n = take_batch(w);
        pthread_mutex_unlock(&w->mu);
        if (write_batch(w, n) == 0) {
            for (size_t i = 0; i < n; i++) {
                free(w->batch[i]);
            }
        } else {
            give_up(w, n);
        }
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int usage_writer_start(struct usage_writer **out, struct store *store, uint64_t flush_ms,
                       size_t batch_max)
{
    struct usage_writer *w = px_calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    int rc;

    *out = NULL;
    w->store = store;
    w->flush_ms = flush_ms ? flush_ms : 1;
    w->batch_max = batch_max ? batch_max : 1;
    w->batch = px_calloc(w->batch_max, sizeof(*w->batch));
    atomic_init(&w->backlog, 0);
    atomic_init(&w->last_commit_ms, 0);
    if ((rc = pthread_mutex_init(&w->mu, NULL)) != 0) {
        goto fail_mutex;
    }
    if ((rc = pthread_condattr_init(&ca)) != 0) {
        goto fail_condattr;
    }
    /* Deadlines are monotonic so a wall-clock step never stalls or rushes a flush. */
    if ((rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) != 0 ||
        (rc = pthread_cond_init(&w->cv, &ca)) != 0) {
        goto fail_cond;
    }
    if ((rc = pthread_create(&w->thread, NULL, writer_main, w)) != 0) {
        goto fail_thread;
    }
    pthread_condattr_destroy(&ca);
    *out = w;
    return 0;

fail_thread:
    pthread_cond_destroy(&w->cv);
fail_cond:
    pthread_condattr_destroy(&ca);
fail_condattr:
    pthread_mutex_destroy(&w->mu);
fail_mutex:
    free(w->batch);
    free(w);
    return -rc;
}

void usage_writer_push(struct usage_writer *w, struct usage_event *ev)
{
    ev->next = NULL;
    atomic_fetch_add(&w->backlog, 1);
    pthread_mutex_lock(&w->mu);
    int wake = 0;
    if (w->tail == NULL) {
        w->head = ev;
        w->first_ms = px_mono_ms();
        wake = 1;
    } else {
        w->tail->next = ev;
    }
    w->tail = ev;
    w->nqueued++;
    if (w->nqueued == w->batch_max) {
        wake = 1;
    }
    /* Signal only on the transitions the thread waits for, not on every row. */
    if (wake) {
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

uint64_t usage_writer_backlog(struct usage_writer *w)
{
    return (uint64_t)atomic_load(&w->backlog);
}

int64_t usage_writer_last_commit_ms(struct usage_writer *w)
{
    return (int64_t)atomic_load(&w->last_commit_ms);
}

int usage_writer_stop(struct usage_writer *w, uint64_t timeout_ms)
{
    if (w == NULL) {
        return 0;
    }
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    w->stop_deadline_ms = px_mono_ms() + timeout_ms;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);

    int rc = w->lost ? PX_ESTORE : 0;
    if (w->lost) {
        px_log(PX_LOG_ERROR, "msg=\"usage writer stopped with unwritten rows\" rows=%zu", w->lost);
    }
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->batch);
    free(w);
    return rc;
}
