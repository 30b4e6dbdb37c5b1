#ifndef PX_HEALTH_HEALTH_H
#define PX_HEALTH_HEALTH_H

/* Backend health, with nginx's meaning of max_fails and fail_timeout: max_fails failed
 * requests within fail_timeout mark a backend down for fail_timeout; then one request is let
 * through as a trial, and a success brings it back. Failures are reported by the request path
 * (passive: connect errors, 5xx, timeouts before the first byte) and by active probes (GET
 * /api/tags for Ollama, /v1/models for OpenAI-compatible servers, every health.interval_ms).
 * A probe success marks a backend up at once; a probe failure marks it down at once (the
 * probe is cheap and unambiguous, unlike a failed generation). Loop thread only; the clock is
 * passed in so tests step it by hand. */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/upstream.h"

struct health;

enum health_state {
    HEALTH_UP = 0, /* serving */
    HEALTH_DOWN,   /* failed: no traffic until its fail_timeout ends */
    HEALTH_TRIAL,  /* fail_timeout ended: one request may test it */
};

/* Create the tracker for cfg's backends and start probing with up (borrowed; both must
 * outlive it). Probing is off when health.interval_ms is 0. */
struct health *health_new(uv_loop_t *loop, const struct px_config *cfg, struct upstream_client *up);
/* Stop probing and free once libuv released the timer. NULL is a no-op. */
void health_free(struct health *h);

/* 1 when backend b may take a request at now_ms (up, or due for a trial nobody took yet). */
int health_usable(struct health *h, size_t b, uint64_t now_ms);
/* A request is being sent to b: if b is on trial, this request is the trial. */
void health_claim(struct health *h, size_t b, uint64_t now_ms);
/* A request to b ended: ok 1 on success, 0 on a failure that counts (see above). */
void health_report(struct health *h, size_t b, int ok, uint64_t now_ms);
/* State of b at now_ms. */
enum health_state health_state(struct health *h, size_t b, uint64_t now_ms);
/* "up", "down" or "trial". */
const char *health_state_name(enum health_state s);
/* Unix ms of b's last probe or report, and the last failure message ("" when none). */
int64_t health_last_check_ms(struct health *h, size_t b);
const char *health_last_error(struct health *h, size_t b);

#endif
