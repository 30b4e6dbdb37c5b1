#ifndef PX_LIMITS_LIMITS_H
#define PX_LIMITS_LIMITS_H

/* Plan limits per tenant: requests/minute and tokens/minute (GCRA, see bucket.h), max context,
 * and the monthly token allowance. Tokens are reserved at admission from the request's
 * estimate and settled with the real usage when it ends, so concurrent requests cannot
 * overshoot. Two modes:
 *  - local: state in this process (one node);
 *  - redis: state in one shared Redis, every check-and-reserve one atomic server-side script
 *    (EVALSHA), so N nodes together admit exactly the plan. If Redis fails or is slow, the
 *    `on_redis_error` policy applies: open = local limits divided by the node count
 *    (mode "degraded"), closed = 503. It reconnects by itself.
 * Loop thread only. */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"

struct limiter;
struct store;

/* The limits that apply to one tenant (its tier, with the tenant's overrides). */
struct lim_plan {
    const char *tier;           /* tier name (borrowed from the config) */
    int64_t rpm;                /* requests per minute */
    int64_t tpm;                /* tokens per minute */
    int64_t max_context;        /* prompt + completion ceiling per request */
    int64_t monthly_tokens;     /* monthly allowance */
    int64_t default_max_tokens; /* completion size assumed when a request sets none */
    int block_at_allowance;     /* 1: 429 at the allowance; 0: bill overage */
};

enum lim_verdict {
    LIM_ALLOW = 0,
    LIM_RPM = 1,         /* 429 rate_limit_exceeded */
    LIM_TPM = 2,         /* 429 tokens_per_minute_exceeded */
    LIM_MONTHLY = 3,     /* 429 monthly_quota_exceeded */
    LIM_UNAVAILABLE = 4, /* 503: shared limits unreachable and policy is closed */
};

/* A decision and the state to report in headers. */
struct lim_decision {
    enum lim_verdict verdict;
    int64_t retry_after_ms; /* when the refused request would fit */
    int64_t rpm_limit, rpm_remaining, rpm_reset_ms;
    int64_t tpm_limit, tpm_remaining, tpm_reset_ms;
    int64_t month_used; /* tokens used this month before this request */
    int64_t month_allowance;
    int overage; /* the tenant is past its allowance (billed as overage) */
    int warn;    /* at or past 80% of the allowance */
};

/* Called once with the decision: synchronously in local mode, from the loop in redis mode. */
typedef void (*lim_admit_fn)(void *ud, const struct lim_decision *d);

/* Create the limiter. Month-to-date usage per tenant is read from st (a blocking store query:
 * call at start-up, before serving). redis_url NULL or "" means local mode. */
int lim_new(struct limiter **out, uv_loop_t *loop, const struct px_config *cfg, struct store *st);
/* Free (pending admissions are answered first, as LIM_UNAVAILABLE); closes Redis. */
void lim_free(struct limiter *l);

/* The limits for a tenant on a tier. */
void lim_plan_for(const struct px_config *cfg, const char *tenant, size_t tier,
                  struct lim_plan *out);

/* Check and reserve one request of reserve_tokens for tenant. cb fires exactly once, unless
 * lim_admit_cancel() is called first with the returned handle (NULL when cb already fired). */
struct lim_pending *lim_admit(struct limiter *l, const char *tenant, const struct lim_plan *p,
                              int64_t reserve_tokens, lim_admit_fn cb, void *ud);
void lim_admit_cancel(struct lim_pending *pending);

/* The request ended: replace its reservation with the real token count (refund or charge
 * the difference) and add the real count to the month. */
void lim_settle(struct limiter *l, const char *tenant, const struct lim_plan *p,
                int64_t reserved_tokens, int64_t actual_tokens);

/* The tenant's current state without taking anything (for headers on rejected requests). */
void lim_peek(struct limiter *l, const char *tenant, const struct lim_plan *p,
              struct lim_decision *out);

/* "local", "redis" or "degraded". */
const char *lim_mode(const struct limiter *l);

#endif
