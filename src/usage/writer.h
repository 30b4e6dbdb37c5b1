#ifndef PX_USAGE_WRITER_H
#define PX_USAGE_WRITER_H

/* The usage writer: a thread that takes usage events from any thread and writes them to the
 * store in batched transactions (one per usage_flush_ms or usage_batch_max rows). A request
 * never waits on the store: push only links the event into a queue under a mutex. Events are
 * billing data and are never dropped: when the store fails, the batch is kept and retried
 * with backoff; the backlog is visible through usage_writer_backlog(). */

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"
#include "usage/event.h"

struct usage_writer;

/* Start the writer thread over store (borrowed; must outlive the writer). */
int usage_writer_start(struct usage_writer **out, struct store *store, uint64_t flush_ms,
                       size_t batch_max);

/* Hand an event to the writer; takes ownership (it must come from malloc). Any thread. */
void usage_writer_push(struct usage_writer *w, struct usage_event *ev);

/* Events pushed and not yet committed. Any thread. */
uint64_t usage_writer_backlog(struct usage_writer *w);

/* Unix ms of the last successful commit, 0 if none yet. Any thread. */
int64_t usage_writer_last_commit_ms(struct usage_writer *w);

/* Write everything still queued (retrying for at most timeout_ms while the store fails),
 * stop the thread and free the writer. Returns 0, or PX_ESTORE when rows were left
 * unwritten (they are logged with their request ids). */
int usage_writer_stop(struct usage_writer *w, uint64_t timeout_ms);

#endif
