#ifndef PX_METRICS_METRICS_H
#define PX_METRICS_METRICS_H

/* Prometheus metrics for GET /metrics: counters and histograms fed by every finished request
 * (one call per usage row), plus point-in-time gauges the gateway passes in when it renders.
 *
 * Labels are bounded by the config, never by what clients send: tier, model and backend are
 * the configured names (anything else is counted under "_other"; a request that reached no
 * backend has backend="none"), status is the HTTP status code. Tenant and user ids are never
 * labels. Everything here runs on the loop thread. Exposition format and the list of metric
 * families: docs/internals/metrics.md. */

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/buf.h"
#include "gpu/gpu.h"
#include "usage/event.h"

#define METRICS_SERIES_MAX 20000 /* request series kept; beyond, counted under "_other" */

struct metrics;

/* One backend as the gateway sees it at render time. */
struct metrics_backend {
    const char *name;    /* configured name (borrowed) */
    int up;              /* 1 serving, 0 marked down or on trial */
    int inflight;        /* requests holding a slot */
    int max_concurrency; /* slots */
};

/* The point-in-time values of one render. Pointers are borrowed for the call. */
struct metrics_gauges {
    const char *node_id;                    /* the node's id */
    const char *version;                    /* privax version */
    uint64_t uptime_s;                      /* seconds since start */
    uint64_t inflight;                      /* chat requests queued or relaying */
    uint64_t queue_length;                  /* requests waiting for a backend slot */
    uint64_t queue_oldest_ms;               /* wait of the oldest of them, 0 when none */
    const struct metrics_backend *backends; /* nbackends entries */
    size_t nbackends;
    uint64_t usage_backlog;         /* usage rows not yet committed to the store */
    int64_t usage_last_commit_ms;   /* unix ms of the last commit, 0 when none yet */
    uint64_t usage_spool_bytes;     /* the local spool's size on disk */
    uint64_t usage_spool_max_bytes; /* its cap (0: unknown, not rendered) */
    uint64_t usage_shipped;         /* rows the store confirmed since start */
    uint64_t usage_ship_failures;   /* failed store attempts since start */
    uint64_t usage_dropped;         /* rows lost since start (spool full past the memory cap) */
    int usage_store_up;             /* 1 when the last store attempt succeeded, 0 when not */
    const char *limits_mode;        /* lim_mode(): local | redis | degraded ... */
    const char *gpu_source;         /* gpu_sampler_source() */
    const struct gpu_reading *gpus; /* current readings (unknown figures are -1) */
    size_t ngpus;                   /* entries in gpus (0 when unknown) */
    uint64_t gpu_samples_ok;        /* successful GPU samples since start */
    uint64_t gpu_samples_failed;    /* failed GPU samples since start */
};

/* New, empty metrics whose labels are bounded by cfg (borrowed; must outlive them). */
struct metrics *metrics_new(const struct px_config *cfg);
/* NULL is a no-op. */
void metrics_free(struct metrics *m);

/* Count one finished request (ev borrowed for the call): requests and tokens by tier, model,
 * backend and status; latency and TTFT by model for requests that reached a backend; queue
 * wait by tier for requests that reached a backend or waited in the queue. */
void metrics_observe(struct metrics *m, const struct usage_event *ev);

/* Count one limit check (admission decision) that took us microseconds; mode is lim_mode()
 * when the decision came ("local", "redis"; anything else is counted as "degraded"). */
void metrics_observe_limits(struct metrics *m, const char *mode, uint64_t us);

/* Append the whole exposition (text format 0.0.4) to out. 0, or PX_EOVERFLOW when out's cap
 * is too small (out then holds a truncated text: do not serve it). */
int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct buf *out);

/* Append s escaped as a label value (backslash, double quote and newline escaped). 0 or
 * PX_EOVERFLOW. */
int metrics_escape_label(struct buf *out, const char *s);

/* Requests observed in total (for tests and logs). */
uint64_t metrics_requests(const struct metrics *m);

#endif
