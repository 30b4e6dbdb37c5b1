#include "proxy/provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/util.h"

/* Counts above this are garbage, not usage: refuse rather than bill them. */
#define PROVIDER_COUNT_MAX 1000000000000LL

void relay_init(struct relay *r, const struct provider_ops *ops, const char *model,
                int rewrite_model, const char *request_id)
{
    memset(r, 0, sizeof(*r));
    r->ops = ops;
    r->model = model;
    r->rewrite_model = rewrite_model;
    snprintf(r->id, sizeof(r->id), "chatcmpl-%s", request_id);
    r->created = (int64_t)time(NULL);
}

int64_t provider_utf8_chars(const char *s, size_t n)
{
    int64_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    }
    return c;
}

void provider__sse_json(struct buf *out, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) {
        return;
    }
    /* A failed append means the response buffer cap was reached; the caller checks len. */
    (void)buf_append(out, "data: ", 6);
    (void)buf_append_str(out, s);
    (void)buf_append(out, "\n\n", 2);
    free(s);
}

void provider__estimate(struct relay *r, int64_t prompt_estimate, int64_t completion_estimate)
{
    r->usage.prompt_tokens = prompt_estimate;
    r->usage.completion_tokens = completion_estimate;
    r->usage.total_tokens = prompt_estimate + completion_estimate;
    r->usage.present = 0;
}

static json_t *usage_json(const struct px_usage *u)
{
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)u->total_tokens);
}

void relay_finish(struct relay *r, int64_t prompt_estimate, struct buf *out)
{
    if (!r->usage.present) {
        provider__estimate(r, prompt_estimate, r->content_chunks);
    }
    json_t *chunk = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", r->id, "object",
                              "chat.completion.chunk", "created", (json_int_t)r->created, "model",
                              r->model, "choices", "usage", usage_json(&r->usage));
    provider__sse_json(out, chunk);
    (void)buf_append_str(out, "data: [DONE]\n\n");
}

void relay_error_event(struct buf *out, const char *type, const char *code, const char *msg)
{
    char m[512];
    provider__copy_utf8(m, sizeof(m), msg, strlen(msg));
    px_utf8_sanitize(m); /* an error event must never be dropped for bad bytes in its text */
    json_t *ev = json_pack("{s:{s:s,s:s,s:s?}}", "error", "message", m, "type", type, "code", code);
    provider__sse_json(out, ev);
}

static int count_ok(int64_t n)
{
    return n >= 0 && n <= PROVIDER_COUNT_MAX;
}

int provider__usage_from_counts(int64_t prompt, int64_t completion, int has_total, int64_t total,
                                struct px_usage *out)
{
    if (!count_ok(prompt) || !count_ok(completion) || (has_total && !count_ok(total))) {
        return PX_EPARSE;
    }
    struct px_usage u = {prompt, completion, has_total ? total : 0, 1};
    /* Bill what was consumed: never trust a total smaller than its parts. */
    if (u.total_tokens < u.prompt_tokens + u.completion_tokens) {
        u.total_tokens = u.prompt_tokens + u.completion_tokens;
    }
    *out = u;
    return 0;
}

int provider_usage_from_openai(const json_t *usage, struct px_usage *out)
{
    const json_t *p = json_object_get(usage, "prompt_tokens");
    const json_t *c = json_object_get(usage, "completion_tokens");
    const json_t *t = json_object_get(usage, "total_tokens");
    if (!json_is_object(usage) || !json_is_integer(p) || !json_is_integer(c) ||
        (t && !json_is_integer(t))) {
        return PX_EPARSE;
    }
    return provider__usage_from_counts(json_integer_value(p), json_integer_value(c), t != NULL,
                                       t ? json_integer_value(t) : 0, out);
}

void provider__copy_utf8(char *dst, size_t cap, const char *s, size_t n)
{
    if (cap == 0) {
        return;
    }
    if (n >= cap) {
        n = cap - 1;
        /* Step back over continuation bytes to the start of the cut character. */
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) {
            n--;
        }
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

const char *provider__error_text(json_t *j)
{
    if (!json_is_object(j)) {
        return NULL;
    }
    json_t *e = json_object_get(j, "error");
    if (json_is_string(e)) {
        return json_string_value(e); /* Ollama */
    }
    if (json_is_object(e) && json_is_string(json_object_get(e, "message"))) {
        return json_string_value(json_object_get(e, "message")); /* OpenAI */
    }
    if (json_is_string(json_object_get(j, "message"))) {
        return json_string_value(json_object_get(j, "message")); /* vLLM */
    }
    return NULL;
}

void provider_error_message(const char *body, size_t len, char *msg, size_t cap)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *m = provider__error_text(j);
    if (m) {
        provider__copy_utf8(msg, cap, m, strlen(m));
    } else {
        /* Not JSON: keep a printable prefix so the operator sees what came back. */
        size_t k = 0;
        for (size_t i = 0; i < len && k + 1 < cap && k < 200; i++) {
            unsigned char c = (unsigned char)body[i];
            msg[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
        }
        msg[k] = '\0';
    }
    json_decref(j);
}
