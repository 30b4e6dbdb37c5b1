/* Design note. yajl calls back for every token; a small stack of frames says where the parser
 * is (the root object, "choices", its first element, that element's delta or message, "usage",
 * or somewhere uninteresting), and each map key sets the slot its value will fill. Nothing is
 * kept but the fields in struct provider_scan.
 *
 * yajl is more lenient than jansson in a few places, and a chunk jansson refuses must never be
 * relayed, so the input is checked before yajl sees it (scan_precheck) and a few cases make the
 * scan give up:
 *  - UTF-8: yajl accepts overlongs, encoded surrogates and code points past U+10FFFF; jansson
 *    does not. The whole input must pass px_utf8_valid (the same rules as jansson) and yajl's
 *    own, weaker check is turned off.
 *  - escapes: yajl turns a lone surrogate escape into '?' and combines any \uD8xx\uXXXX pair;
 *    jansson refuses both, and refuses \u0000 (no JSON_ALLOW_NUL). Any \uD... or \u0000 in the
 *    input gives up (rare: backends send UTF-8 as is).
 *  - whitespace: yajl also skips \v and \f; jansson does not. Either byte gives up.
 *  - duplicate keys: jansson keeps the last; a relevant key seen twice gives up.
 *  - numbers: yajl refuses LLONG_MIN and numbers it cannot convert; jansson decides then.
 *  - depth: past PROVIDER_SCAN_DEPTH_MAX frames the scan gives up (jansson's limit is 2048).
 *  - the end: yajl (2.1.0) accepts an unterminated string after the value, even in
 *    yajl_complete_parse; only whitespace may follow the closing brace (found by fuzz_scan).
 * Every callback refusal (return 0) ends the parse; yajl's stack only grows after the callback
 * that opened the level agreed, so it stays within the depth cap too. */
#include "proxy/provider_scan.h"

#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"
#include "proxy/provider.h"

/* Where a frame is in the document. */
enum scan_node {
    NODE_OTHER = 0,
    NODE_ROOT,
    NODE_CHOICES, /* the "choices" array */
    NODE_CHOICE0, /* its first element */
    NODE_HOLDER,  /* choices[0].delta (chunk) or choices[0].message (answer) */
    NODE_USAGE,
};

/* What the value being parsed is (set by its key, or by its index in "choices"). */
enum scan_slot {
    SLOT_NONE = 0,
    SLOT_ROOT,
    SLOT_ERROR,
    SLOT_USAGE,
    SLOT_CHOICES,
    SLOT_ID,
    SLOT_CHOICE0,
    SLOT_HOLDER,
    SLOT_FINISH,
    SLOT_CONTENT,
    SLOT_ROLE,
    SLOT_PROMPT,
    SLOT_COMPLETION,
    SLOT_TOTAL,
};

struct scan_frame {
    unsigned char node;  /* enum scan_node */
    unsigned char array; /* 1 for an array, 0 for an object */
    unsigned char slot;  /* enum scan_slot of the value after the last key */
    unsigned short seen; /* bit per relevant key already seen in this object */
    size_t count;        /* elements so far (arrays) */
};

struct scan_ctx {
    struct provider_scan *out;
    enum provider_scan_mode mode;
    yajl_handle h;
    int depth;  /* frames in use */
    int done;   /* the top-level object has closed */
    size_t end; /* input bytes up to and including its closing brace */
    struct scan_frame f[PROVIDER_SCAN_DEPTH_MAX];
};

struct scan_key {
    const char *name;
    size_t len;
    enum scan_slot slot;
};

#define KEY(s, slot)                                                                               \
    {                                                                                              \
        s, sizeof(s) - 1, slot                                                                     \
    }
static const struct scan_key root_keys[] = {
    KEY("error", SLOT_ERROR), KEY("usage", SLOT_USAGE), KEY("choices", SLOT_CHOICES),
    KEY("id", SLOT_ID),       {NULL, 0, SLOT_NONE},
};
static const struct scan_key chunk_choice_keys[] = {
    KEY("delta", SLOT_HOLDER), KEY("finish_reason", SLOT_FINISH), {NULL, 0, SLOT_NONE}};
static const struct scan_key answer_choice_keys[] = {
    KEY("message", SLOT_HOLDER), KEY("finish_reason", SLOT_FINISH), {NULL, 0, SLOT_NONE}};
static const struct scan_key holder_keys[] = {
    KEY("content", SLOT_CONTENT), KEY("role", SLOT_ROLE), {NULL, 0, SLOT_NONE}};
static const struct scan_key usage_keys[] = {KEY("prompt_tokens", SLOT_PROMPT),
                                             KEY("completion_tokens", SLOT_COMPLETION),
                                             KEY("total_tokens", SLOT_TOTAL),
                                             {NULL, 0, SLOT_NONE}};
#undef KEY

static const struct scan_key *keys_of(const struct scan_ctx *c, enum scan_node node)
{
    switch (node) {
    case NODE_ROOT:
        return root_keys;
    case NODE_CHOICE0:
        return c->mode == PROVIDER_SCAN_CHUNK ? chunk_choice_keys : answer_choice_keys;
    case NODE_HOLDER:
        return holder_keys;
    case NODE_USAGE:
        return usage_keys;
    default:
        return NULL;
    }
}

/* The slot of the value starting now, or -1 to stop: a second top-level value or a top-level
 * value that is not an object (jansson's answer then differs, or is an error). */
static int value_slot(struct scan_ctx *c, int is_object)
{
    if (c->depth == 0) {
        return c->done || !is_object ? -1 : SLOT_ROOT;
    }
    struct scan_frame *f = &c->f[c->depth - 1];
    if (!f->array) {
        return f->slot;
    }
    f->count++;
    return f->node == NODE_CHOICES && f->count == 1 ? SLOT_CHOICE0 : SLOT_NONE;
}

/* Flags every value type sets the same way, whatever the type. */
static void note_any(struct provider_scan *o, int slot, enum provider_scan_type type)
{
    if (slot == SLOT_ERROR) {
        o->has_error = 1;
    } else if (slot == SLOT_ROLE) {
        o->has_role = 1;
    } else if (slot == SLOT_USAGE) {
        o->usage = type;
    } else if (slot == SLOT_CHOICES) {
        o->choices = type;
    } else if (slot >= SLOT_PROMPT && slot <= SLOT_TOTAL) {
        o->counts_seen |= 1u << (slot - SLOT_PROMPT);
    }
}

static int on_scalar(void *ctx)
{
    struct scan_ctx *c = ctx;
    int slot = value_slot(c, 0);
    if (slot < 0) {
        return 0;
    }
    note_any(c->out, slot, PROVIDER_SCAN_OTHER);
    return 1;
}

static int on_bool(void *ctx, int v)
{
    (void)v;
    return on_scalar(ctx);
}

static int on_double(void *ctx, double v)
{
    (void)v;
    return on_scalar(ctx);
}

static int on_integer(void *ctx, long long v)
{
    struct scan_ctx *c = ctx;
    int slot = value_slot(c, 0);
    if (slot < 0) {
        return 0;
    }
    note_any(c->out, slot, PROVIDER_SCAN_OTHER);
    if (slot >= SLOT_PROMPT && slot <= SLOT_TOTAL) {
        c->out->counts_int |= 1u << (slot - SLOT_PROMPT);
        c->out->counts[slot - SLOT_PROMPT] = (int64_t)v;
    }
    return 1;
}

static int on_string(void *ctx, const unsigned char *s, size_t n)
{
    struct scan_ctx *c = ctx;
    struct provider_scan *o = c->out;
    int slot = value_slot(c, 0);
    if (slot < 0) {
        return 0;
    }
    note_any(o, slot, PROVIDER_SCAN_OTHER);
    const char *p = (const char *)s;
    if (slot == SLOT_CONTENT) {
        o->content_string = 1;
        o->content_len = n;
        o->content_chars = provider_utf8_chars(p, n);
    } else if (slot == SLOT_ID) {
        o->id_string = 1;
        provider__copy_utf8(o->id, sizeof(o->id), p, n);
    } else if (slot == SLOT_FINISH) {
        /* Cut by bytes, as the jansson path's snprintf does. */
        size_t k = n < sizeof(o->finish_reason) - 1 ? n : sizeof(o->finish_reason) - 1;
        o->finish_string = 1;
        memcpy(o->finish_reason, p, k);
        o->finish_reason[k] = '\0';
    }
    return 1;
}

static int push(struct scan_ctx *c, enum scan_node node, int array)
{
    if (c->depth == PROVIDER_SCAN_DEPTH_MAX) {
        return 0;
    }
    struct scan_frame *f = &c->f[c->depth++];
    f->node = (unsigned char)node;
    f->array = (unsigned char)array;
    f->slot = SLOT_NONE;
    f->seen = 0;
    f->count = 0;
    return 1;
}

static int on_start_map(void *ctx)
{
    struct scan_ctx *c = ctx;
    int slot = value_slot(c, 1);
    if (slot < 0) {
        return 0;
    }
    note_any(c->out, slot, PROVIDER_SCAN_OBJECT);
    enum scan_node node = NODE_OTHER;
    if (slot == SLOT_ROOT) {
        node = NODE_ROOT;
    } else if (slot == SLOT_USAGE) {
        node = NODE_USAGE;
    } else if (slot == SLOT_CHOICE0) {
        node = NODE_CHOICE0;
    } else if (slot == SLOT_HOLDER) {
        node = NODE_HOLDER;
    }
    return push(c, node, 0);
}

static int on_start_array(void *ctx)
{
    struct scan_ctx *c = ctx;
    int slot = value_slot(c, 0);
    if (slot < 0) {
        return 0;
    }
    note_any(c->out, slot, PROVIDER_SCAN_ARRAY);
    return push(c, slot == SLOT_CHOICES ? NODE_CHOICES : NODE_OTHER, 1);
}

static int on_end(void *ctx)
{
    struct scan_ctx *c = ctx;
    struct scan_frame *f = &c->f[--c->depth];
    if (f->node == NODE_CHOICES) {
        c->out->nchoices = f->count;
    }
    if (c->depth == 0) {
        c->done = 1;
        c->end = yajl_get_bytes_consumed(c->h);
    }
    return 1;
}

static int on_key(void *ctx, const unsigned char *s, size_t n)
{
    struct scan_ctx *c = ctx;
    struct scan_frame *f = &c->f[c->depth - 1];
    f->slot = SLOT_NONE;
    const struct scan_key *k = keys_of(c, (enum scan_node)f->node);
    for (; k && k->name; k++) {
        if (k->len == n && memcmp(k->name, s, n) == 0) {
            unsigned short bit = (unsigned short)(1u << k->slot);
            if (f->seen & bit) {
                return 0; /* jansson keeps the last of duplicate keys: let it decide */
            }
            f->seen |= bit;
            f->slot = (unsigned char)k->slot;
            break;
        }
    }
    return 1;
}

static const yajl_callbacks scan_callbacks = {
    .yajl_null = on_scalar,
    .yajl_boolean = on_bool,
    .yajl_integer = on_integer,
    .yajl_double = on_double,
    .yajl_number = NULL, /* so yajl converts numbers and refuses those that overflow */
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = on_end,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end,
};

/* yajl does not check its allocations; these abort on out-of-memory like the rest of privax. */
static void *scan_malloc(void *ctx, size_t n)
{
    (void)ctx;
    return px_malloc(n);
}

static void *scan_realloc(void *ctx, void *p, size_t n)
{
    (void)ctx;
    return px_realloc(p, n);
}

static void scan_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static yajl_alloc_funcs scan_alloc = {scan_malloc, scan_realloc, scan_free, NULL};

/* 0 when yajl could accept something jansson refuses, or decode it differently (design note). */
static int scan_precheck(const char *p, size_t n)
{
    if (memchr(p, '\v', n) || memchr(p, '\f', n)) {
        return 0;
    }
    unsigned char high = 0;
    for (size_t i = 0; i < n; i++) {
        high |= (unsigned char)p[i];
    }
    if ((high & 0x80) && !px_utf8_valid(p, n)) {
        return 0;
    }
    const char *end = p + n;
    for (const char *b = memchr(p, '\\', n); b; b = memchr(b, '\\', (size_t)(end - b))) {
        size_t left = (size_t)(end - b);
        if (left >= 3 && b[1] == 'u' && (b[2] == 'd' || b[2] == 'D')) {
            return 0;
        }
        if (left >= 6 && b[1] == 'u' && memcmp(b + 2, "0000", 4) == 0) {
            return 0;
        }
        if (left < 2) {
            break;
        }
        b += 2; /* past the escaped character, so "\\\\" is one escape */
    }
    return 1;
}

int provider_scan(const char *data, size_t len, enum provider_scan_mode mode,
                  struct provider_scan *out)
{
    memset(out, 0, sizeof(*out));
    if (!scan_precheck(data, len)) {
        return PX_EPARSE;
    }
    struct scan_ctx c;
    c.out = out;
    c.mode = mode;
    c.depth = 0;
    c.done = 0;
    c.end = 0;
    c.h = yajl_alloc(&scan_callbacks, &scan_alloc, &c);
    yajl_config(c.h, yajl_dont_validate_strings, 1); /* done by scan_precheck, more strictly */
    yajl_status st = yajl_parse(c.h, (const unsigned char *)data, len);
    yajl_free(c.h);
    /* Only whitespace may follow the object. yajl_complete_parse is not enough: it lets an
     * unterminated string after the value through ({} "abc), waiting for its end. */
    if (st != yajl_status_ok || !c.done) {
        return PX_EPARSE;
    }
    for (size_t i = c.end; i < len; i++) {
        if (data[i] != ' ' && data[i] != '\t' && data[i] != '\n' && data[i] != '\r') {
            return PX_EPARSE;
        }
    }
    return 0;
}
