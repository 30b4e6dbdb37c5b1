/* streamc: the bench's streaming client (epoll, one thread, HTTP/1.1 keep-alive).
 *
 *   streamc ttft --port P --path /v1/chat/completions --body-file F [-H 'K: V']...
 *                --conns N --duration S [--ramp-ms R]
 *       N connections, each sending one streamed request after another until S seconds have
 *       passed (connection i starts at i*R/N ms, so arrivals are spread evenly). For every
 *       request: time from writing it to the first body byte that carries non-empty content
 *       ("content":"x...), and whether the stream ended with data: [DONE]. At the deadline it
 *       waits for the first token of every stream already sent, then closes everything
 *       (--finish 1: waits for every stream to end). Prints one JSON line: samples, streams
 *       that ended well, errors, p50/p90/p99/max of time-to-first-token in microseconds.
 *
 *   streamc hold --port P ... --conns N [--ramp-per-s R] [--timeout-s T]
 *       Opens N streams (R new connections per second), waits until each has received its
 *       first content, prints "READY {json}" and holds them all open until stdin closes or
 *       SIGTERM, then closes them and prints "DONE {json}".
 *
 * Responses may be Content-Length, chunked or close-delimited. Raise RLIMIT_NOFILE first. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define HEAD_CAP 8192
#define SCAN_CAP 65536

enum { ST_IDLE, ST_CONNECTING, ST_HEAD, ST_BODY, ST_DONE_WAIT };
enum { BODY_LEN, BODY_CHUNKED, BODY_CLOSE };
enum { CK_SIZE, CK_DATA, CK_DATA_CRLF, CK_TRAILER };

struct conn {
    int fd;
    int state;
    int idx;
    uint64_t start_at;  /* ttft: when this connection may start (ns) */
    uint64_t t_sent;    /* request write started */
    int got_first;      /* first content seen */
    char head[HEAD_CAP];
    size_t head_len;
    int status;
    int body_mode;
    long long remaining; /* BODY_LEN: bytes left; chunked: bytes left in chunk */
    int ck_state;
    char ck_line[64];
    size_t ck_line_len;
    char *scan;          /* body bytes until the first content is found, then the tail */
    size_t scan_len;
    char tail[16];       /* last body bytes, for the [DONE] check */
    size_t tail_len;
    size_t wr_off;       /* bytes of the request written */
    int keepalive;
};

static const char *g_host = "127.0.0.1";
static int g_port;
static char *g_req;
static size_t g_req_len;
static int g_epfd;
static volatile sig_atomic_t g_stop;
static uint64_t *g_samples;
static size_t g_nsamples, g_capsamples;
static long g_errors, g_streams_ok, g_conn_errors, g_bad_status, g_no_done;
static long g_ready, g_open;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_sig(int s)
{
    (void)s;
    g_stop = 1;
}

static void die(const char *m)
{
    fprintf(stderr, "streamc: %s: %s\n", m, strerror(errno));
    exit(2);
}

static void add_sample(uint64_t v)
{
    if (g_nsamples == g_capsamples) {
        g_capsamples = g_capsamples ? g_capsamples * 2 : 4096;
        g_samples = realloc(g_samples, g_capsamples * sizeof(*g_samples));
        if (!g_samples) {
            die("realloc");
        }
    }
    g_samples[g_nsamples++] = v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(double p)
{
    if (!g_nsamples) {
        return 0;
    }
    size_t i = (size_t)(p / 100.0 * (double)g_nsamples + 0.999999);
    if (i < 1) {
        i = 1;
    }
    if (i > g_nsamples) {
        i = g_nsamples;
    }
    return g_samples[i - 1];
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        g_open--;
    }
    c->state = ST_IDLE;
}

static int conn_open(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, g_host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    g_open++;
    return 0;
}

static void req_reset(struct conn *c)
{
    c->head_len = 0;
    c->status = 0;
    c->got_first = 0;
    c->scan_len = 0;
    c->tail_len = 0;
    c->ck_state = CK_SIZE;
    c->ck_line_len = 0;
    c->remaining = 0;
    c->wr_off = 0;
    c->keepalive = 1;
}

/* Write (the rest of) the request; returns -1 on error. */
static int conn_write(struct conn *c)
{
    if (c->wr_off == 0) {
        c->t_sent = now_ns();
    }
    while (c->wr_off < g_req_len) {
        ssize_t n = send(c->fd, g_req + c->wr_off, g_req_len - c->wr_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                return 0;
            }
            return -1;
        }
        c->wr_off += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->state = ST_HEAD;
    return 0;
}

static void body_bytes(struct conn *c, const char *p, size_t n)
{
    if (n == 0) {
        return;
    }
    /* tail for [DONE] */
    if (n >= sizeof(c->tail)) {
        memcpy(c->tail, p + n - sizeof(c->tail), sizeof(c->tail));
        c->tail_len = sizeof(c->tail);
    } else {
        size_t keep = c->tail_len + n > sizeof(c->tail) ? sizeof(c->tail) - n : c->tail_len;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        memcpy(c->tail + keep, p, n);
        c->tail_len = keep + n;
    }
    if (c->got_first) {
        return;
    }
    size_t room = SCAN_CAP - c->scan_len;
    if (n > room) {
        n = room;
    }
    memcpy(c->scan + c->scan_len, p, n);
    size_t from = c->scan_len > 12 ? c->scan_len - 12 : 0;
    c->scan_len += n;
    const char *s = c->scan + from;
    size_t left = c->scan_len - from;
    static const char pat[] = "\"content\":\"";
    for (;;) {
        const char *m = memmem(s, left, pat, sizeof(pat) - 1);
        if (!m) {
            break;
        }
        size_t off = (size_t)(m - c->scan) + sizeof(pat) - 1;
        if (off >= c->scan_len) {
            break; /* the next byte is not here yet: keep the window */
        }
        if (c->scan[off] != '"') {
            c->got_first = 1;
            add_sample((now_ns() - c->t_sent) / 1000);
            g_ready++;
            return;
        }
        left = c->scan_len - (size_t)(m + 1 - c->scan);
        s = m + 1;
    }
}

static int tail_has_done(const struct conn *c)
{
    return memmem(c->tail, c->tail_len, "[DONE]", 6) != NULL;
}

/* Returns 1 when the response is complete, 0 for more, -1 on a framing error. */
static int feed_body(struct conn *c, const char *p, size_t n)
{
    if (c->body_mode == BODY_CLOSE) {
        body_bytes(c, p, n);
        return 0;
    }
    if (c->body_mode == BODY_LEN) {
        size_t k = (long long)n > c->remaining ? (size_t)c->remaining : n;
        body_bytes(c, p, k);
        c->remaining -= (long long)k;
        return c->remaining == 0;
    }
    size_t i = 0;
    while (i < n) {
        switch (c->ck_state) {
        case CK_SIZE:
        case CK_TRAILER:
        case CK_DATA_CRLF: {
            char ch = p[i++];
            if (ch != '\n') {
                if (c->ck_line_len < sizeof(c->ck_line) - 1) {
                    c->ck_line[c->ck_line_len++] = ch;
                }
                break;
            }
            c->ck_line[c->ck_line_len] = '\0';
            if (c->ck_line_len && c->ck_line[c->ck_line_len - 1] == '\r') {
                c->ck_line[--c->ck_line_len] = '\0';
            }
            if (c->ck_state == CK_DATA_CRLF) {
                c->ck_state = CK_SIZE;
            } else if (c->ck_state == CK_TRAILER) {
                if (c->ck_line_len == 0) {
                    c->ck_line_len = 0;
                    return 1;
                }
            } else {
                char *end;
                long long sz = strtoll(c->ck_line, &end, 16);
                if (end == c->ck_line || sz < 0) {
                    return -1;
                }
                c->remaining = sz;
                c->ck_state = sz == 0 ? CK_TRAILER : CK_DATA;
            }
            c->ck_line_len = 0;
            break;
        }
        case CK_DATA: {
            size_t k = (long long)(n - i) > c->remaining ? (size_t)c->remaining : n - i;
            body_bytes(c, p + i, k);
            i += k;
            c->remaining -= (long long)k;
            if (c->remaining == 0) {
                c->ck_state = CK_DATA_CRLF;
            }
            break;
        }
        }
    }
    return 0;
}

static int parse_head(struct conn *c)
{
    c->head[c->head_len] = '\0';
    if (sscanf(c->head, "HTTP/1.%*d %d", &c->status) != 1) {
        return -1;
    }
    c->body_mode = BODY_CLOSE;
    c->keepalive = strncmp(c->head, "HTTP/1.0", 8) != 0;
    for (char *l = strstr(c->head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        char *h = l + 2;
        if (!strncasecmp(h, "content-length:", 15)) {
            c->body_mode = BODY_LEN;
            c->remaining = atoll(h + 15);
        } else if (!strncasecmp(h, "transfer-encoding:", 18) && strcasestr(h, "chunked") &&
                   strcasestr(h, "chunked") < strstr(h, "\r\n")) {
            c->body_mode = BODY_CHUNKED;
        } else if (!strncasecmp(h, "connection:", 11)) {
            char *e = strstr(h, "\r\n");
            char *cl = strcasestr(h, "close");
            if (cl && cl < e) {
                c->keepalive = 0;
            }
        }
    }
    return 0;
}

static int g_mode_hold;
static int g_finish; /* ttft: wait for every stream to end after the deadline */
static uint64_t g_deadline;

static void finish_request(struct conn *c, int ok)
{
    if (ok) {
        if (c->status != 200) {
            g_bad_status++;
            g_errors++;
        } else if (!tail_has_done(c)) {
            g_no_done++;
            g_errors++;
        } else {
            g_streams_ok++;
        }
    }
    if (!c->got_first && ok && c->status == 200) {
        /* no content at all: counted as an error */
        g_errors++;
    }
}

static void start_request(struct conn *c)
{
    req_reset(c);
    if (c->fd < 0) {
        if (conn_open(c) != 0) {
            g_conn_errors++;
            g_errors++;
            c->state = ST_IDLE;
            return;
        }
        return; /* write when connected */
    }
    c->state = ST_CONNECTING; /* reuse: treat as writable now */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_readable(struct conn *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EAGAIN) {
                return;
            }
            g_conn_errors++;
            g_errors++;
            conn_close(c);
            return;
        }
        if (n == 0) {
            int complete = c->state == ST_BODY && c->body_mode == BODY_CLOSE;
            if (c->state == ST_HEAD || (c->state == ST_BODY && !complete)) {
                g_conn_errors++;
                g_errors++;
            } else if (complete) {
                finish_request(c, 1);
            }
            conn_close(c);
            return;
        }
        size_t i = 0;
        while (i < (size_t)n) {
            if (c->state == ST_HEAD) {
                /* accumulate until \r\n\r\n */
                while (i < (size_t)n && c->head_len < HEAD_CAP - 1) {
                    c->head[c->head_len++] = buf[i++];
                    if (c->head_len >= 4 && !memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4)) {
                        break;
                    }
                }
                if (c->head_len >= 4 && !memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4)) {
                    if (parse_head(c) != 0) {
                        g_errors++;
                        conn_close(c);
                        return;
                    }
                    if (c->status == 100) {
                        c->head_len = 0;
                        continue;
                    }
                    c->state = ST_BODY;
                    if (c->body_mode == BODY_LEN && c->remaining == 0) {
                        goto complete;
                    }
                } else if (c->head_len >= HEAD_CAP - 1) {
                    g_errors++;
                    conn_close(c);
                    return;
                }
                continue;
            }
            if (c->state == ST_BODY) {
                int r = feed_body(c, buf + i, (size_t)n - i);
                i = (size_t)n;
                if (r < 0) {
                    g_errors++;
                    conn_close(c);
                    return;
                }
                if (r == 0) {
                    continue;
                }
                goto complete;
            }
            i = (size_t)n; /* bytes with no request: ignore */
        }
        continue;
    complete:
        finish_request(c, 1);
        if (!c->keepalive) {
            conn_close(c);
        }
        if (g_mode_hold) {
            /* A held stream that ends is not held any more. */
            conn_close(c);
            return;
        }
        if (now_ns() < g_deadline && !g_stop) {
            start_request(c);
        } else {
            c->state = ST_IDLE;
        }
        if (c->fd < 0) {
            return;
        }
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (ev & (EPOLLERR)) {
        g_conn_errors++;
        g_errors++;
        conn_close(c);
        return;
    }
    if (c->state == ST_CONNECTING && (ev & EPOLLOUT)) {
        if (conn_write(c) != 0) {
            g_conn_errors++;
            g_errors++;
            conn_close(c);
            return;
        }
    }
    if (ev & (EPOLLIN | EPOLLHUP)) {
        on_readable(c);
    }
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        die(path);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) {
        die("read");
    }
    fclose(f);
    b[n] = '\0';
    *len = (size_t)n;
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: streamc ttft|hold --port P --path X --body-file F [-H h]...\n");
        return 2;
    }
    g_mode_hold = strcmp(argv[1], "hold") == 0;
    const char *path = "/v1/chat/completions", *body_file = NULL;
    const char *hdrs[MAX_HEADERS];
    int nh = 0;
    long conns = 1;
    double duration = 5, ramp_ms = 0, ramp_per_s = 1000, timeout_s = 60;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "streamc: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--port")) {
            g_port = atoi(v);
        } else if (!strcmp(a, "--host")) {
            g_host = v;
        } else if (!strcmp(a, "--path")) {
            path = v;
        } else if (!strcmp(a, "--body-file")) {
            body_file = v;
        } else if (!strcmp(a, "-H")) {
            if (nh < MAX_HEADERS) {
                hdrs[nh++] = v;
            }
        } else if (!strcmp(a, "--conns")) {
            conns = atol(v);
        } else if (!strcmp(a, "--duration")) {
            duration = atof(v);
        } else if (!strcmp(a, "--ramp-ms")) {
            ramp_ms = atof(v);
        } else if (!strcmp(a, "--ramp-per-s")) {
            ramp_per_s = atof(v);
        } else if (!strcmp(a, "--finish")) {
            g_finish = atoi(v);
        } else if (!strcmp(a, "--timeout-s")) {
            timeout_s = atof(v);
        } else {
            fprintf(stderr, "streamc: unknown flag %s\n", a);
            return 2;
        }
    }
    if (!g_port || !body_file || conns < 1) {
        fprintf(stderr, "streamc: --port, --body-file and --conns >= 1 are required\n");
        return 2;
    }
    size_t blen;
    char *body = read_file(body_file, &blen);
    size_t cap = blen + 4096;
    g_req = malloc(cap);
    int n = snprintf(g_req, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Accept: text/event-stream\r\nContent-Length: %zu\r\n",
                     path, g_host, g_port, blen);
    for (int i = 0; i < nh; i++) {
        n += snprintf(g_req + n, cap - (size_t)n, "%s\r\n", hdrs[i]);
    }
    n += snprintf(g_req + n, cap - (size_t)n, "\r\n");
    memcpy(g_req + n, body, blen);
    g_req_len = (size_t)n + blen;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc((size_t)conns, sizeof(*cs));
    for (long i = 0; i < conns; i++) {
        cs[i].fd = -1;
        cs[i].idx = (int)i;
        cs[i].scan = malloc(SCAN_CAP);
        cs[i].state = ST_IDLE;
    }
    uint64_t t0 = now_ns();
    long started = 0;
    if (g_mode_hold) {
        g_deadline = UINT64_MAX;
    } else {
        g_deadline = t0 + (uint64_t)(duration * 1e9);
        for (long i = 0; i < conns; i++) {
            cs[i].start_at = t0 + (uint64_t)(ramp_ms * 1e6 * (double)i / (double)conns);
        }
    }
    struct epoll_event evs[1024];
    int ready_printed = 0;
    uint64_t hold_deadline = t0 + (uint64_t)(timeout_s * 1e9);
    if (g_mode_hold) {
        /* stdin closing ends the hold */
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(g_epfd, EPOLL_CTL_ADD, 0, &ev);
    }
    for (;;) {
        uint64_t now = now_ns();
        if (g_stop) {
            break;
        }
        /* start connections that are due */
        while (started < conns) {
            uint64_t due = g_mode_hold ? t0 + (uint64_t)((double)started / ramp_per_s * 1e9)
                                       : cs[started].start_at;
            if (due > now || (!g_mode_hold && now >= g_deadline)) {
                break;
            }
            start_request(&cs[started]);
            started++;
        }
        if (!g_mode_hold && now >= g_deadline) {
            /* Streams started before the deadline must show their first token; they are not
             * waited for to the end (with --finish, they are). */
            long busy = 0;
            for (long i = 0; i < conns; i++) {
                busy += cs[i].state != ST_IDLE && (g_finish || !cs[i].got_first);
            }
            if (busy == 0 || now >= g_deadline + (uint64_t)(timeout_s * 1e9)) {
                break;
            }
        }
        if (g_mode_hold && !ready_printed &&
            ((started == conns && g_ready + g_errors >= conns) || now >= hold_deadline)) {
            qsort(g_samples, g_nsamples, sizeof(*g_samples), cmp_u64);
            printf("READY {\"opened\":%ld,\"ready\":%ld,\"open\":%ld,\"errors\":%ld,"
                   "\"seconds\":%.3f,\"ttft_p50_us\":%llu,\"ttft_p99_us\":%llu}\n",
                   started, g_ready, g_open, g_errors, (double)(now - t0) / 1e9,
                   (unsigned long long)pct(50), (unsigned long long)pct(99));
            fflush(stdout);
            ready_printed = 1;
        }
        int timeout = 5;
        int k = epoll_wait(g_epfd, evs, 1024, timeout);
        if (k < 0 && errno != EINTR) {
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                char b[256];
                ssize_t r = read(0, b, sizeof(b));
                if (r <= 0) {
                    g_stop = 1;
                    epoll_ctl(g_epfd, EPOLL_CTL_DEL, 0, NULL);
                }
                continue;
            }
            on_event(c, evs[i].events);
        }
    }
    long still_open = g_open;
    for (long i = 0; i < conns; i++) {
        conn_close(&cs[i]);
    }
    qsort(g_samples, g_nsamples, sizeof(*g_samples), cmp_u64);
    printf("%s{\"samples\":%zu,\"streams_ok\":%ld,\"errors\":%ld,\"conn_errors\":%ld,"
           "\"bad_status\":%ld,\"no_done\":%ld,\"open_at_end\":%ld,\"seconds\":%.3f,"
           "\"ttft_p50_us\":%llu,\"ttft_p90_us\":%llu,\"ttft_p99_us\":%llu,\"ttft_max_us\":%llu}\n",
           g_mode_hold ? "DONE " : "", g_nsamples, g_streams_ok, g_errors, g_conn_errors,
           g_bad_status, g_no_done, still_open, (double)(now_ns() - t0) / 1e9,
           (unsigned long long)pct(50), (unsigned long long)pct(90), (unsigned long long)pct(99),
           (unsigned long long)pct(100));
    return 0;
}
