#ifndef PX_HTTP_SSE_H
#define PX_HTTP_SSE_H

/* Incremental parsers for the two streaming framings upstreams use:
 *  - text/event-stream (OpenAI, vLLM): lines end in LF, CRLF or CR; "data:" lines of one
 *    event are joined with LF; a blank line ends the event; comments (":") and the other
 *    fields are skipped.
 *  - NDJSON (Ollama): one JSON value per LF-terminated line; CR before LF is dropped; blank
 *    lines are skipped.
 * Bytes may arrive split anywhere (one at a time, or many events in one read): the parser keeps
 * the partial line and emits each event only once it is complete, so a multi-byte UTF-8
 * character is never split. Pure functions of their input: no I/O, fuzzed by fuzz_sse. */

#include <stddef.h>

#include "core/buf.h"

enum sse_mode {
    SSE_MODE_EVENT_STREAM = 0, /* text/event-stream */
    SSE_MODE_NDJSON,           /* one JSON document per line */
};

struct sse_parser {
    enum sse_mode mode; /* framing */
    struct buf line;    /* the current partial line, capped at event_max_bytes */
    struct buf data;    /* the current event's joined data lines, capped at event_max_bytes */
    int has_data;       /* a data line was seen in the current event */
    int skip_lf;        /* the previous byte was a CR that ended a line: drop a following LF */
    size_t event_max;   /* cap on one event's data (NDJSON: one line without its CRLF) */
};

/* Called once per complete event with its data (len bytes, not NUL-terminated). Return 0 to go
 * on; any other value stops the feed and is returned by sse_parser_feed. */
typedef int (*sse_event_fn)(void *ud, const char *data, size_t len);

/* Prepare a parser; no event or line may exceed event_max_bytes. */
void sse_parser_init(struct sse_parser *p, enum sse_mode mode, size_t event_max_bytes);
void sse_parser_cleanup(struct sse_parser *p);

/* Feed n bytes. Returns 0, PX_EOVERFLOW when an event exceeds the cap (the parser must not
 * be fed again), or the first non-zero value returned by cb. */
int sse_parser_feed(struct sse_parser *p, const char *bytes, size_t n, sse_event_fn cb, void *ud);

/* 1 when bytes of an unfinished event are pending (the stream was cut mid-event). */
int sse_parser_pending(const struct sse_parser *p);

#endif
