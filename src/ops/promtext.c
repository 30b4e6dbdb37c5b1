/* A reader for the Prometheus text format, enough for privax scale: one line at a time,
 * "name{label="value",...} value [timestamp]". Lines that do not parse are skipped rather
 * than failing the report: a node of another version may add what this one does not know. */
#include "ops/promtext.h"

#include <stdlib.h>
#include <string.h>

#define LABELS_MAX 16

struct lbl {
    const char *name; /* not terminated */
    size_t name_len;
    char value[256]; /* unescaped, NUL-terminated (longer values are cut) */
};

static int name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}

static int name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9');
}

/* Parse labels at p[*i] == '{'. Returns the count, or -1. */
static int parse_labels(const char *p, size_t n, size_t *i, struct lbl *l)
{
    int nl = 0;
    (*i)++;
    for (;;) {
        while (*i < n && p[*i] == ' ') {
            (*i)++;
        }
        if (*i < n && p[*i] == '}') {
            (*i)++;
            return nl;
        }
        if (*i >= n || !name_start(p[*i]) || nl == LABELS_MAX) {
            return -1;
        }
        struct lbl *x = &l[nl++];
        x->name = p + *i;
        while (*i < n && name_char(p[*i])) {
            (*i)++;
        }
        x->name_len = (size_t)(p + *i - x->name);
        if (*i + 1 >= n || p[*i] != '=' || p[*i + 1] != '"') {
            return -1;
        }
        *i += 2;
        size_t k = 0;
        for (;;) {
            if (*i >= n) {
                return -1;
            }
            char c = p[*i];
            if (c == '"') {
                (*i)++;
                break;
            }
            if (c == '\\') {
                if (*i + 1 >= n) {
                    return -1;
                }
                char e = p[*i + 1];
                c = e == 'n' ? '\n' : e;
                (*i)++;
            }
            if (k + 1 < sizeof(x->value)) {
                x->value[k++] = c;
            }
            (*i)++;
        }
        x->value[k] = '\0';
        while (*i < n && p[*i] == ' ') {
            (*i)++;
        }
        if (*i < n && p[*i] == ',') {
            (*i)++;
        }
    }
}

static int matches(const struct lbl *l, int nl, const char *const *match)
{
    for (size_t m = 0; match != NULL && match[m] != NULL && match[m + 1] != NULL; m += 2) {
        int ok = 0;
        for (int k = 0; k < nl && !ok; k++) {
            ok = l[k].name_len == strlen(match[m]) &&
                 memcmp(l[k].name, match[m], l[k].name_len) == 0 &&
                 strcmp(l[k].value, match[m + 1]) == 0;
        }
        if (!ok) {
            return 0;
        }
    }
    return 1;
}

size_t ops_prom_sum(const char *text, size_t len, const char *name, const char *const *match,
                    double *sum)
{
    size_t count = 0;
    size_t want = strlen(name);
    size_t start = 0;
    *sum = 0;
    while (start < len) {
        const char *nl = memchr(text + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *p = text + start;
        size_t n = end - start;
        start = end + 1;
        if (n == 0 || p[0] == '#' || !name_start(p[0])) {
            continue;
        }
        size_t i = 0;
        while (i < n && name_char(p[i])) {
            i++;
        }
        if (i != want || memcmp(p, name, want) != 0) {
            continue;
        }
        struct lbl l[LABELS_MAX];
        int nlb = 0;
        if (i < n && p[i] == '{' && (nlb = parse_labels(p, n, &i, l)) < 0) {
            continue;
        }
        if (i >= n || p[i] != ' ' || !matches(l, nlb, match)) {
            continue;
        }
        while (i < n && p[i] == ' ') {
            i++;
        }
        char num[64];
        size_t k = 0;
        while (i < n && p[i] != ' ' && k + 1 < sizeof(num)) {
            num[k++] = p[i++];
        }
        num[k] = '\0';
        char *e;
        double v = strtod(num, &e);
        if (k == 0 || *e != '\0') {
            continue;
        }
        *sum += v;
        count++;
    }
    return count;
}
