/* Choosing the store backend from the config. Only SQLite exists today; ClickHouse (shared
 * by every node) will be a second ops struct selected here by a store.clickhouse key. */
#include "store/store.h"

const struct store_ops *store_ops_for(const struct px_config *cfg)
{
    (void)cfg;
    return &store_sqlite_ops;
}
