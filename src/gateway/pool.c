/* Backend choice: among the model's usable backends (health up, or due for a trial) that
 * have a free slot and were not tried already for this request, the one with the fewest
 * requests in flight relative to its weight (weighted least-connections). Backup backends
 * serve only while no primary is usable. A backend never gets more than its
 * max_concurrency: the rest wait in the gateway's queue. */
#include "gateway/internal.h"

#include "core/util.h"
#include "health/health.h"

static int skipped(size_t b, const long *skip, int nskip)
{
    for (int i = 0; i < nskip; i++) {
        if (skip[i] == (long)b) {
            return 1;
        }
    }
    return 0;
}

/* Does any non-skipped backend of the model pass `usable` for the given backup class? */
static int any_usable(struct gateway *gw, const struct px_model_cfg *m, int backup,
                      const long *skip, int nskip, uint64_t now)
{
    for (size_t i = 0; i < m->nbackends; i++) {
        size_t b = m->backends[i];
        if (gw->backends[b].cfg->backup == backup && !skipped(b, skip, nskip) &&
            health_state(gw->health, b, now) != HEALTH_DOWN) {
            return 1;
        }
    }
    return 0;
}

long gw_pool_pick(struct gateway *gw, size_t model, const long *skip, int nskip)
{
    const struct px_model_cfg *m = &gw->cfg->models[model];
    uint64_t now = px_mono_ms();
    int primaries = any_usable(gw, m, 0, skip, nskip, now);
    if (!primaries && !any_usable(gw, m, 1, skip, nskip, now)) {
        return GW_POOL_NONE_HEALTHY;
    }
    long best = -1;
    long best_load = 0, best_weight = 1;
    for (size_t i = 0; i < m->nbackends; i++) {
        size_t b = m->backends[i];
        struct gw_backend *be = &gw->backends[b];
        if (be->cfg->backup == primaries || skipped(b, skip, nskip) ||
            be->inflight >= be->cfg->max_concurrency || !health_usable(gw->health, b, now)) {
            continue;
        }
        long w = be->cfg->weight > 0 ? be->cfg->weight : 1;
        /* inflight_a / w_a < inflight_b / w_b, without division. */
        if (best < 0 || (long)be->inflight * best_weight < best_load * w) {
            best = (long)b;
            best_load = be->inflight;
            best_weight = w;
        }
    }
    if (best >= 0) {
        health_claim(gw->health, (size_t)best, now);
    }
    return best >= 0 ? best : GW_POOL_BUSY;
}
