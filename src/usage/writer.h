#ifndef PX_USAGE_WRITER_H
#define PX_USAGE_WRITER_H

/* The usage writer: takes usage events from any thread, makes each durable in the local spool
 * (usage/spool.h) and ships them to the store in batches, exactly once.
 *
 *   push (any thread, never blocks) -> memory queue -> spool thread: append + group commit
 *   (fsync at least every spool_fsync_ms) -> shipper thread: batches of up to batch_max rows
 *   or flush_ms -> store insert -> ack: the spool deletes what the store confirmed.
 *
 * A request never waits on the disk or the store. Rows are never dropped while the spool has
 * room; when it is full (usage.spool_max_bytes) new rows wait in memory up to
 * memory_max_rows, and only past that are they dropped, each logged with its request id, and
 * counted (usage_writer_stats, /health "degraded"). See docs/internals/usage_store.md. */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "store/store.h"
#include "usage/event.h"

struct usage_writer;

struct usage_writer_opts {
    const char *spool_dir;        /* the spool directory (copied) */
    uint64_t flush_ms;            /* a partial batch is shipped this long after it started */
    size_t batch_max;             /* rows per store insert */
    uint64_t fsync_ms;            /* group commit: spooled rows are fsynced within this */
    uint64_t spool_max_bytes;     /* cap on the spool's size on disk */
    uint64_t spool_segment_bytes; /* spool segment size, 0 = 4 MiB */
    size_t memory_max_rows;       /* rows held in memory when the spool cannot take them */
};

struct usage_writer_stats {
    uint64_t queued;            /* rows in memory, not yet in the spool */
    uint64_t spooled;           /* rows in the spool, not yet confirmed by the store */
    uint64_t spool_bytes;       /* spool size on disk */
    uint64_t spool_max_bytes;   /* its cap */
    int spool_full;             /* 1 while the cap stops appends */
    int spool_failing;          /* 1 while writes to the spool fail (disk error) */
    int store_ok;               /* 1 when the last store attempt succeeded (or none yet) */
    int64_t last_ship_unix_ms;  /* wall ms of the last confirmed batch, 0 = none yet */
    uint64_t shipped;           /* rows confirmed by the store since start */
    uint64_t ship_failures;     /* failed store attempts since start */
    uint64_t spool_full_events; /* times the cap was reached since start */
    uint64_t dropped;           /* rows lost since start (memory cap while the spool was full) */
    uint64_t rejected;          /* rows that failed the range check, kept in rejected.jsonl */
    char last_error[256];       /* the last store or spool failure, "" when none */
};

/* Options from the config: spool in <data_dir>/spool (dirbuf holds the path, dircap bytes). */
void usage_writer_opts_from_config(struct usage_writer_opts *o, const struct px_config *cfg,
                                   char *dirbuf, size_t dircap);

/* Open the spool (recovering it: rows a killed process left are shipped first) and start the
 * spool and shipper threads over store (borrowed; must outlive the writer). 0 and *out, or a
 * negative error with a message in err. */
int usage_writer_start(struct usage_writer **out, struct store *store,
                       const struct usage_writer_opts *opts, char *err, size_t errcap);

/* Hand an event to the writer; takes ownership (it must come from malloc). Any thread; never
 * blocks on I/O (a mutex and a condvar signal). */
void usage_writer_push(struct usage_writer *w, struct usage_event *ev);

/* Durable before the answer: a request's last bytes go to the client only once its row is in
 * the spool file (written, so a killed process cannot lose it; fsynced within fsync_ms), so
 * every response a client saw has its row. The spool thread acknowledges written rows to the
 * event loop through a uv_async handle. While the spool cannot take rows (full or failing)
 * rows are acknowledged at once (they wait in memory; /health says degraded): a full disk
 * must not stop serving. */
typedef void (*usage_ack_fn)(void *ud);

/* Bind acknowledgements to loop (loop thread, before the first usage_writer_push_ack). */
int usage_writer_bind_loop(struct usage_writer *w, uv_loop_t *loop);
/* Undo the binding (loop thread): acks still due are dropped, never called. */
void usage_writer_unbind_loop(struct usage_writer *w);
/* 1 when bound to a loop. */
int usage_writer_bound(struct usage_writer *w);

/* As usage_writer_push, then cb(ud) runs exactly once on the bound loop when the row is in
 * the spool file (or at once when the spool cannot take rows or the row was dropped). Loop
 * thread when bound: the rows of one loop iteration are handed to the spool thread together,
 * just before the loop sleeps. */
void usage_writer_push_ack(struct usage_writer *w, struct usage_event *ev, usage_ack_fn cb,
                           void *ud);

/* Rows pushed and not yet confirmed by the store. Any thread. */
uint64_t usage_writer_backlog(struct usage_writer *w);

/* Unix ms of the last confirmed batch, 0 if none yet. Any thread. */
int64_t usage_writer_last_commit_ms(struct usage_writer *w);

/* A snapshot of the counters. Any thread. */
void usage_writer_stats(struct usage_writer *w, struct usage_writer_stats *out);

/* 1 when an operator must look: the spool is full or failing, or rows were dropped. */
int usage_writer_degraded(const struct usage_writer_stats *s);

/* Spool everything still in memory, ship what the store takes within timeout_ms, stop both
 * threads and free the writer. Rows not shipped stay in the spool for the next start. 0, or
 * PX_ESTORE when rows were lost (dropped or not spooled); they are logged. NULL is a no-op. */
int usage_writer_stop(struct usage_writer *w, uint64_t timeout_ms);

#endif
