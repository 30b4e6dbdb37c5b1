/* The server over real sockets on one loop, with the client as plain non-blocking sockets
 * driven from the same thread: pipelining with an asynchronous handler, abort on client
 * hang-up, ending a request after the client left, backpressure and drain, http_resp_abort,
 * and freeing the server with a request in flight. Run under ASan to catch leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "core/util.h"
#include "http/server.h"

struct fixture {
    uv_loop_t loop;          /* private loop per test */
    struct http_server *srv; /* server under test */
    uv_timer_t timer;        /* handler's deferred-work timer */
    struct http_req *held;   /* request the handler is holding */
    int aborts;              /* on_abort calls */
    int drains;              /* on_drain calls */
    int write_rc_one;        /* times http_resp_write returned 1 */
    int end_in_abort;        /* 1: on_abort ends the request itself */
    size_t big_bytes;        /* bytes /big streams */
};

static struct fixture fx;

static void on_abort(struct http_req *req)
{
    fx.aborts++;
    if (fx.end_in_abort) {
        fx.held = NULL;
        http_resp_end(req);
    }
}

static size_t big_sent; /* bytes /big has written so far */

/* Write until the high-water mark or the end, like a relay: resume from on_drain. */
static void big_produce(struct http_req *req)
{
    static char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    while (big_sent < fx.big_bytes) {
        int rc = http_resp_write(req, chunk, sizeof(chunk));
        assert_true(rc == 0 || rc == 1);
        big_sent += sizeof(chunk);
        if (rc == 1) {
            fx.write_rc_one++;
            return;
        }
    }
    http_resp_end(req);
}

static void on_drain(struct http_req *req)
{
    fx.drains++;
    big_produce(req);
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
    if (fx.held) {
        struct http_req *r = fx.held;
        fx.held = NULL;
        http_resp_send(r, 200, "text/plain", "later", 5);
    }
}

static void handler(struct http_req *req, void *ud)
{
    (void)ud;
    if (req->path_len == 5 && memcmp(req->path, "/slow", 5) == 0) {
        fx.held = req;
        req->on_abort = on_abort;
        uv_timer_start(&fx.timer, on_timer, 30, 0);
        return;
    }
    if (req->path_len == 5 && memcmp(req->path, "/hold", 5) == 0) {
        fx.held = req;
        req->on_abort = on_abort;
        return;
    }
    if (req->path_len == 4 && memcmp(req->path, "/big", 4) == 0) {
        req->on_drain = on_drain;
        big_sent = 0;
        http_resp_start(req, 200, "application/octet-stream");
        big_produce(req);
        return;
    }
    if (req->path_len == 4 && memcmp(req->path, "/cut", 4) == 0) {
        http_resp_start(req, 200, "text/plain");
        http_resp_write(req, "partial", 7);
        http_resp_abort(req, 0);
        return;
    }
    char body[128];
    int n = snprintf(body, sizeof(body), "path=%.*s", (int)req->path_len, req->path);
    http_resp_send(req, 200, "text/plain", body, (size_t)n);
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof(fx));
    assert_int_equal(uv_loop_init(&fx.loop), 0);
    uv_timer_init(&fx.loop, &fx.timer);
    struct http_server_opts o;
    http_server_opts_default(&o);
    o.write_high_bytes = 16 * 1024;
    assert_int_equal(http_server_start(&fx.srv, &fx.loop, "127.0.0.1:0", &o, handler, NULL), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (fx.srv) {
        http_server_free(fx.srv);
    }
    uv_close((uv_handle_t *)&fx.timer, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
    return 0;
}

static int client_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)http_server_port(fx.srv))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Run the loop and collect what fd receives until `want` appears, EOF, or the deadline. */
static size_t pump(int fd, char *out, size_t cap, const char *want, uint64_t ms, int *eof)
{
    size_t len = 0;
    uint64_t end = px_mono_ms() + ms;
    *eof = 0;
    while (px_mono_ms() < end) {
        uv_run(&fx.loop, UV_RUN_NOWAIT);
        ssize_t n = fd >= 0 ? recv(fd, out + len, cap - 1 - len, MSG_DONTWAIT) : -1;
        if (n == 0) {
            *eof = 1;
            break;
        }
        if (n > 0) {
            len += (size_t)n;
            out[len] = '\0';
            if (want && strstr(out, want)) {
                break;
            }
        }
        usleep(1000);
    }
    out[len] = '\0';
    return len;
}

static void test_pipelined_async(void **state)
{
    (void)state;
    int fd = client_connect();
    const char *req = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    char buf[8192];
    int eof;
    pump(fd, buf, sizeof(buf), "path=/b", 2000, &eof);
    const char *a = strstr(buf, "path=/a");
    const char *l = strstr(buf, "later");
    const char *b = strstr(buf, "path=/b");
    assert_non_null(a);
    assert_non_null(l);
    assert_non_null(b);
    assert_true(a < l && l < b);
    assert_int_equal(http_server_inflight(fx.srv), 0);
    close(fd);
}

static void test_abort_on_hangup(void **state)
{
    (void)state;
    fx.end_in_abort = 1;
    int fd = client_connect();
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    send(fd, req, strlen(req), 0);
    char buf[256];
    int eof;
    pump(fd, buf, sizeof(buf), NULL, 100, &eof);
    assert_non_null(fx.held);
    assert_int_equal(http_server_inflight(fx.srv), 1);
    close(fd);
    pump(-1, buf, sizeof(buf), NULL, 100, &eof);
    assert_int_equal(fx.aborts, 1);
    assert_null(fx.held);
    assert_int_equal(http_server_inflight(fx.srv), 0);
}

static void test_end_after_client_left(void **state)
{
    (void)state;
    int fd = client_connect();
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    send(fd, req, strlen(req), 0);
    char buf[256];
    int eof;
    pump(fd, buf, sizeof(buf), NULL, 100, &eof);
    close(fd);
    pump(-1, buf, sizeof(buf), NULL, 100, &eof);
    assert_int_equal(fx.aborts, 1);
    assert_non_null(fx.held);
    assert_true(http_req_closed(fx.held));
    assert_int_equal(http_resp_write(fx.held, "x", 1), -10006);
    struct http_req *r = fx.held;
    fx.held = NULL;
    http_resp_send(r, 200, NULL, "late", 4);
    assert_int_equal(http_server_inflight(fx.srv), 0);
}

static void test_backpressure_and_drain(void **state)
{
    (void)state;
    fx.big_bytes = 4 * 1024 * 1024;
    int fd = client_connect();
    int small = 65536;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    const char *req = "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send(fd, req, strlen(req), 0);
    static char buf[5 * 1024 * 1024];
    int eof;
    size_t n = pump(fd, buf, sizeof(buf), NULL, 10000, &eof);
    assert_true(eof);
    assert_true(fx.write_rc_one > 0);
    assert_true(fx.drains > 0);
    assert_true(strstr(buf, "Transfer-Encoding: chunked") != NULL);
    assert_true(n > fx.big_bytes);
    assert_memory_equal(buf + n - 5, "0\r\n\r\n", 5);
    close(fd);
}

static void test_resp_abort(void **state)
{
    (void)state;
    int fd = client_connect();
    const char *req = "GET /cut HTTP/1.1\r\nHost: x\r\n\r\n";
    send(fd, req, strlen(req), 0);
    char buf[1024];
    int eof;
    pump(fd, buf, sizeof(buf), NULL, 1000, &eof);
    assert_true(eof);
    assert_non_null(strstr(buf, "partial"));
    assert_null(strstr(buf, "0\r\n\r\n"));
    assert_int_equal(fx.aborts, 0);
    close(fd);
}

static void test_free_with_inflight(void **state)
{
    (void)state;
    fx.end_in_abort = 1;
    int fd = client_connect();
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    send(fd, req, strlen(req), 0);
    char buf[256];
    int eof;
    pump(fd, buf, sizeof(buf), NULL, 100, &eof);
    assert_non_null(fx.held);
    http_server_free(fx.srv);
    fx.srv = NULL;
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    assert_int_equal(fx.aborts, 1);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipelined_async, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_on_hangup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_after_client_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_and_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resp_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_inflight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
