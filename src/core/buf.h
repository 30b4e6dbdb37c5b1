#ifndef PX_CORE_BUF_H
#define PX_CORE_BUF_H

#include <stddef.h>

/* A growable byte buffer with a cap fixed at init (the curl dynbuf model): appending past
 * the cap fails with PX_EOVERFLOW and leaves the buffer unchanged. The contents are always
 * NUL-terminated (the NUL is not counted in len and not against the cap), so a buffer can be
 * handed to APIs that want a C string. See docs/internals/buf.md. */
struct buf {
    char *data;   /* heap bytes, or NULL before the first append */
    size_t len;   /* bytes used */
    size_t alloc; /* bytes allocated */
    size_t cap;   /* most bytes len may ever reach */
};

/* Prepare an empty buffer; nothing is allocated until the first append. */
void buf_init(struct buf *b, size_t cap);
/* Release the memory; the buffer is empty and reusable with the same cap afterwards. */
void buf_cleanup(struct buf *b);
/* Forget the contents but keep the memory. */
void buf_reset(struct buf *b);
/* Append bytes: 0, or PX_EOVERFLOW when len + n would exceed the cap. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
/* Append formatted text: 0, or PX_EOVERFLOW. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);

#endif
