#ifndef PX_STORE_STORE_H
#define PX_STORE_STORE_H

/* The usage store: where usage rows land and where reports read them. One ops struct per
 * backend (SQLite embedded, ClickHouse shared), the curl vtls model. Every function may block
 * on disk or network: call it only from the usage writer thread or from a CLI command, never
 * from the event loop. */

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "usage/event.h"

struct store;

/* A per-tenant aggregate for one period. */
struct store_usage_row {
    char tenant_id[USAGE_ID_MAX + 1];
    char plan_tier[33];
    int64_t requests;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int64_t errors;         /* rows with success = 0 */
    double avg_latency_ms;  /* mean of latency_ms */
    double p95_latency_ms;  /* nearest-rank 95th percentile of latency_ms */
    int64_t overage_tokens; /* total_tokens of rows marked overage (billed past allowance) */
};

struct store_usage_query {
    const char *tenant_id; /* NULL for all tenants */
    int64_t since_ms;      /* inclusive, event_time_ms */
    int64_t until_ms;      /* exclusive */
};

struct store_ops {
    const char *name;
    /* Open (creating the schema if needed). */
    int (*open)(struct store **out, const struct px_config *cfg, char *err, size_t errcap);
    /* Insert n rows atomically (all or none). 0 or PX_ESTORE. */
    int (*insert)(struct store *st, struct usage_event *const *rows, size_t n);
    /* Per-tenant aggregates, ordered by tenant_id. *rows is malloc'd (free()). */
    int (*usage)(struct store *st, const struct store_usage_query *q, struct store_usage_row **rows,
                 size_t *nrows);
    void (*close)(struct store *st);
    /* Text of the last failure on st, for logs (borrowed, valid until the next call on st).
     * May be NULL in an ops struct that keeps no message. */
    const char *(*errmsg)(struct store *st);
};

/* The store configured in cfg (SQLite unless another is configured). */
const struct store_ops *store_ops_for(const struct px_config *cfg);

/* Convenience wrappers over the ops of an open store. */
struct store {
    const struct store_ops *ops;
};
static inline int store_insert(struct store *st, struct usage_event *const *rows, size_t n)
{
    return st->ops->insert(st, rows, n);
}
static inline int store_usage(struct store *st, const struct store_usage_query *q,
                              struct store_usage_row **rows, size_t *nrows)
{
    return st->ops->usage(st, q, rows, nrows);
}
/* Close st; NULL is a no-op. */
static inline void store_close(struct store *st)
{
    if (st != NULL) {
        st->ops->close(st);
    }
}
static inline const char *store_errmsg(struct store *st)
{
    return st->ops->errmsg ? st->ops->errmsg(st) : "";
}

extern const struct store_ops store_sqlite_ops;

#endif
