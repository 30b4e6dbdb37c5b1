#ifndef PX_GATEWAY_GATEWAY_H
#define PX_GATEWAY_GATEWAY_H

/* The gateway: privax's request path (accept, identify, parse, admit, route, relay, meter)
 * on one libuv loop. Built from a config and a usage writer; serves until drained. */

#include <stddef.h>
#include <uv.h>

#include "config/config.h"
#include "limits/limits.h"
#include "usage/writer.h"

struct gateway;

/* Listen on cfg->listen and serve. cfg, usage and lim are borrowed and must outlive the
 * gateway. 0 and *out, or a negative error with a message logged. Loop thread only. */
int gateway_start(struct gateway **out, uv_loop_t *loop, const struct px_config *cfg,
                  struct usage_writer *usage, struct limiter *lim);

/* The port actually bound. */
int gateway_port(const struct gateway *gw);

/* Requests in flight (queued or relaying). */
size_t gateway_inflight(const struct gateway *gw);

/* Stop accepting; requests in flight go on. */
void gateway_stop_accepting(struct gateway *gw);

/* End every request still in flight (recorded as 503 shutting_down), close everything and
 * free the gateway once libuv released its handles (run the loop afterwards). */
void gateway_free(struct gateway *gw);

#endif
