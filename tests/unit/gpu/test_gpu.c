/* The GPU line parser (gpu_parse_line, gpu_parse): both formats, N/A figures, and every
 * malformed line rejected rather than guessed at. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "gpu/gpu.h"

static void test_line_table(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        int rc; /* 1 reading, 0 skipped, -1 error */
        int id;
        double util, used, total;
    } cases[] = {
        {"0 37 1024 16384", 1, 0, 37, 1024, 16384},
        {"3\t100\t0\t81920", 1, 3, 100, 0, 81920},
        {"  1   5.5  10 20  ", 1, 1, 5.5, 10, 20},
        {"0, 37, 1024, 16384", 1, 0, 37, 1024, 16384}, /* nvidia-smi csv,noheader,nounits */
        {"0,37,1024,16384", 1, 0, 37, 1024, 16384},
        {"0, 37, 1024, 16384\r", 1, 0, 37, 1024, 16384},
        {"2, [N/A], 1024, 16384", 1, 2, -1, 1024, 16384},
        {"2, [Not Supported], [N/A], [N/A]", 1, 2, -1, -1, -1},
        {"2 [Not Supported] 5 10", 1, 2, -1, 5, 10},
        {"4095 0 0 0", 1, 4095, 0, 0, 0},
        {"", 0, 0, 0, 0, 0},
        {"   ", 0, 0, 0, 0, 0},
        {"# index, utilization.gpu [%], memory.used [MiB]", 0, 0, 0, 0, 0},
        {"\r", 0, 0, 0, 0, 0},
        /* Rejected: */
        {"index, utilization.gpu [%], memory.used [MiB], memory.total [MiB]", -1, 0, 0, 0, 0},
        {"0 37 1024", -1, 0, 0, 0, 0},
        {"0 37 1024 16384 5", -1, 0, 0, 0, 0},
        {"0, 37, 1024, 16384,", -1, 0, 0, 0, 0},
        {"0,, 1024, 16384", -1, 0, 0, 0, 0},
        {"0 101 1024 16384", -1, 0, 0, 0, 0},
        {"0 -1 1024 16384", -1, 0, 0, 0, 0},
        {"0 37 2048 1024", -1, 0, 0, 0, 0}, /* used > total */
        {"4096 0 0 0", -1, 0, 0, 0, 0},
        {"1.5 0 0 0", -1, 0, 0, 0, 0},
        {"0 37% 1024 16384", -1, 0, 0, 0, 0},
        {"0 37 1024MiB 16384", -1, 0, 0, 0, 0},
        {"0 0x10 1 2", -1, 0, 0, 0, 0},
        {"0 1e2 1 2", -1, 0, 0, 0, 0},
        {"0 37. 1 2", -1, 0, 0, 0, 0},
        {"0 .5 1 2", -1, 0, 0, 0, 0},
        {"0 nan 1 2", -1, 0, 0, 0, 0},
        {"0 37 1 9999999999999", -1, 0, 0, 0, 0},
        {"0 [N/A 1 2", -1, 0, 0, 0, 0},
        {"0 37 1\x01 2", -1, 0, 0, 0, 0},
        {"GPU 0: Tesla T4", -1, 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct gpu_reading r;
        memset(&r, 0x55, sizeof(r));
        int rc = gpu_parse_line(cases[i].line, strlen(cases[i].line), &r);
        if ((cases[i].rc < 0 ? rc >= 0 : rc != cases[i].rc)) {
            print_error("case %zu '%s': rc %d, want %d\n", i, cases[i].line, rc, cases[i].rc);
            fail();
        }
        if (cases[i].rc == 1) {
            assert_int_equal(r.id, cases[i].id);
            assert_true(r.util_pct == cases[i].util);
            assert_true(r.mem_used_mib == cases[i].used);
            assert_true(r.mem_total_mib == cases[i].total);
        }
        if (cases[i].rc < 0) {
            assert_int_equal(rc, PX_EPARSE);
        }
    }
}

static void test_line_is_a_view(void **state)
{
    (void)state;
    /* The length bounds the line: bytes after it are never read. */
    const char buf[] = "1 50 10 20 garbage";
    struct gpu_reading r;
    assert_int_equal(gpu_parse_line(buf, 10, &r), 1);
    assert_int_equal(r.id, 1);
    assert_true(r.mem_total_mib == 20);
}

static void test_whole_output(void **state)
{
    (void)state;
    struct gpu_reading r[4];
    size_t n = 99;
    char err[128];
    const char *ok = "# two GPUs\n0, 95, 1000, 16000\n\n1, 40, 2000, 16000\n";
    assert_int_equal(gpu_parse(ok, strlen(ok), r, 4, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_int_equal(r[1].id, 1);
    assert_true(r[1].util_pct == 40);

    /* No trailing newline, CRLF endings. */
    const char *crlf = "0 1 2 3\r\n1 4 5 6";
    assert_int_equal(gpu_parse(crlf, strlen(crlf), r, 4, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);

    /* Empty output: no GPUs, not an error. */
    assert_int_equal(gpu_parse("", 0, r, 4, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);

    const char *bad = "0 1 2 3\nnot a gpu\n";
    assert_int_equal(gpu_parse(bad, strlen(bad), r, 4, &n, err, sizeof(err)), PX_EPARSE);
    assert_non_null(strstr(err, "line 2"));
    assert_int_equal(n, 0);

    const char *dup = "0 1 2 3\n0 1 2 3\n";
    assert_int_equal(gpu_parse(dup, strlen(dup), r, 4, &n, err, sizeof(err)), PX_EPARSE);
    assert_non_null(strstr(err, "gpu 0 listed twice"));

    const char *many = "0 1 2 3\n1 1 2 3\n2 1 2 3\n";
    assert_int_equal(gpu_parse(many, strlen(many), r, 2, &n, err, sizeof(err)), PX_EPARSE);
    assert_non_null(strstr(err, "more than 2 GPUs"));

    const char *nul = "0 1 2 3\n1 1\0 2 3\n";
    assert_int_equal(gpu_parse(nul, 17, r, 4, &n, err, sizeof(err)), PX_EPARSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_table),
        cmocka_unit_test(test_line_is_a_view),
        cmocka_unit_test(test_whole_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
