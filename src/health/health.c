#include "health/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

struct backend_health {
    int fails;                  /* failures in the current window */
    uint64_t window_start_ms;   /* when the first of those failures happened */
    uint64_t down_until_ms;     /* 0 when up; else when the trial may start */
    int trial_taken;            /* the trial request is in flight */
    int64_t last_check_unix_ms; /* last probe or report */
    char last_error[160];       /* why it last failed */
    struct upstream_req *probe; /* the probe in flight, or NULL */
    int probe_status;           /* HTTP status of the probe in flight */
    struct health *h;           /* back pointer for probe callbacks */
    size_t idx;                 /* index of this backend */
};

struct health {
    uv_loop_t *loop;
    const struct px_config *cfg;
    struct upstream_client *up;
    struct backend_health *b; /* cfg->nbackends entries */
    uv_timer_t timer;         /* probe period */
    int closing;
};

static void mark_down(struct health *h, size_t i, uint64_t now_ms, const char *why)
{
    struct backend_health *bh = &h->b[i];
    const struct px_backend_cfg *bc = &h->cfg->backends[i];
    if (bh->down_until_ms == 0) {
        px_log(PX_LOG_WARN,
               "backend=%s event=backend_down fails=%d fail_timeout_ms=%llu why=\"%s\"", bc->name,
               bh->fails, (unsigned long long)bc->fail_timeout_ms, why);
    }
    bh->down_until_ms = now_ms + bc->fail_timeout_ms;
    bh->trial_taken = 0;
    bh->fails = 0;
}

static void mark_up(struct health *h, size_t i)
{
    struct backend_health *bh = &h->b[i];
    if (bh->down_until_ms != 0) {
        px_log(PX_LOG_INFO, "backend=%s event=backend_up", h->cfg->backends[i].name);
    }
    bh->down_until_ms = 0;
    bh->trial_taken = 0;
    bh->fails = 0;
    bh->last_error[0] = '\0';
}

enum health_state health_state(struct health *h, size_t b, uint64_t now_ms)
{
    const struct backend_health *bh = &h->b[b];
    if (bh->down_until_ms == 0) {
        return HEALTH_UP;
    }
    return now_ms >= bh->down_until_ms ? HEALTH_TRIAL : HEALTH_DOWN;
}

int health_usable(struct health *h, size_t b, uint64_t now_ms)
{
    switch (health_state(h, b, now_ms)) {
    case HEALTH_UP:
        return 1;
    case HEALTH_TRIAL:
        /* One request at a time tests a backend coming back. */
        return !h->b[b].trial_taken;
    default:
        return 0;
    }
}

void health_claim(struct health *h, size_t b, uint64_t now_ms)
{
    if (health_state(h, b, now_ms) == HEALTH_TRIAL) {
        h->b[b].trial_taken = 1;
    }
}

void health_report(struct health *h, size_t b, int ok, uint64_t now_ms)
{
    struct backend_health *bh = &h->b[b];
    const struct px_backend_cfg *bc = &h->cfg->backends[b];
    bh->last_check_unix_ms = px_now_ms();
    if (ok) {
        mark_up(h, b);
        return;
    }
    if (bh->down_until_ms != 0) {
        /* The trial failed (or a request that started before the backend went down): stay
         * down for another fail_timeout. */
        snprintf(bh->last_error, sizeof(bh->last_error), "a request failed while down or on trial");
        mark_down(h, b, now_ms, bh->last_error);
        return;
    }
    if (bh->fails == 0 || now_ms - bh->window_start_ms > bc->fail_timeout_ms) {
        bh->fails = 0;
        bh->window_start_ms = now_ms;
    }
    ++bh->fails;
    snprintf(bh->last_error, sizeof(bh->last_error), "%d failed request(s) within %llu ms",
             bh->fails, (unsigned long long)bc->fail_timeout_ms);
    if (bh->fails >= bc->max_fails) {
        mark_down(h, b, now_ms, bh->last_error);
    }
}

const char *health_state_name(enum health_state s)
{
    return s == HEALTH_UP ? "up" : s == HEALTH_DOWN ? "down" : "trial";
}

int64_t health_last_check_ms(struct health *h, size_t b)
{
    return h->b[b].last_check_unix_ms;
}

const char *health_last_error(struct health *h, size_t b)
{
    return h->b[b].last_error;
}

/* ---- active probes ---- */

static void on_probe_head(void *ud, int status)
{
    struct backend_health *bh = ud;
    bh->probe_status = status;
}

static int on_probe_data(void *ud, const char *data, size_t n)
{
    (void)ud;
    (void)data;
    (void)n;
    return 0; /* the body does not matter, only that the server answers 2xx */
}

static void on_probe_done(void *ud, int err, int status, const char *msg)
{
    struct backend_health *bh = ud;
    struct health *h = bh->h;
    bh->probe = NULL;
    bh->last_check_unix_ms = px_now_ms();
    int s = bh->probe_status ? bh->probe_status : status;
    if (err == 0 && s >= 200 && s < 300) {
        mark_up(h, bh->idx);
    } else {
        if (err != 0) {
            snprintf(bh->last_error, sizeof(bh->last_error), "probe: %s", msg);
        } else {
            snprintf(bh->last_error, sizeof(bh->last_error), "probe: HTTP %d", s);
        }
        mark_down(h, bh->idx, uv_now(h->loop), bh->last_error);
    }
}

static void probe(struct health *h, size_t i)
{
    const struct px_backend_cfg *bc = &h->cfg->backends[i];
    if (h->b[i].probe) {
        return; /* the previous probe is still running (slow backend) */
    }
    const char *path = bc->health_path
                           ? bc->health_path
                           : (bc->protocol == PX_PROTO_OLLAMA ? "/api/tags" : "/v1/models");
    char url[2400];
    snprintf(url, sizeof(url), "%s%s", bc->url, path);
    struct backend_health *bh = &h->b[i];
    bh->probe_status = 0;
    struct upstream_req_opts o = {
        .url = url,
        .connect_timeout_ms = h->cfg->health_timeout_ms,
        .first_byte_timeout_ms = h->cfg->health_timeout_ms,
        .idle_timeout_ms = h->cfg->health_timeout_ms,
        .on_head = on_probe_head,
        .on_data = on_probe_data,
        .on_done = on_probe_done,
        .ud = bh,
    };
    bh->probe = upstream_req_start(h->up, &o);
}

static void on_timer(uv_timer_t *t)
{
    struct health *h = t->data;
    for (size_t i = 0; i < h->cfg->nbackends; i++) {
        probe(h, i);
    }
}

struct health *health_new(uv_loop_t *loop, const struct px_config *cfg, struct upstream_client *up)
{
    struct health *h = px_calloc(1, sizeof(*h));
    h->loop = loop;
    h->cfg = cfg;
    h->up = up;
    h->b = px_calloc(cfg->nbackends ? cfg->nbackends : 1, sizeof(*h->b));
    for (size_t i = 0; i < cfg->nbackends; i++) {
        h->b[i].h = h;
        h->b[i].idx = i;
    }
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    if (cfg->health_interval_ms > 0) {
        /* First probe right away so a dead backend is known before traffic finds it. */
        uv_timer_start(&h->timer, on_timer, 0, cfg->health_interval_ms);
    }
    return h;
}

static void on_timer_closed(uv_handle_t *t)
{
    struct health *h = t->data;
    free(h->b);
    free(h);
}

void health_free(struct health *h)
{
    if (!h) {
        return;
    }
    for (size_t i = 0; i < h->cfg->nbackends; i++) {
        if (h->b[i].probe) {
            upstream_req_cancel(h->b[i].probe);
            h->b[i].probe = NULL;
        }
    }
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_timer_closed);
}
