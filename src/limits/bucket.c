#include "limits/bucket.h"

void lim_rate_init(struct lim_rate *r, int64_t per_minute)
{
    r->limit = per_minute < 1 ? 1 : per_minute;
    r->interval_ns = LIM_WINDOW_NS / r->limit;
    if (r->interval_ns < 1) {
        r->interval_ns = 1;
    }
}

/* The bucket never holds more than a minute: a TAT in the past means "full". */
static int64_t base(int64_t tat_ns, int64_t now_ns)
{
    return tat_ns > now_ns ? tat_ns : now_ns;
}

/* Bucket capacity in ns: limit whole units (interval * limit, not LIM_WINDOW_NS, so that
 * exactly `limit` units fit whatever the rounding of interval). */
static int64_t capacity_ns(const struct lim_rate *r)
{
    return r->interval_ns * r->limit;
}

int64_t lim_gcra_wait_ns(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns, int64_t cost)
{
    if (cost <= 0) {
        return 0;
    }
    if (cost > r->limit) {
        cost = r->limit; /* more than a minute's worth fits only into a full bucket */
    }
    int64_t after = base(tat_ns, now_ns) + cost * r->interval_ns;
    int64_t over = after - now_ns - capacity_ns(r);
    return over > 0 ? over : 0;
}

int64_t lim_gcra_take(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns, int64_t cost)
{
    int64_t t = base(tat_ns, now_ns) + cost * r->interval_ns;
    return t < now_ns ? now_ns : t;
}

int64_t lim_gcra_remaining(int64_t tat_ns, const struct lim_rate *r, int64_t now_ns)
{
    int64_t room = capacity_ns(r) - (base(tat_ns, now_ns) - now_ns);
    return room > 0 ? room / r->interval_ns : 0;
}

int64_t lim_gcra_reset_ns(int64_t tat_ns, int64_t now_ns)
{
    return tat_ns > now_ns ? tat_ns - now_ns : 0;
}
