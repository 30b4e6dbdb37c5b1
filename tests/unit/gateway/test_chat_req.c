/* Chat request validation tests (gw_chat_req_parse): a table of bad bodies, each with the
 * status, code and a fragment of the message it must produce, then good bodies with the values
 * they parse to. The config is built by hand: three models, one with a context window. The
 * bodies also seed the fuzz_chat_req corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "core/util.h"
#include "gateway/internal.h"

static struct px_model_cfg models[] = {
    {.name = "m", .upstream_model = "m"},
    {.name = "small", .upstream_model = "small-upstream", .context_window = 4096},
    {.name = "qwen2.5-coder:7b", .upstream_model = "qwen2.5-coder:7b"},
};

static const struct px_config cfg = {
    .models = models,
    .nmodels = sizeof(models) / sizeof(models[0]),
};

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static const struct {
    const char *body;
    int status;
    const char *code;
    const char *frag;
} bad_cases[] = {
    /* the body as a whole */
    {"", 400, "invalid_json", "request body is empty"},
    {"\xff", 400, "invalid_json", "not valid UTF-8"},
    {"{\"model\":\"m\xc3\",\"messages\":[]}", 400, "invalid_json", "not valid UTF-8"},
    {"{\"model\":\"\xc0\xaf\"}", 400, "invalid_json", "not valid UTF-8"},         /* overlong */
    {"{\"model\":\"\xed\xa0\x80\"}", 400, "invalid_json", "not valid UTF-8"},     /* surrogate */
    {"{\"model\":\"\xf4\x90\x80\x80\"}", 400, "invalid_json", "not valid UTF-8"}, /* > U+10FFFF */
    {"not json", 400, "invalid_json", "request body is not valid JSON: "},
    {"{\"model\":", 400, "invalid_json", "request body is not valid JSON: "},
    {"{\"model\":\"m\"} trailing", 400, "invalid_json", "request body is not valid JSON: "},
    {"{\"model\":\"m\\u0000\"," MSG "}", 400, "invalid_json", "not valid JSON"},
    {"{\"model\":\"m\",\"model\":\"m\"," MSG "}", 400, "invalid_json", "not valid JSON"},
    {"42", 400, "invalid_value", "must be a JSON object"},
    {"null", 400, "invalid_value", "must be a JSON object"},
    {"[]", 400, "invalid_value", "request body must be a JSON object"},
    {"[{\"model\":\"m\"}]", 400, "invalid_value", "must be a JSON object"},
    /* model */
    {"{}", 400, "invalid_value", "'model' is required"},
    {"{" MSG "}", 400, "invalid_value", "'model' is required"},
    {"{\"model\":5," MSG "}", 400, "invalid_value", "'model' must be a string"},
    {"{\"model\":null," MSG "}", 400, "invalid_value", "'model' must be a string"},
    {"{\"model\":[\"m\"]," MSG "}", 400, "invalid_value", "'model' must be a string"},
    {"{\"model\":\"nope\"," MSG "}", 404, "model_not_found", "The model 'nope' does not exist"},
    {"{\"model\":\"\"," MSG "}", 404, "model_not_found", "The model '' does not exist"},
    {"{\"model\":\"M\"," MSG "}", 404, "model_not_found", "'M'"},
    {"{\"model\":\"m \"," MSG "}", 404, "model_not_found", "'m '"},
    {"{\"model\":\"qwen2.5-coder\"," MSG "}", 404, "model_not_found", "qwen2.5-coder"},
    /* messages */
    {"{\"model\":\"m\"}", 400, "invalid_value", "'messages' is required"},
    {"{\"model\":\"m\",\"messages\":{}}", 400, "invalid_value",
     "'messages' must be an array of message objects"},
    {"{\"model\":\"m\",\"messages\":\"hi\"}", 400, "invalid_value", "'messages' must be an array"},
    {"{\"model\":\"m\",\"messages\":null}", 400, "invalid_value", "'messages' must be an array"},
    {"{\"model\":\"m\",\"messages\":[]}", 400, "invalid_value",
     "'messages' must contain at least one message"},
    {"{\"model\":\"m\",\"messages\":[1]}", 400, "invalid_value", "messages[0] must be an object"},
    {"{\"model\":\"m\",\"messages\":[\"hi\"]}", 400, "invalid_value",
     "messages[0] must be an object"},
    {"{\"model\":\"m\",\"messages\":[null]}", 400, "invalid_value",
     "messages[0] must be an object"},
    {"{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", 400, "invalid_value",
     "messages[0].role must be one of system, user, assistant, tool"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400,
     "invalid_value", "messages[0].role must be one of"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"User\",\"content\":\"x\"}]}", 400, "invalid_value",
     "messages[0].role must be one of"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"\",\"content\":\"x\"}]}", 400, "invalid_value",
     "messages[0].role"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":5,\"content\":\"x\"}]}", 400, "invalid_value",
     "messages[0].role"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":null,\"content\":\"x\"}]}", 400, "invalid_value",
     "messages[0].role"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", 400, "invalid_value",
     "messages[0].content must be a string or an array of content parts"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "invalid_value",
     "messages[0].content must be a string"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":1.5}]}", 400, "invalid_value",
     "messages[0].content"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":{\"text\":\"x\"}}]}", 400,
     "invalid_value", "messages[0].content"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":true}]}", 400, "invalid_value",
     "messages[0].content"},
    /* content parts: a known type with its member */
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\","
     "\"x\":1}]}]}",
     400, "invalid_value",
     "messages[0].content[0].type must be text, image_url, input_audio, file or refusal"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
     "\"text\":\"a\"},{\"type\":\"image_url\",\"image_url\":\"http://x\"}]}]}",
     400, "invalid_value", "messages[0].content[1].image_url must be an object"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", 400,
     "invalid_value", "messages[0].content[0].text must be a string"},
    /* content null is only for an assistant turn that made tool calls */
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":null}]}", 400, "invalid_value",
     "messages[0].content"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
     "\"assistant\"}]}",
     400, "invalid_value", "messages[1].content"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
     "\"content\":\"b\"},{\"role\":\"x\",\"content\":\"c\"}]}",
     400, "invalid_value", "messages[2].role"},
    /* stream */
    {"{\"model\":\"m\"," MSG ",\"stream\":\"true\"}", 400, "invalid_value",
     "'stream' must be a boolean"},
    {"{\"model\":\"m\"," MSG ",\"stream\":1}", 400, "invalid_value", "'stream' must be a boolean"},
    {"{\"model\":\"m\"," MSG ",\"stream\":{}}", 400, "invalid_value", "'stream' must be a boolean"},
    /* stream_options */
    {"{\"model\":\"m\"," MSG ",\"stream_options\":\"x\"}", 400, "invalid_value",
     "'stream_options' must be an object"},
    {"{\"model\":\"m\"," MSG ",\"stream_options\":[]}", 400, "invalid_value",
     "'stream_options' must be an object"},
    {"{\"model\":\"m\"," MSG ",\"stream_options\":true}", 400, "invalid_value",
     "'stream_options' must be an object"},
    /* n */
    {"{\"model\":\"m\"," MSG ",\"n\":2}", 400, "invalid_value", "'n' must be 1"},
    {"{\"model\":\"m\"," MSG ",\"n\":0}", 400, "invalid_value", "'n' must be 1"},
    {"{\"model\":\"m\"," MSG ",\"n\":\"1\"}", 400, "invalid_value", "'n' must be 1"},
    {"{\"model\":\"m\"," MSG ",\"n\":1.0}", 400, "invalid_value", "'n' must be 1"},
    /* max_tokens */
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":-1}", 400, "invalid_value",
     "'max_tokens' must be an integer between 1 and 1000000"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":0}", 400, "invalid_value",
     "'max_tokens' must be an integer between 1 and 1000000"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":1000001}", 400, "invalid_value",
     "'max_tokens' must be an integer between 1 and 1000000"},
    /* beyond int64: jansson refuses the document; reported as a bad value */
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":99999999999999999999}", 400, "invalid_value",
     "out of range: too big integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":9223372036854775807}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":\"100\"}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":10.5}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":10.0}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":1e3}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"m\"," MSG ",\"max_tokens\":true}", 400, "invalid_value",
     "'max_tokens' must be an integer"},
    {"{\"model\":\"small\"," MSG ",\"max_tokens\":4097}", 400, "invalid_value",
     "'max_tokens' must be an integer between 1 and 4096"},
    {"{\"model\":\"m\"," MSG ",\"max_completion_tokens\":0}", 400, "invalid_value",
     "'max_completion_tokens' must be an integer between 1 and 1000000"},
    {"{\"model\":\"small\"," MSG ",\"max_tokens\":10,\"max_completion_tokens\":5000}", 400,
     "invalid_value", "'max_completion_tokens' must be an integer between 1 and 4096"},
    /* temperature, top_p */
    {"{\"model\":\"m\"," MSG ",\"temperature\":-1}", 400, "invalid_value",
     "'temperature' must be a number between 0 and 2"},
    {"{\"model\":\"m\"," MSG ",\"temperature\":2.5}", 400, "invalid_value",
     "'temperature' must be a number between 0 and 2"},
    {"{\"model\":\"m\"," MSG ",\"temperature\":-0.0001}", 400, "invalid_value",
     "'temperature' must be a number between 0 and 2"},
    {"{\"model\":\"m\"," MSG ",\"temperature\":\"hot\"}", 400, "invalid_value",
     "'temperature' must be a number between 0 and 2"},
    {"{\"model\":\"m\"," MSG ",\"temperature\":true}", 400, "invalid_value", "'temperature'"},
    {"{\"model\":\"m\"," MSG ",\"temperature\":1e308}", 400, "invalid_value", "'temperature'"},
    {"{\"model\":\"m\"," MSG ",\"top_p\":1.5}", 400, "invalid_value",
     "'top_p' must be a number between 0 and 1"},
    {"{\"model\":\"m\"," MSG ",\"top_p\":-1}", 400, "invalid_value", "'top_p'"},
    {"{\"model\":\"m\"," MSG ",\"top_p\":[]}", 400, "invalid_value", "'top_p'"},
};

static void test_bad_requests(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        struct gw_chat_req r;
        struct gw_error err;
        memset(&err, 0, sizeof(err));
        const char *body = bad_cases[i].body;
        int rc = gw_chat_req_parse(&cfg, body, strlen(body), &r, &err);
        int ok = rc == -1 && r.root == NULL && err.status == bad_cases[i].status && err.type &&
                 strcmp(err.type, "invalid_request_error") == 0 && err.code &&
                 strcmp(err.code, bad_cases[i].code) == 0 &&
                 strstr(err.message, bad_cases[i].frag) != NULL;
        if (!ok) {
            print_error("case %zu %s:\n  rc %d status %d code %s message \"%s\"\n  want status %d "
                        "code %s fragment \"%s\"\n",
                        i, body, rc, err.status, err.code ? err.code : "(null)", err.message,
                        bad_cases[i].status, bad_cases[i].code, bad_cases[i].frag);
            if (rc == 0) {
                gw_chat_req_cleanup(&r);
            }
            fail();
        }
    }
}

static void test_too_many_messages(void **state)
{
    (void)state;
    const char *one = "{\"role\":\"user\",\"content\":\"x\"},";
    size_t n = 4097;
    size_t cap = 64 + n * strlen(one);
    char *body = malloc(cap);
    size_t off = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"messages\":[");
    for (size_t i = 0; i < n; i++) {
        memcpy(body + off, one, strlen(one));
        off += strlen(one);
    }
    body[off - 1] = ']';
    body[off++] = '}';
    struct gw_chat_req r;
    struct gw_error err;
    int rc = gw_chat_req_parse(&cfg, body, off, &r, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.status, 400);
    assert_non_null(strstr(err.message, "'messages' has 4097 entries; at most 4096"));
    assert_null(r.root);

    /* 4096 is allowed. */
    off = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"messages\":[");
    for (size_t i = 0; i < 4096; i++) {
        memcpy(body + off, one, strlen(one));
        off += strlen(one);
    }
    body[off - 1] = ']';
    body[off++] = '}';
    rc = gw_chat_req_parse(&cfg, body, off, &r, &err);
    assert_int_equal(rc, 0);
    assert_int_equal(r.input_chars, 4096);
    assert_int_equal(r.prompt_estimate, 1024 + 4 * 4096 + 3);
    gw_chat_req_cleanup(&r);
    free(body);
}

/* The model name is echoed (cut to 128 bytes) in the 404 message, which goes out as JSON:
 * the cut must not split a UTF-8 character. */
static void test_unknown_model_long_name(void **state)
{
    (void)state;
    char body[1024];
    char name[400];
    memset(name, 'x', 300);
    name[300] = '\0';
    snprintf(body, sizeof(body), "{\"model\":\"%s\"," MSG "}", name);
    struct gw_chat_req r;
    struct gw_error err;
    assert_int_equal(gw_chat_req_parse(&cfg, body, strlen(body), &r, &err), -1);
    assert_int_equal(err.status, 404);
    char want[200];
    memset(want, 'x', 128);
    snprintf(want + 128, sizeof(want) - 128, "' does not exist");
    assert_non_null(strstr(err.message, want)); /* 128 bytes of the name, not more */
    assert_true(px_utf8_valid(err.message, strlen(err.message)));

    /* 127 ASCII bytes then "é": byte 128 is the first half of the é. */
    memset(name, 'x', 127);
    memcpy(name + 127, "\xc3\xa9\xc3\xa9", 5);
    snprintf(body, sizeof(body), "{\"model\":\"%s\"," MSG "}", name);
    assert_int_equal(gw_chat_req_parse(&cfg, body, strlen(body), &r, &err), -1);
    assert_int_equal(err.status, 404);
    if (!px_utf8_valid(err.message, strlen(err.message))) {
        print_error("message is not valid UTF-8: \"%s\"\n", err.message);
        fail();
    }
}

/* A body that is valid UTF-8 but not valid JSON: jansson's error text quotes the bytes near
 * the error and may cut a character ("invalid escape near '\"\\<first byte of 日>'"). The
 * message is sent as JSON, so it must stay valid UTF-8 (otherwise the HTTP layer can only say
 * "error message too long"); found by fuzz_chat_req. */
static void test_json_error_message_is_utf8(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"model\":\"m\",\"messages\":\"\\\xc6\x97\"}",
        "{\"model\":\"\\\xe6\x97\xa5\"}",
        "\"\\\xf0\x9f\x98\x80",
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct gw_chat_req r;
        struct gw_error err;
        assert_int_equal(gw_chat_req_parse(&cfg, bodies[i], strlen(bodies[i]), &r, &err), -1);
        assert_int_equal(err.status, 400);
        assert_string_equal(err.code, "invalid_json");
        assert_non_null(strstr(err.message, "request body is not valid JSON"));
        if (!px_utf8_valid(err.message, strlen(err.message))) {
            print_error("body %zu: message \"%s\" is not valid UTF-8\n", i, err.message);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* ---- good requests ---- */

static const struct {
    const char *body;
    size_t model;
    int stream;
    int64_t max_tokens;
    int64_t input_chars;
    int64_t prompt_estimate; /* (input_chars + 3) / 4 + 4 * messages + 3 */
} good_cases[] = {
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}", 0, 0, 0, 5,
     2 + 4 + 3},
    {"{\"model\":\"small\",\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", 1, 0, 0, 0,
     0 + 4 + 3},
    {"{\"model\":\"qwen2.5-coder:7b\",\"messages\":[{\"role\":\"system\",\"content\":\"be "
     "brief\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"ab\"},{\"type\":"
     "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}},{\"type\":\"text\","
     "\"text\":\"cd\"}]}]}",
     2, 0, 0, 12, 3 + 8 + 3},
    /* assistant turn with tool calls and null content, then the tool's answer */
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":"
     "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
     "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":"
     "\"call_1\",\"content\":\"42\"}]}",
     0, 0, 0, 4, 1 + 12 + 3},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"x\"},{\"role\":"
     "\"function\",\"name\":\"f\",\"content\":\"y\"},{\"role\":\"assistant\",\"content\":[{"
     "\"type\":\"image_url\",\"image_url\":{}}]}]}",
     0, 0, 0, 2, 1 + 12 + 3},
    {"{\"model\":\"m\"," MSG ",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
     "\"max_tokens\":100,\"temperature\":0.7,\"top_p\":1,\"n\":1,\"user\":\"u1\","
     "\"tools\":[],\"x_vendor\":{\"a\":1}}",
     0, 1, 100, 2, 1 + 4 + 3},
    {"{\"model\":\"m\"," MSG ",\"stream\":false,\"max_tokens\":1000000,\"temperature\":0,"
     "\"top_p\":0}",
     0, 0, 1000000, 2, 8},
    {"{\"model\":\"m\"," MSG ",\"temperature\":2,\"top_p\":1.0,\"max_tokens\":1}", 0, 0, 1, 2, 8},
    {"{\"model\":\"small\"," MSG ",\"max_tokens\":4096}", 1, 0, 4096, 2, 8},
    {"{\"model\":\"small\"," MSG ",\"max_completion_tokens\":50}", 1, 0, 50, 2, 8},
    /* explicit nulls are the same as absent */
    {"{\"model\":\"m\"," MSG ",\"stream\":null,\"stream_options\":null,\"n\":null,"
     "\"max_tokens\":null,\"max_completion_tokens\":null,\"temperature\":null,\"top_p\":null}",
     0, 0, 0, 2, 8},
    /* whitespace and key order do not matter */
    {" \n{ \"messages\" : [ { \"content\" : \"abcd\" , \"role\" : \"user\" } ] ,\r\n"
     " \"model\" : \"m\" }\n",
     0, 0, 0, 4, 1 + 4 + 3},
};

static void test_good_requests(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++) {
        struct gw_chat_req r;
        struct gw_error err;
        const char *body = good_cases[i].body;
        int rc = gw_chat_req_parse(&cfg, body, strlen(body), &r, &err);
        if (rc != 0) {
            print_error("case %zu %s: %d %s\n", i, body, err.status, err.message);
            fail();
        }
        int ok = r.root != NULL && json_is_object(r.root) && r.model == good_cases[i].model &&
                 r.stream == good_cases[i].stream && r.max_tokens == good_cases[i].max_tokens &&
                 r.input_chars == good_cases[i].input_chars &&
                 r.prompt_estimate == good_cases[i].prompt_estimate;
        if (!ok) {
            print_error("case %zu %s:\n  model %zu stream %d max_tokens %lld input_chars %lld "
                        "prompt_estimate %lld\n",
                        i, body, r.model, r.stream, (long long)r.max_tokens,
                        (long long)r.input_chars, (long long)r.prompt_estimate);
        }
        gw_chat_req_cleanup(&r);
        assert_null(r.root);
        assert_true(ok);
    }
}

/* The root keeps unknown fields for the backend. */
static void test_root_is_the_body(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\"," MSG ",\"x_vendor\":{\"a\":[1,2]}}";
    struct gw_chat_req r;
    struct gw_error err;
    assert_int_equal(gw_chat_req_parse(&cfg, body, strlen(body), &r, &err), 0);
    json_t *want = json_loads(body, 0, NULL);
    assert_true(json_equal(r.root, want));
    json_decref(want);
    gw_chat_req_cleanup(&r);
    gw_chat_req_cleanup(&r); /* twice is harmless */
}

/* internal.h: input_chars is "Unicode characters of message content", like output_chars,
 * which the adapters count with provider_utf8_chars. "héllo 日本" is 8 characters (13 bytes). */
static void test_input_chars_counts_characters(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac\"},{\"role\":\"user\",\"content\":"
                       "[{\"type\":\"text\",\"text\":\"\\u00e9\\ud83d\\ude00\"}]}]}";
    struct gw_chat_req r;
    struct gw_error err;
    assert_int_equal(gw_chat_req_parse(&cfg, body, strlen(body), &r, &err), 0);
    int64_t chars = r.input_chars;
    int64_t est = r.prompt_estimate;
    gw_chat_req_cleanup(&r);
    if (chars != 10) {
        print_error("input_chars %lld, want 10 (8 + 2 characters; bytes are 13 + 6)\n",
                    (long long)chars);
    }
    assert_int_equal(chars, 10);
    assert_int_equal(est, (10 + 3) / 4 + 8 + 3);
}

/* Every error message is valid UTF-8 (it is sent as JSON) and has a status, type and code. */
static void test_error_fields_always_set(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        struct gw_chat_req r;
        struct gw_error err;
        memset(&err, 0, sizeof(err));
        const char *body = bad_cases[i].body;
        assert_int_equal(gw_chat_req_parse(&cfg, body, strlen(body), &r, &err), -1);
        assert_true(err.status == 400 || err.status == 404);
        assert_non_null(err.type);
        assert_non_null(err.code);
        assert_true(err.message[0] != '\0');
        assert_true(px_utf8_valid(err.message, strlen(err.message)));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_too_many_messages),
        cmocka_unit_test(test_unknown_model_long_name),
        cmocka_unit_test(test_json_error_message_is_utf8),
        cmocka_unit_test(test_good_requests),
        cmocka_unit_test(test_root_is_the_body),
        cmocka_unit_test(test_input_chars_counts_characters),
        cmocka_unit_test(test_error_fields_always_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
