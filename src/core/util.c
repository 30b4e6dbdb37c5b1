#include "core/util.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/err.h"

int64_t px_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t px_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Random bytes for px_uuid4, drawn from the CSPRNG in bulk: RAND_bytes costs a lock and a
 * getpid() system call per call, once per request otherwise. Each thread has its own pool so
 * no lock is needed; a forked child empties the pool of the thread that forked (the only
 * thread it has), so parent and child never hand out the same ids. */
#define UUID_POOL_BYTES 1024
static _Thread_local unsigned char uuid_pool[UUID_POOL_BYTES];
static _Thread_local size_t uuid_pool_left; /* unused bytes at the end of uuid_pool */
static pthread_once_t uuid_once = PTHREAD_ONCE_INIT;

static void uuid_after_fork(void)
{
    uuid_pool_left = 0;
}

static void uuid_register_fork(void)
{
    pthread_atfork(NULL, NULL, uuid_after_fork);
}

void px_uuid4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    pthread_once(&uuid_once, uuid_register_fork);
    if (uuid_pool_left < 16) {
        if (RAND_bytes(uuid_pool, sizeof(uuid_pool)) != 1) {
            /* The CSPRNG failing is not something a request can recover from; fall back to
             * the clock-seeded libc generator rather than serving without ids. */
            for (size_t i = 0; i < sizeof(uuid_pool); i++) {
                uuid_pool[i] = (unsigned char)rand();
            }
        }
        uuid_pool_left = sizeof(uuid_pool);
    }
    unsigned char *r = uuid_pool + sizeof(uuid_pool) - uuid_pool_left;
    uuid_pool_left -= 16;
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            *o++ = '-';
        }
        *o++ = hex[r[i] >> 4];
        *o++ = hex[r[i] & 15];
    }
    *o = '\0';
}

/* SHA-256 fetched from the provider once: EVP_sha256() makes OpenSSL 3 look the algorithm up
 * again (under a lock) on every digest, and tokens are hashed on every request. The fetched
 * method is shared by every thread and kept for the life of the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void px_sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    pthread_once(&sha256_once, sha256_fetch);
    EVP_Digest(p, n, out, &len, sha256_md ? sha256_md : EVP_sha256(), NULL);
}

size_t px_i64_str(int64_t v, char out[PX_I64_STR_MAX])
{
    char rev[20];
    size_t n = 0;
    /* The magnitude in unsigned arithmetic, so INT64_MIN does not overflow. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        rev[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) {
        out[len++] = '-';
    }
    while (n) {
        out[len++] = rev[--n];
    }
    out[len] = '\0';
    return len;
}

int px_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) {
        d |= (unsigned char)(x[i] ^ y[i]);
    }
    return d == 0;
}

int px_view_ieq(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && strncasecmp(p, s, n) == 0;
}

void px_utf8_sanitize(char *s)
{
    size_t n = strlen(s);
    size_t i = 0;
    while (i < n) {
        /* Find the longest valid sequence starting here (1-4 bytes). */
        size_t len = 0;
        for (size_t k = 1; k <= 4 && i + k <= n; k++) {
            if (px_utf8_valid(s + i, k)) {
                len = k;
                break;
            }
        }
        if (len == 0) {
            s[i] = '?';
            len = 1;
        }
        i += len;
    }
}

int px_utf8_valid(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len) {
            return 0;
        }
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }
        i += len;
    }
    return 1;
}

int px_parse_hostport(const char *s, char *host, size_t hostcap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= hostcap) {
        return PX_EPARSE;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || p < 0 || p > 65535) {
        return PX_EPARSE;
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}
