/* Ollama's native API (/api/chat): the OpenAI request becomes Ollama's {model, messages,
 * stream, options}, and Ollama's NDJSON lines ({"message":{"content"}, "done":false} ...
 * then a done object with prompt_eval_count / eval_count) become OpenAI chunks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/util.h"
#include "proxy/provider.h"

/* OpenAI sampling fields and their Ollama option names. */
static const struct {
    const char *openai;
    const char *ollama;
} option_map[] = {
    {"temperature", "temperature"},
    {"top_p", "top_p"},
    {"max_tokens", "num_predict"},
    {"max_completion_tokens", "num_predict"},
    {"seed", "seed"},
    {"presence_penalty", "presence_penalty"},
    {"frequency_penalty", "frequency_penalty"},
};

/* OpenAI content may be a string or an array of parts; Ollama wants a string. */
static json_t *flatten_content(json_t *content)
{
    if (!json_is_array(content)) {
        return json_is_string(content) ? json_incref(content) : json_string("");
    }
    json_t *s = json_string("");
    size_t i;
    const json_t *part;
    json_array_foreach(content, i, part)
    {
        const json_t *text = json_object_get(part, "text");
        if (json_is_string(text)) {
            size_t a = json_string_length(s);
            size_t b = json_string_length(text);
            char *joined = malloc(a + b + 1);
            if (!joined) {
                break;
            }
            memcpy(joined, json_string_value(s), a);
            memcpy(joined + a, json_string_value(text), b);
            joined[a + b] = '\0';
            json_string_setn(s, joined, a + b);
            free(joined);
        }
    }
    return s;
}

static int ollama_build_request(json_t *req, const char *raw, size_t raw_len,
                                const char *upstream_model, int stream, char **body, size_t *len)
{
    (void)raw; /* Ollama's request is always built anew */
    (void)raw_len;
    json_t *msgs = json_array();
    size_t i;
    const json_t *m;
    json_array_foreach(json_object_get(req, "messages"), i, m)
    {
        json_array_append_new(msgs,
                              json_pack("{s:O,s:o}", "role", json_object_get(m, "role"), "content",
                                        flatten_content(json_object_get(m, "content"))));
    }
    json_t *opts = json_object();
    for (size_t k = 0; k < sizeof(option_map) / sizeof(option_map[0]); k++) {
        json_t *v = json_object_get(req, option_map[k].openai);
        if (v && !json_is_null(v)) {
            json_object_set(opts, option_map[k].ollama, v);
        }
    }
    json_t *stop = json_object_get(req, "stop");
    if (json_is_string(stop)) {
        json_object_set_new(opts, "stop", json_pack("[O]", stop));
    } else if (json_is_array(stop)) {
        json_object_set(opts, "stop", stop);
    }
    json_t *o = json_pack("{s:s,s:o,s:b,s:o}", "model", upstream_model, "messages", msgs, "stream",
                          stream, "options", opts);
    json_t *rf = json_object_get(req, "response_format");
    if (json_is_object(rf) && json_is_string(json_object_get(rf, "type")) &&
        strcmp(json_string_value(json_object_get(rf, "type")), "json_object") == 0) {
        json_object_set_new(o, "format", json_string("json"));
    }
    *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!*body) {
        return PX_EPARSE;
    }
    *len = strlen(*body);
    return 0;
}

/* Ollama counts live on the final object; absent when the prompt was cached or the server is
 * old, and then the relay estimates. */
static void ollama_usage(struct relay *r, const json_t *j)
{
    json_t *p = json_object_get(j, "prompt_eval_count");
    json_t *c = json_object_get(j, "eval_count");
    json_t *u = json_pack("{s:O?,s:O?}", "prompt_tokens", p, "completion_tokens", c);
    if (p && c && provider_usage_from_openai(u, &r->usage) == 0) {
        r->usage.present = 1;
    }
    json_decref(u);
}

static const char *finish_reason(const json_t *j)
{
    const char *dr = json_string_value(json_object_get(j, "done_reason"));
    return dr && strcmp(dr, "length") == 0 ? "length" : "stop";
}

static json_t *chunk(const struct relay *r, json_t *delta, const char *finish)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:n,s:s?}]}", "id", r->id, "object",
                     "chat.completion.chunk", "created", (json_int_t)r->created, "model", r->model,
                     "choices", "index", 0, "delta", delta, "logprobs", "finish_reason", finish);
}

static enum relay_result ollama_stream_event(struct relay *r, const char *data, size_t len,
                                             struct buf *out)
{
    json_error_t je;
    json_t *j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        snprintf(r->error, sizeof(r->error), "malformed stream line from backend%s%s",
                 j ? "" : ": ", j ? "" : je.text);
        px_utf8_sanitize(r->error); /* jansson quotes the raw bytes near a parse error */
        json_decref(j);
        return RELAY_ERROR;
    }
    json_t *err = json_object_get(j, "error");
    if (err) {
        const char *m = json_is_string(err) ? json_string_value(err) : "backend reported an error";
        provider__copy_utf8(r->error, sizeof(r->error), m, strlen(m));
        json_decref(j);
        return RELAY_ERROR;
    }
    if (!r->role_sent) {
        r->role_sent = 1;
        provider__sse_json(
            out, chunk(r, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL));
    }
    json_t *content = json_object_get(json_object_get(j, "message"), "content");
    if (json_is_string(content) && json_string_length(content) > 0) {
        r->content_chunks++;
        r->output_chars +=
            provider_utf8_chars(json_string_value(content), json_string_length(content));
        provider__sse_json(out, chunk(r, json_pack("{s:O}", "content", content), NULL));
    }
    enum relay_result res = RELAY_CONTINUE;
    if (json_is_true(json_object_get(j, "done"))) {
        const char *fr = finish_reason(j);
        snprintf(r->finish_reason, sizeof(r->finish_reason), "%s", fr);
        provider__sse_json(out, chunk(r, json_object(), fr));
        ollama_usage(r, j);
        r->done = 1;
        res = RELAY_DONE;
    }
    json_decref(j);
    return res;
}

static int ollama_complete(struct relay *r, const char *body, size_t len, int64_t prompt_estimate,
                           struct buf *out)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    json_t *content = json_object_get(json_object_get(j, "message"), "content");
    if (!json_is_object(j) || !json_is_string(content)) {
        snprintf(r->error, sizeof(r->error), "malformed response from backend%s%s", j ? "" : ": ",
                 j ? "" : je.text);
        px_utf8_sanitize(r->error);
        json_decref(j);
        return PX_EPARSE;
    }
    r->output_chars = provider_utf8_chars(json_string_value(content), json_string_length(content));
    ollama_usage(r, j);
    if (!r->usage.present) {
        provider__estimate(r, prompt_estimate, (r->output_chars + 3) / 4);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:O},s:n,s:s}],s:{s:I,s:I,s:I}}", "id",
                          r->id, "object", "chat.completion", "created", (json_int_t)r->created,
                          "model", r->model, "choices", "index", 0, "message", "role", "assistant",
                          "content", content, "logprobs", "finish_reason", finish_reason(j),
                          "usage", "prompt_tokens", (json_int_t)r->usage.prompt_tokens,
                          "completion_tokens", (json_int_t)r->usage.completion_tokens,
                          "total_tokens", (json_int_t)r->usage.total_tokens);
    json_decref(j);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int rc = s ? buf_append_str(out, s) : PX_EPARSE;
    free(s);
    return rc;
}

const struct provider_ops provider_ollama = {
    .name = "ollama",
    .chat_path = "/api/chat",
    .stream_mode = SSE_MODE_NDJSON,
    .build_request = ollama_build_request,
    .stream_event = ollama_stream_event,
    .complete = ollama_complete,
};
