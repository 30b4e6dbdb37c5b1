/* provider_scan tests: the fields of typical chunks and answers, then a table of inputs where
 * yajl alone would accept or read something jansson does not (they must be refused, so the
 * relay asks jansson), malformed, deep and huge inputs. Every accepted input is also checked
 * against jansson's tree (tests/fuzz/scan_ref.h), as fuzz_scan does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../fuzz/scan_ref.h"
#include "core/err.h"
#include "proxy/provider_scan.h"

/* Scan s (n bytes) and, when it succeeds, require jansson to agree on every field. */
static int scan_n(const char *s, size_t n, enum provider_scan_mode mode, struct provider_scan *k)
{
    int rc = provider_scan(s, n, mode, k);
    if (rc == 0) {
        json_error_t je;
        json_t *j = json_loadb(s, n, 0, &je);
        if (!json_is_object(j)) {
            print_error("scan accepted what jansson refuses: %.200s (%s)\n", s, je.text);
            fail();
        }
        struct provider_scan want;
        scan_ref(j, mode, &want);
        json_decref(j);
        assert_true(scan_ref_same(k, &want));
    } else {
        assert_int_equal(rc, PX_EPARSE);
    }
    return rc;
}

static int scan(const char *s, enum provider_scan_mode mode, struct provider_scan *k)
{
    return scan_n(s, strlen(s), mode, k);
}

static void test_chunk_fields(void **state)
{
    (void)state;
    struct provider_scan k;
    assert_int_equal(
        scan("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
             "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
             "\"assistant\",\"content\":\"h\\u00e9llo \xf0\x9f\x8c\x8d\"},"
             "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
             PROVIDER_SCAN_CHUNK, &k),
        0);
    assert_int_equal(k.has_error, 0);
    assert_int_equal(k.usage, PROVIDER_SCAN_OTHER);
    assert_int_equal(k.choices, PROVIDER_SCAN_ARRAY);
    assert_int_equal(k.nchoices, 1);
    assert_int_equal(k.content_string, 1);
    assert_int_equal(k.content_len, 11); /* "héllo " + 4-byte emoji */
    assert_int_equal(k.content_chars, 7);
    assert_int_equal(k.has_role, 1);
    assert_int_equal(k.id_string, 1);
    assert_string_equal(k.id, "chatcmpl-1");
    assert_int_equal(k.finish_string, 0);

    assert_int_equal(scan("{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"},{\"delta\":{"
                          "\"content\":\"second\"}}],\"id\":7}",
                          PROVIDER_SCAN_CHUNK, &k),
                     0);
    assert_int_equal(k.nchoices, 2);
    assert_int_equal(k.content_string, 0); /* only choices[0] counts */
    assert_int_equal(k.has_role, 0);
    assert_int_equal(k.id_string, 0);
    assert_int_equal(k.finish_string, 1);
    assert_string_equal(k.finish_reason, "stop");

    /* The usage chunk: empty choices, counts. */
    assert_int_equal(scan("{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                          "\"completion_tokens\":5,\"total_tokens\":8}}",
                          PROVIDER_SCAN_CHUNK, &k),
                     0);
    assert_int_equal(k.nchoices, 0);
    assert_int_equal(k.usage, PROVIDER_SCAN_OBJECT);
    assert_int_equal(k.counts_seen, 7);
    assert_int_equal(k.counts_int, 7);
    assert_int_equal(k.counts[PROVIDER_SCAN_PROMPT], 3);
    assert_int_equal(k.counts[PROVIDER_SCAN_COMPLETION], 5);
    assert_int_equal(k.counts[PROVIDER_SCAN_TOTAL], 8);
}

static void test_answer_fields(void **state)
{
    (void)state;
    struct provider_scan k;
    const char *a = "{\"id\":\"a\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                    "\"content\":\"abc\\n\"},\"finish_reason\":\"stop\"}],\"usage\":{"
                    "\"prompt_tokens\":24,\"completion_tokens\":1.0,\"total_tokens\":null}}";
    assert_int_equal(scan(a, PROVIDER_SCAN_ANSWER, &k), 0);
    assert_int_equal(k.content_string, 1);
    assert_int_equal(k.content_chars, 4);
    assert_int_equal(k.counts_seen, 7);
    assert_int_equal(k.counts_int, 1); /* 1.0 is a real, null is not a number */
    /* The same bytes read as a chunk: "message" is not "delta". */
    assert_int_equal(scan(a, PROVIDER_SCAN_CHUNK, &k), 0);
    assert_int_equal(k.content_string, 0);
    assert_int_equal(k.has_role, 0);
}

static void test_shapes_jansson_reads_alike(void **state)
{
    (void)state;
    /* Accepted, and the reference check in scan() compares every field. */
    static const char *const ok[] = {
        "{}",
        " \t\r\n{\"choices\":[]} \t\r\n",
        "{\"error\":null,\"choices\":[{\"delta\":{}}]}",
        "{\"error\":{\"message\":\"x\"}}",
        "{\"choices\":[1,{\"delta\":{\"content\":\"x\"}}]}",
        "{\"choices\":[{\"delta\":\"x\",\"finish_reason\":\"stop\"}]}",
        "{\"choices\":[{\"delta\":{\"role\":null,\"content\":5}}]}",
        "{\"choices\":{\"0\":{}},\"usage\":[1]}",
        "{\"choices\":[{\"delta\":{\"usage\":{\"prompt_tokens\":1}}}],\"x\":{\"usage\":{}}}",
        "{\"ch\\u006fices\":[{\"d\\u0065lta\":{\"c\\u006fntent\":\"\\u00e9\\n\\/\"}}]}",
        "{\"id\":\"a\\\\ud800\",\"choices\":[{\"delta\":{}}]}", /* an escaped backslash */
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"abcdefghijklmnopqrstuvwxyz\"}]}",
        "{\"usage\":{\"prompt_tokens\":-9223372036854775807,\"completion_tokens\":1e-400}}",
        "{\"n\":[true,false,null,-0,0.5e+3,\"\"],\"choices\":[]}",
    };
    struct provider_scan k;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (scan(ok[i], PROVIDER_SCAN_CHUNK, &k) != 0 ||
            scan(ok[i], PROVIDER_SCAN_ANSWER, &k) != 0) {
            print_error("refused: %s\n", ok[i]);
            fail();
        }
    }
}

static void test_refused(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        const char *why;
    } bad[] = {
        {"", "empty"},
        {"  ", "blank"},
        {"[]", "not an object"},
        {"\"x\"", "not an object"},
        {"{\"a\":1", "cut"},
        {"{\"a\":1}x", "trailing garbage"},
        {"{} {}", "two values"},
        {"{} 5", "a trailing number"},
        {"{} \"abc", "an unterminated string after the value (yajl accepts it)"},
        {"{}\"", "a lone quote after the value"},
        {"{} tru", "a cut literal after the value"},
        {"{\"a\":tru}", "bad literal"},
        {"{\"a\":01}", "leading zero"},
        {"{\"a\":1,}", "trailing comma"},
        {"{a:1}", "unquoted key"},
        {"{\"a\":1}/*c*/", "comment"},
        {"{\"a\":\"\x01\"}", "raw control character"},
        {"\v{}", "\\v is whitespace to yajl only"},
        {"{}\f", "\\f is whitespace to yajl only"},
        {"{\"a\":\"\\u0000\"}", "NUL escape (jansson: no JSON_ALLOW_NUL)"},
        {"{\"a\\u0000\":1}", "NUL escape in a key"},
        {"{\"a\":\"\\ud800\"}", "lone high surrogate (yajl: '?')"},
        {"{\"a\":\"\\uDC00\"}", "lone low surrogate"},
        {"{\"a\":\"\\ud800\\u0041\"}", "bad pair (yajl combines it)"},
        {"{\"a\":\"\\ud83d\\ude00\"}", "a valid pair: left to jansson too"},
        {"{\"a\":\"\xc0\xaf\"}", "overlong UTF-8"},
        {"{\"a\":\"\xed\xa0\x80\"}", "encoded surrogate"},
        {"{\"a\":\"\xf4\x90\x80\x80\"}", "past U+10FFFF"},
        {"{\"a\":\"\xff\"}", "not UTF-8"},
        {"{\"a\":\"\xe6\x97\"}", "cut UTF-8"},
        {"{\"choices\":[],\"choices\":[]}", "duplicate choices"},
        {"{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":\"b\"},\"message\":{"
         "\"role\":1,\"role\":2}}]}",
         "duplicate content (chunk), role (answer)"},
        {"{\"id\":\"a\",\"id\":\"b\"}", "duplicate id"},
        {"{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2}}", "duplicate count"},
        {"{\"n\":-9223372036854775808}", "LLONG_MIN (yajl refuses, jansson decides)"},
        {"{\"n\":9223372036854775808}", "integer overflow"},
        {"{\"n\":1e400}", "real overflow"},
    };
    struct provider_scan k;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (scan(bad[i].s, PROVIDER_SCAN_CHUNK, &k) != PX_EPARSE ||
            scan(bad[i].s, PROVIDER_SCAN_ANSWER, &k) != PX_EPARSE) {
            print_error("accepted (%s): %s\n", bad[i].why, bad[i].s);
            fail();
        }
    }
    /* A NUL byte inside the view. */
    assert_int_equal(scan_n("{\"a\":\"\0\"}", 8, PROVIDER_SCAN_CHUNK, &k), PX_EPARSE);
    assert_int_equal(scan_n("{}\0", 3, PROVIDER_SCAN_CHUNK, &k), PX_EPARSE);
}

/* {"x": + depth-1 nested arrays + }: depth frames in all. */
static char *nested(size_t depth)
{
    size_t n = depth - 1;
    char *s = malloc(2 * n + 8);
    memcpy(s, "{\"x\":", 5);
    memset(s + 5, '[', n);
    memset(s + 5 + n, ']', n);
    memcpy(s + 5 + 2 * n, "}", 2);
    return s;
}

static void test_depth(void **state)
{
    (void)state;
    struct provider_scan k;
    char *s = nested(PROVIDER_SCAN_DEPTH_MAX);
    assert_int_equal(scan(s, PROVIDER_SCAN_CHUNK, &k), 0);
    free(s);
    s = nested(PROVIDER_SCAN_DEPTH_MAX + 1);
    assert_int_equal(scan(s, PROVIDER_SCAN_CHUNK, &k), PX_EPARSE);
    free(s);
    /* Far deeper than jansson's 2048 and than any stack: refused at the cap, no recursion. */
    s = nested(1000000);
    assert_int_equal(provider_scan(s, strlen(s), PROVIDER_SCAN_CHUNK, &k), PX_EPARSE);
    free(s);
}

static void test_huge(void **state)
{
    (void)state;
    /* A 4 MiB content string of 2-byte characters, and 100,000 choices. */
    static const char head[] = "{\"choices\":[{\"delta\":{\"content\":\"";
    static const char tail[] = "\"}}]}";
    size_t chars = 2u << 20;
    char *s = malloc(sizeof(head) + 2 * chars + sizeof(tail));
    size_t n = sizeof(head) - 1;
    memcpy(s, head, n);
    for (size_t i = 0; i < chars; i++) {
        s[n++] = '\xc3';
        s[n++] = '\xa9';
    }
    memcpy(s + n, tail, sizeof(tail) - 1);
    n += sizeof(tail) - 1;
    struct provider_scan k;
    assert_int_equal(scan_n(s, n, PROVIDER_SCAN_CHUNK, &k), 0);
    assert_int_equal(k.content_len, 2 * chars);
    assert_int_equal(k.content_chars, chars);
    free(s);

    size_t m = 100000;
    s = malloc(3 * m + 64);
    memcpy(s, "{\"choices\":[", 12);
    n = 12;
    for (size_t i = 0; i < m; i++) {
        memcpy(s + n, i ? ",{}" : "{}", i ? 3 : 2);
        n += i ? 3 : 2;
    }
    memcpy(s + n, "]}", 2);
    n += 2;
    assert_int_equal(scan_n(s, n, PROVIDER_SCAN_CHUNK, &k), 0);
    assert_int_equal(k.nchoices, m);
    free(s);
}

static void test_long_strings_cut(void **state)
{
    (void)state;
    /* The id is cut at a character boundary within 63 bytes, as provider__copy_utf8 cuts it;
     * finish_reason at 15 bytes, as the jansson path's snprintf does. */
    char s[512];
    size_t n = (size_t)snprintf(s, sizeof(s), "{\"id\":\"");
    for (int i = 0; i < 40; i++) {
        n += (size_t)snprintf(s + n, sizeof(s) - n, "\xc3\xa9");
    }
    snprintf(s + n, sizeof(s) - n,
             "\",\"choices\":[{\"delta\":{},\"finish_reason\":\"abcdefghijklmnopqrstuvwxyz\"}]}");
    struct provider_scan k;
    assert_int_equal(scan(s, PROVIDER_SCAN_CHUNK, &k), 0);
    assert_int_equal(strlen(k.id), 62);
    assert_string_equal(k.finish_reason, "abcdefghijklmno");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunk_fields),
        cmocka_unit_test(test_answer_fields),
        cmocka_unit_test(test_shapes_jansson_reads_alike),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_huge),
        cmocka_unit_test(test_long_strings_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
