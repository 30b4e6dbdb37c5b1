#ifndef PX_HTTP_SERVER_H
#define PX_HTTP_SERVER_H

/* HTTP/1.1 server on a libuv loop (accept -> parse -> dispatch -> respond), shared by the
 * gateway (`privax serve`) and the simulator (`privax sim`).
 *
 * Design: one struct per connection holding an http_parser, a capped header block and a
 * capped body. A request is dispatched to the handler once its body is complete; reading is
 * paused (pipelined bytes are kept) until the handler ends the response, then the next request
 * on the connection is parsed (keep-alive). The server itself answers malformed requests
 * (400), oversized header blocks (431), oversized bodies (413, before reading them when
 * Content-Length says so), unsupported Expect (417), and slow header senders (408), always
 * with a JSON error body, and never calls the handler for them. `Expect: 100-continue` is
 * answered with `100 Continue` once the declared length is known to fit. Chunked request
 * bodies are decoded by http_parser and capped like others.
 *
 * Threading: every function here runs on the loop thread that owns the server. */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct http_server;
struct http_req;

/* A header as received: views into the connection's header block, not NUL-terminated. */
struct http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Called once per complete request. The request stays valid until the handler calls
 * http_resp_end() (directly or through http_resp_send/http_resp_error), even if the client
 * has gone away in the meantime. */
typedef void (*http_handler_fn)(struct http_req *req, void *ud);
/* Called at most once, on the loop, when the client connection is lost (EOF, reset, write
 * error) before the response ended. The handler must still end the response (writes after
 * this are discarded) so the request can be freed. Must not free the request itself. */
typedef void (*http_abort_fn)(struct http_req *req);
/* Called when bytes queued by http_resp_write() have drained below the low-water mark
 * after having been above the high-water mark (backpressure for streaming relays). */
typedef void (*http_drain_fn)(struct http_req *req);

struct http_req {
    /* Request line and headers; all views valid until http_resp_end(). */
    int method;                        /* enum http_method from http_parser.h */
    const char *path;                  /* request target as sent (path and query) */
    size_t path_len;                   /* bytes in path */
    const struct http_header *headers; /* headers in arrival order */
    size_t nheaders;                   /* number of headers */
    const char *body;                  /* body bytes, NUL-terminated for convenience, or "" */
    size_t body_len;                   /* bytes in body (decoded if chunked) */
    int keep_alive;                    /* 1 when the connection stays open after the response */
    uint64_t start_ms;                 /* px_mono_ms() when the first byte of the request arrived */
    char peer[64];                     /* client address, "ip:port" */

    /* Set by the handler. */
    void *data;             /* handler-owned state */
    http_abort_fn on_abort; /* optional, see above */
    http_drain_fn on_drain; /* optional, see above */
};

struct http_server_opts {
    size_t header_max_bytes;       /* cap on request line + headers; over it -> 431 */
    size_t body_max_bytes;         /* cap on the body; over it -> 413 */
    uint64_t header_timeout_ms;    /* time allowed from first byte to end of headers -> 408 */
    uint64_t keepalive_timeout_ms; /* idle time allowed between requests on one connection */
    uint64_t body_timeout_ms;      /* time allowed from the end of the head to the end of the
                                      body, however steadily it trickles in -> 408 */
    size_t write_high_bytes;       /* queued response bytes above which http_resp_write
                                      returns a positive "slow down" value */
};

/* Fill opts with defaults: 16 KiB headers, 4 MiB body, 10 s header timeout, 60 s body timeout,
 * 75 s keep-alive, 256 KiB write high-water. */
void http_server_opts_default(struct http_server_opts *opts);

/* Bind and listen on addr ("host:port"; port 0 picks a free one) and serve requests with
 * handler(req, ud). 0 and *out set, or a negative error (nothing is left registered). */
int http_server_start(struct http_server **out, uv_loop_t *loop, const char *addr,
                      const struct http_server_opts *opts, http_handler_fn handler, void *ud);

/* The port actually bound (useful with port 0). */
int http_server_port(const struct http_server *srv);

/* Number of requests dispatched to the handler and not yet ended. */
size_t http_server_inflight(const struct http_server *srv);

/* Stop accepting new connections and close idle keep-alive connections; requests in flight
 * continue, and their connections close after their response. */
void http_server_stop_accepting(struct http_server *srv);

/* Close every connection and the listener, then free the server once libuv has released
 * every handle (run the loop afterwards). Requests still in flight are aborted first. */
void http_server_free(struct http_server *srv);

/* ---- request helpers ---- */

/* Find a header by case-insensitive name: pointer to its value (not NUL-terminated) and
 * *len, or NULL when absent. The first occurrence wins. */
const char *http_req_header(const struct http_req *req, const char *name, size_t *len);

/* ---- responses: status lines are written only here ---- */

/* Add a response header (copied) before the response starts. Name and value must not
 * contain CR or LF; such headers are dropped. */
void http_resp_header(struct http_req *req, const char *name, const char *value);

/* Send a whole response with Content-Length and end the request. content_type may be NULL. */
void http_resp_send(struct http_req *req, int status, const char *content_type, const char *body,
                    size_t len);

/* Send {"error":{"message":msg,"type":type,"code":code}} with the given status and end the
 * request. code may be NULL (JSON null). */
void http_resp_error(struct http_req *req, int status, const char *type, const char *code,
                     const char *msg);

/* Start a streamed response (Transfer-Encoding: chunked) with the headers added so far. */
void http_resp_start(struct http_req *req, int status, const char *content_type);

/* Queue bytes as one chunk of a started streamed response. Returns 0 when queued and the
 * write queue is below the high-water mark, 1 when queued but above it (pause the producer
 * until on_drain), or PX_ECLOSED when the client is gone (bytes discarded). */
int http_resp_write(struct http_req *req, const char *data, size_t len);

/* Finish the response (the terminating chunk for a stream) and release the request: the
 * caller must not touch req afterwards. Safe to call after the client has gone. */
void http_resp_end(struct http_req *req);

/* Hang up without finishing the response and release the request: the client sees the
 * connection close (reset=0: FIN) or reset (reset=1: RST) with whatever was already queued
 * ahead of it, never a clean end of the body. on_abort is not called. For relays whose
 * upstream failed mid-stream, and for fault injection. The caller must not touch req
 * afterwards. */
void http_resp_abort(struct http_req *req, int reset);

/* 1 once the response has started (status line queued). */
int http_resp_started(const struct http_req *req);

/* 1 when the client connection is gone. */
int http_req_closed(const struct http_req *req);

#endif
