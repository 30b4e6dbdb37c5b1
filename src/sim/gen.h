#ifndef PX_SIM_GEN_H
#define PX_SIM_GEN_H

/* Deterministic text generation for the simulator: a fixed vocabulary, a PRNG seeded from
 * (--seed, model, prompt), and the token-count rules every API shares. Pure functions, no
 * I/O, so tests can predict exact outputs. See docs/internals/sim.md. */

#include <stddef.h>
#include <stdint.h>

/* Number of vocabulary entries; sim_gen_token() returns one of them. */
#define SIM_VOCAB_SIZE 64

/* A running FNV-1a 64-bit hash, for feeding the prompt in pieces. */
struct sim_fnv {
    uint64_t h; /* current hash value */
};

void sim_fnv_init(struct sim_fnv *f);
void sim_fnv_update(struct sim_fnv *f, const void *p, size_t n);

/* The generator state of one request. */
struct sim_gen {
    uint64_t s; /* splitmix64 state */
};

/* Seed a generator: seed ^ prompt_hash, where prompt_hash is the FNV hash of the canonical
 * model name and the prompt (see sim.md for the exact bytes hashed). */
void sim_gen_init(struct sim_gen *g, uint64_t seed, uint64_t prompt_hash);

/* Next pseudo-random 64-bit value. */
uint64_t sim_gen_next(struct sim_gen *g);

/* The natural completion length when the request sets no limit: 8..64 tokens. Call once,
 * right after sim_gen_init, before any token. */
uint32_t sim_gen_natural_len(struct sim_gen *g);

/* Next token: a NUL-terminated UTF-8 string from the vocabulary (borrowed, static). */
const char *sim_gen_token(struct sim_gen *g);

/* Prompt-token rule: ceil(bytes / 4) + 4 for each message, + 3 for the whole prompt. */
uint32_t sim_tokens_for_message(size_t content_bytes);
#define SIM_PROMPT_OVERHEAD_TOKENS 3

/* The vocabulary itself, for tests. */
const char *sim_vocab_at(size_t i);

#endif
