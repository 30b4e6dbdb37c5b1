#ifndef PX_USAGE_SPOOL_H
#define PX_USAGE_SPOOL_H

/* The durable usage spool: an append-only log of usage records in a directory (normally
 * <data_dir>/spool), split into segment files, read back in order by the shipper and deleted
 * segment by segment once the store has confirmed every row in them. It survives SIGKILL
 * (records are in the file once append returns) and, after usage_spool_sync, power loss.
 *
 * Files: lock (flock: one process per spool), id (this spool's random 64-bit identity, the
 * spool_id of every row it records), ack (the highest sequence number the store confirmed),
 * seg-<first seq, 16 hex>.log (records, usage/record.c), corrupt-*.bin (damaged bytes moved
 * aside at recovery), rejected.jsonl (rows that failed the range check, never sent).
 *
 * Threads: one appender (append, sync) and one reader (read, ack) may run at once; stats from
 * any thread. Every function may block on the disk. */

#include <stddef.h>
#include <stdint.h>

#include "usage/event.h"

struct usage_spool;

struct usage_spool_stats {
    uint64_t spool_id;      /* this spool's identity */
    uint64_t bytes;         /* bytes in segment files */
    uint64_t max_bytes;     /* the cap on bytes */
    uint64_t rows;          /* records appended and not yet acknowledged */
    uint64_t last_seq;      /* highest sequence number appended (0: none yet) */
    uint64_t acked_seq;     /* highest sequence number acknowledged */
    uint64_t segments;      /* segment files */
    uint64_t corrupt_bytes; /* damaged bytes found at recovery (moved to corrupt-*.bin) */
    uint64_t torn_bytes;    /* bytes of a torn tail cut off at recovery */
};

/* Open (creating) the spool in dir, take its lock, and recover: scan every segment, cut a
 * torn tail off the last one, move damaged bytes aside (logged), and find where appending
 * and reading resume. max_bytes caps the segment files' total size; segment_bytes is the size
 * at which a new segment is started. 0 and *out, or a negative error with a message in err
 * (another process holding the lock is -EWOULDBLOCK). */
int usage_spool_open(struct usage_spool **out, const char *dir, uint64_t max_bytes,
                     uint64_t segment_bytes, char *err, size_t errcap);

/* Close the files and free the spool; NULL is a no-op. Does not sync. */
void usage_spool_close(struct usage_spool *sp);

/* Append evs[0..n) in order: each gets spool_id and the next sequence number (written into
 * the event), and is in the file when this returns. Stops early when the cap would be
 * exceeded. *appended says how many went in. 0, or a negative error (a write failed; the
 * file is cut back so that none of this call's records remain). Appender thread. */
int usage_spool_append(struct usage_spool *sp, struct usage_event *const *evs, size_t n,
                       size_t *appended);

/* fdatasync the segment being appended to (group commit). 0 or -errno. Appender thread. */
int usage_spool_sync(struct usage_spool *sp);

/* Read up to max records with sequence numbers above after, in order, into out[] (each with
 * spool_id and spool_seq set). Damaged bytes found at recovery are skipped. *n is the count
 * (0 when nothing is pending). 0 or a negative error. Reader thread. */
int usage_spool_read(struct usage_spool *sp, uint64_t after, struct usage_event *out, size_t max,
                     size_t *n);

/* The store confirmed every record up to seq: remember it (the ack file) and delete the
 * segments that hold nothing newer (never the one being appended to). 0 or -errno. Reader
 * thread. */
int usage_spool_ack(struct usage_spool *sp, uint64_t seq);

/* Append one line to rejected.jsonl (and sync it): a row that can never be sent, kept for an
 * operator. 0 or -errno. Reader thread. */
int usage_spool_reject(struct usage_spool *sp, const struct usage_event *ev, const char *why);

/* A consistent snapshot of the counters. Any thread. */
void usage_spool_stats(struct usage_spool *sp, struct usage_spool_stats *out);

#endif
