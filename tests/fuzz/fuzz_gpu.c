/* libFuzzer target for the GPU line parser (src/gpu/gpu.c): the bytes are a command's or a
 * file's output. Invariants: gpu_parse either fails with a "line N:" message and no GPUs, or
 * returns at most cap readings whose ids are unique and in range and whose figures are -1
 * (unknown) or in range (utilisation <= 100, used <= total); and gpu_parse_line on every line
 * agrees with it. The input is copied to an exact-size heap buffer so ASan catches any read
 * past the end. Seed corpus: tests/fuzz/corpus/gpu. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "gpu/gpu.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_reading(const struct gpu_reading *r)
{
    if (r->id < 0 || r->id > GPU_ID_MAX) {
        abort();
    }
    if (r->util_pct != -1 && !(r->util_pct >= 0 && r->util_pct <= 100)) {
        abort();
    }
    if (r->mem_used_mib != -1 && !(r->mem_used_mib >= 0)) {
        abort();
    }
    if (r->mem_total_mib != -1 && !(r->mem_total_mib >= 0)) {
        abort();
    }
    if (r->mem_used_mib >= 0 && r->mem_total_mib >= 0 && r->mem_used_mib > r->mem_total_mib) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = malloc(size ? size : 1);
    if (p == NULL) {
        abort();
    }
    memcpy(p, data, size);
    struct gpu_reading r[8];
    size_t n = 99;
    char err[128];
    int rc = gpu_parse(p, size, r, 8, &n, err, sizeof(err));
    if (rc != 0) {
        if (rc != PX_EPARSE || strncmp(err, "line ", 5) != 0 || n != 0) {
            abort();
        }
    } else {
        if (n > 8) {
            abort();
        }
        for (size_t i = 0; i < n; i++) {
            check_reading(&r[i]);
            for (size_t j = 0; j < i; j++) {
                if (r[j].id == r[i].id) {
                    abort();
                }
            }
        }
    }
    /* Line by line: every line parses alone the same way (a reading, skipped, or refused). */
    size_t start = 0, k = 0;
    int all_ok = 1;
    while (start < size) {
        const char *nl = memchr(p + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - p) : size;
        struct gpu_reading one;
        int lr = gpu_parse_line(p + start, end - start, &one);
        if (lr < 0) {
            all_ok = 0;
        } else if (lr == 1) {
            check_reading(&one);
            if (rc == 0 && (k >= n || r[k].id != one.id)) {
                abort();
            }
            k++;
        }
        start = end + 1;
    }
    if (rc == 0 && (!all_ok || k != n)) {
        abort();
    }
    free(p);
    return 0;
}
