/* Spool tests in a temp directory: records round-trip through the codec; a reopened spool
 * replays what was not acknowledged, in order, and never reuses a sequence number; a torn
 * tail (a crash mid-write) is cut off and the records before it survive; damaged bytes in the
 * middle are moved aside and the records around them survive; the cap stops appends without
 * losing what is there; acks delete whole segments; a second process cannot open the same
 * spool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "usage/spool.h"

struct tmp {
    char dir[64]; /* mkdtemp directory, the spool itself */
};

static void tmp_make(struct tmp *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/px_test_spool_XXXXXX");
    assert_non_null(mkdtemp(t->dir));
}

static void tmp_remove(struct tmp *t)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

static struct usage_event *ev(int id)
{
    struct usage_event *e = px_calloc(1, sizeof(*e));
    snprintf(e->request_id, sizeof(e->request_id), "req-%d", id);
    snprintf(e->tenant_id, sizeof(e->tenant_id), "tenant-%d", id % 7);
    snprintf(e->model_name, sizeof(e->model_name), "qwen2.5-coder:7b");
    snprintf(e->error_code, sizeof(e->error_code), "%s", id % 5 ? "" : "upstream_error");
    e->event_time_ms = 1700000000000LL + id;
    e->prompt_tokens = id;
    e->completion_tokens = 2 * id;
    e->total_tokens = 3 * id;
    e->ttft_ms = -1;
    e->gpu_id = id % 3 - 1;
    e->status_code = 200;
    e->stream = id & 1;
    return e;
}

static struct usage_spool *open_spool(struct tmp *t, uint64_t max_bytes, uint64_t seg_bytes)
{
    struct usage_spool *sp = NULL;
    char err[256];
    int rc = usage_spool_open(&sp, t->dir, max_bytes, seg_bytes, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
    }
    assert_int_equal(rc, 0);
    return sp;
}

static void append_range(struct usage_spool *sp, int from, int to)
{
    for (int i = from; i < to; i++) {
        struct usage_event *e = ev(i);
        size_t done = 0;
        assert_int_equal(usage_spool_append(sp, &e, 1, &done), 0);
        assert_int_equal(done, 1);
        free(e);
    }
}

/* Read everything after `after`; check request ids from..to-1 in order. Returns last seq. */
static uint64_t expect_range(struct usage_spool *sp, uint64_t after, int from, int to)
{
    size_t cap = (size_t)(to - from) + 8;
    struct usage_event *out = px_calloc(cap, sizeof(*out));
    size_t n = 0;
    size_t total = 0;
    for (;;) {
        assert_int_equal(usage_spool_read(sp, after, out + total, cap - total, &n), 0);
        if (n == 0) {
            break;
        }
        after = out[total + n - 1].spool_seq;
        total += n;
    }
    assert_int_equal(total, (size_t)(to - from));
    for (size_t i = 0; i < total; i++) {
        char want[32];
        snprintf(want, sizeof(want), "req-%d", from + (int)i);
        assert_string_equal(out[i].request_id, want);
        struct usage_event *e = ev(from + (int)i);
        assert_int_equal(out[i].total_tokens, e->total_tokens);
        assert_int_equal(out[i].gpu_id, e->gpu_id);
        assert_string_equal(out[i].error_code, e->error_code);
        assert_int_equal(out[i].event_time_ms, e->event_time_ms);
        free(e);
        if (i > 0) {
            assert_int_equal(out[i].spool_seq, out[i - 1].spool_seq + 1);
        }
    }
    free(out);
    return after;
}

static void test_codec_roundtrip(void **state)
{
    (void)state;
    unsigned char buf[USAGE_REC_MAX];
    struct usage_event *e = ev(12345);
    size_t len = usage_rec_encode(e, 99, buf, sizeof(buf));
    assert_true(len > USAGE_REC_HEAD);
    struct usage_event out;
    uint64_t seq = 0;
    assert_int_equal(usage_rec_decode(buf, len, &out, &seq), (long)len);
    assert_int_equal(seq, 99);
    assert_string_equal(out.request_id, e->request_id);
    assert_int_equal(out.completion_tokens, e->completion_tokens);
    /* Every proper prefix is "need more", never a record or an error. */
    for (size_t k = 0; k < len; k++) {
        assert_int_equal(usage_rec_decode(buf, k, &out, &seq), 0);
    }
    /* One flipped bit anywhere is damage. */
    for (size_t k = 0; k < len; k += 7) {
        buf[k] ^= 0x10;
        assert_true(usage_rec_decode(buf, len, &out, &seq) < 0);
        buf[k] ^= 0x10;
    }
    free(e);
}

static void test_replay_after_reopen(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct usage_spool *sp = open_spool(&t, 64 << 20, 16384);
    append_range(sp, 0, 300);
    uint64_t last = expect_range(sp, 0, 0, 300);
    /* Ack the first 100, then "crash" (close without anything else). */
    assert_int_equal(usage_spool_ack(sp, 100), 0);
    usage_spool_close(sp);

    sp = open_spool(&t, 64 << 20, 16384);
    struct usage_spool_stats st;
    usage_spool_stats(sp, &st);
    assert_int_equal(st.acked_seq, 100);
    assert_int_equal(st.last_seq, last);
    assert_int_equal(st.rows, 200);
    assert_true(st.segments > 1); /* 16 KiB segments: rotation happened */
    expect_range(sp, 100, 100, 300);
    /* New records continue the numbering. */
    append_range(sp, 300, 310);
    expect_range(sp, last, 300, 310);
    /* Acking everything deletes every segment but the active one. */
    assert_int_equal(usage_spool_ack(sp, last + 10), 0);
    usage_spool_stats(sp, &st);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.rows, 0);
    usage_spool_close(sp);

    /* Sequence numbers are never reused, even with every record acked and deleted. */
    sp = open_spool(&t, 64 << 20, 16384);
    usage_spool_stats(sp, &st);
    assert_int_equal(st.last_seq, last + 10);
    usage_spool_close(sp);
    tmp_remove(&t);
}

/* The newest segment file (largest first seq). */
static void newest_segment(struct tmp *t, char *path, size_t cap)
{
    DIR *d = opendir(t->dir);
    assert_non_null(d);
    struct dirent *de;
    char best[64] = "";
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) == 0 && strcmp(de->d_name, best) > 0) {
            snprintf(best, sizeof(best), "%.60s", de->d_name);
        }
    }
    closedir(d);
    assert_true(best[0] != '\0');
    snprintf(path, cap, "%s/%s", t->dir, best);
}

static void test_torn_tail(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct usage_spool *sp = open_spool(&t, 64 << 20, 4 << 20);
    append_range(sp, 0, 50);
    usage_spool_close(sp);
    /* A crash in the middle of the 51st record's write: half of it is in the file. */
    char path[160];
    newest_segment(&t, path, sizeof(path));
    unsigned char rec[USAGE_REC_MAX];
    struct usage_event *e = ev(50);
    size_t len = usage_rec_encode(e, 51, rec, sizeof(rec));
    free(e);
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, rec, len / 2), (ssize_t)(len / 2));
    close(fd);

    sp = open_spool(&t, 64 << 20, 4 << 20);
    struct usage_spool_stats st;
    usage_spool_stats(sp, &st);
    assert_int_equal(st.torn_bytes, len / 2);
    assert_int_equal(st.corrupt_bytes, 0);
    assert_int_equal(st.last_seq, 50);
    expect_range(sp, 0, 0, 50);
    /* Appending goes on right after the last whole record. */
    append_range(sp, 50, 60);
    expect_range(sp, 0, 0, 60);
    usage_spool_close(sp);
    tmp_remove(&t);
}

static void test_damage_in_the_middle(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct usage_spool *sp = open_spool(&t, 64 << 20, 4 << 20);
    append_range(sp, 0, 20);
    usage_spool_close(sp);
    char path[160];
    newest_segment(&t, path, sizeof(path));
    /* Flip bytes inside the 10th record. */
    struct stat stb;
    assert_int_equal(stat(path, &stb), 0);
    off_t at = stb.st_size / 2;
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char junk[4] = {0xde, 0xad, 0xbe, 0xef};
    assert_int_equal(pwrite(fd, junk, sizeof(junk), at), (ssize_t)sizeof(junk));
    close(fd);

    sp = open_spool(&t, 64 << 20, 4 << 20);
    struct usage_spool_stats st;
    usage_spool_stats(sp, &st);
    assert_true(st.corrupt_bytes > 0);
    /* 19 records survive, the damaged one is set aside (and logged), numbering intact. */
    struct usage_event out[32];
    size_t n = 0;
    assert_int_equal(usage_spool_read(sp, 0, out, 32, &n), 0);
    assert_int_equal(n, 19);
    assert_int_equal(out[0].spool_seq, 1);
    assert_int_equal(out[18].spool_seq, 20);
    usage_spool_close(sp);
    /* The damaged bytes are kept for an operator. */
    DIR *d = opendir(t.dir);
    struct dirent *de;
    int saved = 0;
    while ((de = readdir(d)) != NULL) {
        saved += strncmp(de->d_name, "corrupt-", 8) == 0;
    }
    closedir(d);
    assert_int_equal(saved, 1);
    tmp_remove(&t);
}

static void test_cap(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct usage_spool *sp = open_spool(&t, 65536, 16384);
    size_t total = 0;
    for (int i = 0; i < 2000; i++) {
        struct usage_event *e = ev(i);
        size_t done = 0;
        assert_int_equal(usage_spool_append(sp, &e, 1, &done), 0);
        free(e);
        if (done == 0) {
            break;
        }
        total++;
    }
    assert_true(total > 50 && total < 2000);
    struct usage_spool_stats st;
    usage_spool_stats(sp, &st);
    assert_true(st.bytes <= 65536);
    assert_int_equal(st.rows, total);
    /* Nothing was thrown away to make room. */
    expect_range(sp, 0, 0, (int)total);
    /* Acknowledging frees whole segments; appends go on. */
    assert_int_equal(usage_spool_ack(sp, total), 0);
    struct usage_event *e = ev(5000);
    size_t done = 0;
    assert_int_equal(usage_spool_append(sp, &e, 1, &done), 0);
    assert_int_equal(done, 1);
    free(e);
    usage_spool_close(sp);
    tmp_remove(&t);
}

static void test_one_process_per_spool(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    struct usage_spool *sp = open_spool(&t, 1 << 20, 16384);
    struct usage_spool *sp2 = NULL;
    char err[256];
    assert_int_equal(usage_spool_open(&sp2, t.dir, 1 << 20, 16384, err, sizeof(err)), -EWOULDBLOCK);
    assert_non_null(strstr(err, "another process"));
    assert_null(sp2);
    usage_spool_close(sp);
    usage_spool_close(NULL);
    tmp_remove(&t);
}

int main(void)
{
    px_log_min_level = getenv("PX_TEST_LOG") ? PX_LOG_DEBUG : PX_LOG_ERROR + 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_roundtrip),
        cmocka_unit_test(test_replay_after_reopen),
        cmocka_unit_test(test_torn_tail),
        cmocka_unit_test(test_damage_in_the_middle),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_one_process_per_spool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
