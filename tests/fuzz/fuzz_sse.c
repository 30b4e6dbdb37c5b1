/* libFuzzer target for the SSE / NDJSON parser (src/http/sse.c).
 *
 * Input: byte 0 picks the split point, byte 1 the event cap (small caps reach the overflow
 * paths), byte 2 after which event the callback says stop; the rest is the stream. It is fed
 * in both modes, whole and split in two, and a third time one byte at a time.
 *
 * Invariants:
 *  - every event delivered is at most the cap (sse.h: "no event or line may exceed
 *    event_max_bytes"); an event-stream event holds no CR, an NDJSON line no LF and is a
 *    substring of the input;
 *  - a callback's non-zero result comes back from the feed, and no event follows it;
 *  - when no feed overflowed, the events are the same however the stream was split.
 * Memory: the parser is cleaned up on every path, so LeakSanitizer sees any leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "http/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define STOP_RC    4242
#define MAX_EVENTS 4096

struct sink {
    enum sse_mode mode;
    size_t cap;
    const char *in; /* the whole stream, for the substring check */
    size_t in_len;
    size_t stop_at; /* 1-based event number to stop at; 0 = never */
    size_t n;       /* events seen */
    int stopped;    /* the callback has returned STOP_RC */
    uint64_t hash;  /* FNV-1a over the events (with their lengths) */
};

static int on_event(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;
    if (s->stopped) {
        abort(); /* an event after the callback said stop */
    }
    if (len > s->cap) {
        abort(); /* event over the cap */
    }
    if (s->mode == SSE_MODE_NDJSON) {
        if (memchr(data, '\n', len)) {
            abort();
        }
        if (len > 0 && !memmem(s->in, s->in_len, data, len)) {
            abort(); /* an NDJSON line is input bytes, not made-up ones */
        }
    } else if (memchr(data, '\r', len)) {
        abort();
    }
    s->n++;
    uint64_t h = s->hash ^ (uint64_t)len;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)data[i]) * 1099511628211ULL;
    }
    s->hash = h * 1099511628211ULL;
    if (s->stop_at && s->n == s->stop_at) {
        s->stopped = 1;
        return STOP_RC;
    }
    return 0;
}

struct result {
    int rc;
    size_t events;
    uint64_t hash;
};

/* Feed the stream in pieces: cut (0 < cut < n) splits once; step > 0 feeds step bytes at a
 * time instead. */
static struct result run(enum sse_mode mode, size_t cap, size_t stop_at, const char *s, size_t n,
                         size_t cut, size_t step)
{
    struct sse_parser p;
    struct sink k = {.mode = mode,
                     .cap = cap,
                     .in = s,
                     .in_len = n,
                     .stop_at = stop_at,
                     .hash = 1469598103934665603ULL};
    sse_parser_init(&p, mode, cap);
    int rc = 0;
    if (step) {
        for (size_t off = 0; off < n && rc == 0; off += step) {
            rc = sse_parser_feed(&p, s + off, n - off < step ? n - off : step, on_event, &k);
        }
    } else {
        rc = sse_parser_feed(&p, s, cut, on_event, &k);
        if (rc == 0) {
            rc = sse_parser_feed(&p, s + cut, n - cut, on_event, &k);
        }
    }
    if (k.stopped != (rc == STOP_RC)) {
        abort(); /* the callback's value must come back, and only it */
    }
    if (rc != 0 && rc != STOP_RC && rc != PX_EOVERFLOW) {
        abort();
    }
    (void)sse_parser_pending(&p);
    sse_parser_cleanup(&p);
    struct result r = {rc, k.n, k.hash};
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 3) {
        return 0;
    }
    size_t cap = (d[1] & 0x80) ? 65536 : (size_t)1 + (d[1] & 0x7f) * 2;
    size_t stop_at = d[2] % 8;
    const char *s = (const char *)d + 3;
    size_t len = n - 3;
    size_t cut = len ? d[0] % (len + 1) : 0;
    for (int m = 0; m < 2; m++) {
        enum sse_mode mode = m ? SSE_MODE_NDJSON : SSE_MODE_EVENT_STREAM;
        struct result whole = run(mode, cap, stop_at, s, len, len, 0);
        struct result split = run(mode, cap, stop_at, s, len, cut, 0);
        struct result bytes = run(mode, cap, stop_at, s, len, 0, 1);
        /* Same events however the bytes arrive, as long as nothing overflowed. */
        if (whole.rc != PX_EOVERFLOW && split.rc != PX_EOVERFLOW && bytes.rc != PX_EOVERFLOW) {
            if (whole.rc != split.rc || whole.events != split.events || whole.hash != split.hash ||
                whole.rc != bytes.rc || whole.events != bytes.events || whole.hash != bytes.hash) {
                abort();
            }
        } else if ((whole.rc != split.rc || whole.rc != bytes.rc) && stop_at == 0) {
            abort(); /* whether a stream overflows must not depend on the split */
        }
    }
    return 0;
}
