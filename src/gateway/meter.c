/* The meter: one usage row per identified request, handed to the usage writer thread. The
 * access log line is written here too, so each request leaves one log line and one row. */
#include "core/log.h"
#include "gateway/internal.h"
#include "usage/writer.h"

void gw_meter(struct gateway *gw, struct usage_event *ev, usage_ack_fn cb, void *ud)
{
    if (gw->cfg->access_log) {
        char rid[2 * USAGE_ID_MAX + 4], tenant[2 * USAGE_ID_MAX + 4], user[2 * USAGE_ID_MAX + 4];
        px_log(PX_LOG_INFO,
               "request_id=%s tenant=%s user=%s key=%s tier=%s model=%s backend=%s stream=%d "
               "status=%d error=%s prompt_tokens=%lld completion_tokens=%lld estimated=%d "
               "queue_ms=%lld ttft_ms=%lld latency_ms=%lld",
               px_log_quote(rid, sizeof(rid), ev->request_id),
               px_log_quote(tenant, sizeof(tenant), ev->tenant_id),
               px_log_quote(user, sizeof(user), ev->user_id), ev->api_key_id, ev->plan_tier,
               ev->model_name, ev->backend, ev->stream, ev->status_code,
               ev->error_code[0] ? ev->error_code : "-", (long long)ev->prompt_tokens,
               (long long)ev->completion_tokens, ev->usage_estimated, (long long)ev->queue_ms,
               (long long)ev->ttft_ms, (long long)ev->latency_ms);
    }
    metrics_observe(gw->metrics, ev);
    /* Last: from here on the writer thread owns ev. */
    if (cb) {
        usage_writer_push_ack(gw->usage, ev, cb, ud);
    } else {
        usage_writer_push(gw->usage, ev);
    }
}
