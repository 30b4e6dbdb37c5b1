/* SSE / NDJSON parser tests. Every case is a stream and the events it must produce; each is
 * fed whole, in fixed-size pieces (1, 2, 3, 5, 7, 13 bytes), split once at every byte
 * boundary k, and split twice at every pair of boundaries, and must give the same events
 * every time. The cases under tests/data/sse also seed the fuzz_sse corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/err.h"
#include "http/sse.h"

/* The repo root, derived from this file's path so the test runs from any directory. */
static char root[1024];

#define MAX_EVENTS 64

/* Collects what the parser emits. */
struct sink {
    char *ev[MAX_EVENTS];
    size_t len[MAX_EVENTS];
    size_t n;
    size_t stop_at; /* return stop_rc from the callback for event number stop_at (1-based) */
    int stop_rc;
    size_t max_len; /* longest event seen */
};

static int on_event(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;
    assert_true(s->n < MAX_EVENTS);
    s->ev[s->n] = malloc(len + 1);
    assert_non_null(s->ev[s->n]);
    memcpy(s->ev[s->n], data, len);
    s->ev[s->n][len] = '\0';
    s->len[s->n] = len;
    s->n++;
    if (len > s->max_len) {
        s->max_len = len;
    }
    if (s->stop_at && s->n == s->stop_at) {
        return s->stop_rc;
    }
    return 0;
}

static void sink_clear(struct sink *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->ev[i]);
    }
    memset(s, 0, sizeof(*s));
}

/* The outcome of one run: the events, the first non-zero feed result, pending at the end. */
struct run {
    struct sink sink;
    int rc;
    int pending;
};

/* Feed (in, n) in the pieces given by cuts[0..ncuts) (ascending offsets), stopping at the
 * first non-zero result as a caller must. */
static void run_cuts(struct run *r, enum sse_mode mode, size_t cap, const char *in, size_t n,
                     const size_t *cuts, size_t ncuts, size_t stop_at, int stop_rc)
{
    struct sse_parser p;
    memset(r, 0, sizeof(*r));
    r->sink.stop_at = stop_at;
    r->sink.stop_rc = stop_rc;
    sse_parser_init(&p, mode, cap);
    size_t off = 0;
    for (size_t i = 0; i <= ncuts && r->rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        r->rc = sse_parser_feed(&p, in + off, end - off, on_event, &r->sink);
        off = end;
    }
    r->pending = sse_parser_pending(&p);
    sse_parser_cleanup(&p);
}

/* Feed in pieces of step bytes. */
static void run_step(struct run *r, enum sse_mode mode, size_t cap, const char *in, size_t n,
                     size_t step)
{
    size_t ncuts = n / step + 1;
    size_t *cuts = calloc(ncuts, sizeof(*cuts));
    size_t k = 0;
    for (size_t off = step; off < n; off += step) {
        cuts[k++] = off;
    }
    run_cuts(r, mode, cap, in, n, cuts, k, 0, 0);
    free(cuts);
}

/* Check a run against the expected events; what names the feeding strategy. 1 when it
 * matches; otherwise prints why and returns 0 (the caller frees, then fails). */
static int expect_run(const struct run *r, const char *const *want, size_t nwant,
                      const size_t *want_len, int want_rc, int want_pending, const char *name,
                      const char *what)
{
    if (r->rc != want_rc || r->sink.n != nwant) {
        print_error("%s (%s): rc %d events %zu, want rc %d events %zu\n", name, what, r->rc,
                    r->sink.n, want_rc, nwant);
        return 0;
    }
    for (size_t i = 0; i < nwant; i++) {
        size_t wl = want_len ? want_len[i] : strlen(want[i]);
        if (r->sink.len[i] != wl || memcmp(r->sink.ev[i], want[i], wl) != 0) {
            print_error("%s (%s): event %zu is \"%s\", want \"%.*s\"\n", name, what, i,
                        r->sink.ev[i], (int)wl, want[i]);
            return 0;
        }
    }
    if (want_rc == 0 && r->pending != want_pending) {
        print_error("%s (%s): pending %d, want %d\n", name, what, r->pending, want_pending);
        return 0;
    }
    return 1;
}

/* Check, free the run's events, and fail the test if it did not match. */
static void expect_and_clear(struct run *r, const char *const *want, size_t nwant,
                             const size_t *want_len, int want_rc, int want_pending,
                             const char *name, const char *what)
{
    int ok = expect_run(r, want, nwant, want_len, want_rc, want_pending, name, what);
    sink_clear(&r->sink);
    if (!ok) {
        fail();
    }
}

/* Run every feeding strategy over one case. */
static void check_all_splits(enum sse_mode mode, size_t cap, const char *in, size_t n,
                             const char *const *want, size_t nwant, const size_t *want_len,
                             int want_rc, int want_pending, const char *name)
{
    struct run r;
    char what[64];

    run_cuts(&r, mode, cap, in, n, NULL, 0, 0, 0);
    expect_and_clear(&r, want, nwant, want_len, want_rc, want_pending, name, "whole");

    static const size_t steps[] = {1, 2, 3, 5, 7, 13};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        run_step(&r, mode, cap, in, n, steps[i]);
        snprintf(what, sizeof(what), "%zu bytes at a time", steps[i]);
        expect_and_clear(&r, want, nwant, want_len, want_rc, want_pending, name, what);
    }
    for (size_t k = 0; k <= n; k++) {
        run_cuts(&r, mode, cap, in, n, &k, 1, 0, 0);
        snprintf(what, sizeof(what), "split at %zu", k);
        expect_and_clear(&r, want, nwant, want_len, want_rc, want_pending, name, what);
    }
    if (n <= 400) {
        for (size_t a = 1; a < n; a++) {
            for (size_t b = a + 1; b < n; b++) {
                size_t cuts[2] = {a, b};
                run_cuts(&r, mode, cap, in, n, cuts, 2, 0, 0);
                snprintf(what, sizeof(what), "split at %zu and %zu", a, b);
                expect_and_clear(&r, want, nwant, want_len, want_rc, want_pending, name, what);
            }
        }
    }
}

/* ---- cases from tests/data/sse: NAME.sse / NAME.ndjson with NAME.expect.json ---- */

static const struct {
    const char *file; /* under tests/data/sse */
    int pending;      /* an unfinished event is left at the end */
} file_cases[] = {
    {"openai_lf.sse", 0},
    {"crlf.sse", 0},
    {"cr_only.sse", 0},
    {"mixed_endings.sse", 0},
    {"comments_fields.sse", 0},
    {"multiline.sse", 0},
    {"nospace.sse", 0},
    {"blank_only.sse", 0},
    {"utf8.sse", 0},
    {"many.sse", 0},
    {"truncated.sse", 1},
    {"ollama_lf.ndjson", 0},
    {"ollama_crlf_blank.ndjson", 0},
    {"ndjson_inner_cr.ndjson", 0},
    {"ollama_utf8.ndjson", 0},
};

static char *slurp(const char *rel, size_t *n)
{
    char path[1200];
    if (snprintf(path, sizeof(path), "%s/tests/data/sse/%s", root, rel) >= (int)sizeof(path)) {
        fail_msg("path too long: %s", rel);
    }
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

static void test_data_files(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(file_cases) / sizeof(file_cases[0]); i++) {
        const char *file = file_cases[i].file;
        size_t n;
        char *in = slurp(file, &n);
        char exp_name[256];
        const char *dot = strrchr(file, '.');
        snprintf(exp_name, sizeof(exp_name), "%.*s.expect.json", (int)(dot - file), file);
        size_t en;
        char *exp_text = slurp(exp_name, &en);
        json_error_t je;
        json_t *exp = json_loadb(exp_text, en, 0, &je);
        if (!json_is_array(exp)) {
            print_error("%s: %s\n", exp_name, je.text);
            fail();
        }
        size_t nwant = json_array_size(exp);
        const char *want[MAX_EVENTS];
        size_t want_len[MAX_EVENTS];
        for (size_t k = 0; k < nwant; k++) {
            want[k] = json_string_value(json_array_get(exp, k));
            want_len[k] = json_string_length(json_array_get(exp, k));
        }
        enum sse_mode mode = strcmp(dot, ".ndjson") == 0 ? SSE_MODE_NDJSON : SSE_MODE_EVENT_STREAM;
        check_all_splits(mode, 1 << 16, in, n, want, nwant, want_len, 0, file_cases[i].pending,
                         file);
        json_decref(exp);
        free(exp_text);
        free(in);
    }
}

/* ---- inline cases: the corners ---- */

#define EV(...)                                                                                    \
    (const char *const[])                                                                          \
    {                                                                                              \
        __VA_ARGS__, NULL                                                                          \
    }

static const struct {
    const char *name;
    enum sse_mode mode;
    const char *in;
    const char *const *want; /* NULL-terminated */
    int pending;
} inline_cases[] = {
    {"one event", SSE_MODE_EVENT_STREAM, "data: hello\n\n", EV("hello"), 0},
    {"several events in one feed", SSE_MODE_EVENT_STREAM, "data: 1\n\ndata: 2\n\ndata: 3\n\n",
     EV("1", "2", "3"), 0},
    {"LF", SSE_MODE_EVENT_STREAM, "data: a\n\n", EV("a"), 0},
    {"CRLF", SSE_MODE_EVENT_STREAM, "data: a\r\n\r\n", EV("a"), 0},
    {"CR", SSE_MODE_EVENT_STREAM, "data: a\r\r", EV("a"), 0},
    {"CR then LF-only blank", SSE_MODE_EVENT_STREAM, "data: a\r\n", EV(NULL), 1},
    {"multi-line data joined with LF", SSE_MODE_EVENT_STREAM, "data: a\ndata: b\r\ndata: c\r\r",
     EV("a\nb\nc"), 0},
    {"data: without space", SSE_MODE_EVENT_STREAM, "data:x\n\n", EV("x"), 0},
    {"only the first space is dropped", SSE_MODE_EVENT_STREAM, "data:  x\n\n", EV(" x"), 0},
    {"tab is kept", SSE_MODE_EVENT_STREAM, "data:\tx\n\n", EV("\tx"), 0},
    {"comment lines", SSE_MODE_EVENT_STREAM, ": hi\n:\n: data: no\ndata: y\n\n", EV("y"), 0},
    {"event: and id: ignored", SSE_MODE_EVENT_STREAM,
     "event: completion\nid: 1\nretry: 5\ndata: z\nid\n\n", EV("z"), 0},
    {"field names are case-sensitive", SSE_MODE_EVENT_STREAM, "DATA: no\nData: no\n\n", EV(NULL),
     0},
    {"space before the colon is another field", SSE_MODE_EVENT_STREAM, "data : no\n\n", EV(NULL),
     0},
    {"a longer field name is another field", SSE_MODE_EVENT_STREAM, "datas: no\n\n", EV(NULL), 0},
    {"event without data is not dispatched", SSE_MODE_EVENT_STREAM, "event: x\nid: 3\n\n", EV(NULL),
     0},
    {"blank lines only", SSE_MODE_EVENT_STREAM, "\n\r\n\r\r\n\n\n", EV(NULL), 0},
    {"empty input", SSE_MODE_EVENT_STREAM, "", EV(NULL), 0},
    {"unterminated last event is pending", SSE_MODE_EVENT_STREAM, "data: a\n\ndata: b\n", EV("a"),
     1},
    {"unterminated last line is pending", SSE_MODE_EVENT_STREAM, "data: a\n\ndata: b", EV("a"), 1},
    {"colon in the value", SSE_MODE_EVENT_STREAM, "data: {\"a\":\"b:c\"}\n\n",
     EV("{\"a\":\"b:c\"}"), 0},
    {"[DONE]", SSE_MODE_EVENT_STREAM, "data: [DONE]\n\n", EV("[DONE]"), 0},
    {"UTF-8 in event stream", SSE_MODE_EVENT_STREAM,
     "data: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n\ndata: \xe6\x97\xa5\n\n",
     EV("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\xe6\x97\xa5"), 0},
    {"ndjson lines", SSE_MODE_NDJSON, "{\"a\":1}\n{\"b\":2}\n", EV("{\"a\":1}", "{\"b\":2}"), 0},
    {"ndjson CRLF", SSE_MODE_NDJSON, "{\"a\":1}\r\n{\"b\":2}\r\n", EV("{\"a\":1}", "{\"b\":2}"), 0},
    {"ndjson blank lines skipped", SSE_MODE_NDJSON, "\n\r\n{\"a\":1}\n\n\r\n\n", EV("{\"a\":1}"),
     0},
    {"ndjson CR alone is not a terminator", SSE_MODE_NDJSON, "a\rb\n", EV("a\rb"), 0},
    {"ndjson only the last CR is dropped", SSE_MODE_NDJSON, "a\r\r\n", EV("a\r"), 0},
    {"ndjson unterminated last line pending", SSE_MODE_NDJSON, "{\"a\":1}\n{\"b\"", EV("{\"a\":1}"),
     1},
    {"ndjson data: prefix is not special", SSE_MODE_NDJSON, "data: x\n", EV("data: x"), 0},
    {"ndjson UTF-8", SSE_MODE_NDJSON, "\xf0\x9f\x8e\x89\n\xc3\xa9\n",
     EV("\xf0\x9f\x8e\x89", "\xc3\xa9"), 0},
};

static void test_inline_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(inline_cases) / sizeof(inline_cases[0]); i++) {
        size_t nwant = 0;
        while (inline_cases[i].want[nwant]) {
            nwant++;
        }
        check_all_splits(inline_cases[i].mode, 4096, inline_cases[i].in, strlen(inline_cases[i].in),
                         inline_cases[i].want, nwant, NULL, 0, inline_cases[i].pending,
                         inline_cases[i].name);
    }
}

/* The WHATWG algorithm: "If the data buffer is an empty string, ... return" — a data field
 * with an empty value dispatches nothing (a backend's bare "data:" keep-alive must not reach
 * the adapters as an empty, unparseable event). */
static void test_empty_data_not_dispatched(void **state)
{
    (void)state;
    check_all_splits(SSE_MODE_EVENT_STREAM, 4096, "data:\n\n", 7, EV(NULL), 0, NULL, 0, 0,
                     "data: with an empty value");
    check_all_splits(SSE_MODE_EVENT_STREAM, 4096, "data\n\n", 6, EV(NULL), 0, NULL, 0, 0,
                     "data field without a colon");
    /* Two empty data lines make "\n", which is not empty: dispatched as the spec says
     * ("\n\n" minus the final LF). */
    check_all_splits(SSE_MODE_EVENT_STREAM, 4096, "data:\ndata:\n\n", 13, EV("\n"), 1, NULL, 0, 0,
                     "two empty data lines");
}

/* ---- the event cap ---- */

static void test_cap_exact_fits(void **state)
{
    (void)state;
    /* Two data lines of 5 and 4 bytes: joined "12345\n6789" is 10 bytes, exactly the cap; every
     * line is at most 11 bytes ("data: 12345") so the line limit is no issue at cap 16. */
    check_all_splits(SSE_MODE_EVENT_STREAM, 16, "data: 12345\ndata: 6789\n\n", 24,
                     EV("12345\n6789"), 1, NULL, 0, 0, "joined data within cap");
    /* NDJSON line of exactly the cap. */
    check_all_splits(SSE_MODE_NDJSON, 8, "12345678\n", 9, EV("12345678"), 1, NULL, 0, 0,
                     "ndjson line of exactly the cap");
    /* Event stream: data of exactly the cap, behind "data: ", whatever the line endings. */
    check_all_splits(SSE_MODE_EVENT_STREAM, 8, "data: 12345678\r\n\r\n", 18, EV("12345678"), 1,
                     NULL, 0, 0, "event-stream data of exactly the cap");
}

static void test_cap_ndjson_crlf_exact(void **state)
{
    (void)state;
    /* The same line ending in CRLF: the CR belongs to the terminator ("CR before LF is
     * dropped"), so the 8-byte event fits an 8-byte cap just as with LF. */
    check_all_splits(SSE_MODE_NDJSON, 8, "12345678\r\n", 10, EV("12345678"), 1, NULL, 0, 0,
                     "ndjson CRLF line of exactly the cap");
}

static void test_cap_overflow_joined(void **state)
{
    (void)state;
    /* Each line is 16 bytes (the cap) but the joined data is 21: PX_EOVERFLOW at every split,
     * and nothing emitted. */
    const char *in = "data: 0123456789\ndata: 0123456789\n\n";
    check_all_splits(SSE_MODE_EVENT_STREAM, 16, in, strlen(in), EV(NULL), 0, NULL, PX_EOVERFLOW, 0,
                     "joined data over cap");
    /* A good event first is still delivered before the overflow. */
    in = "data: ok\n\ndata: 0123456789\ndata: 0123456789\n\n";
    check_all_splits(SSE_MODE_EVENT_STREAM, 16, in, strlen(in), EV("ok"), 1, NULL, PX_EOVERFLOW, 0,
                     "good event then overflow");
}

static void test_cap_overflow_single_line(void **state)
{
    (void)state;
    /* One data line whose value alone exceeds the cap. */
    const char *in = "data: 0123456789abcdefXYZ\n\n";
    check_all_splits(SSE_MODE_EVENT_STREAM, 16, in, strlen(in), EV(NULL), 0, NULL, PX_EOVERFLOW, 0,
                     "event-stream value over cap");
}

/* sse.h: "no event or line may exceed event_max_bytes". An NDJSON line longer than the cap
 * must fail with PX_EOVERFLOW however it arrives; it must never reach the callback. */
static void test_cap_overflow_ndjson_line(void **state)
{
    (void)state;
    const char *in = "{\"a\":\"0123456789abcdef\"}\n";
    check_all_splits(SSE_MODE_NDJSON, 16, in, strlen(in), EV(NULL), 0, NULL, PX_EOVERFLOW, 0,
                     "ndjson line over cap");
}

/* Whether an event is accepted must not depend on how the bytes were split: 12 bytes of
 * data fit a 16-byte cap; the line "data: " + 12 bytes is 18. One read delivers it; if the
 * same line arrives in two reads it must still be delivered (or be refused both ways). */
static void test_cap_split_invariant_near_cap(void **state)
{
    (void)state;
    const char *in = "data: 0123456789ab\n\n";
    struct run whole;
    run_cuts(&whole, SSE_MODE_EVENT_STREAM, 16, in, strlen(in), NULL, 0, 0, 0);
    for (size_t k = 1; k < strlen(in); k++) {
        struct run r;
        run_cuts(&r, SSE_MODE_EVENT_STREAM, 16, in, strlen(in), &k, 1, 0, 0);
        if (r.rc != whole.rc || r.sink.n != whole.sink.n) {
            print_error("split at %zu: rc %d events %zu; whole: rc %d events %zu\n", k, r.rc,
                        r.sink.n, whole.rc, whole.sink.n);
            sink_clear(&r.sink);
            sink_clear(&whole.sink);
            fail();
        }
        sink_clear(&r.sink);
    }
    sink_clear(&whole.sink);
}

/* A comment line longer than the cap: skipped whole, and so skipped (or refused) however it is
 * split. */
static void test_cap_long_comment_split_invariant(void **state)
{
    (void)state;
    const char *in = ": this keep-alive comment is longer than the cap\ndata: x\n\n";
    struct run whole;
    run_cuts(&whole, SSE_MODE_EVENT_STREAM, 16, in, strlen(in), NULL, 0, 0, 0);
    struct run bytewise;
    run_step(&bytewise, SSE_MODE_EVENT_STREAM, 16, in, strlen(in), 1);
    int same = whole.rc == bytewise.rc && whole.sink.n == bytewise.sink.n;
    if (!same) {
        print_error("whole: rc %d events %zu; byte at a time: rc %d events %zu\n", whole.rc,
                    whole.sink.n, bytewise.rc, bytewise.sink.n);
    }
    sink_clear(&whole.sink);
    sink_clear(&bytewise.sink);
    assert_true(same);
}

/* ---- the callback's result ---- */

static void test_callback_stops_feed(void **state)
{
    (void)state;
    const char *in = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct run r;
    run_cuts(&r, SSE_MODE_EVENT_STREAM, 4096, in, strlen(in), NULL, 0, 2, 7);
    assert_int_equal(r.rc, 7);
    assert_int_equal(r.sink.n, 2); /* the third event was not delivered */
    assert_string_equal(r.sink.ev[1], "2");
    sink_clear(&r.sink);

    /* Any non-zero value is passed through, negative ones too, from the first event. */
    run_cuts(&r, SSE_MODE_EVENT_STREAM, 4096, in, strlen(in), NULL, 0, 1, -5);
    assert_int_equal(r.rc, -5);
    assert_int_equal(r.sink.n, 1);
    sink_clear(&r.sink);

    /* Byte at a time: the feed that completes event 2 returns the value. */
    struct sse_parser p;
    struct sink s = {.stop_at = 2, .stop_rc = 9};
    sse_parser_init(&p, SSE_MODE_EVENT_STREAM, 4096);
    int rc = 0;
    size_t i = 0;
    for (; i < strlen(in) && rc == 0; i++) {
        rc = sse_parser_feed(&p, in + i, 1, on_event, &s);
    }
    assert_int_equal(rc, 9);
    assert_int_equal(i, strlen("data: 1\n\ndata: 2\n\n"));
    assert_int_equal(s.n, 2);
    sse_parser_cleanup(&p);
    sink_clear(&s);

    /* NDJSON too. */
    const char *nd = "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";
    run_cuts(&r, SSE_MODE_NDJSON, 4096, nd, strlen(nd), NULL, 0, 1, 1);
    assert_int_equal(r.rc, 1);
    assert_int_equal(r.sink.n, 1);
    sink_clear(&r.sink);
}

/* ---- UTF-8 split across feeds ---- */

static void test_utf8_split_every_byte(void **state)
{
    (void)state;
    /* Every boundary inside each multi-byte character, in both modes. */
    const char *chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t c = 0; c < 3; c++) {
        char in[64];
        char want[32];
        snprintf(want, sizeof(want), "a%sb%s", chars[c], chars[c]);
        snprintf(in, sizeof(in), "data: %s\n\n", want);
        check_all_splits(SSE_MODE_EVENT_STREAM, 64, in, strlen(in), (const char *[]){want}, 1, NULL,
                         0, 0, "utf-8 event-stream");
        snprintf(in, sizeof(in), "%s\r\n", want);
        check_all_splits(SSE_MODE_NDJSON, 64, in, strlen(in), (const char *[]){want}, 1, NULL, 0, 0,
                         "utf-8 ndjson");
    }
}

/* ---- parser lifecycle ---- */

static void test_reuse_after_cleanup_and_pending(void **state)
{
    (void)state;
    struct sse_parser p;
    struct sink s = {0};
    sse_parser_init(&p, SSE_MODE_EVENT_STREAM, 64);
    assert_int_equal(sse_parser_pending(&p), 0);
    assert_int_equal(sse_parser_feed(&p, "data: x", 7, on_event, &s), 0);
    assert_int_equal(sse_parser_pending(&p), 1); /* partial line */
    assert_int_equal(sse_parser_feed(&p, "\n", 1, on_event, &s), 0);
    assert_int_equal(sse_parser_pending(&p), 1); /* data seen, no blank line yet */
    assert_int_equal(sse_parser_feed(&p, "\n", 1, on_event, &s), 0);
    assert_int_equal(sse_parser_pending(&p), 0);
    assert_int_equal(s.n, 1);
    /* A feed of zero bytes is a no-op. */
    assert_int_equal(sse_parser_feed(&p, "", 0, on_event, &s), 0);
    assert_int_equal(s.n, 1);
    sse_parser_cleanup(&p);
    sse_parser_cleanup(&p); /* cleanup twice is harmless (buf_cleanup resets) */
    sink_clear(&s);
}

/* A 64 KiB event split into 1000-byte reads arrives whole (the line buffer grows). */
static void test_large_event(void **state)
{
    (void)state;
    size_t vlen = 65536;
    char *in = malloc(vlen + 16);
    memcpy(in, "data: ", 6);
    memset(in + 6, 'x', vlen);
    memcpy(in + 6 + vlen, "\n\n", 2);
    size_t n = vlen + 8;
    struct run r;
    run_step(&r, SSE_MODE_EVENT_STREAM, 1 << 20, in, n, 1000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.sink.n, 1);
    assert_int_equal(r.sink.len[0], vlen);
    sink_clear(&r.sink);
    free(in);
}

int main(void)
{
    const char *self = __FILE__;
    const char *tail = strstr(self, "tests/unit/http/test_sse.c");
    if (!tail || tail == self) {
        snprintf(root, sizeof(root), ".");
    } else {
        snprintf(root, sizeof(root), "%.*s", (int)(tail - self - 1), self);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_files),
        cmocka_unit_test(test_inline_cases),
        cmocka_unit_test(test_empty_data_not_dispatched),
        cmocka_unit_test(test_cap_exact_fits),
        cmocka_unit_test(test_cap_ndjson_crlf_exact),
        cmocka_unit_test(test_cap_overflow_joined),
        cmocka_unit_test(test_cap_overflow_single_line),
        cmocka_unit_test(test_cap_overflow_ndjson_line),
        cmocka_unit_test(test_cap_split_invariant_near_cap),
        cmocka_unit_test(test_cap_long_comment_split_invariant),
        cmocka_unit_test(test_callback_stops_feed),
        cmocka_unit_test(test_utf8_split_every_byte),
        cmocka_unit_test(test_reuse_after_cleanup_and_pending),
        cmocka_unit_test(test_large_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
