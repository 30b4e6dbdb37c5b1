#ifndef PX_TESTS_FUZZ_SCAN_REF_H
#define PX_TESTS_FUZZ_SCAN_REF_H

/* The reference for provider_scan (src/proxy/provider_scan.h), shared by its unit test and
 * fuzz_scan: the same fields read from jansson's tree with the lookups the relay's jansson path
 * makes. Whenever provider_scan succeeds, jansson must accept the input as an object and
 * scan_ref_same() must hold. Header-only, static functions: include it in one test file. */

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "proxy/provider.h"
#include "proxy/provider_scan.h"

static enum provider_scan_type scan_ref_type(const json_t *v)
{
    if (!v) {
        return PROVIDER_SCAN_ABSENT;
    }
    return json_is_object(v)  ? PROVIDER_SCAN_OBJECT
           : json_is_array(v) ? PROVIDER_SCAN_ARRAY
                              : PROVIDER_SCAN_OTHER;
}

/* Fill *o from the tree j, as provider_scan would in mode. */
static void scan_ref(json_t *j, enum provider_scan_mode mode, struct provider_scan *o)
{
    static const char *const counts[] = {"prompt_tokens", "completion_tokens", "total_tokens"};
    memset(o, 0, sizeof(*o));
    o->has_error = json_object_get(j, "error") != NULL;
    json_t *u = json_object_get(j, "usage");
    o->usage = scan_ref_type(u);
    for (unsigned i = 0; i < 3; i++) {
        json_t *v = json_object_get(u, counts[i]);
        o->counts_seen |= v ? 1u << i : 0;
        if (json_is_integer(v)) {
            o->counts_int |= 1u << i;
            o->counts[i] = (int64_t)json_integer_value(v);
        }
    }
    json_t *ch = json_object_get(j, "choices");
    o->choices = scan_ref_type(ch);
    o->nchoices = json_is_array(ch) ? json_array_size(ch) : 0;
    json_t *c0 = json_array_get(ch, 0);
    json_t *h = json_object_get(c0, mode == PROVIDER_SCAN_CHUNK ? "delta" : "message");
    json_t *content = json_object_get(h, "content");
    if (json_is_string(content)) {
        o->content_string = 1;
        o->content_len = json_string_length(content);
        o->content_chars = provider_utf8_chars(json_string_value(content), o->content_len);
    }
    o->has_role = json_object_get(h, "role") != NULL;
    json_t *id = json_object_get(j, "id");
    if (json_is_string(id)) {
        o->id_string = 1;
        provider__copy_utf8(o->id, sizeof(o->id), json_string_value(id), json_string_length(id));
    }
    json_t *fr = json_object_get(c0, "finish_reason");
    if (json_is_string(fr)) {
        o->finish_string = 1;
        snprintf(o->finish_reason, sizeof(o->finish_reason), "%s", json_string_value(fr));
    }
}

/* 1 when every field of a and b agrees (fields a scan leaves unset are zero in both). */
static int scan_ref_same(const struct provider_scan *a, const struct provider_scan *b)
{
    return a->has_error == b->has_error && a->usage == b->usage &&
           a->counts_seen == b->counts_seen && a->counts_int == b->counts_int &&
           memcmp(a->counts, b->counts, sizeof(a->counts)) == 0 && a->choices == b->choices &&
           a->nchoices == b->nchoices && a->content_string == b->content_string &&
           a->content_len == b->content_len && a->content_chars == b->content_chars &&
           a->has_role == b->has_role && a->id_string == b->id_string &&
           strcmp(a->id, b->id) == 0 && a->finish_string == b->finish_string &&
           strcmp(a->finish_reason, b->finish_reason) == 0;
}

#endif
