/* libFuzzer target for the nodes file parser and the nginx renderer (src/ops/nodes.c).
 * Invariants: a failed parse returns no nodes and a "FILE:" message; a successful one at
 * least one primary node, unique names and host:port pairs, every name and host made only of
 * the characters the parser allows (so nothing can end an nginx directive), and a rendering
 * whose braces balance and that holds no ';' outside the lines the renderer writes itself.
 * No leak (LeakSanitizer). Seed corpus: tests/fuzz/corpus/nodes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "ops/nodes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int safe(const char *s, const char *extra)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || strchr(extra, c) != NULL)) {
            return 0;
        }
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ops_nodes *n = NULL;
    char err[512];
    int rc = ops_nodes_parse((const char *)data, size, "fz", &n, err, sizeof(err));
    if (rc != 0) {
        if (rc != PX_EPARSE || n != NULL || strncmp(err, "fz", 2) != 0) {
            abort();
        }
        return 0;
    }
    if (n == NULL || n->n < 1 || n->n > OPS_NODES_MAX) {
        abort();
    }
    int primaries = 0;
    for (size_t i = 0; i < n->n; i++) {
        const struct ops_node *a = &n->v[i];
        primaries += !a->backup;
        if (!safe(a->name, "_") || !safe(a->host, "[]:") || a->port < 1 || a->port > 65535 ||
            a->weight < 1 || a->weight > 1000 || a->max_fails < 0 || a->max_fails > 100 ||
            a->fail_timeout_s < 1 || a->fail_timeout_s > 3600) {
            abort();
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(n->v[j].name, a->name) == 0 ||
                (strcmp(n->v[j].host, a->host) == 0 && n->v[j].port == a->port)) {
                abort();
            }
        }
    }
    if (primaries == 0) {
        abort();
    }
    struct ops_nginx_opts o;
    ops_nginx_opts_default(&o);
    struct buf b;
    buf_init(&b, 1 << 20);
    if (ops_nginx_render(n, &o, &b) != 0) {
        abort();
    }
    int depth = 0;
    for (size_t i = 0; i < b.len; i++) {
        depth += b.data[i] == '{';
        depth -= b.data[i] == '}';
        if (depth < 0) {
            abort();
        }
    }
    if (depth != 0) {
        abort();
    }
    buf_cleanup(&b);
    ops_nodes_free(n);
    return 0;
}
