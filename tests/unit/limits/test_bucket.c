/* GCRA maths with a hand-stepped clock: capacity, continuous refill, no boundary burst,
 * refunds capped at a full bucket, costs above the limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "limits/bucket.h"

#define SEC 1000000000LL

/* Take single units at `now` until refused; returns how many were taken. */
static int64_t drain(int64_t *tat, const struct lim_rate *r, int64_t now)
{
    int64_t n = 0;
    while (lim_gcra_wait_ns(*tat, r, now, 1) == 0) {
        *tat = lim_gcra_take(*tat, r, now, 1);
        n++;
    }
    return n;
}

static void test_full_bucket_gives_exactly_the_limit(void **state)
{
    (void)state;
    static const int64_t limits[] = {1, 7, 60, 120, 300, 1000, 100000};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        struct lim_rate r;
        lim_rate_init(&r, limits[i]);
        int64_t tat = 0;
        assert_int_equal(drain(&tat, &r, 1000 * SEC), limits[i]);
    }
}

static void test_refill_is_continuous(void **state)
{
    (void)state;
    struct lim_rate r;
    lim_rate_init(&r, 60); /* one a second */
    int64_t now = 1000 * SEC;
    int64_t tat = 0;
    assert_int_equal(drain(&tat, &r, now), 60);
    assert_int_equal(drain(&tat, &r, now + SEC / 2), 0);
    assert_int_equal(drain(&tat, &r, now + SEC), 1);
    assert_int_equal(drain(&tat, &r, now + 11 * SEC), 10);
    /* The wait reported for a refused unit is exactly the time until it fits. */
    int64_t w = lim_gcra_wait_ns(tat, &r, now + 11 * SEC, 1);
    assert_int_equal(w, SEC);
}

static void test_no_double_burst_at_a_minute_boundary(void **state)
{
    (void)state;
    struct lim_rate r;
    lim_rate_init(&r, 60);
    int64_t start = 1000 * SEC;
    int64_t tat = 0;
    /* Use the whole allowance at 59.9 s, then try again just after the "minute" boundary: a
     * fixed window would allow another 60; GCRA allows what refilled in 0.2 s (none). */
    assert_int_equal(drain(&tat, &r, start + 59 * SEC + 900000000LL), 60);
    assert_int_equal(drain(&tat, &r, start + 60 * SEC + 100000000LL), 0);
}

static void test_refund_and_charge(void **state)
{
    (void)state;
    struct lim_rate r;
    lim_rate_init(&r, 1000); /* tokens per minute */
    int64_t now = 1000 * SEC;
    int64_t tat = 0;
    tat = lim_gcra_take(tat, &r, now, 900); /* reserve 900 */
    assert_int_equal(lim_gcra_remaining(tat, &r, now), 100);
    assert_true(lim_gcra_wait_ns(tat, &r, now, 500) > 0);
    tat = lim_gcra_take(tat, &r, now, -800); /* real usage was 100: refund 800 */
    assert_int_equal(lim_gcra_remaining(tat, &r, now), 900);
    assert_int_equal(lim_gcra_wait_ns(tat, &r, now, 500), 0);
    /* A refund never makes the bucket fuller than full. */
    tat = lim_gcra_take(tat, &r, now, -5000);
    assert_int_equal(lim_gcra_remaining(tat, &r, now), 1000);
    assert_int_equal(lim_gcra_reset_ns(tat, now), 0);
    /* Charging more than reserved can push the bucket into debt: refused until it refills. */
    tat = lim_gcra_take(tat, &r, now, 1500);
    assert_int_equal(lim_gcra_remaining(tat, &r, now), 0);
    assert_int_equal(lim_gcra_reset_ns(tat, now), 90 * SEC);
}

static void test_cost_above_limit_needs_a_full_bucket(void **state)
{
    (void)state;
    struct lim_rate r;
    lim_rate_init(&r, 100);
    int64_t now = 1000 * SEC;
    assert_int_equal(lim_gcra_wait_ns(0, &r, now, 5000), 0);
    int64_t tat = lim_gcra_take(0, &r, now, 1);
    assert_true(lim_gcra_wait_ns(tat, &r, now, 5000) > 0);
}

static void test_rate_init_clamps(void **state)
{
    (void)state;
    struct lim_rate r;
    lim_rate_init(&r, 0);
    assert_int_equal(r.limit, 1);
    lim_rate_init(&r, -5);
    assert_int_equal(r.limit, 1);
    lim_rate_init(&r, 1000000000000LL);
    assert_true(r.interval_ns >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_bucket_gives_exactly_the_limit),
        cmocka_unit_test(test_refill_is_continuous),
        cmocka_unit_test(test_no_double_burst_at_a_minute_boundary),
        cmocka_unit_test(test_refund_and_charge),
        cmocka_unit_test(test_cost_above_limit_needs_a_full_bucket),
        cmocka_unit_test(test_rate_init_clamps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
