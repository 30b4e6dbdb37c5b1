/* libFuzzer target for the HTTP/1 request parser (src/http/h1.c).
 *
 * Input layout: byte 0 picks the slice size (1..32, or whole when 0 mod 33), byte 1 the
 * caps (small caps reach the 431/413 paths); the rest is the byte stream of one connection.
 * The stream is parsed twice, whole and in slices, resetting after each complete request as
 * the server does for pipelined input. Invariants:
 *   - h1_feed never consumes more than it was given, and consumes everything on NEED_MORE;
 *   - results are NEED_MORE, DONE or one of 400/413/417/431, and errors are sticky;
 *   - a complete request's views lie inside the parser's own buffers and within the caps;
 *   - slicing never changes the requests parsed, nor whether the stream ends in an error. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_REQS 64

struct outcome {
    uint64_t digest[FUZZ_MAX_REQS]; /* per complete request: FNV of its parsed fields */
    size_t nreq;                    /* complete requests */
    int final;                      /* last result: NEED_MORE or an error status */
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 1099511628211ULL;
    }
    return h;
}

static int inside(const struct buf *b, const char *p, size_t n)
{
    if (n == 0) {
        return 1;
    }
    return b->data && p >= b->data && p + n <= b->data + b->len;
}

static uint64_t check_request(const struct h1_parser *p)
{
    PX_ASSERT(p->nheaders <= H1_MAX_HEADERS);
    PX_ASSERT(p->head_bytes <= p->header_max);
    PX_ASSERT(p->head.len <= p->header_max);
    PX_ASSERT(p->body.len <= p->body_max);
    PX_ASSERT(p->url_len <= p->head.len);
    const char *body = h1_body(p);
    PX_ASSERT(body[p->body.len] == '\0');
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, &p->method, sizeof(p->method));
    h = fnv(h, &p->keep_alive, sizeof(p->keep_alive));
    h = fnv(h, h1_url(p), p->url_len);
    for (size_t i = 0; i < p->nheaders; i++) {
        const struct http_header *hd = &p->headers[i];
        PX_ASSERT(inside(&p->head, hd->name, hd->name_len));
        PX_ASSERT(inside(&p->head, hd->value, hd->value_len));
        h = fnv(h, hd->name, hd->name_len);
        h = fnv(h, ":", 1);
        h = fnv(h, hd->value, hd->value_len);
    }
    h = fnv(h, body, p->body.len);
    return h;
}

static void run(const uint8_t *in, size_t len, size_t slice, size_t hmax, size_t bmax,
                struct outcome *o)
{
    struct h1_parser p;
    h1_init(&p, hmax, bmax);
    memset(o, 0, sizeof(*o));
    o->final = H1_NEED_MORE;
    size_t off = 0;
    while (off < len && o->nreq < FUZZ_MAX_REQS) {
        size_t n = slice && len - off > slice ? slice : len - off;
        size_t used = 0;
        int rc = h1_feed(&p, (const char *)in + off, n, &used);
        PX_ASSERT(used <= n);
        off += used;
        if (rc == H1_NEED_MORE) {
            PX_ASSERT(used == n);
            continue;
        }
        if (rc == H1_DONE) {
            o->digest[o->nreq++] = check_request(&p);
            size_t again = 1;
            PX_ASSERT(h1_feed(&p, "x", 1, &again) == H1_DONE && again == 0);
            h1_reset(&p);
            continue;
        }
        PX_ASSERT(rc == 400 || rc == 413 || rc == 417 || rc == 431);
        size_t again = 1;
        PX_ASSERT(h1_feed(&p, "GET", 3, &again) == rc && again == 0);
        o->final = rc;
        break;
    }
    h1_cleanup(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    size_t slice = data[0] % 33;
    size_t hmax = (data[1] & 1) ? 64 + (data[1] >> 1) * 8 : 16384;
    size_t bmax = (data[1] & 2) ? (data[1] >> 2) : 65536;
    data += 2;
    size -= 2;
    static struct outcome whole;
    static struct outcome sliced;
    run(data, size, 0, hmax, bmax, &whole);
    run(data, size, slice, hmax, bmax, &sliced);
    /* An error may be reported with a different status when a slice boundary lets a
     * callback see a token before http_parser sees the byte that makes it invalid. */
    size_t n = whole.nreq < sliced.nreq ? whole.nreq : sliced.nreq;
    for (size_t i = 0; i < n; i++) {
        PX_ASSERT(whole.digest[i] == sliced.digest[i]);
    }
    PX_ASSERT((whole.final == H1_NEED_MORE) == (sliced.final == H1_NEED_MORE));
    PX_ASSERT(whole.nreq == sliced.nreq);
    return 0;
}
