#ifndef PX_OPS_FETCH_H
#define PX_OPS_FETCH_H

/* Blocking HTTP GETs for the operator commands (privax nodes check, privax scale): many URLs
 * at once through one libcurl multi handle, each with a total timeout and a capped body.
 * CLI use only (it blocks); call curl_global_init() once before. */

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct ops_fetch {
    const char *url; /* in: the URL (borrowed) */
    int status;      /* out: HTTP status, 0 when there was no response */
    struct buf body; /* out: the body; buf_init() it with its cap before the call */
    char error[256]; /* out: why there was no (complete) response, "" when fine */
    uint64_t ms;     /* out: how long it took */
};

/* GET every f[i].url concurrently; returns when all are done or timed out (timeout_ms each).
 * A body over its buffer's cap is an error ("response larger than N bytes"). */
void ops_fetch_all(struct ops_fetch *f, size_t n, uint64_t timeout_ms);

#endif
