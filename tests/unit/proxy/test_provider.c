/* Provider adapter tests: usage extraction, upstream error messages, the OpenAI and Ollama
 * stream translators, relay_finish, complete() and build_request. Output is read back the way
 * a client would (SSE events parsed with jansson) rather than compared as long strings,
 * except where the contract is byte-identical passthrough. The recorded upstream answers
 * under tests/data/upstream also seed the fuzz_usage corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/util.h"
#include "http/sse.h"
#include "proxy/provider.h"

#define OUT_CAP (1u << 20)

/* The repo root, derived from this file's path so the test runs from any directory. */
static char root[1024];

static char *slurp(const char *rel, size_t *n)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/tests/data/upstream/%s", root, rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open %s\n", path);
        fail();
    }
    size_t cap = 1 << 16;
    char *b = malloc(cap);
    *n = fread(b, 1, cap - 1, f);
    fclose(f);
    b[*n] = '\0';
    return b;
}

static json_t *load(const char *s)
{
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    if (!j) {
        print_error("bad JSON in test: %s: %s\n", s, je.text);
        fail();
    }
    return j;
}

/* ---- reading relay output the way a client does ---- */

static int collect_event(void *ud, const char *data, size_t len)
{
    json_t *arr = ud;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        json_array_append_new(arr, json_string("[DONE]"));
        return 0;
    }
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        json_array_append_new(arr,
                              json_pack("{s:o}", "UNPARSEABLE", json_stringn_nocheck(data, len)));
        return 0;
    }
    json_array_append_new(arr, j);
    return 0;
}

/* The events in out, each a JSON object or the string "[DONE]"; an event that is not JSON
 * becomes {"UNPARSEABLE": data}. Fails the test if out does not end on an event boundary. */
static json_t *events_of(const struct buf *out)
{
    json_t *arr = json_array();
    struct sse_parser p;
    sse_parser_init(&p, SSE_MODE_EVENT_STREAM, OUT_CAP);
    int rc = sse_parser_feed(&p, out->data ? out->data : "", out->len, collect_event, arr);
    int pending = sse_parser_pending(&p);
    sse_parser_cleanup(&p);
    assert_int_equal(rc, 0);
    assert_int_equal(pending, 0);
    return arr;
}

static int is_done(const json_t *ev)
{
    return json_is_string(ev) && strcmp(json_string_value(ev), "[DONE]") == 0;
}

/* The value at path: dot-separated keys, digits index arrays. NULL when absent. */
static const json_t *at(const json_t *j, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const json_t *cur = j;
    for (char *tok = buf, *next; tok && cur; tok = next) {
        next = strchr(tok, '.');
        if (next) {
            *next++ = '\0';
        }
        if (json_is_array(cur)) {
            cur = json_array_get(cur, strtoul(tok, NULL, 10));
        } else {
            cur = json_object_get(cur, tok);
        }
    }
    return cur;
}

static const char *str_at(const json_t *j, const char *path)
{
    return json_string_value(at(j, path));
}

static json_int_t int_at(const json_t *j, const char *path)
{
    const json_t *v = at(j, path);
    if (!json_is_integer(v)) {
        print_error("%s is not an integer\n", path);
        fail();
    }
    return json_integer_value(v);
}

/* Check a usage chunk: {id, object: chat.completion.chunk, model, choices: [], usage}. */
static void expect_usage_chunk(const json_t *ev, const char *id, const char *model, int64_t p,
                               int64_t c, int64_t t)
{
    assert_true(json_is_object(ev));
    assert_string_equal(str_at(ev, "object"), "chat.completion.chunk");
    assert_string_equal(str_at(ev, "id"), id);
    assert_string_equal(str_at(ev, "model"), model);
    assert_true(json_is_array(at(ev, "choices")));
    assert_int_equal(json_array_size(at(ev, "choices")), 0);
    assert_int_equal(int_at(ev, "usage.prompt_tokens"), p);
    assert_int_equal(int_at(ev, "usage.completion_tokens"), c);
    assert_int_equal(int_at(ev, "usage.total_tokens"), t);
}

/* Count events with a "usage" object in out. */
static size_t usage_chunks(const json_t *evs)
{
    size_t n = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        n += json_is_object(json_object_get(ev, "usage"));
    }
    return n;
}

/* ---- provider_usage_from_openai ---- */

static const struct {
    const char *json;
    int rc;
    int64_t p, c, t;
} usage_cases[] = {
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}", 0, 10, 5, 15},
    {"{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}", 0, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"completion_tokens\":5}", 0, 10, 5, 15}, /* total recomputed */
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":3}", 0, 10, 5, 15},
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":0}", 0, 10, 5, 15},
    /* total above the parts (reasoning tokens, cached prompt): kept */
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":40}", 0, 10, 5, 40},
    /* extra fields are ignored */
    {"{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,"
     "\"prompt_tokens_details\":{\"cached_tokens\":1}}",
     0, 1, 2, 3},
    {"{\"prompt_tokens\":1000000000000,\"completion_tokens\":1000000000000,"
     "\"total_tokens\":1000000000000}",
     0, 1000000000000LL, 1000000000000LL, 2000000000000LL},
    {"{\"completion_tokens\":5,\"total_tokens\":15}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"total_tokens\":15}", PX_EPARSE, 0, 0, 0},
    {"{}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":-1,\"completion_tokens\":5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":1,\"completion_tokens\":-5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":1,\"completion_tokens\":5,\"total_tokens\":-6}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":\"10\",\"completion_tokens\":5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"completion_tokens\":\"5\"}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":\"15\"}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10.0,\"completion_tokens\":5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"completion_tokens\":5.5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15.0}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":1000000000001,\"completion_tokens\":5}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":1,\"completion_tokens\":1000000000001}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":1000000000001}", PX_EPARSE, 0,
     0, 0},
    {"{\"prompt_tokens\":9223372036854775807,\"completion_tokens\":1}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":null,\"completion_tokens\":1}", PX_EPARSE, 0, 0, 0},
    {"{\"prompt_tokens\":true,\"completion_tokens\":1}", PX_EPARSE, 0, 0, 0},
    {"[10,5,15]", PX_EPARSE, 0, 0, 0},
    {"null", PX_EPARSE, 0, 0, 0},
    {"\"usage\"", PX_EPARSE, 0, 0, 0},
};

static void test_usage_from_openai(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
        json_t *j = json_loads(usage_cases[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(j);
        struct px_usage u = {.prompt_tokens = 77, .completion_tokens = 77, .total_tokens = 77};
        int rc = provider_usage_from_openai(j, &u);
        json_decref(j);
        if (rc != usage_cases[i].rc) {
            print_error("case %zu %s: rc %d want %d\n", i, usage_cases[i].json, rc,
                        usage_cases[i].rc);
            fail();
        }
        if (rc == 0) {
            assert_int_equal(u.present, 1);
            assert_int_equal(u.prompt_tokens, usage_cases[i].p);
            assert_int_equal(u.completion_tokens, usage_cases[i].c);
            assert_int_equal(u.total_tokens, usage_cases[i].t);
            assert_true(u.total_tokens >= u.prompt_tokens + u.completion_tokens);
        } else {
            /* A refused block leaves the previous counts alone. */
            assert_int_equal(u.prompt_tokens, 77);
            assert_int_equal(u.present, 0);
        }
    }
    struct px_usage u = {0};
    assert_int_equal(provider_usage_from_openai(NULL, &u), PX_EPARSE);
}

/* ---- provider_error_message ---- */

static const struct {
    const char *file; /* under tests/data/upstream, or NULL to use body */
    const char *body;
    size_t cap;
    const char *want;
} errmsg_cases[] = {
    {"error_openai.json", NULL, 256, "The model `gpt-5` does not exist"},
    {"error_vllm.json", NULL, 256, "This model's maximum context length is 4096 tokens."},
    {"error_ollama.json", NULL, 256, "model \"llama9\" not found, try pulling it first"},
    {"error_html.txt", NULL, 256,
     "<html>  <head><title>502 Bad Gateway</title></head>  <body> nginx</body>  </html>  "},
    {"error_plain.txt", NULL, 256, "Internal Server Error"},
    {"error_plain.txt", NULL, 8, "Interna"},
    {"error_plain.txt", NULL, 1, ""},
    {"error_openai.json", NULL, 10, "The model"},
    {NULL, "", 256, ""},
    {NULL, "{\"error\":{\"code\":500}}", 256, "{\"error\":{\"code\":500}}"},
    {NULL, "{\"error\":{\"message\":42}}", 256, "{\"error\":{\"message\":42}}"},
    {NULL, "{\"error\":42,\"message\":\"vllm style wins\"}", 256, "vllm style wins"},
    {NULL, "{\"error\":\"\"}", 256, ""},
    {NULL, "[\"error\",\"x\"]", 256, "[\"error\",\"x\"]"},
    {NULL, "\"just a string\"", 256, "\"just a string\""},
    {NULL, "{\"detail\":\"Not Found\"}", 256, "{\"detail\":\"Not Found\"}"},
    {NULL, "\x01\x02\x7f\xc3\xa9ok", 256, "     ok"},
    {NULL, "{\"error\":\"h\\u00e9 \\u65e5\"}", 256, "h\xc3\xa9 \xe6\x97\xa5"},
};

static void test_error_message(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(errmsg_cases) / sizeof(errmsg_cases[0]); i++) {
        size_t n;
        char *body;
        if (errmsg_cases[i].file) {
            body = slurp(errmsg_cases[i].file, &n);
        } else {
            n = strlen(errmsg_cases[i].body);
            body = malloc(n + 1);
            memcpy(body, errmsg_cases[i].body, n + 1);
        }
        char msg[512];
        memset(msg, 'Z', sizeof(msg));
        provider_error_message(body, n, msg, errmsg_cases[i].cap);
        free(body);
        /* Nothing written past cap. */
        for (size_t k = errmsg_cases[i].cap; k < sizeof(msg); k++) {
            assert_int_equal(msg[k], 'Z');
        }
        if (strcmp(msg, errmsg_cases[i].want) != 0) {
            print_error("case %zu: got \"%s\" want \"%s\"\n", i, msg, errmsg_cases[i].want);
            fail();
        }
    }
}

static void test_error_message_prefix_capped(void **state)
{
    (void)state;
    char body[1000];
    memset(body, 'x', sizeof(body));
    char msg[512];
    provider_error_message(body, sizeof(body), msg, sizeof(msg));
    assert_int_equal(strlen(msg), 200); /* a printable prefix, not the whole page */
    /* NUL bytes in a non-JSON body become spaces, and do not end the scan. */
    provider_error_message("a\0b", 3, msg, sizeof(msg));
    assert_string_equal(msg, "a b");
}

/* The message is sent to the client inside a JSON error (http_resp_error, relay_error_event),
 * so it must stay valid UTF-8 when it is cut to cap: a multi-byte character straddling the
 * cut must be dropped whole. */
static void test_error_message_truncation_keeps_utf8(void **state)
{
    (void)state;
    char body[1024];
    int n = snprintf(body, sizeof(body), "{\"error\":\"");
    for (int i = 0; i < 254; i++) {
        body[n++] = 'a';
    }
    for (int i = 0; i < 10; i++) {
        n += snprintf(body + n, sizeof(body) - (size_t)n, "\xc3\xa9");
    }
    n += snprintf(body + n, sizeof(body) - (size_t)n, "\"}");
    char msg[256];
    provider_error_message(body, (size_t)n, msg, sizeof(msg));
    assert_true(strlen(msg) >= 250);
    assert_true(px_utf8_valid(msg, strlen(msg)));
}

/* ---- provider_utf8_chars and relay_error_event ---- */

static void test_utf8_chars(void **state)
{
    (void)state;
    assert_int_equal(provider_utf8_chars("", 0), 0);
    assert_int_equal(provider_utf8_chars("abc", 3), 3);
    assert_int_equal(provider_utf8_chars("h\xc3\xa9llo", 6), 5);
    assert_int_equal(provider_utf8_chars("\xe6\x97\xa5\xe6\x9c\xac", 6), 2);
    assert_int_equal(provider_utf8_chars("\xf0\x9f\x8c\x8d!", 5), 2);
}

static void test_relay_error_event(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, OUT_CAP);
    relay_error_event(&out, "server_error", "upstream_error", "backend gpu0: boom");
    relay_error_event(&out, "server_error", NULL, "no code");
    json_t *evs = events_of(&out);
    assert_int_equal(json_array_size(evs), 2);
    json_t *e0 = json_array_get(evs, 0);
    assert_string_equal(str_at(e0, "error.message"), "backend gpu0: boom");
    assert_string_equal(str_at(e0, "error.type"), "server_error");
    assert_string_equal(str_at(e0, "error.code"), "upstream_error");
    assert_true(json_is_null(at(json_array_get(evs, 1), "error.code")));
    json_decref(evs);
    buf_cleanup(&out);
}

/* ---- OpenAI stream_event ---- */

struct fx {
    struct relay r;
    struct buf out;
};

static void fx_init(struct fx *f, const struct provider_ops *ops, int rewrite)
{
    relay_init(&f->r, ops, "client-model", rewrite, "req-1");
    buf_init(&f->out, OUT_CAP);
}

static void fx_cleanup(struct fx *f)
{
    buf_cleanup(&f->out);
}

static enum relay_result ev(struct fx *f, const char *data)
{
    return f->r.ops->stream_event(&f->r, data, strlen(data), &f->out);
}

static void test_relay_init(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_string_equal(f.r.id, "chatcmpl-req-1");
    assert_ptr_equal(f.r.ops, &provider_openai);
    assert_string_equal(f.r.model, "client-model");
    assert_true(f.r.created > 1600000000);
    assert_int_equal(f.r.usage.present, 0);
    assert_int_equal(f.r.content_chunks, 0);
    fx_cleanup(&f);
    assert_string_equal(provider_openai.name, "openai");
    assert_string_equal(provider_openai.chat_path, "/v1/chat/completions");
    assert_int_equal(provider_openai.stream_mode, SSE_MODE_EVENT_STREAM);
    assert_string_equal(provider_ollama.name, "ollama");
    assert_string_equal(provider_ollama.chat_path, "/api/chat");
    assert_int_equal(provider_ollama.stream_mode, SSE_MODE_NDJSON);
}

static void test_openai_done(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, "[DONE]"), RELAY_DONE);
    assert_int_equal(f.r.done, 1);
    assert_int_equal(f.out.len, 0);
    fx_cleanup(&f);
}

static void test_openai_passthrough_identical(void **state)
{
    (void)state;
    static const char *const chunks[] = {
        "{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,"
        "\"model\":\"backend-name\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"\"},\"finish_reason\":null}]}",
        /* odd spacing and key order must survive untouched */
        "{ \"choices\" : [ {\"delta\": {\"content\": \"h\\u00e9llo \xf0\x9f\x8c\x8d\"},"
        " \"index\":0 } ], \"id\":\"chatcmpl-other\", \"usage\": null }",
        "{\"id\":\"chatcmpl-up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
        "\"length\"}]}",
    };
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    struct buf want;
    buf_init(&want, OUT_CAP);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(ev(&f, chunks[i]), RELAY_CONTINUE);
        buf_printf(&want, "data: %s\n\n", chunks[i]);
    }
    assert_int_equal(f.out.len, want.len);
    assert_memory_equal(f.out.data, want.data, want.len);
    assert_int_equal(f.r.role_sent, 1);
    assert_int_equal(f.r.content_chunks, 1); /* the empty role content does not count */
    assert_int_equal(f.r.output_chars, 7);   /* h é l l o space 🌍 */
    assert_string_equal(f.r.finish_reason, "length");
    assert_int_equal(f.r.id_from_upstream, 1);
    assert_string_equal(f.r.id, "chatcmpl-up"); /* the first id wins */
    assert_int_equal(f.r.usage.present, 0);
    buf_cleanup(&want);
    fx_cleanup(&f);
}

static void test_openai_rewrite_model(void **state)
{
    (void)state;
    const char *chunk = "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,"
                        "\"model\":\"Qwen/Qwen2.5-7B\",\"choices\":[{\"index\":0,\"delta\":{"
                        "\"content\":\"hi\"},\"finish_reason\":null}],\"system_fingerprint\":"
                        "\"fp\"}";
    struct fx f;
    fx_init(&f, &provider_openai, 1);
    assert_int_equal(ev(&f, chunk), RELAY_CONTINUE);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 1);
    json_t *want = load(chunk);
    json_object_set_new(want, "model", json_string("client-model"));
    assert_true(json_equal(json_array_get(evs, 0), want));
    json_decref(want);
    json_decref(evs);
    assert_int_equal(f.r.content_chunks, 1);
    fx_cleanup(&f);
}

static void test_openai_usage_chunk_absorbed(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, "{\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":17,"
                            "\"completion_tokens\":4,\"total_tokens\":21}}"),
                     RELAY_CONTINUE);
    assert_int_equal(f.out.len, 0); /* not forwarded */
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.usage.prompt_tokens, 17);
    assert_int_equal(f.r.usage.completion_tokens, 4);
    assert_int_equal(f.r.usage.total_tokens, 21);
    /* A later usage block replaces the earlier one (the last one reported wins). */
    assert_int_equal(ev(&f, "{\"choices\":[],\"usage\":{\"prompt_tokens\":17,"
                            "\"completion_tokens\":9}}"),
                     RELAY_CONTINUE);
    assert_int_equal(f.r.usage.completion_tokens, 9);
    assert_int_equal(f.r.usage.total_tokens, 26);
    assert_int_equal(f.out.len, 0);
    fx_cleanup(&f);
}

static void test_openai_continuous_usage_stripped(void **state)
{
    (void)state;
    /* vLLM continuous_usage_stats: usage on every content chunk. It is recorded, and removed
     * from the forwarded chunk so the client sees usage only once, at the end. */
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, "{\"id\":\"c\",\"model\":\"b\",\"choices\":[{\"index\":0,\"delta\":{"
                            "\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":3,"
                            "\"completion_tokens\":1,\"total_tokens\":4}}"),
                     RELAY_CONTINUE);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 1);
    json_t *e = json_array_get(evs, 0);
    assert_null(json_object_get(e, "usage"));
    assert_string_equal(str_at(e, "model"), "client-model");
    assert_string_equal(str_at(e, "choices.0.delta.content"), "x");
    json_decref(evs);
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.usage.total_tokens, 4);
    fx_cleanup(&f);
}

static const struct {
    const char *data;
    const char *err_prefix; /* r.error must start with this */
    int err_exact;          /* ... and be exactly it */
} openai_err_cases[] = {
    {"{\"error\":{\"message\":\"CUDA out of memory\",\"type\":\"InternalServerError\"}}",
     "CUDA out of memory", 1},
    {"{\"object\":\"error\",\"message\":\"vllm says no\",\"error\":{}}", "vllm says no", 1},
    {"{\"error\":\"plain string\"}", "plain string", 1},
    {"{\"choices\":[{\"delta\":{\"content\":\"x\"}}", "malformed stream chunk from backend: ", 0},
    {"not json", "malformed stream chunk from backend: ", 0},
    {"", "malformed stream chunk from backend: ", 0},
    {"[1,2]", "malformed stream chunk from backend", 1},
    {"\"str\"", "malformed stream chunk from backend: ", 0},
    {"{\"id\":\"c\"}", "stream chunk from backend has no choices array", 1},
    {"{\"choices\":{}}", "stream chunk from backend has no choices array", 1},
    {"{\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1}}",
     "backend sent an invalid usage block", 1},
    {"{\"choices\":[],\"usage\":{\"prompt_tokens\":1e3,\"completion_tokens\":1}}",
     "backend sent an invalid usage block", 1},
    {"{\"choices\":[],\"usage\":{\"prompt_tokens\":2000000000000,\"completion_tokens\":1}}",
     "backend sent an invalid usage block", 1},
};

static void test_openai_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(openai_err_cases) / sizeof(openai_err_cases[0]); i++) {
        struct fx f;
        fx_init(&f, &provider_openai, 0);
        enum relay_result res = ev(&f, openai_err_cases[i].data);
        const char *pfx = openai_err_cases[i].err_prefix;
        int ok = res == RELAY_ERROR && f.out.len == 0 &&
                 strncmp(f.r.error, pfx, strlen(pfx)) == 0 &&
                 (openai_err_cases[i].err_exact ? strcmp(f.r.error, pfx) == 0
                                                : strlen(f.r.error) > strlen(pfx)) &&
                 px_utf8_valid(f.r.error, strlen(f.r.error));
        if (!ok) {
            print_error("case %zu %s: result %d out %zu error \"%s\"\n", i,
                        openai_err_cases[i].data, res, f.out.len, f.r.error);
        }
        fx_cleanup(&f);
        assert_true(ok);
    }
}

/* An upstream error message of any length (here 600 bytes): r->error holds a prefix of the
 * message itself, never the raw JSON around it. */
static void test_openai_long_error_message(void **state)
{
    (void)state;
    char data[1024];
    int n = snprintf(data, sizeof(data), "{\"error\":{\"message\":\"");
    memset(data + n, 'x', 600);
    n += 600;
    snprintf(data + n, sizeof(data) - (size_t)n, "\",\"type\":\"server_error\"}}");
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, data), RELAY_ERROR);
    int ok = strncmp(f.r.error, "xxxxxxxxxx", 10) == 0;
    if (!ok) {
        print_error("r.error = \"%.60s...\"\n", f.r.error);
    }
    fx_cleanup(&f);
    assert_true(ok);
}

/* A backend may split one JSON chunk over several data: lines (the parser joins them with
 * LF). Forwarded as is, the LF would end the client's data line and the rest would be read
 * as another field: the client must get the same JSON back. */
static void test_openai_multiline_data_reframed(void **state)
{
    (void)state;
    const char *data = "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],"
                       "\n\"object\":\"chat.completion.chunk\"}";
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, data), RELAY_CONTINUE);
    json_t *evs = events_of(&f.out);
    json_t *want = load(data);
    int ok = json_array_size(evs) == 1 && json_equal(json_array_get(evs, 0), want);
    if (!ok) {
        print_error("client reads: %s\n", f.out.data);
    }
    json_decref(want);
    json_decref(evs);
    fx_cleanup(&f);
    assert_true(ok);
}

static void test_openai_content_counting(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\"}}]}");
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\ude00\"}}]}"); /* escaped 😀 */
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"\"}}]}");
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":null}}]}");
    ev(&f, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}");
    ev(&f, "{\"choices\":[{}]}");
    assert_int_equal(f.r.content_chunks, 2);
    assert_int_equal(f.r.output_chars, 4);
    assert_int_equal(f.r.role_sent, 0);
    fx_cleanup(&f);
}

/* ---- Ollama stream_event ---- */

static void expect_ollama_chunk(const json_t *e, const char *id, const json_t *delta,
                                const char *finish)
{
    assert_true(json_is_object(e));
    assert_string_equal(str_at(e, "object"), "chat.completion.chunk");
    assert_string_equal(str_at(e, "id"), id);
    assert_string_equal(str_at(e, "model"), "client-model");
    assert_true(json_is_integer(at(e, "created")));
    assert_int_equal(json_array_size(at(e, "choices")), 1);
    assert_int_equal(int_at(e, "choices.0.index"), 0);
    assert_true(json_equal(at(e, "choices.0.delta"), delta));
    if (finish) {
        assert_string_equal(str_at(e, "choices.0.finish_reason"), finish);
    } else {
        assert_true(json_is_null(at(e, "choices.0.finish_reason")));
    }
}

static void test_ollama_stream(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    assert_int_equal(ev(&f, "{\"model\":\"q\",\"message\":{\"role\":\"assistant\",\"content\":"
                            "\"Hel\"},\"done\":false}"),
                     RELAY_CONTINUE);
    assert_int_equal(ev(&f, "{\"model\":\"q\",\"message\":{\"role\":\"assistant\",\"content\":"
                            "\"lo \xe4\xb8\x96\"},\"done\":false}"),
                     RELAY_CONTINUE);
    assert_int_equal(ev(&f, "{\"model\":\"q\",\"message\":{\"role\":\"assistant\",\"content\":"
                            "\"\"},\"done\":false}"),
                     RELAY_CONTINUE);
    assert_int_equal(ev(&f, "{\"model\":\"q\",\"message\":{\"role\":\"assistant\",\"content\":"
                            "\"\"},\"done\":true,\"done_reason\":\"stop\","
                            "\"prompt_eval_count\":26,\"eval_count\":2}"),
                     RELAY_DONE);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 4); /* role, Hel, lo 世, finish */
    json_t *d = load("{\"role\":\"assistant\",\"content\":\"\"}");
    expect_ollama_chunk(json_array_get(evs, 0), "chatcmpl-req-1", d, NULL);
    json_decref(d);
    d = load("{\"content\":\"Hel\"}");
    expect_ollama_chunk(json_array_get(evs, 1), "chatcmpl-req-1", d, NULL);
    json_decref(d);
    d = load("{\"content\":\"lo \xe4\xb8\x96\"}");
    expect_ollama_chunk(json_array_get(evs, 2), "chatcmpl-req-1", d, NULL);
    json_decref(d);
    d = json_object();
    expect_ollama_chunk(json_array_get(evs, 3), "chatcmpl-req-1", d, "stop");
    json_decref(d);
    json_decref(evs);
    assert_int_equal(f.r.done, 1);
    assert_int_equal(f.r.role_sent, 1);
    assert_int_equal(f.r.content_chunks, 2);
    assert_int_equal(f.r.output_chars, 7);
    assert_string_equal(f.r.finish_reason, "stop");
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.usage.prompt_tokens, 26);
    assert_int_equal(f.r.usage.completion_tokens, 2);
    assert_int_equal(f.r.usage.total_tokens, 28);
    fx_cleanup(&f);
}

static void test_ollama_done_variants(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *finish;
        int present;
        int64_t p, c;
    } cases[] = {
        {"{\"done\":true,\"done_reason\":\"length\",\"prompt_eval_count\":5,\"eval_count\":9}",
         "length", 1, 5, 9},
        {"{\"done\":true,\"done_reason\":\"load\"}", "stop", 0, 0, 0},
        {"{\"done\":true}", "stop", 0, 0, 0},
        {"{\"done\":true,\"eval_count\":9}", "stop", 0, 0, 0}, /* prompt cached: no count */
        {"{\"done\":true,\"prompt_eval_count\":5,\"eval_count\":-1}", "stop", 0, 0, 0},
        {"{\"done\":true,\"prompt_eval_count\":\"5\",\"eval_count\":1}", "stop", 0, 0, 0},
        {"{\"done\":true,\"prompt_eval_count\":0,\"eval_count\":0}", "stop", 1, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        fx_init(&f, &provider_ollama, 0);
        assert_int_equal(ev(&f, cases[i].line), RELAY_DONE);
        assert_string_equal(f.r.finish_reason, cases[i].finish);
        assert_int_equal(f.r.usage.present, cases[i].present);
        if (cases[i].present) {
            assert_int_equal(f.r.usage.prompt_tokens, cases[i].p);
            assert_int_equal(f.r.usage.completion_tokens, cases[i].c);
            assert_int_equal(f.r.usage.total_tokens, cases[i].p + cases[i].c);
        }
        json_t *evs = events_of(&f.out);
        assert_int_equal(json_array_size(evs), 2); /* role chunk, then the finish chunk */
        assert_string_equal(str_at(json_array_get(evs, 1), "choices.0.finish_reason"),
                            cases[i].finish);
        json_decref(evs);
        fx_cleanup(&f);
    }
}

static void test_ollama_errors(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *err_prefix;
        int exact;
    } cases[] = {
        {"{\"error\":\"model is loading\"}", "model is loading", 1},
        {"{\"error\":{\"code\":1}}", "backend reported an error", 1},
        {"{\"error\":null}", "backend reported an error", 1},
        {"{\"message\":{\"content\":\"x\"}", "malformed stream line from backend: ", 0},
        {"garbage", "malformed stream line from backend: ", 0},
        {"[]", "malformed stream line from backend", 1},
        {"42", "malformed stream line from backend: ", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        fx_init(&f, &provider_ollama, 0);
        enum relay_result res = ev(&f, cases[i].line);
        const char *pfx = cases[i].err_prefix;
        int ok = res == RELAY_ERROR && f.out.len == 0 &&
                 strncmp(f.r.error, pfx, strlen(pfx)) == 0 &&
                 (cases[i].exact ? strcmp(f.r.error, pfx) == 0 : strlen(f.r.error) > strlen(pfx));
        if (!ok) {
            print_error("case %zu %s: result %d out %zu error \"%s\"\n", i, cases[i].line, res,
                        f.out.len, f.r.error);
        }
        fx_cleanup(&f);
        assert_true(ok);
    }
    /* An error after content: the role and content already went out; nothing more. */
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    assert_int_equal(ev(&f, "{\"message\":{\"content\":\"a\"},\"done\":false}"), RELAY_CONTINUE);
    size_t before = f.out.len;
    assert_int_equal(ev(&f, "{\"error\":\"boom\"}"), RELAY_ERROR);
    assert_int_equal(f.out.len, before);
    assert_string_equal(f.r.error, "boom");
    fx_cleanup(&f);
}

/* A long Ollama error with multi-byte characters: r.error is cut to 255 bytes and then sent
 * in a JSON error event, so the cut must not split a character; and the event must come out. */
static void test_ollama_long_utf8_error(void **state)
{
    (void)state;
    char line[1024];
    /* "ab" then 3-byte characters: byte 255 falls inside one. */
    int n = snprintf(line, sizeof(line), "{\"error\":\"ab");
    for (int i = 0; i < 100; i++) {
        n += snprintf(line + n, sizeof(line) - (size_t)n, "\xe6\x97\xa5");
    }
    snprintf(line + n, sizeof(line) - (size_t)n, "\"}");
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    assert_int_equal(ev(&f, line), RELAY_ERROR);
    int valid = px_utf8_valid(f.r.error, strlen(f.r.error));
    relay_error_event(&f.out, "server_error", "upstream_error", f.r.error);
    json_t *evs = events_of(&f.out);
    size_t nev = json_array_size(evs);
    json_decref(evs);
    fx_cleanup(&f);
    if (!valid || nev != 1) {
        print_error("r.error valid UTF-8: %d; error events written: %zu\n", valid, nev);
    }
    assert_true(valid);
    assert_int_equal(nev, 1);
}

/* jansson's error text quotes the bytes near the error and may cut a UTF-8 character
 * ('invalid escape near \'"\\<first byte of 日>\''). r->error ends up in a JSON error event (or
 * a JSON error body), so it must be valid UTF-8 whatever the upstream sent; found by
 * fuzz_usage with the input "\\\xc6\x97. */
static void test_json_error_text_is_utf8(void **state)
{
    (void)state;
    static const char *const inputs[] = {
        "\"\\\xc6\x97",
        "{\"choices\":[{\"delta\":{\"content\":\"\\\xe6\x97\xa5\"}}]}",
        "{\"message\":{\"content\":\"ok \\\xf0\x9f\x98\x80\"}}",
    };
    const struct provider_ops *ops[] = {&provider_openai, &provider_ollama};
    int bad = 0;
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        for (size_t k = 0; k < 2; k++) {
            struct fx f;
            fx_init(&f, ops[k], 0);
            assert_int_equal(ev(&f, inputs[i]), RELAY_ERROR);
            int valid = px_utf8_valid(f.r.error, strlen(f.r.error));
            relay_error_event(&f.out, "server_error", "upstream_error", f.r.error);
            int written = f.out.len > 0;
            if (!valid || !written) {
                print_error("%s stream_event(%s): error \"%s\" valid %d, error event written %d\n",
                            ops[k]->name, inputs[i], f.r.error, valid, written);
                bad++;
            }
            fx_cleanup(&f);

            fx_init(&f, ops[k], 0);
            assert_int_equal(ops[k]->complete(&f.r, inputs[i], strlen(inputs[i]), 5, &f.out),
                             PX_EPARSE);
            if (!px_utf8_valid(f.r.error, strlen(f.r.error))) {
                print_error("%s complete(%s): error \"%s\" is not valid UTF-8\n", ops[k]->name,
                            inputs[i], f.r.error);
                bad++;
            }
            fx_cleanup(&f);
        }
    }
    assert_int_equal(bad, 0);
}

/* ---- relay_finish ---- */

static void test_finish_estimated(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}");
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"b\"}}]}");
    ev(&f, "{\"choices\":[{\"delta\":{\"content\":\"c\"}}]}");
    buf_reset(&f.out);
    relay_finish(&f.r, 10, &f.out);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 2);
    expect_usage_chunk(json_array_get(evs, 0), "chatcmpl-req-1", "client-model", 10, 3, 13);
    assert_true(is_done(json_array_get(evs, 1)));
    json_decref(evs);
    assert_int_equal(f.r.usage.present, 0);
    assert_int_equal(f.r.usage.total_tokens, 13);
    /* The output ends exactly with the [DONE] event. */
    const char *tail = "data: [DONE]\n\n";
    assert_memory_equal(f.out.data + f.out.len - strlen(tail), tail, strlen(tail));
    fx_cleanup(&f);
}

static void test_finish_with_upstream_usage(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    ev(&f, "{\"id\":\"chatcmpl-backend\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}");
    ev(&f, "{\"id\":\"chatcmpl-backend\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,"
           "\"completion_tokens\":50,\"total_tokens\":150}}");
    buf_reset(&f.out);
    relay_finish(&f.r, 10, &f.out);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 2);
    /* Upstream counts, and the backend's chunk id. */
    expect_usage_chunk(json_array_get(evs, 0), "chatcmpl-backend", "client-model", 100, 50, 150);
    assert_true(is_done(json_array_get(evs, 1)));
    json_decref(evs);
    assert_int_equal(f.r.usage.present, 1);
    fx_cleanup(&f);
}

static void test_finish_nothing_relayed(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    relay_finish(&f.r, 0, &f.out);
    json_t *evs = events_of(&f.out);
    assert_int_equal(json_array_size(evs), 2);
    expect_usage_chunk(json_array_get(evs, 0), "chatcmpl-req-1", "client-model", 0, 0, 0);
    assert_true(is_done(json_array_get(evs, 1)));
    json_decref(evs);
    fx_cleanup(&f);
}

/* The backend's id is copied into a 64-byte field for the closing chunk; an id that does not
 * fit must not make the closing usage chunk disappear. */
static void test_finish_long_backend_id(void **state)
{
    (void)state;
    char chunk[512];
    char id[128];
    memset(id, 'a', 62);
    memcpy(id + 62, "\xc3\xa9\xc3\xa9", 5); /* "é" straddles byte 63 */
    snprintf(chunk, sizeof(chunk), "{\"id\":\"%s\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}",
             id);
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(ev(&f, chunk), RELAY_CONTINUE);
    buf_reset(&f.out);
    relay_finish(&f.r, 4, &f.out);
    json_t *evs = events_of(&f.out);
    size_t n = json_array_size(evs);
    size_t nu = usage_chunks(evs);
    json_decref(evs);
    fx_cleanup(&f);
    if (n != 2 || nu != 1) {
        print_error("events %zu, usage chunks %zu (want 2 and 1)\n", n, nu);
    }
    assert_int_equal(nu, 1);
    assert_int_equal(n, 2);
}

/* ---- recorded streams replayed through parser + adapter + relay_finish ---- */

struct replay {
    struct fx f;
    enum relay_result last;
    size_t events_in;
};

static int replay_cb(void *ud, const char *data, size_t len)
{
    struct replay *rp = ud;
    rp->events_in++;
    rp->last = rp->f.r.ops->stream_event(&rp->f.r, data, len, &rp->f.out);
    return rp->last != RELAY_CONTINUE;
}

static void replay(struct replay *rp, const struct provider_ops *ops, const char *file, int rewrite,
                   int64_t prompt_estimate)
{
    memset(rp, 0, sizeof(*rp));
    fx_init(&rp->f, ops, rewrite);
    size_t n;
    char *in = slurp(file, &n);
    struct sse_parser p;
    sse_parser_init(&p, ops->stream_mode, 1 << 16);
    /* Three bytes at a time, as a slow network would deliver it. */
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += 3) {
        rc = sse_parser_feed(&p, in + off, n - off < 3 ? n - off : 3, replay_cb, rp);
    }
    sse_parser_cleanup(&p);
    free(in);
    if (rp->last == RELAY_DONE) {
        relay_finish(&rp->f.r, prompt_estimate, &rp->f.out);
    }
}

static void test_replay_openai(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_openai, "openai_stream.sse", 0, 99);
    assert_int_equal(rp.last, RELAY_DONE);
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 5); /* 3 content chunks, usage, [DONE] */
    assert_int_equal(usage_chunks(evs), 1);
    /* The content chunks are forwarded byte for byte. */
    size_t n;
    char *in = slurp("openai_stream.sse", &n);
    const char *cut = strstr(in, "data: {\"id\":\"chatcmpl-v1\",\"object\":\"chat.completion."
                                 "chunk\",\"created\":1733000000,\"model\":\"Qwen/Qwen2.5-7B-"
                                 "Instruct\",\"choices\":[],");
    assert_non_null(cut);
    size_t head = (size_t)(cut - in);
    assert_true(rp.f.out.len > head);
    assert_memory_equal(rp.f.out.data, in, head);
    free(in);
    expect_usage_chunk(json_array_get(evs, 3), "chatcmpl-v1", "client-model", 17, 4, 21);
    assert_true(is_done(json_array_get(evs, 4)));
    assert_int_equal(rp.f.r.content_chunks, 2);
    assert_int_equal(rp.f.r.output_chars, 5 + 8); /* "Hello", " wörld 🌍" */
    assert_string_equal(rp.f.r.finish_reason, "stop");
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_openai_rewrite(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_openai, "openai_stream.sse", 1, 99);
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 5);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(str_at(json_array_get(evs, i), "model"), "client-model");
    }
    assert_int_equal(usage_chunks(evs), 1);
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_openai_nousage(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_openai, "openai_stream_nousage.sse", 0, 30);
    assert_int_equal(rp.last, RELAY_DONE);
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 6); /* role, a, b, finish, usage, [DONE] */
    expect_usage_chunk(json_array_get(evs, 4), "chatcmpl-n1", "client-model", 30, 2, 32);
    assert_true(is_done(json_array_get(evs, 5)));
    assert_int_equal(usage_chunks(evs), 1);
    assert_string_equal(rp.f.r.finish_reason, "length");
    assert_int_equal(rp.f.r.usage.present, 0);
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_openai_error(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_openai, "openai_stream_error.sse", 0, 30);
    assert_int_equal(rp.last, RELAY_ERROR);
    assert_int_equal(rp.events_in, 2);
    assert_string_equal(rp.f.r.error, "CUDA out of memory");
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 1); /* only the content before the error */
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_ollama(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_ollama, "ollama_stream.ndjson", 0, 30);
    assert_int_equal(rp.last, RELAY_DONE);
    json_t *evs = events_of(&rp.f.out);
    /* role, "Hel", "lo 世界", finish, usage, [DONE] */
    assert_int_equal(json_array_size(evs), 6);
    assert_string_equal(str_at(json_array_get(evs, 0), "choices.0.delta.role"), "assistant");
    assert_string_equal(str_at(json_array_get(evs, 1), "choices.0.delta.content"), "Hel");
    assert_string_equal(str_at(json_array_get(evs, 2), "choices.0.delta.content"),
                        "lo \xe4\xb8\x96\xe7\x95\x8c");
    assert_string_equal(str_at(json_array_get(evs, 3), "choices.0.finish_reason"), "stop");
    expect_usage_chunk(json_array_get(evs, 4), "chatcmpl-req-1", "client-model", 26, 2, 28);
    assert_true(is_done(json_array_get(evs, 5)));
    assert_int_equal(usage_chunks(evs), 1);
    assert_int_equal(rp.f.r.output_chars, 3 + 5);
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_ollama_nocounts(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_ollama, "ollama_stream_nocounts.ndjson", 0, 30);
    assert_int_equal(rp.last, RELAY_DONE);
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 6);
    assert_string_equal(str_at(json_array_get(evs, 3), "choices.0.finish_reason"), "length");
    expect_usage_chunk(json_array_get(evs, 4), "chatcmpl-req-1", "client-model", 30, 2, 32);
    assert_int_equal(rp.f.r.usage.present, 0);
    json_decref(evs);
    fx_cleanup(&rp.f);
}

static void test_replay_ollama_error(void **state)
{
    (void)state;
    struct replay rp;
    replay(&rp, &provider_ollama, "ollama_stream_error.ndjson", 0, 30);
    assert_int_equal(rp.last, RELAY_ERROR);
    assert_string_equal(rp.f.r.error, "an unknown error was encountered while running the model");
    json_t *evs = events_of(&rp.f.out);
    assert_int_equal(json_array_size(evs), 2); /* role, "x" */
    assert_int_equal(usage_chunks(evs), 0);
    json_decref(evs);
    fx_cleanup(&rp.f);
}

/* ---- complete() ---- */

static void test_openai_complete_usage(void **state)
{
    (void)state;
    size_t n;
    char *body = slurp("openai_complete.json", &n);
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(provider_openai.complete(&f.r, body, n, 5, &f.out), 0);
    /* Nothing to change: byte for byte. */
    assert_int_equal(f.out.len, n);
    assert_memory_equal(f.out.data, body, n);
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.usage.prompt_tokens, 21);
    assert_int_equal(f.r.usage.completion_tokens, 7);
    assert_int_equal(f.r.usage.total_tokens, 28);
    assert_int_equal(f.r.output_chars, 22);
    fx_cleanup(&f);

    /* With a model rename: same document, model replaced. */
    fx_init(&f, &provider_openai, 1);
    assert_int_equal(provider_openai.complete(&f.r, body, n, 5, &f.out), 0);
    json_t *got = load(f.out.data);
    json_t *want = load(body);
    json_object_set_new(want, "model", json_string("client-model"));
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    fx_cleanup(&f);
    free(body);
}

static void test_openai_complete_estimated(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int64_t chars;
    } cases[] = {
        {"openai_complete_nousage.json", 8}, /* "héllo 日本" */
        {"openai_complete_badusage.json", 8},
    };
    for (size_t i = 0; i < 2; i++) {
        size_t n;
        char *body = slurp(cases[i].file, &n);
        struct fx f;
        fx_init(&f, &provider_openai, 0);
        assert_int_equal(provider_openai.complete(&f.r, body, n, 40, &f.out), 0);
        assert_int_equal(f.r.usage.present, 0);
        assert_int_equal(f.r.output_chars, cases[i].chars);
        int64_t c = (cases[i].chars + 3) / 4;
        assert_int_equal(f.r.usage.prompt_tokens, 40);
        assert_int_equal(f.r.usage.completion_tokens, c);
        assert_int_equal(f.r.usage.total_tokens, 40 + c);
        json_t *got = load(f.out.data);
        json_t *want = load(body);
        json_object_set_new(want, "model", json_string("client-model"));
        json_object_set_new(want, "usage",
                            json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)40,
                                      "completion_tokens", (json_int_t)c, "total_tokens",
                                      (json_int_t)(40 + c)));
        assert_true(json_equal(got, want));
        json_decref(got);
        json_decref(want);
        fx_cleanup(&f);
        free(body);
    }
}

static void test_openai_complete_toolcall(void **state)
{
    (void)state;
    size_t n;
    char *body = slurp("openai_complete_toolcall.json", &n);
    struct fx f;
    fx_init(&f, &provider_openai, 0);
    assert_int_equal(provider_openai.complete(&f.r, body, n, 5, &f.out), 0);
    assert_int_equal(f.r.output_chars, 0);
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.usage.total_tokens, 62); /* recomputed: total was absent */
    assert_int_equal(f.out.len, n);
    fx_cleanup(&f);
    free(body);
}

static void test_openai_complete_malformed(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "", "not json", "{\"choices\":", "[]", "{\"id\":\"x\"}", "{\"choices\":{}}"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct fx f;
        fx_init(&f, &provider_openai, 0);
        assert_int_equal(provider_openai.complete(&f.r, bodies[i], strlen(bodies[i]), 5, &f.out),
                         PX_EPARSE);
        assert_true(strncmp(f.r.error, "malformed response from backend", 31) == 0);
        assert_int_equal(f.out.len, 0);
        fx_cleanup(&f);
    }
}

static void test_ollama_complete(void **state)
{
    (void)state;
    size_t n;
    char *body = slurp("ollama_complete.json", &n);
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    assert_int_equal(provider_ollama.complete(&f.r, body, n, 5, &f.out), 0);
    free(body);
    json_t *got = load(f.out.data);
    assert_string_equal(str_at(got, "id"), "chatcmpl-req-1");
    assert_string_equal(str_at(got, "object"), "chat.completion");
    assert_string_equal(str_at(got, "model"), "client-model");
    assert_true(json_is_integer(at(got, "created")));
    assert_int_equal(json_array_size(at(got, "choices")), 1);
    assert_int_equal(int_at(got, "choices.0.index"), 0);
    assert_string_equal(str_at(got, "choices.0.message.role"), "assistant");
    assert_string_equal(str_at(got, "choices.0.message.content"), "Hello there");
    assert_string_equal(str_at(got, "choices.0.finish_reason"), "stop");
    assert_int_equal(int_at(got, "usage.prompt_tokens"), 26);
    assert_int_equal(int_at(got, "usage.completion_tokens"), 3);
    assert_int_equal(int_at(got, "usage.total_tokens"), 29);
    json_decref(got);
    assert_int_equal(f.r.usage.present, 1);
    assert_int_equal(f.r.output_chars, 11);
    fx_cleanup(&f);
}

static void test_ollama_complete_estimated(void **state)
{
    (void)state;
    size_t n;
    char *body = slurp("ollama_complete_nocounts.json", &n);
    struct fx f;
    fx_init(&f, &provider_ollama, 0);
    assert_int_equal(provider_ollama.complete(&f.r, body, n, 12, &f.out), 0);
    free(body);
    json_t *got = load(f.out.data);
    assert_string_equal(str_at(got, "choices.0.finish_reason"), "length");
    assert_string_equal(str_at(got, "choices.0.message.content"),
                        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
    assert_int_equal(int_at(got, "usage.prompt_tokens"), 12);
    assert_int_equal(int_at(got, "usage.completion_tokens"), 2); /* (5 + 3) / 4 */
    assert_int_equal(int_at(got, "usage.total_tokens"), 14);
    json_decref(got);
    assert_int_equal(f.r.usage.present, 0);
    assert_int_equal(f.r.output_chars, 5);
    fx_cleanup(&f);
}

static void test_ollama_complete_malformed(void **state)
{
    (void)state;
    static const char *const bodies[] = {"",
                                         "nope",
                                         "[1]",
                                         "{\"done\":true}",
                                         "{\"message\":{\"content\":5}}",
                                         "{\"message\":\"hi\"}",
                                         "{\"error\":\"model not found\"}"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct fx f;
        fx_init(&f, &provider_ollama, 0);
        assert_int_equal(provider_ollama.complete(&f.r, bodies[i], strlen(bodies[i]), 5, &f.out),
                         PX_EPARSE);
        assert_true(strncmp(f.r.error, "malformed response from backend", 31) == 0);
        assert_int_equal(f.out.len, 0);
        fx_cleanup(&f);
    }
}

/* ---- build_request ---- */

static json_t *built(const struct provider_ops *ops, json_t *req, const char *model, int stream)
{
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(ops->build_request(req, NULL, 0, model, stream, &body, &len), 0);
    assert_non_null(body);
    assert_int_equal(len, strlen(body));
    json_t *j = load(body);
    free(body);
    return j;
}

static void test_openai_build_stream(void **state)
{
    (void)state;
    json_t *req =
        load("{\"model\":\"client\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
             "\"stream\":true,\"temperature\":0.5,\"stream_options\":{"
             "\"continuous_usage_stats\":true,\"include_usage\":false},"
             "\"x_unknown\":[1,2]}");
    json_t *before = json_deep_copy(req);
    json_t *got = built(&provider_openai, req, "Qwen/Qwen2.5-7B", 1);
    json_t *want = load("{\"model\":\"Qwen/Qwen2.5-7B\",\"messages\":[{\"role\":\"user\","
                        "\"content\":\"hi\"}],\"stream\":true,\"temperature\":0.5,"
                        "\"stream_options\":{\"continuous_usage_stats\":true,"
                        "\"include_usage\":true},\"x_unknown\":[1,2]}");
    assert_true(json_equal(got, want));
    assert_true(json_equal(req, before)); /* the client's request is borrowed, not changed */
    json_decref(got);
    json_decref(want);
    json_decref(before);
    json_decref(req);

    /* No stream_options from the client: added. */
    req = load("{\"model\":\"c\",\"messages\":[],\"stream\":true}");
    got = built(&provider_openai, req, "up", 1);
    assert_true(json_is_true(at(got, "stream_options.include_usage")));
    assert_int_equal(json_object_size(at(got, "stream_options")), 1);
    assert_string_equal(str_at(got, "model"), "up");
    json_decref(got);
    json_decref(req);

    /* stream_options null: replaced by an object. */
    req = load("{\"model\":\"c\",\"messages\":[],\"stream\":true,\"stream_options\":null}");
    got = built(&provider_openai, req, "up", 1);
    assert_true(json_is_true(at(got, "stream_options.include_usage")));
    json_decref(got);
    json_decref(req);
}

static void test_openai_build_nonstream(void **state)
{
    (void)state;
    json_t *req = load("{\"model\":\"client\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "[{\"type\":\"text\",\"text\":\"hi\"}]}],\"max_tokens\":12}");
    json_t *got = built(&provider_openai, req, "same", 0);
    json_t *want = json_deep_copy(req);
    json_object_set_new(want, "model", json_string("same"));
    assert_true(json_equal(got, want));
    assert_null(json_object_get(got, "stream_options"));
    json_decref(got);
    json_decref(want);
    json_decref(req);
}

/* What build_request sends when given the client's bytes: 1 when they went as they came. */
static int sent_as_is(const struct provider_ops *ops, const char *raw, const char *model,
                      int stream)
{
    json_t *req = load(raw);
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(ops->build_request(req, raw, strlen(raw), model, stream, &body, &len), 0);
    int same = len == strlen(raw) && memcmp(body, raw, len) == 0;
    /* Either way, the backend hears what it would from a body built anew. */
    json_t *got = load(body);
    json_t *want = built(ops, req, model, stream);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    json_decref(req);
    free(body);
    return same;
}

static void test_openai_build_as_is(void **state)
{
    (void)state;
    /* Odd spacing, escapes and a real that jansson would print as 0.69999999999999996. */
    const char *plain = "{ \"model\": \"m\", \"messages\": [{\"role\":\"user\",\"content\":"
                        "\"h\\u00e9\"}], \"temperature\": 0.7 }";
    assert_true(sent_as_is(&provider_openai, plain, "m", 0));
    assert_false(sent_as_is(&provider_openai, plain, "m-upstream", 0)); /* renamed */
    assert_false(sent_as_is(&provider_openai, plain, "", 0));
    /* A stream goes as is only when it already asks for usage. */
    const char *asks = "{\"model\":\"m\",\"stream\":true,\"stream_options\":{"
                       "\"include_usage\":true},\"messages\":[]}";
    assert_true(sent_as_is(&provider_openai, asks, "m", 1));
    assert_false(sent_as_is(&provider_openai, asks, "mm", 1));
    static const char *const rebuilt[] = {
        "{\"model\":\"m\",\"stream\":true,\"messages\":[]}",
        "{\"model\":\"m\",\"stream\":true,\"stream_options\":null,\"messages\":[]}",
        "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":false}}",
        "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":1}}",
    };
    for (size_t i = 0; i < sizeof(rebuilt) / sizeof(rebuilt[0]); i++) {
        assert_false(sent_as_is(&provider_openai, rebuilt[i], "m", 1));
    }
    /* jansson skips a NUL byte after a literal; the backend must not get it. */
    static const char nul[] = "{\"model\":\"m\",\"messages\":[],\"user\":null\0}";
    json_t *tree = json_loadb(nul, sizeof(nul) - 1, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(tree);
    char *sent = NULL;
    size_t sent_len = 0;
    assert_int_equal(
        provider_openai.build_request(tree, nul, sizeof(nul) - 1, "m", 0, &sent, &sent_len), 0);
    assert_int_equal(sent_len, strlen(sent));
    assert_null(memchr(sent, '\0', sent_len));
    free(sent);
    json_decref(tree);
    /* Without the client's bytes, or for Ollama: always built. */
    assert_false(sent_as_is(&provider_ollama, plain, "m", 0));
    json_t *req = load(plain);
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(provider_openai.build_request(req, NULL, 0, "m", 0, &body, &len), 0);
    assert_true(len != strlen(plain) || memcmp(body, plain, len) != 0);
    free(body);
    json_decref(req);
}

static void test_ollama_build(void **state)
{
    (void)state;
    json_t *req =
        load("{\"model\":\"client\",\"stream\":true,\"messages\":["
             "{\"role\":\"system\",\"content\":\"be brief\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}},"
             "{\"type\":\"text\",\"text\":\"b\\u00e9\"}]},"
             "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":"
             "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
             "\"max_tokens\":100,\"temperature\":0.5,\"top_p\":null,\"seed\":7,"
             "\"presence_penalty\":0.1,\"frequency_penalty\":0.2,\"stop\":\"END\","
             "\"response_format\":{\"type\":\"json_object\"},\"logprobs\":true}");
    json_t *before = json_deep_copy(req);
    json_t *got = built(&provider_ollama, req, "qwen2.5-coder:7b", 1);
    json_t *want = load("{\"model\":\"qwen2.5-coder:7b\",\"stream\":true,\"messages\":["
                        "{\"role\":\"system\",\"content\":\"be brief\"},"
                        "{\"role\":\"user\",\"content\":\"ab\\u00e9\"},"
                        "{\"role\":\"assistant\",\"content\":\"\"},"
                        "{\"role\":\"tool\",\"content\":\"42\"}],"
                        "\"options\":{\"num_predict\":100,\"temperature\":0.5,\"seed\":7,"
                        "\"presence_penalty\":0.1,\"frequency_penalty\":0.2,"
                        "\"stop\":[\"END\"]},\"format\":\"json\"}");
    if (!json_equal(got, want)) {
        char *s = json_dumps(got, JSON_COMPACT);
        print_error("built: %s\n", s);
        free(s);
        fail();
    }
    assert_true(json_equal(req, before));
    json_decref(got);
    json_decref(want);
    json_decref(before);
    json_decref(req);
}

static void test_ollama_build_variants(void **state)
{
    (void)state;
    /* stop array kept; max_completion_tokens maps too; no format for json_schema / text. */
    json_t *req = load("{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                       "\"max_completion_tokens\":9,\"stop\":[\"a\",\"b\"],"
                       "\"response_format\":{\"type\":\"text\"}}");
    json_t *got = built(&provider_ollama, req, "m", 0);
    json_t *want = load("{\"model\":\"m\",\"stream\":false,\"messages\":[{\"role\":\"user\","
                        "\"content\":\"x\"}],\"options\":{\"num_predict\":9,\"stop\":[\"a\","
                        "\"b\"]}}");
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    json_decref(req);

    /* No sampling fields: empty options. */
    req = load("{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    got = built(&provider_ollama, req, "m", 1);
    assert_true(json_is_object(at(got, "options")));
    assert_int_equal(json_object_size(at(got, "options")), 0);
    assert_null(json_object_get(got, "format"));
    assert_true(json_is_true(at(got, "stream")));
    json_decref(got);
    json_decref(req);
}

int main(void)
{
    const char *self = __FILE__;
    const char *tail = strstr(self, "tests/unit/proxy/test_provider.c");
    if (!tail || tail == self) {
        snprintf(root, sizeof(root), ".");
    } else {
        snprintf(root, sizeof(root), "%.*s", (int)(tail - self - 1), self);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_from_openai),
        cmocka_unit_test(test_error_message),
        cmocka_unit_test(test_error_message_prefix_capped),
        cmocka_unit_test(test_error_message_truncation_keeps_utf8),
        cmocka_unit_test(test_utf8_chars),
        cmocka_unit_test(test_relay_error_event),
        cmocka_unit_test(test_relay_init),
        cmocka_unit_test(test_openai_done),
        cmocka_unit_test(test_openai_passthrough_identical),
        cmocka_unit_test(test_openai_rewrite_model),
        cmocka_unit_test(test_openai_usage_chunk_absorbed),
        cmocka_unit_test(test_openai_continuous_usage_stripped),
        cmocka_unit_test(test_openai_errors),
        cmocka_unit_test(test_openai_long_error_message),
        cmocka_unit_test(test_openai_multiline_data_reframed),
        cmocka_unit_test(test_openai_content_counting),
        cmocka_unit_test(test_ollama_stream),
        cmocka_unit_test(test_ollama_done_variants),
        cmocka_unit_test(test_ollama_errors),
        cmocka_unit_test(test_ollama_long_utf8_error),
        cmocka_unit_test(test_json_error_text_is_utf8),
        cmocka_unit_test(test_finish_estimated),
        cmocka_unit_test(test_finish_with_upstream_usage),
        cmocka_unit_test(test_finish_nothing_relayed),
        cmocka_unit_test(test_finish_long_backend_id),
        cmocka_unit_test(test_replay_openai),
        cmocka_unit_test(test_replay_openai_rewrite),
        cmocka_unit_test(test_replay_openai_nousage),
        cmocka_unit_test(test_replay_openai_error),
        cmocka_unit_test(test_replay_ollama),
        cmocka_unit_test(test_replay_ollama_nocounts),
        cmocka_unit_test(test_replay_ollama_error),
        cmocka_unit_test(test_openai_complete_usage),
        cmocka_unit_test(test_openai_complete_estimated),
        cmocka_unit_test(test_openai_complete_toolcall),
        cmocka_unit_test(test_openai_complete_malformed),
        cmocka_unit_test(test_ollama_complete),
        cmocka_unit_test(test_ollama_complete_estimated),
        cmocka_unit_test(test_ollama_complete_malformed),
        cmocka_unit_test(test_openai_build_stream),
        cmocka_unit_test(test_openai_build_nonstream),
        cmocka_unit_test(test_openai_build_as_is),
        cmocka_unit_test(test_ollama_build),
        cmocka_unit_test(test_ollama_build_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
