/* HTTP/1.x request parsing on top of http_parser; see h1.h for the contract.
 *
 * Design note. http_parser tokenizes and calls back with slices of the caller's bytes; a
 * token may arrive in several slices when the input was split. We copy the URL and every
 * header name and value back to back into one capped buffer (head) and remember offsets,
 * because the buffer moves when it grows; the header views are built once the head is
 * complete. The head cap counts what a client actually sent for the request line and header
 * lines (method, URL, names, values and the fixed punctuation), so a split never changes the
 * outcome; padding whitespace is bounded by http_parser's own 80 KiB limit (also 431).
 *
 * The parser is paused in on_message_complete so http_parser_execute() returns right after
 * the request; the bytes that follow are the caller's to keep (pipelining). Each request gets
 * a freshly initialised http_parser, which also clears an Upgrade that http_parser would
 * otherwise treat as the end of the HTTP stream (we answer Upgrade requests as plain HTTP/1.1,
 * which RFC 9110 allows). CONNECT is refused with 400: we are not a forward proxy. */
#include "http/h1.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"
#include "core/mem.h"

/* Request line punctuation: " " + " HTTP/1.1\r\n" around method and URL. */
#define H1_LINE_OVERHEAD 12
/* Header line punctuation: ": " and "\r\n". */
#define H1_HEADER_OVERHEAD 4
/* Bodies above this much memory are released between keep-alive requests. */
#define H1_BODY_KEEP_BYTES (64 * 1024)

static int on_message_begin(http_parser *hp);
static int on_url(http_parser *hp, const char *at, size_t len);
static int on_header_field(http_parser *hp, const char *at, size_t len);
static int on_header_value(http_parser *hp, const char *at, size_t len);
static int on_headers_complete(http_parser *hp);
static int on_body(http_parser *hp, const char *at, size_t len);
static int on_message_complete(http_parser *hp);

static const http_parser_settings h1_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void h1_init(struct h1_parser *p, size_t header_max_bytes, size_t body_max_bytes)
{
    memset(p, 0, sizeof(*p));
    p->header_max = header_max_bytes;
    p->body_max = body_max_bytes;
    buf_init(&p->head, header_max_bytes);
    buf_init(&p->body, body_max_bytes);
    http_parser_init(&p->hp, HTTP_REQUEST);
    p->hp.data = p;
}

/* The header arrays are sized to the requests actually seen rather than to H1_MAX_HEADERS:
 * a connection lives as long as its stream, and 100 slots would be ~4.7 KiB per stream. */
static void headers_free(struct h1_parser *p)
{
    free(p->offs);
    free(p->headers);
    p->offs = NULL;
    p->headers = NULL;
    p->hcap = 0;
}

void h1_cleanup(struct h1_parser *p)
{
    buf_cleanup(&p->head);
    buf_cleanup(&p->body);
    headers_free(p);
}

void h1_reset(struct h1_parser *p)
{
    buf_reset(&p->head);
    if (p->body.alloc > H1_BODY_KEEP_BYTES) {
        buf_cleanup(&p->body);
    } else {
        buf_reset(&p->body);
    }
    if (p->hcap > H1_HEADERS_KEEP) {
        headers_free(p);
    }
    p->head_bytes = 0;
    p->url_len = 0;
    p->nheaders = 0;
    p->in_value = 0;
    p->status = 0;
    p->why = NULL;
    p->headers_done = 0;
    p->done = 0;
    p->expect_continue = 0;
    p->keep_alive = 0;
    p->method = 0;
    p->http_minor = 0;
    http_parser_init(&p->hp, HTTP_REQUEST);
    p->hp.data = p;
}

/* Count n more head bytes; sets 431 and returns nonzero when the cap is passed. */
static int head_count(struct h1_parser *p, size_t n)
{
    if (n > p->header_max - p->head_bytes) {
        p->status = 431;
        return -1;
    }
    p->head_bytes += n;
    return 0;
}

static int head_store(struct h1_parser *p, const char *at, size_t len)
{
    if (head_count(p, len) != 0) {
        return -1;
    }
    /* head_bytes bounds head.len, and both share the cap, so this cannot overflow. */
    return buf_append(&p->head, at, len) == 0 ? 0 : (p->status = 431, -1);
}

static int on_message_begin(http_parser *hp)
{
    (void)hp;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len)
{
    struct h1_parser *p = hp->data;
    if (head_store(p, at, len) != 0) {
        return -1;
    }
    p->url_len += (uint32_t)len;
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    struct h1_parser *p = hp->data;
    if (p->headers_done) {
        /* A chunked trailer: counted against the cap, otherwise ignored. */
        return head_count(p, len);
    }
    if (p->in_value || p->nheaders == 0) {
        /* A new header starts. */
        if (p->nheaders == H1_MAX_HEADERS) {
            p->status = 431;
            return -1;
        }
        if (head_count(p, H1_HEADER_OVERHEAD) != 0) {
            return -1;
        }
        if (p->nheaders == p->hcap) {
            size_t cap = p->hcap ? p->hcap * 2 : H1_HEADERS_KEEP;
            p->hcap = cap < H1_MAX_HEADERS ? cap : H1_MAX_HEADERS;
            p->offs = px_realloc(p->offs, p->hcap * sizeof(*p->offs));
            p->headers = px_realloc(p->headers, p->hcap * sizeof(*p->headers));
        }
        struct h1_header_off *o = &p->offs[p->nheaders++];
        o->name_off = (uint32_t)p->head.len;
        o->name_len = 0;
        o->value_off = (uint32_t)p->head.len;
        o->value_len = 0;
        p->in_value = 0;
    }
    if (head_store(p, at, len) != 0) {
        return -1;
    }
    p->offs[p->nheaders - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    struct h1_parser *p = hp->data;
    if (p->headers_done) {
        return head_count(p, len);
    }
    if (p->nheaders == 0) {
        /* http_parser never sends a value before a field; refuse rather than assume. */
        p->status = 400;
        p->why = "header value without a name";
        return -1;
    }
    struct h1_header_off *o = &p->offs[p->nheaders - 1];
    if (!p->in_value) {
        o->value_off = (uint32_t)p->head.len;
        o->value_len = 0;
        p->in_value = 1;
    }
    if (head_store(p, at, len) != 0) {
        return -1;
    }
    o->value_len += (uint32_t)len;
    return 0;
}

/* RFC 9110 tchar: the bytes a field name may hold. http_parser as Debian builds it
 * (non-strict) lets spaces into names, which is how "Transfer-Encoding : chunked" style
 * smuggling gets past one hop and not the next; RFC 9112 5.1 says reject with 400. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Names must be non-empty tchar runs; values must hold no control bytes but HTAB. NULL when
 * every header is well formed, else what is wrong (static text for the 400). */
static const char *headers_invalid(const struct h1_parser *p)
{
    for (size_t i = 0; i < p->nheaders; i++) {
        const struct http_header *h = &p->headers[i];
        if (h->name_len == 0) {
            return "empty header name";
        }
        for (size_t k = 0; k < h->name_len; k++) {
            if (!is_tchar((unsigned char)h->name[k])) {
                return "invalid character in a header name";
            }
        }
        for (size_t k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)h->value[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return "control character in a header value";
            }
        }
    }
    return NULL;
}

static const struct http_header *find_header(const struct h1_parser *p, const char *name)
{
    for (size_t i = 0; i < p->nheaders; i++) {
        const struct http_header *h = &p->headers[i];
        if (h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0) {
            return h;
        }
    }
    return NULL;
}

/* Rejects: CONNECT and invalid header bytes (400), a declared Content-Length over the cap (413), an
 * Expect other than 100-continue (417), and a head over the cap once the request line is counted
 * (431). */
static int on_headers_complete(http_parser *hp)
{
    struct h1_parser *p = hp->data;
    p->method = (int)hp->method;
    p->http_minor = hp->http_minor;
    if (head_count(p, strlen(http_method_str((enum http_method)hp->method)) + H1_LINE_OVERHEAD +
                          2) != 0) {
        return -1;
    }
    const char *base = p->head.data ? p->head.data : "";
    for (size_t i = 0; i < p->nheaders; i++) {
        const struct h1_header_off *o = &p->offs[i];
        p->headers[i].name = base + o->name_off;
        p->headers[i].name_len = o->name_len;
        p->headers[i].value = base + o->value_off;
        p->headers[i].value_len = o->value_len;
    }
    p->headers_done = 1;
    /* Answer Upgrade requests as plain HTTP/1.1 and keep parsing their body (see top). */
    hp->upgrade = 0;
    const char *bad = hp->method == HTTP_CONNECT ? "CONNECT is not supported" : headers_invalid(p);
    if (bad) {
        p->status = 400;
        p->why = bad;
        return -1;
    }
    if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > p->body_max) {
        p->status = 413;
        return -1;
    }
    const struct http_header *e = find_header(p, "expect");
    if (e) {
        size_t vl = e->value_len;
        while (vl > 0 && (e->value[vl - 1] == ' ' || e->value[vl - 1] == '\t')) {
            vl--;
        }
        if (vl != 12 || strncasecmp(e->value, "100-continue", 12) != 0) {
            p->status = 417;
            return -1;
        }
        /* HTTP/1.0 clients do not wait for 100 Continue (RFC 9110 10.1.1). */
        p->expect_continue = hp->http_major == 1 && hp->http_minor >= 1;
    }
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    struct h1_parser *p = hp->data;
    if (buf_append(&p->body, at, len) != 0) {
        p->status = 413;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct h1_parser *p = hp->data;
    p->keep_alive = http_should_keep_alive(hp);
    p->done = 1;
    p->expect_continue = 0;
    http_parser_pause(hp, 1);
    return 0;
}

int h1_feed(struct h1_parser *p, const char *data, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (p->status) {
        return p->status;
    }
    if (p->done) {
        return H1_DONE;
    }
    if (len == 0) {
        /* Zero bytes mean EOF to http_parser; callers report EOF by other means. */
        return H1_NEED_MORE;
    }
    size_t n = http_parser_execute(&p->hp, &h1_settings, data, len);
    enum http_errno err = HTTP_PARSER_ERRNO(&p->hp);
    *consumed = n > len ? len : n;
    if (p->done) {
        return H1_DONE;
    }
    if (p->status) {
        return p->status;
    }
    if (err == HPE_HEADER_OVERFLOW) {
        p->status = 431;
        return p->status;
    }
    if (err != HPE_OK || n != len) {
        p->status = 400;
        /* http_parser's own words name the rule ("invalid character in content length",
         * "invalid character in chunk size", ...). */
        p->why = err != HPE_OK ? http_errno_description(err) : "unexpected data";
        return p->status;
    }
    return H1_NEED_MORE;
}
