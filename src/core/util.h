#ifndef PX_CORE_UTIL_H
#define PX_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock milliseconds since the epoch (for usage rows). Any thread. */
int64_t px_now_ms(void);
/* Monotonic milliseconds (for durations). Any thread. */
uint64_t px_mono_ms(void);

/* Write a random version-4 UUID as 36 chars + NUL into out[37]. */
void px_uuid4(char out[37]);

/* SHA-256 of (p, n) into out[32]. */
void px_sha256(const void *p, size_t n, unsigned char out[32]);

/* Longest decimal int64_t: "-9223372036854775808" and the NUL. */
#define PX_I64_STR_MAX 21

/* Write v in decimal + NUL into out; returns the number of digits (and sign) written. Any
 * thread. For hot paths where snprintf's format parsing costs more than the number. */
size_t px_i64_str(int64_t v, char out[PX_I64_STR_MAX]);

/* Compare two n-byte strings in time that depends only on n. 1 when equal. */
int px_ct_equal(const void *a, const void *b, size_t n);

/* Case-insensitive compare of a (ptr, len) view against a NUL-terminated ASCII string. */
int px_view_ieq(const char *p, size_t n, const char *s);

/* 1 when (p, n) is valid UTF-8 (no overlongs, no surrogates, max U+10FFFF). */
int px_utf8_valid(const char *p, size_t n);

/* Replace every byte of s that is not part of a valid UTF-8 sequence with '?', in place, so
 * text echoed from input can always go into JSON. */
void px_utf8_sanitize(char *s);

/* Parse "host:port" into host (NUL-terminated, hostcap bytes) and port: 0 or PX_EPARSE. */
int px_parse_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
