#ifndef PX_OPS_PROMTEXT_H
#define PX_OPS_PROMTEXT_H

/* Reading values out of a Prometheus text exposition (what a node's /metrics serves), for
 * privax scale. Only samples are read: comments and malformed lines are skipped. Pure; any
 * thread. */

#include <stddef.h>

/* Sum the values of every sample called name whose labels include each pair of match
 * (a NULL-terminated list "label", "value", ..., or NULL for no condition). Label values are
 * compared after unescaping. Returns the number of samples summed (0 when none: *sum is then
 * 0). */
size_t ops_prom_sum(const char *text, size_t len, const char *name, const char *const *match,
                    double *sum);

#endif
