/* libFuzzer target for the config loader: the bytes become a file (px_config_load reads a
 * path, as privax serve does), which is loaded and freed. Invariants: no crash, no leak
 * (LeakSanitizer), and a failed load returns no config and a "FILE:" message, a successful
 * one a config that satisfies the header's documented minimums. Seed corpus:
 * tests/fuzz/corpus/config (copied from tests/data/config and examples/privax.yaml). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void write_input(const uint8_t *data, size_t size)
{
    if (path[0] == '\0') {
        snprintf(path, sizeof(path), "/tmp/px_fuzz_config_%ld.yaml", (long)getpid());
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        abort();
    }
    if (size > 0 && fwrite(data, 1, size, f) != size) {
        abort();
    }
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_config *cfg = NULL;
    char err[512];

    write_input(data, size);
    int rc = px_config_load(path, &cfg, err, sizeof(err));
    if (rc != 0) {
        if (rc != PX_ECONFIG || cfg != NULL || strncmp(err, path, strlen(path)) != 0) {
            abort();
        }
        return 0;
    }
    if (cfg->ntokens < 1 || cfg->nbackends < 1 || cfg->nmodels < 1 || cfg->ntiers < 1 ||
        cfg->default_tier >= cfg->ntiers) {
        abort();
    }
    for (size_t i = 0; i < cfg->nmodels; i++) {
        for (size_t k = 0; k < cfg->models[i].nbackends; k++) {
            if (cfg->models[i].backends[k] >= cfg->nbackends) {
                abort();
            }
        }
    }
    for (size_t i = 0; i < cfg->ntenants; i++) {
        if (cfg->tenants[i].tier >= cfg->ntiers) {
            abort();
        }
    }
    px_config_free(cfg);
    return 0;
}
