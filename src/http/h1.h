#ifndef PX_HTTP_H1_H
#define PX_HTTP_H1_H

/* The HTTP/1.x request parser: a pure function of the bytes fed to it, with no I/O, so it can
 * be unit-tested from tables and fuzzed (tests/fuzz/fuzz_h1.c). It wraps http_parser and adds
 * what a server needs on top: the request line and headers collected under a byte cap and a
 * count cap (-> 431), the body collected under a cap (-> 413, decided from Content-Length
 * before any body byte when the length is declared), chunked bodies decoded, and the Expect
 * header checked (100-continue flagged for the caller, anything else -> 417).
 *
 * One struct per connection, reused across keep-alive requests: h1_reset() keeps the memory.
 * The struct body is public only because the connection embeds it by value; callers read the
 * fields documented as results and never write any. See docs/internals/http_server.md. */

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "http/server.h"

/* Most headers one request may carry; more -> 431. */
#define H1_MAX_HEADERS 100
/* Header slots allocated first and kept between keep-alive requests; a request with more
 * headers grows the arrays (up to H1_MAX_HEADERS) and h1_reset() gives the excess back. */
#define H1_HEADERS_KEEP 16

/* h1_feed() results besides an HTTP error status (400, 413, 417, 431). */
enum h1_result {
    H1_NEED_MORE = 0, /* every byte was consumed and the request is not complete yet */
    H1_DONE = 1,      /* a request is complete; bytes after *consumed belong to the next one */
};

/* Where one header sits inside the head buffer (offsets, because the buffer may move while
 * it grows; the views in headers[] are built once the head is complete). */
struct h1_header_off {
    uint32_t name_off;  /* offset of the name in head, bytes */
    uint32_t name_len;  /* bytes in the name */
    uint32_t value_off; /* offset of the value in head, bytes */
    uint32_t value_len; /* bytes in the value */
};

struct h1_parser {
    http_parser hp;      /* the tokenizer; its data points back at this struct */
    struct buf head;     /* URL, header names and values, back to back (capped) */
    struct buf body;     /* decoded body (capped at body_max_bytes) */
    size_t header_max;   /* cap on the request head, bytes (line + headers + CRLFs) */
    size_t body_max;     /* cap on the body, bytes */
    size_t head_bytes;   /* head bytes counted so far against header_max */
    uint32_t url_len;    /* bytes of URL at the start of head */
    size_t nheaders;     /* headers collected so far */
    size_t hcap;         /* slots in offs and headers (0, or H1_HEADERS_KEEP..H1_MAX_HEADERS) */
    int in_value;        /* 1 when the last header callback was a value */
    int status;          /* sticky error status (400/413/417/431), 0 while fine */
    const char *why;     /* with status 400: which rule the request broke (static text) */
    int headers_done;    /* 1 once the head is complete (body may follow) */
    int done;            /* 1 once the whole request is complete */
    int expect_continue; /* 1 when the client waits for "100 Continue" before the body */
    int keep_alive;      /* result: http_should_keep_alive() at completion */
    int method;          /* result: enum http_method */
    int http_minor;      /* result: 0 for HTTP/1.0, 1 for HTTP/1.1 */
    struct h1_header_off *offs;  /* positions while collecting, hcap slots (heap) */
    struct http_header *headers; /* result: views into head, arrival order, hcap slots (heap) */
};

/* Prepare p with its caps. Allocates nothing until bytes arrive. */
void h1_init(struct h1_parser *p, size_t header_max_bytes, size_t body_max_bytes);
/* Release p's memory. */
void h1_cleanup(struct h1_parser *p);
/* Forget the current request (views into it die) and get ready for the next one. */
void h1_reset(struct h1_parser *p);

/* Feed len bytes. *consumed gets how many were used (all of them unless the result is
 * H1_DONE). Returns H1_NEED_MORE, H1_DONE, or an HTTP error status; an error is sticky until
 * h1_reset(). Feeding after H1_DONE without h1_reset() returns H1_DONE and consumes nothing. */
int h1_feed(struct h1_parser *p, const char *data, size_t len, size_t *consumed);

/* Result views, valid after H1_DONE (url also after headers_done) until h1_reset(). */
static inline const char *h1_url(const struct h1_parser *p)
{
    return p->head.data ? p->head.data : "";
}

static inline const char *h1_body(const struct h1_parser *p)
{
    return p->body.data ? p->body.data : "";
}

#endif
