/* Config loading: YAML (libfyaml document API) -> validated, immutable struct px_config.
 *
 * Design note. Every key the file may contain is one row of a table (struct cfg_opt): name,
 * type, default, bounds, offsetof into the struct it fills, an optional check and whether it
 * could be applied by a reload (the redis static_configs[] model). A mapping is loaded by
 * apply_table(): it first rejects any key that is not a row (a typo must never be silently
 * ignored), then applies the rows in table order, not file order, so a row may depend on rows
 * above it (models resolve backend names, tenants resolve tier names). Sub-sections and lists
 * are rows too, of type CFG_SECTION (the same struct, another table) or CFG_CUSTOM (a handler,
 * or for a list of mappings a struct cfg_list that load_list() walks with the entry's table).
 *
 * Errors: the first one wins and is written as "FILE:LINE: key.path: message". Lines come
 * from the scalar tokens' start marks (0-based in libfyaml, reported 1-based); a mapping or a
 * list reports the line of its first scalar, or the line of the key that holds it when empty.
 * YAML syntax errors come from libfyaml's collected diagnostics, which carry their own line.
 * On any error the half-built struct is freed through px_config_free(), which copes with
 * every partial state because arrays are zeroed when allocated and counted at once.
 *
 * Deliberately rejected: aliases (*x, so no billion-laughs expansion and no shared nodes),
 * tags, non-string keys, duplicate keys (checked here rather than by libfyaml so the message
 * names the key and both lines), quoted numbers ("60" is a string in YAML and a typo in a config),
 * control characters in any string, files over PX_CONFIG_FILE_MAX bytes and lists over
 * CFG_LIST_MAX entries. */
#include "config/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <libfyaml.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config/yaml.h"
#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"

#define PX_CONFIG_FILE_MAX (1024 * 1024) /* bytes; a config is a few KiB */
#define CFG_LIST_MAX       4096          /* entries in any one list */
#define CFG_TABLE_MAX      32            /* rows in any one table (a bitmap in apply_table) */
#define CFG_WHERE_MAX      160           /* bytes of a key path such as "backends[3].url" */
#define CFG_DEPTH_MAX      512           /* levels node_line() descends looking for a scalar */

enum cfg_type {
    CFG_STR = 0, /* char * on the heap; min/max bound the byte length */
    CFG_INT,     /* int */
    CFG_I64,     /* int64_t */
    CFG_SIZE,    /* size_t */
    CFG_U64,     /* uint64_t */
    CFG_BOOL,    /* int, 0 or 1, from true | false */
    CFG_ENUM,    /* int (an enum), from one of names[] */
    CFG_MONEY,   /* int64_t pence, from a number of pounds with at most 2 decimals */
    CFG_SECTION, /* a mapping loaded with sub[] into the same struct */
    CFG_CUSTOM,  /* any node, loaded by handler */
};

#define CFG_REQUIRED   0x1u /* missing key is an error */
#define CFG_RELOADABLE 0x2u /* may change on a reload without a restart (none reload yet) */

/* Enums are stored through an int; both enums here have only small non-negative values. */
_Static_assert(sizeof(enum px_protocol) == sizeof(int), "enum px_protocol must be int-sized");
_Static_assert(sizeof(enum px_overage) == sizeof(int), "enum px_overage must be int-sized");

struct cfg_loader;
struct cfg_opt;
struct cfg_list;

/* Parse value node v for row o into obj. where is the key path, line the key's line. */
typedef int (*cfg_handler_fn)(struct cfg_loader *ld, void *obj, struct fy_node *v,
                              const char *where, int line);
/* Check (and possibly normalise in place) a string value. */
typedef int (*cfg_check_fn)(struct cfg_loader *ld, char *s, const char *where, int line);

struct cfg_opt {
    const char *name;            /* the YAML key */
    enum cfg_type type;          /* how the value is parsed and stored */
    unsigned flags;              /* CFG_REQUIRED | CFG_RELOADABLE */
    size_t offset;               /* offsetof() into the struct being filled */
    int64_t def;                 /* default for numeric types (ignored for strings) */
    int64_t min, max;            /* value bounds, or byte-length bounds for CFG_STR */
    const char *def_str;         /* default for CFG_STR, NULL when none or computed later */
    const char *const *names;    /* CFG_ENUM: names, NULL-terminated, index = value */
    const struct cfg_opt *sub;   /* CFG_SECTION: the section's rows */
    size_t nsub;                 /* CFG_SECTION: number of rows */
    cfg_handler_fn handler;      /* CFG_CUSTOM: the loader, unless list is set */
    const struct cfg_list *list; /* CFG_CUSTOM: a list of mappings, loaded by load_list() */
    cfg_check_fn check;          /* CFG_STR: extra validation, may be NULL */
};

/* Row constructors, one row per line (the redis createIntConfig() style). off is an
 * offsetof() into the struct the table fills; fl is CFG_REQUIRED and/or RL. */
#define RL CFG_RELOADABLE
#define OPT_STR(n, off, fl, lo, hi, d, chk)                                                        \
    {                                                                                              \
        .name = n, .type = CFG_STR, .flags = fl, .offset = off, .min = lo, .max = hi,              \
        .def_str = d, .check = chk                                                                 \
    }
#define OPT_NUM(n, ty, off, fl, d, lo, hi)                                                         \
    {                                                                                              \
        .name = n, .type = ty, .flags = fl, .offset = off, .def = d, .min = lo, .max = hi          \
    }
#define OPT_ENUM(n, off, fl, d, nm)                                                                \
    {                                                                                              \
        .name = n, .type = CFG_ENUM, .flags = fl, .offset = off, .def = d, .names = nm             \
    }
#define OPT_CUSTOM(n, fl, h)                                                                       \
    {                                                                                              \
        .name = n, .type = CFG_CUSTOM, .flags = fl, .handler = h                                   \
    }
#define OPT_LIST(n, fl, l)                                                                         \
    {                                                                                              \
        .name = n, .type = CFG_CUSTOM, .flags = fl, .list = l                                      \
    }
#define OPT_SECTION(n, fl, t)                                                                      \
    {                                                                                              \
        .name = n, .type = CFG_SECTION, .flags = fl, .sub = t, .nsub = sizeof(t) / sizeof(t[0])    \
    }

struct cfg_loader {
    struct cfg_yaml_err ye; /* file name and message buffer (code PX_ECONFIG) */
    struct px_config *cfg;  /* being built, freed by the caller on error */
    int nsecrets;           /* token sources seen in the current auth.tokens entry */
    int tiers_seen;         /* 1 when the file has a tiers key */
    int tiers_line;         /* line of that key */
    int default_tier_given; /* 1 when default_tier was set by the file */
};

static int cfg_fail(struct cfg_loader *ld, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int cfg_fail(struct cfg_loader *ld, int line, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cfg_yaml_vfail(&ld->ye, line, where, fmt, ap);
    va_end(ap);
    return rc;
}

/* 1-based line of a node, or fallback (see cfg_yaml_node_line). */
static int node_line(struct fy_node *n, int fallback)
{
    return cfg_yaml_node_line(n, fallback, CFG_DEPTH_MAX);
}

/* Join a key path: "a" + "b" -> "a.b", "" + "b" -> "b". Truncates rather than fails. */
static void where_join(char *out, size_t cap, const char *where, const char *key)
{
    /* Truncates: a long path in a message is cut, nothing else. */
    size_t n = 0;
    for (const char *p = where; *p && n + 1 < cap; p++) {
        out[n++] = *p;
    }
    if (where[0] && n + 1 < cap) {
        out[n++] = '.';
    }
    for (const char *p = key; *p && n + 1 < cap; p++) {
        out[n++] = *p;
    }
    out[n] = '\0';
}

/* "a" + 3 -> "a[3]", truncated like where_join (the same bytes snprintf would keep). Copied
 * by hand because GCC's -Wformat-truncation flags "%s[%zu]" once load_list() is inlined. */
static void where_index(char *out, size_t cap, const char *where, size_t i)
{
    char idx[24]; /* "[", at most 20 digits, "]" */
    snprintf(idx, sizeof(idx), "[%zu]", i);
    size_t n = 0;
    for (const char *p = where; *p && n + 1 < cap; p++) {
        out[n++] = *p;
    }
    for (const char *p = idx; *p && n + 1 < cap; p++) {
        out[n++] = *p;
    }
    out[n] = '\0';
}

/* Reject aliases and tags anywhere a value is read, so every value is plain data. */
static int check_plain_node(struct cfg_loader *ld, struct fy_node *v, const char *where, int line)
{
    return cfg_yaml_check_plain(&ld->ye, v, where, line, CFG_DEPTH_MAX);
}

/* A scalar's bytes, or an error naming what was expected. */
static int get_scalar(struct cfg_loader *ld, struct fy_node *v, const char *where, int line,
                      const char *what, const char **s, size_t *len)
{
    return cfg_yaml_scalar(&ld->ye, v, where, line, CFG_DEPTH_MAX, what, s, len);
}

static int is_plain(struct fy_node *v)
{
    return fy_node_get_style(v) == FYNS_PLAIN;
}

/* A plain scalar that YAML reads as null: empty, ~ or null. */
static int is_null_scalar(struct fy_node *v, const char *s, size_t len)
{
    return is_plain(v) && (len == 0 || (len == 1 && s[0] == '~') ||
                           (len == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                                         memcmp(s, "NULL", 4) == 0)));
}

/* Copy at most 40 bytes of a value into a message-safe string (control bytes become '?'). */
static void quote_value(char out[48], const char *s, size_t len)
{
    size_t n = len > 40 ? 40 : len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (len > 40) {
        memcpy(out + n, "...", 4);
    } else {
        out[n] = '\0';
    }
}

/* Decimal integer with an optional sign; no spaces, no hex, no underscores. */
static int parse_i64(const char *s, size_t len, int64_t *out)
{
    char tmp[32];
    if (len == 0 || len >= sizeof(tmp)) {
        return PX_EPARSE;
    }
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    size_t i = (tmp[0] == '-' || tmp[0] == '+') ? 1 : 0;
    if (tmp[i] == '\0') {
        return PX_EPARSE;
    }
    for (; tmp[i] != '\0'; i++) {
        if (tmp[i] < '0' || tmp[i] > '9') {
            return PX_EPARSE;
        }
    }
    errno = 0;
    char *end;
    long long v = strtoll(tmp, &end, 10);
    if (errno != 0 || *end != '\0') {
        return PX_EPARSE;
    }
    *out = (int64_t)v;
    return 0;
}

/* Pounds with at most two decimals ("39", "39.5", "0.99") to pence. Non-negative only. */
static int parse_money(const char *s, size_t len, int64_t *pence)
{
    int64_t whole = 0;
    int64_t frac = 0;
    size_t i = 0;
    size_t digits = 0;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
        if (whole > INT64_C(100000000000)) {
            return PX_EPARSE;
        }
        whole = whole * 10 + (s[i] - '0');
    }
    if (digits == 0) {
        return PX_EPARSE;
    }
    if (i < len) {
        if (s[i] != '.' || len - i - 1 < 1 || len - i - 1 > 2) {
            return PX_EPARSE;
        }
        size_t k = 0;
        for (i++; i < len; i++, k++) {
            if (s[i] < '0' || s[i] > '9') {
                return PX_EPARSE;
            }
            frac = frac * 10 + (s[i] - '0');
        }
        if (k == 1) {
            frac *= 10;
        }
    }
    *pence = whole * 100 + frac;
    return 0;
}

/* Store an integer into the field a row points at, with the row's C type. */
static void store_num(void *obj, const struct cfg_opt *o, int64_t v)
{
    char *p = (char *)obj + o->offset;
    switch (o->type) {
    case CFG_INT:
    case CFG_BOOL:
    case CFG_ENUM: {
        int x = (int)v;
        memcpy(p, &x, sizeof(x));
        break;
    }
    case CFG_SIZE: {
        size_t x = (size_t)v;
        memcpy(p, &x, sizeof(x));
        break;
    }
    case CFG_U64: {
        uint64_t x = (uint64_t)v;
        memcpy(p, &x, sizeof(x));
        break;
    }
    default: {
        memcpy(p, &v, sizeof(v));
        break;
    }
    }
}

static void store_str(void *obj, const struct cfg_opt *o, char *s)
{
    char **slot = (char **)(void *)((char *)obj + o->offset);
    free(*slot);
    *slot = s;
}

/* Set every row's default (recursing into sections, which fill the same struct). */
static void apply_defaults(const struct cfg_opt *tab, size_t n, void *obj)
{
    for (size_t i = 0; i < n; i++) {
        const struct cfg_opt *o = &tab[i];
        if (o->type == CFG_SECTION) {
            apply_defaults(o->sub, o->nsub, obj);
        } else if (o->type == CFG_STR) {
            if (o->def_str) {
                store_str(obj, o, px_strdup(o->def_str));
            }
        } else if (o->type != CFG_CUSTOM) {
            store_num(obj, o, o->def);
        }
    }
}

static int apply_table(struct cfg_loader *ld, const struct cfg_opt *tab, size_t n, void *obj,
                       struct fy_node *map, const char *where, int line);
static int load_list(struct cfg_loader *ld, const struct cfg_list *l, void *obj, struct fy_node *v,
                     const char *where, int line);

/* Parse one row's value node into obj. */
static int apply_opt(struct cfg_loader *ld, const struct cfg_opt *o, void *obj, struct fy_node *v,
                     const char *where, int line)
{
    const char *s;
    size_t len;
    char shown[48];
    int rc;

    if (o->type == CFG_CUSTOM) {
        if (v == NULL) {
            return cfg_fail(ld, line, where, "missing value");
        }
        rc = check_plain_node(ld, v, where, line);
        if (rc < 0) {
            return rc;
        }
        return o->list ? load_list(ld, o->list, obj, v, where, line)
                       : o->handler(ld, obj, v, where, line);
    }
    if (o->type == CFG_SECTION) {
        if (v == NULL) {
            return cfg_fail(ld, line, where, "missing value (expected a mapping)");
        }
        rc = check_plain_node(ld, v, where, line);
        return rc < 0 ? rc : apply_table(ld, o->sub, o->nsub, obj, v, where, line);
    }

    static const char *const what[] = {
        [CFG_STR] = "a string",          [CFG_INT] = "an integer",
        [CFG_I64] = "an integer",        [CFG_SIZE] = "an integer",
        [CFG_U64] = "an integer",        [CFG_BOOL] = "true or false",
        [CFG_ENUM] = "one of the names", [CFG_MONEY] = "an amount in GBP",
    };
    rc = get_scalar(ld, v, where, line, what[o->type], &s, &len);
    if (rc < 0) {
        return rc;
    }
    line = node_line(v, line);
    quote_value(shown, s, len);

    switch (o->type) {
    case CFG_STR: {
        if (is_null_scalar(v, s, len)) {
            return cfg_fail(ld, line, where, "missing value (expected a string)");
        }
        if ((int64_t)len < o->min || (int64_t)len > o->max) {
            return cfg_fail(ld, line, where, "must be %" PRId64 " to %" PRId64 " bytes long",
                            o->min, o->max);
        }
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == 0x7f) {
                return cfg_fail(ld, line, where, "control characters are not allowed");
            }
        }
        char *copy = px_strndup(s, len);
        store_str(obj, o, copy);
        return o->check ? o->check(ld, copy, where, line) : 0;
    }
    case CFG_BOOL: {
        int b;
        if (is_plain(v) && len == 4 && memcmp(s, "true", 4) == 0) {
            b = 1;
        } else if (is_plain(v) && len == 5 && memcmp(s, "false", 5) == 0) {
            b = 0;
        } else {
            return cfg_fail(ld, line, where, "must be true or false, got \"%s\"", shown);
        }
        store_num(obj, o, b);
        return 0;
    }
    case CFG_ENUM: {
        for (int64_t k = 0; o->names[k] != NULL; k++) {
            if (strlen(o->names[k]) == len && memcmp(o->names[k], s, len) == 0) {
                store_num(obj, o, k);
                return 0;
            }
        }
        char list[128] = "";
        size_t used = 0;
        for (size_t k = 0; o->names[k] != NULL && used < sizeof(list); k++) {
            int w = snprintf(list + used, sizeof(list) - used, "%s%s", k ? " | " : "", o->names[k]);
            used += w > 0 ? (size_t)w : 0;
        }
        return cfg_fail(ld, line, where, "must be one of %s, got \"%s\"", list, shown);
    }
    case CFG_MONEY: {
        int64_t pence;
        if (!is_plain(v) || parse_money(s, len, &pence) < 0) {
            return cfg_fail(ld, line, where,
                            "must be an amount in GBP with at most 2 decimals, got \"%s\"", shown);
        }
        if (pence < o->min || pence > o->max) {
            return cfg_fail(ld, line, where, "must be from %" PRId64 ".%02d to %" PRId64 ".%02d",
                            o->min / 100, (int)(o->min % 100), o->max / 100, (int)(o->max % 100));
        }
        store_num(obj, o, pence);
        return 0;
    }
    default: {
        int64_t x;
        if (!is_plain(v) || parse_i64(s, len, &x) < 0) {
            return cfg_fail(ld, line, where, "must be an integer, got %s\"%s\"",
                            is_plain(v) ? "" : "the quoted string ", shown);
        }
        if (x < o->min || x > o->max) {
            return cfg_fail(ld, line, where,
                            "must be from %" PRId64 " to %" PRId64 ", got %" PRId64, o->min, o->max,
                            x);
        }
        store_num(obj, o, x);
        return 0;
    }
    }
}

/* Load a mapping with a table: reject unknown keys, then apply the rows in table order. */
static int apply_table(struct cfg_loader *ld, const struct cfg_opt *tab, size_t n, void *obj,
                       struct fy_node *map, const char *where, int line)
{
    struct fy_node_pair *pairs[CFG_TABLE_MAX] = {0};
    int lines[CFG_TABLE_MAX] = {0};
    void *it = NULL;
    struct fy_node_pair *p;
    char sub[CFG_WHERE_MAX];

    if (n > CFG_TABLE_MAX) {
        return cfg_fail(ld, line, where, "internal: table too large");
    }
    if (fy_node_get_type(map) != FYNT_MAPPING) {
        size_t len = 0;
        const char *s = fy_node_get_type(map) == FYNT_SCALAR ? fy_node_get_scalar(map, &len) : "";
        if (fy_node_get_type(map) == FYNT_SCALAR && is_null_scalar(map, s ? s : "", len)) {
            return cfg_fail(ld, node_line(map, line), where, "missing value (expected a mapping)");
        }
        return cfg_fail(ld, node_line(map, line), where, "expected a mapping of keys, got a %s",
                        fy_node_get_type(map) == FYNT_SCALAR ? "scalar" : "list");
    }
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *k = fy_node_pair_key(p);
        const char *ks;
        size_t kl;
        if (k == NULL || fy_node_get_type(k) != FYNT_SCALAR || fy_node_is_alias(k) ||
            fy_node_get_style(k) == FYNS_ALIAS) {
            return cfg_fail(ld, node_line(k, line), where, "keys must be plain strings");
        }
        ks = fy_node_get_scalar(k, &kl);
        int kline = node_line(k, line);
        size_t i;
        for (i = 0; i < n; i++) {
            if (ks && strlen(tab[i].name) == kl && memcmp(tab[i].name, ks, kl) == 0) {
                break;
            }
        }
        if (i == n) {
            char shown[48];
            quote_value(shown, ks ? ks : "", ks ? kl : 0);
            return cfg_fail(ld, kline, where, "unknown key '%s'", shown);
        }
        if (pairs[i] != NULL) {
            return cfg_fail(ld, kline, where, "duplicate key '%s' (first at line %d)", tab[i].name,
                            lines[i]);
        }
        pairs[i] = p;
        lines[i] = kline;
    }
    /* A missing key is reported before the values of the others, so a missing section is
     * named as such rather than surfacing as "unknown backend" further down. */
    for (size_t i = 0; i < n; i++) {
        if (pairs[i] == NULL && (tab[i].flags & CFG_REQUIRED)) {
            return cfg_fail(ld, node_line(map, line), where, "missing required key '%s'",
                            tab[i].name);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (pairs[i] == NULL) {
            continue;
        }
        where_join(sub, sizeof(sub), where, tab[i].name);
        int rc = apply_opt(ld, &tab[i], obj, fy_node_pair_value(pairs[i]), sub, lines[i]);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

/* The items of a list value, with a count cap; an empty list is an error when need_one. */
static int get_list(struct cfg_loader *ld, struct fy_node *v, const char *where, int line,
                    int need_one, size_t *count)
{
    if (fy_node_get_type(v) != FYNT_SEQUENCE) {
        return cfg_fail(ld, node_line(v, line), where, "expected a list");
    }
    int c = fy_node_sequence_item_count(v);
    if (c < 0 || c > CFG_LIST_MAX) {
        return cfg_fail(ld, line, where, "at most %d entries", CFG_LIST_MAX);
    }
    if (c == 0 && need_one) {
        return cfg_fail(ld, line, where, "must list at least one entry");
    }
    *count = (size_t)c;
    return 0;
}

/* ---- string checks ---- */

static int check_hostport(struct cfg_loader *ld, char *s, const char *where, int line)
{
    char host[256];
    int port;
    if (px_parse_hostport(s, host, sizeof(host), &port) < 0 || host[0] == '\0') {
        return cfg_fail(ld, line, where, "must be host:port, e.g. 127.0.0.1:8000");
    }
    /* What serve will bind: an IPv4 or [IPv6] literal, or a name that resolves. Checked here
     * so that `config check` never passes a file `serve` cannot start with. */
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    unsigned char a[16];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (inet_pton(AF_INET, h, a) != 1 && inet_pton(AF_INET6, h, a) != 1) {
        if (getaddrinfo(h, NULL, &hints, &res) != 0 || res == NULL) {
            return cfg_fail(ld, line, where, "'%s' is not an IP address or a name that resolves",
                            h);
        }
        freeaddrinfo(res);
    }
    return 0;
}

/* http://host:port[/path]; the trailing slash is dropped so paths can be appended. */
static int check_url(struct cfg_loader *ld, char *s, const char *where, int line)
{
    static const char scheme[] = "http://";
    if (strncmp(s, scheme, sizeof(scheme) - 1) != 0) {
        return cfg_fail(ld, line, where,
                        "must be http://host:port[/path] (only http:// is supported)");
    }
    char *hp = s + sizeof(scheme) - 1;
    char *slash = strchr(hp, '/');
    size_t hplen = slash ? (size_t)(slash - hp) : strlen(hp);
    char tmp[300];
    char host[256];
    int port;
    if (hplen == 0 || hplen >= sizeof(tmp) || strpbrk(s, " @?#") != NULL) {
        return cfg_fail(ld, line, where, "must be http://host:port[/path]");
    }
    memcpy(tmp, hp, hplen);
    tmp[hplen] = '\0';
    if (px_parse_hostport(tmp, host, sizeof(host), &port) < 0 || host[0] == '\0' || port < 1) {
        return cfg_fail(ld, line, where,
                        "must be http://host:port[/path] with a port from 1 to 65535");
    }
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/') {
        s[--n] = '\0';
    }
    return 0;
}

/* redis://[:password@]host[:port][/db], as src/limits/redis.c parses it; checked here so a
 * typo is a FILE:LINE error at start-up rather than a degraded limiter. The value is never
 * echoed (it may hold a password). */
static int check_redis_url(struct cfg_loader *ld, char *s, const char *where, int line)
{
    const char *p = s + (strncmp(s, "redis://", 8) == 0 ? 8 : 0);
    const char *at = strrchr(p, '@');
    const char *host = at ? at + 1 : p;
    if (p == s || host[0] == '\0' || host[0] == ':' || host[0] == '/' ||
        strpbrk(s, " ?#") != NULL) {
        return cfg_fail(ld, line, where, "must be redis://[:password@]host[:port][/db]");
    }
    return 0;
}

/* A ClickHouse database or user name: it is written into SQL and URLs unquoted. */
static int check_sql_ident(struct cfg_loader *ld, char *s, const char *where, int line)
{
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
              (p != s && *p >= '0' && *p <= '9'))) {
            return cfg_fail(ld, line, where, "must be letters, digits and _ (not first a digit)");
        }
    }
    return 0;
}

/* An environment variable name; the value is read when the store is opened. */
static int check_env_name(struct cfg_loader *ld, char *s, const char *where, int line)
{
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_' ||
              (p != s && *p >= '0' && *p <= '9'))) {
            return cfg_fail(ld, line, where, "must be an environment variable name");
        }
    }
    return 0;
}

/* ---- auth.tokens ---- */

static int token_source(struct cfg_loader *ld, const char *where, int line)
{
    if (ld->nsecrets++ > 0) {
        return cfg_fail(ld, line, where, "give exactly one of token, token_env, token_sha256");
    }
    return 0;
}

static int h_token(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where, int line)
{
    struct px_token_cfg *t = obj;
    const char *s;
    size_t len;
    int rc = get_scalar(ld, v, where, line, "a string", &s, &len);
    if (rc < 0 || (rc = token_source(ld, where, line)) < 0) {
        return rc;
    }
    /* The secret itself is never echoed in a message. */
    if (is_null_scalar(v, s, len) || len < 1 || len > 4096) {
        return cfg_fail(ld, line, where, "must be 1 to 4096 bytes long");
    }
    px_sha256(s, len, t->sha256);
    return 0;
}

static int h_token_env(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where,
                       int line)
{
    struct px_token_cfg *t = obj;
    const char *s;
    size_t len;
    char name[128];
    int rc = get_scalar(ld, v, where, line, "an environment variable name", &s, &len);
    if (rc < 0 || (rc = token_source(ld, where, line)) < 0) {
        return rc;
    }
    if (len == 0 || len >= sizeof(name) || memchr(s, '=', len) || memchr(s, '\0', len)) {
        return cfg_fail(ld, line, where, "must name an environment variable");
    }
    memcpy(name, s, len);
    name[len] = '\0';
    const char *val = getenv(name);
    if (val == NULL || val[0] == '\0') {
        return cfg_fail(ld, line, where, "environment variable %s is not set", name);
    }
    px_sha256(val, strlen(val), t->sha256);
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int h_token_sha256(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where,
                          int line)
{
    struct px_token_cfg *t = obj;
    const char *s;
    size_t len;
    int rc = get_scalar(ld, v, where, line, "64 hex digits", &s, &len);
    if (rc < 0 || (rc = token_source(ld, where, line)) < 0) {
        return rc;
    }
    if (len != 64) {
        return cfg_fail(ld, line, where, "must be 64 hex digits (SHA-256), got %zu characters",
                        len);
    }
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(s[2 * i]);
        int lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return cfg_fail(ld, line, where, "must be 64 hex digits (SHA-256)");
        }
        t->sha256[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static const struct cfg_opt token_opts[] = {
    OPT_STR("id", offsetof(struct px_token_cfg, id), CFG_REQUIRED, 1, 64, NULL, NULL),
    OPT_CUSTOM("token", 0, h_token),
    OPT_CUSTOM("token_env", 0, h_token_env),
    OPT_CUSTOM("token_sha256", 0, h_token_sha256),
};

/* Report a duplicate name among the first i entries (names at stride bytes apart). */
static int check_dup(struct cfg_loader *ld, const void *arr, size_t stride, size_t name_off,
                     size_t i, const int *lines, const char *where, const char *what)
{
    const char *name = *(char *const *)(const void *)((const char *)arr + i * stride + name_off);
    for (size_t k = 0; k < i; k++) {
        const char *other =
            *(char *const *)(const void *)((const char *)arr + k * stride + name_off);
        if (strcmp(name, other) == 0) {
            return cfg_fail(ld, lines[i], where, "duplicate %s '%s' (first defined at line %d)",
                            what, name, lines[k]);
        }
    }
    return 0;
}

/* A list of mappings held in struct px_config (an array and its count), each entry loaded
 * with one table: the shape shared by auth.tokens, backends, models and tenants. */
typedef int (*cfg_entry_fn)(struct cfg_loader *ld, void *arr, size_t i, const int *lines,
                            const char *where);
struct cfg_list {
    const struct cfg_opt *opts; /* the rows of one entry */
    size_t nopts;               /* number of rows */
    size_t arr_off;             /* offsetof() the entry array (a pointer) in struct px_config */
    size_t count_off;           /* offsetof() its size_t count */
    size_t size;                /* bytes of one entry */
    size_t name_off;            /* offsetof() the entry's char * name, unique in the list */
    const char *what;           /* "duplicate WHAT 'x'"; NULL when check tests duplicates */
    int need_one;               /* 1: an empty list is an error */
    cfg_entry_fn check;         /* entry i after its table is applied (lines[0..i] set), or NULL */
};
#define LIST_OF(arr, cnt, tab, type, name)                                                         \
    .opts = tab, .nopts = sizeof(tab) / sizeof(tab[0]),                                            \
    .arr_off = offsetof(struct px_config, arr), .count_off = offsetof(struct px_config, cnt),      \
    .size = sizeof(type), .name_off = offsetof(type, name)

/* Load list v into the array l names in obj (a struct px_config). The array and its count are
 * set before any entry is read, so px_config_free() copes with a half-built list. Entries
 * fail in order: not plain data, their table, check, then a duplicate name. */
static int load_list(struct cfg_loader *ld, const struct cfg_list *l, void *obj, struct fy_node *v,
                     const char *where, int line)
{
    size_t n;
    int rc = get_list(ld, v, where, line, l->need_one, &n);
    if (rc < 0) {
        return rc;
    }
    char *arr = px_calloc(n ? n : 1, l->size);
    /* The field is a pointer to the entry type; memcpy stores it without type punning. */
    memcpy((char *)obj + l->arr_off, &arr, sizeof(arr));
    memcpy((char *)obj + l->count_off, &n, sizeof(n));
    int *lines = px_calloc(n ? n : 1, sizeof(int));
    void *it = NULL;
    char sub[CFG_WHERE_MAX];
    for (size_t i = 0; i < n; i++) {
        struct fy_node *item = fy_node_sequence_iterate(v, &it);
        void *entry = arr + i * l->size;
        where_index(sub, sizeof(sub), where, i);
        lines[i] = node_line(item, line);
        ld->nsecrets = 0; /* counted per auth.tokens entry by its token handlers */
        apply_defaults(l->opts, l->nopts, entry);
        if ((rc = check_plain_node(ld, item, sub, line)) < 0 ||
            (rc = apply_table(ld, l->opts, l->nopts, entry, item, sub, lines[i])) < 0 ||
            (l->check && (rc = l->check(ld, arr, i, lines, sub)) < 0) ||
            (l->what &&
             (rc = check_dup(ld, arr, l->size, l->name_off, i, lines, sub, l->what)) < 0)) {
            break;
        }
    }
    free(lines);
    return rc;
}

/* auth.tokens[i]: exactly one secret, then a unique id, then a unique secret. */
static int check_token(struct cfg_loader *ld, void *arr, size_t i, const int *lines,
                       const char *where)
{
    struct px_token_cfg *tok = arr;
    if (ld->nsecrets != 1) {
        return cfg_fail(ld, lines[i], where, "give exactly one of token, token_env, token_sha256");
    }
    int rc = check_dup(ld, tok, sizeof(*tok), offsetof(struct px_token_cfg, id), i, lines, where,
                       "token id");
    if (rc < 0) {
        return rc;
    }
    for (size_t k = 0; k < i; k++) {
        if (memcmp(tok[k].sha256, tok[i].sha256, 32) == 0) {
            return cfg_fail(ld, lines[i], where, "same secret as token '%s' (line %d)", tok[k].id,
                            lines[k]);
        }
    }
    return 0;
}

static const struct cfg_list token_list = {
    LIST_OF(tokens, ntokens, token_opts, struct px_token_cfg, id), .what = NULL, .need_one = 1,
    .check = check_token};

static const struct cfg_opt auth_opts[] = {
    OPT_LIST("tokens", CFG_REQUIRED, &token_list),
};

/* ---- backends ---- */

static const char *const protocol_names[] = {"ollama", "openai", NULL};

#define BE(f) offsetof(struct px_backend_cfg, f)
/* Usage rows' provider column; "auto" means ollama for the ollama protocol, vllm otherwise. */
static const char *const provider_names[] = {"auto", "ollama", "vllm", "openai", NULL};

static const struct cfg_opt backend_opts[] = {
    OPT_STR("name", BE(name), CFG_REQUIRED, 1, 64, NULL, NULL),
    OPT_STR("url", BE(url), CFG_REQUIRED, 8, 2048, NULL, check_url),
    OPT_ENUM("protocol", BE(protocol), CFG_REQUIRED, 0, protocol_names),
    OPT_NUM("gpu_id", CFG_INT, BE(gpu_id), 0, -1, -1, 4095),
    OPT_NUM("max_concurrency", CFG_INT, BE(max_concurrency), 0, 4, 1, 100000),
    OPT_NUM("weight", CFG_INT, BE(weight), 0, 1, 1, 1000),
    OPT_NUM("backup", CFG_BOOL, BE(backup), 0, 0, 0, 1),
    OPT_NUM("max_fails", CFG_INT, BE(max_fails), 0, 3, 1, 1000),
    OPT_NUM("fail_timeout_ms", CFG_U64, BE(fail_timeout_ms), 0, 30000, 100, 3600000),
    OPT_STR("health_path", BE(health_path), 0, 1, 256, NULL, NULL),
    OPT_ENUM("provider", BE(provider_kind), 0, 0, provider_names),
};
#undef BE

static const struct cfg_list backend_list = {
    LIST_OF(backends, nbackends, backend_opts, struct px_backend_cfg, name), .what = "backend",
    .need_one = 1};

/* ---- models ---- */

static int h_model_backends(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where,
                            int line)
{
    struct px_model_cfg *m = obj;
    struct px_config *cfg = ld->cfg;
    size_t n;
    int rc = get_list(ld, v, where, line, 1, &n);
    if (rc < 0) {
        return rc;
    }
    m->backends = px_calloc(n, sizeof(*m->backends));
    m->nbackends = n;
    void *it = NULL;
    char sub[CFG_WHERE_MAX];
    for (size_t i = 0; i < n; i++) {
        struct fy_node *item = fy_node_sequence_iterate(v, &it);
        const char *s;
        size_t len;
        where_index(sub, sizeof(sub), where, i);
        if ((rc = get_scalar(ld, item, sub, line, "a backend name", &s, &len)) < 0) {
            return rc;
        }
        int iline = node_line(item, line);
        size_t b;
        for (b = 0; b < cfg->nbackends; b++) {
            if (strlen(cfg->backends[b].name) == len &&
                memcmp(cfg->backends[b].name, s, len) == 0) {
                break;
            }
        }
        if (b == cfg->nbackends) {
            char shown[48];
            quote_value(shown, s, len);
            return cfg_fail(ld, iline, sub, "unknown backend '%s'", shown);
        }
        for (size_t k = 0; k < i; k++) {
            if (m->backends[k] == b) {
                return cfg_fail(ld, iline, sub, "backend '%s' listed twice", cfg->backends[b].name);
            }
        }
        m->backends[i] = b;
    }
    return 0;
}

#define MO(f) offsetof(struct px_model_cfg, f)
static const struct cfg_opt model_opts[] = {
    OPT_STR("name", MO(name), CFG_REQUIRED, 1, 128, NULL, NULL),
    OPT_STR("upstream_model", MO(upstream_model), 0, 1, 128, NULL, NULL),
    OPT_CUSTOM("backends", CFG_REQUIRED, h_model_backends),
    OPT_NUM("context_window", CFG_I64, MO(context_window), 0, 0, 0, 100000000),
};
#undef MO

/* models[i]: upstream_model defaults to the model's own name. */
static int check_model(struct cfg_loader *ld, void *arr, size_t i, const int *lines,
                       const char *where)
{
    (void)ld, (void)lines, (void)where;
    struct px_model_cfg *m = (struct px_model_cfg *)arr + i;
    if (m->upstream_model == NULL) {
        m->upstream_model = px_strdup(m->name);
    }
    return 0;
}

static const struct cfg_list model_list = {
    LIST_OF(models, nmodels, model_opts, struct px_model_cfg, name), .what = "model", .need_one = 1,
    .check = check_model};

/* ---- tiers ---- */

/* The PRODUCT.md plan table: what a tier named like one of these gets for every key the file
 * leaves out, and the whole tier list when the file has no tiers key. */
/* name, rpm, tpm, max_context, monthly_tokens, price in pence, priority; every built-in tier
 * bills overage at 500 pence per 1M tokens and assumes 256 completion tokens. */
#define BUILTIN_TIER(n, r, t, c, m, p, prio)                                                       \
    {                                                                                              \
        .name = n, .rpm = r, .tpm = t, .max_context = c, .monthly_tokens = m,                      \
        .default_max_tokens = 256, .price_pence = p, .overage_pence_per_mtok = 500,                \
        .overage = PX_OVERAGE_BILL, .priority = prio                                               \
    }
static const struct px_tier_cfg builtin_tiers[] = {
    BUILTIN_TIER("starter", 60, 100000, 4096, 5000000, 3900, 0),
    BUILTIN_TIER("pro", 120, 250000, 8192, 25000000, 14900, 1),
    BUILTIN_TIER("enterprise", 300, 1000000, 16384, 100000000, 49900, 2),
};
#define NBUILTIN_TIERS (sizeof(builtin_tiers) / sizeof(builtin_tiers[0]))

static const char *const overage_names[] = {"bill", "block", NULL};

#define TI(f) offsetof(struct px_tier_cfg, f)
/* Rows 1..4 (the limits) have no default of their own: 0 means "not given", filled from the
 * built-in tier of the same name or reported as missing for a custom tier. */
static const struct cfg_opt tier_opts[] = {
    OPT_STR("name", TI(name), 0, 1, 32, NULL, NULL),
    OPT_NUM("rpm", CFG_I64, TI(rpm), RL, 0, 1, 1000000000),
    OPT_NUM("tpm", CFG_I64, TI(tpm), RL, 0, 1, INT64_C(1000000000000)),
    OPT_NUM("max_context", CFG_I64, TI(max_context), RL, 0, 1, 100000000),
    OPT_NUM("monthly_tokens", CFG_I64, TI(monthly_tokens), RL, 0, 1, INT64_C(1000000000000000)),
    OPT_NUM("price_gbp", CFG_MONEY, TI(price_pence), RL, 0, 0, INT64_C(100000000000)),
    OPT_ENUM("overage", TI(overage), RL, PX_OVERAGE_BILL, overage_names),
    OPT_NUM("overage_gbp_per_million", CFG_MONEY, TI(overage_pence_per_mtok), RL, 500, 0,
            INT64_C(100000000000)),
    OPT_NUM("default_max_tokens", CFG_I64, TI(default_max_tokens), RL, 256, 1, 100000000),
    OPT_NUM("priority", CFG_INT, TI(priority), RL, 0, 0, 100),
};
#undef TI
#define NTIER_OPTS (sizeof(tier_opts) / sizeof(tier_opts[0]))

/* Load one tier: defaults, then the built-in of that name, then the file's keys. */
static int load_tier(struct cfg_loader *ld, struct px_tier_cfg *t, char *name, struct fy_node *map,
                     const char *where, int line)
{
    apply_defaults(tier_opts, NTIER_OPTS, t);
    for (size_t b = 0; b < NBUILTIN_TIERS; b++) {
        if (name && strcmp(builtin_tiers[b].name, name) == 0) {
            *t = builtin_tiers[b];
        }
    }
    t->name = name;
    int rc = apply_table(ld, tier_opts, NTIER_OPTS, t, map, where, line);
    if (rc < 0) {
        return rc;
    }
    if (t->name == NULL) {
        return cfg_fail(ld, line, where, "missing required key 'name'");
    }
    static const char *const limits[] = {"rpm", "tpm", "max_context", "monthly_tokens"};
    const int64_t vals[] = {t->rpm, t->tpm, t->max_context, t->monthly_tokens};
    for (size_t k = 0; k < 4; k++) {
        if (vals[k] == 0) {
            return cfg_fail(ld, line, where,
                            "missing required key '%s' (only starter, pro and enterprise have "
                            "defaults; a tier is never unlimited)",
                            limits[k]);
        }
    }
    if (t->default_max_tokens >= t->max_context) {
        return cfg_fail(ld, line, where,
                        "default_max_tokens (%" PRId64 ") must be below max_context (%" PRId64 ")",
                        t->default_max_tokens, t->max_context);
    }
    return 0;
}

static int h_tiers(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where, int line)
{
    struct px_config *cfg = obj;
    int is_map = fy_node_get_type(v) == FYNT_MAPPING;
    size_t n;
    int rc;
    ld->tiers_seen = 1;
    ld->tiers_line = line;
    if (is_map) {
        int c = fy_node_mapping_item_count(v);
        if (c < 0 || c > CFG_LIST_MAX) {
            return cfg_fail(ld, line, where, "at most %d entries", CFG_LIST_MAX);
        }
        n = (size_t)c;
        if (n == 0) {
            return cfg_fail(ld, line, where, "must define at least one tier");
        }
    } else if ((rc = get_list(ld, v, where, line, 1, &n)) < 0) {
        return rc;
    }
    cfg->tiers = px_calloc(n, sizeof(*cfg->tiers));
    cfg->ntiers = n;
    int *lines = px_calloc(n, sizeof(int));
    void *it = NULL;
    char sub[CFG_WHERE_MAX];
    rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct fy_node *item;
        char *name = NULL;
        if (is_map) {
            /* tiers: {starter: {rpm: 60}, ...}: the key is the name. */
            struct fy_node_pair *p = fy_node_mapping_iterate(v, &it);
            struct fy_node *k = fy_node_pair_key(p);
            const char *s;
            size_t len;
            lines[i] = node_line(k, line);
            if ((rc = get_scalar(ld, k, where, line, "a tier name", &s, &len)) < 0) {
                break;
            }
            if (len < 1 || len > 32 || is_null_scalar(k, s, len) || memchr(s, '\0', len)) {
                rc = cfg_fail(ld, lines[i], where, "tier names must be 1 to 32 bytes long");
                break;
            }
            name = px_strndup(s, len);
            where_join(sub, sizeof(sub), where, name);
            item = fy_node_pair_value(p);
            if (item != NULL && fy_node_get_type(item) == FYNT_MAPPING &&
                fy_node_mapping_lookup_by_string(item, "name", 4) != NULL) {
                free(name);
                rc = cfg_fail(ld, lines[i], sub, "'name' is the mapping key here; remove it");
                break;
            }
        } else {
            item = fy_node_sequence_iterate(v, &it);
            where_index(sub, sizeof(sub), where, i);
            lines[i] = node_line(item, line);
            /* The name decides the defaults, so read it before the other keys. */
            struct fy_node *nn = item && fy_node_get_type(item) == FYNT_MAPPING
                                     ? fy_node_mapping_lookup_by_string(item, "name", 4)
                                     : NULL;
            size_t len = 0;
            const char *s =
                nn && fy_node_get_type(nn) == FYNT_SCALAR ? fy_node_get_scalar(nn, &len) : NULL;
            name = s ? px_strndup(s, len) : NULL;
        }
        if (item == NULL) {
            free(name);
            rc = cfg_fail(ld, lines[i], sub, "missing value (expected a mapping)");
            break;
        }
        if ((rc = check_plain_node(ld, item, sub, line)) < 0) {
            free(name);
            break;
        }
        /* load_tier takes ownership of name (the name row may replace it). */
        if ((rc = load_tier(ld, &cfg->tiers[i], name, item, sub, lines[i])) < 0) {
            break;
        }
        rc = check_dup(ld, cfg->tiers, sizeof(cfg->tiers[0]), offsetof(struct px_tier_cfg, name), i,
                       lines, sub, "tier");
    }
    free(lines);
    return rc;
}

/* Find a tier by a scalar node's text, or fail naming the known tiers. */
static int resolve_tier(struct cfg_loader *ld, struct fy_node *v, const char *where, int line,
                        size_t *out)
{
    const char *s;
    size_t len;
    int rc = get_scalar(ld, v, where, line, "a tier name", &s, &len);
    if (rc < 0) {
        return rc;
    }
    long t = px_config_tier(ld->cfg, s, len);
    if (t < 0) {
        char shown[48];
        quote_value(shown, s, len);
        return cfg_fail(ld, node_line(v, line), where, "unknown tier '%s'", shown);
    }
    *out = (size_t)t;
    return 0;
}

/* Tiers come before default_tier and tenants in the table; when the file has no tiers key
 * the built-ins must exist by then. */
static void ensure_tiers(struct px_config *cfg)
{
    if (cfg->tiers != NULL) {
        return;
    }
    cfg->tiers = px_calloc(NBUILTIN_TIERS, sizeof(*cfg->tiers));
    cfg->ntiers = NBUILTIN_TIERS;
    for (size_t i = 0; i < NBUILTIN_TIERS; i++) {
        cfg->tiers[i] = builtin_tiers[i];
        cfg->tiers[i].name = px_strdup(builtin_tiers[i].name);
    }
}

static int h_default_tier(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where,
                          int line)
{
    struct px_config *cfg = obj;
    ensure_tiers(cfg);
    ld->default_tier_given = 1;
    return resolve_tier(ld, v, where, line, &cfg->default_tier);
}

static int h_tenant_tier(struct cfg_loader *ld, void *obj, struct fy_node *v, const char *where,
                         int line)
{
    struct px_tenant_cfg *t = obj;
    ensure_tiers(ld->cfg);
    t->pinned = 1;
    return resolve_tier(ld, v, where, line, &t->tier);
}

#define TE(f) offsetof(struct px_tenant_cfg, f)
static const struct cfg_opt tenant_opts[] = {
    OPT_STR("id", TE(id), CFG_REQUIRED, 1, PX_CONFIG_ID_MAX, NULL, NULL),
    OPT_CUSTOM("tier", RL, h_tenant_tier),
    OPT_NUM("rpm", CFG_I64, TE(rpm), RL, 0, 1, 1000000000),
    OPT_NUM("tpm", CFG_I64, TE(tpm), RL, 0, 1, INT64_C(1000000000000)),
    OPT_NUM("max_context", CFG_I64, TE(max_context), RL, 0, 1, 100000000),
    OPT_NUM("monthly_tokens", CFG_I64, TE(monthly_tokens), RL, 0, 1, INT64_C(1000000000000000)),
};
#undef TE

static const struct cfg_list tenant_list = {
    LIST_OF(tenants, ntenants, tenant_opts, struct px_tenant_cfg, id), .what = "tenant",
    .need_one = 0};

/* ---- sections holding scalars of struct px_config ---- */

#define CF(f) offsetof(struct px_config, f)
static const struct cfg_opt clickhouse_opts[] = {
    OPT_STR("url", CF(ch_url), CFG_REQUIRED, 10, 1024, NULL, check_url),
    OPT_STR("database", CF(ch_database), 0, 1, 64, "privax", check_sql_ident),
    OPT_STR("user", CF(ch_user), 0, 1, 64, "default", check_sql_ident),
    OPT_STR("password_env", CF(ch_password_env), 0, 1, 128, NULL, check_env_name),
    OPT_NUM("timeout_ms", CFG_U64, CF(ch_timeout_ms), 0, 30000, 100, 600000),
};

static const struct cfg_opt store_opts[] = {
    OPT_STR("sqlite", CF(sqlite_path), 0, 1, 4096, NULL, NULL),
    OPT_NUM("retention_months", CFG_INT, CF(retention_months), 0, 18, 1, 1200),
    OPT_SECTION("clickhouse", 0, clickhouse_opts),
};

static const struct cfg_opt http_opts[] = {
    OPT_NUM("header_max_bytes", CFG_SIZE, CF(header_max_bytes), 0, 16384, 1024, 1048576),
    OPT_NUM("body_max_bytes", CFG_SIZE, CF(body_max_bytes), 0, 4194304, 1024, 268435456),
    OPT_NUM("header_timeout_ms", CFG_U64, CF(header_timeout_ms), 0, 10000, 100, 3600000),
    OPT_NUM("keepalive_timeout_ms", CFG_U64, CF(keepalive_timeout_ms), 0, 75000, 100, 3600000),
    OPT_NUM("body_timeout_ms", CFG_U64, CF(body_timeout_ms), 0, 60000, 100, 3600000),
};

static const struct cfg_opt timeout_opts[] = {
    OPT_NUM("connect_ms", CFG_U64, CF(connect_timeout_ms), 0, 5000, 1, 600000),
    OPT_NUM("first_byte_ms", CFG_U64, CF(first_byte_timeout_ms), 0, 120000, 1, 3600000),
    OPT_NUM("idle_ms", CFG_U64, CF(idle_timeout_ms), 0, 60000, 1, 3600000),
    OPT_NUM("shutdown_ms", CFG_U64, CF(shutdown_timeout_ms), 0, 30000, 0, 3600000),
};

static const struct cfg_opt usage_opts[] = {
    OPT_NUM("flush_ms", CFG_U64, CF(usage_flush_ms), 0, 100, 1, 60000),
    OPT_NUM("batch_max", CFG_SIZE, CF(usage_batch_max), 0, 10000, 1, 100000),
    OPT_NUM("spool_fsync_ms", CFG_U64, CF(spool_fsync_ms), 0, 100, 1, 10000),
    OPT_NUM("spool_max_bytes", CFG_U64, CF(spool_max_bytes), 0, 1073741824, 65536, 1099511627776),
    OPT_NUM("memory_max_rows", CFG_SIZE, CF(usage_memory_max_rows), 0, 100000, 0, 10000000),
};

static const char *const redis_error_names[] = {"open", "closed", NULL};
static const struct cfg_opt limits_opts[] = {
    OPT_STR("redis", CF(redis_url), 0, 9, 1024, NULL, check_redis_url),
    OPT_ENUM("on_redis_error", CF(on_redis_error), 0, 0, redis_error_names),
    OPT_NUM("nodes", CFG_I64, CF(limits_nodes), 0, 1, 1, 1000),
    OPT_NUM("redis_timeout_ms", CFG_U64, CF(redis_timeout_ms), 0, 50, 1, 60000),
    OPT_STR("key_prefix", CF(redis_prefix), 0, 1, 60, "privax", NULL),
};

static const struct cfg_opt queue_opts[] = {
    OPT_NUM("max_length", CFG_SIZE, CF(queue_max), 0, 1024, 0, 1000000),
    OPT_NUM("timeout_ms", CFG_U64, CF(queue_timeout_ms), 0, 30000, 1, 3600000),
};

static const struct cfg_opt health_opts[] = {
    OPT_NUM("interval_ms", CFG_U64, CF(health_interval_ms), 0, 5000, 0, 3600000),
    OPT_NUM("timeout_ms", CFG_U64, CF(health_timeout_ms), 0, 2000, 10, 600000),
};

static const struct cfg_opt routing_opts[] = {
    OPT_NUM("max_tries", CFG_INT, CF(max_tries), 0, 2, 1, 16),
};

static const struct cfg_opt log_opts[] = {
    OPT_NUM("access", CFG_BOOL, CF(access_log), 0, 1, 0, 1),
};

static const char *const gpu_source_names[] = {"auto", "nvml", "command", "file", "none", NULL};
static const struct cfg_opt gpu_opts[] = {
    OPT_ENUM("source", CF(gpu_source), 0, PX_GPU_AUTO, gpu_source_names),
    OPT_STR("command", CF(gpu_command), 0, 1, 4096, NULL, NULL),
    OPT_STR("file", CF(gpu_file), 0, 1, 4096, NULL, NULL),
    OPT_NUM("interval_ms", CFG_U64, CF(gpu_interval_ms), 0, 2000, 10, 3600000),
    OPT_NUM("timeout_ms", CFG_U64, CF(gpu_timeout_ms), 0, 5000, 10, 600000),
    OPT_NUM("history", CFG_SIZE, CF(gpu_history), 0, 150, 1, 100000),
};

static const struct cfg_opt scale_opts[] = {
    OPT_NUM("gpu_util_pct", CFG_I64, CF(scale_gpu_pct), 0, 80, 1, 100),
    OPT_NUM("gpu_window_s", CFG_U64, CF(scale_gpu_window_s), 0, 300, 1, 86400),
    OPT_NUM("queue_p95_ms", CFG_I64, CF(scale_queue_ms), 0, 5000, 1, 3600000),
    OPT_NUM("monthly_tokens", CFG_I64, CF(scale_monthly_tokens), 0, 100000000, 1,
            INT64_C(1000000000000000)),
    OPT_NUM("concurrent_users", CFG_I64, CF(scale_users), 0, 25, 1, 100000000),
    OPT_NUM("window_days", CFG_I64, CF(scale_window_days), 0, 7, 1, 366),
    OPT_NUM("regular_pct", CFG_I64, CF(scale_regular_pct), 0, 10, 1, 100),
    OPT_NUM("node_cost_usd", CFG_MONEY, CF(scale_node_cost_cents), 0, 30000, 0,
            INT64_C(100000000000)),
    OPT_NUM("node_tokens", CFG_I64, CF(scale_node_tokens), 0, 130000000, 1,
            INT64_C(1000000000000000)),
    OPT_NUM("node_users", CFG_I64, CF(scale_node_users), 0, 25, 1, 100000000),
    OPT_NUM("breakeven_gbp", CFG_MONEY, CF(scale_breakeven_pence), 0, 50000, 0,
            INT64_C(100000000000)),
};

/* Order matters: rows are applied top to bottom (backends before models, tiers before
 * default_tier and tenants). */
static const struct cfg_opt top_opts[] = {
    OPT_STR("node_id", CF(node_id), 0, 1, 64, NULL, NULL),
    OPT_STR("listen", CF(listen), 0, 3, 300, "127.0.0.1:8000", check_hostport),
    OPT_STR("data_dir", CF(data_dir), 0, 1, 4000, "./data", NULL),
    OPT_SECTION("auth", CFG_REQUIRED, auth_opts),
    OPT_LIST("backends", CFG_REQUIRED, &backend_list),
    OPT_LIST("models", CFG_REQUIRED, &model_list),
    OPT_CUSTOM("tiers", RL, h_tiers),
    OPT_CUSTOM("default_tier", RL, h_default_tier),
    OPT_LIST("tenants", RL, &tenant_list),
    OPT_SECTION("store", 0, store_opts),
    OPT_SECTION("http", 0, http_opts),
    OPT_SECTION("timeouts", 0, timeout_opts),
    OPT_SECTION("usage", 0, usage_opts),
    OPT_SECTION("limits", 0, limits_opts),
    OPT_SECTION("queue", 0, queue_opts),
    OPT_SECTION("log", 0, log_opts),
    OPT_SECTION("health", 0, health_opts),
    OPT_SECTION("routing", 0, routing_opts),
    OPT_SECTION("gpu", 0, gpu_opts),
    OPT_SECTION("scale", 0, scale_opts),
};
#undef CF

/* Read the whole file (capped) so the size limit holds before libfyaml sees a byte. */
static int read_file(struct cfg_loader *ld, char **out, size_t *outlen)
{
    FILE *f = fopen(ld->ye.fname, "rb");
    if (f == NULL) {
        return cfg_fail(ld, 0, NULL, "cannot open: %s", strerror(errno));
    }
    char *data = px_malloc(PX_CONFIG_FILE_MAX + 1);
    size_t n = fread(data, 1, PX_CONFIG_FILE_MAX + 1, f);
    int rc = 0;
    if (ferror(f)) {
        rc = cfg_fail(ld, 0, NULL, "cannot read: %s", strerror(errno));
    } else if (n > PX_CONFIG_FILE_MAX) {
        rc = cfg_fail(ld, 0, NULL, "file is larger than %d bytes", PX_CONFIG_FILE_MAX);
    }
    fclose(f);
    if (rc < 0) {
        free(data);
        return rc;
    }
    *out = data;
    *outlen = n;
    return 0;
}

/* Fill the values that depend on other keys, once every row is applied. */
static int finish(struct cfg_loader *ld, struct px_config *cfg)
{
    if (cfg->node_id == NULL) {
        char host[256];
        if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0') {
            memcpy(host, "localhost", sizeof("localhost"));
        }
        host[sizeof(host) - 1] = '\0';
        host[64] = '\0';
        cfg->node_id = px_strdup(host);
    }
    if (cfg->sqlite_path == NULL) {
        size_t n = strlen(cfg->data_dir) + sizeof("/usage.db");
        cfg->sqlite_path = px_malloc(n);
        snprintf(cfg->sqlite_path, n, "%s/usage.db", cfg->data_dir);
    }
    if ((cfg->gpu_source == PX_GPU_COMMAND && cfg->gpu_command == NULL) ||
        (cfg->gpu_source == PX_GPU_FILE && cfg->gpu_file == NULL)) {
        return cfg_fail(ld, 0, "gpu.source", "'%s' needs gpu.%s",
                        cfg->gpu_source == PX_GPU_FILE ? "file" : "command",
                        cfg->gpu_source == PX_GPU_FILE ? "file" : "command");
    }
    ensure_tiers(cfg);
    if (!ld->default_tier_given) {
        long t = px_config_tier(cfg, "starter", 7);
        if (t < 0) {
            return cfg_fail(ld, ld->tiers_line, "default_tier",
                            "not set, and there is no tier named 'starter' to default to");
        }
        cfg->default_tier = (size_t)t;
    }
    for (size_t i = 0; i < cfg->ntenants; i++) {
        if (!cfg->tenants[i].pinned) {
            cfg->tenants[i].tier = cfg->default_tier;
        }
    }
    return 0;
}

int px_config_load(const char *path, struct px_config **out, char *err, size_t errcap)
{
    struct cfg_loader ld = {.ye = {.fname = path, .buf = err, .cap = errcap, .code = PX_ECONFIG}};
    struct cfg_yaml_doc yd = {0};
    struct px_config *cfg = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    if (err && errcap) {
        err[0] = '\0';
    }
    if ((rc = read_file(&ld, &data, &len)) < 0) {
        goto fail_read;
    }
    /* The text check also keeps libfyaml 0.7.12 from looping forever on some invalid UTF-8
     * (a '%' directive followed by 0xff: tests/data/config/bad_fuzz_directive_utf8.yaml). */
    if ((rc = cfg_yaml_doc_parse(&yd, &ld.ye, data, len, "a config",
                                 "empty config (expected a mapping of keys)")) < 0) {
        goto fail_doc;
    }

    cfg = px_calloc(1, sizeof(*cfg));
    ld.cfg = cfg;
    cfg->path = px_strdup(path);
    cfg->default_tier = 0;
    const size_t ntop = sizeof(top_opts) / sizeof(top_opts[0]);
    apply_defaults(top_opts, ntop, cfg);
    if ((rc = check_plain_node(&ld, yd.root, NULL, 1)) < 0 ||
        (rc = apply_table(&ld, top_opts, ntop, cfg, yd.root, "", 1)) < 0 ||
        (rc = finish(&ld, cfg)) < 0) {
        goto fail_cfg;
    }

    *out = cfg;
    cfg = NULL;
    rc = 0;
fail_cfg:
    px_config_free(cfg);
fail_doc:
    cfg_yaml_doc_cleanup(&yd);
    free(data);
fail_read:
    return rc;
}

/* Free every CFG_STR field a table fills (sections included), so a row added to a table
 * can never be forgotten here. */
static void free_strs(const struct cfg_opt *tab, size_t n, void *obj)
{
    for (size_t i = 0; i < n; i++) {
        if (tab[i].type == CFG_SECTION) {
            free_strs(tab[i].sub, tab[i].nsub, obj);
        } else if (tab[i].type == CFG_STR) {
            store_str(obj, &tab[i], NULL);
        }
    }
}

#define FREE_ITEMS(arr, n, tab)                                                                    \
    do {                                                                                           \
        for (size_t i_ = 0; i_ < (n); i_++) {                                                      \
            free_strs(tab, sizeof(tab) / sizeof(tab[0]), &(arr)[i_]);                              \
        }                                                                                          \
        free(arr);                                                                                 \
    } while (0)

void px_config_free(struct px_config *cfg)
{
    if (cfg == NULL) {
        return;
    }
    FREE_ITEMS(cfg->tokens, cfg->ntokens, token_opts);
    FREE_ITEMS(cfg->backends, cfg->nbackends, backend_opts);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        free(cfg->models[i].backends);
    }
    FREE_ITEMS(cfg->models, cfg->nmodels, model_opts);
    FREE_ITEMS(cfg->tiers, cfg->ntiers, tier_opts);
    FREE_ITEMS(cfg->tenants, cfg->ntenants, tenant_opts);
    free_strs(top_opts, sizeof(top_opts) / sizeof(top_opts[0]), cfg);
    free(cfg->path);
    free(cfg);
}

static int name_eq(const char *a, const char *s, size_t len)
{
    return a != NULL && strlen(a) == len && memcmp(a, s, len) == 0;
}

long px_config_model(const struct px_config *cfg, const char *name, size_t len)
{
    for (size_t i = 0; i < cfg->nmodels; i++) {
        if (name_eq(cfg->models[i].name, name, len)) {
            return (long)i;
        }
    }
    return -1;
}

long px_config_tier(const struct px_config *cfg, const char *name, size_t len)
{
    for (size_t i = 0; i < cfg->ntiers; i++) {
        if (name_eq(cfg->tiers[i].name, name, len)) {
            return (long)i;
        }
    }
    return -1;
}

long px_config_tenant(const struct px_config *cfg, const char *id, size_t len)
{
    for (size_t i = 0; i < cfg->ntenants; i++) {
        if (name_eq(cfg->tenants[i].id, id, len)) {
            return (long)i;
        }
    }
    return -1;
}

long px_config_backend(const struct px_config *cfg, const char *name, size_t len)
{
    for (size_t i = 0; i < cfg->nbackends; i++) {
        if (name_eq(cfg->backends[i].name, name, len)) {
            return (long)i;
        }
    }
    return -1;
}
