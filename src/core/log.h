#ifndef PX_CORE_LOG_H
#define PX_CORE_LOG_H

#include <stddef.h>

/* Logging: key=value lines on stderr. The macro checks the level before evaluating its
 * arguments; debug lines compile out of builds with NDEBUG. Never log tokens, prompts or
 * completions: log ids instead. */

enum px_log_level {
    PX_LOG_DEBUG = 0,
    PX_LOG_INFO,
    PX_LOG_WARN,
    PX_LOG_ERROR,
};

extern int px_log_min_level;

/* s as a quoted log value ("..." with quotes and backslashes escaped, cut to fit cap), so a
 * client-chosen value such as a tenant id `x tenant=acme` cannot forge fields. Returns out.
 * cap must be at least 4. */
const char *px_log_quote(char *out, size_t cap, const char *s);

void px_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define px_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= px_log_min_level) {                                                         \
            px_log_write((level), __VA_ARGS__);                                                    \
        }                                                                                          \
    } while (0)

#ifdef NDEBUG
#define px_debug(...)                                                                              \
    do {                                                                                           \
    } while (0)
#else
#define px_debug(...) px_log(PX_LOG_DEBUG, __VA_ARGS__)
#endif

/* Always-on invariant check for states the program itself creates; never for input bytes. */
#define PX_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            px_assert_fail(#cond, __FILE__, __LINE__);                                             \
        }                                                                                          \
    } while (0)

_Noreturn void px_assert_fail(const char *what, const char *file, int line);

#endif
