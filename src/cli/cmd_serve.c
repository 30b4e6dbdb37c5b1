/* privax serve: load the config, open the usage store and its writer thread, run the gateway
 * on a libuv loop until SIGTERM/SIGINT, then drain: stop accepting, let requests in flight
 * finish (bounded by timeouts.shutdown_ms), flush every usage row, exit 0. */
#include <curl/curl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <uv.h>

#include "cli/cmd.h"
#include "config/config.h"
#include "core/err.h"
#include "core/log.h"
#include "core/util.h"
#include "gateway/gateway.h"
#include "limits/limits.h"
#include "store/store.h"
#include "usage/writer.h"

struct serve {
    uv_loop_t loop;
    struct gateway *gw;
    struct limiter *lim;
    const struct px_config *cfg;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_timer_t drain_timer;     /* polls for in-flight requests to finish */
    uint64_t drain_deadline_ms; /* px_mono_ms() when the drain gives up waiting */
    int draining;
};

static void serve_close_handles(struct serve *s)
{
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    gateway_free(s->gw);
    s->gw = NULL;
    /* The Redis connection is an active handle: close it so the loop can end. */
    lim_free(s->lim);
    s->lim = NULL;
}

static void on_drain_tick(uv_timer_t *t)
{
    struct serve *s = t->data;
    size_t left = gateway_inflight(s->gw);
    if (left == 0 || px_mono_ms() >= s->drain_deadline_ms) {
        if (left) {
            px_log(PX_LOG_WARN, "event=shutdown_timeout inflight=%zu", left);
        }
        uv_timer_stop(t);
        serve_close_handles(s);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct serve *s = h->data;
    if (s->draining) {
        px_log(PX_LOG_WARN, "event=second_signal signal=%d action=abort_inflight", signum);
        s->drain_deadline_ms = 0;
        return;
    }
    s->draining = 1;
    px_log(PX_LOG_INFO, "event=shutdown signal=%d inflight=%zu", signum, gateway_inflight(s->gw));
    gateway_stop_accepting(s->gw);
    s->drain_deadline_ms = px_mono_ms() + s->cfg->shutdown_timeout_ms;
    uv_timer_start(&s->drain_timer, on_drain_tick, 0, 50);
}

static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        return -1;
    }
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0) {
        return -1;
    }
    /* Atomic: a harness polling the file never reads a half-written port. */
    return rename(tmp, path);
}

static void usage_text(FILE *f)
{
    fprintf(f, "usage: privax serve --config FILE [--port-file FILE] [--log-level LEVEL]\n"
               "  --config FILE      YAML config (see examples/privax.yaml)\n"
               "  --port-file FILE   write the bound port here once listening\n"
               "  --log-level LEVEL  debug | info | warn | error (default info)\n");
}

int cli_cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"port-file", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *port_file = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:p:l:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            config_path = optarg;
            break;
        case 'p':
            port_file = optarg;
            break;
        case 'l': {
            static const char *const names[] = {"debug", "info", "warn", "error"};
            int found = -1;
            for (int i = 0; i < 4; i++) {
                found = strcmp(optarg, names[i]) == 0 ? i : found;
            }
            if (found < 0) {
                fprintf(stderr, "privax serve: unknown log level '%s'\n", optarg);
                return EX_USAGE;
            }
            px_log_min_level = found;
            break;
        }
        case 'h':
            usage_text(stdout);
            return EX_OK;
        default:
            usage_text(stderr);
            return EX_USAGE;
        }
    }
    if (!config_path || optind != argc) {
        usage_text(stderr);
        return EX_USAGE;
    }

    int rc = EX_OK;
    char err[1024];
    struct px_config *cfg = NULL;
    if (cli_config_load(config_path, &cfg) != EX_OK) {
        return EX_CONFIG;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    struct store *st = NULL;
    if (store_ops_for(cfg)->open(&st, cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "privax serve: usage store: %s\n", err);
        rc = EX_CANTCREAT;
        goto fail_store;
    }
    struct serve s = {0};
    s.cfg = cfg;
    uv_loop_init(&s.loop);
    /* The limiter reads month-to-date usage from the store before the writer starts. */
    if (lim_new(&s.lim, &s.loop, cfg, st) != 0) {
        fprintf(stderr, "privax serve: cannot set up limits (see the log above)\n");
        rc = EX_UNAVAILABLE;
        goto fail_limits;
    }
    struct usage_writer *w = NULL;
    char spool_dir[4200];
    struct usage_writer_opts wo;
    usage_writer_opts_from_config(&wo, cfg, spool_dir, sizeof(spool_dir));
    if (usage_writer_start(&w, st, &wo, err, sizeof(err)) != 0) {
        fprintf(stderr, "privax serve: cannot start the usage writer: %s\n", err);
        rc = EX_CANTCREAT;
        goto fail_writer;
    }
    if (gateway_start(&s.gw, &s.loop, cfg, w, s.lim) != 0) {
        rc = EX_UNAVAILABLE;
        goto fail_gateway;
    }
    int port = gateway_port(s.gw);
    if (port_file && write_port_file(port_file, port) != 0) {
        fprintf(stderr, "privax serve: cannot write port file %s\n", port_file);
        gateway_free(s.gw);
        rc = EX_CANTCREAT;
        goto fail_gateway;
    }
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sigint);
    s.sigterm.data = s.sigint.data = &s;
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_timer_init(&s.loop, &s.drain_timer);
    s.drain_timer.data = &s;
    px_log(PX_LOG_INFO,
           "event=listening node_id=%s port=%d backends=%zu models=%zu store=%s limits=%s",
           cfg->node_id, port, cfg->nbackends, cfg->nmodels, cfg->sqlite_path,
           cfg->redis_url ? "redis" : "local");

    uv_run(&s.loop, UV_RUN_DEFAULT);

fail_gateway:
    /* Every row the gateway metered is written before we exit. */
    if (usage_writer_stop(w, cfg->shutdown_timeout_ms) != 0) {
        rc = rc == EX_OK ? EX_IOERR : rc;
    }
fail_writer:
    lim_free(s.lim);
    uv_run(&s.loop, UV_RUN_DEFAULT); /* let libuv release the limiter's handles */
fail_limits:
    uv_loop_close(&s.loop);
    store_close(st);
fail_store:
    curl_global_cleanup();
    px_log(PX_LOG_INFO, "event=stopped");
    px_config_free(cfg);
    return rc;
}
