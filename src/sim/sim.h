#ifndef PX_SIM_SIM_H
#define PX_SIM_SIM_H

/* `privax sim`: a simulated GPU node serving Ollama's native API and the OpenAI API as vLLM
 * serves it, on one listener, with deterministic output, pacing, queueing and injectable
 * faults. See docs/internals/sim.md for the wire formats and rules.
 *
 * Threading: everything runs on the loop passed to sim_start(). */

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sim;

struct sim_opts {
    const char *listen;        /* "host:port"; port 0 picks a free one */
    const char *const *models; /* model names served (borrowed for sim_start only) */
    size_t nmodels;            /* entries in models, at least 1 */
    double tokens_per_second;  /* per stream; 0 = as fast as possible */
    double
        prefill_tokens_per_second; /* prompt tokens per second before the first token; 0 = none */
    uint64_t load_delay_ms;        /* delay before the first request of each model runs */
    unsigned parallel;             /* requests generating at once per model */
    unsigned max_queue;            /* requests waiting (all models) before 503 busy */
    uint64_t seed;                 /* mixed into every generation */
    const char *fault;             /* initial fault ("none", "error:500", "cut:3", ...) or NULL */
};

/* Fill opts with the defaults (127.0.0.1:11434, qwen2.5-coder:7b, 50 tok/s, parallel 4,
 * queue 512, seed 0, no fault). */
void sim_opts_default(struct sim_opts *opts);

/* 0 when spec names a fault ("none", "error:STATUS", "hang", "reset", "cut:K", "malformed:K",
 * "no-usage"), else PX_EPARSE. */
int sim_fault_check(const char *spec);

/* Start serving. 0 and *out set, or a negative error (nothing left registered). */
int sim_start(struct sim **out, uv_loop_t *loop, const struct sim_opts *opts);

/* The bound port. */
int sim_port(const struct sim *s);

/* Stop: close the listener and every connection (in-flight generations are aborted), and
 * free everything once libuv releases the handles (run the loop afterwards). */
void sim_free(struct sim *s);

#endif
