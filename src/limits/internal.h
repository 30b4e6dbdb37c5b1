#ifndef PX_LIMITS_INTERNAL_H
#define PX_LIMITS_INTERNAL_H

/* Shared between limits.c (tenant table, local decisions) and redis.c (shared mode). */

#include "limits/limits.h"
#include "usage/event.h"

struct lim_redis;

/* One admission waiting for Redis. Freed only when hiredis has called back (it always does,
 * with NULL on disconnect), whatever happened to the request meanwhile. */
struct lim_pending {
    struct limiter *l;
    char tenant[USAGE_ID_MAX + 1];
    struct lim_plan plan; /* copy; plan.tier is borrowed from the config */
    int64_t reserve;      /* tokens reserved */
    lim_admit_fn cb;
    void *ud;
    uint64_t deadline_ms;            /* uv_now() after which the policy answers instead */
    int answered;                    /* cb has fired (reply, timeout or shutdown) */
    int cancelled;                   /* the requester is gone: never call cb */
    int in_redis;                    /* a reply from hiredis is still due */
    struct lim_pending *prev, *next; /* the limiter's waiting list, oldest first */
};

/* Answer p from local state with the divisor the policy implies (degraded mode), or as
 * LIM_UNAVAILABLE when the policy is closed. */
void lim__fallback(struct limiter *l, struct lim_pending *p);
/* Answer p with a decision from Redis. */
void lim__answer(struct limiter *l, struct lim_pending *p, const struct lim_decision *d);
/* Remember the month-to-date figure Redis reported for a tenant. */
void lim__note_month(struct limiter *l, const char *tenant, int64_t used);
/* Drop p from the waiting list; free it if no reply is due. */
void lim__pending_release(struct limiter *l, struct lim_pending *p);
/* Visit every tenant's month-to-date usage (to seed Redis). */
void lim__each_month(struct limiter *l, void (*fn)(void *ud, const char *tenant, int64_t used),
                     void *ud);
/* Milliseconds until the next month starts (UTC): when a monthly refusal ends. */
int64_t lim__ms_to_next_month(void);
/* Current month as YYYYMM (UTC). */
int lim__month_key(void);

int lim_redis__new(struct lim_redis **out, struct limiter *l, uv_loop_t *loop,
                   const struct px_config *cfg);
/* Send p's check-and-reserve. 0 when sent (the answer comes later), or -1 when Redis is not
 * usable right now (the caller falls back at once). */
int lim_redis__admit(struct lim_redis *r, struct lim_pending *p);
void lim_redis__settle(struct lim_redis *r, const char *tenant, const struct lim_plan *p,
                       int64_t delta_tokens, int64_t actual_tokens);
int lim_redis__healthy(const struct lim_redis *r);
/* An admission went unanswered past redis_timeout_ms: degraded until the next answer. */
void lim_redis__timed_out(struct lim_redis *r);
void lim_redis__free(struct lim_redis *r);

#endif
