/* The HTTP/1.1 server: sockets, timers and response framing around the pure parser in h1.c.
 * The contract is in server.h; the design is written up in docs/internals/http_server.md.
 *
 * Design note.
 * - One allocation per connection (struct http_conn) embeds the tcp and timer handles, the
 *   parser, the request handed to the handler, and the buffers (pending input, response head,
 *   extra response headers). Buffers keep their memory across keep-alive requests.
 * - Reads land in one 64 KiB slab per server (every callback runs on the loop thread and a
 *   read callback consumes its bytes before returning) and are parsed straight from it; only
 *   bytes that belong to a later request are copied, into the connection's pending buffer.
 * - While a request is with the handler the connection keeps reading, only to notice the
 *   client going away (EOF, reset): bytes that arrive are pipelined requests and are kept,
 *   capped; at the cap reading stops until the response ends.
 * - Writes try uv_try_write() first (head and body in one writev); only what the kernel did
 *   not take is copied into a uv_write request. The queued byte count drives backpressure.
 * - A connection is freed only when both handles are closed, no request is with the handler,
 *   and no user callback of ours is on the stack (depth == 0); on_abort runs from the tcp
 *   close callback, a safe point where the handler is never on the stack.
 * - Server-initiated closes after a response shut down the write side and discard input for a
 *   short while (lingering close, as nginx does), so an unread request body does not turn
 *   into a reset that destroys the response before the client reads it. */
#include "http/server.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "http/h1.h"

#define SLAB_BYTES           (64 * 1024)
#define PENDING_EXTRA_BYTES  (64 * 1024) /* pending cap = header cap + this */
#define OUT_HEAD_MAX_BYTES   (32 * 1024) /* cap on one response head */
#define RESP_HDRS_MAX_BYTES  (16 * 1024) /* cap on headers added by http_resp_header */
#define LINGER_MS            2000        /* how long a closing connection drains input */
#define LISTEN_BACKLOG       511
#define ERROR_JSON_MAX_BYTES 2048

enum conn_state {
    C_IDLE = 0, /* waiting for the first byte of a request */
    C_READING,  /* a request is partly received */
    C_HANDLING, /* a complete request is with the handler */
    C_LINGER,   /* response done, write side shut, draining input before close */
    C_CLOSED,   /* handles are closing or closed */
};

struct http_conn {
    uv_tcp_t tcp;            /* the client socket; data points at this struct */
    uv_timer_t timer;        /* header/keep-alive/linger timeout */
    uv_shutdown_t shut;      /* write-side shutdown for lingering close */
    struct http_server *srv; /* owning server */
    struct http_conn *prev;  /* server's connection list */
    struct http_conn *next;
    struct http_conn *rprev; /* server's ready list: idle with pending input */
    struct http_conn *rnext;
    struct h1_parser p;        /* request parser, reused across requests */
    struct http_req req;       /* the request handed to the handler */
    struct buf pending;        /* received, not yet parsed bytes (pipelining), capped */
    struct buf out;            /* response head being built */
    struct buf resp_hdrs;      /* "Name: value\r\n" lines added by http_resp_header */
    size_t wq_bytes;           /* bytes queued in uv_write requests, not yet written */
    int state;                 /* enum conn_state */
    int handles_open;          /* tcp + timer handles not yet closed (0..2) */
    int depth;                 /* user callbacks of ours on the stack */
    int closed;                /* 1 once the connection is closing (client gone or we hung up) */
    int req_active;            /* 1 while a request is dispatched and not ended */
    int aborted;               /* 1 once on_abort ran for the active request */
    int resp_started;          /* 1 once the status line is queued */
    int chunked;               /* 1 when the streamed response uses chunked framing */
    int no_body;               /* 1 when the response carries no body bytes (HEAD, 204, 304) */
    int drain_wanted;          /* 1 after http_resp_write reported the high-water mark */
    int parsing;               /* 1 while conn_parse is on the stack */
    int ready;                 /* 1 while on the server's ready list */
    int read_stopped;          /* 1 when reading is stopped because pending is full */
    int continue_sent;         /* 1 once "100 Continue" went out for this request */
    int cut;                   /* 1 when the handler hung up mid-response (http_resp_abort) */
    uint64_t body_deadline_ms; /* px_mono_ms() by which the body must be complete, 0 = unset */
};

struct http_server {
    uv_loop_t *loop;              /* the loop everything runs on */
    uv_tcp_t listener;            /* listening socket */
    uv_idle_t idle;               /* runs connections on the ready list */
    struct http_server_opts opts; /* caps and timeouts, defaults filled in */
    http_handler_fn handler;      /* request callback */
    void *ud;                     /* handler's user data */
    int port;                     /* bound port */
    size_t inflight;              /* requests with the handler */
    size_t nconns;                /* connections not yet freed */
    int handles_open;             /* listener + idle not yet closed */
    int listening;                /* 1 until the listener is closed */
    int draining;                 /* 1 after stop_accepting: no more keep-alive */
    int freeing;                  /* 1 after http_server_free */
    struct http_conn *conns;      /* every live connection */
    struct http_conn *ready;      /* idle connections holding pipelined input */
    char slab[SLAB_BYTES];        /* read buffer shared by every connection */
};

struct px_wreq {
    uv_write_t req;         /* libuv request; data unused */
    struct http_conn *conn; /* connection written to */
    size_t len;             /* bytes in data */
    char data[];            /* the copied bytes */
};

static void conn_close(struct http_conn *c);
static void conn_after_response(struct http_conn *c);
static void conn_parse_pending(struct http_conn *c);
static void on_timer(uv_timer_t *t);
static void on_idle(uv_idle_t *h);

static struct http_conn *conn_of(struct http_req *req)
{
    return (struct http_conn *)(void *)((char *)req - offsetof(struct http_conn, req));
}

static const struct http_conn *conn_of_const(const struct http_req *req)
{
    return (const struct http_conn *)(const void *)((const char *)req -
                                                    offsetof(struct http_conn, req));
}

void http_server_opts_default(struct http_server_opts *opts)
{
    opts->header_max_bytes = 16 * 1024;
    opts->body_max_bytes = 4 * 1024 * 1024;
    opts->header_timeout_ms = 10000;
    opts->body_timeout_ms = 60000;
    opts->keepalive_timeout_ms = 75000;
    opts->write_high_bytes = 256 * 1024;
}

/* ---- server lifetime ---- */

static void srv_maybe_free(struct http_server *srv)
{
    if (srv->freeing && srv->handles_open == 0 && srv->nconns == 0) {
        free(srv);
    }
}

static void on_srv_handle_close(uv_handle_t *h)
{
    struct http_server *srv = h->data;
    srv->handles_open--;
    srv_maybe_free(srv);
}

static void ready_remove(struct http_conn *c)
{
    if (!c->ready) {
        return;
    }
    if (c->rprev) {
        c->rprev->rnext = c->rnext;
    } else {
        c->srv->ready = c->rnext;
    }
    if (c->rnext) {
        c->rnext->rprev = c->rprev;
    }
    c->rprev = c->rnext = NULL;
    c->ready = 0;
}

static void ready_add(struct http_conn *c)
{
    if (c->ready) {
        return;
    }
    struct http_server *srv = c->srv;
    c->rprev = NULL;
    c->rnext = srv->ready;
    if (srv->ready) {
        srv->ready->rprev = c;
    }
    srv->ready = c;
    c->ready = 1;
    if (!srv->freeing) {
        uv_idle_start(&srv->idle, on_idle);
    }
}

/* ---- connection lifetime ---- */

static void conn_maybe_free(struct http_conn *c)
{
    if (c->handles_open > 0 || c->req_active || c->depth > 0) {
        return;
    }
    struct http_server *srv = c->srv;
    ready_remove(c);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    h1_cleanup(&c->p);
    buf_cleanup(&c->pending);
    buf_cleanup(&c->out);
    buf_cleanup(&c->resp_hdrs);
    free(c);
    srv->nconns--;
    srv_maybe_free(srv);
}

static void on_tcp_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    c->handles_open--;
    if (c->req_active && !c->aborted) {
        c->aborted = 1;
        if (c->req.on_abort) {
            c->depth++;
            c->req.on_abort(&c->req);
            c->depth--;
        }
    }
    conn_maybe_free(c);
}

static void on_timer_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    c->handles_open--;
    conn_maybe_free(c);
}

/* Close both handles; the request (if any) is aborted from the tcp close callback. */
static void conn_close(struct http_conn *c)
{
    if (c->closed) {
        return;
    }
    c->closed = 1;
    c->state = C_CLOSED;
    ready_remove(c);
    uv_close((uv_handle_t *)&c->tcp, on_tcp_close);
    uv_close((uv_handle_t *)&c->timer, on_timer_close);
}

/* ---- writing ---- */

static void on_write(uv_write_t *w, int status)
{
    struct px_wreq *r = (struct px_wreq *)(void *)w;
    struct http_conn *c = r->conn;
    c->wq_bytes -= r->len;
    free(r);
    if (status < 0) {
        px_debug("event=http_write_error peer=%s err=%s", c->req.peer, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->drain_wanted && c->wq_bytes <= c->srv->opts.write_high_bytes / 4) {
        c->drain_wanted = 0;
        if (c->req_active && !c->closed && c->req.on_drain) {
            c->depth++;
            c->req.on_drain(&c->req);
            c->depth--;
        }
    }
}

/* Write bufs in order: try the socket directly and queue a copy of whatever it did not take.
 * 0, or PX_ECLOSED when the connection is (now) gone; the connection is then closing. */
static int conn_write(struct http_conn *c, const uv_buf_t *bufs, unsigned int nbufs)
{
    if (c->closed) {
        return PX_ECLOSED;
    }
    size_t total = 0;
    for (unsigned int i = 0; i < nbufs; i++) {
        total += bufs[i].len;
    }
    if (total == 0) {
        return 0;
    }
    size_t done = 0;
    if (c->wq_bytes == 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
        if (n >= 0 && (size_t)n == total) {
            return 0;
        }
        if (n < 0 && n != UV_EAGAIN) {
            px_debug("event=http_write_error peer=%s err=%s", c->req.peer, uv_strerror(n));
            conn_close(c);
            return PX_ECLOSED;
        }
        if (n > 0) {
            done = (size_t)n;
        }
    }
    size_t rem = total - done;
    struct px_wreq *r = px_malloc(sizeof(*r) + rem);
    r->conn = c;
    r->len = rem;
    size_t at = 0;
    size_t skip = done;
    for (unsigned int i = 0; i < nbufs; i++) {
        size_t l = bufs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(r->data + at, bufs[i].base + skip, l - skip);
        at += l - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(r->data, (unsigned int)rem);
    int rc = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc != 0) {
        free(r);
        conn_close(c);
        return PX_ECLOSED;
    }
    c->wq_bytes += rem;
    return 0;
}

/* ---- response framing ---- */

/* Build the head into c->out. body_len < 0 means chunked (when c->chunked) or
 * close-delimited. Returns 0 or PX_EOVERFLOW (head too big: cannot happen with the caps). */
static int conn_build_head(struct http_conn *c, int status, const char *ctype, long long body_len,
                           int keep_alive)
{
    struct buf *o = &c->out;
    const char *reason = http_status_str((enum http_status)status);
    int rc = 0;
    buf_reset(o);
    rc |= buf_printf(o, "HTTP/1.1 %d %s\r\nServer: privax\r\n", status, reason);
    if (ctype && !strpbrk(ctype, "\r\n")) {
        rc |= buf_append_str(o, "Content-Type: ");
        rc |= buf_append_str(o, ctype);
        rc |= buf_append(o, "\r\n", 2);
    }
    if (c->resp_hdrs.len) {
        rc |= buf_append(o, c->resp_hdrs.data, c->resp_hdrs.len);
    }
    if (status == 204 || status == 304 || status < 200) {
        /* These never carry a body, and RFC 9110 8.6 forbids Content-Length on 1xx and 204. */
    } else if (body_len >= 0) {
        rc |= buf_printf(o, "Content-Length: %lld\r\n", body_len);
    } else if (c->chunked) {
        rc |= buf_append_str(o, "Transfer-Encoding: chunked\r\n");
    }
    if (!keep_alive) {
        rc |= buf_append_str(o, "Connection: close\r\n");
    } else if (c->p.http_minor == 0) {
        rc |= buf_append_str(o, "Connection: keep-alive\r\n");
    }
    rc |= buf_append(o, "\r\n", 2);
    return rc ? PX_EOVERFLOW : 0;
}

/* Write a complete response (head + body in one writev). */
static void conn_respond(struct http_conn *c, int status, const char *ctype, const char *body,
                         size_t len, int keep_alive, int head_only)
{
    if (conn_build_head(c, status, ctype, (long long)len, keep_alive) != 0) {
        px_log(PX_LOG_ERROR, "event=http_head_overflow status=%d", status);
        conn_close(c);
        return;
    }
    uv_buf_t bufs[2] = {uv_buf_init(c->out.data, (unsigned int)c->out.len),
                        uv_buf_init((char *)(uintptr_t)body, (unsigned int)len)};
    conn_write(c, bufs, head_only || len == 0 ? 1 : 2);
}

/* {"error":{"message":..,"type":..,"code":..}} into out; its length, 0 on failure. */
static size_t error_json(char *out, size_t cap, const char *type, const char *code, const char *msg)
{
    json_t *j = json_pack("{s:{s:s,s:s,s:s?}}", "error", "message", msg ? msg : "", "type",
                          type ? type : "error", "code", code);
    if (!j) {
        return 0;
    }
    size_t n = json_dumpb(j, out, cap, JSON_COMPACT);
    json_decref(j);
    return n <= cap ? n : 0;
}

static void conn_respond_error(struct http_conn *c, int status, const char *type, const char *code,
                               const char *msg, int keep_alive, int head_only)
{
    char body[ERROR_JSON_MAX_BYTES];
    size_t n = error_json(body, sizeof(body), type, code, msg);
    if (n == 0) {
        n = error_json(body, sizeof(body), type, code, "error message too long");
    }
    conn_respond(c, status, "application/json", body, n, keep_alive, head_only);
}

/* ---- reading and parsing ---- */

/* Answer a request the server refuses itself and hang up. */
static void conn_fail(struct http_conn *c, int status)
{
    const char *code = "bad_request";
    const char *msg = "malformed HTTP request";
    switch (status) {
    case 408:
        code = "request_timeout";
        msg = "request not received in time";
        break;
    case 413:
        code = "body_too_large";
        msg = "request body too large";
        break;
    case 417:
        code = "expectation_failed";
        msg = "unsupported Expect header";
        break;
    case 431:
        code = "headers_too_large";
        msg = "request header fields too large";
        break;
    default:
        status = 400;
        break;
    }
    char why[160];
    if (status == 400 && c->p.why) {
        snprintf(why, sizeof(why), "malformed HTTP request: %s", c->p.why);
        msg = why;
    }
    px_debug("event=http_reject peer=%s status=%d", c->req.peer, status);
    buf_reset(&c->resp_hdrs);
    c->chunked = 0;
    conn_respond_error(c, status, "invalid_request_error", code, msg, 0, 0);
    conn_after_response(c);
}

static void conn_dispatch(struct http_conn *c)
{
    struct http_server *srv = c->srv;
    struct http_req *req = &c->req;
    struct h1_parser *p = &c->p;
    uv_timer_stop(&c->timer);
    c->state = C_HANDLING;
    c->req_active = 1;
    c->aborted = 0;
    c->resp_started = 0;
    c->chunked = 0;
    c->no_body = 0;
    c->drain_wanted = 0;
    c->cut = 0;
    req->method = p->method;
    req->path = h1_url(p);
    req->path_len = p->url_len;
    req->headers = p->headers;
    req->nheaders = p->nheaders;
    req->body = h1_body(p);
    req->body_len = p->body.len;
    req->keep_alive = p->keep_alive && !srv->draining;
    req->data = NULL;
    req->on_abort = NULL;
    req->on_drain = NULL;
    srv->inflight++;
    c->depth++;
    srv->handler(req, srv->ud);
    c->depth--;
}

/* Parse (data, len), dispatching each complete request, until the bytes run out or a request
 * is with the handler or the connection is closing. Returns the bytes consumed. */
static size_t conn_parse(struct http_conn *c, const char *data, size_t len)
{
    struct http_server *srv = c->srv;
    size_t off = 0;
    c->parsing = 1;
    while (off < len && (c->state == C_IDLE || c->state == C_READING)) {
        if (c->state == C_IDLE) {
            c->state = C_READING;
            c->req.start_ms = px_mono_ms();
            c->continue_sent = 0;
            c->body_deadline_ms = 0;
            uv_timer_start(&c->timer, on_timer, srv->opts.header_timeout_ms, 0);
        }
        size_t used = 0;
        int rc = h1_feed(&c->p, data + off, len - off, &used);
        off += used;
        if (rc == H1_NEED_MORE) {
            if (c->p.expect_continue && !c->continue_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                uv_buf_t b = uv_buf_init((char *)(uintptr_t)cont, sizeof(cont) - 1);
                c->continue_sent = 1;
                conn_write(c, &b, 1);
            }
            if (c->p.headers_done) {
                /* Body: the same inactivity allowance as for the head, from the last byte, and
                 * a deadline for the whole body so a client trickling a byte at a time cannot
                 * hold the connection for ever. */
                uint64_t now = px_mono_ms();
                if (c->body_deadline_ms == 0) {
                    c->body_deadline_ms = now + srv->opts.body_timeout_ms;
                }
                if (now >= c->body_deadline_ms) {
                    c->req.keep_alive = 0;
                    conn_fail(c, 408);
                    break;
                }
                uint64_t left = c->body_deadline_ms - now;
                uv_timer_start(
                    &c->timer, on_timer,
                    left < srv->opts.header_timeout_ms ? left : srv->opts.header_timeout_ms, 0);
            }
            break;
        }
        if (rc == H1_DONE) {
            conn_dispatch(c);
            continue;
        }
        conn_fail(c, rc);
        break;
    }
    c->parsing = 0;
    return off;
}

static void conn_parse_pending(struct http_conn *c)
{
    size_t used = conn_parse(c, c->pending.data, c->pending.len);
    if (c->state == C_LINGER || c->closed) {
        buf_reset(&c->pending);
    } else {
        buf_consume(&c->pending, used);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct http_conn *c = h->data;
    (void)suggested;
    size_t n = SLAB_BYTES;
    if (c->state != C_LINGER && (c->state == C_HANDLING || c->pending.len > 0)) {
        /* These bytes go to pending: never read more than it can take. */
        size_t room = c->pending.cap - c->pending.len;
        n = room < n ? room : n;
    }
    *b = uv_buf_init(c->srv->slab, (unsigned int)n);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = s->data;
    if (nread == 0 || c->closed) {
        return;
    }
    if (nread == UV_ENOBUFS) {
        uv_read_stop(s);
        c->read_stopped = 1;
        return;
    }
    if (nread < 0) {
        /* EOF or error. Mid-request this aborts the request (from the close callback). */
        if (nread != UV_EOF) {
            px_debug("event=http_read_error peer=%s err=%s", c->req.peer, uv_strerror((int)nread));
        }
        conn_close(c);
        return;
    }
    size_t n = (size_t)nread;
    switch (c->state) {
    case C_LINGER:
        return;
    case C_HANDLING:
        /* Pipelined input; on_alloc sized the read to fit. */
        if (buf_append(&c->pending, b->base, n) != 0 || c->pending.len == c->pending.cap) {
            uv_read_stop(s);
            c->read_stopped = 1;
        }
        return;
    default:
        break;
    }
    if (c->pending.len == 0) {
        size_t used = conn_parse(c, b->base, n);
        if (used < n && c->state == C_HANDLING) {
            /* The slab holds a few pending bytes past its own cap at most; never fails. */
            if (buf_append(&c->pending, b->base + used, n - used) != 0) {
                conn_close(c);
            }
        }
        return;
    }
    if (buf_append(&c->pending, b->base, n) != 0) {
        conn_close(c);
        return;
    }
    conn_parse_pending(c);
}

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    struct http_conn *c = sh->data;
    if (status < 0) {
        conn_close(c);
    }
}

static void conn_linger(struct http_conn *c)
{
    c->state = C_LINGER;
    c->shut.data = c;
    if (c->read_stopped) {
        c->read_stopped = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* After a response is fully queued: reset for the next request or hang up. */
static void conn_after_response(struct http_conn *c)
{
    if (c->closed) {
        return;
    }
    buf_reset(&c->resp_hdrs);
    if (!c->req.keep_alive || c->srv->draining || c->state == C_READING) {
        /* C_READING here means the server refused the request: the rest of it is unread. */
        conn_linger(c);
        return;
    }
    h1_reset(&c->p);
    c->state = C_IDLE;
    uv_timer_start(&c->timer, on_timer, c->srv->opts.keepalive_timeout_ms, 0);
    if (c->read_stopped) {
        c->read_stopped = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    if (c->pending.len > 0 && !c->parsing) {
        ready_add(c);
    }
}

static void on_timer(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    switch (c->state) {
    case C_READING:
        c->req.keep_alive = 0;
        conn_fail(c, 408);
        break;
    case C_IDLE:
    case C_LINGER:
        conn_close(c);
        break;
    default:
        break;
    }
}

static void on_idle(uv_idle_t *h)
{
    struct http_server *srv = h->data;
    while (srv->ready) {
        struct http_conn *c = srv->ready;
        ready_remove(c);
        if (c->state == C_IDLE && c->pending.len > 0) {
            c->depth++;
            conn_parse_pending(c);
            c->depth--;
        }
    }
    uv_idle_stop(h);
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct http_server *srv = ls->data;
    if (status < 0) {
        px_log(PX_LOG_WARN, "event=http_accept_error err=%s", uv_strerror(status));
        return;
    }
    struct http_conn *c = px_calloc(1, sizeof(*c));
    c->srv = srv;
    c->tcp.data = c;
    c->timer.data = c;
    h1_init(&c->p, srv->opts.header_max_bytes, srv->opts.body_max_bytes);
    buf_init(&c->pending, srv->opts.header_max_bytes + PENDING_EXTRA_BYTES);
    buf_init(&c->out, OUT_HEAD_MAX_BYTES);
    buf_init(&c->resp_hdrs, RESP_HDRS_MAX_BYTES);
    c->req.keep_alive = 1;
    c->next = srv->conns;
    if (srv->conns) {
        srv->conns->prev = c;
    }
    srv->conns = c;
    srv->nconns++;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->handles_open = 2;
    int rc = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (rc == 0) {
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    if (rc != 0) {
        px_log(PX_LOG_WARN, "event=http_accept_error err=%s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char ip[48] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)&ss;
            uv_ip6_name(a, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
        } else {
            const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)&ss;
            uv_ip4_name(a, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        }
        snprintf(c->req.peer, sizeof(c->req.peer), "%s:%d", ip, port);
    }
    uv_timer_start(&c->timer, on_timer, srv->opts.header_timeout_ms, 0);
}

/* Resolve "host:port" (IPv4, [IPv6] or a name) into ss. 0 or a negative error. */
static int resolve_addr(const char *addr, struct sockaddr_storage *ss)
{
    char host[256];
    int port = 0;
    if (px_parse_hostport(addr, host, sizeof(host), &port) != 0) {
        return PX_EPARSE;
    }
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)(void *)ss) == 0) {
        return 0;
    }
    if (uv_ip6_addr(h, port, (struct sockaddr_in6 *)(void *)ss) == 0) {
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(h, NULL, &hints, &res) != 0 || !res) {
        return PX_EPARSE;
    }
    struct addrinfo *pick = res;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    if (ss->ss_family == AF_INET) {
        ((struct sockaddr_in *)(void *)ss)->sin_port = htons((uint16_t)port);
    } else {
        ((struct sockaddr_in6 *)(void *)ss)->sin6_port = htons((uint16_t)port);
    }
    freeaddrinfo(res);
    return 0;
}

int http_server_start(struct http_server **out, uv_loop_t *loop, const char *addr,
                      const struct http_server_opts *opts, http_handler_fn handler, void *ud)
{
    struct sockaddr_storage ss;
    int rc = resolve_addr(addr, &ss);
    if (rc != 0) {
        return rc;
    }
    /* A peer that resets mid-write must cost an EPIPE, not the process: every server does this. */
    signal(SIGPIPE, SIG_IGN);
    /* Bind with plain syscalls first so a failure leaves no libuv handle behind. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    socklen_t alen =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, alen) == -1 || listen(fd, LISTEN_BACKLOG) == -1) {
        rc = -errno;
        close(fd);
        return rc;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == -1) {
        rc = -errno;
        close(fd);
        return rc;
    }
    struct http_server *srv = px_calloc(1, sizeof(*srv));
    srv->loop = loop;
    http_server_opts_default(&srv->opts);
    if (opts) {
        srv->opts = *opts;
    }
    struct http_server_opts def;
    http_server_opts_default(&def);
    srv->opts.header_max_bytes =
        srv->opts.header_max_bytes ? srv->opts.header_max_bytes : def.header_max_bytes;
    srv->opts.header_timeout_ms =
        srv->opts.header_timeout_ms ? srv->opts.header_timeout_ms : def.header_timeout_ms;
    srv->opts.body_timeout_ms =
        srv->opts.body_timeout_ms ? srv->opts.body_timeout_ms : def.body_timeout_ms;
    srv->opts.keepalive_timeout_ms =
        srv->opts.keepalive_timeout_ms ? srv->opts.keepalive_timeout_ms : def.keepalive_timeout_ms;
    srv->opts.write_high_bytes =
        srv->opts.write_high_bytes ? srv->opts.write_high_bytes : def.write_high_bytes;
    srv->handler = handler;
    srv->ud = ud;
    srv->port =
        ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)(void *)&bound)->sin6_port
                                          : ((struct sockaddr_in *)(void *)&bound)->sin_port);
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_idle_init(loop, &srv->idle);
    srv->idle.data = srv;
    srv->handles_open = 2;
    rc = uv_tcp_open(&srv->listener, fd);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
    }
    if (rc != 0) {
        /* The handles are closing: the server frees itself from their close callbacks. */
        srv->freeing = 1;
        uv_close((uv_handle_t *)&srv->listener, on_srv_handle_close);
        uv_close((uv_handle_t *)&srv->idle, on_srv_handle_close);
        return rc;
    }
    srv->listening = 1;
    *out = srv;
    return 0;
}

int http_server_port(const struct http_server *srv)
{
    return srv->port;
}

size_t http_server_inflight(const struct http_server *srv)
{
    return srv->inflight;
}

void http_server_stop_accepting(struct http_server *srv)
{
    srv->draining = 1;
    if (srv->listening) {
        srv->listening = 0;
        uv_close((uv_handle_t *)&srv->listener, on_srv_handle_close);
    }
    for (struct http_conn *c = srv->conns; c; c = c->next) {
        if (c->state == C_IDLE && c->pending.len == 0) {
            conn_close(c);
        } else if (c->state == C_HANDLING) {
            c->req.keep_alive = 0;
        }
    }
}

void http_server_free(struct http_server *srv)
{
    if (!srv) {
        return;
    }
    srv->draining = 1;
    srv->freeing = 1;
    if (srv->listening) {
        srv->listening = 0;
        uv_close((uv_handle_t *)&srv->listener, on_srv_handle_close);
    }
    uv_close((uv_handle_t *)&srv->idle, on_srv_handle_close);
    for (struct http_conn *c = srv->conns; c; c = c->next) {
        conn_close(c);
    }
}

/* ---- request helpers ---- */

const char *http_req_header(const struct http_req *req, const char *name, size_t *len)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (px_view_ieq(h->name, h->name_len, name)) {
            if (len) {
                *len = h->value_len;
            }
            return h->value;
        }
    }
    return NULL;
}

/* ---- responses ---- */

/* Lengths are compared before names: this runs for every header of every answer, and most
 * names cannot be one of the reserved ones. */
void http_resp_header(struct http_req *req, const char *name, const char *value)
{
    struct http_conn *c = conn_of(req);
    size_t nlen = strcspn(name, "\r\n:");
    size_t vlen = strcspn(value, "\r\n");
    if (c->resp_started || name[nlen] || value[vlen] || nlen == 0) {
        return;
    }
    /* Framing and connection headers are the server's: it writes them itself. */
    if (nlen == 10 && strcasecmp(name, "connection") == 0) {
        if (strcasecmp(value, "close") == 0) {
            req->keep_alive = 0;
        }
        return;
    }
    if ((nlen == 14 && strcasecmp(name, "content-length") == 0) ||
        (nlen == 17 && strcasecmp(name, "transfer-encoding") == 0) ||
        (nlen == 10 && strcasecmp(name, "keep-alive") == 0)) {
        return;
    }
    size_t mark = c->resp_hdrs.len;
    if (buf_append(&c->resp_hdrs, name, nlen) != 0 || buf_append(&c->resp_hdrs, ": ", 2) != 0 ||
        buf_append(&c->resp_hdrs, value, vlen) != 0 || buf_append(&c->resp_hdrs, "\r\n", 2) != 0) {
        /* Over the cap: drop this header whole. */
        c->resp_hdrs.len = mark;
        if (c->resp_hdrs.data) {
            c->resp_hdrs.data[mark] = '\0';
        }
    }
}

static int status_has_body(int method, int status)
{
    return method != HTTP_HEAD && status != 204 && status != 304 && status >= 200;
}

void http_resp_send(struct http_req *req, int status, const char *content_type, const char *body,
                    size_t len)
{
    struct http_conn *c = conn_of(req);
    if (!c->resp_started) {
        c->resp_started = 1;
        if (!c->closed) {
            conn_respond(c, status, content_type, body, len, req->keep_alive,
                         !status_has_body(req->method, status));
        }
    }
    http_resp_end(req);
}

void http_resp_error(struct http_req *req, int status, const char *type, const char *code,
                     const char *msg)
{
    struct http_conn *c = conn_of(req);
    if (!c->resp_started) {
        c->resp_started = 1;
        if (!c->closed) {
            conn_respond_error(c, status, type, code, msg, req->keep_alive,
                               !status_has_body(req->method, status));
        }
    }
    http_resp_end(req);
}

void http_resp_start(struct http_req *req, int status, const char *content_type)
{
    struct http_conn *c = conn_of(req);
    if (c->resp_started) {
        return;
    }
    c->resp_started = 1;
    c->no_body = !status_has_body(req->method, status);
    c->chunked = !c->no_body && c->p.http_minor >= 1;
    if (!c->no_body && !c->chunked) {
        /* HTTP/1.0 has no chunked framing: the end of the body is the end of the connection. */
        req->keep_alive = 0;
    }
    if (c->closed) {
        return;
    }
    if (conn_build_head(c, status, content_type, c->no_body ? 0 : -1, req->keep_alive) != 0) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned int)c->out.len);
    conn_write(c, &b, 1);
    /* A streamed response may hold the connection for minutes, and the head's buffers are not
     * needed again before the next response (conn_write copied what it could not send): give
     * them back rather than keep ~1.5 KiB per open stream. */
    buf_cleanup(&c->out);
    buf_cleanup(&c->resp_hdrs);
}

int http_resp_write(struct http_req *req, const char *data, size_t len)
{
    struct http_conn *c = conn_of(req);
    if (!c->resp_started) {
        http_resp_start(req, 200, NULL);
    }
    if (c->closed) {
        return PX_ECLOSED;
    }
    if (len > 0 && !c->no_body) {
        int rc;
        if (c->chunked) {
            char hex[24];
            int hn = snprintf(hex, sizeof(hex), "%zx\r\n", len);
            uv_buf_t bufs[3] = {uv_buf_init(hex, (unsigned int)hn),
                                uv_buf_init((char *)(uintptr_t)data, (unsigned int)len),
                                uv_buf_init((char *)(uintptr_t) "\r\n", 2)};
            rc = conn_write(c, bufs, 3);
        } else {
            uv_buf_t b = uv_buf_init((char *)(uintptr_t)data, (unsigned int)len);
            rc = conn_write(c, &b, 1);
        }
        if (rc != 0) {
            return PX_ECLOSED;
        }
    }
    if (c->wq_bytes > c->srv->opts.write_high_bytes) {
        c->drain_wanted = 1;
        return 1;
    }
    return 0;
}

void http_resp_end(struct http_req *req)
{
    struct http_conn *c = conn_of(req);
    PX_ASSERT(c->req_active);
    if (!c->closed && !c->cut) {
        if (!c->resp_started) {
            c->resp_started = 1;
            conn_respond_error(c, 500, "server_error", NULL, "handler sent no response",
                               req->keep_alive, 0);
        } else if (c->chunked) {
            static const char last[] = "0\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *)(uintptr_t)last, sizeof(last) - 1);
            conn_write(c, &b, 1);
        }
    }
    c->req_active = 0;
    c->srv->inflight--;
    c->drain_wanted = 0;
    req->data = NULL;
    req->on_abort = NULL;
    req->on_drain = NULL;
    if (c->closed) {
        conn_maybe_free(c);
        return;
    }
    conn_after_response(c);
}

void http_resp_abort(struct http_req *req, int reset)
{
    struct http_conn *c = conn_of(req);
    PX_ASSERT(c->req_active);
    c->aborted = 1;
    req->keep_alive = 0;
    if (!c->closed && reset) {
        /* SO_LINGER with a zero timeout makes close() send RST instead of FIN. */
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        conn_close(c);
    }
    /* Without reset, what is queued still goes out, then the write side shuts (FIN) through
     * the lingering close in conn_after_response: no terminator, no error reply. */
    c->cut = 1;
    http_resp_end(req);
}

int http_resp_started(const struct http_req *req)
{
    return conn_of_const(req)->resp_started;
}

int http_req_closed(const struct http_req *req)
{
    return conn_of_const(req)->closed;
}
