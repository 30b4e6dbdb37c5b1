#include "core/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *oom(size_t n)
{
    fprintf(stderr, "level=error out of memory allocating %zu bytes\n", n);
    abort();
}

void *px_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    return p ? p : oom(n);
}

void *px_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    return p ? p : oom(n * size);
}

void *px_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    return q ? q : oom(n);
}

char *px_strdup(const char *s)
{
    return px_strndup(s, strlen(s));
}

char *px_strndup(const char *s, size_t n)
{
    char *p = px_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
