#ifndef PX_STORE_STORE_H
#define PX_STORE_STORE_H

/* The usage store: where usage rows land and where reports read them. One ops struct per
 * backend (SQLite embedded, ClickHouse shared), the curl vtls model. Every function may block
 * on disk or network: call it only from the usage writer thread or from a CLI command, never
 * from the event loop. */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "usage/event.h"

struct store;

/* What report rows are grouped by. */
enum store_group {
    STORE_BY_TENANT = 0, /* tenant_id (key = tenant_id; plan_tier is set) */
    STORE_BY_NODE,       /* node_id, the seed's per-node distribution query */
    STORE_BY_MODEL,      /* model_name */
    STORE_BY_DAY,        /* UTC day of event_time, key "YYYY-MM-DD" */
};

/* An aggregate for one group over one period. */
struct store_usage_row {
    char key[USAGE_ID_MAX + 1];       /* the group's value (see enum store_group) */
    char tenant_id[USAGE_ID_MAX + 1]; /* BY_TENANT: = key; otherwise the query's tenant or "" */
    char plan_tier[33];               /* BY_TENANT: tier of the tenant's latest row; else "" */
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
    enum store_group by;   /* grouping, default by tenant */
};

/* What a migration run did (privax migrate). */
struct store_migrate_result {
    int version_before;       /* schema version found (0: none) */
    int version_after;        /* schema version now */
    int statements;           /* DDL statements sent */
    int64_t retention_cut_ms; /* rows and partitions before this time were removed */
    int64_t removed;          /* SQLite: rows deleted; ClickHouse: partitions dropped */
};

/* One row as a scan hands it out: the columns privax scale's hourly figures need. Strings
 * are borrowed for the callback only. */
struct store_scan_row {
    int64_t event_time_ms; /* arrival, ms since the epoch */
    int64_t latency_ms;    /* arrival to end */
    int64_t queue_ms;      /* wait for a backend slot */
    int64_t total_tokens;  /* prompt + completion */
    int status_code;       /* HTTP status given to the client */
    const char *tenant_id;
    const char *user_id;
    const char *backend; /* "" when the request reached no backend */
};

/* Called for each row of a scan; a non-zero return stops the scan and is its result. */
typedef int (*store_scan_fn)(void *ud, const struct store_scan_row *row);

/* insert's answer when the batch certainly did not reach the store (no connection): it can
 * be sent again without asking what landed. */
#define STORE_ENOTSENT (-ENOTCONN)

struct store_ops {
    const char *name;
    /* Open for the usage writer (SQLite: creating the schema if needed; ClickHouse: no
     * network I/O, so a store that is down does not stop a start-up). */
    int (*open)(struct store **out, const struct px_config *cfg, char *err, size_t errcap);
    /* Open for reports only (SQLite: read-only, no schema change; may be NULL = open). */
    int (*open_reader)(struct store **out, const struct px_config *cfg, char *err, size_t errcap);
    /* Insert n rows. Rows are identified by (spool_id, spool_seq): the SQLite store skips a
     * row it already has, so a re-sent batch is harmless; ClickHouse does not (see landed).
     * 0, STORE_ENOTSENT (nothing reached the store), or PX_ESTORE (failed; some or all rows
     * may have landed). */
    int (*insert)(struct store *st, struct usage_event *const *rows, size_t n);
    /* Which of rows[0..n) are already stored (by spool_id, spool_seq): present[i] = 1 or 0.
     * First waits until a previous insert that failed ambiguously is no longer running on the
     * server. 0 or PX_ESTORE. NULL when insert itself skips stored rows. */
    int (*landed)(struct store *st, struct usage_event *const *rows, size_t n,
                  unsigned char *present);
    /* Aggregates over raw rows, exact (ClickHouse: FINAL): one row per group, ordered by key,
     * with average and nearest-rank p95 latency. *rows is malloc'd (free()). */
    int (*usage)(struct store *st, const struct store_usage_query *q, struct store_usage_row **rows,
                 size_t *nrows);
    /* Totals only (no latency figures) for BY_TENANT or BY_DAY, from the daily/monthly
     * aggregate tables where the store has them: what billing and the usage API read.
     * since/until should be whole UTC days. Same contract as usage. */
    int (*totals)(struct store *st, const struct store_usage_query *q,
                  struct store_usage_row **rows, size_t *nrows);
    /* Bring the schema to the newest version (idempotent) and apply retention. */
    int (*migrate)(struct store *st, const struct px_config *cfg, struct store_migrate_result *res);
    void (*close)(struct store *st);
    /* Text of the last failure on st, for logs (borrowed, valid until the next call on st).
     * May be NULL in an ops struct that keeps no message. */
    const char *(*errmsg)(struct store *st);
    /* Every raw row of q's period (and tenant, when set; q->by is ignored) in event_time
     * order, handed to fn. 0, fn's non-zero result, or PX_ESTORE. May be NULL: the store
     * cannot list rows (privax scale then reports those figures as unknown). */
    int (*scan)(struct store *st, const struct store_usage_query *q, store_scan_fn fn, void *ud);
};

/* The store configured in cfg (SQLite unless store.clickhouse is configured). */
const struct store_ops *store_ops_for(const struct px_config *cfg);

/* Check that every field of a row fits the llm_requests column types (docs/internals/
 * usage_store.md): times, counters and ids in range, strings NUL-terminated UTF-8. 0, or
 * PX_EPARSE with a reason naming the field in why (whycap bytes). A row that fails is never
 * sent (ClickHouse 18.16 wraps out-of-range integers silently). Pure; any thread. */
int store_row_check(const struct usage_event *ev, char *why, size_t whycap);

/* Open cfg's store for reports (open_reader, else open). Same contract as the ops. */
int store_open_reader(const struct px_config *cfg, struct store **out, char *err, size_t errcap);

/* 1 when a tenant's rows for a month make it a customer to bill: it has a tenant id, and at
 * least one of its requests succeeded or it is pinned to a tier in config. Rows without a
 * tenant (the header was missing or refused) and ids whose every request was refused (a typo)
 * are not billed. privax bill and privax scale's revenue both use this rule. */
int store_tenant_billable(const struct px_config *cfg, const char *tenant, int64_t requests,
                          int64_t errors);

/* The plan that applies to tenant: a tier pinned in config wins, else tier_name when it is a
 * configured tier, else the default tier. *allowance is the tenant's monthly_tokens override,
 * else that tier's. Returns the tier's index in cfg->tiers (cfg has at least one tier). */
size_t store_tenant_plan(const struct px_config *cfg, const char *tenant, const char *tier_name,
                         int64_t *allowance);

/* Pence for tokens over the allowance at pence_per_mtok per million, pro rata, rounded to the
 * nearest penny (halves up). */
int64_t store_overage_pence(int64_t overage_tokens, int64_t pence_per_mtok);

/* First ms of the UTC month that is months before the month holding now_ms (months = 0:
 * that month's start). */
int64_t store_month_start_ms(int64_t now_ms, int months_back);

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
static inline int store_totals(struct store *st, const struct store_usage_query *q,
                               struct store_usage_row **rows, size_t *nrows)
{
    return st->ops->totals(st, q, rows, nrows);
}
/* -ENOSYS when the store has no scan op. */
static inline int store_scan(struct store *st, const struct store_usage_query *q, store_scan_fn fn,
                             void *ud)
{
    return st->ops->scan ? st->ops->scan(st, q, fn, ud) : -ENOSYS;
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
extern const struct store_ops store_clickhouse_ops;

#endif
