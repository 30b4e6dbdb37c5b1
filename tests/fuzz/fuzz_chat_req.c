/* libFuzzer target for chat request validation (gw_chat_req_parse in src/gateway/chat_req.c),
 * with a fixed config of three models, one with a context window. An accepted request is also
 * turned into both backends' request bodies (build_request), as the gateway does next.
 *
 * Invariants:
 *  - accepted: root is a JSON object, the model index is below nmodels, max_tokens is 0 or
 *    within 1..the model's cap, stream is 0 or 1, input_chars >= 0 and prompt_estimate at least
 *    the per-message framing; both adapters build a request that is a JSON object, the same
 *    whether they are given the client's bytes (which may be forwarded as is) or not;
 *  - refused: root is NULL, status 400 or 404, type and code set, the message non-empty, and
 *    valid UTF-8 (it is sent inside JSON);
 *  - nothing leaks (cleanup on every path; LeakSanitizer checks). */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/util.h"
#include "gateway/internal.h"
#include "proxy/provider.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static struct px_model_cfg models[] = {
    {.name = "m", .upstream_model = "m"},
    {.name = "small", .upstream_model = "small-upstream", .context_window = 4096},
    {.name = "qwen2.5-coder:7b", .upstream_model = "qwen2.5-coder:7b"},
};

static const struct px_config cfg = {
    .models = models,
    .nmodels = sizeof(models) / sizeof(models[0]),
};

static json_t *built(const struct provider_ops *ops, json_t *root, const char *raw, size_t raw_len,
                     const char *model, int stream)
{
    char *body = NULL;
    size_t len = 0;
    if (ops->build_request(root, raw, raw_len, model, stream, &body, &len) != 0) {
        abort(); /* a validated request always translates */
    }
    json_t *j = json_loadb(body, len, 0, NULL);
    if (!json_is_object(j) || len != strlen(body)) {
        abort();
    }
    free(body);
    return j;
}

/* As the gateway calls it (with the client's bytes, which may go as they came) and without
 * them (always encoded anew): the backend must be told the same either way. */
static void build(const struct provider_ops *ops, json_t *root, const char *raw, size_t raw_len,
                  const char *model, int stream)
{
    json_t *a = built(ops, root, raw, raw_len, model, stream);
    json_t *b = built(ops, root, NULL, 0, model, stream);
    if (!json_equal(a, b)) {
        abort();
    }
    json_decref(a);
    json_decref(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gw_chat_req r;
    struct gw_error err;
    memset(&err, 0, sizeof(err));
    int rc = gw_chat_req_parse(&cfg, (const char *)d, n, &r, &err);
    if (rc == 0) {
        if (!json_is_object(r.root) || r.model >= cfg.nmodels || (r.stream != 0 && r.stream != 1)) {
            abort();
        }
        int64_t cap = models[r.model].context_window ? models[r.model].context_window : 1000000;
        if (r.max_tokens < 0 || r.max_tokens > cap || r.input_chars < 0 ||
            r.prompt_estimate < 4 + 3 || r.prompt_estimate < r.input_chars / 4) {
            abort();
        }
        const char *up = models[r.model].upstream_model;
        build(&provider_openai, r.root, (const char *)d, n, up, r.stream);
        build(&provider_ollama, r.root, (const char *)d, n, up, r.stream);
        gw_chat_req_cleanup(&r);
        if (r.root) {
            abort();
        }
    } else {
        if (rc != -1 || r.root != NULL || (err.status != 400 && err.status != 404) || !err.type ||
            !err.code || err.message[0] == '\0' ||
            !memchr(err.message, '\0', sizeof(err.message))) {
            abort();
        }
        if (!px_utf8_valid(err.message, strlen(err.message))) {
            abort(); /* jansson's error text can cut a character: corpus crash-json-error-* */
        }
        gw_chat_req_cleanup(&r); /* harmless after a refusal */
    }
    return 0;
}
