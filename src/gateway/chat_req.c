/* Validate a chat completion body before anything is reserved or routed. Each rejection
 * names the field and what is wrong with it, the way OpenAI's own API does.
 *
 * Rejected: invalid UTF-8; not JSON; not an object; model missing, not a string, or not
 * configured (404); messages missing, not an array, empty, or with an entry that is not an
 * object with a known role and string/array content; stream not a boolean; max_tokens /
 * max_completion_tokens not an integer in 1..context (or 1..1M when the model's context is not
 * configured); temperature outside 0..2; top_p outside 0..1; n other than 1; stream_options
 * not an object. Unknown fields pass through to the backend, as the API allows. */
#include <string.h>

#include "core/util.h"
#include "gateway/internal.h"

#define CHAT_MAX_TOKENS_CAP 1000000 /* ceiling when the model's context is not configured */
#define CHAT_MESSAGES_MAX   4096    /* messages in one request */

static const char *const roles[] = {"system", "user", "assistant", "tool", "developer", "function"};

static int bad(struct gw_error *err, const char *code, const char *msg)
{
    gw_error_set(err, 400, "invalid_request_error", code, "%s", msg);
    return -1;
}

/* Unicode characters, not bytes: the same text costs the same in any script's encoding. */
static int64_t text_chars(const json_t *s)
{
    return provider_utf8_chars(json_string_value(s), json_string_length(s));
}

static int64_t content_chars(const json_t *content)
{
    if (json_is_string(content)) {
        return text_chars(content);
    }
    int64_t n = 0;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text)) {
            n += text_chars(text);
        }
    }
    return n;
}

/* The OpenAI content part types and the member each must carry ("text" a string, the others
 * an object, "refusal" a string); a backend is handed only parts it can know. */
static const struct {
    const char *type;
    int string; /* 1: the member is a string, 0: an object */
} part_types[] = {
    {"text", 1}, {"image_url", 0}, {"input_audio", 0}, {"file", 0}, {"refusal", 1},
};

/* Content parts: a non-empty array of objects with a known string "type" and its member. */
static int check_parts(json_t *parts, size_t i, struct gw_error *err)
{
    if (json_array_size(parts) == 0) {
        gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                     "messages[%zu].content must not be an empty array", i);
        return -1;
    }
    size_t k;
    json_t *part;
    json_array_foreach(parts, k, part)
    {
        json_t *type = json_object_get(part, "type");
        if (!json_is_object(part) || !json_is_string(type)) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].content[%zu] must be an object with a string 'type'", i, k);
            return -1;
        }
        size_t t = 0, nt = sizeof(part_types) / sizeof(part_types[0]);
        while (t < nt && strcmp(json_string_value(type), part_types[t].type) != 0) {
            t++;
        }
        if (t == nt) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].content[%zu].type must be text, image_url, input_audio, "
                         "file or refusal",
                         i, k);
            return -1;
        }
        json_t *m = json_object_get(part, part_types[t].type);
        if (part_types[t].string ? !json_is_string(m) : !json_is_object(m)) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].content[%zu].%s must be %s", i, k, part_types[t].type,
                         part_types[t].string ? "a string" : "an object");
            return -1;
        }
    }
    return 0;
}

/* stop: a string or an array of at most 4 strings; tools: an array. */
static int check_stop_tools(json_t *root, struct gw_error *err)
{
    json_t *stop = json_object_get(root, "stop");
    if (stop && !json_is_null(stop) && !json_is_string(stop)) {
        int ok = json_is_array(stop) && json_array_size(stop) <= 4;
        size_t k;
        json_t *v;
        json_array_foreach(stop, k, v)
        {
            ok &= json_is_string(v);
        }
        if (!ok) {
            return bad(err, "invalid_value",
                       "'stop' must be a string or an array of at most 4 strings");
        }
    }
    json_t *tools = json_object_get(root, "tools");
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        return bad(err, "invalid_value", "'tools' must be an array");
    }
    return 0;
}

static int check_messages(json_t *msgs, struct gw_chat_req *out, struct gw_error *err)
{
    if (!msgs) {
        return bad(err, "invalid_value", "'messages' is required");
    }
    if (!json_is_array(msgs)) {
        return bad(err, "invalid_value", "'messages' must be an array of message objects");
    }
    size_t n = json_array_size(msgs);
    if (n == 0) {
        return bad(err, "invalid_value", "'messages' must contain at least one message");
    }
    if (n > CHAT_MESSAGES_MAX) {
        gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                     "'messages' has %zu entries; at most %d are allowed", n, CHAT_MESSAGES_MAX);
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m)) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu] must be an object", i);
            return -1;
        }
        json_t *role = json_object_get(m, "role");
        int known = 0;
        for (size_t r = 0; json_is_string(role) && r < sizeof(roles) / sizeof(roles[0]); r++) {
            known |= strcmp(json_string_value(role), roles[r]) == 0;
        }
        if (!known) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].role must be one of system, user, assistant, tool, "
                         "developer",
                         i);
            return -1;
        }
        json_t *content = json_object_get(m, "content");
        /* An assistant turn that only made tool calls has content null. */
        int tool_turn = json_is_null(content) && json_object_get(m, "tool_calls") != NULL;
        if (!json_is_string(content) && !json_is_array(content) && !tool_turn) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].content must be a string or an array of content parts", i);
            return -1;
        }
        if (json_is_array(content) && check_parts(content, i, err) != 0) {
            return -1;
        }
        json_t *name = json_object_get(m, "name");
        if (name && !json_is_string(name)) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "messages[%zu].name must be a string", i);
            return -1;
        }
        if (!tool_turn) {
            out->input_chars += content_chars(content);
        }
    }
    /* The usual rule of thumb (about 4 characters a token) plus per-message framing; only
     * an estimate for admission and for rows the backend gave no counts for. */
    out->prompt_estimate = (out->input_chars + 3) / 4 + 4 * (int64_t)n + 3;
    return 0;
}

static int check_number(json_t *root, const char *field, double lo, double hi, struct gw_error *err)
{
    json_t *v = json_object_get(root, field);
    if (!v || json_is_null(v)) {
        return 0;
    }
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi) {
        gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                     "'%s' must be a number between %g and %g", field, lo, hi);
        return -1;
    }
    return 0;
}

static int check_max_tokens(const struct px_config *cfg, json_t *root, struct gw_chat_req *out,
                            struct gw_error *err)
{
    static const char *const fields[] = {"max_tokens", "max_completion_tokens"};
    int64_t cap = cfg->models[out->model].context_window > 0
                      ? cfg->models[out->model].context_window
                      : CHAT_MAX_TOKENS_CAP;
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, fields[i]);
        if (!v || json_is_null(v)) {
            continue;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > cap) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "'%s' must be an integer between 1 and %lld", fields[i], (long long)cap);
            return -1;
        }
        out->max_tokens = (int64_t)json_integer_value(v);
    }
    return 0;
}

int gw_chat_req_parse(const struct px_config *cfg, const char *body, size_t len,
                      struct gw_chat_req *out, struct gw_error *err)
{
    memset(out, 0, sizeof(*out));
    if (len == 0) {
        return bad(err, "invalid_json", "request body is empty; expected a JSON object");
    }
    if (!px_utf8_valid(body, len)) {
        return bad(err, "invalid_json", "request body is not valid UTF-8");
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root) {
        /* Valid JSON whose number does not fit 64 bits is a bad value, not bad JSON. */
        int too_big = strncmp(je.text, "too big", 7) == 0;
        if (strstr(je.text, "JSON_ALLOW_NUL")) {
            /* jansson names its own flag; say what the client can act on. */
            snprintf(je.text, sizeof(je.text), "%s", "\\u0000 is not allowed in a string");
        }
        gw_error_set(err, 400, "invalid_request_error", too_big ? "invalid_value" : "invalid_json",
                     "request body is not valid JSON: %s at line %d column %d", je.text, je.line,
                     je.column);
        if (too_big) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "a number in the request body is out of range: %s at line %d column %d",
                         je.text, je.line, je.column);
        }
        return -1;
    }
    out->root = root;
    if (!json_is_object(root)) {
        bad(err, "invalid_value", "request body must be a JSON object");
        goto fail;
    }
    json_t *model = json_object_get(root, "model");
    if (!model) {
        bad(err, "invalid_value", "'model' is required");
        goto fail;
    }
    if (!json_is_string(model)) {
        bad(err, "invalid_value", "'model' must be a string");
        goto fail;
    }
    long m = px_config_model(cfg, json_string_value(model), json_string_length(model));
    if (m < 0) {
        char name[129];
        provider__copy_utf8(name, sizeof(name), json_string_value(model),
                            json_string_length(model));
        gw_error_set(err, 404, "invalid_request_error", "model_not_found",
                     "The model '%s' does not exist (GET /v1/models lists the models)", name);
        goto fail;
    }
    out->model = (size_t)m;
    if (check_messages(json_object_get(root, "messages"), out, err) != 0) {
        goto fail;
    }
    json_t *stream = json_object_get(root, "stream");
    if (stream && !json_is_null(stream) && !json_is_boolean(stream)) {
        bad(err, "invalid_value", "'stream' must be a boolean");
        goto fail;
    }
    out->stream = json_is_true(stream);
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so) && !json_is_object(so)) {
        bad(err, "invalid_value", "'stream_options' must be an object");
        goto fail;
    }
    json_t *n = json_object_get(root, "n");
    if (n && !json_is_null(n) && (!json_is_integer(n) || json_integer_value(n) != 1)) {
        bad(err, "invalid_value", "'n' must be 1: one choice per request");
        goto fail;
    }
    if (check_max_tokens(cfg, root, out, err) != 0 || check_stop_tools(root, err) != 0 ||
        check_number(root, "temperature", 0, 2, err) != 0 ||
        check_number(root, "top_p", 0, 1, err) != 0) {
        goto fail;
    }
    return 0;
fail:
    gw_chat_req_cleanup(out);
    return -1;
}

void gw_chat_req_cleanup(struct gw_chat_req *r)
{
    json_decref(r->root);
    r->root = NULL;
}
