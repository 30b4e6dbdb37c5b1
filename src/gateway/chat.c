/* POST /v1/chat/completions, top to bottom:
 *
 *   gw_chat_handle   identify (headers) -> parse (body) -> chat_admit
 *   chat_admit       max context, then the limiter (rpm, tpm, monthly; maybe async in Redis)
 *   chat_route       a healthy backend slot now, or wait in the queue (tier priority, bounded,
 *                    timed)
 *   chat_dispatch    build the backend request (provider adapter), start it on curl
 *   on_up_data       stream: frame events, translate, write each one as soon as complete
 *                    JSON: collect (capped)
 *   on_up_done       finish: closing usage chunk + [DONE], or the JSON answer, or failover
 *                    to another backend (chat_retry), or an error
 *   chat_done        release the slot, settle the limits, meter one usage row
 *   chat_deliver     once the row is in the spool: the answer's last bytes, then free
 *
 * A client that goes away is noticed by the HTTP server (chat_on_abort): the upstream
 * request is cancelled at once (its connection closed, so the GPU stops generating) and the
 * request is finished on the next loop turn as 499 client_disconnected, billed for what was
 * relayed. Errors before the first byte to the client are JSON errors; after it, the stream
 * ends with an error event and no [DONE], so no client can take a cut stream for a whole one.
 * The end of every answer (the closing chunk, the JSON body, the error) waits for the
 * request's usage row to be in the spool file, so a process killed at any moment never leaves
 * a client with an answer and no row; the wait is one hand-off to the spool thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "gateway/internal.h"
#include "health/health.h"

#define CHAT_EVENT_MAX_BYTES (1u << 20)  /* one upstream stream event */
#define CHAT_BODY_MAX_BYTES  (16u << 20) /* a whole upstream JSON answer */
#define CHAT_OUT_MAX_BYTES   (32u << 20) /* translated bytes waiting to be written */

/* The last part of the answer, sent by chat_deliver. */
enum chat_final {
    CHAT_FINAL_NONE = 0, /* nothing (the client is gone) */
    CHAT_FINAL_ERROR,    /* final_err: a JSON error, or an error event mid-stream */
    CHAT_FINAL_STREAM,   /* the translated closing bytes in out (usage chunk, [DONE]) */
    CHAT_FINAL_JSON,     /* the chat.completion in out */
};

struct gw_chat {
    struct gateway *gw;
    struct http_req *req; /* NULL once the response ended */
    struct gw_ident id;
    struct gw_chat_req body;
    int identified;          /* authenticated: a usage row will be written */
    int parsed;              /* body validated: model and counts are known */
    long backend;            /* index into gw->backends, -1 before routing */
    long tried[16];          /* backends already tried for this request */
    int ntried;              /* entries in tried (<= routing.max_tries) */
    int priority;            /* queue priority of the tenant's tier, higher first */
    struct upstream_req *up; /* the backend request while it runs */
    struct relay relay;
    struct sse_parser sse;
    struct buf upbody;             /* JSON answer or error body from the backend */
    struct buf out;                /* translated bytes for the client */
    int up_status;                 /* backend HTTP status */
    uint64_t t0_ms;                /* px_mono_ms() at arrival */
    uint64_t admit_ns;             /* uv_hrtime() when the limiter was asked */
    int64_t queue_ms;              /* time spent waiting for a slot */
    int64_t ttft_ms;               /* arrival to first byte to the client, -1 if none */
    int started;                   /* the streamed response has started */
    int client_gone;               /* the client hung up */
    struct lim_plan plan;          /* the tenant's limits */
    struct lim_decision dec;       /* the admission decision */
    int has_dec;                   /* dec is set */
    struct lim_pending *pending;   /* admission waiting for Redis */
    int64_t reserved;              /* tokens reserved at admission, settled in chat_done */
    int status;                    /* HTTP status for the usage row */
    const char *error_code;        /* "" on success */
    enum chat_final final;         /* what chat_deliver sends once the row is spooled */
    struct gw_error final_err;     /* the error to send, for CHAT_FINAL_ERROR */
    struct gw_chat *qprev, *qnext; /* wait queue links */
    int queued;
    struct gw_chat *reap_next;
};

static void chat_route(struct gw_chat *c);
static void chat_reject_busy(struct gw_chat *c);
static void chat_enqueue(struct gw_chat *c);
static int chat_retry(struct gw_chat *c);
static void chat_done(struct gw_chat *c);

/* ---- replies ---- */

void gw_send_error(struct http_req *req, const char *request_id, const struct gw_error *err)
{
    http_resp_header(req, "X-Request-ID", request_id);
    if (err->retry_after_s > 0) {
        char v[24];
        snprintf(v, sizeof(v), "%d", err->retry_after_s);
        http_resp_header(req, "Retry-After", v);
    }
    http_resp_error(req, err->status, err->type, err->code, err->message);
}

static void header_i64(struct http_req *req, const char *name, int64_t v)
{
    char s[PX_I64_STR_MAX];
    px_i64_str(v, s);
    http_resp_header(req, name, s);
}

/* Headers every answer to an identified request carries: the request id, the tenant's limit
 * state (the decision's, or a look at the current state for requests refused before
 * admission), and the monthly allowance warning. */
static void chat_headers(struct gw_chat *c)
{
    http_resp_header(c->req, "X-Request-ID", c->id.request_id);
    if (!c->identified || !c->id.tenant_id[0]) {
        return;
    }
    struct lim_decision peek;
    const struct lim_decision *d = &c->dec;
    if (!c->has_dec || c->dec.verdict == LIM_UNAVAILABLE) {
        /* No decision (refused before admission, or the shared store did not answer): report
         * this node's own view of the tenant's state. */
        lim_plan_for(c->gw->cfg, c->id.tenant_id, c->id.tier, &c->plan);
        lim_peek(c->gw->lim, c->id.tenant_id, &c->plan, &peek);
        d = &peek;
    }
    header_i64(c->req, "X-RateLimit-Limit", d->rpm_limit);
    header_i64(c->req, "X-RateLimit-Remaining", d->rpm_remaining);
    header_i64(c->req, "X-RateLimit-Reset", (d->rpm_reset_ms + 999) / 1000);
    header_i64(c->req, "X-RateLimit-Limit-Tokens", d->tpm_limit);
    header_i64(c->req, "X-RateLimit-Remaining-Tokens", d->tpm_remaining);
    header_i64(c->req, "X-RateLimit-Reset-Tokens", (d->tpm_reset_ms + 999) / 1000);
    header_i64(c->req, "X-Monthly-Tokens-Used", d->month_used);
    header_i64(c->req, "X-Monthly-Tokens-Limit", d->month_allowance);
    if (d->warn) {
        char w[200];
        snprintf(w, sizeof(w), "%s: %lld of %lld monthly tokens used (%lld%%)",
                 d->overage ? "monthly allowance exceeded" : "80% of the monthly allowance used",
                 (long long)d->month_used, (long long)d->month_allowance,
                 (long long)(d->month_allowance ? d->month_used * 100 / d->month_allowance : 0));
        http_resp_header(c->req, "X-Quota-Warning", w);
    }
}

static void chat_reject(struct gw_chat *c, const struct gw_error *err)
{
    c->status = err->status;
    c->error_code = err->code;
    c->final = CHAT_FINAL_ERROR;
    c->final_err = *err;
    chat_done(c);
}

/* Write translated bytes to the client, starting the event stream on the first ones. */
static void chat_flush(struct gw_chat *c)
{
    if (c->out.len == 0 || c->client_gone) {
        return;
    }
    if (!c->started) {
        c->started = 1;
        c->ttft_ms = (int64_t)(px_mono_ms() - c->t0_ms);
        /* Nothing is retried once the client has bytes (chat_retry), so the request's tree
         * is not needed again: free it rather than hold it for the stream's life (about
         * 1.5 KiB per open stream). */
        gw_chat_req_cleanup(&c->body);
        chat_headers(c);
        http_resp_header(c->req, "Cache-Control", "no-cache");
        /* Tell nginx (and similar proxies) not to buffer the stream. */
        http_resp_header(c->req, "X-Accel-Buffering", "no");
        http_resp_start(c->req, 200, "text/event-stream");
    }
    int rc = http_resp_write(c->req, c->out.data, c->out.len);
    /* Written or copied: free it, so a stream waiting for its next token holds no output
     * buffer (one allocation per upstream read). */
    buf_cleanup(&c->out);
    if (rc == 1 && c->up) {
        upstream_req_pause(c->up, 1); /* resumed by chat_on_drain */
    }
}

static void chat_on_drain(struct http_req *req)
{
    struct gw_chat *c = req->data;
    if (c->up) {
        upstream_req_pause(c->up, 0);
    }
}

/* ---- upstream callbacks ---- */

static void on_up_head(void *ud, int status)
{
    struct gw_chat *c = ud;
    c->up_status = status;
}

static int on_event(void *ud, const char *data, size_t len)
{
    struct gw_chat *c = ud;
    if (c->client_gone) {
        return 1;
    }
    enum relay_result r = c->relay.ops->stream_event(&c->relay, data, len, &c->out);
    if (c->out.len >= CHAT_OUT_MAX_BYTES) {
        snprintf(c->relay.error, sizeof(c->relay.error), "translated stream exceeds the cap");
        return 1;
    }
    return r == RELAY_ERROR;
}

static int on_up_data(void *ud, const char *p, size_t n)
{
    struct gw_chat *c = ud;
    if (c->client_gone) {
        return 1;
    }
    if (c->body.stream && c->up_status >= 200 && c->up_status < 300) {
        int rc = sse_parser_feed(&c->sse, p, n, on_event, c);
        if (rc == PX_EOVERFLOW) {
            snprintf(c->relay.error, sizeof(c->relay.error),
                     "backend stream event exceeds %u bytes", CHAT_EVENT_MAX_BYTES);
        }
        if (rc == 0) {
            /* Every event complete in this read goes out in one write: a read holding many
             * events costs one syscall, and no event waits for a later read. */
            chat_flush(c);
        }
        return rc;
    }
    if (buf_append(&c->upbody, p, n) != 0) {
        snprintf(c->relay.error, sizeof(c->relay.error), "backend answer exceeds %u bytes",
                 CHAT_BODY_MAX_BYTES);
        return 1;
    }
    return 0;
}

/* A backend's non-2xx answer, as the client should see it. */
static void upstream_status_error(struct gw_chat *c, struct gw_error *err)
{
    char msg[256];
    provider_error_message(c->upbody.data ? c->upbody.data : "", c->upbody.len, msg, sizeof(msg));
    const char *name = c->gw->backends[c->backend].cfg->name;
    int s = c->up_status;
    if (s == 400 || s == 422) {
        gw_error_set(err, 400, "invalid_request_error", "invalid_value", "backend %s: %s", name,
                     msg);
    } else if (s == 429 || s == 503) {
        gw_error_set(err, 503, "server_error", "backend_busy", "backend %s is busy: %s", name, msg);
    } else {
        gw_error_set(err, 502, "server_error", "upstream_error", "backend %s answered HTTP %d: %s",
                     name, s, msg);
    }
}

static void on_up_done(void *ud, int err, int status, const char *msg)
{
    struct gw_chat *c = ud;
    struct gw_error e;
    const char *name = c->gw->backends[c->backend].cfg->name;
    c->up = NULL;
    if (status && !c->up_status) {
        c->up_status = status;
    }
    int ok2xx = c->up_status >= 200 && c->up_status < 300;
    if (err == 0 && !ok2xx) {
        upstream_status_error(c, &e);
    } else if (err == -ETIMEDOUT) {
        gw_error_set(&e, 504, "server_error", "upstream_timeout", "backend %s: %s", name, msg);
    } else if (err == PX_ECLOSED) {
        gw_error_set(&e, 502, "server_error", "upstream_error", "backend %s: %s", name,
                     c->relay.error[0] ? c->relay.error : msg);
    } else if (err == PX_ECONNECT) {
        gw_error_set(&e, 502, "server_error", "upstream_error", "backend %s unreachable: %s", name,
                     msg);
    } else if (err != 0) {
        gw_error_set(&e, 502, "server_error", "upstream_error", "backend %s failed: %s", name, msg);
    } else if (c->body.stream && !c->relay.done) {
        gw_error_set(&e, 502, "server_error", "upstream_error",
                     "backend %s closed the stream before it was complete", name);
    } else if (c->body.stream) {
        /* Complete: the one closing usage chunk, then [DONE]. */
        health_report(c->gw->health, (size_t)c->backend, 1, px_mono_ms());
        relay_finish(&c->relay, c->body.prompt_estimate, &c->out);
        c->status = 200;
        c->final = CHAT_FINAL_STREAM;
        chat_done(c);
        return;
    } else if (c->relay.ops->complete(&c->relay, c->upbody.data ? c->upbody.data : "",
                                      c->upbody.len, c->body.prompt_estimate, &c->out) != 0) {
        gw_error_set(&e, 502, "server_error", "upstream_error", "backend %s: %s", name,
                     c->relay.error);
    } else {
        health_report(c->gw->health, (size_t)c->backend, 1, px_mono_ms());
        c->ttft_ms = (int64_t)(px_mono_ms() - c->t0_ms);
        c->status = 200;
        c->final = CHAT_FINAL_JSON;
        chat_done(c);
        return;
    }
    c->gw->backends[c->backend].failures++;
    char qt[2 * USAGE_ID_MAX + 4], qm[2 * sizeof(e.message) + 4];
    px_log(PX_LOG_WARN, "request_id=%s tenant=%s backend=%s event=upstream_failed status=%d msg=%s",
           c->id.request_id, px_log_quote(qt, sizeof(qt), c->id.tenant_id), name, e.status,
           px_log_quote(qm, sizeof(qm), e.message));
    /* Connect errors, resets, 5xx and timeouts count against the backend's health; a 4xx is
     * the request's fault, a relay error the stream's. */
    int counts = err == PX_ECONNECT || err == PX_EUPSTREAM || err == -ETIMEDOUT ||
                 (err == 0 && c->up_status >= 500);
    if (counts) {
        health_report(c->gw->health, (size_t)c->backend, 0, px_mono_ms());
    }
    /* Before anything reached the client, another backend may still answer: when nothing
     * was sent (connect error), when the backend refused with a 5xx, or when it never sent a
     * first byte. A connection lost after the request went out is not retried: that GPU may
     * be generating already. */
    int retryable = err == PX_ECONNECT || err == -ETIMEDOUT || (err == 0 && c->up_status >= 500);
    if (retryable && !c->started && chat_retry(c)) {
        return;
    }
    chat_reject(c, &e);
}

/* ---- route and dispatch ---- */

static void chat_dispatch(struct gw_chat *c, long b);

static void chat_reject_unhealthy(struct gw_chat *c)
{
    struct gw_error e;
    gw_error_set(&e, 502, "server_error", "no_healthy_backend",
                 "no healthy backend serves model %s right now",
                 c->gw->cfg->models[c->body.model].name);
    e.retry_after_s = 5;
    chat_reject(c, &e);
}

/* The backend failed before anything reached the client: give the request to another one
 * (never the same twice, at most routing.max_tries in all). 1 when it was re-dispatched. */
static int chat_retry(struct gw_chat *c)
{
    struct gateway *gw = c->gw;
    if (c->client_gone || c->ntried >= gw->cfg->max_tries ||
        c->ntried >= (int)(sizeof(c->tried) / sizeof(c->tried[0]))) {
        return 0;
    }
    long b = gw_pool_pick(gw, c->body.model, c->tried, c->ntried);
    if (b < 0) {
        return 0;
    }
    px_log(PX_LOG_INFO, "request_id=%s event=failover from=%s to=%s try=%d", c->id.request_id,
           gw->backends[c->backend].cfg->name, gw->backends[b].cfg->name, c->ntried + 1);
    /* Forget everything the failed attempt left behind. */
    gw->backends[c->backend].inflight--;
    sse_parser_cleanup(&c->sse);
    buf_reset(&c->upbody);
    buf_reset(&c->out);
    c->up_status = 0;
    chat_dispatch(c, b);
    return 1;
}

static void chat_dispatch(struct gw_chat *c, long b)
{
    struct gateway *gw = c->gw;
    struct gw_backend *be = &gw->backends[b];
    const struct px_model_cfg *m = &gw->cfg->models[c->body.model];
    c->backend = b;
    c->tried[c->ntried++] = b;
    be->inflight++;
    be->requests++;
    if (c->ntried == 1) {
        c->queue_ms = (int64_t)(px_mono_ms() - c->t0_ms);
    }
    relay_init(&c->relay, be->ops, m->name, strcmp(m->name, m->upstream_model) != 0,
               c->id.request_id);
    sse_parser_init(&c->sse, be->ops->stream_mode, CHAT_EVENT_MAX_BYTES);

    char *body = NULL;
    size_t len = 0;
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", be->cfg->url, be->ops->chat_path);
    struct gw_error e;
    const char *raw = c->req ? c->req->body : NULL; /* forwarded as is when it can be */
    if (be->ops->build_request(c->body.root, raw, c->req ? c->req->body_len : 0, m->upstream_model,
                               c->body.stream, &body, &len) != 0) {
        gw_error_set(&e, 500, "server_error", "internal_error", "could not encode the request");
        chat_reject(c, &e);
        return;
    }
    struct upstream_req_opts o = {
        .url = url,
        .body = body,
        .body_len = len,
        .connect_timeout_ms = gw->cfg->connect_timeout_ms,
        .first_byte_timeout_ms = gw->cfg->first_byte_timeout_ms,
        .idle_timeout_ms = gw->cfg->idle_timeout_ms,
        .on_head = on_up_head,
        .on_data = on_up_data,
        .on_done = on_up_done,
        .ud = c,
    };
    c->up = upstream_req_start(gw->up, &o);
    free(body);
    if (!c->up) {
        gw_error_set(&e, 502, "server_error", "upstream_error",
                     "could not start a request to backend %s", be->cfg->name);
        chat_reject(c, &e);
    }
}

static void queue_remove(struct gateway *gw, struct gw_chat *c)
{
    if (!c->queued) {
        return;
    }
    if (c->qprev) {
        c->qprev->qnext = c->qnext;
    } else {
        gw->queue_head = c->qnext;
    }
    if (c->qnext) {
        c->qnext->qprev = c->qprev;
    } else {
        gw->queue_tail = c->qprev;
    }
    c->qprev = c->qnext = NULL;
    c->queued = 0;
    gw->queue_len--;
    if (gw->queue_len == 0) {
        uv_timer_stop(&gw->queue_timer);
    }
}

static void chat_route(struct gw_chat *c)
{
    struct gateway *gw = c->gw;
    /* Requests already waiting go first: a newcomer may only skip the queue when it is empty. */
    if (gw->queue_len > 0) {
        /* Others are waiting: join the queue and let the pump decide, so a request never
         * overtakes an older or higher-priority one for the same model, and is not held up by
         * requests for a busy other model. */
        if (gw->queue_len >= gw->queue_max) {
            chat_reject_busy(c);
            return;
        }
        chat_enqueue(c);
        gw_queue_pump(gw);
        return;
    }
    long b = gw_pool_pick(gw, c->body.model, c->tried, c->ntried);
    if (b >= 0) {
        chat_dispatch(c, b);
        return;
    }
    if (b == GW_POOL_NONE_HEALTHY) {
        chat_reject_unhealthy(c);
        return;
    }
    if (gw->queue_len >= gw->queue_max) {
        chat_reject_busy(c);
        return;
    }
    chat_enqueue(c);
}

static void chat_reject_busy(struct gw_chat *c)
{
    struct gw_error e;
    gw_error_set(&e, 503, "server_error", "backend_busy",
                 "every backend slot is busy and %zu requests are already waiting",
                 c->gw->queue_len);
    chat_reject(c, &e);
}

static void chat_enqueue(struct gw_chat *c)
{
    struct gateway *gw = c->gw;
    c->queued = 1;
    if (c->priority > gw->queue_max_priority) {
        gw->queue_max_priority = c->priority;
    }
    c->qprev = gw->queue_tail;
    if (gw->queue_tail) {
        gw->queue_tail->qnext = c;
    } else {
        gw->queue_head = c;
    }
    gw->queue_tail = c;
    if (gw->queue_len++ == 0) {
        uv_timer_start(&gw->queue_timer, gw_queue_expire, 100, 100);
    }
}

void gw_queue_pump(struct gateway *gw)
{
    /* A dispatch can fail at once and finish its request, which pumps again: rather than
     * walk a list that changed under us, the outer call starts over. */
    if (gw->pumping) {
        gw->pump_again = 1;
        return;
    }
    gw->pumping = 1;
    do {
        gw->pump_again = 0;
        /* Highest tier priority first, FIFO within a priority; a request whose model has no
         * free slot does not block requests for other models. */
        for (int prio = gw->queue_max_priority; prio >= 0 && !gw->pump_again; prio--) {
            for (struct gw_chat *c = gw->queue_head; c && !gw->pump_again; c = c->qnext) {
                if (c->priority != prio) {
                    continue;
                }
                long b = gw_pool_pick(gw, c->body.model, c->tried, c->ntried);
                if (b == GW_POOL_BUSY) {
                    continue;
                }
                queue_remove(gw, c);
                if (b >= 0) {
                    chat_dispatch(c, b);
                } else {
                    chat_reject_unhealthy(c);
                }
                gw->pump_again = 1; /* c left the list: restart from the top */
            }
        }
    } while (gw->pump_again);
    gw->pumping = 0;
}

uint64_t gw_queue_oldest_ms(const struct gateway *gw)
{
    return gw->queue_head ? px_mono_ms() - gw->queue_head->t0_ms : 0;
}

void gw_queue_expire(uv_timer_t *t)
{
    struct gateway *gw = t->data;
    uint64_t now = px_mono_ms();
    while (gw->queue_head && now - gw->queue_head->t0_ms >= gw->queue_timeout_ms) {
        struct gw_chat *c = gw->queue_head;
        queue_remove(gw, c);
        c->queue_ms = (int64_t)(now - c->t0_ms);
        struct gw_error e;
        gw_error_set(&e, 503, "server_error", "queue_timeout",
                     "no backend slot became free within %llu ms",
                     (unsigned long long)gw->queue_timeout_ms);
        chat_reject(c, &e);
    }
}

/* ---- client gone ---- */

static void chat_on_abort(struct http_req *req)
{
    struct gw_chat *c = req->data;
    if (c->client_gone) {
        return;
    }
    c->client_gone = 1;
    c->status = 499;
    c->error_code = "client_disconnected";
    if (c->up) {
        upstream_req_cancel(c->up); /* closes the backend connection now */
        c->up = NULL;
    }
    if (c->pending) {
        lim_admit_cancel(c->pending);
        c->pending = NULL;
    }
    queue_remove(c->gw, c);
    /* We may be deep inside a write or a curl callback: finish on the next loop turn. */
    c->reap_next = c->gw->reap_head;
    c->gw->reap_head = c;
    uv_idle_start(&c->gw->reap_idle, gw_chat_reap);
}

void gw_chat_reap(uv_idle_t *h)
{
    struct gateway *gw = h->data;
    uv_idle_stop(h);
    while (gw->reap_head) {
        struct gw_chat *c = gw->reap_head;
        gw->reap_head = c->reap_next;
        http_resp_end(c->req); /* the client is gone: nothing more to send */
        c->req = NULL;
        char qt[2 * USAGE_ID_MAX + 4];
        px_log(PX_LOG_INFO, "request_id=%s tenant=%s event=client_disconnected relayed_chunks=%lld",
               c->id.request_id, px_log_quote(qt, sizeof(qt), c->id.tenant_id),
               (long long)c->relay.content_chunks);
        chat_done(c);
    }
}

void gw_chat_abort_all(struct gateway *gw)
{
    while (gw->queue_head) {
        struct gw_chat *c = gw->queue_head;
        queue_remove(gw, c);
        struct gw_error e;
        gw_error_set(&e, 503, "server_error", "shutting_down", "the gateway is shutting down");
        chat_reject(c, &e);
    }
}

/* ---- meter and free ---- */

/* Bounded copy for the row's fixed-size strings (the hot path: no format parsing). */
static void copy_str(char *dst, size_t cap, const char *s)
{
    size_t n = s ? strnlen(s, cap - 1) : 0;
    memcpy(dst, s ? s : "", n);
    dst[n] = '\0';
}

/* The row is in the spool (or cannot be waited for): send the end of the answer, free. */
static void chat_deliver(void *ud)
{
    struct gw_chat *c = ud;
    struct gateway *gw = c->gw;
    switch (c->req ? c->final : CHAT_FINAL_NONE) {
    case CHAT_FINAL_ERROR:
        if (c->started) {
            /* The stream is under way: an error event, and no [DONE] after it. */
            relay_error_event(&c->out, c->final_err.type, c->final_err.code, c->final_err.message);
            http_resp_write(c->req, c->out.data, c->out.len);
            http_resp_end(c->req);
        } else {
            chat_headers(c);
            if (c->final_err.retry_after_s > 0) {
                header_i64(c->req, "Retry-After", c->final_err.retry_after_s);
            }
            http_resp_error(c->req, c->final_err.status, c->final_err.type, c->final_err.code,
                            c->final_err.message);
        }
        break;
    case CHAT_FINAL_STREAM:
        chat_flush(c);
        http_resp_end(c->req);
        break;
    case CHAT_FINAL_JSON:
        chat_headers(c);
        http_resp_send(c->req, 200, "application/json", c->out.data, c->out.len);
        break;
    default:
        if (c->req) {
            http_resp_end(c->req);
        }
        break;
    }
    c->req = NULL;
    gw_chat_req_cleanup(&c->body);
    if (c->backend >= 0) {
        sse_parser_cleanup(&c->sse);
    }
    buf_cleanup(&c->upbody);
    buf_cleanup(&c->out);
    free(c);
    gw->inflight--;
    gw_queue_pump(gw);
}

/* No counts from the backend (cut stream, client gone): bill an estimate of what was relayed.
 * Not when the client got an error from our side (5xx: the backend failed, timed out or could
 * not be reached): it received nothing, and a provider's failure is not the tenant's bill. */
static int chat_bills_estimate(const struct gw_chat *c)
{
    return !c->relay.usage.present && c->relay.usage.total_tokens == 0 && c->status < 500;
}

static void chat_done(struct gw_chat *c)
{
    struct gateway *gw = c->gw;
    const struct px_config *cfg = gw->cfg;
    if (c->req) {
        c->req->on_abort = NULL; /* the outcome is decided; a late hang-up changes nothing */
    }
    if (c->backend >= 0) {
        gw->backends[c->backend].inflight--;
    }
    if (c->reserved > 0) {
        if (c->backend >= 0 && chat_bills_estimate(c)) {
            provider__estimate(&c->relay, c->body.prompt_estimate, c->relay.content_chunks);
        }
        lim_settle(gw->lim, c->id.tenant_id, &c->plan, c->reserved,
                   c->backend >= 0 ? c->relay.usage.total_tokens : 0);
    }
    if (c->identified) {
        struct usage_event *ev = px_calloc(1, sizeof(*ev));
        uint64_t now = px_mono_ms();
        ev->event_time_ms = px_now_ms() - (int64_t)(now - c->t0_ms);
        copy_str(ev->request_id, sizeof(ev->request_id), c->id.request_id);
        copy_str(ev->tenant_id, sizeof(ev->tenant_id), c->id.tenant_id);
        copy_str(ev->user_id, sizeof(ev->user_id), c->id.user_id);
        copy_str(ev->api_key_id, sizeof(ev->api_key_id), c->id.api_key_id);
        copy_str(ev->plan_tier, sizeof(ev->plan_tier), cfg->tiers[c->id.tier].name);
        copy_str(ev->model_name, sizeof(ev->model_name),
                 c->parsed ? cfg->models[c->body.model].name : "");
        copy_str(ev->request_type, sizeof(ev->request_type), "chat");
        copy_str(ev->error_code, sizeof(ev->error_code), c->error_code);
        copy_str(ev->node_id, sizeof(ev->node_id), cfg->node_id);
        ev->gpu_id = -1;
        if (c->backend >= 0) {
            const struct px_backend_cfg *b = gw->backends[c->backend].cfg;
            static const char *const providers[] = {"auto", "ollama", "vllm", "openai"};
            int pk = b->provider_kind > 0 && b->provider_kind < 4 ? b->provider_kind
                     : b->protocol == PX_PROTO_OLLAMA             ? 1
                                                                  : 2;
            copy_str(ev->provider, sizeof(ev->provider), providers[pk]);
            copy_str(ev->backend, sizeof(ev->backend), b->name);
            ev->gpu_id = b->gpu_id;
            if (chat_bills_estimate(c)) {
                provider__estimate(&c->relay, c->body.prompt_estimate, c->relay.content_chunks);
            }
            ev->prompt_tokens = c->relay.usage.prompt_tokens;
            ev->completion_tokens = c->relay.usage.completion_tokens;
            ev->total_tokens = c->relay.usage.total_tokens;
            ev->usage_estimated = !c->relay.usage.present;
            ev->output_chars = c->relay.output_chars;
        }
        ev->stream = c->parsed && c->body.stream;
        ev->queue_ms = c->queue_ms;
        ev->ttft_ms = c->ttft_ms;
        ev->latency_ms = (int64_t)(now - c->t0_ms);
        ev->status_code = c->status;
        ev->success = c->status == 200 && c->error_code[0] == '\0';
        ev->input_chars = c->body.input_chars;
        ev->overage = c->has_dec && c->dec.overage;
        if (c->req && usage_writer_bound(gw->usage)) {
            gw_meter(gw, ev, chat_deliver, c); /* chat_deliver runs once it is spooled */
            return;
        }
        gw_meter(gw, ev, NULL, NULL);
    }
    chat_deliver(c);
}

/* ---- admit ---- */

static void chat_on_admit(void *ud, const struct lim_decision *d)
{
    struct gw_chat *c = ud;
    struct gw_error e;
    metrics_observe_limits(c->gw->metrics, lim_mode(c->gw->lim),
                           (uv_hrtime() - c->admit_ns) / 1000);
    c->pending = NULL;
    c->dec = *d;
    c->has_dec = 1;
    const struct lim_plan *p = &c->plan;
    switch (d->verdict) {
    case LIM_ALLOW:
        c->reserved = c->body.prompt_estimate +
                      (c->body.max_tokens ? c->body.max_tokens : p->default_max_tokens);
        chat_route(c);
        return;
    case LIM_RPM:
        gw_error_set(&e, 429, "rate_limit_error", "rate_limit_exceeded",
                     "tenant %s is over the %s plan's %lld requests per minute; retry in %lld s",
                     c->id.tenant_id, p->tier, (long long)d->rpm_limit,
                     (long long)(d->retry_after_ms + 999) / 1000);
        break;
    case LIM_TPM:
        gw_error_set(&e, 429, "rate_limit_error", "tokens_per_minute_exceeded",
                     "tenant %s: this request reserves %lld tokens and %lld of the %s plan's "
                     "%lld tokens per minute remain; retry in %lld s",
                     c->id.tenant_id,
                     (long long)(c->body.prompt_estimate +
                                 (c->body.max_tokens ? c->body.max_tokens : p->default_max_tokens)),
                     (long long)d->tpm_remaining, p->tier, (long long)d->tpm_limit,
                     (long long)(d->retry_after_ms + 999) / 1000);
        break;
    case LIM_MONTHLY:
        gw_error_set(&e, 429, "rate_limit_error", "monthly_quota_exceeded",
                     "tenant %s has used %lld of the %s plan's %lld monthly tokens, and the "
                     "plan blocks at its allowance",
                     c->id.tenant_id, (long long)d->month_used, p->tier,
                     (long long)d->month_allowance);
        break;
    default:
        gw_error_set(&e, 503, "server_error", "limits_unavailable",
                     "the shared rate-limit store is unreachable and on_redis_error is closed");
        break;
    }
    e.retry_after_s = (int)((d->retry_after_ms + 999) / 1000);
    if (e.retry_after_s < 1) {
        e.retry_after_s = 1;
    }
    chat_reject(c, &e);
}

/* Max context first (no state needed), then the limiter: requests/minute, tokens/minute and
 * the monthly allowance, checked and reserved together. */
static void chat_admit(struct gw_chat *c)
{
    lim_plan_for(c->gw->cfg, c->id.tenant_id, c->id.tier, &c->plan);
    c->priority = c->gw->cfg->tiers[c->id.tier].priority;
    if (c->priority < 0) {
        c->priority = 0;
    }
    int64_t completion = c->body.max_tokens ? c->body.max_tokens : c->plan.default_max_tokens;
    int64_t need = c->body.prompt_estimate + completion;
    if (need > c->plan.max_context) {
        struct gw_error e;
        gw_error_set(&e, 400, "invalid_request_error", "context_length_exceeded",
                     "this request needs about %lld tokens (prompt ~%lld + max_tokens %lld), "
                     "over the %s plan's max context of %lld tokens",
                     (long long)need, (long long)c->body.prompt_estimate, (long long)completion,
                     c->plan.tier, (long long)c->plan.max_context);
        chat_reject(c, &e);
        return;
    }
    /* Local decisions call back before lim_admit returns (and may have finished c), so the
     * handle is stored only when the answer is still to come. */
    c->admit_ns = uv_hrtime();
    struct lim_pending *p =
        lim_admit(c->gw->lim, c->id.tenant_id, &c->plan, need, chat_on_admit, c);
    if (p) {
        c->pending = p;
    }
}

/* ---- entry ---- */

void gw_chat_handle(struct gateway *gw, struct http_req *req)
{
    struct gw_chat *c = px_calloc(1, sizeof(*c));
    c->gw = gw;
    c->req = req;
    c->backend = -1;
    c->ttft_ms = -1;
    c->t0_ms = req->start_ms;
    c->error_code = "";
    buf_init(&c->upbody, CHAT_BODY_MAX_BYTES);
    buf_init(&c->out, CHAT_OUT_MAX_BYTES);
    req->data = c;
    gw->inflight++;

    struct gw_error e;
    if (gw_identify(gw, req, &c->id, &e) != 0) {
        /* Only requests that proved who sent them are billed rows. */
        c->identified = c->id.api_key_id[0] != '\0';
        chat_reject(c, &e);
        return;
    }
    c->identified = 1;
    if (gw_chat_req_parse(gw->cfg, req->body, req->body_len, &c->body, &e) != 0) {
        chat_reject(c, &e);
        return;
    }
    c->parsed = 1;
    req->on_abort = chat_on_abort;
    req->on_drain = chat_on_drain;
    chat_admit(c);
}
