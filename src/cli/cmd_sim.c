/* `privax sim`: parse flags, start the simulator on the default loop, write the port file,
 * and run until SIGINT/SIGTERM. The simulator itself lives in src/sim/. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <uv.h>

#include "cli/cmd.h"
#include "core/err.h"
#include "core/log.h"
#include "sim/sim.h"

#define SIM_MAX_MODELS 64

static const char sim_usage[] =
    "usage: privax sim [flags]\n"
    "\n"
    "A simulated GPU node serving the Ollama API (/api/chat, /api/generate, /api/tags,\n"
    "/api/ps) and the OpenAI API as vLLM serves it (/v1/chat/completions, /v1/completions,\n"
    "/v1/models, /health, /metrics) on one port, with deterministic output.\n"
    "\n"
    "flags:\n"
    "  --listen ADDR                  host:port to listen on (default 127.0.0.1:11434; port 0\n"
    "                                 picks a free port)\n"
    "  --port-file F                  write the bound port and a newline to F once listening\n"
    "  --models A,B                   model names served (default qwen2.5-coder:7b)\n"
    "  --tokens-per-second N          tokens per second per stream (default 50; 0 = as fast as\n"
    "                                 possible)\n"
    "  --prefill-tokens-per-second N  delay before the first token = prompt_tokens / N seconds\n"
    "                                 (default 0 = no delay)\n"
    "  --load-delay-ms N              delay for the first request of each model (default 0)\n"
    "  --parallel N                   requests generating at once per model, like\n"
    "                                 OLLAMA_NUM_PARALLEL (default 4)\n"
    "  --max-queue N                  requests waiting beyond those, like OLLAMA_MAX_QUEUE\n"
    "                                 (default 512); more -> 503 busy\n"
    "  --seed N                       generation seed (default 0)\n"
    "  --fault F                      none | error:STATUS | hang | reset | cut:K | malformed:K |\n"
    "                                 no-usage (applies to every generation request)\n"
    "  --log-level L                  debug | info | warn | error (default info)\n"
    "  --help                         this text\n"
    "\n"
    "control endpoints:\n"
    "  POST /sim/fault {\"fault\":\"cut:3\",\"count\":N}  set the fault (for the next N "
    "generation\n"
    "                                 requests when count is given, then the previous one again)\n"
    "  GET  /sim/stats                requests, active, completed, client_disconnects,\n"
    "                                 last_disconnect_unix_ms, tokens_generated\n";

struct sim_cli {
    struct sim *sim;     /* the running simulator */
    uv_signal_t sigint;  /* SIGINT watcher */
    uv_signal_t sigterm; /* SIGTERM watcher */
    int stopping;        /* 1 once a signal arrived */
};

static void on_signal(uv_signal_t *h, int signum)
{
    struct sim_cli *cli = h->data;
    if (cli->stopping) {
        return;
    }
    cli->stopping = 1;
    px_log(PX_LOG_INFO, "event=sim_stop signal=%d", signum);
    sim_free(cli->sim);
    cli->sim = NULL;
    uv_close((uv_handle_t *)&cli->sigint, NULL);
    uv_close((uv_handle_t *)&cli->sigterm, NULL);
}

/* Parse a non-negative number (integer or decimal) with an upper bound; 0 or PX_EPARSE. */
static int parse_num(const char *s, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= 0) || v > max) {
        return PX_EPARSE;
    }
    *out = v;
    return 0;
}

/* Write "port\n" to path through a temporary file, so readers never see half a number. */
static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        return PX_EOVERFLOW;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        return -errno;
    }
    int ok = fprintf(f, "%d\n", port) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = -errno;
        remove(tmp);
        return e ? e : PX_EPARSE;
    }
    return 0;
}

int cli_cmd_sim(int argc, char **argv)
{
    enum {
        OPT_LISTEN = 1000,
        OPT_PORT_FILE,
        OPT_MODELS,
        OPT_TPS,
        OPT_PREFILL,
        OPT_LOAD_DELAY,
        OPT_PARALLEL,
        OPT_MAX_QUEUE,
        OPT_SEED,
        OPT_FAULT,
        OPT_LOG_LEVEL,
        OPT_HELP,
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"models", required_argument, NULL, OPT_MODELS},
        {"tokens-per-second", required_argument, NULL, OPT_TPS},
        {"prefill-tokens-per-second", required_argument, NULL, OPT_PREFILL},
        {"load-delay-ms", required_argument, NULL, OPT_LOAD_DELAY},
        {"parallel", required_argument, NULL, OPT_PARALLEL},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"fault", required_argument, NULL, OPT_FAULT},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct sim_opts opts;
    sim_opts_default(&opts);
    const char *port_file = NULL;
    char *models_arg = NULL;
    const char *models[SIM_MAX_MODELS];
    int rc = EX_OK;
    int c;
    double v;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            opts.listen = optarg;
            break;
        case OPT_PORT_FILE:
            port_file = optarg;
            break;
        case OPT_MODELS:
            free(models_arg);
            models_arg = strdup(optarg);
            break;
        case OPT_TPS:
        case OPT_PREFILL:
            if (parse_num(optarg, 1e9, &v) != 0) {
                fprintf(stderr, "privax sim: bad number for %s: %s\n", argv[optind - 1], optarg);
                rc = EX_USAGE;
                goto out;
            }
            if (c == OPT_TPS) {
                opts.tokens_per_second = v;
            } else {
                opts.prefill_tokens_per_second = v;
            }
            break;
        case OPT_LOAD_DELAY:
        case OPT_PARALLEL:
        case OPT_MAX_QUEUE:
        case OPT_SEED:
            if (c == OPT_SEED) {
                char *end;
                errno = 0;
                unsigned long long sv = strtoull(optarg, &end, 0);
                if (errno || end == optarg || *end != '\0' || optarg[0] == '-') {
                    fprintf(stderr, "privax sim: bad --seed: %s\n", optarg);
                    rc = EX_USAGE;
                    goto out;
                }
                opts.seed = sv;
                break;
            }
            if (parse_num(optarg, 1e8, &v) != 0 || v != (double)(long long)v) {
                fprintf(stderr, "privax sim: bad integer for %s: %s\n", argv[optind - 1], optarg);
                rc = EX_USAGE;
                goto out;
            }
            if (c == OPT_LOAD_DELAY) {
                opts.load_delay_ms = (uint64_t)v;
            } else if (c == OPT_PARALLEL) {
                opts.parallel = (unsigned)v;
            } else {
                opts.max_queue = (unsigned)v;
            }
            break;
        case OPT_FAULT:
            if (sim_fault_check(optarg) != 0) {
                fprintf(stderr, "privax sim: bad --fault: %s\n", optarg);
                rc = EX_USAGE;
                goto out;
            }
            opts.fault = optarg;
            break;
        case OPT_LOG_LEVEL: {
            static const char *const lv[] = {"debug", "info", "warn", "error"};
            int found = -1;
            for (int i = 0; i < 4; i++) {
                if (strcmp(optarg, lv[i]) == 0) {
                    found = i;
                }
            }
            if (found < 0) {
                fprintf(stderr, "privax sim: bad --log-level: %s\n", optarg);
                rc = EX_USAGE;
                goto out;
            }
            px_log_min_level = found;
            break;
        }
        case OPT_HELP:
        case 'h':
            fputs(sim_usage, stdout);
            goto out;
        default:
            fprintf(stderr, "privax sim: unknown or incomplete flag '%s' (try --help)\n",
                    argv[optind - 1]);
            rc = EX_USAGE;
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "privax sim: unexpected argument '%s'\n", argv[optind]);
        rc = EX_USAGE;
        goto out;
    }
    if (opts.parallel == 0) {
        fprintf(stderr, "privax sim: --parallel must be at least 1\n");
        rc = EX_USAGE;
        goto out;
    }
    if (models_arg) {
        size_t n = 0;
        char *save = NULL;
        for (char *t = strtok_r(models_arg, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (*t == '\0') {
                continue;
            }
            if (n == SIM_MAX_MODELS) {
                fprintf(stderr, "privax sim: at most %d models\n", SIM_MAX_MODELS);
                rc = EX_USAGE;
                goto out;
            }
            models[n++] = t;
        }
        if (n == 0) {
            fprintf(stderr, "privax sim: --models needs at least one name\n");
            rc = EX_USAGE;
            goto out;
        }
        opts.models = models;
        opts.nmodels = n;
    }

    uv_loop_t *loop = uv_default_loop();
    struct sim_cli cli = {0};
    int err = sim_start(&cli.sim, loop, &opts);
    if (err != 0) {
        fprintf(stderr, "privax sim: cannot listen on %s: %s\n", opts.listen, px_strerror(err));
        rc = EX_UNAVAILABLE;
        goto out;
    }
    int port = sim_port(cli.sim);
    if (port_file && (err = write_port_file(port_file, port)) != 0) {
        fprintf(stderr, "privax sim: cannot write %s: %s\n", port_file, px_strerror(err));
        sim_free(cli.sim);
        uv_run(loop, UV_RUN_DEFAULT);
        rc = EX_CANTCREAT;
        goto out;
    }
    uv_signal_init(loop, &cli.sigint);
    uv_signal_init(loop, &cli.sigterm);
    cli.sigint.data = &cli;
    cli.sigterm.data = &cli;
    uv_signal_start(&cli.sigint, on_signal, SIGINT);
    uv_signal_start(&cli.sigterm, on_signal, SIGTERM);
    px_log(PX_LOG_INFO, "event=sim_listen port=%d models=%zu tps=%g parallel=%u max_queue=%u", port,
           opts.nmodels, opts.tokens_per_second, opts.parallel, opts.max_queue);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
out:
    free(models_arg);
    return rc;
}
