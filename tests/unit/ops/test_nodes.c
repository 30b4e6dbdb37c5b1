/* nodes.yaml: what is accepted (with defaults), what is refused with FILE:LINE, and the
 * nginx configuration rendered from it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "ops/nodes.h"

static struct ops_nodes *parse_ok(const char *text)
{
    struct ops_nodes *n = NULL;
    char err[512];
    int rc = ops_nodes_parse(text, strlen(text), "nodes.yaml", &n, err, sizeof(err));
    if (rc != 0) {
        print_error("unexpected error: %s\n", err);
        fail();
    }
    return n;
}

static void test_good(void **state)
{
    (void)state;
    struct ops_nodes *n = parse_ok("# two nodes\n"
                                   "nodes:\n"
                                   "  - name: node1\n"
                                   "    url: http://10.0.0.1:8000\n"
                                   "  - name: node-2.b_x\n"
                                   "    url: http://gpu2.internal:8000/\n"
                                   "    backup: true\n"
                                   "    weight: 3\n"
                                   "    max_fails: 0\n"
                                   "    fail_timeout_s: 10\n"
                                   "  - {name: v6, url: \"http://[::1]:9000\"}\n"
                                   "  - {name: p80, url: http://h}\n");
    assert_int_equal(n->n, 4);
    assert_string_equal(n->v[0].name, "node1");
    assert_string_equal(n->v[0].url, "http://10.0.0.1:8000");
    assert_string_equal(n->v[0].host, "10.0.0.1");
    assert_int_equal(n->v[0].port, 8000);
    assert_int_equal(n->v[0].backup, 0);
    assert_int_equal(n->v[0].weight, 1);
    assert_int_equal(n->v[0].max_fails, 3);
    assert_int_equal(n->v[0].fail_timeout_s, 30);
    assert_int_equal(n->v[0].line, 3);
    assert_string_equal(n->v[1].url, "http://gpu2.internal:8000"); /* trailing slash dropped */
    assert_int_equal(n->v[1].backup, 1);
    assert_int_equal(n->v[1].weight, 3);
    assert_int_equal(n->v[1].max_fails, 0);
    assert_int_equal(n->v[1].fail_timeout_s, 10);
    assert_string_equal(n->v[2].host, "[::1]");
    assert_int_equal(n->v[2].port, 9000);
    assert_int_equal(n->v[3].port, 80);
    ops_nodes_free(n);
}

static void test_bad_table(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *want; /* substring of the message, which starts "nodes.yaml:LINE: " */
    } cases[] = {
        {"", "nodes.yaml:1: empty file"},
        {"# nothing\n", "empty file"},
        {"nodes: []\n", "nodes.yaml:1: nodes: the list is empty"},
        {"nodes:\n", "nodes.yaml:1: nodes: expected a list"},
        {"nodes: 5\n", "expected a list"},
        {"node:\n  - {name: a, url: http://h:1}\n", "nodes.yaml:1: unknown key"},
        {"- a\n", "expected a mapping with the key 'nodes'"},
        {"nodes:\n  - name: a\n", "nodes.yaml:2: nodes[0]: missing key 'url'"},
        {"nodes:\n  - url: http://h:1\n", "missing key 'name'"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    bakup: true\n",
         "nodes.yaml:4: nodes[0]: unknown key 'bakup'"},
        {"nodes:\n  - name: a\n    name: b\n    url: http://h:1\n",
         "nodes.yaml:3: nodes[0]: key 'name' given twice (first on line 2)"},
        {"nodes:\n  - name: a b\n    url: http://h:1\n",
         "nodes.yaml:2: nodes[0].name: only letters"},
        {"nodes:\n  - name: \"a;b\"\n    url: http://h:1\n", "only letters"},
        {"nodes:\n  - name: a\n    url: https://h:1\n", "nodes.yaml:3: nodes[0].url: must be http"},
        {"nodes:\n  - name: a\n    url: http://h:1/v1\n", "no path"},
        {"nodes:\n  - name: a\n    url: http://h:0\n", "port 1-65535"},
        {"nodes:\n  - name: a\n    url: http://h:65536\n", "port 1-65535"},
        {"nodes:\n  - name: a\n    url: http://h;evil:1\n", "no path"},
        {"nodes:\n  - name: a\n    url: \"http://h:1 backup\"\n", "no path"},
        {"nodes:\n  - name: a\n    url: http://u@h:1\n", "no path"},
        {"nodes:\n  - name: a\n    url: http://[zz]:1\n", "no path"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    backup: yes\n",
         "nodes.yaml:4: nodes[0].backup: must be true or false"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    backup: \"true\"\n", "true or false"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    weight: 0\n",
         "nodes[0].weight: must be an integer from 1 to 1000"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    max_fails: \"3\"\n", "from 0 to 100"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    fail_timeout_s: 30s\n", "from 1 to 3600"},
        {"nodes:\n  - name: a\n    url: http://h:1\n  - name: a\n    url: http://h:2\n",
         "nodes.yaml:4: nodes: name 'a' used twice (line 2 and 4)"},
        {"nodes:\n  - name: a\n    url: http://h:1\n  - name: b\n    url: http://h:1/\n",
         "h:1 listed twice"},
        {"nodes:\n  - name: a\n    url: http://h:1\n    backup: true\n", "every node is a backup"},
        {"nodes:\n  - &x {name: a, url: http://h:1}\n  - *x\n", "aliases are not supported"},
        {"nodes:\n  - !!map {name: a, url: http://h:1}\n", "tags are not supported"},
        {"nodes:\n  - [a, b]\n", "expected a mapping {name, url}"},
        {"nodes:\n  - name: [a]\n    url: http://h:1\n", "expected a name, got a list"},
        {"nodes: [\n", "YAML syntax error"},
        {"nodes:\n  - name: \xff\n", "nodes.yaml:2: invalid UTF-8"},
        {"nodes:\n  - name: a\n    url: http://h:1\nnodes: []\n", "given twice"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ops_nodes *n = (struct ops_nodes *)&n; /* must be reset to NULL */
        char err[512] = "";
        int rc = ops_nodes_parse(cases[i].text, strlen(cases[i].text), "nodes.yaml", &n, err,
                                 sizeof(err));
        if (rc != PX_EPARSE || n != NULL || strstr(err, cases[i].want) == NULL ||
            strncmp(err, "nodes.yaml:", 11) != 0) {
            print_error("case %zu: rc %d, err '%s', want '%s'\n", i, rc, err, cases[i].want);
            fail();
        }
    }
    /* A NUL byte inside the text. */
    struct ops_nodes *n = NULL;
    char err[256];
    const char nul[] = "nodes:\n  - name: a\0\n";
    assert_int_equal(ops_nodes_parse(nul, sizeof(nul) - 1, "f", &n, err, sizeof(err)), PX_EPARSE);
    assert_non_null(strstr(err, "f:2: NUL byte"));
}

static void test_too_many_nodes(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1 << 20);
    buf_append_str(&b, "nodes:\n");
    for (int i = 0; i <= OPS_NODES_MAX; i++) {
        buf_printf(&b, "  - {name: n%d, url: \"http://h:%d\"}\n", i, 1000 + i);
    }
    struct ops_nodes *n = NULL;
    char err[256];
    assert_int_equal(ops_nodes_parse(b.data, b.len, "f", &n, err, sizeof(err)), PX_EPARSE);
    assert_non_null(strstr(err, "more than 256 nodes"));
    buf_cleanup(&b);
}

static void test_nginx_render(void **state)
{
    (void)state;
    struct ops_nodes *n = parse_ok("nodes:\n"
                                   "  - {name: node1, url: \"http://10.0.0.1:8000\"}\n"
                                   "  - {name: node2, url: \"http://10.0.0.2:8000\", weight: 2}\n"
                                   "  - {name: spare, url: \"http://10.0.0.3:8000\", backup: true,"
                                   " max_fails: 1, fail_timeout_s: 5}\n");
    struct ops_nginx_opts o;
    ops_nginx_opts_default(&o);
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(ops_nginx_render(n, &o, &b), 0);
    const char *t = b.data;
    static const char *const want[] = {
        "upstream privax {\n",
        "    least_conn;\n",
        "    server 10.0.0.1:8000 max_fails=3 fail_timeout=30s;  # node1\n",
        "    server 10.0.0.2:8000 weight=2 max_fails=3 fail_timeout=30s;  # node2\n",
        "    server 10.0.0.3:8000 max_fails=1 fail_timeout=5s backup;  # spare\n",
        "    keepalive 32;\n",
        "    listen 80;\n",
        "    client_max_body_size 4194304;\n",
        "        proxy_pass http://privax;\n",
        "        proxy_http_version 1.1;\n",
        "        proxy_set_header Connection \"\";\n",
        "        proxy_set_header X-Tenant-ID $http_x_tenant_id;\n",
        "        proxy_set_header X-User-ID $http_x_user_id;\n",
        "        proxy_set_header X-Plan-Tier $http_x_plan_tier;\n",
        "        proxy_buffering off;\n",
        "        proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n",
        "        proxy_next_upstream_tries 3;\n",
        "        proxy_read_timeout 600s;\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(t, want[i]) == NULL) {
            print_error("missing: %s---\n%s\n", want[i], t);
            fail();
        }
    }
    /* Braces balance. */
    int depth = 0;
    for (const char *p = t; *p; p++) {
        depth += *p == '{';
        depth -= *p == '}';
        assert_true(depth >= 0);
    }
    assert_int_equal(depth, 0);
    buf_cleanup(&b);

    o.method = OPS_ROUND_ROBIN;
    o.listen = "127.0.0.1:8080";
    buf_init(&b, 1 << 20);
    assert_int_equal(ops_nginx_render(n, &o, &b), 0);
    assert_null(strstr(b.data, "least_conn;"));
    assert_non_null(strstr(b.data, "    listen 127.0.0.1:8080;\n"));
    buf_cleanup(&b);

    static const char *const bad_listen[] = {
        "", "80;", "0", "70000", "h:", "a b:80", "80 default_server", "[::1]", "x:80;"};
    for (size_t i = 0; i < sizeof(bad_listen) / sizeof(bad_listen[0]); i++) {
        assert_false(ops_listen_valid(bad_listen[i]));
        o.listen = bad_listen[i];
        buf_init(&b, 1 << 20);
        assert_int_equal(ops_nginx_render(n, &o, &b), PX_EPARSE);
        buf_cleanup(&b);
    }
    assert_true(ops_listen_valid("8080"));
    assert_true(ops_listen_valid("[::1]:80"));
    assert_true(ops_listen_valid("lb.internal:80"));
    ops_nodes_free(n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad_table),
        cmocka_unit_test(test_too_many_nodes),
        cmocka_unit_test(test_nginx_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
