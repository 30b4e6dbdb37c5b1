/* privax nodes: the nodes inventory (nodes.yaml) at work.
 *
 *   privax nodes check --nodes FILE [--json] [--timeout-ms N]
 *       GET every node's /health at once; a table (or JSON) of status, load, backends and
 *       GPU figures; exit 69 (EX_UNAVAILABLE) when any node is down or unreachable. It does
 *       what the seed's check-nodes.sh does, without ssh: the GPU figures come from each
 *       node's own /health.
 *   privax nodes nginx-conf --nodes FILE [--listen ADDR] [--method least_conn|round_robin]
 *       print the nginx upstream + server block that balances the nodes. */
#include <curl/curl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "cli/cmd.h"
#include "core/buf.h"
#include "core/err.h"
#include "ops/fetch.h"
#include "ops/nodes.h"

#define HEALTH_BODY_MAX (1024 * 1024) /* bytes of one /health answer */

static void nodes_help(FILE *out)
{
    fprintf(out, "usage: privax nodes check --nodes FILE [--json] [--timeout-ms N]\n"
                 "       privax nodes nginx-conf --nodes FILE [--listen ADDR]\n"
                 "                               [--method least_conn|round_robin]\n"
                 "\n"
                 "check       GET each node's /health: status (ok, degraded, down, unreachable),\n"
                 "            requests in flight, queue, backends up, GPU utilisation and memory.\n"
                 "            Exit 0 when every node answers ok or degraded, 69 when any is down.\n"
                 "nginx-conf  print the nginx upstream and server block for the nodes (include it\n"
                 "            inside http { }); --listen is nginx's listen value (default 80).\n"
                 "\n"
                 "  --nodes FILE       the inventory: nodes: [{name, url, backup?, weight?,\n"
                 "                     max_fails?, fail_timeout_s?}]\n"
                 "  --json             check: a JSON object instead of the table\n"
                 "  --timeout-ms N     check: per-node timeout (default 5000)\n"
                 "  --listen ADDR      nginx-conf: port or host:port to listen on (default 80)\n"
                 "  --method M         nginx-conf: least_conn (default) or round_robin\n");
}

/* What one node said. */
struct node_result {
    const struct ops_node *node;
    struct ops_fetch f;
    const char *status; /* ok | degraded | down | unreachable | error */
    int down;           /* counts as down for the exit status */
    json_t *health;     /* the parsed /health, or NULL */
    char why[300];      /* for down nodes: what happened */
};

static void judge(struct node_result *r)
{
    r->down = 1;
    if (r->f.status == 0) {
        r->status = "unreachable";
        snprintf(r->why, sizeof(r->why), "%s", r->f.error);
        return;
    }
    json_error_t je;
    r->health = json_loadb(r->f.body.data ? r->f.body.data : "", r->f.body.len, 0, &je);
    const char *st = json_string_value(json_object_get(r->health, "status"));
    if (r->f.status == 503 || (st != NULL && strcmp(st, "down") == 0)) {
        r->status = "down";
        snprintf(r->why, sizeof(r->why), "HTTP %d%s%s", r->f.status, st ? ", status " : "",
                 st ? st : "");
        return;
    }
    if (r->f.status != 200 || !json_is_object(r->health) || st == NULL) {
        r->status = "error";
        snprintf(r->why, sizeof(r->why), "HTTP %d, %s", r->f.status,
                 json_is_object(r->health) ? "no status in the answer" : "the answer is not JSON");
        return;
    }
    if (strcmp(st, "degraded") == 0) {
        r->status = "degraded";
    } else {
        r->status = "ok";
    }
    r->down = 0;
}

/* Backends in state "up" (when the node reports states) and in total. */
static void backends_up(json_t *h, int *up, int *total, int *have_state)
{
    json_t *arr = json_object_get(h, "backends");
    size_t i;
    json_t *b;
    *up = *total = *have_state = 0;
    json_array_foreach(arr, i, b)
    {
        const char *s = json_string_value(json_object_get(b, "state"));
        (*total)++;
        if (s != NULL) {
            *have_state = 1;
            *up += strcmp(s, "up") == 0;
        }
    }
}

static json_t *gpus_of(json_t *h)
{
    json_t *out = json_array();
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(h, "gpus"), i, g)
    {
        json_t *o = json_object();
        static const char *const keys[] = {"gpu_id", "utilization_pct", "memory_used_mib",
                                           "memory_total_mib"};
        for (size_t k = 0; k < 4; k++) {
            json_t *v = json_object_get(g, keys[k]);
            json_object_set_new(o, keys[k], json_is_number(v) ? json_copy(v) : json_null());
        }
        json_array_append_new(out, o);
    }
    return out;
}

static int64_t jint(json_t *o, const char *k, int64_t dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static void print_json(struct node_result *r, size_t n, size_t ndown)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_t *h = r[i].health;
        int up, total, have_state;
        backends_up(h, &up, &total, &have_state);
        json_object_set_new(o, "name", json_string(r[i].node->name));
        json_object_set_new(o, "url", json_string(r[i].node->url));
        json_object_set_new(o, "backup", json_boolean(r[i].node->backup));
        json_object_set_new(o, "status", json_string(r[i].status));
        json_object_set_new(o, "down", json_boolean(r[i].down));
        json_object_set_new(o, "http_status",
                            r[i].f.status ? json_integer(r[i].f.status) : json_null());
        json_object_set_new(o, "ms", json_integer((json_int_t)r[i].f.ms));
        json_object_set_new(o, "error", r[i].why[0] ? json_string(r[i].why) : json_null());
        json_object_set_new(o, "node_id",
                            json_is_string(json_object_get(h, "node_id"))
                                ? json_copy(json_object_get(h, "node_id"))
                                : json_null());
        int64_t inflight = jint(h, "inflight", -1);
        int64_t queue = jint(json_object_get(h, "queue"), "length", -1);
        json_object_set_new(o, "inflight", inflight >= 0 ? json_integer(inflight) : json_null());
        json_object_set_new(o, "queue_length", queue >= 0 ? json_integer(queue) : json_null());
        json_object_set_new(o, "backends_up", h && have_state ? json_integer(up) : json_null());
        json_object_set_new(o, "backends_total", h ? json_integer(total) : json_null());
        json_object_set_new(o, "gpus", gpus_of(h));
        json_array_append_new(arr, o);
    }
    json_t *root =
        json_pack("{s:o,s:I,s:I}", "nodes", arr, "down", (json_int_t)ndown, "total", (json_int_t)n);
    char *s = json_dumps(root, JSON_INDENT(2));
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(root);
}

/* "0:37% 1:-" and "0:1024/16384" for a node's GPUs ("-" when it reports none). */
static void gpu_cells(json_t *h, char *util, size_t ucap, char *mem, size_t mcap)
{
    struct buf u, m;
    buf_init(&u, ucap - 1);
    buf_init(&m, mcap - 1);
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(h, "gpus"), i, g)
    {
        json_t *uv = json_object_get(g, "utilization_pct");
        json_t *mu = json_object_get(g, "memory_used_mib");
        json_t *mt = json_object_get(g, "memory_total_mib");
        int id = (int)jint(g, "gpu_id", -1);
        if (json_is_number(uv)) {
            buf_printf(&u, "%s%d:%.0f%%", i ? " " : "", id, json_number_value(uv));
        } else {
            buf_printf(&u, "%s%d:-", i ? " " : "", id);
        }
        if (json_is_number(mu) && json_is_number(mt)) {
            buf_printf(&m, "%s%d:%.0f/%.0f", i ? " " : "", id, json_number_value(mu),
                       json_number_value(mt));
        } else {
            buf_printf(&m, "%s%d:-", i ? " " : "", id);
        }
    }
    snprintf(util, ucap, "%s", u.len ? u.data : "-");
    snprintf(mem, mcap, "%s", m.len ? m.data : "-");
    buf_cleanup(&u);
    buf_cleanup(&m);
}

static void print_table(struct node_result *r, size_t n, size_t ndown)
{
    printf("%-16s %-11s %4s %6s %8s %5s %8s  %-20s %-22s\n", "NODE", "STATUS", "HTTP", "MS",
           "INFLIGHT", "QUEUE", "BACKENDS", "GPU UTIL", "GPU MEM MiB");
    for (size_t i = 0; i < n; i++) {
        json_t *h = r[i].health;
        char name[80], http[16], infl[24], queue[24], be[24], util[200], mem[300];
        snprintf(name, sizeof(name), "%s%s", r[i].node->name, r[i].node->backup ? " (b)" : "");
        snprintf(http, sizeof(http), r[i].f.status ? "%d" : "-", r[i].f.status);
        int64_t inflight = jint(h, "inflight", -1);
        int64_t ql = jint(json_object_get(h, "queue"), "length", -1);
        snprintf(infl, sizeof(infl), inflight >= 0 ? "%" PRId64 : "-", inflight);
        snprintf(queue, sizeof(queue), ql >= 0 ? "%" PRId64 : "-", ql);
        int up, total, have_state;
        backends_up(h, &up, &total, &have_state);
        if (h == NULL) {
            snprintf(be, sizeof(be), "-");
        } else if (have_state) {
            snprintf(be, sizeof(be), "%d/%d", up, total);
        } else {
            snprintf(be, sizeof(be), "%d", total);
        }
        gpu_cells(h, util, sizeof(util), mem, sizeof(mem));
        printf("%-16s %-11s %4s %6" PRIu64 " %8s %5s %8s  %-20s %-22s\n", name, r[i].status, http,
               r[i].f.ms, infl, queue, be, util, mem);
        if (r[i].down) {
            printf("    %s: %s\n", r[i].node->url, r[i].why);
        }
    }
    printf("%zu of %zu node(s) down\n", ndown, n);
}

static int check(const char *nodes_path, int json, long timeout_ms)
{
    char err[1024];
    struct ops_nodes *nodes = NULL;
    if (ops_nodes_load(nodes_path, &nodes, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return EX_CONFIG;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        ops_nodes_free(nodes);
        fprintf(stderr, "privax nodes: curl_global_init failed\n");
        return EX_SOFTWARE;
    }
    struct node_result *r = calloc(nodes->n, sizeof(*r));
    struct ops_fetch *f = calloc(nodes->n, sizeof(*f));
    char **urls = calloc(nodes->n, sizeof(*urls));
    if (r == NULL || f == NULL || urls == NULL) {
        fprintf(stderr, "privax nodes: out of memory\n");
        exit(EX_OSERR);
    }
    for (size_t i = 0; i < nodes->n; i++) {
        size_t len = strlen(nodes->v[i].url) + sizeof("/health");
        urls[i] = malloc(len);
        if (urls[i] == NULL) {
            exit(EX_OSERR);
        }
        snprintf(urls[i], len, "%s/health", nodes->v[i].url);
        f[i].url = urls[i];
        buf_init(&f[i].body, HEALTH_BODY_MAX);
    }
    ops_fetch_all(f, nodes->n, (uint64_t)timeout_ms);
    size_t ndown = 0;
    for (size_t i = 0; i < nodes->n; i++) {
        r[i].node = &nodes->v[i];
        r[i].f = f[i];
        judge(&r[i]);
        ndown += (size_t)r[i].down;
    }
    if (json) {
        print_json(r, nodes->n, ndown);
    } else {
        print_table(r, nodes->n, ndown);
    }
    for (size_t i = 0; i < nodes->n; i++) {
        json_decref(r[i].health);
        buf_cleanup(&f[i].body);
        free(urls[i]);
    }
    free(urls);
    free(f);
    free(r);
    ops_nodes_free(nodes);
    curl_global_cleanup();
    return ndown ? EX_UNAVAILABLE : EX_OK;
}

static int nginx_conf(const char *nodes_path, const char *listen, const char *method)
{
    char err[1024];
    struct ops_nginx_opts o;
    ops_nginx_opts_default(&o);
    if (listen != NULL) {
        if (!ops_listen_valid(listen)) {
            fprintf(stderr, "privax nodes: --listen must be a port or host:port, got '%s'\n",
                    listen);
            return EX_USAGE;
        }
        o.listen = listen;
    }
    if (method != NULL) {
        if (strcmp(method, "least_conn") == 0) {
            o.method = OPS_LEAST_CONN;
        } else if (strcmp(method, "round_robin") == 0) {
            o.method = OPS_ROUND_ROBIN;
        } else {
            fprintf(stderr, "privax nodes: --method must be least_conn or round_robin\n");
            return EX_USAGE;
        }
    }
    struct ops_nodes *nodes = NULL;
    if (ops_nodes_load(nodes_path, &nodes, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return EX_CONFIG;
    }
    o.source = nodes_path;
    struct buf b;
    buf_init(&b, 4 * 1024 * 1024);
    int rc = ops_nginx_render(nodes, &o, &b);
    if (rc == 0) {
        fwrite(b.data, 1, b.len, stdout);
    } else {
        fprintf(stderr, "privax nodes: cannot render: %s\n", px_strerror(rc));
    }
    buf_cleanup(&b);
    ops_nodes_free(nodes);
    return rc == 0 ? EX_OK : EX_SOFTWARE;
}

int cli_cmd_nodes(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"nodes", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"listen", required_argument, NULL, 'l'},
        {"method", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *nodes_path = NULL, *listen = NULL, *method = NULL;
    int json = 0;
    long timeout_ms = 5000;
    int opt;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        nodes_help(stdout);
        return EX_OK;
    }
    if (argc < 2 || (strcmp(argv[1], "check") != 0 && strcmp(argv[1], "nginx-conf") != 0)) {
        fprintf(stderr, "privax nodes: expected 'check' or 'nginx-conf'\n");
        nodes_help(stderr);
        return EX_USAGE;
    }
    const char *sub = argv[1];
    optind = 1;
    while ((opt = getopt_long(argc - 1, argv + 1, "n:jt:l:m:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            nodes_path = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 't':
            if (cli_parse_timeout_ms("nodes", optarg, &timeout_ms) != EX_OK) {
                return EX_USAGE;
            }
            break;
        case 'l':
            listen = optarg;
            break;
        case 'm':
            method = optarg;
            break;
        case 'h':
            nodes_help(stdout);
            return EX_OK;
        default:
            nodes_help(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1 || nodes_path == NULL) {
        fprintf(stderr, "privax nodes %s: %s\n", sub,
                nodes_path ? "unexpected argument" : "--nodes FILE is required");
        return EX_USAGE;
    }
    if (strcmp(sub, "check") == 0) {
        if (listen != NULL || method != NULL) {
            fprintf(stderr, "privax nodes check: --listen and --method are for nginx-conf\n");
            return EX_USAGE;
        }
        return check(nodes_path, json, timeout_ms);
    }
    if (json) {
        fprintf(stderr, "privax nodes nginx-conf: --json is for check\n");
        return EX_USAGE;
    }
    return nginx_conf(nodes_path, listen, method);
}
