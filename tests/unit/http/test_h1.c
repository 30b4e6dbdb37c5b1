/* Table of HTTP/1 request-parsing cases for src/http/h1.c. Every case runs twice: the input
 * whole, and split one byte at a time; both must give the same outcome. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "http/h1.h"

struct h1_case {
    const char *name;    /* what the case checks */
    const char *input;   /* bytes fed, NUL-terminated for convenience */
    size_t header_max;   /* header cap, bytes (0 = 16 KiB) */
    size_t body_max;     /* body cap, bytes (0 = 1 MiB) */
    int result;          /* expected h1_feed result after all input: H1_DONE, H1_NEED_MORE
                            or an HTTP status */
    int method;          /* expected method when H1_DONE */
    const char *path;    /* expected request target when H1_DONE */
    size_t nheaders;     /* expected header count when H1_DONE */
    const char *body;    /* expected body when H1_DONE */
    int keep_alive;      /* expected keep-alive flag when H1_DONE */
    size_t consumed;     /* expected bytes consumed when H1_DONE (0 = whole input) */
    int expect_continue; /* expected expect_continue when H1_NEED_MORE */
};

static const struct h1_case cases[] = {
    {"good GET", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0, H1_DONE, HTTP_GET, "/health", 1,
     "", 1, 0, 0},
    {"GET with query", "GET /v1/models?x=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", 0, 0,
     H1_DONE, HTTP_GET, "/v1/models?x=1", 2, "", 1, 0, 0},
    {"POST with body",
     "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\":\"b\"}\r\n", 0, 0,
     H1_DONE, HTTP_POST, "/api/chat", 2, "{\"a\":\"b\"}\r\n", 1, 0, 0},
    {"pipelined: first request only",
     "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0, H1_DONE,
     HTTP_GET, "/1", 1, "", 1, 28, 0},
    {"HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 0, 0, H1_DONE, HTTP_GET, "/", 0, "", 0, 0, 0},
    {"Connection: close", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0, 0, H1_DONE, HTTP_GET,
     "/", 1, "", 0, 0, 0},
    {"header block too big",
     "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: 0123456789012345678901234567890"
     "123456789\r\n\r\n",
     48, 0, 431, 0, NULL, 0, NULL, 0, 0, 0},
    {"URL too big",
     "GET /0123456789012345678901234567890123456789012345678901234567890 HTTP/1.1\r\n", 48, 0, 431,
     0, NULL, 0, NULL, 0, 0, 0},
    {"body too big by Content-Length, before the body",
     "POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", 0, 100, 413, 0, NULL, 0, NULL, 0, 0, 0},
    {"chunked body too big",
     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"
     "0123456789abcdef\r\n",
     0, 8, 413, 0, NULL, 0, NULL, 0, 0, 0},
    {"chunked body decoded",
     "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"
     "0\r\nX-Trailer: t\r\n\r\n",
     0, 0, H1_DONE, HTTP_POST, "/x", 1, "hello world", 1, 0, 0},
    {"bad request line", "GARBAGE\r\n\r\n", 0, 0, 400, 0, NULL, 0, NULL, 0, 0, 0},
    {"bad version", "GET / HTTP/9.x\r\n\r\n", 0, 0, 400, 0, NULL, 0, NULL, 0, 0, 0},
    {"space in header name", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 0, 0, 400, 0, NULL, 0, NULL,
     0, 0, 0},
    {"space before colon (smuggling)",
     "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 0, 0, 400, 0, NULL, 0, NULL,
     0, 0, 0},
    {"control byte in value", "GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", 0, 0, 400, 0, NULL, 0, NULL,
     0, 0, 0},
    {"Content-Length and chunked together (smuggling)",
     "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, 0,
     400, 0, NULL, 0, NULL, 0, 0, 0},
    {"CONNECT refused", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 0, 0, 400,
     0, NULL, 0, NULL, 0, 0, 0},
    {"Expect 100-continue waits for the body",
     "POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", 0, 0, H1_NEED_MORE, 0,
     NULL, 0, NULL, 0, 0, 1},
    {"Expect 100-continue then body",
     "POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-Continue\r\n\r\nabcd", 0, 0, H1_DONE,
     HTTP_POST, "/", 2, "abcd", 1, 0, 0},
    {"Expect 100-continue too big is 413",
     "POST / HTTP/1.1\r\nContent-Length: 4000\r\n"
     "Expect: 100-continue\r\n\r\n",
     0, 100, 413, 0, NULL, 0, NULL, 0, 0, 0},
    {"other Expect is 417", "POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: bogus\r\n\r\nx", 0, 0,
     417, 0, NULL, 0, NULL, 0, 0, 0},
    {"Upgrade answered as HTTP/1.1 with its body",
     "POST /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nhi", 0, 0,
     H1_DONE, HTTP_POST, "/u", 3, "hi", 1, 0, 0},
    {"incomplete head", "GET / HTTP/1.1\r\nHost:", 0, 0, H1_NEED_MORE, 0, NULL, 0, NULL, 0, 0, 0},
    {"folded/odd whitespace value", "GET / HTTP/1.1\r\nX-A:    spaced value   \r\n\r\n", 0, 0,
     H1_DONE, HTTP_GET, "/", 1, "", 1, 0, 0},
};

/* Feed input in slices of `slice` bytes (0 = whole) until done, error or end of input. */
static int feed(struct h1_parser *p, const char *in, size_t len, size_t slice, size_t *used)
{
    size_t off = 0;
    int rc = H1_NEED_MORE;
    *used = 0;
    while (off < len) {
        size_t n = slice ? (len - off < slice ? len - off : slice) : len - off;
        size_t c = 0;
        rc = h1_feed(p, in + off, n, &c);
        assert_true(c <= n);
        off += c;
        if (rc != H1_NEED_MORE) {
            break;
        }
        assert_int_equal(c, n);
    }
    *used = off;
    return rc;
}

static void run_case(const struct h1_case *tc, size_t slice)
{
    struct h1_parser p;
    h1_init(&p, tc->header_max ? tc->header_max : 16384, tc->body_max ? tc->body_max : 1 << 20);
    size_t len = strlen(tc->input);
    size_t used = 0;
    int rc = feed(&p, tc->input, len, slice, &used);
    print_message("case '%s' slice=%zu -> %d\n", tc->name, slice, rc);
    assert_int_equal(rc, tc->result);
    if (rc == H1_DONE) {
        assert_int_equal(p.method, tc->method);
        assert_int_equal(p.url_len, strlen(tc->path));
        assert_memory_equal(h1_url(&p), tc->path, p.url_len);
        assert_int_equal(p.nheaders, tc->nheaders);
        assert_int_equal(p.body.len, strlen(tc->body));
        assert_string_equal(h1_body(&p), tc->body);
        assert_int_equal(p.keep_alive, tc->keep_alive);
        assert_int_equal(used, tc->consumed ? tc->consumed : len);
        /* Sticky until reset. */
        size_t c = 1;
        assert_int_equal(h1_feed(&p, "x", 1, &c), H1_DONE);
        assert_int_equal(c, 0);
    } else if (rc == H1_NEED_MORE) {
        assert_int_equal(p.expect_continue, tc->expect_continue);
    } else {
        size_t c = 1;
        assert_int_equal(h1_feed(&p, "GET", 3, &c), tc->result);
        assert_int_equal(c, 0);
    }
    h1_cleanup(&p);
}

static void test_table_whole(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i], 0);
    }
}

static void test_table_byte_at_a_time(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i], 1);
    }
}

static void test_table_three_bytes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i], 3);
    }
}

/* Pipelining: after H1_DONE and h1_reset the rest parses as the next request, and the
 * memory is reused. */
static void test_pipelined_reset(void **state)
{
    (void)state;
    const char *in = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     "POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                     "GET /3 HTTP/1.1\r\nConnection: close\r\n\r\n";
    const char *paths[] = {"/1", "/2", "/3"};
    struct h1_parser p;
    h1_init(&p, 16384, 1024);
    size_t len = strlen(in);
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t c;
        assert_int_equal(h1_feed(&p, in + off, len - off, &c), H1_DONE);
        off += c;
        assert_int_equal(p.url_len, 2);
        assert_memory_equal(h1_url(&p), paths[i], 2);
        if (i == 1) {
            assert_string_equal(h1_body(&p), "abc");
        }
        assert_int_equal(p.keep_alive, i < 2);
        h1_reset(&p);
    }
    assert_int_equal(off, len);
    h1_cleanup(&p);
}

/* Header views are valid, in order, and case is preserved; the head buffer may have moved
 * while growing, so this uses a head far larger than the first allocation. */
static void test_header_views(void **state)
{
    (void)state;
    char in[8192];
    size_t n = (size_t)snprintf(in, sizeof(in), "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 50; i++) {
        n += (size_t)snprintf(in + n, sizeof(in) - n, "X-H%02d: value-%02d-padding-padding\r\n", i,
                              i);
    }
    n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\n");
    struct h1_parser p;
    h1_init(&p, 16384, 1024);
    size_t c;
    assert_int_equal(h1_feed(&p, in, n, &c), H1_DONE);
    assert_int_equal(p.nheaders, 50);
    for (int i = 0; i < 50; i++) {
        char name[16];
        char value[64];
        snprintf(name, sizeof(name), "X-H%02d", i);
        snprintf(value, sizeof(value), "value-%02d-padding-padding", i);
        assert_int_equal(p.headers[i].name_len, strlen(name));
        assert_memory_equal(p.headers[i].name, name, strlen(name));
        assert_int_equal(p.headers[i].value_len, strlen(value));
        assert_memory_equal(p.headers[i].value, value, strlen(value));
    }
    h1_cleanup(&p);
}

static void test_too_many_headers(void **state)
{
    (void)state;
    char in[8192];
    size_t n = (size_t)snprintf(in, sizeof(in), "GET / HTTP/1.1\r\n");
    for (int i = 0; i < H1_MAX_HEADERS + 1; i++) {
        n += (size_t)snprintf(in + n, sizeof(in) - n, "A%d: b\r\n", i);
    }
    n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\n");
    struct h1_parser p;
    h1_init(&p, 16384, 1024);
    size_t c;
    assert_int_equal(h1_feed(&p, in, n, &c), 431);
    h1_cleanup(&p);
}

/* The head cap counts the request line and header lines as sent: a head of exactly the cap
 * passes, one byte more fails, whatever the slicing. */
static void test_header_cap_exact(void **state)
{
    (void)state;
    const char *in = "GET /abc HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len = strlen(in);
    for (size_t slice = 0; slice < 4; slice++) {
        struct h1_parser p;
        size_t used;
        h1_init(&p, len, 1024);
        assert_int_equal(feed(&p, in, len, slice, &used), H1_DONE);
        h1_cleanup(&p);
        h1_init(&p, len - 1, 1024);
        assert_int_equal(feed(&p, in, len, slice, &used), 431);
        h1_cleanup(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_whole),       cmocka_unit_test(test_table_byte_at_a_time),
        cmocka_unit_test(test_table_three_bytes), cmocka_unit_test(test_pipelined_reset),
        cmocka_unit_test(test_header_views),      cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_header_cap_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
