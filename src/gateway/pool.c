/* Backend choice: among the model's backends with a free slot, the one with the fewest
 * requests in flight relative to its weight (least-connections, weighted). Backup backends
 * are used only when the model has no primary. A backend never gets more than its
 * max_concurrency: the rest wait in the gateway's queue. */
#include "gateway/internal.h"

long gw_pool_pick(struct gateway *gw, size_t model)
{
    const struct px_model_cfg *m = &gw->cfg->models[model];
    int have_primary = 0;
    for (size_t i = 0; i < m->nbackends; i++) {
        have_primary |= !gw->backends[m->backends[i]].cfg->backup;
    }
    long best = -1;
    /* Compare inflight_a / weight_a < inflight_b / weight_b without division. */
    long best_load = 0, best_weight = 1;
    for (size_t i = 0; i < m->nbackends; i++) {
        struct gw_backend *b = &gw->backends[m->backends[i]];
        if ((have_primary && b->cfg->backup) || b->inflight >= b->cfg->max_concurrency) {
            continue;
        }
        long w = b->cfg->weight > 0 ? b->cfg->weight : 1;
        if (best < 0 || (long)b->inflight * best_weight < best_load * w) {
            best = (long)m->backends[i];
            best_load = b->inflight;
            best_weight = w;
        }
    }
    return best;
}
