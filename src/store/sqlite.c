/* The embedded usage store: one SQLite file, table llm_requests (PRODUCT.md "Usage rows").
 *
 * Design note. The file is opened in WAL mode with synchronous=NORMAL: readers (privax usage,
 * the start-up month-to-date query) never block the writer, and a commit costs one fsync of
 * the WAL at checkpoint time instead of one per transaction; a power cut can lose the last
 * few committed batches but never corrupts the file. busy_timeout lets two processes share
 * the file without SQLITE_BUSY on every overlap.
 *
 * Idempotence: request_id is UNIQUE and rows go in with INSERT OR IGNORE, so a batch that is
 * re-sent after an ambiguous failure (the commit landed but we did not learn it) is not
 * counted twice. A batch is one transaction through one prepared statement: all rows or none.
 *
 * Schema changes are numbered migrations (table migrations[] below), each applied once in
 * its own transaction and recorded in schema_migrations(version, applied_at).
 *
 * The p95 latency is exact nearest-rank (the ceil(0.95 n)-th smallest value): a second query
 * returns each tenant's latencies in order and C picks the rank while stepping, in O(1)
 * memory. Both queries run in one read transaction so they see the same rows. */
#include "store/store.h"

#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

#define SQLITE_BUSY_TIMEOUT_MS 5000   /* wait this long for another process's lock */
#define SQLITE_ROWS_MAX        100000 /* tenants returned by one usage query */

struct store_sqlite {
    struct store base;   /* must be first: a struct store * is a struct store_sqlite * */
    sqlite3 *db;         /* the connection; used by one thread at a time */
    sqlite3_stmt *ins;   /* prepared INSERT OR IGNORE, reused for every row */
    char errmsg[256];    /* last failure, for store_errmsg() */
    int version_at_open; /* schema version the file had when opened (0: new) */
    int steps_applied;   /* migration steps applied by this open */
};

static const struct {
    int version; /* schema version this step reaches */
    const char *sql;
} migrations[] = {
    {1, "CREATE TABLE llm_requests ("
        " id INTEGER PRIMARY KEY,"
        " event_time INTEGER NOT NULL," /* ms since the epoch, UTC */
        " request_id TEXT NOT NULL UNIQUE,"
        " tenant_id TEXT NOT NULL,"
        " user_id TEXT NOT NULL DEFAULT '',"
        " api_key_id TEXT NOT NULL DEFAULT '',"
        " plan_tier TEXT NOT NULL DEFAULT '',"
        " model_name TEXT NOT NULL DEFAULT '',"
        " provider TEXT NOT NULL DEFAULT '',"
        " backend TEXT NOT NULL DEFAULT '',"
        " request_type TEXT NOT NULL DEFAULT '',"
        " stream INTEGER NOT NULL DEFAULT 0,"
        " prompt_tokens INTEGER NOT NULL DEFAULT 0,"
        " completion_tokens INTEGER NOT NULL DEFAULT 0,"
        " total_tokens INTEGER NOT NULL DEFAULT 0,"
        " usage_estimated INTEGER NOT NULL DEFAULT 0,"
        " queue_ms INTEGER NOT NULL DEFAULT 0,"
        " ttft_ms INTEGER NOT NULL DEFAULT -1,"
        " latency_ms INTEGER NOT NULL DEFAULT 0,"
        " status_code INTEGER NOT NULL DEFAULT 0,"
        " success INTEGER NOT NULL DEFAULT 0,"
        " error_code TEXT NOT NULL DEFAULT '',"
        " input_chars INTEGER NOT NULL DEFAULT 0,"
        " output_chars INTEGER NOT NULL DEFAULT 0,"
        " gpu_id INTEGER NOT NULL DEFAULT -1,"
        " node_id TEXT NOT NULL DEFAULT '',"
        " overage INTEGER NOT NULL DEFAULT 0"
        ");"
        "CREATE INDEX llm_requests_tenant_time ON llm_requests (tenant_id, event_time);"
        "CREATE INDEX llm_requests_time ON llm_requests (event_time);"},
    /* v2: a row's identity is its spool record (spool_id, spool_seq), not request_id, which
     * the client chooses: two requests that reuse one X-Request-ID are two billable rows.
     * SQLite cannot drop a UNIQUE constraint, so the table is rebuilt. Rows from v1 keep
     * spool_seq = 0 (outside the unique index). */
    {2, "CREATE TABLE llm_requests_v2 ("
        " id INTEGER PRIMARY KEY,"
        " event_time INTEGER NOT NULL,"
        " request_id TEXT NOT NULL,"
        " tenant_id TEXT NOT NULL,"
        " user_id TEXT NOT NULL DEFAULT '',"
        " api_key_id TEXT NOT NULL DEFAULT '',"
        " plan_tier TEXT NOT NULL DEFAULT '',"
        " model_name TEXT NOT NULL DEFAULT '',"
        " provider TEXT NOT NULL DEFAULT '',"
        " backend TEXT NOT NULL DEFAULT '',"
        " request_type TEXT NOT NULL DEFAULT '',"
        " stream INTEGER NOT NULL DEFAULT 0,"
        " prompt_tokens INTEGER NOT NULL DEFAULT 0,"
        " completion_tokens INTEGER NOT NULL DEFAULT 0,"
        " total_tokens INTEGER NOT NULL DEFAULT 0,"
        " usage_estimated INTEGER NOT NULL DEFAULT 0,"
        " queue_ms INTEGER NOT NULL DEFAULT 0,"
        " ttft_ms INTEGER NOT NULL DEFAULT -1,"
        " latency_ms INTEGER NOT NULL DEFAULT 0,"
        " status_code INTEGER NOT NULL DEFAULT 0,"
        " success INTEGER NOT NULL DEFAULT 0,"
        " error_code TEXT NOT NULL DEFAULT '',"
        " input_chars INTEGER NOT NULL DEFAULT 0,"
        " output_chars INTEGER NOT NULL DEFAULT 0,"
        " gpu_id INTEGER NOT NULL DEFAULT -1,"
        " node_id TEXT NOT NULL DEFAULT '',"
        " overage INTEGER NOT NULL DEFAULT 0,"
        " spool_id INTEGER NOT NULL DEFAULT 0,"
        " spool_seq INTEGER NOT NULL DEFAULT 0"
        ");"
        "INSERT INTO llm_requests_v2 SELECT *, 0, 0 FROM llm_requests;"
        "DROP TABLE llm_requests;"
        "ALTER TABLE llm_requests_v2 RENAME TO llm_requests;"
        "CREATE INDEX llm_requests_tenant_time ON llm_requests (tenant_id, event_time);"
        "CREATE INDEX llm_requests_time ON llm_requests (event_time);"
        "CREATE INDEX llm_requests_request_id ON llm_requests (request_id);"
        "CREATE UNIQUE INDEX llm_requests_spool ON llm_requests (spool_id, spool_seq)"
        " WHERE spool_seq != 0;"},
};

#define SQLITE_SCHEMA_VERSION 2 /* the last step of migrations[] */

static const char insert_sql[] =
    "INSERT OR IGNORE INTO llm_requests (event_time, request_id, tenant_id, user_id, api_key_id,"
    " plan_tier, model_name, provider, backend, request_type, stream, prompt_tokens,"
    " completion_tokens, total_tokens, usage_estimated, queue_ms, ttft_ms, latency_ms,"
    " status_code, success, error_code, input_chars, output_chars, gpu_id, node_id, overage,"
    " spool_id, spool_seq)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
    " ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)";

/* The grouping expressions, by enum store_group. */
static const char *const group_expr[] = {
    [STORE_BY_TENANT] = "tenant_id",
    [STORE_BY_NODE] = "node_id",
    [STORE_BY_MODEL] = "model_name",
    [STORE_BY_DAY] = "strftime('%Y-%m-%d', event_time / 1000, 'unixepoch')",
};

/* ?3 NULL selects every tenant. plan_tier is the tier of the tenant's latest successful row
 * in the period (a tenant may have changed plan mid-month; the latest is what it pays now; a
 * refused request naming some other tier must not decide the bill), else of its latest row;
 * rows in the same millisecond are broken by the greater tier name, as ClickHouse's argMax
 * over (success, time, tier) does, so both stores give one answer. %s is the grouping
 * expression. */
static const char agg_fmt[] =
    "SELECT %s AS k, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),"
    " SUM(total_tokens), SUM(success = 0), AVG(latency_ms),"
    " SUM(CASE WHEN overage != 0 THEN total_tokens ELSE 0 END),"
    " %s"
    " FROM llm_requests r WHERE event_time >= ?1 AND event_time < ?2"
    " AND (?3 IS NULL OR tenant_id = ?3) GROUP BY k ORDER BY k";

static const char tier_sub[] =
    "(SELECT t.plan_tier FROM llm_requests t WHERE t.tenant_id = r.tenant_id"
    "   AND t.event_time >= ?1 AND t.event_time < ?2"
    "   ORDER BY t.success DESC, t.event_time DESC, t.plan_tier DESC LIMIT 1)";

static const char lat_fmt[] =
    "SELECT %s AS k, latency_ms FROM llm_requests WHERE event_time >= ?1 AND event_time < ?2"
    " AND (?3 IS NULL OR tenant_id = ?3) ORDER BY k, latency_ms";

static int sq_fail(struct store_sqlite *s, const char *what)
{
    snprintf(s->errmsg, sizeof(s->errmsg), "%s: %s", what, sqlite3_errmsg(s->db));
    return PX_ESTORE;
}

static int sq_exec(struct store_sqlite *s, const char *sql, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(s->errmsg, sizeof(s->errmsg), "%s: %s", what, msg ? msg : "?");
        sqlite3_free(msg);
        return PX_ESTORE;
    }
    return 0;
}

/* mkdir -p of the directory part of path (nothing when path has no '/'). */
static int make_parent_dirs(const char *path)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(dir)) {
        return -ENAMETOOLONG;
    }
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir) {
        return 0;
    }
    *slash = '\0';
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p != '/') {
            continue;
        }
        *p = '\0';
        if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
            return -errno;
        }
        *p = '/';
    }
    if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
        return -errno;
    }
    return 0;
}

/* Apply every migration newer than the file's version, each in its own transaction. */
static int sq_migrate(struct store_sqlite *s)
{
    int rc = sq_exec(s,
                     "CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                     "create schema_migrations");
    if (rc < 0) {
        return rc;
    }
    for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
        sqlite3_stmt *st = NULL;
        int have = 0;
        /* BEGIN IMMEDIATE takes the write lock before the check, so two processes opening
         * a new file at once cannot both apply the same step. */
        if ((rc = sq_exec(s, "BEGIN IMMEDIATE", "begin migration")) < 0) {
            return rc;
        }
        if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM schema_migrations WHERE version = ?1", -1, &st,
                               NULL) != SQLITE_OK) {
            rc = sq_fail(s, "check migration");
            goto rollback;
        }
        sqlite3_bind_int(st, 1, migrations[i].version);
        have = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        st = NULL;
        if (have && (int)migrations[i].version > s->version_at_open) {
            s->version_at_open = migrations[i].version;
        }
        if (!have) {
            s->steps_applied++;
            char rec[128];
            snprintf(rec, sizeof(rec),
                     "INSERT INTO schema_migrations (version, applied_at) VALUES (%d, %lld)",
                     migrations[i].version, (long long)px_now_ms());
            if ((rc = sq_exec(s, migrations[i].sql, "migration")) < 0 ||
                (rc = sq_exec(s, rec, "record migration")) < 0) {
                goto rollback;
            }
        }
        if ((rc = sq_exec(s, "COMMIT", "commit migration")) < 0) {
            goto rollback;
        }
        continue;
    rollback:
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return 0;
}

static void sq_close(struct store *st)
{
    struct store_sqlite *s = (struct store_sqlite *)st;
    if (s == NULL) {
        return;
    }
    sqlite3_finalize(s->ins);
    sqlite3_close(s->db);
    free(s);
}

static int sq_open(struct store **out, const struct px_config *cfg, char *err, size_t errcap)
{
    const char *path = cfg->sqlite_path;
    struct store_sqlite *s = px_calloc(1, sizeof(*s));
    int rc;

    *out = NULL;
    s->base.ops = &store_sqlite_ops;
    if ((rc = make_parent_dirs(path)) < 0) {
        snprintf(err, errcap, "%s: cannot create its directory: %s", path, px_strerror(rc));
        goto fail;
    }
    /* NOMUTEX: the writer's handle is used by one thread at a time (start-up, then the
     * shipper; store.h), so SQLite's own lock around every call (28 binds, a step and a reset
     * per row) buys nothing. */
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errcap, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        rc = PX_ESTORE;
        goto fail;
    }
    sqlite3_busy_timeout(s->db, SQLITE_BUSY_TIMEOUT_MS);
    if ((rc = sq_exec(s, "PRAGMA journal_mode=WAL", "journal_mode")) < 0 ||
        (rc = sq_exec(s, "PRAGMA synchronous=NORMAL", "synchronous")) < 0 ||
        (rc = sq_migrate(s)) < 0) {
        snprintf(err, errcap, "%s: %s", path, s->errmsg);
        goto fail;
    }
    if (sqlite3_prepare_v3(s->db, insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &s->ins, NULL) !=
        SQLITE_OK) {
        rc = sq_fail(s, "prepare insert");
        snprintf(err, errcap, "%s: %s", path, s->errmsg);
        goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_close(&s->base);
    return rc;
}

static int bind_row(sqlite3_stmt *st, const struct usage_event *e)
{
    int rc = 0;
    rc |= sqlite3_bind_int64(st, 1, e->event_time_ms);
    rc |= sqlite3_bind_text(st, 2, e->request_id, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 3, e->tenant_id, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 4, e->user_id, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 5, e->api_key_id, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 6, e->plan_tier, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 7, e->model_name, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 8, e->provider, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 9, e->backend, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_text(st, 10, e->request_type, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_int(st, 11, e->stream);
    rc |= sqlite3_bind_int64(st, 12, e->prompt_tokens);
    rc |= sqlite3_bind_int64(st, 13, e->completion_tokens);
    rc |= sqlite3_bind_int64(st, 14, e->total_tokens);
    rc |= sqlite3_bind_int(st, 15, e->usage_estimated);
    rc |= sqlite3_bind_int64(st, 16, e->queue_ms);
    rc |= sqlite3_bind_int64(st, 17, e->ttft_ms);
    rc |= sqlite3_bind_int64(st, 18, e->latency_ms);
    rc |= sqlite3_bind_int(st, 19, e->status_code);
    rc |= sqlite3_bind_int(st, 20, e->success);
    rc |= sqlite3_bind_text(st, 21, e->error_code, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_int64(st, 22, e->input_chars);
    rc |= sqlite3_bind_int64(st, 23, e->output_chars);
    rc |= sqlite3_bind_int(st, 24, e->gpu_id);
    rc |= sqlite3_bind_text(st, 25, e->node_id, -1, SQLITE_STATIC);
    rc |= sqlite3_bind_int(st, 26, e->overage);
    rc |= sqlite3_bind_int64(st, 27, (int64_t)e->spool_id);
    rc |= sqlite3_bind_int64(st, 28, (int64_t)e->spool_seq);
    return rc == SQLITE_OK ? 0 : PX_ESTORE;
}

static int sq_insert(struct store *st, struct usage_event *const *rows, size_t n)
{
    struct store_sqlite *s = (struct store_sqlite *)st;
    int rc;
    if (n == 0) {
        return 0;
    }
    if ((rc = sq_exec(s, "BEGIN IMMEDIATE", "begin")) < 0) {
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(s->ins);
        if (bind_row(s->ins, rows[i]) < 0) {
            rc = sq_fail(s, "bind");
            goto rollback;
        }
        if (sqlite3_step(s->ins) != SQLITE_DONE) {
            rc = sq_fail(s, "insert");
            goto rollback;
        }
    }
    sqlite3_reset(s->ins);
    sqlite3_clear_bindings(s->ins);
    if ((rc = sq_exec(s, "COMMIT", "commit")) < 0) {
        goto rollback;
    }
    return 0;
rollback:
    sqlite3_reset(s->ins);
    sqlite3_clear_bindings(s->ins);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static void bind_query(sqlite3_stmt *st, const struct store_usage_query *q)
{
    sqlite3_bind_int64(st, 1, q->since_ms);
    sqlite3_bind_int64(st, 2, q->until_ms);
    if (q->tenant_id != NULL) {
        sqlite3_bind_text(st, 3, q->tenant_id, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 3);
    }
}

static void copy_text(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* Fill p95_latency_ms of rows[] (ordered by key) from the ordered latencies. */
static int sq_p95(struct store_sqlite *s, const struct store_usage_query *q,
                  struct store_usage_row *rows, size_t nrows)
{
    sqlite3_stmt *st = NULL;
    char sql[512];
    snprintf(sql, sizeof(sql), lat_fmt, group_expr[q->by]);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        return sq_fail(s, "prepare latency query");
    }
    bind_query(st, q);
    size_t r = 0;    /* current group in rows[] */
    int64_t pos = 0; /* 0-based rank within that group */
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        key = key ? key : "";
        while (r < nrows && strcmp(rows[r].key, key) != 0) {
            r++;
            pos = 0;
        }
        if (r == nrows) {
            break;
        }
        /* Nearest rank: the ceil(0.95 n)-th smallest, i.e. 0-based index ceil(0.95 n) - 1. */
        int64_t want = (rows[r].requests * 95 + 99) / 100 - 1;
        if (pos == want) {
            rows[r].p95_latency_ms = (double)sqlite3_column_int64(st, 1);
        }
        pos++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        return sq_fail(s, "latency query");
    }
    return 0;
}

/* The aggregate query, then (with_p95) the latency ranks, in one read transaction so both see
 * the same snapshot of the WAL. */
static int sq_aggregate(struct store *stp, const struct store_usage_query *q, int with_p95,
                        struct store_usage_row **out, size_t *nout)
{
    struct store_sqlite *s = (struct store_sqlite *)stp;
    sqlite3_stmt *st = NULL;
    struct store_usage_row *rows = NULL;
    size_t n = 0;
    size_t cap = 0;
    char sql[1024];
    int rc;

    *out = NULL;
    *nout = 0;
    if ((unsigned)q->by > STORE_BY_DAY) {
        snprintf(s->errmsg, sizeof(s->errmsg), "unknown grouping %d", (int)q->by);
        return PX_ESTORE;
    }
    snprintf(sql, sizeof(sql), agg_fmt, group_expr[q->by],
             q->by == STORE_BY_TENANT ? tier_sub : "''");
    if ((rc = sq_exec(s, "BEGIN", "begin read")) < 0) {
        return rc;
    }
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        rc = sq_fail(s, "prepare usage query");
        goto done;
    }
    bind_query(st, q);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == SQLITE_ROWS_MAX) {
            snprintf(s->errmsg, sizeof(s->errmsg), "more than %d groups", SQLITE_ROWS_MAX);
            rc = PX_EOVERFLOW;
            goto done;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            rows = px_realloc(rows, cap * sizeof(*rows));
        }
        struct store_usage_row *r = &rows[n++];
        memset(r, 0, sizeof(*r));
        copy_text(r->key, sizeof(r->key), sqlite3_column_text(st, 0));
        if (q->by == STORE_BY_TENANT) {
            copy_text(r->tenant_id, sizeof(r->tenant_id), sqlite3_column_text(st, 0));
        } else if (q->tenant_id != NULL) {
            snprintf(r->tenant_id, sizeof(r->tenant_id), "%s", q->tenant_id);
        }
        r->requests = sqlite3_column_int64(st, 1);
        r->prompt_tokens = sqlite3_column_int64(st, 2);
        r->completion_tokens = sqlite3_column_int64(st, 3);
        r->total_tokens = sqlite3_column_int64(st, 4);
        r->errors = sqlite3_column_int64(st, 5);
        r->avg_latency_ms = with_p95 ? sqlite3_column_double(st, 6) : 0;
        r->overage_tokens = sqlite3_column_int64(st, 7);
        copy_text(r->plan_tier, sizeof(r->plan_tier), sqlite3_column_text(st, 8));
    }
    if (rc != SQLITE_DONE) {
        rc = sq_fail(s, "usage query");
        goto done;
    }
    if (with_p95 && (rc = sq_p95(s, q, rows, n)) < 0) {
        goto done;
    }
    *out = rows;
    *nout = n;
    rows = NULL;
    rc = 0;
done:
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    free(rows);
    return rc;
}

static int sq_usage(struct store *stp, const struct store_usage_query *q,
                    struct store_usage_row **out, size_t *nout)
{
    return sq_aggregate(stp, q, 1, out, nout);
}

/* SQLite has no aggregate tables: totals come from the raw rows, like usage. */
static int sq_totals(struct store *stp, const struct store_usage_query *q,
                     struct store_usage_row **out, size_t *nout)
{
    return sq_aggregate(stp, q, 0, out, nout);
}

/* Reports only: read-only, no schema change, so a report never takes the write lock. */
static int sq_open_reader(struct store **out, const struct px_config *cfg, char *err, size_t errcap)
{
    const char *path = cfg->sqlite_path;
    struct store_sqlite *s = px_calloc(1, sizeof(*s));
    *out = NULL;
    s->base.ops = &store_sqlite_ops;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errcap, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        sq_close(&s->base);
        return PX_ESTORE;
    }
    sqlite3_busy_timeout(s->db, SQLITE_BUSY_TIMEOUT_MS);
    *out = &s->base;
    return 0;
}

/* The schema is migrated by open; this reports the version and applies retention. */
static int sq_migrate_op(struct store *stp, const struct px_config *cfg,
                         struct store_migrate_result *res)
{
    struct store_sqlite *s = (struct store_sqlite *)stp;
    sqlite3_stmt *st = NULL;
    memset(res, 0, sizeof(*res));
    res->version_before = s->version_at_open;
    res->version_after = SQLITE_SCHEMA_VERSION;
    res->statements = s->steps_applied;
    res->retention_cut_ms = store_month_start_ms(px_now_ms(), cfg->retention_months);
    if (sqlite3_prepare_v2(s->db, "DELETE FROM llm_requests WHERE event_time < ?1", -1, &st,
                           NULL) != SQLITE_OK) {
        return sq_fail(s, "prepare retention");
    }
    sqlite3_bind_int64(st, 1, res->retention_cut_ms);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return sq_fail(s, "retention");
    }
    res->removed = sqlite3_changes64(s->db);
    return 0;
}

static const char *sq_errmsg(struct store *st)
{
    return ((struct store_sqlite *)st)->errmsg;
}

/* Rows in arrival order (privax scale), one read transaction, stepping the index on
 * event_time; nothing is held in memory but the current row. */
static int sq_scan(struct store *stp, const struct store_usage_query *q, store_scan_fn fn, void *ud)
{
    struct store_sqlite *s = (struct store_sqlite *)stp;
    static const char sql[] =
        "SELECT event_time, latency_ms, queue_ms, total_tokens, status_code, tenant_id, user_id,"
        " backend FROM llm_requests WHERE event_time >= ?1 AND event_time < ?2"
        " AND (?3 IS NULL OR tenant_id = ?3) ORDER BY event_time, id";
    sqlite3_stmt *st = NULL;
    int rc;
    if ((rc = sq_exec(s, "BEGIN", "begin read")) < 0) {
        return rc;
    }
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        rc = sq_fail(s, "prepare scan");
        goto done;
    }
    bind_query(st, q);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 5), *u = sqlite3_column_text(st, 6),
                            *b = sqlite3_column_text(st, 7);
        struct store_scan_row r = {
            .event_time_ms = sqlite3_column_int64(st, 0),
            .latency_ms = sqlite3_column_int64(st, 1),
            .queue_ms = sqlite3_column_int64(st, 2),
            .total_tokens = sqlite3_column_int64(st, 3),
            .status_code = sqlite3_column_int(st, 4),
            .tenant_id = t ? (const char *)t : "",
            .user_id = u ? (const char *)u : "",
            .backend = b ? (const char *)b : "",
        };
        if ((rc = fn(ud, &r)) != 0) {
            goto done;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : sq_fail(s, "scan");
done:
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    return rc;
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .open_reader = sq_open_reader,
    .insert = sq_insert,
    .landed = NULL, /* INSERT OR IGNORE on the spool identity: re-sending is harmless */
    .usage = sq_usage,
    .totals = sq_totals,
    .migrate = sq_migrate_op,
    .close = sq_close,
    .errmsg = sq_errmsg,
    .scan = sq_scan,
};
