/* The usage writer: memory queue -> durable spool -> store, exactly once.
 *
 * Design note (the whole story, with the dedup design, is in docs/internals/usage_store.md).
 * - Producers only link an event at the tail of a list under mu and signal the spool thread
 *   when the list becomes non-empty: no allocation, no I/O. Past memory_max_rows (only
 *   reachable while the spool is full or failing) an event is dropped, logged with its
 *   request id, and counted.
 * - The spool thread appends whatever is queued in one write per group of records, then
 *   fdatasyncs at most fsync_ms after the first unsynced write (group commit). Each record
 *   gets its (spool_id, seq) identity here; that identity is what makes re-sending safe.
 * - The shipper reads records back from the spool in order, batch_max at a time (or what is
 *   there once the oldest unshipped row waited flush_ms), checks every row's ranges (a row
 *   that fails goes to rejected.jsonl, logged, and is never sent), and inserts the batch.
 *   Only when the store confirmed does it ack the spool, which deletes whole shipped segments.
 * - Exactly once: a batch whose insert failed may have landed in part or whole (a cut reply,
 *   a timeout, a 200 carrying an exception). Before re-sending such a batch the shipper asks
 *   the store which of its rows are there (store landed op, by spool identity; it first waits
 *   for the failed insert to stop running) and sends only the rest. The same check runs after
 *   a restart for the rows beyond the durable ack, batch by batch, until a batch is found that
 *   had not been sent: batches go strictly one after another, so nothing later was sent
 *   either. A store whose insert skips known rows (SQLite) needs no check.
 * - Failures back off from 100 ms, doubling to 5 s, with one log line per failed attempt. */
#include "usage/writer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "usage/spool.h"

#define WRITER_BACKOFF_MIN_MS 100   /* first retry delay after a failed attempt */
#define WRITER_BACKOFF_MAX_MS 5000  /* retry delay ceiling */
#define WRITER_SPOOL_GROUP    256   /* events taken from the queue per append */
#define WRITER_MEMORY_MIN     1000  /* memory_max_rows floor: the queue is also the hand-off */
#define WRITER_FULL_LOG_MS    10000 /* repeat the "spool full" line this often while full */

/* One request waiting for its row to reach the spool file. */
struct usage_ack {
    usage_ack_fn cb;
    void *ud;
    struct usage_ack *next;
};

struct usage_writer {
    struct store *store;           /* borrowed; outlives the writer */
    struct usage_spool *spool;     /* owned */
    uint64_t flush_ms;             /* see usage_writer_opts */
    size_t batch_max;              /* see usage_writer_opts */
    uint64_t fsync_ms;             /* see usage_writer_opts */
    size_t memory_max_rows;        /* see usage_writer_opts */
    pthread_t spool_thread;        /* appends the queue to the spool */
    pthread_t ship_thread;         /* ships the spool to the store */
    pthread_mutex_t mu;            /* guards the fields down to last_error */
    pthread_cond_t spool_cv;       /* spool thread: queue non-empty, room freed, stop */
    pthread_cond_t ship_cv;        /* shipper: rows spooled, stop */
    struct usage_event *head;      /* queued events, oldest first */
    struct usage_event *tail;      /* last queued event, NULL when empty */
    size_t nqueued;                /* events in head..tail */
    int stopping;                  /* 1 once stop was called */
    int spool_done;                /* 1 once the spool thread has exited */
    uint64_t stop_deadline_ms;     /* monotonic ms after which stop gives up waiting */
    uint64_t written_seq;          /* highest sequence number appended to the spool */
    uint64_t shipped_seq;          /* highest sequence number the store confirmed */
    uint64_t pending_since_ms;     /* monotonic ms when unshipped rows last appeared */
    int recovering;                /* at start: the spool held rows an earlier run may have
                                      sent (beyond its durable ack) */
    int full;                      /* 1 while the spool's cap stops appends */
    int spool_failing;             /* 1 while spool writes fail */
    int store_ok;                  /* 1 unless the last store attempt failed */
    uint64_t full_events;          /* times the cap was reached */
    uint64_t dropped;              /* events dropped (memory cap) */
    uint64_t lost_at_stop;         /* events not spooled by the stop deadline */
    char last_error[256];          /* last failure text */
    uv_async_t *async;             /* wakes the bound loop for acks; NULL when unbound */
    uv_prepare_t *prep;            /* loop thread only: hands lhead over before the loop sleeps */
    struct usage_event *lhead;     /* loop thread only: rows pushed in this loop iteration */
    struct usage_event *ltail;     /* loop thread only: last of them, NULL when none */
    struct usage_ack *acks;        /* acks due on the loop, any order */
    atomic_uint_fast64_t backlog;  /* pushed and not yet confirmed (or dropped/rejected) */
    atomic_int_fast64_t last_ship; /* wall ms of the last confirmed batch */
    atomic_uint_fast64_t shipped;  /* rows confirmed since start */
    atomic_uint_fast64_t failures; /* failed store attempts */
    atomic_uint_fast64_t rejected; /* rows kept in rejected.jsonl */
};

static struct timespec mono_deadline(uint64_t at_ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(at_ms / 1000);
    ts.tv_nsec = (long)(at_ms % 1000) * 1000000L;
    return ts;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t until_ms)
{
    struct timespec ts = mono_deadline(until_ms);
    pthread_cond_timedwait(cv, mu, &ts);
}

static void set_error(struct usage_writer *w, const char *what, const char *msg)
{
    snprintf(w->last_error, sizeof(w->last_error), "%s: %s", what, msg ? msg : "");
}

/* ---- acknowledgements ---- */

static void push_chain(struct usage_writer *w, struct usage_event *ev);

/* Hand ack to the loop (lock held). Without a loop binding it is simply dropped. */
static void ack_due(struct usage_writer *w, struct usage_ack *ack)
{
    if (ack == NULL) {
        return;
    }
    if (w->async == NULL) {
        free(ack);
        return;
    }
    ack->next = w->acks;
    w->acks = ack;
    uv_async_send(w->async);
}

/* Loop thread: run every ack due. */
static void on_acks(uv_async_t *h)
{
    struct usage_writer *w = h->data;
    pthread_mutex_lock(&w->mu);
    struct usage_ack *a = w->acks;
    w->acks = NULL;
    pthread_mutex_unlock(&w->mu);
    while (a) {
        struct usage_ack *next = a->next;
        a->cb(a->ud);
        free(a);
        a = next;
    }
}

int usage_writer_bind_loop(struct usage_writer *w, uv_loop_t *loop)
{
    uv_async_t *h = px_calloc(1, sizeof(*h));
    int rc = uv_async_init(loop, h, on_acks);
    if (rc != 0) {
        free(h);
        return rc;
    }
    h->data = w;
    uv_prepare_t *p = px_calloc(1, sizeof(*p));
    uv_prepare_init(loop, p); /* cannot fail */
    p->data = w;
    w->prep = p;
    pthread_mutex_lock(&w->mu);
    w->async = h;
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    free(h);
}

void usage_writer_unbind_loop(struct usage_writer *w)
{
    if (w->prep != NULL) {
        /* Rows of the last iteration still go to the spool; only their acks are dropped. */
        struct usage_event *chain = w->lhead;
        w->lhead = w->ltail = NULL;
        push_chain(w, chain);
        uv_close((uv_handle_t *)w->prep, on_handle_closed);
        w->prep = NULL;
    }
    pthread_mutex_lock(&w->mu);
    uv_async_t *h = w->async;
    w->async = NULL;
    struct usage_ack *a = w->acks;
    w->acks = NULL;
    pthread_mutex_unlock(&w->mu);
    while (a) {
        struct usage_ack *next = a->next;
        free(a);
        a = next;
    }
    if (h) {
        uv_close((uv_handle_t *)h, on_handle_closed);
    }
}

int usage_writer_bound(struct usage_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int bound = w->async != NULL;
    pthread_mutex_unlock(&w->mu);
    return bound;
}

/* ---- producers ---- */

/* Queue a chain of events (linked by next) under one lock, waking the spool thread once. */
static void push_chain(struct usage_writer *w, struct usage_event *ev)
{
    struct usage_event *dropped = NULL, **dtail = &dropped;
    pthread_mutex_lock(&w->mu);
    int was_empty = w->tail == NULL;
    while (ev != NULL) {
        struct usage_event *next = ev->next;
        ev->next = NULL;
        if (w->nqueued >= w->memory_max_rows && (w->full || w->spool_failing)) {
            /* The spool cannot take rows (full or failing) and memory is at its cap. A spool
             * that is only slow never drops: privax's own rows each hold their request until
             * they are written, so the queue is bounded by the requests in flight. */
            w->dropped++;
            ack_due(w, ev->ack);
            ev->ack = NULL;
            *dtail = ev;
            dtail = &ev->next;
        } else {
            if (ev->ack && (w->full || w->spool_failing)) {
                /* The spool is not taking rows: do not hold the answer hostage to the disk. */
                ack_due(w, ev->ack);
                ev->ack = NULL;
            }
            atomic_fetch_add(&w->backlog, 1);
            if (w->tail == NULL) {
                w->head = ev;
            } else {
                w->tail->next = ev;
            }
            w->tail = ev;
            w->nqueued++;
        }
        ev = next;
    }
    if (was_empty && w->tail != NULL) {
        pthread_cond_signal(&w->spool_cv);
    }
    pthread_mutex_unlock(&w->mu);
    while (dropped != NULL) {
        struct usage_event *next = dropped->next;
        px_log(PX_LOG_ERROR,
               "msg=\"usage row dropped: spool full and memory queue at its cap\" "
               "request_id=%s tenant=%s total_tokens=%" PRId64,
               dropped->request_id, dropped->tenant_id, dropped->total_tokens);
        free(dropped);
        dropped = next;
    }
}

void usage_writer_push(struct usage_writer *w, struct usage_event *ev)
{
    ev->next = NULL;
    push_chain(w, ev);
}

/* Loop thread: the rows this loop iteration produced, handed over in one go just before the
 * loop sleeps. Waking the spool thread per row cost a context switch or two per request on a
 * busy core (it preempted the loop mid-iteration); per iteration it is one wake for all. */
static void on_prepare(uv_prepare_t *h)
{
    struct usage_writer *w = h->data;
    struct usage_event *chain = w->lhead;
    w->lhead = w->ltail = NULL;
    uv_prepare_stop(h);
    push_chain(w, chain);
}

void usage_writer_push_ack(struct usage_writer *w, struct usage_event *ev, usage_ack_fn cb,
                           void *ud)
{
    struct usage_ack *a = px_malloc(sizeof(*a));
    a->cb = cb;
    a->ud = ud;
    a->next = NULL;
    ev->ack = a;
    ev->next = NULL;
    if (w->prep == NULL) {
        push_chain(w, ev);
        return;
    }
    if (w->ltail == NULL) {
        w->lhead = ev;
        uv_prepare_start(w->prep, on_prepare);
    } else {
        w->ltail->next = ev;
    }
    w->ltail = ev;
}

/* ---- spool thread ---- */

/* Put events back at the queue head, in order (lock held). */
static void requeue(struct usage_writer *w, struct usage_event **evs, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        evs[i]->next = w->head;
        w->head = evs[i];
        if (w->tail == NULL) {
            w->tail = evs[i];
        }
        w->nqueued++;
    }
}

static void log_full(struct usage_writer *w, int first)
{
    struct usage_spool_stats st;
    usage_spool_stats(w->spool, &st);
    px_log(PX_LOG_ERROR,
           "msg=\"%s\" spool_bytes=%" PRIu64 " spool_max_bytes=%" PRIu64 " unshipped_rows=%" PRIu64
           " queued_in_memory=%zu memory_max_rows=%zu",
           first ? "usage spool FULL: new rows wait in memory, then are dropped"
                 : "usage spool still full",
           st.bytes, st.max_bytes, st.rows, w->nqueued, w->memory_max_rows);
}

static void *spool_main(void *arg)
{
    struct usage_writer *w = arg;
    struct usage_event *group[WRITER_SPOOL_GROUP];
    uint64_t dirty_since = 0; /* monotonic ms of the first unsynced write, 0 = clean */
    uint64_t backoff = WRITER_BACKOFF_MIN_MS;
    uint64_t retry_at = 0;    /* monotonic ms before which a full/failing spool is not tried */
    uint64_t full_logged = 0; /* monotonic ms of the last "full" line */

    pthread_mutex_lock(&w->mu);
    for (;;) {
        uint64_t now = px_mono_ms();
        int can_write = w->nqueued > 0 && now >= retry_at;
        int sync_due = dirty_since && (now >= dirty_since + w->fsync_ms || w->stopping);
        if (!can_write && !sync_due) {
            if (w->stopping && (w->nqueued == 0 || now >= w->stop_deadline_ms)) {
                break;
            }
            uint64_t until = UINT64_MAX;
            if (dirty_since) {
                until = dirty_since + w->fsync_ms;
            }
            if (w->nqueued > 0 && retry_at < until) {
                until = retry_at;
            }
            if (w->stopping && w->stop_deadline_ms < until) {
                until = w->stop_deadline_ms;
            }
            if (until == UINT64_MAX) {
                pthread_cond_wait(&w->spool_cv, &w->mu);
            } else {
                timed_wait(&w->spool_cv, &w->mu, until);
            }
            continue;
        }
        size_t n = 0;
        if (can_write) {
            while (n < WRITER_SPOOL_GROUP && w->head != NULL) {
                group[n] = w->head;
                w->head = w->head->next;
                group[n++]->next = NULL;
            }
            if (w->head == NULL) {
                w->tail = NULL;
            }
            w->nqueued -= n;
        }
        pthread_mutex_unlock(&w->mu);

        size_t done = 0;
        int rc = n ? usage_spool_append(w->spool, group, n, &done) : 0;
        if (done > 0 && dirty_since == 0) {
            dirty_since = px_mono_ms();
        }
        if (dirty_since && (px_mono_ms() >= dirty_since + w->fsync_ms || w->stopping)) {
            int src = usage_spool_sync(w->spool);
            if (src < 0) {
                px_log(PX_LOG_ERROR, "msg=\"usage spool fsync failed\" err=\"%s\"",
                       px_strerror(src));
            }
            dirty_since = 0;
        }
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < done; i++) {
            ack_due(w, group[i]->ack); /* written: a killed process can no longer lose it */
            free(group[i]);
        }
        if (n > done) {
            /* Not written (cap or disk error): whoever waits is answered now, and the rows
             * wait in memory for the spool to take them. */
            for (size_t i = done; i < n; i++) {
                ack_due(w, group[i]->ack);
                group[i]->ack = NULL;
            }
            requeue(w, group + done, n - done);
        }
        now = px_mono_ms();
        if (rc < 0) {
            if (!w->spool_failing) {
                px_log(PX_LOG_ERROR, "msg=\"usage spool write failed\" rows=%zu err=\"%s\"",
                       n - done, px_strerror(rc));
            }
            set_error(w, "spool write", px_strerror(rc));
            w->spool_failing = 1;
            retry_at = now + backoff;
            backoff = backoff * 2 > WRITER_BACKOFF_MAX_MS ? WRITER_BACKOFF_MAX_MS : backoff * 2;
        } else if (n > done) {
            /* The cap: wait for the shipper to free room (it signals), or retry in a while. */
            if (!w->full) {
                w->full = 1;
                w->full_events++;
                full_logged = now;
                log_full(w, 1);
            } else if (now >= full_logged + WRITER_FULL_LOG_MS) {
                full_logged = now;
                log_full(w, 0);
            }
            retry_at = now + 1000;
        } else if (n > 0) {
            if (w->full || w->spool_failing) {
                px_log(PX_LOG_WARN, "msg=\"usage spool takes rows again\" queued_in_memory=%zu",
                       w->nqueued);
            }
            w->full = 0;
            w->spool_failing = 0;
            retry_at = 0;
            backoff = WRITER_BACKOFF_MIN_MS;
        }
        if (done > 0) {
            int idle = w->written_seq <= w->shipped_seq;
            if (w->written_seq == w->shipped_seq) {
                w->pending_since_ms = now;
            }
            struct usage_spool_stats st;
            usage_spool_stats(w->spool, &st);
            w->written_seq = st.last_seq;
            /* The shipper only needs waking when it sleeps without a deadline (nothing was
             * pending) or a full batch is ready; otherwise its own timer (flush_ms) is due
             * anyway, and a wake per write would only cost context switches. */
            if (idle || w->written_seq - w->shipped_seq >= w->batch_max) {
                pthread_cond_signal(&w->ship_cv);
            }
        }
    }
    /* Stop: whatever could not be spooled by the deadline is lost; name each row. */
    while (w->head != NULL) {
        struct usage_event *ev = w->head;
        w->head = ev->next;
        px_log(PX_LOG_ERROR,
               "msg=\"usage row not written\" request_id=%s tenant=%s total_tokens=%" PRId64,
               ev->request_id, ev->tenant_id, ev->total_tokens);
        ack_due(w, ev->ack);
        free(ev);
        w->lost_at_stop++;
        atomic_fetch_sub(&w->backlog, 1);
    }
    w->tail = NULL;
    w->nqueued = 0;
    w->spool_done = 1;
    pthread_cond_signal(&w->ship_cv);
    pthread_mutex_unlock(&w->mu);
    if (dirty_since) {
        usage_spool_sync(w->spool);
    }
    return NULL;
}

/* ---- shipper thread ---- */

struct ship_batch {
    struct usage_event *rows;  /* batch_max decoded rows */
    struct usage_event **send; /* rows to send this attempt */
    unsigned char *present;    /* landed answers */
    unsigned char *skip;       /* 1: rejected by the range check */
    size_t n;                  /* rows in the batch */
};

/* Sleep for ms, or less if a stop deadline comes first. 0, or -1 when the deadline passed. */
static int backoff_sleep(struct usage_writer *w, uint64_t ms)
{
    uint64_t until = px_mono_ms() + ms;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        uint64_t now = px_mono_ms();
        if (w->stopping && now >= w->stop_deadline_ms) {
            pthread_mutex_unlock(&w->mu);
            return -1;
        }
        uint64_t limit = w->stopping && w->stop_deadline_ms < until ? w->stop_deadline_ms : until;
        if (now >= limit) {
            break;
        }
        timed_wait(&w->ship_cv, &w->mu, limit);
    }
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static void note_failure(struct usage_writer *w, size_t n, const char *what, uint64_t backoff)
{
    atomic_fetch_add(&w->failures, 1);
    const char *msg = store_errmsg(w->store);
    px_log(PX_LOG_WARN,
           "msg=\"usage store %s failed\" rows=%zu backlog=%" PRIuFAST64 " retry_in_ms=%" PRIu64
           " err=\"%s\"",
           what, n, (uint_fast64_t)atomic_load(&w->backlog), backoff, msg);
    pthread_mutex_lock(&w->mu);
    w->store_ok = 0;
    set_error(w, what, msg);
    pthread_mutex_unlock(&w->mu);
}

/* Ship one batch until the store confirmed it. *recovering: rows may have been sent by an
 * earlier process (ask before sending). 0, or -1 when stop's deadline passed first. */
static int ship_batch(struct usage_writer *w, struct ship_batch *b, int *recovering)
{
    uint64_t backoff = WRITER_BACKOFF_MIN_MS;
    int ambiguous = 0;
    for (;;) {
        size_t ns = 0;
        int rc = 0;
        int ask = (*recovering || ambiguous) && w->store->ops->landed != NULL;
        if (ask) {
            for (size_t i = 0; i < b->n; i++) {
                b->send[i] = &b->rows[i];
            }
            rc = w->store->ops->landed(w->store, b->send, b->n, b->present);
            if (rc < 0) {
                note_failure(w, b->n, "landed check", backoff);
            }
        }
        if (rc == 0) {
            for (size_t i = 0; i < b->n; i++) {
                if (!b->skip[i] && !(ask && b->present[i])) {
                    b->send[ns++] = &b->rows[i];
                }
            }
            rc = ns ? store_insert(w->store, b->send, ns) : 0;
            if (rc == 0) {
                if (ask && ns > 0) {
                    *recovering = 0; /* this batch had not been sent: nothing after it was */
                }
                if (ask && ns < b->n) {
                    px_log(PX_LOG_INFO,
                           "msg=\"usage batch had landed already\" rows=%zu landed=%zu sent=%zu",
                           b->n, b->n - ns, ns);
                }
                return 0;
            }
            ambiguous = ambiguous || rc != STORE_ENOTSENT;
            note_failure(w, ns, "insert", backoff);
        }
        if (backoff_sleep(w, backoff) < 0) {
            return -1;
        }
        backoff = backoff * 2 > WRITER_BACKOFF_MAX_MS ? WRITER_BACKOFF_MAX_MS : backoff * 2;
    }
}

/* Range-check every row; rows that fail are kept in rejected.jsonl and skipped. */
static void check_rows(struct usage_writer *w, struct ship_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        char why[128];
        b->skip[i] = 0;
        if (store_row_check(&b->rows[i], why, sizeof(why)) == 0) {
            continue;
        }
        b->skip[i] = 1;
        atomic_fetch_add(&w->rejected, 1);
        int rc = usage_spool_reject(w->spool, &b->rows[i], why);
        px_log(PX_LOG_ERROR,
               "msg=\"usage row rejected by the range check, kept in rejected.jsonl\" "
               "spool_seq=%" PRIu64 " why=\"%s\"%s",
               b->rows[i].spool_seq, why, rc < 0 ? " (and writing it there failed)" : "");
    }
}

static void *ship_main(void *arg)
{
    struct usage_writer *w = arg;
    struct ship_batch b = {0};
    b.rows = px_calloc(w->batch_max, sizeof(*b.rows));
    b.send = px_calloc(w->batch_max, sizeof(*b.send));
    b.present = px_calloc(w->batch_max, 1);
    b.skip = px_calloc(w->batch_max, 1);
    pthread_mutex_lock(&w->mu);
    int recovering = w->recovering;
    for (;;) {
        /* The shipper may read records before the spool thread publishes written_seq, so
         * shipped_seq can be ahead of it for a moment. */
        uint64_t pending = w->written_seq > w->shipped_seq ? w->written_seq - w->shipped_seq : 0;
        uint64_t now = px_mono_ms();
        if (w->stopping && now >= w->stop_deadline_ms) {
            break;
        }
        if (pending == 0) {
            if (w->stopping && w->spool_done) {
                break;
            }
            if (w->stopping) {
                timed_wait(&w->ship_cv, &w->mu, w->stop_deadline_ms);
            } else {
                pthread_cond_wait(&w->ship_cv, &w->mu);
            }
            continue;
        }
        uint64_t due = w->pending_since_ms + w->flush_ms;
        if (pending < w->batch_max && now < due && !w->stopping) {
            timed_wait(&w->ship_cv, &w->mu, due);
            continue;
        }
        uint64_t after = w->shipped_seq;
        pthread_mutex_unlock(&w->mu);

        int rc = usage_spool_read(w->spool, after, b.rows, w->batch_max, &b.n);
        if (rc == 0 && b.n == 0) {
            /* Nothing readable yet; the spool thread signals when it writes. */
            pthread_mutex_lock(&w->mu);
            if (w->written_seq > w->shipped_seq) {
                timed_wait(&w->ship_cv, &w->mu, px_mono_ms() + w->flush_ms);
            }
            continue;
        }
        if (rc < 0) {
            px_log(PX_LOG_ERROR, "msg=\"usage spool read failed\" after=%" PRIu64 " err=\"%s\"",
                   after, px_strerror(rc));
            pthread_mutex_lock(&w->mu);
            set_error(w, "spool read", px_strerror(rc));
            pthread_mutex_unlock(&w->mu);
            if (backoff_sleep(w, WRITER_BACKOFF_MAX_MS) < 0) {
                pthread_mutex_lock(&w->mu);
                break;
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        check_rows(w, &b);
        if (ship_batch(w, &b, &recovering) < 0) {
            pthread_mutex_lock(&w->mu);
            break;
        }
        uint64_t last = b.rows[b.n - 1].spool_seq;
        rc = usage_spool_ack(w->spool, last);
        if (rc < 0) {
            px_log(PX_LOG_ERROR, "msg=\"usage spool ack failed\" seq=%" PRIu64 " err=\"%s\"", last,
                   px_strerror(rc));
        }
        atomic_fetch_add(&w->shipped, b.n);
        atomic_fetch_sub(&w->backlog, b.n);
        atomic_store(&w->last_ship, px_now_ms());
        pthread_mutex_lock(&w->mu);
        w->shipped_seq = last > w->shipped_seq ? last : w->shipped_seq;
        w->store_ok = 1;
        w->last_error[0] = '\0';
        if (w->written_seq > w->shipped_seq) {
            w->pending_since_ms = px_mono_ms();
        }
        /* Acks free spool room: a full spool may take rows again. */
        pthread_cond_signal(&w->spool_cv);
    }
    pthread_mutex_unlock(&w->mu);
    free(b.rows);
    free(b.send);
    free(b.present);
    free(b.skip);
    return NULL;
}

/* ---- lifecycle ---- */

void usage_writer_opts_from_config(struct usage_writer_opts *o, const struct px_config *cfg,
                                   char *dirbuf, size_t dircap)
{
    snprintf(dirbuf, dircap, "%s/spool", cfg->data_dir);
    memset(o, 0, sizeof(*o));
    o->spool_dir = dirbuf;
    o->flush_ms = cfg->usage_flush_ms;
    o->batch_max = cfg->usage_batch_max;
    o->fsync_ms = cfg->spool_fsync_ms;
    o->spool_max_bytes = cfg->spool_max_bytes;
    o->memory_max_rows = cfg->usage_memory_max_rows;
}

int usage_writer_start(struct usage_writer **out, struct store *store,
                       const struct usage_writer_opts *o, char *err, size_t errcap)
{
    struct usage_writer *w = px_calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    int rc;

    *out = NULL;
    w->store = store;
    w->flush_ms = o->flush_ms ? o->flush_ms : 1;
    w->batch_max = o->batch_max ? o->batch_max : 1;
    w->fsync_ms = o->fsync_ms ? o->fsync_ms : 1;
    w->memory_max_rows =
        o->memory_max_rows > WRITER_MEMORY_MIN ? o->memory_max_rows : WRITER_MEMORY_MIN;
    w->store_ok = 1;
    atomic_init(&w->backlog, 0);
    atomic_init(&w->last_ship, 0);
    atomic_init(&w->shipped, 0);
    atomic_init(&w->failures, 0);
    atomic_init(&w->rejected, 0);
    rc = usage_spool_open(&w->spool, o->spool_dir, o->spool_max_bytes ? o->spool_max_bytes : 1,
                          o->spool_segment_bytes ? o->spool_segment_bytes : 4 * 1024 * 1024, err,
                          errcap);
    if (rc < 0) {
        goto fail_spool;
    }
    struct usage_spool_stats st;
    usage_spool_stats(w->spool, &st);
    w->written_seq = st.last_seq;
    w->shipped_seq = st.acked_seq;
    w->pending_since_ms = px_mono_ms();
    w->recovering = st.rows > 0;
    atomic_store(&w->backlog, st.rows);
    if (st.rows > 0) {
        px_log(PX_LOG_INFO,
               "msg=\"usage spool has rows from an earlier run; shipping them first\" rows=%" PRIu64
               " bytes=%" PRIu64 " torn_bytes=%" PRIu64 " corrupt_bytes=%" PRIu64,
               st.rows, st.bytes, st.torn_bytes, st.corrupt_bytes);
    }
    if ((rc = -pthread_mutex_init(&w->mu, NULL)) < 0) {
        goto fail_mutex;
    }
    if ((rc = -pthread_condattr_init(&ca)) < 0) {
        goto fail_condattr;
    }
    /* Deadlines are monotonic so a wall-clock step never stalls or rushes a flush. */
    if ((rc = -pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) < 0 ||
        (rc = -pthread_cond_init(&w->spool_cv, &ca)) < 0) {
        goto fail_cv1;
    }
    if ((rc = -pthread_cond_init(&w->ship_cv, &ca)) < 0) {
        goto fail_cv2;
    }
    if ((rc = -pthread_create(&w->spool_thread, NULL, spool_main, w)) < 0) {
        goto fail_thread1;
    }
    if ((rc = -pthread_create(&w->ship_thread, NULL, ship_main, w)) < 0) {
        goto fail_thread2;
    }
    pthread_condattr_destroy(&ca);
    *out = w;
    return 0;

fail_thread2:
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->spool_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->spool_thread, NULL);
fail_thread1:
    pthread_cond_destroy(&w->ship_cv);
fail_cv2:
    pthread_cond_destroy(&w->spool_cv);
fail_cv1:
    pthread_condattr_destroy(&ca);
fail_condattr:
    pthread_mutex_destroy(&w->mu);
fail_mutex:
    snprintf(err, errcap, "usage writer: %s", px_strerror(rc));
    usage_spool_close(w->spool);
fail_spool:
    free(w);
    return rc;
}

uint64_t usage_writer_backlog(struct usage_writer *w)
{
    return (uint64_t)atomic_load(&w->backlog);
}

int64_t usage_writer_last_commit_ms(struct usage_writer *w)
{
    return (int64_t)atomic_load(&w->last_ship);
}

void usage_writer_stats(struct usage_writer *w, struct usage_writer_stats *out)
{
    struct usage_spool_stats st;
    memset(out, 0, sizeof(*out));
    usage_spool_stats(w->spool, &st);
    pthread_mutex_lock(&w->mu);
    out->queued = w->nqueued;
    out->spool_full = w->full;
    out->spool_failing = w->spool_failing;
    out->store_ok = w->store_ok;
    out->spool_full_events = w->full_events;
    out->dropped = w->dropped + w->lost_at_stop;
    memcpy(out->last_error, w->last_error, sizeof(out->last_error));
    pthread_mutex_unlock(&w->mu);
    out->spooled = st.rows;
    out->spool_bytes = st.bytes;
    out->spool_max_bytes = st.max_bytes;
    out->last_ship_unix_ms = (int64_t)atomic_load(&w->last_ship);
    out->shipped = (uint64_t)atomic_load(&w->shipped);
    out->ship_failures = (uint64_t)atomic_load(&w->failures);
    out->rejected = (uint64_t)atomic_load(&w->rejected);
}

int usage_writer_degraded(const struct usage_writer_stats *s)
{
    return s->spool_full || s->spool_failing || s->dropped > 0;
}

int usage_writer_stop(struct usage_writer *w, uint64_t timeout_ms)
{
    if (w == NULL) {
        return 0;
    }
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    w->stop_deadline_ms = px_mono_ms() + timeout_ms;
    pthread_cond_signal(&w->spool_cv);
    pthread_cond_signal(&w->ship_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->spool_thread, NULL);
    pthread_join(w->ship_thread, NULL);

    struct usage_writer_stats st;
    usage_writer_stats(w, &st);
    if (st.spooled > 0) {
        px_log(PX_LOG_WARN,
               "msg=\"usage rows left in the spool for the next start\" rows=%" PRIu64
               " err=\"%s\"",
               st.spooled, st.last_error);
    }
    int rc = st.dropped > 0 ? PX_ESTORE : 0;
    if (st.dropped > 0) {
        px_log(PX_LOG_ERROR, "msg=\"usage writer stopped; rows were lost\" rows=%" PRIu64,
               st.dropped);
    }
    while (w->acks) {
        struct usage_ack *a = w->acks;
        w->acks = a->next;
        free(a);
    }
    pthread_cond_destroy(&w->ship_cv);
    pthread_cond_destroy(&w->spool_cv);
    pthread_mutex_destroy(&w->mu);
    usage_spool_close(w->spool);
    free(w);
    return rc;
}
