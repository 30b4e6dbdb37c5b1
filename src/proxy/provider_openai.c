/* OpenAI-compatible backends (vLLM, Ollama's /v1, anything that speaks the API): requests
 * pass through with the model renamed and usage requested on streams; answers pass through
 * byte for byte unless the model name must be rewritten. Usage chunks are absorbed (the relay
 * writes the single closing one), and each chunk is parsed to count the content relayed, so a
 * cut stream can still be billed for what the client received.
 *
 * Most chunks and answers go out unchanged, so they are only scanned (provider_scan.h: no tree,
 * no allocation per value); jansson builds a tree for the rest: usage and error chunks, chunks
 * to rewrite, and anything the scanner is not sure of. Both paths give the same bytes and the
 * same counts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"
#include "proxy/provider.h"
#include "proxy/provider_scan.h"

/* 1 when the client's body already says what the backend must hear: the model keeps its name
 * and a stream already asks for usage (the client's body was parsed with duplicate keys
 * refused, so the tree is all it says). Except for a NUL byte: jansson skips one that follows
 * a literal or a number ({"a":null<NUL>}), a backend would not (found by fuzz_chat_req). */
static int openai_body_as_is(json_t *req, const char *raw, size_t raw_len,
                             const char *upstream_model, int stream)
{
    json_t *model = json_object_get(req, "model");
    size_t n = strlen(upstream_model);
    if (!raw || memchr(raw, '\0', raw_len) || !json_is_string(model) ||
        json_string_length(model) != n ||
        memcmp(json_string_value(model), upstream_model, n) != 0) {
        return 0;
    }
    json_t *so = json_object_get(req, "stream_options");
    return !stream || json_is_true(json_object_get(so, "include_usage"));
}

static int openai_build_request(json_t *req, const char *raw, size_t raw_len,
                                const char *upstream_model, int stream, char **body, size_t *len)
{
    if (openai_body_as_is(req, raw, raw_len, upstream_model, stream)) {
        *body = px_malloc(raw_len + 1);
        memcpy(*body, raw, raw_len);
        (*body)[raw_len] = '\0';
        *len = raw_len;
        return 0;
    }
    json_t *o = json_copy(req);
    json_object_set_new(o, "model", json_string(upstream_model));
    if (stream) {
        /* Ask for the usage chunk; keep any other stream option the client set. */
        json_t *so = json_object_get(o, "stream_options");
        if (!json_is_object(so)) {
            so = json_object();
            json_object_set_new(o, "stream_options", so);
        } else {
            so = json_copy(so);
            json_object_set_new(o, "stream_options", so);
        }
        json_object_set_new(so, "include_usage", json_true());
    }
    *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!*body) {
        return PX_EPARSE;
    }
    *len = strlen(*body);
    return 0;
}

static void set_error(struct relay *r, const char *what, const json_error_t *je)
{
    char m[sizeof(r->error) + 200];
    snprintf(m, sizeof(m), "%s%s%s", what, je ? ": " : "", je ? je->text : "");
    provider__copy_utf8(r->error, sizeof(r->error), m, strlen(m));
    px_utf8_sanitize(r->error); /* jansson quotes the raw bytes near a parse error */
}

/* The usage object the scanner saw as a px_usage, with provider_usage_from_openai's rules.
 * 0 or PX_EPARSE (absent, a count missing or not an integer, or out of range). */
static int scan_usage(const struct provider_scan *k, struct px_usage *u)
{
    unsigned need = 1u << PROVIDER_SCAN_PROMPT | 1u << PROVIDER_SCAN_COMPLETION;
    if (k->usage != PROVIDER_SCAN_OBJECT || k->counts_seen != k->counts_int ||
        (k->counts_int & need) != need) {
        return PX_EPARSE;
    }
    return provider__usage_from_counts(
        k->counts[PROVIDER_SCAN_PROMPT], k->counts[PROVIDER_SCAN_COMPLETION],
        (k->counts_int >> PROVIDER_SCAN_TOTAL) & 1, k->counts[PROVIDER_SCAN_TOTAL], u);
}

/* The common chunks: one line of JSON, no error, no rewrite, and either choices without a usage
 * object (goes out as it came) or the usage chunk (empty choices, valid counts: absorbed, the
 * relay writes its own at the end). Only the scanner reads them. 1 when handled; 0 to take the
 * jansson path, which then decides exactly as if this had not been tried. */
static int openai_chunk_fast(struct relay *r, const char *data, size_t len, struct buf *out)
{
    struct provider_scan k;
    if (r->rewrite_model || memchr(data, '\n', len) ||
        provider_scan(data, len, PROVIDER_SCAN_CHUNK, &k) != 0 || k.has_error ||
        k.choices != PROVIDER_SCAN_ARRAY) {
        return 0;
    }
    if (k.usage == PROVIDER_SCAN_OBJECT) {
        return k.nchoices == 0 && scan_usage(&k, &r->usage) == 0;
    }
    if (k.nchoices == 0) {
        return 0;
    }
    if (k.content_string && k.content_len > 0) {
        r->content_chunks++;
        r->output_chars += k.content_chars;
    }
    if (k.has_role) {
        r->role_sent = 1;
    }
    if (!r->id_from_upstream && k.id_string) {
        _Static_assert(sizeof(k.id) == sizeof(r->id), "the scanner cuts the id as the relay does");
        r->id_from_upstream = 1;
        memcpy(r->id, k.id, sizeof(r->id));
    }
    if (k.finish_string) {
        _Static_assert(sizeof(k.finish_reason) == sizeof(r->finish_reason), "same cut");
        memcpy(r->finish_reason, k.finish_reason, sizeof(r->finish_reason));
    }
    (void)buf_append(out, "data: ", 6);
    (void)buf_append(out, data, len);
    (void)buf_append(out, "\n\n", 2);
    return 1;
}

static enum relay_result openai_stream_event(struct relay *r, const char *data, size_t len,
                                             struct buf *out)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->done = 1;
        return RELAY_DONE;
    }
    if (openai_chunk_fast(r, data, len, out)) {
        return RELAY_CONTINUE;
    }
    json_error_t je;
    json_t *j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        set_error(r, "malformed stream chunk from backend", j ? NULL : &je);
        return RELAY_ERROR;
    }
    json_t *err = json_object_get(j, "error");
    if (err) {
        const char *m = provider__error_text(j);
        m = m ? m : "backend reported an error";
        provider__copy_utf8(r->error, sizeof(r->error), m, strlen(m));
        json_decref(j);
        return RELAY_ERROR;
    }
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage) && provider_usage_from_openai(usage, &r->usage) != 0) {
        json_decref(j);
        set_error(r, "backend sent an invalid usage block", NULL);
        return RELAY_ERROR;
    }
    json_t *choices = json_object_get(j, "choices");
    if (!json_is_array(choices)) {
        json_decref(j);
        set_error(r, "stream chunk from backend has no choices array", NULL);
        return RELAY_ERROR;
    }
    if (json_array_size(choices) == 0) {
        json_decref(j); /* the usage chunk: the relay writes its own at the end */
        return RELAY_CONTINUE;
    }
    json_t *c0 = json_array_get(choices, 0);
    json_t *delta = json_object_get(c0, "delta");
    json_t *content = json_object_get(delta, "content");
    if (json_is_string(content) && json_string_length(content) > 0) {
        r->content_chunks++;
        r->output_chars +=
            provider_utf8_chars(json_string_value(content), json_string_length(content));
    }
    if (json_object_get(delta, "role")) {
        r->role_sent = 1;
    }
    if (!r->id_from_upstream && json_is_string(json_object_get(j, "id"))) {
        /* The closing usage chunk privax writes carries the same id as the backend's. */
        r->id_from_upstream = 1;
        json_t *id = json_object_get(j, "id");
        provider__copy_utf8(r->id, sizeof(r->id), json_string_value(id), json_string_length(id));
    }
    json_t *fr = json_object_get(c0, "finish_reason");
    if (json_is_string(fr)) {
        snprintf(r->finish_reason, sizeof(r->finish_reason), "%s", json_string_value(fr));
    }
    /* Re-encode when the chunk must change, or when the backend split its JSON over several
     * data: lines (forwarded raw, the newline would end the client's data line). */
    if (r->rewrite_model || json_is_object(usage) || memchr(data, '\n', len)) {
        if (r->rewrite_model || json_object_get(j, "model")) {
            json_object_set_new(j, "model", json_string(r->model));
        }
        if (json_is_object(usage)) {
            json_object_del(j, "usage"); /* continuous usage stats: only the closing chunk */
        }
        provider__sse_json(out, j);
        return RELAY_CONTINUE;
    }
    json_decref(j);
    (void)buf_append(out, "data: ", 6);
    (void)buf_append(out, data, len);
    (void)buf_append(out, "\n\n", 2);
    return RELAY_CONTINUE;
}

/* The common answer: an object with choices and complete usage counts, no rewrite. It goes out
 * as it came. 1 when handled (*rc: the append's result); 0 to take the jansson path. */
static int openai_answer_as_is(struct relay *r, const char *body, size_t len, struct buf *out,
                               int *rc)
{
    struct provider_scan k;
    struct px_usage u;
    if (r->rewrite_model || provider_scan(body, len, PROVIDER_SCAN_ANSWER, &k) != 0 ||
        k.choices != PROVIDER_SCAN_ARRAY || scan_usage(&k, &u) != 0) {
        return 0;
    }
    if (k.content_string) {
        r->output_chars = k.content_chars;
    }
    r->usage = u;
    *rc = buf_append(out, body, len);
    return 1;
}

static int openai_complete(struct relay *r, const char *body, size_t len, int64_t prompt_estimate,
                           struct buf *out)
{
    int rc = 0;
    if (openai_answer_as_is(r, body, len, out, &rc)) {
        return rc;
    }
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    json_t *choices = json_object_get(j, "choices");
    if (!json_is_object(j) || !json_is_array(choices)) {
        json_decref(j);
        set_error(r, "malformed response from backend", j ? NULL : &je);
        return PX_EPARSE;
    }
    json_t *content =
        json_object_get(json_object_get(json_array_get(choices, 0), "message"), "content");
    if (json_is_string(content)) {
        r->output_chars =
            provider_utf8_chars(json_string_value(content), json_string_length(content));
    }
    json_t *usage = json_object_get(j, "usage");
    int modified = r->rewrite_model;
    if (!json_is_object(usage) || provider_usage_from_openai(usage, &r->usage) != 0) {
        provider__estimate(r, prompt_estimate, (r->output_chars + 3) / 4);
        json_object_set_new(j, "usage",
                            json_pack("{s:I,s:I,s:I}", "prompt_tokens",
                                      (json_int_t)r->usage.prompt_tokens, "completion_tokens",
                                      (json_int_t)r->usage.completion_tokens, "total_tokens",
                                      (json_int_t)r->usage.total_tokens));
        modified = 1;
    }
    if (modified) {
        json_object_set_new(j, "model", json_string(r->model));
        char *s = json_dumps(j, JSON_COMPACT);
        rc = s ? buf_append_str(out, s) : PX_EPARSE;
        free(s);
    } else {
        rc = buf_append(out, body, len);
    }
    json_decref(j);
    return rc;
}

const struct provider_ops provider_openai = {
    .name = "openai",
    .chat_path = "/v1/chat/completions",
    .stream_mode = SSE_MODE_EVENT_STREAM,
    .build_request = openai_build_request,
    .stream_event = openai_stream_event,
    .complete = openai_complete,
};
