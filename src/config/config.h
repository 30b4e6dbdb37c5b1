#ifndef PX_CONFIG_CONFIG_H
#define PX_CONFIG_CONFIG_H

/* The gateway's configuration: parsed from YAML (libfyaml) into an immutable struct.
 * Loading goes parse -> validate everything -> build the struct; the first error is reported
 * as "FILE:LINE: message" and nothing is returned. See docs/internals/config.md for every
 * key, its type, default and bounds. */

#include <stddef.h>
#include <stdint.h>

#define PX_CONFIG_ID_MAX 128 /* bytes of a tenant id (the API contract's X-Tenant-ID cap) */

enum px_protocol {
    PX_PROTO_OLLAMA = 0, /* Ollama native API, /api/chat (NDJSON streaming) */
    PX_PROTO_OPENAI,     /* OpenAI-compatible, /v1/chat/completions (vLLM, Ollama /v1, ...) */
};

enum px_gpu_source {
    PX_GPU_AUTO = 0, /* NVML when libnvidia-ml.so.1 loads, else command, else file, else none */
    PX_GPU_NVML,     /* NVML only (figures unknown when the library is missing) */
    PX_GPU_COMMAND,  /* gpu.command's output */
    PX_GPU_FILE,     /* gpu.file's contents */
    PX_GPU_NONE,     /* no GPU figures */
};

enum px_overage {
    PX_OVERAGE_BILL = 0, /* go on past the monthly allowance; rows are billed as overage */
    PX_OVERAGE_BLOCK,    /* 429 monthly_quota_exceeded at the allowance */
};

struct px_token_cfg {
    char *id;                 /* logged as api_key_id */
    unsigned char sha256[32]; /* SHA-256 of the token (from token, token_env or token_sha256) */
};

struct px_backend_cfg {
    char *name;                /* unique name, referenced by models */
    char *url;                 /* base URL without trailing slash, e.g. http://127.0.0.1:11434 */
    enum px_protocol protocol; /* wire protocol spoken by the backend */
    int gpu_id;                /* GPU index recorded in usage rows; -1 when unknown */
    int max_concurrency;       /* requests in flight at once on this backend, >= 1 */
    int weight;                /* relative share for balancing, >= 1 (default 1) */
    int backup;                /* 1: serve only while no primary is healthy */
    int max_fails;             /* failures within fail_timeout_ms that mark it down (nginx) */
    uint64_t fail_timeout_ms;  /* failure window, and how long it then stays down */
    char *health_path;         /* active probe path; default /api/tags (ollama), /v1/models */
    int provider_kind;         /* usage rows' provider: 0 auto, 1 ollama, 2 vllm, 3 openai */
};

struct px_model_cfg {
    char *name;             /* the name clients send */
    char *upstream_model;   /* the name sent to the backend (defaults to name) */
    size_t *backends;       /* indexes into px_config.backends */
    size_t nbackends;       /* >= 1 */
    int64_t context_window; /* the model's own context limit in tokens, 0 = unknown */
};

struct px_tier_cfg {
    char *name;                     /* starter | pro | enterprise, or as configured */
    int64_t rpm;                    /* requests per minute, >= 1 */
    int64_t tpm;                    /* tokens per minute, >= 1 */
    int64_t max_context;            /* prompt + max_tokens ceiling, >= 1 */
    int64_t monthly_tokens;         /* monthly allowance, >= 1 (never unlimited) */
    int64_t default_max_tokens;     /* assumed completion size when the request sets none */
    int64_t price_pence;            /* monthly base price in pence (GBP) */
    int64_t overage_pence_per_mtok; /* overage price per 1M tokens, in pence (default 500) */
    enum px_overage overage;        /* bill or block at the allowance */
    int priority; /* queue priority, higher first (starter 0, pro 1, enterprise 2) */
};

struct px_tenant_cfg {
    char *id;    /* X-Tenant-ID value */
    size_t tier; /* index into px_config.tiers: the pinned tier when pinned,
                    else default_tier */
    int pinned;  /* 1: tier was set in the file and wins over X-Plan-Tier;
                    0: only limits are overridden, the header picks the tier */
    int64_t rpm, tpm, max_context, monthly_tokens; /* per-tenant overrides, 0 = the tier's */
};

struct px_config {
    char *path;     /* the file this was loaded from */
    char *node_id;  /* default: hostname */
    char *listen;   /* "host:port", default 127.0.0.1:8000 */
    char *data_dir; /* default ./data */

    struct px_token_cfg *tokens;
    size_t ntokens; /* >= 1 */
    struct px_backend_cfg *backends;
    size_t nbackends; /* >= 1 */
    struct px_model_cfg *models;
    size_t nmodels;            /* >= 1 */
    struct px_tier_cfg *tiers; /* defaults from PRODUCT.md when the file has no tiers: */
    size_t ntiers;
    size_t default_tier; /* tier used when no X-Plan-Tier and no pin (default starter) */
    struct px_tenant_cfg *tenants;
    size_t ntenants;

    char *sqlite_path;      /* store.sqlite, default <data_dir>/usage.db */
    int retention_months;   /* store.retention_months: months kept by privax migrate, default 18 */
    char *ch_url;           /* store.clickhouse.url (http://host:port); NULL = SQLite store */
    char *ch_database;      /* store.clickhouse.database, default "privax" */
    char *ch_user;          /* store.clickhouse.user, default "default" */
    char *ch_password_env;  /* store.clickhouse.password_env: env var with the password */
    uint64_t ch_timeout_ms; /* store.clickhouse.timeout_ms: one HTTP request, default 30000 */

    /* http: */
    size_t header_max_bytes;       /* default 16384 */
    size_t body_max_bytes;         /* default 4 MiB */
    uint64_t header_timeout_ms;    /* default 10000 */
    uint64_t keepalive_timeout_ms; /* default 75000 */
    uint64_t body_timeout_ms;      /* whole request body allowed this long, default 60000 */
    /* timeouts: */
    uint64_t connect_timeout_ms;    /* default 5000 */
    uint64_t first_byte_timeout_ms; /* default 120000 (a model load can be slow) */
    uint64_t idle_timeout_ms;       /* max gap between upstream chunks, default 60000 */
    uint64_t shutdown_timeout_ms;   /* SIGTERM grace for in-flight requests, default 30000 */
    /* limits: */
    char *redis_url;           /* limits.redis: redis://[:pw@]host:port[/db]; NULL = local */
    int on_redis_error;        /* limits.on_redis_error: 0 open (default), 1 closed */
    int64_t limits_nodes;      /* limits.nodes: node count; degraded mode divides limits by it */
    uint64_t redis_timeout_ms; /* limits.redis_timeout_ms: slower answers count as failures */
    char *redis_prefix;        /* limits.key_prefix, default "privax" */
    /* queue: */
    size_t queue_max;            /* queue.max_length: requests waiting for a slot, default 1024 */
    uint64_t queue_timeout_ms;   /* queue.timeout_ms: longest wait for a slot, default 30000 */
    int access_log;              /* log.access: one line per request on stderr, default true */
    uint64_t health_interval_ms; /* health.interval_ms: active probe period, 0 = off */
    uint64_t health_timeout_ms;  /* health.timeout_ms: a probe slower than this failed */
    int max_tries;               /* routing.max_tries: backends tried per request, >= 1 */
    /* usage: */
    uint64_t usage_flush_ms;      /* writer batch interval, default 100 */
    size_t usage_batch_max;       /* rows per store insert, default 10000 */
    uint64_t spool_fsync_ms;      /* usage.spool_fsync_ms: group commit interval, default 100 */
    uint64_t spool_max_bytes;     /* usage.spool_max_bytes: spool size cap, default 1 GiB */
    size_t usage_memory_max_rows; /* usage.memory_max_rows: rows held in memory while the
                                     spool is full, default 100000 */
    /* gpu: where GPU figures come from (docs/internals/metrics.md) */
    int gpu_source;           /* gpu.source: enum px_gpu_source, default auto */
    char *gpu_command;        /* gpu.command: shell command printing one line per GPU */
    char *gpu_file;           /* gpu.file: a file in that format */
    uint64_t gpu_interval_ms; /* gpu.interval_ms: sampling period, default 2000 */
    uint64_t gpu_timeout_ms;  /* gpu.timeout_ms: a command running longer is killed, 5000 */
    size_t gpu_history;       /* gpu.history: utilisation samples kept per GPU, default 150 */
    /* scale: privax scale's thresholds and cost model (docs/internals/scale.md) */
    int64_t scale_gpu_pct;         /* scale.gpu_util_pct: sustained GPU utilisation, 80 */
    uint64_t scale_gpu_window_s;   /* scale.gpu_window_s: "sustained" means this long, 300 */
    int64_t scale_queue_ms;        /* scale.queue_p95_ms: hourly p95 queue wait, 5000 */
    int64_t scale_monthly_tokens;  /* scale.monthly_tokens: tokens this month, 100M */
    int64_t scale_users;           /* scale.concurrent_users: peak distinct users, 25 */
    int64_t scale_window_days;     /* scale.window_days: queue and users look back, 7 */
    int64_t scale_regular_pct;     /* scale.regular_pct: share of active hours = "regularly" */
    int64_t scale_node_cost_cents; /* scale.node_cost_usd: one node per month, $300 */
    int64_t scale_node_tokens;     /* scale.node_tokens: one node's tokens per month, 130M */
    int64_t scale_node_users;      /* scale.node_users: one node's concurrent users, 25 */
    int64_t scale_breakeven_pence; /* scale.breakeven_gbp: revenue per node to break even, 500 */
};

/* Load and validate path. On success 0 and *out (free with px_config_free). On failure
 * PX_ECONFIG with "FILE:LINE: message" in err (errcap bytes, NUL-terminated). */
int px_config_load(const char *path, struct px_config **out, char *err, size_t errcap);

/* Free a config; NULL is a no-op. */
void px_config_free(struct px_config *cfg);

/* Lookups: index or -1. */
long px_config_model(const struct px_config *cfg, const char *name, size_t len);
long px_config_tier(const struct px_config *cfg, const char *name, size_t len);
long px_config_tenant(const struct px_config *cfg, const char *id, size_t len);
long px_config_backend(const struct px_config *cfg, const char *name, size_t len);

#endif
