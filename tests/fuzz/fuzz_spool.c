/* libFuzzer target for the spool record reader (usage_rec_decode in src/usage/record.c), the
 * one parser of bytes read back from disk. The input is a spool segment; it is walked the way
 * recovery walks one: decode, and on damage skip a byte and try again.
 *
 * Invariants:
 *  - the decoder never reads outside the input (ASan) and returns a length within it, 0 only
 *    for a proper prefix of a record (at the end of the input), or PX_EPARSE;
 *  - a decoded record has every string NUL-terminated inside its array and a non-zero seq;
 *  - re-encoding a decoded record gives exactly the bytes it was decoded from (the codec is
 *    one-to-one, so recovery can never turn one valid record into another);
 *  - nothing leaks (nothing is allocated). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "usage/event.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    static unsigned char again[USAGE_REC_MAX];
    size_t off = 0;
    while (off < n) {
        struct usage_event ev;
        uint64_t seq = 0;
        long r = usage_rec_decode(d + off, n - off, &ev, &seq);
        if (r == 0) {
            break; /* a torn tail */
        }
        if (r < 0) {
            CHECK(r == PX_EPARSE);
            off++;
            continue;
        }
        CHECK((size_t)r <= n - off && r > USAGE_REC_HEAD && r <= USAGE_REC_MAX);
        CHECK(seq != 0 && ev.spool_seq == seq && ev.next == NULL);
        CHECK(memchr(ev.request_id, '\0', sizeof(ev.request_id)) != NULL);
        CHECK(memchr(ev.tenant_id, '\0', sizeof(ev.tenant_id)) != NULL);
        CHECK(memchr(ev.node_id, '\0', sizeof(ev.node_id)) != NULL);
        CHECK(memchr(ev.error_code, '\0', sizeof(ev.error_code)) != NULL);
        size_t len = usage_rec_encode(&ev, seq, again, sizeof(again));
        CHECK(len == (size_t)r && memcmp(again, d + off, len) == 0);
        off += (size_t)r;
    }
    return 0;
}
