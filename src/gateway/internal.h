#ifndef PX_GATEWAY_INTERNAL_H
#define PX_GATEWAY_INTERNAL_H

/* Declarations shared inside the gateway subsystem only. */

#include <jansson.h>
#include <stdint.h>

#include "config/config.h"
#include "core/buf.h"
#include "gateway/gateway.h"
#include "gpu/gpu.h"
#include "http/server.h"
#include "http/sse.h"
#include "limits/limits.h"
#include "metrics/metrics.h"
#include "proxy/provider.h"
#include "proxy/upstream.h"
#include "usage/event.h"
#include "usage/writer.h"

/* An error as the client will see it: {"error":{"message","type","code"}}. */
struct gw_error {
    int status;        /* HTTP status */
    const char *type;  /* invalid_request_error | authentication_error | ... */
    const char *code;  /* machine-readable code, e.g. missing_header */
    char message[320]; /* human-readable, says which field and why */
    int retry_after_s; /* Retry-After seconds, 0 for none (503 defaults to 1) */
};

/* Who is asking, from the headers (never from the body). Views are copied, so this outlives
 * nothing it points into. */
struct gw_ident {
    char request_id[USAGE_ID_MAX + 1]; /* as sent, or a generated UUID */
    char api_key_id[65];               /* id of the matching service token; "" before auth */
    char tenant_id[USAGE_ID_MAX + 1];
    char user_id[USAGE_ID_MAX + 1];
    size_t tier; /* index into cfg->tiers */
};

/* A validated chat completion request. */
struct gw_chat_req {
    json_t *root;            /* the parsed body, owned */
    size_t model;            /* index into cfg->models */
    int stream;              /* stream: true */
    int64_t max_tokens;      /* requested, 0 when absent */
    int64_t input_chars;     /* Unicode characters of message content */
    int64_t prompt_estimate; /* estimated prompt tokens (chars / 4 + framing) */
};

/* Per-backend live state. */
struct gw_backend {
    const struct px_backend_cfg *cfg;
    const struct provider_ops *ops;
    int inflight;      /* requests holding a slot */
    uint64_t requests; /* requests dispatched since start */
    uint64_t failures; /* upstream failures since start */
};

struct gw_chat;

struct gateway {
    uv_loop_t *loop;
    const struct px_config *cfg;
    struct usage_writer *usage;
    struct limiter *lim;
    struct health *health;   /* backend health (passive + active probes) */
    struct metrics *metrics; /* /metrics counters, fed by gw_meter() */
    struct gpu_sampler *gpu; /* GPU figures for /health and /metrics */
    struct http_server *http;
    struct upstream_client *up;
    struct gw_backend *backends; /* cfg->nbackends entries */
    struct gw_chat *queue_head;  /* requests waiting for a backend slot, FIFO */
    struct gw_chat *queue_tail;
    size_t queue_len;
    size_t queue_max;          /* waiting requests allowed before 503 */
    uint64_t queue_timeout_ms; /* wait allowed before 503 */
    uv_timer_t queue_timer;    /* expires waiting requests */
    uv_idle_t reap_idle;       /* runs gw_chat_reap() on the next loop turn */
    struct gw_chat *reap_head; /* requests to finish at a safe point (client gone) */
    size_t inflight;           /* chat requests not yet metered */
    int queue_max_priority;    /* highest tier priority ever queued (scan bound) */
    int pumping;               /* gw_queue_pump() is running */
    int pump_again;            /* the queue changed while pumping: walk it again */
    uint64_t started_ms;       /* px_mono_ms() at start */
};

/* ident.c: fill id from the headers. 0, or -1 with err set. request_id is always set first,
 * so even a rejected request has one to echo. */
int gw_identify(const struct gateway *gw, const struct http_req *req, struct gw_ident *id,
                struct gw_error *err);

/* chat_req.c: validate a chat completion body. 0, or -1 with err set. On success out->root
 * is owned by the caller (gw_chat_req_cleanup). Pure: no I/O. */
int gw_chat_req_parse(const struct px_config *cfg, const char *body, size_t len,
                      struct gw_chat_req *out, struct gw_error *err);
void gw_chat_req_cleanup(struct gw_chat_req *r);

/* Set err to a formatted message. */
void gw_error_set(struct gw_error *err, int status, const char *type, const char *code,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Send err as the response (with X-Request-ID and Retry-After) and end the request. */
void gw_send_error(struct http_req *req, const char *request_id, const struct gw_error *err);

/* chat.c: POST /v1/chat/completions. */
void gw_chat_handle(struct gateway *gw, struct http_req *req);
/* chat.c: a backend slot was freed or a queued request expired; dispatch what can go. */
void gw_queue_pump(struct gateway *gw);
/* chat.c: how long the oldest queued request has waited, in ms (0 when none). */
uint64_t gw_queue_oldest_ms(const struct gateway *gw);
/* chat.c: end every queued/relaying request (shutdown). */
void gw_chat_abort_all(struct gateway *gw);
/* chat.c: finish the requests whose client went away (idle callback, nothing on the stack). */
void gw_chat_reap(uv_idle_t *h);
/* chat.c: expire queued requests that waited longer than queue_timeout_ms. */
void gw_queue_expire(uv_timer_t *t);

/* pool.c: pick the backend for model with a free slot (least in-flight relative to weight),
 * skipping the nskip backends in skip (already tried). GW_POOL_BUSY when every usable slot is
 * taken (wait), GW_POOL_NONE_HEALTHY when no backend of the model can serve at all. */
#define GW_POOL_BUSY         -1
#define GW_POOL_NONE_HEALTHY -2
long gw_pool_pick(struct gateway *gw, size_t model, const long *skip, int nskip);

/* meter.c: record one usage row (takes ev). With cb, cb(ud) runs on the loop once the row is
 * in the spool file (see usage_writer_push_ack). */
void gw_meter(struct gateway *gw, struct usage_event *ev, usage_ack_fn cb, void *ud);

/* usage_api.c: GET /v1/usage/{tenant}?period=day|week|month and POST /v1/usage/check; the
 * store queries run on libuv's thread pool. Loop thread. */
void gw_usage_get(struct gateway *gw, struct http_req *req);
void gw_usage_check(struct gateway *gw, struct http_req *req);

#endif
