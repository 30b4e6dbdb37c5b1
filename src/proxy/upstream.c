#include "proxy/upstream.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"

/* Design note. curl drives the sockets; we only relay readiness. A request can be
 * cancelled from inside one of its own curl callbacks (a client hangs up while we write
 * its bytes), where curl_multi_remove_handle is forbidden, so cancellation inside a callback
 * only marks the request and the write callback fails it; requests are removed from the
 * multi handle only from loop callbacks, after curl_multi_socket_action has returned.
 *
 * A POST is never sent twice. The body is handed to curl as CURLOPT_POSTFIELDS, so curl
 * sends it with the request head in one send() (bodies under 64 KiB); but then curl could
 * rewind it, and when a reused keep-alive connection dies after the request went out, curl
 * silently starts the transfer again on another connection. Every attempt passes the
 * pre-request callback (CURLOPT_PREREQFUNCTION, right before the request is sent), and
 * on_prereq refuses any attempt after the first: the transfer fails with
 * CURLE_ABORTED_BY_CALLBACK before a byte of the second copy is sent. (Before, the body went
 * through a read callback that could not rewind: the same guarantee for a second send() per
 * request.) GETs (health probes) keep curl's retry: sending one again is harmless. */

/* Distinct URLs (backend + path) whose parsed form is kept; more are passed as strings. */
#define URL_CACHE_MAX 64

struct url_entry {
    char *url; /* the URL as given (heap) */
    CURLU *h;  /* its parsed form */
};

struct upstream_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;          /* curl's own timeout */
    int in_curl;               /* >0 while inside curl_multi_socket_action */
    size_t active;             /* requests started and not done */
    struct upstream_req *reqs; /* every live request, for free() */
    CURL *spare[64];           /* easy handles kept for reuse, options kept (easy_new) */
    size_t nspare;
    struct url_entry urls[URL_CACHE_MAX]; /* parsed URLs, see client_url() */
    size_t nurls;
    struct curl_slist *post_headers; /* the headers of every POST, built once */
    int closing;
};

struct upstream_req {
    struct upstream_client *c;
    CURL *easy;
    char *body;       /* copy of the request body */
    size_t body_len;  /* bytes in body */
    uv_timer_t timer; /* first-byte, then idle timer */
    uint64_t idle_timeout_ms;
    int got_head;     /* on_head was called */
    int got_byte;     /* a body byte arrived */
    int paused;       /* 1 while receiving is paused */
    int cancelled;    /* cancelled inside a callback; finish silently */
    int attempts;     /* times curl was about to send the request (on_prereq) */
    int resend;       /* 1: on_prereq refused to send the request again */
    uint64_t last_ms; /* uv_now() of the last body byte */
    int done;         /* removed from multi; waiting for the timer handle to close */
    char errbuf[CURL_ERROR_SIZE];
    struct upstream_req_opts o;
    struct upstream_req *prev, *next;
};

/* One per socket curl asks us to watch. */
struct curl_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct upstream_client *c;
};

static void client_check_done(struct upstream_client *c);

static void client_action(struct upstream_client *c, curl_socket_t fd, int flags)
{
    int running;
    c->in_curl++;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    c->in_curl--;
    client_check_done(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct curl_sock *s = h->data;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        flags |= (events & UV_READABLE) ? CURL_CSELECT_IN : 0;
        flags |= (events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0;
    }
    client_action(s->c, s->fd, flags);
}

static void on_sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct upstream_client *c = userp;
    struct curl_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = px_calloc(1, sizeof(*s));
        s->fd = fd;
        s->c = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        curl_multi_assign(c->multi, fd, s);
    }
    int events = 0;
    events |= (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ? UV_READABLE : 0;
    events |= (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ? UV_WRITABLE : 0;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    struct upstream_client *c = t->data;
    client_action(c, CURL_SOCKET_TIMEOUT, 0);
}

static int on_timer_set(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct upstream_client *c = userp;
    if (timeout_ms < 0) {
        uv_timer_stop(&c->timer);
    } else {
        /* 0 means "call me as soon as possible": never from inside this callback. */
        uv_timer_start(&c->timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

int upstream_client_new(struct upstream_client **out, uv_loop_t *loop)
{
    struct upstream_client *c = px_calloc(1, sizeof(*c));
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return PX_EUPSTREAM;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    /* Keep enough idle keep-alive connections for every backend slot. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 1024L);
    c->post_headers = curl_slist_append(NULL, "Content-Type: application/json");
    /* No 100-continue round trip: the backend always takes the body. */
    c->post_headers = curl_slist_append(c->post_headers, "Expect:");
    *out = c;
    return 0;
}

size_t upstream_client_active(const struct upstream_client *c)
{
    return c->active;
}

static void on_req_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Detach a request from curl and the client, then free it once its timer handle closed. */
static void req_free(struct upstream_req *r)
{
    struct upstream_client *c = r->c;
    curl_multi_remove_handle(c->multi, r->easy);
    if (c->nspare < sizeof(c->spare) / sizeof(c->spare[0]) && !c->closing) {
        /* No curl_easy_reset: the options every request sets stay (easy_new); the ones that
         * point at this request are cleared, the rest are set again by the next request. */
        curl_easy_setopt(r->easy, CURLOPT_PRIVATE, NULL);
        curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, NULL);
        curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, NULL);
        curl_easy_setopt(r->easy, CURLOPT_PREREQDATA, NULL);
        c->spare[c->nspare++] = r->easy;
    } else {
        curl_easy_cleanup(r->easy);
    }
    r->easy = NULL;
    free(r->body);
    r->body = NULL;
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        c->reqs = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    }
    c->active--;
    r->done = 1;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_req_timer_closed);
}

static void req_finish(struct upstream_req *r, int err, const char *msg)
{
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    struct upstream_req_opts o = r->o;
    char m[CURL_ERROR_SIZE];
    snprintf(m, sizeof(m), "%s", msg ? msg : "");
    req_free(r);
    o.on_done(o.ud, err, (int)status, m);
}

static void client_check_done(struct upstream_client *c)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        struct upstream_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode res = msg->data.result;
        if (r->cancelled) {
            req_free(r);
            continue;
        }
        curl_off_t connect_us = 0;
        curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        if (res == CURLE_OK) {
            req_finish(r, 0, NULL);
        } else if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST ||
                   (res == CURLE_OPERATION_TIMEDOUT && connect_us == 0)) {
            req_finish(r, PX_ECONNECT, r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
        } else if (res == CURLE_SEND_FAIL_REWIND ||
                   (res == CURLE_ABORTED_BY_CALLBACK && r->resend)) {
            req_finish(r, PX_EUPSTREAM,
                       "connection lost after the request was sent (not sent again)");
        } else if (res == CURLE_WRITE_ERROR) {
            req_finish(r, PX_ECLOSED, "aborted by the relay");
        } else if (res == CURLE_OPERATION_TIMEDOUT) {
            req_finish(r, -ETIMEDOUT, r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
        } else if (res == CURLE_RECV_ERROR || res == CURLE_SEND_ERROR) {
            /* curl's own text is about its poll loop ("select/poll returned error": libuv saw
             * the socket fail) or the syscall; either way the backend dropped the connection. */
            req_finish(r, PX_EUPSTREAM, "connection reset by the backend");
        } else if (res == CURLE_GOT_NOTHING) {
            req_finish(r, PX_EUPSTREAM, "the backend closed the connection without answering");
        } else {
            req_finish(r, PX_EUPSTREAM, r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
        }
    }
}

/* The request's own timer: first byte, then idle. It fires at the deadline computed from the
 * last activity; bytes arriving only update a timestamp, so the hot path never touches the
 * timer heap. A zero-delay start is also how a cancel from inside curl is completed. */
static void on_req_timer(uv_timer_t *t)
{
    struct upstream_req *r = t->data;
    if (r->done) {
        return;
    }
    if (r->cancelled) {
        req_free(r);
        return;
    }
    if (r->paused) {
        /* The client is slow, not the upstream: do not blame the backend. */
        uv_timer_start(&r->timer, on_req_timer, r->idle_timeout_ms, 0);
        return;
    }
    uint64_t now = uv_now(r->c->loop);
    if (r->got_byte && r->last_ms + r->idle_timeout_ms > now) {
        uv_timer_start(&r->timer, on_req_timer, r->last_ms + r->idle_timeout_ms - now, 0);
        return;
    }
    req_finish(r, -ETIMEDOUT,
               r->got_byte ? "upstream idle timeout between chunks"
                           : "upstream first byte timeout");
}

static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    struct upstream_req *r = ud;
    size_t len = size * n;
    if (r->cancelled) {
        return 0;
    }
    if (r->paused) {
        return CURL_WRITEFUNC_PAUSE;
    }
    r->last_ms = uv_now(r->c->loop);
    if (!r->got_byte) {
        r->got_byte = 1;
        uv_timer_start(&r->timer, on_req_timer, r->idle_timeout_ms, 0);
    }
    if (len == 0) {
        return 0;
    }
    return r->o.on_data(r->o.ud, p, len) == 0 && !r->cancelled ? len : 0;
}

/* Called by curl right before it sends the request, once per attempt: a POST goes out once
 * (see the design note); a second attempt is refused before anything of it is sent. */
static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    struct upstream_req *r = ud;
    if (r->attempts++ > 0) {
        r->resend = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    return CURL_PREREQFUNC_OK;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct upstream_req *r = ud;
    size_t len = size * n;
    if (r->cancelled) {
        return 0;
    }
    /* The blank line ends a header block; 1xx blocks (100 Continue) are followed by another. */
    if ((len == 2 && p[0] == '\r') || (len == 1 && p[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && !r->got_head) {
            r->got_head = 1;
            if (r->o.on_head) {
                r->o.on_head(r->o.ud, (int)status);
            }
        }
    }
    return r->cancelled ? 0 : len;
}

/* The parsed form of url, or NULL to pass the string. Given a string, curl parses the URL
 * again on every transfer; given a CURLU it copies the parsed handle instead. The flags are
 * the ones curl itself parses a string URL with, so both ways mean the same URL; a URL that
 * does not parse is passed as a string and fails in curl exactly as before. */
static CURLU *client_url(struct upstream_client *c, const char *url)
{
    for (size_t i = 0; i < c->nurls; i++) {
        if (strcmp(c->urls[i].url, url) == 0) {
            return c->urls[i].h;
        }
    }
    if (c->nurls == URL_CACHE_MAX) {
        return NULL;
    }
    CURLU *h = curl_url();
    if (!h) {
        return NULL;
    }
    if (curl_url_set(h, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) !=
        CURLUE_OK) {
        curl_url_cleanup(h);
        return NULL;
    }
    c->urls[c->nurls].url = px_strdup(url);
    c->urls[c->nurls].h = h;
    c->nurls++;
    return h;
}

/* A new easy handle with the options that are the same for every request. A handle is kept
 * for the next request without curl_easy_reset (req_free), which curl allows: each transfer
 * starts from the options as they are, and upstream_req_start sets every other option a
 * request uses, each time, GET or POST. */
static CURL *easy_new(void)
{
    CURL *e = curl_easy_init();
    if (!e) {
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* Only plain HTTP to GPU nodes on the private network; refuse redirects elsewhere. */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    return e;
}

struct upstream_req *upstream_req_start(struct upstream_client *c,
                                        const struct upstream_req_opts *opts)
{
    struct upstream_req *r = px_calloc(1, sizeof(*r));
    r->c = c;
    r->o = *opts;
    r->easy = c->nspare ? c->spare[--c->nspare] : easy_new();
    if (!r->easy) {
        free(r);
        return NULL;
    }
    r->idle_timeout_ms = opts->idle_timeout_ms;
    CURL *e = r->easy;
    CURLU *u = client_url(c, opts->url);
    /* A CURLU wins over a URL string: clear the one a kept handle may still hold. */
    curl_easy_setopt(e, CURLOPT_CURLU, u);
    if (!u) {
        curl_easy_setopt(e, CURLOPT_URL, opts->url);
    }
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)opts->connect_timeout_ms);
    if (!opts->body) {
        /* A GET, on a handle that may have made a POST: no body, no POST headers, and curl's
         * own retry allowed (sending a GET again is harmless). POSTFIELDS first: setting it
         * makes the method POST again. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, NULL);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        r->body = px_malloc(opts->body_len + 1);
        memcpy(r->body, opts->body, opts->body_len);
        r->body[opts->body_len] = '\0';
        r->body_len = opts->body_len;
        /* Not copied by curl: r->body lives until req_free, after the handle left the multi. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)opts->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->post_headers);
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, r);
    }
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    r->next = c->reqs;
    if (c->reqs) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    c->active++;
    uv_timer_start(&r->timer, on_req_timer, opts->first_byte_timeout_ms, 0);
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        /* No callback may fire for a request that failed to start. */
        r->cancelled = 1;
        req_free(r);
        return NULL;
    }
    return r;
}

void upstream_req_cancel(struct upstream_req *r)
{
    if (r->done || r->cancelled) {
        return;
    }
    r->cancelled = 1;
    if (r->c->in_curl) {
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
    } else {
        req_free(r);
    }
}

void upstream_req_pause(struct upstream_req *r, int paused)
{
    if (r->done || r->cancelled || r->paused == paused) {
        return;
    }
    r->paused = paused;
    if (!paused) {
        /* Resuming may deliver held bytes right here; count it as being inside curl. */
        r->last_ms = uv_now(r->c->loop);
        r->c->in_curl++;
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
        r->c->in_curl--;
    }
}

static void on_client_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void upstream_client_free(struct upstream_client *c)
{
    if (!c) {
        return;
    }
    c->closing = 1;
    while (c->reqs) {
        struct upstream_req *r = c->reqs;
        r->cancelled = 1;
        req_free(r);
    }
    for (size_t i = 0; i < c->nspare; i++) {
        curl_easy_cleanup(c->spare[i]);
    }
    c->nspare = 0;
    curl_multi_cleanup(c->multi);
    /* Only now: easy handles kept pointers to these. */
    for (size_t i = 0; i < c->nurls; i++) {
        curl_url_cleanup(c->urls[i].h);
        free(c->urls[i].url);
    }
    curl_slist_free_all(c->post_headers);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_client_timer_closed);
}
