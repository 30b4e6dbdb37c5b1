/* Shared limits in Redis. Every admission is one EVALSHA of ADMIT_LUA: read both GCRA
 * timestamps and the month counter, decide, and reserve, atomically on the server, with the
 * server's clock (so nodes with skewed clocks still agree). Settling is one EVALSHA of
 * SETTLE_LUA, fire-and-forget. The script hashes are computed here (SHA-1 of the text), so
 * no round trip is needed before the first call; a NOSCRIPT reply (Redis restarted) is
 * answered by sending the script itself once.
 *
 * Calls run on the libuv loop through hiredis' async API and our own glue (below): the libuv
 * adapter Debian ships with hiredis 0.14 ignores poll errors, so a Redis that dies with a
 * command in flight (a TCP reset) would never be noticed and the poll would stay stopped. A dropped
 * connection is retried every second; meanwhile admissions fall back at once to the policy
 * (limits.c, lim__fallback). Times inside the scripts are microseconds; values are written
 * with %.0f because Lua 5.1 would otherwise print big numbers in 14-digit scientific form. */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/mem.h"
#include "limits/internal.h"

#define REDIS_RECONNECT_MS 1000
#define REDIS_MONTH_TTL_S  "3456000" /* 40 days: a month counter outlives its month */

static const char ADMIT_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local allowance, block = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local rT = math.max(1, math.floor(60000000 / rpm))\n"
    "local tT = math.max(1, math.floor(60000000 / tpm))\n"
    "local rcap, tcap = rT * rpm, tT * tpm\n"
    "local wcost = math.min(cost, tpm)\n"
    "local rtat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)\n"
    "local ttat = math.max(tonumber(redis.call('GET', KEYS[2])) or now, now)\n"
    "local used = tonumber(redis.call('GET', KEYS[3])) or 0\n"
    "local verdict, retry = 0, 0\n"
    "if rtat + rT - now > rcap then verdict = 1; retry = rtat + rT - now - rcap\n"
    "elseif ttat + wcost * tT - now > tcap then verdict = 2; retry = ttat + wcost * tT - now - "
    "tcap\n"
    "elseif block == 1 and used >= allowance then verdict = 3\n"
    "else\n"
    "  rtat = rtat + rT; ttat = ttat + cost * tT\n"
    "  redis.call('SET', KEYS[1], string.format('%.0f', rtat), 'PX', math.floor((rtat - now) / "
    "1000) + 1000)\n"
    "  redis.call('SET', KEYS[2], string.format('%.0f', ttat), 'PX', math.floor((ttat - now) / "
    "1000) + 1000)\n"
    "end\n"
    "return {verdict, math.floor(retry / 1000), math.floor((rcap - (rtat - now)) / rT),\n"
    "  math.floor((rtat - now) / 1000), math.floor((tcap - (ttat - now)) / tT),\n"
    "  math.floor((ttat - now) / 1000), used}\n";

static const char SETTLE_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local tT = math.max(1, math.floor(60000000 / tonumber(ARGV[1])))\n"
    "local ttat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)\n"
    "ttat = ttat + tonumber(ARGV[2]) * tT\n"
    "if ttat > now then\n"
    "  redis.call('SET', KEYS[1], string.format('%.0f', ttat), 'PX', math.floor((ttat - now) / "
    "1000) + 1000)\n"
    "else redis.call('DEL', KEYS[1]) end\n"
    "local actual = tonumber(ARGV[3])\n"
    "if actual > 0 then\n"
    "  redis.call('INCRBY', KEYS[2], actual)\n"
    "  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))\n"
    "end\n"
    "return 1\n";

struct lim_redis {
    struct limiter *l;
    uv_loop_t *loop;
    redisAsyncContext *ac; /* NULL while disconnected */
    int connected;         /* the connect callback said OK */
    int healthy;           /* connected and the last call answered in time */
    int closing;
    char host[256];
    int port;
    char password[256]; /* "" for none */
    int db;
    char prefix[64]; /* key prefix */
    char sha_admit[41];
    char sha_settle[41];
    uv_timer_t reconnect;
};

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[20];
    unsigned int n = 20;
    EVP_Digest(s, strlen(s), d, &n, EVP_sha1(), NULL);
    for (int i = 0; i < 20; i++) {
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    }
}

/* redis://[:password@]host[:port][/db] */
static int parse_url(struct lim_redis *r, const char *url)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        return -1;
    }
    p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        snprintf(r->password, sizeof(r->password), "%.*s", (int)(at - pw), pw);
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    snprintf(r->host, sizeof(r->host), "%.*s", (int)(end - p), p);
    r->port = 6379;
    if (*end == ':') {
        long port = strtol(end + 1, NULL, 10);
        r->port = port > 0 && port <= 65535 ? (int)port : 6379;
        end += 1 + strspn(end + 1, "0123456789");
    }
    if (*end == '/') {
        r->db = (int)strtol(end + 1, NULL, 10);
    }
    return r->host[0] ? 0 : -1;
}

static void key(char *out, size_t cap, const struct lim_redis *r, const char *tenant,
                const char *what)
{
    snprintf(out, cap, "%s:{%s}:%s", r->prefix, tenant, what);
}

static void month_key(char *out, size_t cap, const struct lim_redis *r, const char *tenant)
{
    char m[16];
    snprintf(m, sizeof(m), "m:%d", lim__month_key());
    key(out, cap, r, tenant, m);
}

static void reconnect_later(struct lim_redis *r);

/* ---- hiredis <-> libuv glue ---- */

struct redis_poll {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    int events;            /* UV_READABLE | UV_WRITABLE wanted by hiredis */
};

static void on_redis_poll(uv_poll_t *h, int status, int events)
{
    struct redis_poll *p = h->data;
    if (status < 0) {
        /* libuv stopped the poll on a socket error: let hiredis read the error and
         * disconnect, which calls on_disconnect and schedules a reconnect. */
        events = UV_READABLE;
    }
    if (p->ac && (events & UV_READABLE)) {
        redisAsyncHandleRead(p->ac);
    }
    if (p->ac && (events & UV_WRITABLE)) {
        redisAsyncHandleWrite(p->ac);
    }
}

static void poll_update(struct redis_poll *p, int add, int ev)
{
    p->events = add ? (p->events | ev) : (p->events & ~ev);
    if (p->events) {
        uv_poll_start(&p->poll, p->events, on_redis_poll);
    } else {
        uv_poll_stop(&p->poll);
    }
}

static void glue_add_read(void *d)
{
    poll_update(d, 1, UV_READABLE);
}

static void glue_del_read(void *d)
{
    poll_update(d, 0, UV_READABLE);
}

static void glue_add_write(void *d)
{
    poll_update(d, 1, UV_WRITABLE);
}

static void glue_del_write(void *d)
{
    poll_update(d, 0, UV_WRITABLE);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void glue_cleanup(void *d)
{
    struct redis_poll *p = d;
    p->ac = NULL;
    uv_poll_stop(&p->poll);
    uv_close((uv_handle_t *)&p->poll, on_poll_closed);
}

static int glue_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_poll *p = px_calloc(1, sizeof(*p));
    if (uv_poll_init_socket(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->poll.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    return 0;
}

static void on_connect(const redisAsyncContext *ac, int status);
static void on_disconnect(const redisAsyncContext *ac, int status);

static void seed_month(void *ud, const char *tenant, int64_t used)
{
    struct lim_redis *r = ud;
    char k[512], v[32];
    month_key(k, sizeof(k), r, tenant);
    snprintf(v, sizeof(v), "%lld", (long long)used);
    /* NX: another node (or an earlier run) may already hold the shared figure. */
    redisAsyncCommand(r->ac, NULL, NULL, "SET %s %s NX EX %s", k, v, REDIS_MONTH_TTL_S);
}

static void do_connect(struct lim_redis *r)
{
    r->ac = redisAsyncConnect(r->host, r->port);
    if (!r->ac || r->ac->err) {
        px_log(PX_LOG_WARN, "event=redis_connect_failed host=%s port=%d error=\"%s\"", r->host,
               r->port, r->ac ? r->ac->errstr : "out of memory");
        if (r->ac) {
            redisAsyncFree(r->ac);
        }
        r->ac = NULL;
        reconnect_later(r);
        return;
    }
    r->ac->data = r;
    if (glue_attach(r->ac, r->loop) != 0) {
        redisAsyncFree(r->ac);
        r->ac = NULL;
        reconnect_later(r);
        return;
    }
    redisAsyncSetConnectCallback(r->ac, on_connect);
    redisAsyncSetDisconnectCallback(r->ac, on_disconnect);
    if (r->password[0]) {
        redisAsyncCommand(r->ac, NULL, NULL, "AUTH %s", r->password);
    }
    if (r->db) {
        redisAsyncCommand(r->ac, NULL, NULL, "SELECT %d", r->db);
    }
}

static void on_reconnect_timer(uv_timer_t *t)
{
    struct lim_redis *r = t->data;
    if (!r->closing && !r->ac) {
        do_connect(r);
    }
}

static void reconnect_later(struct lim_redis *r)
{
    if (!r->closing) {
        uv_timer_start(&r->reconnect, on_reconnect_timer, REDIS_RECONNECT_MS, 0);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct lim_redis *r = ac->data;
    if (status != REDIS_OK) {
        px_log(PX_LOG_WARN, "event=redis_connect_failed host=%s port=%d error=\"%s\"", r->host,
               r->port, ac->errstr);
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->connected = r->healthy = 0;
        reconnect_later(r);
        return;
    }
    r->connected = r->healthy = 1;
    px_log(PX_LOG_INFO, "event=redis_connected host=%s port=%d limits=redis", r->host, r->port);
    redisAsyncCommand(r->ac, NULL, NULL, "SCRIPT LOAD %s", ADMIT_LUA);
    redisAsyncCommand(r->ac, NULL, NULL, "SCRIPT LOAD %s", SETTLE_LUA);
    lim__each_month(r->l, seed_month, r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct lim_redis *r = ac->data;
    (void)status;
    r->ac = NULL;
    if (r->connected && !r->closing) {
        px_log(PX_LOG_WARN,
               "event=redis_disconnected host=%s port=%d limits=degraded "
               "error=\"%s\"",
               r->host, r->port, ac->errstr[0] ? ac->errstr : "connection closed");
    }
    r->connected = r->healthy = 0;
    reconnect_later(r);
}

static int send_admit(struct lim_redis *r, struct lim_pending *p, int with_text);

static void on_admit_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct lim_pending *p = privdata;
    struct lim_redis *r = ac->data;
    redisReply *rep = reply;
    p->in_redis = 0;
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
        !p->answered && r->connected && send_admit(r, p, 1) == 0) {
        return; /* resent with the script text */
    }
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 7) {
        if (rep && !r->closing) {
            char qt[2 * USAGE_ID_MAX + 4];
            px_log(PX_LOG_WARN, "tenant=%s event=redis_bad_reply type=%d error=\"%s\"",
                   px_log_quote(qt, sizeof(qt), p->tenant), rep->type,
                   rep->type == REDIS_REPLY_ERROR ? rep->str : "");
        }
        if (!p->answered) {
            lim__fallback(p->l, p);
        }
        lim__pending_release(p->l, p);
        return;
    }
    long long v[7];
    for (size_t i = 0; i < 7; i++) {
        v[i] = rep->element[i]->type == REDIS_REPLY_INTEGER ? rep->element[i]->integer : 0;
    }
    r->healthy = 1;
    struct lim_decision d = {0};
    d.verdict = v[0] >= 0 && v[0] <= 3 ? (enum lim_verdict)v[0] : LIM_ALLOW;
    d.retry_after_ms = v[1] + 1;
    d.rpm_limit = p->plan.rpm;
    d.rpm_remaining = v[2] > 0 ? v[2] : 0;
    d.rpm_reset_ms = v[3];
    d.tpm_limit = p->plan.tpm;
    d.tpm_remaining = v[4] > 0 ? v[4] : 0;
    d.tpm_reset_ms = v[5];
    d.month_used = v[6];
    d.month_allowance = p->plan.monthly_tokens;
    d.overage = d.month_used >= d.month_allowance;
    d.warn = d.month_used * 5 >= d.month_allowance * 4;
    if (d.verdict == LIM_MONTHLY) {
        d.retry_after_ms = lim__ms_to_next_month();
    }
    lim__note_month(p->l, p->tenant, d.month_used);
    if (p->cancelled && !p->answered && d.verdict == LIM_ALLOW) {
        /* The requester left while Redis was deciding: Redis has reserved its tokens and
         * nothing will ever settle them, so give them back now (the request still counts
         * for requests/minute: it arrived). */
        lim_settle(p->l, p->tenant, &p->plan, p->reserve, 0);
    }
    lim__answer(p->l, p, &d);
    lim__pending_release(p->l, p);
}

static int send_admit(struct lim_redis *r, struct lim_pending *p, int with_text)
{
    char k1[512], k2[512], k3[512], a1[24], a2[24], a3[24], a4[24], a5[4];
    key(k1, sizeof(k1), r, p->tenant, "rpm");
    key(k2, sizeof(k2), r, p->tenant, "tpm");
    month_key(k3, sizeof(k3), r, p->tenant);
    snprintf(a1, sizeof(a1), "%lld", (long long)p->plan.rpm);
    snprintf(a2, sizeof(a2), "%lld", (long long)p->plan.tpm);
    snprintf(a3, sizeof(a3), "%lld", (long long)p->reserve);
    snprintf(a4, sizeof(a4), "%lld", (long long)p->plan.monthly_tokens);
    snprintf(a5, sizeof(a5), "%d", p->plan.block_at_allowance);
    const char *argv[] = {with_text ? "EVAL" : "EVALSHA",
                          with_text ? ADMIT_LUA : r->sha_admit,
                          "3",
                          k1,
                          k2,
                          k3,
                          a1,
                          a2,
                          a3,
                          a4,
                          a5};
    size_t lens[11];
    for (size_t i = 0; i < 11; i++) {
        lens[i] = strlen(argv[i]);
    }
    if (redisAsyncCommandArgv(r->ac, on_admit_reply, p, 11, argv, lens) != REDIS_OK) {
        return -1;
    }
    p->in_redis = 1;
    return 0;
}

int lim_redis__admit(struct lim_redis *r, struct lim_pending *p)
{
    if (!r->ac || !r->connected) {
        return -1;
    }
    return send_admit(r, p, 0);
}

/* A settle's arguments, kept until Redis answered: a NOSCRIPT (Redis restarted and lost its
 * scripts) is answered by sending the script text once, so a settle is never lost to it. */
struct settle_args {
    char k1[512], k2[512], a1[24], a2[24], a3[24];
    int with_text; /* 1 once resent as EVAL */
};

static void send_settle(struct lim_redis *r, struct settle_args *sa);

static void on_settle_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct settle_args *sa = privdata;
    struct lim_redis *r = ac->data;
    redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
        !sa->with_text && r->connected && !r->closing) {
        sa->with_text = 1;
        send_settle(r, sa);
        return;
    }
    if (rep && rep->type == REDIS_REPLY_ERROR && !r->closing) {
        px_log(PX_LOG_WARN, "event=redis_settle_failed error=\"%s\"", rep->str);
    }
    free(sa);
}

static void send_settle(struct lim_redis *r, struct settle_args *sa)
{
    const char *argv[] = {sa->with_text ? "EVAL" : "EVALSHA",
                          sa->with_text ? SETTLE_LUA : r->sha_settle,
                          "2",
                          sa->k1,
                          sa->k2,
                          sa->a1,
                          sa->a2,
                          sa->a3,
                          REDIS_MONTH_TTL_S};
    size_t lens[9];
    for (size_t i = 0; i < 9; i++) {
        lens[i] = strlen(argv[i]);
    }
    if (redisAsyncCommandArgv(r->ac, on_settle_reply, sa, 9, argv, lens) != REDIS_OK) {
        free(sa); /* no reply will come: counted locally, the shared bucket refills */
    }
}

void lim_redis__settle(struct lim_redis *r, const char *tenant, const struct lim_plan *p,
                       int64_t delta_tokens, int64_t actual_tokens)
{
    if (!r->ac || !r->connected) {
        return; /* counted locally; the shared bucket refills on its own */
    }
    struct settle_args *sa = px_calloc(1, sizeof(*sa));
    key(sa->k1, sizeof(sa->k1), r, tenant, "tpm");
    month_key(sa->k2, sizeof(sa->k2), r, tenant);
    snprintf(sa->a1, sizeof(sa->a1), "%lld", (long long)p->tpm);
    snprintf(sa->a2, sizeof(sa->a2), "%lld", (long long)delta_tokens);
    snprintf(sa->a3, sizeof(sa->a3), "%lld", (long long)actual_tokens);
    send_settle(r, sa);
}

void lim_redis__timed_out(struct lim_redis *r)
{
    if (r->healthy) {
        px_log(PX_LOG_WARN, "event=redis_slow host=%s port=%d limits=degraded", r->host, r->port);
    }
    r->healthy = 0;
}

int lim_redis__healthy(const struct lim_redis *r)
{
    return r->connected && r->healthy;
}

int lim_redis__new(struct lim_redis **out, struct limiter *l, uv_loop_t *loop,
                   const struct px_config *cfg)
{
    struct lim_redis *r = px_calloc(1, sizeof(*r));
    r->l = l;
    r->loop = loop;
    if (parse_url(r, cfg->redis_url) != 0) {
        px_log(PX_LOG_ERROR, "event=bad_redis_url url=%s", cfg->redis_url);
        free(r);
        return -1;
    }
    snprintf(r->prefix, sizeof(r->prefix), "%s",
             cfg->redis_prefix && cfg->redis_prefix[0] ? cfg->redis_prefix : "privax");
    sha1_hex(ADMIT_LUA, r->sha_admit);
    sha1_hex(SETTLE_LUA, r->sha_settle);
    uv_timer_init(loop, &r->reconnect);
    r->reconnect.data = r;
    do_connect(r);
    *out = r;
    return 0;
}

static void on_reconnect_closed(uv_handle_t *h)
{
    free(h->data);
}

void lim_redis__free(struct lim_redis *r)
{
    if (!r) {
        return;
    }
    r->closing = 1;
    if (r->ac) {
        /* Calls every pending reply callback with NULL, then the disconnect callback. */
        redisAsyncFree(r->ac);
        r->ac = NULL;
    }
    uv_timer_stop(&r->reconnect);
    uv_close((uv_handle_t *)&r->reconnect, on_reconnect_closed);
}
