/* core/util tests: px_uuid4 (format, version and variant bits, no repeats across pool refills,
 * a forked child never repeats its parent's ids), px_sha256 (known answers) and px_i64_str. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/util.h"

#define NIDS 1000 /* several pool refills */

static void assert_uuid4(const char *s)
{
    assert_int_equal(strlen(s), 36);
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(s[i], '-');
        } else {
            assert_non_null(strchr("0123456789abcdef", s[i]));
        }
    }
    assert_int_equal(s[14], '4');           /* version 4 */
    assert_non_null(strchr("89ab", s[19])); /* RFC 4122 variant */
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_uuid4_format_and_unique(void **state)
{
    (void)state;
    static char ids[NIDS][37];
    for (size_t i = 0; i < NIDS; i++) {
        px_uuid4(ids[i]);
        assert_uuid4(ids[i]);
    }
    qsort(ids, NIDS, sizeof(ids[0]), cmp_id);
    for (size_t i = 1; i < NIDS; i++) {
        assert_string_not_equal(ids[i - 1], ids[i]);
    }
}

/* Ids are drawn from a per-thread pool: a child must not hand out what the parent will. */
static void test_uuid4_fork(void **state)
{
    (void)state;
    char first[37];
    px_uuid4(first); /* the pool now holds unused bytes */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[37];
        px_uuid4(id);
        ssize_t w = write(fds[1], id, 37);
        _exit(w == 37 ? 0 : 1);
    }
    close(fds[1]);
    char child[37] = {0};
    assert_int_equal(read(fds[0], child, 37), 37);
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char parent[37];
    px_uuid4(parent);
    assert_uuid4(child);
    assert_string_not_equal(child, parent);
}

static void test_sha256_known(void **state)
{
    (void)state;
    static const unsigned char abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
        0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
    };
    static const unsigned char empty[32] = {
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
        0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
        0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
    };
    unsigned char out[32];
    for (int rep = 0; rep < 3; rep++) {
        px_sha256("abc", 3, out);
        assert_memory_equal(out, abc, 32);
        px_sha256("", 0, out);
        assert_memory_equal(out, empty, 32);
    }
}

static void test_i64_str(void **state)
{
    (void)state;
    static const struct {
        int64_t v;
        const char *s;
    } cases[] = {
        {0, "0"},
        {7, "7"},
        {-1, "-1"},
        {10, "10"},
        {1234567890, "1234567890"},
        {INT64_MAX, "9223372036854775807"},
        {INT64_MIN, "-9223372036854775808"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[PX_I64_STR_MAX];
        assert_int_equal(px_i64_str(cases[i].v, out), strlen(cases[i].s));
        assert_string_equal(out, cases[i].s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid4_format_and_unique),
        cmocka_unit_test(test_uuid4_fork),
        cmocka_unit_test(test_sha256_known),
        cmocka_unit_test(test_i64_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
