/* libFuzzer target for the provider adapters (src/proxy/provider*.c): the input is one
 * upstream stream event for the OpenAI and the Ollama translators (with and without a model
 * rewrite, fed twice so the second call sees the state the first left), a whole answer for
 * both complete() functions, and an error body for provider_error_message.
 *
 * Invariants:
 *  - usage: prompt and completion counts within 0..1e12, total >= prompt + completion (so at
 *    most 2e12), whether reported upstream or estimated;
 *  - the relay output is always whole SSE events, each `[DONE]` or a JSON object; after
 *    relay_finish it ends with exactly one usage chunk and then `data: [DONE]`; nothing is
 *    written for a RELAY_ERROR;
 *  - r->error is NUL-terminated (it may be empty: an upstream {"error":""} says no more);
 *  - an error event built from r->error comes out (it is what the client is told);
 *  - complete() either fails with PX_EPARSE and a message, or writes a JSON object whose usage
 *    matches r->usage when privax wrote it;
 *  - provider_error_message always NUL-terminates within cap, and its text is valid UTF-8.
 * Everything is freed on every path, so LeakSanitizer sees any leak. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/util.h"
#include "http/sse.h"
#include "proxy/provider.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define COUNT_MAX       1000000000000LL
#define PROMPT_ESTIMATE 37

static void check_usage(const struct px_usage *u)
{
    if (u->prompt_tokens < 0 || u->prompt_tokens > COUNT_MAX || u->completion_tokens < 0 ||
        u->completion_tokens > COUNT_MAX ||
        u->total_tokens < u->prompt_tokens + u->completion_tokens ||
        u->total_tokens > 2 * COUNT_MAX) {
        abort();
    }
}

static void check_error_text(const struct relay *r)
{
    if (!memchr(r->error, '\0', sizeof(r->error))) {
        abort();
    }
}

struct events {
    size_t n;
    size_t usage;  /* events with a "usage" object */
    size_t done;   /* [DONE] events */
    int last_done; /* the last event was [DONE] */
    int bad;       /* an event that is neither [DONE] nor a JSON object, or one after [DONE] */
};

static int on_out_event(void *ud, const char *data, size_t len)
{
    struct events *e = ud;
    e->n++;
    if (e->last_done) {
        e->bad = 1; /* nothing may follow [DONE] */
    }
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        e->done++;
        e->last_done = 1;
        return 0;
    }
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!json_is_object(j)) {
        e->bad = 1;
    } else if (json_is_object(json_object_get(j, "usage"))) {
        e->usage++;
    }
    json_decref(j);
    return 0;
}

/* Parse the relay's output the way a client would. */
static struct events read_events(const struct buf *out)
{
    struct events e = {0};
    struct sse_parser p;
    sse_parser_init(&p, SSE_MODE_EVENT_STREAM, 1 << 24);
    if (sse_parser_feed(&p, out->data ? out->data : "", out->len, on_out_event, &e) != 0 ||
        sse_parser_pending(&p)) {
        e.bad = 1; /* output not made of whole events */
    }
    sse_parser_cleanup(&p);
    return e;
}

static void stream(const struct provider_ops *ops, int rewrite, const char *data, size_t len)
{
    struct relay r;
    struct buf out;
    relay_init(&r, ops, "client-model", rewrite, "fuzz-req");
    buf_init(&out, 1 << 24);
    enum relay_result res = RELAY_CONTINUE;
    for (int i = 0; i < 2 && res == RELAY_CONTINUE; i++) {
        size_t before = out.len;
        res = ops->stream_event(&r, data, len, &out);
        check_error_text(&r);
        /* An error writes nothing. (Its text may be empty: {"error":""} says no more.) */
        if (res == RELAY_ERROR && out.len != before) {
            abort();
        }
        if (res != RELAY_CONTINUE && res != RELAY_DONE && res != RELAY_ERROR) {
            abort();
        }
        if (r.usage.present) {
            check_usage(&r.usage);
        }
    }
    struct events e = read_events(&out);
    if (e.bad) {
        abort(); /* e.g. multi-line data forwarded with a raw LF */
    }
    if (e.usage != 0 || e.done != 0) {
        abort(); /* usage and [DONE] are written by relay_finish only */
    }
    if (res == RELAY_ERROR) {
        size_t before = out.len;
        relay_error_event(&out, "server_error", "upstream_error", r.error);
        if (out.len == before) {
            /* The client would not be told why the stream ended (once: jansson's error text
             * cut a UTF-8 character; corpus file crash-json-error-text-utf8). */
            abort();
        }
    } else {
        buf_reset(&out);
        relay_finish(&r, PROMPT_ESTIMATE, &out);
        check_usage(&r.usage);
        e = read_events(&out);
        if (e.bad || e.n != 2 || e.usage != 1) {
            abort(); /* exactly: one usage chunk, then [DONE] */
        }
        if (e.done != 1 || !e.last_done) {
            abort();
        }
    }
    buf_cleanup(&out);
}

static void complete(const struct provider_ops *ops, int rewrite, const char *body, size_t len)
{
    struct relay r;
    struct buf out;
    relay_init(&r, ops, "client-model", rewrite, "fuzz-req");
    buf_init(&out, 1 << 24);
    int rc = ops->complete(&r, body, len, PROMPT_ESTIMATE, &out);
    check_error_text(&r);
    if (rc != 0) {
        if (rc != PX_EPARSE || r.error[0] == '\0') {
            abort();
        }
    } else {
        check_usage(&r.usage);
        if (r.output_chars < 0) {
            abort();
        }
        json_t *j = json_loadb(out.data, out.len, 0, NULL);
        if (!json_is_object(j)) {
            abort(); /* complete() hands the client a JSON object */
        }
        json_t *u = json_object_get(j, "usage");
        if (!r.usage.present || ops == &provider_ollama) {
            /* privax wrote this usage block: it must say what will be billed */
            if (json_integer_value(json_object_get(u, "prompt_tokens")) != r.usage.prompt_tokens ||
                json_integer_value(json_object_get(u, "completion_tokens")) !=
                    r.usage.completion_tokens ||
                json_integer_value(json_object_get(u, "total_tokens")) != r.usage.total_tokens) {
                abort();
            }
        }
        json_decref(j);
    }
    buf_cleanup(&out);
}

static void error_message(const char *body, size_t len)
{
    static const size_t caps[] = {1, 2, 17, 256};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        char msg[300];
        memset(msg, 'Z', sizeof(msg));
        provider_error_message(body, len, msg, caps[i]);
        const char *nul = memchr(msg, '\0', caps[i]);
        if (!nul) {
            abort();
        }
        for (size_t k = caps[i]; k < sizeof(msg); k++) {
            if (msg[k] != 'Z') {
                abort(); /* wrote past cap */
            }
        }
        if (!px_utf8_valid(msg, (size_t)(nul - msg))) {
            abort(); /* the message goes into a JSON string */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    const char *s = (const char *)d;
    for (int rewrite = 0; rewrite < 2; rewrite++) {
        /* Only events the framing can produce: an event-stream event never holds a CR (it ends
         * a line), an NDJSON line never holds an LF. */
        if (!memchr(s, '\r', n)) {
            stream(&provider_openai, rewrite, s, n);
        }
        if (!memchr(s, '\n', n)) {
            stream(&provider_ollama, rewrite, s, n);
        }
        complete(&provider_openai, rewrite, s, n);
    }
    complete(&provider_ollama, 0, s, n);
    error_message(s, n);
    return 0;
}
