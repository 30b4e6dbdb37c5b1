#ifndef PX_OPS_SCALE_H
#define PX_OPS_SCALE_H

/* privax scale's arithmetic: the seed's four "add a node" triggers and the cost table for N
 * and N+1 nodes, from figures gathered elsewhere (nodes' /health and /metrics, the usage
 * store). Pure: no I/O, any thread, so every rule is unit-tested with exact numbers. The
 * rules, with their reasons, are in docs/internals/scale.md:
 *
 *   gpu         each GPU's sustained level over the window is the 10th percentile of its
 *               utilisation samples (busy at least that much 90% of the time), known when at
 *               least 80% of the window's samples are; the value is the mean over every GPU
 *               with a known level; it triggers above scale.gpu_util_pct.
 *   queue       for each hour of the window with traffic, the nearest-rank p95 of queue_ms;
 *               it triggers when hours over scale.queue_p95_ms are at least regular_pct of
 *               those hours.
 *   tokens      tokens this calendar month (UTC); triggers above scale.monthly_tokens.
 *   users       for each hour with traffic, the peak number of distinct users (tenant + user
 *               id) with a request in flight; triggers like queue, over
 *               scale.concurrent_users. */

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* Set cfg's scale.* fields to their defaults (the config table's), for a run without
 * --config. Nothing else in cfg is touched. */
void scale_config_defaults(struct px_config *cfg);

/* ------------------------------------------------------------------------------------------
 * GPU: one utilisation history */

/* hist[0..n) is a utilisation history in percent, oldest first, one sample per interval_ms,
 * -1 for an unknown sample. Over the last window_s seconds (the last ceil(window_s * 1000 /
 * interval_ms) samples): *level = the nearest-rank 10th percentile of the known samples and
 * *known = their number. Returns 0, or -1 when fewer than 80% of the window's samples are
 * known (the history is too short or has gaps): *level is then -1. */
int scale_gpu_level(const double *hist, size_t n, uint64_t interval_ms, uint64_t window_s,
                    double *level, size_t *known);

/* ------------------------------------------------------------------------------------------
 * The store scan: usage rows in event_time order */

struct scale_row {
    int64_t event_time_ms; /* arrival */
    int64_t latency_ms;    /* arrival to end */
    int64_t queue_ms;      /* wait for a backend slot */
    int served;            /* 1: it reached a backend or waited in the queue */
    const char *tenant_id; /* borrowed for the call */
    const char *user_id;   /* borrowed; "" is the tenant's anonymous user */
};

struct scale_scan;

/* A scan accumulator for rows with queue limit queue_ms and user limit users. */
struct scale_scan *scale_scan_new(int64_t queue_ms, int64_t users);
/* Feed one row; rows must come in event_time order (else PX_EPARSE, the row is ignored). */
int scale_scan_add(struct scale_scan *s, const struct scale_row *r);

struct scale_scan_result {
    int64_t rows;                 /* rows fed that were served */
    int64_t hours;                /* hours with at least one served row */
    int64_t queue_hours_over;     /* hours whose p95 queue_ms is over the limit */
    int64_t worst_queue_p95_ms;   /* the largest hourly p95 */
    int64_t users_hours_over;     /* hours whose peak concurrent users is over the limit */
    int64_t peak_users;           /* the largest number of users in flight at once */
    int64_t distinct_users;       /* distinct (tenant, user) pairs seen */
    int64_t queue_regular_p95_ms; /* hourly p95 reached in >= regular_pct of the hours */
    int64_t users_regular_peak;   /* hourly peak reached in >= regular_pct of the hours */
};

/* Finish (the last hour) and read the results, the "regular" values for regular_pct
 * (1..100); the scan may not be fed afterwards. */
void scale_scan_finish(struct scale_scan *s, int64_t regular_pct, struct scale_scan_result *out);
/* NULL is a no-op. */
void scale_scan_free(struct scale_scan *s);

/* ------------------------------------------------------------------------------------------
 * Revenue, the way `privax bill` counts it */

struct scale_tenant_usage {
    const char *tenant_id; /* borrowed */
    const char *plan_tier; /* tier of the tenant's latest row this month */
    int64_t total_tokens;  /* this month */
    int64_t requests;      /* this month */
    int64_t errors;        /* of them refused or failed */
};

/* This month's revenue in pence, counted the way privax bill counts it: each tenant with usage
 * pays its tier's price_gbp, plus overage_gbp_per_million pro rata for the tokens over its
 * allowance when the tier bills overage (rounded to the penny); tenants pinned to a tier in
 * the config pay its price even without usage. Tier and allowance come from
 * store_tenant_plan() (pinned tier, else the tier of the latest row, else default_tier;
 * the tenant's monthly_tokens override, else the tier's). *base and *overage (may be NULL)
 * get the parts. */
int64_t scale_revenue_pence(const struct px_config *cfg, const struct scale_tenant_usage *t,
                            size_t n, int64_t *base, int64_t *overage);

/* ------------------------------------------------------------------------------------------
 * The report */

enum scale_verdict {
    SCALE_NO = 0,  /* below the threshold */
    SCALE_YES,     /* over it: a reason to add a node */
    SCALE_UNKNOWN, /* no data (no GPU figures, no store) */
};

struct scale_trigger {
    const char *key;   /* gpu_utilization | queue_delay | monthly_tokens | concurrent_users */
    const char *label; /* human label, e.g. "GPU utilisation (sustained)" */
    const char *unit;  /* "%", "ms", "tokens", "users" */
    double value;      /* measured (meaningless when verdict is UNKNOWN) */
    double threshold;  /* from the config */
    enum scale_verdict verdict;
    char detail[200]; /* how the value was reached, one line */
};

struct scale_capacity {
    int64_t nodes;           /* N or N + 1 */
    int64_t cost_cents;      /* nodes x node_cost_usd, in US cents per month */
    int64_t tokens;          /* nodes x node_tokens per month */
    int64_t users;           /* nodes x node_users concurrent */
    int64_t breakeven_pence; /* nodes x breakeven_gbp per month */
    double tokens_used_pct;  /* projected monthly tokens / capacity x 100 */
    int64_t revenue_pence;   /* this month's revenue (the same on both rows) */
    int covered;             /* revenue >= breakeven */
};

struct scale_inputs {
    int64_t nodes; /* nodes in the inventory (N) */
    /* GPU: */
    size_t gpus_known;    /* GPUs with a known sustained level */
    double gpu_level_sum; /* sum of those levels (percent) */
    size_t gpus_total;    /* GPUs reported at all */
    /* Store (store_known = 0 when no store was read): */
    int store_known;
    int64_t month_tokens;     /* tokens this month so far */
    int64_t month_elapsed_ms; /* from the month's start to now */
    int64_t month_length_ms;  /* the whole month */
    int64_t revenue_pence;    /* this month's revenue so far */
    int scan_known;           /* 1 when the scan ran (the store supports it) */
    struct scale_scan_result scan;
    int64_t window_days; /* the scan's window */
};

struct scale_report {
    struct scale_trigger t[4];    /* gpu, queue, tokens, users */
    int add_node;                 /* 1 when any trigger says YES */
    int64_t projected_tokens;     /* month_tokens scaled to the whole month */
    struct scale_capacity cap[2]; /* N and N + 1 */
};

/* Evaluate the triggers and the cost table with cfg's scale figures. */
void scale_evaluate(const struct px_config *cfg, const struct scale_inputs *in,
                    struct scale_report *out);

const char *scale_verdict_name(enum scale_verdict v);

#endif
