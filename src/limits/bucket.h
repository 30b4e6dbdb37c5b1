#ifndef PX_LIMITS_BUCKET_H
#define PX_LIMITS_BUCKET_H

/* GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a limit of L
 * per minute emits one unit every T = 60 s / L, and a tenant idle for a minute may take all L
 * at once (the bucket holds a minute's worth), then refills continuously. No fixed window, so
 * there is no 2x burst at a minute boundary. State is the theoretical arrival time (TAT): the
 * moment the bucket would be full again. All times in nanoseconds of one monotonic clock, so
 * the maths is exact integers; the clock is passed in, so tests step it by hand. */

#include <stdint.h>

#define LIM_WINDOW_NS 60000000000LL /* one minute: the bucket holds this much time */

struct lim_rate {
    int64_t limit;       /* units per minute, >= 1 */
    int64_t interval_ns; /* nanoseconds one unit costs: LIM_WINDOW_NS / limit */
};

/* Set up a rate of per_minute units (clamped to >= 1). */
void lim_rate_init(struct lim_rate *r, int64_t per_minute);

/* 0 when taking cost units at now_ns fits; otherwise the nanoseconds until it would. */
int64_t lim_gcra_wait_ns(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns, int64_t cost);

/* The TAT after taking cost units at now_ns (cost may be negative: a refund, which never
 * credits more than a full bucket). */
int64_t lim_gcra_take(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns, int64_t cost);

/* Units that could be taken at now_ns. */
int64_t lim_gcra_remaining(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns);

/* Nanoseconds until the bucket is full again. */
int64_t lim_gcra_reset_ns(int64_t tat_ns, int64_t now_ns);

#endif
