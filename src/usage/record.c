/* The usage row as bytes in the spool, and the range check every row passes before a store
 * sees it.
 *
 * Design note. A spool record is self-checking so that recovery after a crash can tell a
 * whole record from a torn or damaged one without trusting anything else on disk:
 *
 *   u32 magic "PXU1" | u32 body length | u32 CRC-32C(body) | body
 *   body: u8 version (1) | u64 seq | i64 event_time_ms | 11 strings (u16 length + bytes) |
 *         14 integers as i64
 *
 * all little-endian. The decoder is strict (exact body length, known version, every string
 * within its field's size, every integer within its field's C type) because it is the one
 * place that parses bytes from disk: tests/fuzz/fuzz_spool.c drives it with arbitrary input.
 * A proper prefix of a record (the tail a crash cut short) is reported as "need more" (0)
 * rather than as damage, which is how recovery tells a torn tail from corruption. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/util.h"
#include "usage/event.h"

#define REC_MAGIC   0x31555850u /* "PXU1" read as a little-endian u32 */
#define REC_VERSION 1

/* The string fields in record order, with their array sizes. */
/* An X-macro list (clang-format 14 reflows these unstably, so it is left alone). */
/* clang-format off */
#define STR_FIELDS(X)                                                                              \
    X(request_id) X(tenant_id) X(user_id) X(api_key_id) X(plan_tier) X(model_name)                 \
    X(provider) X(backend) X(request_type) X(error_code) X(node_id)

/* The integer fields in record order. */
#define INT_FIELDS(X)                                                                              \
    X(stream) X(prompt_tokens) X(completion_tokens) X(total_tokens) X(usage_estimated)             \
    X(queue_ms) X(ttft_ms) X(latency_ms) X(status_code) X(success) X(input_chars)                  \
    X(output_chars) X(gpu_id) X(overage)
/* clang-format on */

static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t usage_crc32c(uint32_t crc, const void *p, size_t n)
{
    /* The table is built once; racing first calls write identical values, but build it under
     * a once-guard anyway so the sanitizers see no race. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (!crc_ready) {
        pthread_once(&once, crc_init);
    }
    const unsigned char *b = p;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc = crc_table[(crc ^ b[i]) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

static size_t str_len(const char *s, size_t cap)
{
    const char *z = memchr(s, '\0', cap);
    return z ? (size_t)(z - s) : cap - 1;
}

size_t usage_rec_encode(const struct usage_event *ev, uint64_t seq, unsigned char *out, size_t cap)
{
    /* Every field has a fixed maximum, so the whole record always fits USAGE_REC_MAX. */
    _Static_assert(USAGE_REC_HEAD + 1 + 16 + 11 * 2 + sizeof(ev->request_id) +
                           sizeof(ev->tenant_id) + sizeof(ev->user_id) + sizeof(ev->api_key_id) +
                           sizeof(ev->plan_tier) + sizeof(ev->model_name) + sizeof(ev->provider) +
                           sizeof(ev->backend) + sizeof(ev->request_type) + sizeof(ev->error_code) +
                           sizeof(ev->node_id) + 14 * 8 <=
                       USAGE_REC_MAX,
                   "a usage record must fit USAGE_REC_MAX");
    if (cap < USAGE_REC_MAX) {
        return 0;
    }
    unsigned char *b = out + USAGE_REC_HEAD;
    size_t n = 0;
    b[n++] = REC_VERSION;
    put_u64(b + n, seq);
    n += 8;
    put_u64(b + n, (uint64_t)ev->event_time_ms);
    n += 8;
#define ENC_STR(f)                                                                                 \
    {                                                                                              \
        size_t l_ = str_len(ev->f, sizeof(ev->f));                                                 \
        put_u16(b + n, (uint16_t)l_);                                                              \
        memcpy(b + n + 2, ev->f, l_);                                                              \
        n += 2 + l_;                                                                               \
    }
    STR_FIELDS(ENC_STR)
#undef ENC_STR
#define ENC_INT(f)                                                                                 \
    put_u64(b + n, (uint64_t)(int64_t)ev->f);                                                      \
    n += 8;
    INT_FIELDS(ENC_INT)
#undef ENC_INT
    put_u32(out, REC_MAGIC);
    put_u32(out + 4, (uint32_t)n);
    put_u32(out + 8, usage_crc32c(0, b, n));
    return USAGE_REC_HEAD + n;
}

/* Narrow a decoded i64 into an int field, rejecting what does not fit. */
static int to_int(int64_t v, int *out)
{
    if (v < INT_MIN || v > INT_MAX) {
        return PX_EPARSE;
    }
    *out = (int)v;
    return 0;
}

static int set_i64(int64_t v, int64_t *out)
{
    *out = v;
    return 0;
}

#define SET_FIELD(dst, v) _Generic((dst), int : to_int, int64_t : set_i64)((v), &(dst))

long usage_rec_decode(const unsigned char *p, size_t len, struct usage_event *ev, uint64_t *seq)
{
    if (len < USAGE_REC_HEAD) {
        /* A prefix of the head: plausible only if what is there matches the magic. */
        unsigned char m[4];
        put_u32(m, REC_MAGIC);
        return memcmp(p, m, len < 4 ? len : 4) == 0 ? 0 : PX_EPARSE;
    }
    if (get_u32(p) != REC_MAGIC) {
        return PX_EPARSE;
    }
    uint32_t blen = get_u32(p + 4);
    if (blen < 1 + 16 || blen > USAGE_REC_MAX - USAGE_REC_HEAD) {
        return PX_EPARSE;
    }
    if (len < USAGE_REC_HEAD + (size_t)blen) {
        return 0;
    }
    const unsigned char *b = p + USAGE_REC_HEAD;
    if (usage_crc32c(0, b, blen) != get_u32(p + 8) || b[0] != REC_VERSION) {
        return PX_EPARSE;
    }
    memset(ev, 0, sizeof(*ev));
    size_t n = 1;
    *seq = get_u64(b + n);
    n += 8;
    ev->event_time_ms = (int64_t)get_u64(b + n);
    n += 8;
#define DEC_STR(f)                                                                                 \
    {                                                                                              \
        if (n + 2 > blen) {                                                                        \
            return PX_EPARSE;                                                                      \
        }                                                                                          \
        size_t l_ = (size_t)b[n] | (size_t)b[n + 1] << 8;                                          \
        n += 2;                                                                                    \
        if (l_ >= sizeof(ev->f) || n + l_ > blen || memchr(b + n, '\0', l_) != NULL) {             \
            return PX_EPARSE;                                                                      \
        }                                                                                          \
        memcpy(ev->f, b + n, l_);                                                                  \
        ev->f[l_] = '\0';                                                                          \
        n += l_;                                                                                   \
    }
    STR_FIELDS(DEC_STR)
#undef DEC_STR
#define DEC_INT(f)                                                                                 \
    {                                                                                              \
        if (n + 8 > blen || SET_FIELD(ev->f, (int64_t)get_u64(b + n)) < 0) {                       \
            return PX_EPARSE;                                                                      \
        }                                                                                          \
        n += 8;                                                                                    \
    }
    INT_FIELDS(DEC_INT)
#undef DEC_INT
    if (n != blen || *seq == 0) {
        return PX_EPARSE;
    }
    ev->spool_seq = *seq;
    return (long)(USAGE_REC_HEAD + blen);
}
