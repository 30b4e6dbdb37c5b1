#ifndef PX_OPS_NODES_H
#define PX_OPS_NODES_H

/* The nodes inventory (nodes.yaml) and what is made from it: the nginx upstream and server
 * block that balances the nodes. The file:
 *
 *   nodes:
 *     - name: node1                 # unique; letters, digits, '.', '_', '-'
 *       url: http://10.0.0.1:8000   # the node's privax (http://host[:port], no path)
 *     - name: node2
 *       url: http://10.0.0.2:8000
 *       backup: true                # optional: nginx uses it only while the others are down
 *       weight: 1                   # optional, 1..1000
 *       max_fails: 3                # optional, nginx max_fails (0 = never marked failed)
 *       fail_timeout_s: 30          # optional, nginx fail_timeout in seconds
 *
 * Errors are "FILE:LINE: key: message". Pure parsing (no I/O except ops_nodes_load reading
 * the file); any thread. See docs/internals/scale.md. */

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define OPS_NODES_MAX      256          /* nodes in one file */
#define OPS_NODES_FILE_MAX (256 * 1024) /* bytes of one file */

struct ops_node {
    char *name;         /* unique id, 1..64 bytes of [A-Za-z0-9._-] */
    char *url;          /* "http://host:port" as given, without a trailing slash */
    char *host;         /* host part: a name, an IPv4 address or "[v6]" */
    int port;           /* 1..65535 (80 when the URL has none) */
    int backup;         /* 1: nginx "backup" */
    int weight;         /* nginx weight, 1..1000 (default 1) */
    int max_fails;      /* nginx max_fails, 0..100 (default 3) */
    int fail_timeout_s; /* nginx fail_timeout in seconds, 1..3600 (default 30) */
    int line;           /* line of the entry in the file */
};

struct ops_nodes {
    struct ops_node *v; /* n entries, in file order */
    size_t n;           /* >= 1 */
};

/* Parse a nodes file held in (data, len); fname is used in messages. 0 and *out (free with
 * ops_nodes_free), or PX_EPARSE with "FILE:LINE: message" in err (errcap bytes). Rejects
 * anything not described above: unknown keys, duplicate names or URLs, aliases, tags,
 * invalid UTF-8, NUL bytes, files over OPS_NODES_FILE_MAX, more than OPS_NODES_MAX nodes, and
 * a file where every node is a backup. */
int ops_nodes_parse(const char *data, size_t len, const char *fname, struct ops_nodes **out,
                    char *err, size_t errcap);

/* Read path and parse it. Same results; a file that cannot be read is PX_EPARSE too. */
int ops_nodes_load(const char *path, struct ops_nodes **out, char *err, size_t errcap);

/* NULL is a no-op. */
void ops_nodes_free(struct ops_nodes *n);

enum ops_balance {
    OPS_LEAST_CONN = 0, /* nginx least_conn: the node with the fewest active connections */
    OPS_ROUND_ROBIN,    /* nginx's default, weighted round-robin */
};

struct ops_nginx_opts {
    const char *listen;         /* nginx "listen" value: "80", "8080", "127.0.0.1:8080" */
    enum ops_balance method;    /* balancing method */
    const char *upstream;       /* upstream block name, default "privax" */
    const char *source;         /* the nodes file, named in the header comment (may be NULL) */
    int keepalive;              /* idle upstream connections kept per worker, default 32 */
    uint64_t body_max_bytes;    /* client_max_body_size, default 4 MiB (privax's default) */
    uint64_t read_timeout_s;    /* proxy_read_timeout / proxy_send_timeout, default 600 */
    uint64_t connect_timeout_s; /* proxy_connect_timeout, default 5 */
};

/* Defaults for every field above (listen "80"). */
void ops_nginx_opts_default(struct ops_nginx_opts *o);

/* 1 when s is a listen value this renderer accepts: a port, or host:port with a host of
 * letters, digits, '.', '-', or "[v6]". Nothing that could end an nginx directive. */
int ops_listen_valid(const char *s);

/* Append the nginx configuration (an upstream block and a server block, for inclusion inside
 * http { }, e.g. /etc/nginx/conf.d/privax.conf) to out. 0, PX_EOVERFLOW, or PX_EPARSE for an
 * invalid listen or upstream name. */
int ops_nginx_render(const struct ops_nodes *nodes, const struct ops_nginx_opts *o,
                     struct buf *out);

#endif
