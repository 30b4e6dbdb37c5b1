/* OpenAI-compatible backends (vLLM, Ollama's /v1, anything that speaks the API): requests
 * pass through with the model renamed and usage requested on streams; answers pass through
 * byte for byte unless the model name must be rewritten. Usage chunks are absorbed (the relay
 * writes the single closing one), and each chunk is parsed to count the content relayed, so a
 * cut stream can still be billed for what the client received. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/util.h"
#include "proxy/provider.h"

static int openai_build_request(json_t *req, const char *upstream_model, int stream, char **body,
                                size_t *len)
{
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

static enum relay_result openai_stream_event(struct relay *r, const char *data, size_t len,
                                             struct buf *out)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->done = 1;
        return RELAY_DONE;
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

static int openai_complete(struct relay *r, const char *body, size_t len, int64_t prompt_estimate,
                           struct buf *out)
{
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
    int rc = 0;
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
