/* Choosing the store backend from the config, and helpers shared by the backends. SQLite is
 * the default; a store.clickhouse section selects the shared ClickHouse store. */
#include "store/store.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/util.h"

/* Ranges of the llm_requests columns (ClickHouse types in parentheses). */
#define RANGE_TIME_MS_MAX 4294967295999LL    /* DateTime is u32 seconds; + ms in the second */
#define RANGE_COUNT_MAX   1000000000000000LL /* tokens and chars (UInt64, kept < 2^53) */
#define RANGE_U32_MAX     4294967295LL       /* queue_ms, latency_ms (UInt32) */
#define RANGE_I32_MAX     2147483647LL       /* ttft_ms (Int32, -1 = none) */

/* An X-macro list (clang-format 14 reflows these unstably, so it is left alone). */
/* clang-format off */
#define CHECK_STR_FIELDS(X)                                                                        \
    X(request_id) X(tenant_id) X(user_id) X(api_key_id) X(plan_tier) X(model_name)                 \
    X(provider) X(backend) X(request_type) X(error_code) X(node_id)
/* clang-format on */

const struct store_ops *store_ops_for(const struct px_config *cfg)
{
    return cfg->ch_url != NULL ? &store_clickhouse_ops : &store_sqlite_ops;
}

int store_open_reader(const struct px_config *cfg, struct store **out, char *err, size_t errcap)
{
    const struct store_ops *ops = store_ops_for(cfg);
    return ops->open_reader ? ops->open_reader(out, cfg, err, errcap)
                            : ops->open(out, cfg, err, errcap);
}

int store_tenant_billable(const struct px_config *cfg, const char *tenant, int64_t requests,
                          int64_t errors)
{
    if (tenant[0] == '\0') {
        return 0;
    }
    long ten = px_config_tenant(cfg, tenant, strlen(tenant));
    return errors < requests || (ten >= 0 && cfg->tenants[ten].pinned);
}

size_t store_tenant_plan(const struct px_config *cfg, const char *tenant, const char *tier_name,
                         int64_t *allowance)
{
    long ten = px_config_tenant(cfg, tenant, strlen(tenant));
    long tier = -1;
    if (ten >= 0 && cfg->tenants[ten].pinned) {
        tier = (long)cfg->tenants[ten].tier;
    } else if (tier_name != NULL) {
        tier = px_config_tier(cfg, tier_name, strlen(tier_name));
    }
    if (tier < 0) {
        tier = (long)cfg->default_tier;
    }
    *allowance = ten >= 0 && cfg->tenants[ten].monthly_tokens > 0 ? cfg->tenants[ten].monthly_tokens
                                                                  : cfg->tiers[tier].monthly_tokens;
    return (size_t)tier;
}

int64_t store_overage_pence(int64_t overage_tokens, int64_t pence_per_mtok)
{
    if (overage_tokens <= 0 || pence_per_mtok <= 0) {
        return 0;
    }
    /* Both factors are bounded by the config and the row check (<= 1e15 tokens), so the
     * product fits 128 bits. */
    unsigned __int128 p = (unsigned __int128)overage_tokens * (unsigned __int128)pence_per_mtok;
    return (int64_t)((p + 500000) / 1000000);
}

int64_t store_month_start_ms(int64_t now_ms, int months_back)
{
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    /* Months counted from January 1970 avoid any calendar arithmetic on struct tm fields. */
    int64_t m = (int64_t)(tm.tm_year - 70) * 12 + tm.tm_mon - months_back;
    if (m < 0) {
        m = 0;
    }
    struct tm a = {.tm_year = (int)(m / 12) + 70, .tm_mon = (int)(m % 12), .tm_mday = 1};
    return (int64_t)timegm(&a) * 1000;
}

static int fail(char *why, size_t whycap, const char *field, long long v)
{
    snprintf(why, whycap, "%s out of range: %lld", field, v);
    return PX_EPARSE;
}

int store_row_check(const struct usage_event *ev, char *why, size_t whycap)
{
#define CHECK_STR(f)                                                                               \
    if (memchr(ev->f, '\0', sizeof(ev->f)) == NULL || !px_utf8_valid(ev->f, strlen(ev->f))) {      \
        snprintf(why, whycap, "%s is not NUL-terminated UTF-8", #f);                               \
        return PX_EPARSE;                                                                          \
    }
    CHECK_STR_FIELDS(CHECK_STR)
#undef CHECK_STR
#define CHECK_RANGE(f, lo, hi)                                                                     \
    if ((long long)ev->f < (long long)(lo) || (long long)ev->f > (long long)(hi)) {                \
        return fail(why, whycap, #f, (long long)ev->f);                                            \
    }
    CHECK_RANGE(event_time_ms, 0, RANGE_TIME_MS_MAX)
    CHECK_RANGE(prompt_tokens, 0, RANGE_COUNT_MAX)
    CHECK_RANGE(completion_tokens, 0, RANGE_COUNT_MAX)
    CHECK_RANGE(total_tokens, 0, RANGE_COUNT_MAX)
    CHECK_RANGE(input_chars, 0, RANGE_COUNT_MAX)
    CHECK_RANGE(output_chars, 0, RANGE_COUNT_MAX)
    CHECK_RANGE(queue_ms, 0, RANGE_U32_MAX)
    CHECK_RANGE(latency_ms, 0, RANGE_U32_MAX)
    CHECK_RANGE(ttft_ms, -1, RANGE_I32_MAX)
    CHECK_RANGE(status_code, 0, 999)
    CHECK_RANGE(gpu_id, -1, 32767)
    CHECK_RANGE(stream, 0, 1)
    CHECK_RANGE(success, 0, 1)
    CHECK_RANGE(usage_estimated, 0, 1)
    CHECK_RANGE(overage, 0, 1)
#undef CHECK_RANGE
    return 0;
}
