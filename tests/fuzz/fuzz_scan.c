/* libFuzzer target for provider_scan (src/proxy/provider_scan.c), the tree-free reader of
 * upstream chunks and answers, checked against jansson: the input is scanned in both modes.
 *
 * Invariants:
 *  - when the scan succeeds, jansson's json_loadb(input, 0) accepts it as an object, and every
 *    field equals what the relay's jansson lookups give (tests/fuzz/scan_ref.h): the two relay
 *    paths are interchangeable;
 *  - the copied strings are NUL-terminated within their buffers, the id is valid UTF-8, and the
 *    content's characters never exceed its bytes.
 * The scan frees what it allocates before returning, so LeakSanitizer sees any leak. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "proxy/provider_scan.h"
#include "scan_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static void check(const char *s, size_t n, enum provider_scan_mode mode)
{
    struct provider_scan k;
    if (provider_scan(s, n, mode, &k) != 0) {
        return;
    }
    if (!memchr(k.id, '\0', sizeof(k.id)) ||
        !memchr(k.finish_reason, '\0', sizeof(k.finish_reason))) {
        abort();
    }
    if (!px_utf8_valid(k.id, strlen(k.id)) || k.content_chars < 0 ||
        (uint64_t)k.content_chars > k.content_len) {
        abort();
    }
    json_t *j = json_loadb(s, n, 0, NULL);
    if (!json_is_object(j)) {
        abort(); /* the scanner accepted what jansson refuses */
    }
    struct provider_scan want;
    scan_ref(j, mode, &want);
    json_decref(j);
    if (!scan_ref_same(&k, &want)) {
        abort(); /* a field differs from the jansson path's */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    check((const char *)d, n, PROVIDER_SCAN_CHUNK);
    check((const char *)d, n, PROVIDER_SCAN_ANSWER);
    return 0;
}
