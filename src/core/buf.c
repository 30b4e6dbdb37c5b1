#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/mem.h"

void buf_init(struct buf *b, size_t cap)
{
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->cap = cap;
}

void buf_cleanup(struct buf *b)
{
    free(b->data);
    buf_init(b, b->cap);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data) {
        b->data[0] = '\0';
    }
}

/* Make room for n more bytes plus the NUL; grows geometrically, never past cap + 1. */
static int buf_reserve(struct buf *b, size_t n)
{
    if (n > b->cap - b->len) {
        return PX_EOVERFLOW;
    }
    size_t need = b->len + n + 1;
    if (need <= b->alloc) {
        return 0;
    }
    size_t a = b->alloc ? b->alloc : 256;
    while (a < need) {
        a *= 2;
    }
    if (a > b->cap + 1) {
        a = b->cap + 1;
    }
    b->data = px_realloc(b->data, a);
    b->alloc = a;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc) {
        return rc;
    }
    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return PX_EPARSE;
    }
    if ((size_t)n < sizeof(small)) {
        return buf_append(b, small, (size_t)n);
    }
    int rc = buf_reserve(b, (size_t)n);
    if (rc) {
        return rc;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}
