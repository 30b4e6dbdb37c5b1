#include "http/sse.h"

#include <string.h>

#include "core/err.h"

/* A line may be longer than its data by the field name ("data: "): allow that much, so that
 * whether an event fits never depends on how its bytes were split into reads. */
#define SSE_FIELD_SLACK 16

void sse_parser_init(struct sse_parser *p, enum sse_mode mode, size_t event_max_bytes)
{
    p->mode = mode;
    p->event_max = event_max_bytes;
    /* NDJSON: one more byte for the CR of a CRLF ending, checked again once it is stripped. */
    buf_init(&p->line,
             mode == SSE_MODE_NDJSON ? event_max_bytes + 1 : event_max_bytes + SSE_FIELD_SLACK);
    buf_init(&p->data, event_max_bytes);
    p->has_data = 0;
    p->skip_lf = 0;
}

void sse_parser_cleanup(struct sse_parser *p)
{
    buf_cleanup(&p->line);
    buf_cleanup(&p->data);
}

int sse_parser_pending(const struct sse_parser *p)
{
    return p->line.len > 0 || p->has_data;
}

/* One complete line (without its terminator) of an event stream. */
static int sse_line(struct sse_parser *p, const char *s, size_t n, sse_event_fn cb, void *ud)
{
    if (p->mode == SSE_MODE_NDJSON) {
        if (n > 0 && s[n - 1] == '\r') {
            n--;
        }
        if (n > p->event_max) {
            return PX_EOVERFLOW;
        }
        return n == 0 ? 0 : cb(ud, s, n);
    }
    if (n == 0) {
        /* Blank line: dispatch the event. Events without data, or with only empty data, carry
         * nothing to relay and are dropped rather than handed to a JSON parser. */
        int had = p->has_data && p->data.len > 0;
        p->has_data = 0;
        int rc = had ? cb(ud, p->data.data, p->data.len) : 0;
        buf_reset(&p->data);
        return rc;
    }
    if (s[0] == ':') {
        return 0; /* comment, e.g. keep-alive pings */
    }
    const char *colon = memchr(s, ':', n);
    size_t name_len = colon ? (size_t)(colon - s) : n;
    if (name_len != 4 || memcmp(s, "data", 4) != 0) {
        return 0; /* event:, id:, retry: and unknown fields carry nothing we relay */
    }
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (p->has_data && buf_append(&p->data, "\n", 1) != 0) {
        return PX_EOVERFLOW;
    }
    p->has_data = 1;
    return buf_append(&p->data, v, vlen);
}

int sse_parser_feed(struct sse_parser *p, const char *bytes, size_t n, sse_event_fn cb, void *ud)
{
    const char *s = bytes;
    const char *end = bytes + n;
    int ndjson = p->mode == SSE_MODE_NDJSON;
    /* Line ends are found with memchr rather than a loop over every byte (that loop was 8
     * instructions per relayed byte, 12% of a streamed request). The next LF is remembered
     * while lines end in CR before it, so a read of many CR-terminated lines is still looked
     * at once, not once per line. */
    const char *lf = NULL; /* the next LF at or after s, or NULL for none before end */
    int lf_known = 0;      /* lf holds a search made from at or before s */
    while (s < end) {
        if (p->skip_lf) {
            p->skip_lf = 0;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        /* The next line terminator: LF always; CR too for event streams. */
        if (!lf_known || (lf && lf < s)) {
            lf = memchr(s, '\n', (size_t)(end - s));
            lf_known = 1;
        }
        const char *eol = lf;
        if (!ndjson) {
            const char *cr = memchr(s, '\r', (size_t)((lf ? lf : end) - s));
            eol = cr ? cr : lf;
        }
        if (!eol) {
            return buf_append(&p->line, s, (size_t)(end - s));
        }
        int rc;
        if (p->line.len + (size_t)(eol - s) > p->line.cap) {
            return PX_EOVERFLOW; /* the same cap whether or not the line was split */
        }
        if (p->line.len == 0) {
            rc = sse_line(p, s, (size_t)(eol - s), cb, ud); /* whole line in this read: no copy */
        } else {
            rc = buf_append(&p->line, s, (size_t)(eol - s));
            if (rc == 0) {
                rc = sse_line(p, p->line.data, p->line.len, cb, ud);
            }
            buf_reset(&p->line);
        }
        if (rc != 0) {
            return rc;
        }
        p->skip_lf = *eol == '\r';
        s = eol + 1;
    }
    /* Unless a line or an event is still open, hold no memory until the next read: a stream
     * between tokens (or idle for minutes) then costs the parser nothing, for one allocation
     * per read that carries events. */
    if (p->line.len == 0) {
        buf_cleanup(&p->line);
        if (!p->has_data) {
            buf_cleanup(&p->data);
        }
    }
    return 0;
}
