/* nodes.yaml: parsing (libfyaml document API) and the nginx configuration made from it.
 *
 * The parser follows the config loader's rules (src/config/config.c): the text is checked
 * for NUL bytes and invalid UTF-8 before libfyaml sees it (libfyaml 0.7.12 loops forever on
 * some invalid UTF-8), aliases and tags are refused, an unknown or repeated key is an error
 * with its line, numbers are plain decimals and booleans are true or false. Every value that
 * ends up in the nginx text is restricted to characters that cannot end or start an nginx
 * token (no spaces, quotes, ';', '{', '}', '#', '$'), so a nodes file cannot inject
 * directives. */
#include "ops/nodes.h"

#include <errno.h>
#include <libfyaml.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/yaml.h"
#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"

#define NP_DEPTH_MAX 64 /* levels node_line() descends looking for a scalar */

struct np {
    struct cfg_yaml_err ye; /* file name ("nodes" when none) and message buffer, PX_EPARSE */
};

static int np_fail(struct np *p, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int np_fail(struct np *p, int line, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cfg_yaml_vfail(&p->ye, line, where, fmt, ap);
    va_end(ap);
    return rc;
}

/* 1-based line of a node, or fallback (see cfg_yaml_node_line). */
static int node_line(struct fy_node *n, int fallback)
{
    return cfg_yaml_node_line(n, fallback, NP_DEPTH_MAX);
}

static int check_plain(struct np *p, struct fy_node *v, const char *where, int line)
{
    return cfg_yaml_check_plain(&p->ye, v, where, line, NP_DEPTH_MAX);
}

/* The scalar's bytes, or an error saying what was expected. */
static int scalar(struct np *p, struct fy_node *v, const char *where, int line, const char *what,
                  const char **s, size_t *len)
{
    return cfg_yaml_scalar(&p->ye, v, where, line, NP_DEPTH_MAX, what, s, len);
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-';
}

static int v6_char(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' ||
           c == '.';
}

/* A decimal port 1..65535 from (s, n). */
static int parse_port(const char *s, size_t n, int *port)
{
    if (n == 0 || n > 5) {
        return PX_EPARSE;
    }
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return PX_EPARSE;
        }
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535) {
        return PX_EPARSE;
    }
    *port = v;
    return 0;
}

/* host[:port] where host is a name/IPv4 (host_char) or "[v6]". *host_len excludes the port.
 * Returns 0 or PX_EPARSE. */
static int parse_hostport(const char *s, size_t n, size_t *host_len, int *port, int need_port)
{
    size_t h;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (close == NULL || close == s + 1) {
            return PX_EPARSE;
        }
        h = (size_t)(close - s) + 1;
        for (size_t i = 1; i + 1 < h; i++) {
            if (!v6_char(s[i])) {
                return PX_EPARSE;
            }
        }
    } else {
        h = 0;
        while (h < n && s[h] != ':') {
            if (!host_char(s[h])) {
                return PX_EPARSE;
            }
            h++;
        }
        if (h == 0 || s[0] == '-' || s[0] == '.') {
            return PX_EPARSE;
        }
    }
    *host_len = h;
    if (h == n) {
        if (need_port) {
            return PX_EPARSE;
        }
        *port = 80;
        return 0;
    }
    if (s[h] != ':') {
        return PX_EPARSE;
    }
    return parse_port(s + h + 1, n - h - 1, port);
}

static int parse_int(const char *s, size_t n, int lo, int hi, int *out)
{
    if (n == 0 || n > 9) {
        return PX_EPARSE;
    }
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return PX_EPARSE;
        }
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) {
        return PX_EPARSE;
    }
    *out = (int)v;
    return 0;
}

static const char *const node_keys[] = {"name",   "url",       "backup",
                                        "weight", "max_fails", "fail_timeout_s"};
#define NKEYS (sizeof(node_keys) / sizeof(node_keys[0]))

static int load_node(struct np *p, struct fy_node *map, size_t idx, struct ops_node *nd,
                     int fallback_line)
{
    char where[64];
    snprintf(where, sizeof(where), "nodes[%zu]", idx);
    int line = node_line(map, fallback_line);
    nd->line = line;
    nd->weight = 1;
    nd->max_fails = 3;
    nd->fail_timeout_s = 30;
    int rc = check_plain(p, map, where, line);
    if (rc < 0) {
        return rc;
    }
    if (fy_node_get_type(map) != FYNT_MAPPING) {
        return np_fail(p, line, where, "expected a mapping {name, url}");
    }
    struct fy_node *val[NKEYS] = {0};
    int kline[NKEYS] = {0};
    void *it = NULL;
    struct fy_node_pair *pr;
    while ((pr = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *k = fy_node_pair_key(pr);
        const char *ks;
        size_t kl;
        if ((rc = scalar(p, k, where, line, "a key", &ks, &kl)) < 0) {
            return rc;
        }
        int kln = node_line(k, line);
        size_t i = 0;
        while (i < NKEYS && !(strlen(node_keys[i]) == kl && memcmp(node_keys[i], ks, kl) == 0)) {
            i++;
        }
        if (i == NKEYS) {
            char shown[48];
            size_t m = kl > 40 ? 40 : kl;
            for (size_t j = 0; j < m; j++) {
                shown[j] = (unsigned char)ks[j] < 0x20 ? '?' : ks[j];
            }
            shown[m] = '\0';
            return np_fail(p, kln, where,
                           "unknown key '%s' (have name, url, backup, weight, max_fails, "
                           "fail_timeout_s)",
                           shown);
        }
        if (val[i] != NULL) {
            return np_fail(p, kln, where, "key '%s' given twice (first on line %d)", node_keys[i],
                           kline[i]);
        }
        val[i] = fy_node_pair_value(pr);
        kline[i] = kln;
    }
    const char *s;
    size_t n;
    char w2[96];
    /* name */
    snprintf(w2, sizeof(w2), "%s.name", where);
    if (val[0] == NULL) {
        return np_fail(p, line, where, "missing key 'name'");
    }
    if ((rc = scalar(p, val[0], w2, kline[0], "a name", &s, &n)) < 0) {
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (!name_char(s[i])) {
            return np_fail(p, node_line(val[0], kline[0]), w2,
                           "only letters, digits, '.', '_' and '-' are allowed");
        }
    }
    if (n == 0 || n > 64) {
        return np_fail(p, node_line(val[0], kline[0]), w2, "must be 1 to 64 bytes");
    }
    nd->name = px_strndup(s, n);
    /* url */
    snprintf(w2, sizeof(w2), "%s.url", where);
    if (val[1] == NULL) {
        return np_fail(p, line, where, "missing key 'url'");
    }
    if ((rc = scalar(p, val[1], w2, kline[1], "a URL", &s, &n)) < 0) {
        return rc;
    }
    int uline = node_line(val[1], kline[1]);
    if (n < 8 || memcmp(s, "http://", 7) != 0) {
        return np_fail(p, uline, w2, "must be http://host[:port] (the node's privax)");
    }
    size_t rest = n - 7;
    if (rest > 0 && s[n - 1] == '/') {
        rest--; /* one trailing slash is fine */
    }
    size_t hl;
    if (rest == 0 || rest > 300 || parse_hostport(s + 7, rest, &hl, &nd->port, 0) < 0) {
        return np_fail(p, uline, w2,
                       "must be http://host[:port] with no path: host a name, an IPv4 address "
                       "or [IPv6], port 1-65535");
    }
    nd->url = px_strndup(s, 7 + rest);
    nd->host = px_strndup(s + 7, hl);
    /* backup */
    if (val[2] != NULL) {
        snprintf(w2, sizeof(w2), "%s.backup", where);
        if ((rc = scalar(p, val[2], w2, kline[2], "true or false", &s, &n)) < 0) {
            return rc;
        }
        if (fy_node_get_style(val[2]) == FYNS_PLAIN && n == 4 && memcmp(s, "true", 4) == 0) {
            nd->backup = 1;
        } else if (fy_node_get_style(val[2]) == FYNS_PLAIN && n == 5 &&
                   memcmp(s, "false", 5) == 0) {
            nd->backup = 0;
        } else {
            return np_fail(p, node_line(val[2], kline[2]), w2, "must be true or false");
        }
    }
    static const struct {
        int lo, hi;
    } bounds[] = {{1, 1000}, {0, 100}, {1, 3600}};
    int *dst[] = {&nd->weight, &nd->max_fails, &nd->fail_timeout_s};
    for (size_t k = 0; k < 3; k++) {
        if (val[3 + k] == NULL) {
            continue;
        }
        snprintf(w2, sizeof(w2), "%s.%s", where, node_keys[3 + k]);
        if ((rc = scalar(p, val[3 + k], w2, kline[3 + k], "an integer", &s, &n)) < 0) {
            return rc;
        }
        if (fy_node_get_style(val[3 + k]) != FYNS_PLAIN ||
            parse_int(s, n, bounds[k].lo, bounds[k].hi, dst[k]) < 0) {
            return np_fail(p, node_line(val[3 + k], kline[3 + k]), w2,
                           "must be an integer from %d to %d", bounds[k].lo, bounds[k].hi);
        }
    }
    return 0;
}

static int load_root(struct np *p, struct fy_node *root, struct ops_nodes *out)
{
    int rc = check_plain(p, root, NULL, 1);
    if (rc < 0) {
        return rc;
    }
    if (fy_node_get_type(root) != FYNT_MAPPING) {
        return np_fail(p, node_line(root, 1), NULL, "expected a mapping with the key 'nodes'");
    }
    struct fy_node *list = NULL;
    int list_line = 1;
    void *it = NULL;
    struct fy_node_pair *pr;
    while ((pr = fy_node_mapping_iterate(root, &it)) != NULL) {
        const char *ks;
        size_t kl;
        struct fy_node *k = fy_node_pair_key(pr);
        if ((rc = scalar(p, k, NULL, 1, "a key", &ks, &kl)) < 0) {
            return rc;
        }
        if (kl != 5 || memcmp(ks, "nodes", 5) != 0) {
            return np_fail(p, node_line(k, 1), NULL, "unknown key (the file has only 'nodes')");
        }
        if (list != NULL) {
            return np_fail(p, node_line(k, 1), NULL, "key 'nodes' given twice");
        }
        list = fy_node_pair_value(pr);
        list_line = node_line(k, 1);
        if (list == NULL) {
            return np_fail(p, list_line, "nodes", "expected a list of {name, url}");
        }
    }
    if (list == NULL) {
        return np_fail(p, 1, NULL, "missing key 'nodes'");
    }
    if ((rc = check_plain(p, list, "nodes", list_line)) < 0) {
        return rc;
    }
    if (fy_node_get_type(list) != FYNT_SEQUENCE) {
        return np_fail(p, node_line(list, list_line), "nodes", "expected a list of {name, url}");
    }
    int count = fy_node_sequence_item_count(list);
    if (count <= 0) {
        return np_fail(p, list_line, "nodes", "the list is empty");
    }
    if (count > OPS_NODES_MAX) {
        return np_fail(p, list_line, "nodes", "more than %d nodes", OPS_NODES_MAX);
    }
    out->v = px_calloc((size_t)count, sizeof(*out->v));
    it = NULL;
    struct fy_node *item;
    int primaries = 0;
    while ((item = fy_node_sequence_iterate(list, &it)) != NULL) {
        size_t i = out->n;
        struct ops_node *nd = &out->v[i];
        out->n++; /* counted at once, so ops_nodes_free sees a half-built entry */
        if ((rc = load_node(p, item, i, nd, list_line)) < 0) {
            return rc;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(out->v[j].name, nd->name) == 0) {
                return np_fail(p, nd->line, "nodes", "name '%s' used twice (line %d and %d)",
                               nd->name, out->v[j].line, nd->line);
            }
            if (strcmp(out->v[j].host, nd->host) == 0 && out->v[j].port == nd->port) {
                return np_fail(p, nd->line, "nodes", "%s:%d listed twice (line %d and %d)",
                               nd->host, nd->port, out->v[j].line, nd->line);
            }
        }
        primaries += !nd->backup;
    }
    if (primaries == 0) {
        return np_fail(p, list_line, "nodes", "every node is a backup: nginx needs a primary");
    }
    return 0;
}

int ops_nodes_parse(const char *data, size_t len, const char *fname, struct ops_nodes **out,
                    char *err, size_t errcap)
{
    struct np p = {
        .ye = {.fname = fname ? fname : "nodes", .buf = err, .cap = errcap, .code = PX_EPARSE}};
    struct cfg_yaml_doc yd = {0};
    struct ops_nodes *nodes = NULL;
    int rc;

    *out = NULL;
    if (err != NULL && errcap > 0) {
        err[0] = '\0';
    }
    if (len > OPS_NODES_FILE_MAX) {
        return np_fail(&p, 0, NULL, "file is larger than %d bytes", OPS_NODES_FILE_MAX);
    }
    if ((rc = cfg_yaml_doc_parse(&yd, &p.ye, data, len, "a nodes file",
                                 "empty file (expected 'nodes: [{name, url}, ...]')")) < 0) {
        goto done;
    }
    nodes = px_calloc(1, sizeof(*nodes));
    if ((rc = load_root(&p, yd.root, nodes)) < 0) {
        goto done;
    }
    *out = nodes;
    nodes = NULL;
    rc = 0;
done:
    ops_nodes_free(nodes);
    cfg_yaml_doc_cleanup(&yd);
    return rc;
}

int ops_nodes_load(const char *path, struct ops_nodes **out, char *err, size_t errcap)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errcap, "%s: cannot open: %s", path, strerror(errno));
        return PX_EPARSE;
    }
    char *data = px_malloc(OPS_NODES_FILE_MAX + 1);
    size_t n = fread(data, 1, OPS_NODES_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) {
        snprintf(err, errcap, "%s: cannot read", path);
        rc = PX_EPARSE;
    } else {
        rc = ops_nodes_parse(data, n, path, out, err, errcap);
    }
    free(data);
    return rc;
}

void ops_nodes_free(struct ops_nodes *n)
{
    if (n == NULL) {
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        free(n->v[i].name);
        free(n->v[i].url);
        free(n->v[i].host);
    }
    free(n->v);
    free(n);
}

/* ------------------------------------------------------------------------------------------
 * nginx */

void ops_nginx_opts_default(struct ops_nginx_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->listen = "80";
    o->method = OPS_LEAST_CONN;
    o->upstream = "privax";
    o->keepalive = 32;
    o->body_max_bytes = 4194304;
    o->read_timeout_s = 600;
    o->connect_timeout_s = 5;
}

int ops_listen_valid(const char *s)
{
    size_t n = strlen(s);
    size_t hl;
    int port;
    if (n == 0 || n > 300) {
        return 0;
    }
    if (strchr(s, ':') == NULL && s[0] != '[') {
        return parse_port(s, n, &port) == 0;
    }
    return parse_hostport(s, n, &hl, &port, 1) == 0;
}

int ops_nginx_render(const struct ops_nodes *nodes, const struct ops_nginx_opts *o, struct buf *out)
{
    const char *up = o->upstream ? o->upstream : "privax";
    for (const char *c = up; *c; c++) {
        if (!name_char(*c)) {
            return PX_EPARSE;
        }
    }
    if (up[0] == '\0' || !ops_listen_valid(o->listen)) {
        return PX_EPARSE;
    }
    int rc = 0;
#define OUT(...)                                                                                   \
    do {                                                                                           \
        if (rc == 0) {                                                                             \
            rc = buf_printf(out, __VA_ARGS__);                                                     \
        }                                                                                          \
    } while (0)
    OUT("# privax behind nginx, generated by `privax nodes nginx-conf`%s%s.\n"
        "# Include it inside http { } (Debian: /etc/nginx/conf.d/privax.conf), check with\n"
        "# `nginx -t`, then `nginx -s reload`. Regenerate it when the nodes file changes.\n\n",
        o->source ? "\n# from " : "", o->source ? o->source : "");
    OUT("upstream %s {\n", up);
    if (o->method == OPS_LEAST_CONN) {
        OUT("    # Generation takes seconds to minutes: send each request to the node with the\n"
            "    # fewest requests in progress rather than in turn.\n"
            "    least_conn;\n");
    } else {
        OUT("    # Weighted round-robin (nginx's default method).\n");
    }
    OUT("    # max_fails failed attempts within fail_timeout take a node out for fail_timeout;\n"
        "    # a backup node gets traffic only while every other node is out.\n");
    for (size_t i = 0; i < nodes->n; i++) {
        const struct ops_node *nd = &nodes->v[i];
        OUT("    server %s:%d", nd->host, nd->port);
        if (nd->weight != 1) {
            OUT(" weight=%d", nd->weight);
        }
        OUT(" max_fails=%d fail_timeout=%ds%s;  # %s\n", nd->max_fails, nd->fail_timeout_s,
            nd->backup ? " backup" : "", nd->name);
    }
    OUT("    # Idle keep-alive connections to the nodes, per nginx worker. nginx closes them\n"
        "    # after 60 s idle, before privax would (http.keepalive_timeout_ms, 75 s).\n"
        "    keepalive %d;\n"
        "}\n\n",
        o->keepalive);
    OUT("server {\n"
        "    listen %s;\n"
        "    server_name _;\n\n"
        "    # privax's own cap is http.body_max_bytes (4 MiB by default): keep them equal so\n"
        "    # nginx does not refuse what privax would take.\n"
        "    client_max_body_size %llu;\n\n",
        o->listen, (unsigned long long)o->body_max_bytes);
    OUT("    location / {\n"
        "        proxy_pass http://%s;\n"
        "        # HTTP/1.1 with an empty Connection header, so upstream keep-alive works.\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_set_header Connection \"\";\n"
        "        proxy_set_header Host $host;\n"
        "        proxy_set_header X-Real-IP $remote_addr;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n",
        up);
    OUT("        # Who is asking: passed through unchanged (privax reads them; the body never\n"
        "        # names the tenant). Authorization is passed by default.\n"
        "        proxy_set_header X-Tenant-ID $http_x_tenant_id;\n"
        "        proxy_set_header X-User-ID $http_x_user_id;\n"
        "        proxy_set_header X-Plan-Tier $http_x_plan_tier;\n"
        "        proxy_set_header X-Request-ID $http_x_request_id;\n\n");
    OUT("        # Streams (text/event-stream) go to the client as the model writes them.\n"
        "        proxy_buffering off;\n"
        "        proxy_cache off;\n\n");
    OUT("        # Retry on another node only when the request never reached a GPU: the node\n"
        "        # could not be reached or sent no response head (error, timeout; privax's\n"
        "        # own first_byte_ms ends a slow generation with 504 long before\n"
        "        # proxy_read_timeout), or privax said 502 (its backend failed before\n"
        "        # answering) or 503 (busy, queue full, draining).\n"
        "        # non_idempotent: chat completions are POSTs, and these failures are safe to\n"
        "        # retry. Nothing is retried once the answer has started (nginx never does).\n"
        "        proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n"
        "        proxy_next_upstream_tries %zu;\n\n",
        nodes->n);
    OUT("        # A dead node fails fast; generation may take minutes before and between\n"
        "        # tokens (privax's own first_byte_ms and idle_ms fire first).\n"
        "        proxy_connect_timeout %llus;\n"
        "        proxy_send_timeout %llus;\n"
        "        proxy_read_timeout %llus;\n"
        "    }\n"
        "}\n",
        (unsigned long long)o->connect_timeout_s, (unsigned long long)o->read_timeout_s,
        (unsigned long long)o->read_timeout_s);
#undef OUT
    return rc;
}
