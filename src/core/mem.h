#ifndef PX_CORE_MEM_H
#define PX_CORE_MEM_H

#include <stddef.h>

/* Allocation wrappers that abort with a message on out-of-memory, so callers carry no
 * untested OOM branches. Safe only because every size derived from input is capped first. */
void *px_malloc(size_t n);
void *px_calloc(size_t n, size_t size);
void *px_realloc(void *p, size_t n);
char *px_strdup(const char *s);
char *px_strndup(const char *s, size_t n);

#endif
