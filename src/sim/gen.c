/* Deterministic generation; see gen.h. The vocabulary mixes plain words, punctuation, JSON
 * escapes (quote, backslash, newline, tab) and multi-byte UTF-8 (2, 3 and 4-byte sequences) so
 * that every relay between the simulator and a client has to carry them byte-exactly. Changing
 * the vocabulary or the PRNG changes every expected output in the tests: don't, or update them
 * together. */
#include "sim/gen.h"

static const char *const vocab[SIM_VOCAB_SIZE] = {
    " the",    " a",      " of",      " and",   " to",       " in",     " is",    " it",
    " that",   " for",    " on",      " with",  " as",       " code",   " model", " token",
    " data",   " server", " request", " value", " function", " return", " error", " test",
    ",",       ".",       ":",        ";",      "!",         "?",       " (",     ")",
    "\n",      "\n\n",    "\t",       " \"",    "\"",        " \\",     " {",     "}",
    " café",   " naïve",  " 日本語",  " 😀",     " Ω",        " über",   " señor", " 中文",
    " Привет", " ñ",      " €",       " 🚀",     " résumé",   " Zürich", " ø",     " 👍🏽",
    " I",      " we",     " you",     " can",   " will",     " not",    " be",    " this",
};

void sim_fnv_init(struct sim_fnv *f)
{
    f->h = 14695981039346656037ULL;
}

void sim_fnv_update(struct sim_fnv *f, const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = f->h;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    f->h = h;
}

void sim_gen_init(struct sim_gen *g, uint64_t seed, uint64_t prompt_hash)
{
    g->s = seed ^ prompt_hash;
}

uint64_t sim_gen_next(struct sim_gen *g)
{
    /* splitmix64: tiny, fast, and good enough that token streams look varied. */
    uint64_t z = (g->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint32_t sim_gen_natural_len(struct sim_gen *g)
{
    return 8 + (uint32_t)(sim_gen_next(g) % 57);
}

const char *sim_gen_token(struct sim_gen *g)
{
    return vocab[sim_gen_next(g) % SIM_VOCAB_SIZE];
}

uint32_t sim_tokens_for_message(size_t content_bytes)
{
    return (uint32_t)((content_bytes + 3) / 4) + 4;
}

const char *sim_vocab_at(size_t i)
{
    return i < SIM_VOCAB_SIZE ? vocab[i] : NULL;
}
