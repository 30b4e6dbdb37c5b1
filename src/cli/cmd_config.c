/* privax config check FILE: load and validate a config exactly as `privax serve` would, print
 * a one-line summary, and exit EX_CONFIG with "FILE:LINE: message" when it is invalid. */
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "cli/cmd.h"
#include "config/config.h"

static void config_usage(FILE *out)
{
    fprintf(out, "usage: privax config check FILE\n"
                 "\n"
                 "Validate a privax YAML config. Prints\n"
                 "  FILE: ok (N backends, N models, N tokens, N tiers)\n"
                 "and exits 0, or prints FILE:LINE: message on stderr and exits 78 (EX_CONFIG).\n"
                 "Every key is documented in examples/privax.yaml and docs/internals/config.md.\n");
}

int cli_cmd_config(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        config_usage(stdout);
        return EX_OK;
    }
    if (argc != 3 || strcmp(argv[1], "check") != 0) {
        config_usage(stderr);
        return EX_USAGE;
    }
    if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) {
        config_usage(stdout);
        return EX_OK;
    }

    char err[1024];
    struct px_config *cfg;
    if (px_config_load(argv[2], &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return EX_CONFIG;
    }
    printf("%s: ok (%zu backends, %zu models, %zu tokens, %zu tiers)\n", argv[2], cfg->nbackends,
           cfg->nmodels, cfg->ntokens, cfg->ntiers);
    px_config_free(cfg);
    return EX_OK;
}
