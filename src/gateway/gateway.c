/* The gateway's front: start and stop, the route table, and the small GET endpoints
 * (/health, /v1/models). The chat path lives in chat.c. */
#include "gateway/gateway.h"

#include <http_parser.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "gateway/internal.h"
#include "health/health.h"

static void send_json(struct http_req *req, int status, const char *request_id, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (request_id) {
        http_resp_header(req, "X-Request-ID", request_id);
    }
    http_resp_send(req, status, "application/json", s ? s : "{}", s ? strlen(s) : 2);
    free(s);
}

/* "down" when no model has a backend that can serve (nginx should stop sending traffic here:
 * 503), "degraded" when something an operator must look at is wrong but requests are served
 * (a backend down, limits without Redis, billing rows at risk), else "ok". */
static const char *node_status(struct gateway *gw, int usage_degraded)
{
    uint64_t now = px_mono_ms();
    int any_down = 0;
    int models_served = 0;
    for (size_t i = 0; i < gw->cfg->nbackends; i++) {
        any_down |= health_state(gw->health, i, now) == HEALTH_DOWN;
    }
    for (size_t m = 0; m < gw->cfg->nmodels; m++) {
        const struct px_model_cfg *mc = &gw->cfg->models[m];
        int served = 0;
        for (size_t k = 0; k < mc->nbackends; k++) {
            served |= health_state(gw->health, mc->backends[k], now) != HEALTH_DOWN;
        }
        models_served += served;
    }
    if (models_served == 0) {
        return "down";
    }
    if (any_down || usage_degraded || strcmp(lim_mode(gw->lim), "degraded") == 0) {
        return "degraded";
    }
    return "ok";
}

static void handle_health(struct gateway *gw, struct http_req *req)
{
    json_t *backends = json_array();
    for (size_t i = 0; i < gw->cfg->nbackends; i++) {
        const struct gw_backend *b = &gw->backends[i];
        enum health_state hs = health_state(gw->health, i, px_mono_ms());
        json_array_append_new(
            backends,
            json_pack("{s:s,s:s,s:s,s:s,s:b,s:i,s:i,s:i,s:I,s:I,s:I,s:s}", "name", b->cfg->name,
                      "url", b->cfg->url, "protocol", b->ops->name, "state", health_state_name(hs),
                      "backup", b->cfg->backup, "gpu_id", b->cfg->gpu_id, "inflight", b->inflight,
                      "max_concurrency", b->cfg->max_concurrency, "requests",
                      (json_int_t)b->requests, "failures", (json_int_t)b->failures,
                      "last_check_unix_ms", (json_int_t)health_last_check_ms(gw->health, i),
                      "last_error", health_last_error(gw->health, i)));
    }
    uint64_t oldest = gw_queue_oldest_ms(gw);
    /* Usage rows: the spool's state. "degraded" when the spool is full or failing or rows
     * were dropped: billing data is at risk and an operator must look. */
    struct usage_writer_stats us;
    usage_writer_stats(gw->usage, &us);
    int degraded = usage_writer_degraded(&us);
    json_t *usage = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "backlog",
        (json_int_t)(us.queued + us.spooled), "queued", (json_int_t)us.queued, "spooled",
        (json_int_t)us.spooled, "spool_bytes", (json_int_t)us.spool_bytes, "spool_max_bytes",
        (json_int_t)us.spool_max_bytes, "spool_full", us.spool_full, "spool_failing",
        us.spool_failing, "store_ok", us.store_ok, "last_ship_unix_ms",
        (json_int_t)us.last_ship_unix_ms, "last_commit_unix_ms", (json_int_t)us.last_ship_unix_ms,
        "shipped", (json_int_t)us.shipped, "ship_failures", (json_int_t)us.ship_failures,
        "spool_full_events", (json_int_t)us.spool_full_events, "dropped", (json_int_t)us.dropped,
        "rejected", (json_int_t)us.rejected, "last_error", us.last_error);
    const char *status = node_status(gw, degraded);
    json_t *j =
        json_pack("{s:s,s:s,s:s,s:I,s:I,s:{s:I,s:I},s:o,s:o}", "status", status, "limits",
                  lim_mode(gw->lim), "node_id", gw->cfg->node_id, "uptime_s",
                  (json_int_t)((px_mono_ms() - gw->started_ms) / 1000), "inflight",
                  (json_int_t)gw->inflight, "queue", "length", (json_int_t)gw->queue_len,
                  "oldest_wait_ms", (json_int_t)oldest, "backends", backends, "usage", usage);
    json_object_set_new(j, "gpus", gpu_sampler_gpus_json(gw->gpu, gw->cfg));
    json_object_set_new(j, "gpu", gpu_sampler_status_json(gw->gpu));
    send_json(req, strcmp(status, "down") == 0 ? 503 : 200, NULL, j);
}

/* GET /metrics: the Prometheus text exposition (src/metrics), no auth, like /health. */
static void handle_metrics(struct gateway *gw, struct http_req *req)
{
    uint64_t now = px_mono_ms();
    size_t nb = gw->cfg->nbackends;
    struct metrics_backend *mb = px_calloc(nb ? nb : 1, sizeof(*mb));
    for (size_t i = 0; i < nb; i++) {
        mb[i].name = gw->backends[i].cfg->name;
        mb[i].up = health_state(gw->health, i, now) == HEALTH_UP;
        mb[i].inflight = gw->backends[i].inflight;
        mb[i].max_concurrency = gw->backends[i].cfg->max_concurrency;
    }
    struct metrics_gauges g = {
        .node_id = gw->cfg->node_id,
        .uptime_s = (now - gw->started_ms) / 1000,
        .inflight = gw->inflight,
        .queue_length = gw->queue_len,
        .queue_oldest_ms = gw_queue_oldest_ms(gw),
        .backends = mb,
        .nbackends = nb,
        .usage_backlog = usage_writer_backlog(gw->usage),
        .usage_last_commit_ms = usage_writer_last_commit_ms(gw->usage),
        .limits_mode = lim_mode(gw->lim),
        .gpu_source = gpu_sampler_source(gw->gpu),
        .gpu_samples_ok = gpu_sampler_samples(gw->gpu, 1),
        .gpu_samples_failed = gpu_sampler_samples(gw->gpu, 0),
    };
    g.ngpus = gpu_sampler_current(gw->gpu, &g.gpus);
    struct usage_writer_stats us;
    usage_writer_stats(gw->usage, &us);
    g.usage_spool_bytes = us.spool_bytes;
    g.usage_spool_max_bytes = us.spool_max_bytes;
    g.usage_shipped = us.shipped;
    g.usage_ship_failures = us.ship_failures;
    g.usage_dropped = us.dropped;
    g.usage_store_up = us.store_ok;
    struct buf b;
    buf_init(&b, 16 * 1024 * 1024);
    if (metrics_render(gw->metrics, &g, &b) == 0) {
        http_resp_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    } else {
        char rid[37];
        struct gw_error err;
        px_uuid4(rid);
        gw_error_set(&err, 500, "server_error", "metrics_too_large",
                     "the metrics text is larger than 16 MiB");
        gw_send_error(req, rid, &err);
    }
    buf_cleanup(&b);
    free(mb);
}

static void handle_models(struct gateway *gw, struct http_req *req)
{
    struct gw_ident id;
    struct gw_error err;
    /* Listing models needs a service token, not a tenant. */
    if (gw_identify(gw, req, &id, &err) != 0 && err.status == 401) {
        gw_send_error(req, id.request_id, &err);
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < gw->cfg->nmodels; i++) {
        json_array_append_new(data, json_pack("{s:s,s:s,s:I,s:s}", "id", gw->cfg->models[i].name,
                                              "object", "model", "created", (json_int_t)0,
                                              "owned_by", "privax"));
    }
    send_json(req, 200, id.request_id, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

/* The route table: method, exact path (query ignored), handler. */
static const struct {
    int method;
    const char *path;
    void (*handle)(struct gateway *gw, struct http_req *req);
} routes[] = {
    {HTTP_POST, "/v1/chat/completions", gw_chat_handle},
    {HTTP_GET, "/v1/models", handle_models},
    {HTTP_GET, "/health", handle_health},
    {HTTP_HEAD, "/health", handle_health}, /* load balancers probe with HEAD; no body is sent */
    {HTTP_GET, "/metrics", handle_metrics},
    {HTTP_POST, "/v1/usage/check", gw_usage_check},
    {HTTP_GET, "/v1/usage/", gw_usage_get}, /* a path ending in '/' matches as a prefix */
};

static void on_request(struct http_req *req, void *ud)
{
    struct gateway *gw = ud;
    size_t plen = req->path_len;
    const char *q = memchr(req->path, '?', plen);
    if (q) {
        plen = (size_t)(q - req->path);
    }
    int path_known = 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t rlen = strlen(routes[i].path);
        int prefix = routes[i].path[rlen - 1] == '/';
        if (prefix ? plen <= rlen || memcmp(routes[i].path, req->path, rlen) != 0
                   : rlen != plen || memcmp(routes[i].path, req->path, plen) != 0) {
            continue;
        }
        path_known = 1;
        if (routes[i].method == req->method) {
            routes[i].handle(gw, req);
            return;
        }
    }
    char rid[37];
    px_uuid4(rid);
    struct gw_error err;
    if (path_known) {
        gw_error_set(&err, 405, "invalid_request_error", "method_not_allowed",
                     "method %s is not allowed on this path",
                     http_method_str((enum http_method)req->method));
    } else {
        /* The path is a view into the request head, not a C string: print only its bytes. */
        int shown = req->path_len > 200 ? 200 : (int)req->path_len;
        gw_error_set(&err, 404, "invalid_request_error", "unknown_url", "unknown URL: %.*s %.*s", 8,
                     http_method_str((enum http_method)req->method), shown, req->path);
    }
    gw_send_error(req, rid, &err);
}

int gateway_start(struct gateway **out, uv_loop_t *loop, const struct px_config *cfg,
                  struct usage_writer *usage, struct limiter *lim)
{
    struct gateway *gw = px_calloc(1, sizeof(*gw));
    gw->loop = loop;
    gw->cfg = cfg;
    gw->usage = usage;
    gw->lim = lim;
    gw->queue_max = cfg->queue_max;
    gw->queue_timeout_ms = cfg->queue_timeout_ms;
    gw->started_ms = px_mono_ms();
    gw->backends = px_calloc(cfg->nbackends, sizeof(*gw->backends));
    for (size_t i = 0; i < cfg->nbackends; i++) {
        gw->backends[i].cfg = &cfg->backends[i];
        gw->backends[i].ops =
            cfg->backends[i].protocol == PX_PROTO_OLLAMA ? &provider_ollama : &provider_openai;
    }
    int rc = upstream_client_new(&gw->up, loop);
    if (rc != 0) {
        goto fail_upstream;
    }
    gw->health = health_new(loop, cfg, gw->up);
    struct http_server_opts ho;
    http_server_opts_default(&ho);
    ho.header_max_bytes = cfg->header_max_bytes;
    ho.body_max_bytes = cfg->body_max_bytes;
    ho.header_timeout_ms = cfg->header_timeout_ms;
    ho.keepalive_timeout_ms = cfg->keepalive_timeout_ms;
    ho.body_timeout_ms = cfg->body_timeout_ms;
    rc = http_server_start(&gw->http, loop, cfg->listen, &ho, on_request, gw);
    if (rc != 0) {
        px_log(PX_LOG_ERROR, "event=listen_failed listen=%s error=\"%s\"", cfg->listen,
               px_strerror(rc));
        goto fail_http;
    }
    /* Answers end only once their usage row is spooled (chat.c): acks come back here. */
    if (usage_writer_bind_loop(usage, loop) != 0) {
        px_log(PX_LOG_WARN, "event=usage_ack_unavailable msg=\"answers will not wait for the "
                            "spool\"");
    }
    uv_timer_init(loop, &gw->queue_timer);
    gw->queue_timer.data = gw;
    uv_idle_init(loop, &gw->reap_idle);
    gw->reap_idle.data = gw;
    gw->metrics = metrics_new(cfg);
    gw->gpu = gpu_sampler_start(loop, cfg);
    *out = gw;
    return 0;
fail_http:
    health_free(gw->health);
    upstream_client_free(gw->up);
fail_upstream:
    free(gw->backends);
    free(gw);
    return rc;
}

int gateway_port(const struct gateway *gw)
{
    return http_server_port(gw->http);
}

size_t gateway_inflight(const struct gateway *gw)
{
    return gw->inflight;
}

void gateway_stop_accepting(struct gateway *gw)
{
    http_server_stop_accepting(gw->http);
}

static void on_reap_closed(uv_handle_t *h)
{
    struct gateway *gw = h->data;
    metrics_free(gw->metrics);
    free(gw->backends);
    free(gw);
}

static void on_queue_timer_closed(uv_handle_t *h)
{
    struct gateway *gw = h->data;
    uv_close((uv_handle_t *)&gw->reap_idle, on_reap_closed);
}

void gateway_free(struct gateway *gw)
{
    if (!gw) {
        return;
    }
    /* Unbind first: what ends from here on is answered at once, not after a spool ack. */
    usage_writer_unbind_loop(gw->usage);
    gw_chat_abort_all(gw);
    /* Relaying requests are aborted by the server (client side), which cancels upstream. */
    http_server_free(gw->http);
    gw_chat_reap(&gw->reap_idle);
    health_free(gw->health); /* cancels its probes: before the client they run on */
    gpu_sampler_stop(gw->gpu);
    upstream_client_free(gw->up);
    uv_timer_stop(&gw->queue_timer);
    uv_close((uv_handle_t *)&gw->queue_timer, on_queue_timer_closed);
}
