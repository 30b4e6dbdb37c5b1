#ifndef PX_PROXY_UPSTREAM_H
#define PX_PROXY_UPSTREAM_H

/* Upstream HTTP requests with libcurl's multi interface driven by the libuv loop: curl tells
 * us which sockets to watch (uv_poll per socket) and when to wake it (one uv_timer); the loop
 * calls curl_multi_socket_action back. Connections to each backend are kept alive and reused
 * by curl's connection cache. On top of curl's connect timeout, each request has its own
 * first-byte and idle (between chunks) timers, because generation can pause for a long model
 * load before the first token but should then keep flowing.
 *
 * Everything here runs on the loop thread. */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct upstream_client;
struct upstream_req;

/* Response status line received (status >= 200). */
typedef void (*upstream_head_fn)(void *ud, int status);
/* Body bytes, in order. Return 0 to go on, non-zero to abort the request (on_done follows
 * with PX_ECLOSED). */
typedef int (*upstream_data_fn)(void *ud, const char *p, size_t n);
/* The request ended: err 0 (body complete), PX_ECONNECT (could not connect: nothing was
 * sent, safe to send elsewhere), -ETIMEDOUT (first_byte or idle timer), PX_EUPSTREAM (reset,
 * protocol error, ...; message in msg), PX_ECLOSED (aborted by on_data). A request is never
 * sent twice: when a reused keep-alive connection dies after the request went out, curl
 * would silently send it again on a new connection; a pre-request callback refuses every
 * attempt after the first, so curl fails instead (the GPU may already be generating), before
 * anything of the second copy is sent. Called exactly
 * once unless upstream_req_cancel() was called first. The request is freed right after this
 * returns. */
typedef void (*upstream_done_fn)(void *ud, int err, int status, const char *msg);

struct upstream_req_opts {
    const char *url;                /* full URL */
    const char *body;               /* request body (POST) or NULL (GET); copied */
    size_t body_len;                /* bytes in body */
    uint64_t connect_timeout_ms;    /* TCP connect */
    uint64_t first_byte_timeout_ms; /* request sent -> first body byte */
    uint64_t idle_timeout_ms;       /* max gap between body bytes after the first */
    upstream_head_fn on_head;
    upstream_data_fn on_data;
    upstream_done_fn on_done;
    void *ud;
};

/* Create a client on loop. 0 or a negative error. */
int upstream_client_new(struct upstream_client **out, uv_loop_t *loop);
/* Cancel every request (no callbacks) and free the client once libuv released its handles. */
void upstream_client_free(struct upstream_client *c);
/* Requests started and not yet done. */
size_t upstream_client_active(const struct upstream_client *c);

/* Start a request. Returns it (owned by the client until on_done or cancel), or NULL when
 * curl refused to start it (no callbacks then). */
struct upstream_req *upstream_req_start(struct upstream_client *c,
                                        const struct upstream_req_opts *opts);
/* Stop a request: its connection is closed (so the GPU stops working) and no callback
 * fires afterwards. Safe from any loop callback, including this request's own callbacks. */
void upstream_req_cancel(struct upstream_req *r);
/* Stop (1) or resume (0) receiving: backpressure when the client reads slower. */
void upstream_req_pause(struct upstream_req *r, int paused);

#endif
