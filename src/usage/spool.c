/* The durable usage spool (contract in spool.h, design in docs/internals/usage_store.md).
 *
 * Design note.
 * - Segments: seg-<first seq>.log, appended with one write() per group of records (O_APPEND),
 *   so a record is in the page cache, and survives SIGKILL, once append returns; power loss
 *   is covered by usage_spool_sync (fdatasync), which the writer calls at least every
 *   usage.spool_fsync_ms (group commit). A new segment is started once the active one
 *   reaches segment_bytes; only whole, fully acknowledged, non-active segments are deleted.
 * - Sequence numbers grow by one per record and are never reused for a spool id: on open the
 *   next one is above every record found, the active segment's name and the ack file. The
 *   ack file is synced before any segment is deleted, so a deleted segment's numbers are
 *   always covered by a durable ack.
 * - Recovery reads each segment whole and keeps only valid records: a proper prefix of a
 *   record at the end of the last segment is the tail a crash cut short and is cut off;
 *   anything else that does not decode is damage: its bytes are copied to corrupt-*.bin, the
 *   segment is rewritten without them (tmp + rename), and it is logged. The reader can then
 *   trust every byte below a segment's published size.
 * - Threads: the appender owns the active segment's fd and the encode buffer; the reader owns
 *   its fd and read buffer; mu guards the segment table and counters they share. Disk I/O is
 *   never done under mu. */
#include "usage/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

#define SPOOL_ENC_RECORDS 64                 /* records encoded per write() */
#define SPOOL_READ_CHUNK  (1024 * 1024)      /* bytes per pread by the reader */
#define SPOOL_SEG_MIN     (16 * 1024)        /* smallest segment size */
#define SPOOL_SEG_MAX     (64 * 1024 * 1024) /* largest segment size (recovery reads it whole) */
#define SPOOL_ACK_MAGIC   0x4b435850u        /* "PXCK" */

struct seg {
    uint64_t first_seq; /* from the file name: no record in it is below this */
    uint64_t last_seq;  /* highest sequence number in it, 0 when empty */
    uint64_t bytes;     /* bytes of whole records in the file */
};

struct usage_spool {
    char dir[PATH_MAX - 64]; /* the spool directory */
    int lock_fd;             /* holds the flock for the process lifetime */
    int ack_fd;              /* the ack file, rewritten in place */
    int app_fd;              /* appender: the active segment, O_APPEND */
    int rej_fd;              /* reader: rejected.jsonl, -1 until first used */
    uint64_t spool_id;       /* identity of this spool's rows */
    uint64_t max_bytes;      /* cap on total segment bytes */
    uint64_t segment_bytes;  /* rotate once the active segment is this big */
    pthread_mutex_t mu;      /* guards the fields down to torn_bytes */
    struct seg *segs;        /* segments, oldest first; the last is the active one */
    size_t nsegs;            /* entries in segs */
    size_t capsegs;          /* allocated entries */
    uint64_t total_bytes;    /* sum of segs[].bytes */
    uint64_t last_seq;       /* highest sequence number appended */
    uint64_t acked;          /* highest sequence number acknowledged */
    uint64_t corrupt_bytes;  /* damaged bytes moved aside at recovery */
    uint64_t torn_bytes;     /* torn tail bytes cut at recovery */
    unsigned char *encbuf;   /* appender: SPOOL_ENC_RECORDS * USAGE_REC_MAX bytes */
    int rd_fd;               /* reader: fd of segment rd_first, -1 when none */
    uint64_t rd_first;       /* reader: first_seq of the segment rd_fd reads */
    uint64_t rd_off;         /* reader: offset of the next record in that segment */
    uint64_t rd_after;       /* reader: every record before rd_off is <= this seq */
    unsigned char *rdbuf;    /* reader: SPOOL_READ_CHUNK bytes */
};

static int path_in(const struct usage_spool *sp, char *out, size_t cap, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", sp->dir, name);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static void seg_name(char out[40], uint64_t first)
{
    snprintf(out, 40, "seg-%016" PRIx64 ".log", first);
}

/* mkdir -p. */
static int make_dirs(const char *path)
{
    char p[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(p)) {
        return -ENAMETOOLONG;
    }
    memcpy(p, path, n + 1);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0755) == -1 && errno != EEXIST) {
                return -errno;
            }
            *s = '/';
        }
    }
    if (mkdir(p, 0755) == -1 && errno != EEXIST) {
        return -errno;
    }
    return 0;
}

/* fsync the directory so that created, renamed and deleted names are durable. */
static int sync_dir(const struct usage_spool *sp)
{
    int fd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1) {
        return -errno;
    }
    int rc = fsync(fd) == -1 ? -errno : 0;
    close(fd);
    return rc;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w == -1) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pread_all(int fd, void *p, size_t n, uint64_t off, size_t *got)
{
    char *b = p;
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, b + done, n - done, (off_t)(off + done));
        if (r == -1) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            break;
        }
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

/* Read a small whole file into buf (NUL-terminated). Bytes read, or -errno. */
static long read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -errno;
    }
    size_t got = 0;
    int rc = pread_all(fd, buf, cap - 1, 0, &got);
    close(fd);
    if (rc < 0) {
        return rc;
    }
    buf[got] = '\0';
    return (long)got;
}

/* Write a small file durably: tmp, fsync, rename, fsync the directory. */
static int write_small(struct usage_spool *sp, const char *name, const void *p, size_t n)
{
    char path[PATH_MAX];
    char tmp[PATH_MAX];
    int rc;
    if ((rc = path_in(sp, path, sizeof(path), name)) < 0 ||
        (rc = path_in(sp, tmp, sizeof(tmp), "tmp.new")) < 0) {
        return rc;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        return -errno;
    }
    rc = write_all(fd, p, n);
    if (rc == 0 && fsync(fd) == -1) {
        rc = -errno;
    }
    close(fd);
    if (rc == 0 && rename(tmp, path) == -1) {
        rc = -errno;
    }
    return rc < 0 ? rc : sync_dir(sp);
}

/* The spool's identity: read from id, or made up and written once. */
static int load_id(struct usage_spool *sp)
{
    char path[PATH_MAX];
    char buf[64];
    int rc = path_in(sp, path, sizeof(path), "id");
    if (rc < 0) {
        return rc;
    }
    long n = read_small(path, buf, sizeof(buf));
    if (n > 0) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 16);
        if (errno == 0 && end != buf && (*end == '\n' || *end == '\0') && v != 0) {
            sp->spool_id = (uint64_t)v;
            return 0;
        }
        px_log(PX_LOG_ERROR, "msg=\"spool id file unreadable, making a new identity\" path=%s",
               path);
    } else if (n != -ENOENT) {
        return (int)n;
    }
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
            return -errno;
        }
    }
    sp->spool_id = v;
    snprintf(buf, sizeof(buf), "%016" PRIx64 "\n", v);
    return write_small(sp, "id", buf, strlen(buf));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

/* ack: u64 seq | u32 crc32c(seq bytes) | u32 magic. A damaged ack reads as 0: every row is
 * then treated as possibly shipped, which the shipper's landed check makes harmless. */
static int load_ack(struct usage_spool *sp)
{
    char path[PATH_MAX];
    int rc = path_in(sp, path, sizeof(path), "ack");
    if (rc < 0) {
        return rc;
    }
    sp->ack_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (sp->ack_fd == -1) {
        return -errno;
    }
    unsigned char b[16];
    size_t got = 0;
    if ((rc = pread_all(sp->ack_fd, b, sizeof(b), 0, &got)) < 0) {
        return rc;
    }
    sp->acked = 0;
    if (got == sizeof(b)) {
        uint32_t crc = (uint32_t)get_le64(b + 8);
        uint32_t magic = (uint32_t)(get_le64(b + 8) >> 32);
        if (magic == SPOOL_ACK_MAGIC && crc == usage_crc32c(0, b, 8)) {
            sp->acked = get_le64(b);
        }
    }
    return 0;
}

static int write_ack(struct usage_spool *sp, uint64_t seq)
{
    unsigned char b[16];
    put_le64(b, seq);
    put_le64(b + 8, (uint64_t)usage_crc32c(0, b, 8) | (uint64_t)SPOOL_ACK_MAGIC << 32);
    for (;;) {
        ssize_t w = pwrite(sp->ack_fd, b, sizeof(b), 0);
        if (w == (ssize_t)sizeof(b)) {
            return 0;
        }
        if (w == -1 && errno != EINTR) {
            return -errno;
        }
    }
}

static struct seg *seg_push(struct usage_spool *sp, uint64_t first)
{
    if (sp->nsegs == sp->capsegs) {
        sp->capsegs = sp->capsegs ? sp->capsegs * 2 : 16;
        sp->segs = px_realloc(sp->segs, sp->capsegs * sizeof(*sp->segs));
    }
    struct seg *s = &sp->segs[sp->nsegs++];
    memset(s, 0, sizeof(*s));
    s->first_seq = first;
    return s;
}

static int cmp_seg(const void *a, const void *b)
{
    const struct seg *x = a;
    const struct seg *y = b;
    return x->first_seq < y->first_seq ? -1 : x->first_seq > y->first_seq;
}

/* Offset of the next whole valid record at or after off, or len when there is none. */
static size_t next_valid(const unsigned char *buf, size_t len, size_t off)
{
    struct usage_event ev;
    uint64_t seq;
    for (size_t j = off; j < len; j++) {
        if (buf[j] == 'P' && usage_rec_decode(buf + j, len - j, &ev, &seq) > 0) {
            return j;
        }
    }
    return len;
}

/* Copy damaged bytes aside for an operator. */
static void save_corrupt(struct usage_spool *sp, uint64_t first, uint64_t off,
                         const unsigned char *p, size_t n)
{
    char name[80];
    char path[PATH_MAX];
    snprintf(name, sizeof(name), "corrupt-%016" PRIx64 "-%" PRIu64 ".bin", first, off);
    if (path_in(sp, path, sizeof(path), name) < 0) {
        return;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1 || write_all(fd, p, n) < 0 || fsync(fd) == -1) {
        px_log(PX_LOG_ERROR, "msg=\"cannot save damaged spool bytes\" path=%s err=\"%s\"", path,
               strerror(errno));
    }
    if (fd != -1) {
        close(fd);
    }
    px_log(PX_LOG_ERROR,
           "msg=\"damaged usage spool bytes moved aside\" segment=%016" PRIx64 " offset=%" PRIu64
           " bytes=%zu saved=%s",
           first, off, n, path);
}

/* Scan one segment (recovery). Keeps its valid records, cuts a torn tail off the last
 * segment, and rewrites a damaged one without its damage. */
static int recover_seg(struct usage_spool *sp, struct seg *s, int is_last)
{
    char name[40];
    char path[PATH_MAX];
    struct usage_event ev;
    uint64_t seq;
    int rc;

    seg_name(name, s->first_seq);
    if ((rc = path_in(sp, path, sizeof(path), name)) < 0) {
        return rc;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) == -1) {
        rc = -errno;
        goto out;
    }
    size_t len = (size_t)st.st_size;
    if (len > 2 * (size_t)SPOOL_SEG_MAX) {
        rc = -EFBIG;
        goto out;
    }
    unsigned char *buf = px_malloc(len ? len : 1);
    size_t got = 0;
    if ((rc = pread_all(fd, buf, len, 0, &got)) < 0) {
        free(buf);
        goto out;
    }
    len = got;
    /* Valid records are compacted in place to the front of buf when there is damage. */
    size_t off = 0;
    size_t keep = 0;
    int damaged = 0;
    while (off < len) {
        long r = usage_rec_decode(buf + off, len - off, &ev, &seq);
        if (r > 0) {
            if (keep != off) {
                memmove(buf + keep, buf + off, (size_t)r);
            }
            keep += (size_t)r;
            off += (size_t)r;
            s->last_seq = seq > s->last_seq ? seq : s->last_seq;
            continue;
        }
        if (r == 0 && is_last) {
            /* A torn tail: the write a crash interrupted. */
            sp->torn_bytes += len - off;
            px_log(PX_LOG_WARN, "msg=\"usage spool torn tail cut\" segment=%s offset=%zu bytes=%zu",
                   name, off, len - off);
            break;
        }
        size_t next = next_valid(buf, len, off + 1);
        save_corrupt(sp, s->first_seq, off, buf + off, next - off);
        sp->corrupt_bytes += next - off;
        damaged = 1;
        off = next;
    }
    if (damaged) {
        char tmp[PATH_MAX];
        if ((rc = path_in(sp, tmp, sizeof(tmp), "seg.tmp")) == 0) {
            int t = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            rc = t == -1 ? -errno : write_all(t, buf, keep);
            if (rc == 0 && fsync(t) == -1) {
                rc = -errno;
            }
            if (t != -1) {
                close(t);
            }
            if (rc == 0 && rename(tmp, path) == -1) {
                rc = -errno;
            }
            if (rc == 0) {
                rc = sync_dir(sp);
            }
        }
    } else if (keep < (size_t)st.st_size) {
        if (ftruncate(fd, (off_t)keep) == -1 || fsync(fd) == -1) {
            rc = -errno;
        }
    }
    free(buf);
    s->bytes = keep;
out:
    close(fd);
    return rc;
}

static int scan_dir(struct usage_spool *sp)
{
    DIR *d = opendir(sp->dir);
    if (d == NULL) {
        return -errno;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long first;
        char tail[8];
        if (strlen(de->d_name) == 24 && sscanf(de->d_name, "seg-%16llx%4s", &first, tail) == 2 &&
            strcmp(tail, ".log") == 0) {
            seg_push(sp, (uint64_t)first);
        }
    }
    closedir(d);
    if (sp->nsegs > 1) {
        qsort(sp->segs, sp->nsegs, sizeof(*sp->segs), cmp_seg);
    }
    return 0;
}

static int open_active(struct usage_spool *sp, int create)
{
    char name[40];
    char path[PATH_MAX];
    struct seg *s = &sp->segs[sp->nsegs - 1];
    seg_name(name, s->first_seq);
    int rc = path_in(sp, path, sizeof(path), name);
    if (rc < 0) {
        return rc;
    }
    sp->app_fd =
        open(path, O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0644);
    if (sp->app_fd == -1) {
        return -errno;
    }
    return create ? sync_dir(sp) : 0;
}

int usage_spool_open(struct usage_spool **out, const char *dir, uint64_t max_bytes,
                     uint64_t segment_bytes, char *err, size_t errcap)
{
    struct usage_spool *sp = px_calloc(1, sizeof(*sp));
    const char *what = "";
    char path[PATH_MAX];
    int rc;

    *out = NULL;
    sp->lock_fd = sp->ack_fd = sp->app_fd = sp->rej_fd = sp->rd_fd = -1;
    sp->max_bytes = max_bytes;
    /* A segment is at most a quarter of the cap, so fully shipped segments can always be
     * deleted to make room before the cap is reached. */
    segment_bytes = segment_bytes < max_bytes / 4 ? segment_bytes : max_bytes / 4;
    segment_bytes = segment_bytes < SPOOL_SEG_MIN ? SPOOL_SEG_MIN : segment_bytes;
    sp->segment_bytes = segment_bytes > SPOOL_SEG_MAX ? SPOOL_SEG_MAX : segment_bytes;
    pthread_mutex_init(&sp->mu, NULL);
    if (strlen(dir) >= sizeof(sp->dir)) {
        rc = -ENAMETOOLONG;
        what = "path";
        goto fail;
    }
    memcpy(sp->dir, dir, strlen(dir) + 1);
    if ((rc = make_dirs(dir)) < 0) {
        what = "cannot create the directory";
        goto fail;
    }
    if ((rc = path_in(sp, path, sizeof(path), "lock")) < 0) {
        goto fail;
    }
    sp->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (sp->lock_fd == -1) {
        rc = -errno;
        what = "cannot open the lock file";
        goto fail;
    }
    if (flock(sp->lock_fd, LOCK_EX | LOCK_NB) == -1) {
        rc = -errno;
        what = "locked by another process (one privax per data_dir)";
        goto fail;
    }
    if ((rc = load_id(sp)) < 0) {
        what = "cannot read or write the id file";
        goto fail;
    }
    if ((rc = load_ack(sp)) < 0) {
        what = "cannot open the ack file";
        goto fail;
    }
    if ((rc = scan_dir(sp)) < 0) {
        what = "cannot list the directory";
        goto fail;
    }
    uint64_t max_seq = sp->acked;
    for (size_t i = 0; i < sp->nsegs; i++) {
        if ((rc = recover_seg(sp, &sp->segs[i], i + 1 == sp->nsegs)) < 0) {
            what = "cannot recover a segment";
            goto fail;
        }
        sp->total_bytes += sp->segs[i].bytes;
        max_seq = sp->segs[i].last_seq > max_seq ? sp->segs[i].last_seq : max_seq;
        /* An empty segment's name is the next number it was going to use. */
        if (sp->segs[i].first_seq > 0 && sp->segs[i].first_seq - 1 > max_seq) {
            max_seq = sp->segs[i].first_seq - 1;
        }
    }
    sp->last_seq = max_seq;
    if (sp->acked > sp->last_seq) {
        sp->acked = sp->last_seq;
    }
    if (sp->nsegs == 0) {
        seg_push(sp, sp->last_seq + 1);
        rc = open_active(sp, 1);
    } else {
        rc = open_active(sp, 0);
    }
    if (rc < 0) {
        what = "cannot open the active segment";
        goto fail;
    }
    sp->encbuf = px_malloc((size_t)SPOOL_ENC_RECORDS * USAGE_REC_MAX);
    sp->rdbuf = px_malloc(SPOOL_READ_CHUNK);
    *out = sp;
    return 0;
fail:
    snprintf(err, errcap, "usage spool %s: %s: %s", dir, what, px_strerror(rc));
    usage_spool_close(sp);
    return rc;
}

void usage_spool_close(struct usage_spool *sp)
{
    if (sp == NULL) {
        return;
    }
    int fds[] = {sp->app_fd, sp->ack_fd, sp->rej_fd, sp->rd_fd, sp->lock_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (fds[i] != -1) {
            close(fds[i]);
        }
    }
    pthread_mutex_destroy(&sp->mu);
    free(sp->segs);
    free(sp->encbuf);
    free(sp->rdbuf);
    free(sp);
}

/* Start a new active segment (appender). */
static int rotate(struct usage_spool *sp)
{
    if (fdatasync(sp->app_fd) == -1) {
        return -errno;
    }
    close(sp->app_fd);
    sp->app_fd = -1;
    pthread_mutex_lock(&sp->mu);
    seg_push(sp, sp->last_seq + 1);
    pthread_mutex_unlock(&sp->mu);
    return open_active(sp, 1);
}

int usage_spool_append(struct usage_spool *sp, struct usage_event *const *evs, size_t n,
                       size_t *appended)
{
    *appended = 0;
    while (*appended < n) {
        pthread_mutex_lock(&sp->mu);
        uint64_t active_bytes = sp->segs[sp->nsegs - 1].bytes;
        uint64_t room = sp->total_bytes < sp->max_bytes ? sp->max_bytes - sp->total_bytes : 0;
        uint64_t seq = sp->last_seq;
        pthread_mutex_unlock(&sp->mu);
        if (active_bytes >= sp->segment_bytes) {
            int rc = rotate(sp);
            if (rc < 0) {
                return rc;
            }
            continue;
        }
        size_t len = 0;
        size_t k = 0;
        while (*appended + k < n && k < SPOOL_ENC_RECORDS) {
            unsigned char *p = sp->encbuf + len;
            size_t r = usage_rec_encode(evs[*appended + k], seq + k + 1, p, USAGE_REC_MAX);
            if (len + r > room) {
                break;
            }
            len += r;
            k++;
        }
        if (k == 0) {
            return 0; /* the cap: the caller sees *appended < n */
        }
        int rc = write_all(sp->app_fd, sp->encbuf, len);
        if (rc < 0) {
            /* Cut back whatever part of this write landed, so that a later append does not
             * follow a half record; the file's size is the published size. */
            if (ftruncate(sp->app_fd, (off_t)active_bytes) == -1) {
                px_log(PX_LOG_ERROR, "msg=\"usage spool cannot cut a failed write\" err=\"%s\"",
                       strerror(errno));
            }
            return rc;
        }
        for (size_t i = 0; i < k; i++) {
            evs[*appended + i]->spool_id = sp->spool_id;
            evs[*appended + i]->spool_seq = seq + i + 1;
        }
        pthread_mutex_lock(&sp->mu);
        struct seg *s = &sp->segs[sp->nsegs - 1];
        s->bytes += len;
        s->last_seq = seq + k;
        sp->total_bytes += len;
        sp->last_seq = seq + k;
        pthread_mutex_unlock(&sp->mu);
        *appended += k;
    }
    return 0;
}

int usage_spool_sync(struct usage_spool *sp)
{
    return fdatasync(sp->app_fd) == -1 ? -errno : 0;
}

/* Point the reader's fd at segment first (reader thread). */
static int reader_open(struct usage_spool *sp, uint64_t first)
{
    if (sp->rd_fd != -1 && sp->rd_first == first) {
        return 0;
    }
    if (sp->rd_fd != -1) {
        close(sp->rd_fd);
        sp->rd_fd = -1;
    }
    char name[40];
    char path[PATH_MAX];
    seg_name(name, first);
    int rc = path_in(sp, path, sizeof(path), name);
    if (rc < 0) {
        return rc;
    }
    sp->rd_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (sp->rd_fd == -1) {
        return -errno;
    }
    sp->rd_first = first;
    sp->rd_off = 0;
    sp->rd_after = 0;
    return 0;
}

int usage_spool_read(struct usage_spool *sp, uint64_t after, struct usage_event *out, size_t max,
                     size_t *n)
{
    *n = 0;
    for (;;) {
        /* The segment that holds after + 1, and how much of it is written. */
        pthread_mutex_lock(&sp->mu);
        size_t i = 0;
        while (i + 1 < sp->nsegs && sp->segs[i + 1].first_seq <= after + 1) {
            i++;
        }
        while (i < sp->nsegs && sp->segs[i].last_seq <= after && i + 1 < sp->nsegs) {
            i++;
        }
        struct seg s = sp->segs[i];
        int is_last = i + 1 == sp->nsegs;
        pthread_mutex_unlock(&sp->mu);
        if (s.last_seq <= after || *n == max) {
            return 0;
        }
        int rc = reader_open(sp, s.first_seq);
        if (rc < 0) {
            return rc;
        }
        if (sp->rd_after > after || sp->rd_off > s.bytes) {
            sp->rd_off = 0; /* a re-read of older records: scan from the start */
            sp->rd_after = 0;
        }
        uint64_t off = sp->rd_off;
        while (off < s.bytes && *n < max) {
            size_t want = s.bytes - off < SPOOL_READ_CHUNK ? (size_t)(s.bytes - off)
                                                           : (size_t)SPOOL_READ_CHUNK;
            size_t got = 0;
            if ((rc = pread_all(sp->rd_fd, sp->rdbuf, want, off, &got)) < 0) {
                return rc;
            }
            size_t pos = 0;
            while (pos < got && *n < max) {
                uint64_t seq;
                long r = usage_rec_decode(sp->rdbuf + pos, got - pos, &out[*n], &seq);
                if (r == 0) {
                    break; /* the record continues in the next chunk */
                }
                if (r < 0) {
                    /* Changed under us since recovery: skip to the next whole record. */
                    size_t next = next_valid(sp->rdbuf, got, pos + 1);
                    px_log(PX_LOG_ERROR,
                           "msg=\"damaged usage spool record skipped\" segment=%016" PRIx64
                           " offset=%" PRIu64 " bytes=%zu",
                           s.first_seq, off + pos, next - pos);
                    pos = next;
                    continue;
                }
                pos += (size_t)r;
                if (seq > after) {
                    out[*n].spool_id = sp->spool_id;
                    after = seq;
                    (*n)++;
                }
            }
            if (pos == 0) {
                return PX_EPARSE; /* a record larger than a chunk: cannot happen */
            }
            off += pos;
        }
        if (off >= s.bytes && after < s.last_seq && !is_last) {
            /* Nothing left to read although the table says newer records were here (they
             * were skipped as damaged): the segment is done. */
            after = s.last_seq;
        }
        sp->rd_off = off;
        sp->rd_after = after;
        if (*n == max || is_last) {
            return 0;
        }
    }
}

int usage_spool_ack(struct usage_spool *sp, uint64_t seq)
{
    int rc = write_ack(sp, seq);
    if (rc < 0) {
        return rc;
    }
    /* Whole segments below the active one with nothing newer than seq can go. */
    pthread_mutex_lock(&sp->mu);
    sp->acked = seq > sp->acked ? seq : sp->acked;
    size_t ndel = 0;
    while (ndel + 1 < sp->nsegs && sp->segs[ndel].last_seq <= seq) {
        ndel++;
    }
    pthread_mutex_unlock(&sp->mu);
    if (ndel == 0) {
        return 0;
    }
    /* The ack must be durable before the records it covers disappear. */
    if (fdatasync(sp->ack_fd) == -1) {
        return -errno;
    }
    for (size_t i = 0; i < ndel; i++) {
        char name[40];
        char path[PATH_MAX];
        uint64_t first = sp->segs[i].first_seq; /* only this thread removes entries */
        if (sp->rd_fd != -1 && sp->rd_first == first) {
            close(sp->rd_fd);
            sp->rd_fd = -1;
        }
        seg_name(name, first);
        if ((rc = path_in(sp, path, sizeof(path), name)) < 0 ||
            (unlink(path) == -1 && errno != ENOENT)) {
            rc = rc < 0 ? rc : -errno;
            ndel = i;
            break;
        }
    }
    pthread_mutex_lock(&sp->mu);
    for (size_t i = 0; i < ndel; i++) {
        sp->total_bytes -= sp->segs[i].bytes;
    }
    memmove(sp->segs, sp->segs + ndel, (sp->nsegs - ndel) * sizeof(*sp->segs));
    sp->nsegs -= ndel;
    pthread_mutex_unlock(&sp->mu);
    int rc2 = sync_dir(sp);
    return rc < 0 ? rc : rc2;
}

int usage_spool_reject(struct usage_spool *sp, const struct usage_event *ev, const char *why)
{
    if (sp->rej_fd == -1) {
        char path[PATH_MAX];
        int rc = path_in(sp, path, sizeof(path), "rejected.jsonl");
        if (rc < 0) {
            return rc;
        }
        sp->rej_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (sp->rej_fd == -1) {
            return -errno;
        }
    }
    /* Strings that fail the check may not be valid UTF-8: jansson's json_stringn_nocheck
     * would emit them raw, so only the ids an operator needs are written, sanitized. */
    char rid[sizeof(ev->request_id)];
    char ten[sizeof(ev->tenant_id)];
    snprintf(rid, sizeof(rid), "%.*s", (int)sizeof(rid) - 1, ev->request_id);
    snprintf(ten, sizeof(ten), "%.*s", (int)sizeof(ten) - 1, ev->tenant_id);
    px_utf8_sanitize(rid);
    px_utf8_sanitize(ten);
    json_t *j = json_pack(
        "{s:s,s:I,s:I,s:s,s:s,s:I,s:I,s:I,s:I,s:i}", "why", why, "spool_id",
        (json_int_t)ev->spool_id, "spool_seq", (json_int_t)ev->spool_seq, "request_id", rid,
        "tenant_id", ten, "event_time_ms", (json_int_t)ev->event_time_ms, "prompt_tokens",
        (json_int_t)ev->prompt_tokens, "completion_tokens", (json_int_t)ev->completion_tokens,
        "total_tokens", (json_int_t)ev->total_tokens, "status_code", ev->status_code);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s == NULL) {
        return PX_EPARSE;
    }
    size_t len = strlen(s);
    s[len] = '\n'; /* replaces the NUL; written with an explicit length */
    int rc = write_all(sp->rej_fd, s, len + 1);
    free(s);
    if (rc == 0 && fdatasync(sp->rej_fd) == -1) {
        rc = -errno;
    }
    return rc;
}

void usage_spool_stats(struct usage_spool *sp, struct usage_spool_stats *out)
{
    pthread_mutex_lock(&sp->mu);
    out->spool_id = sp->spool_id;
    out->bytes = sp->total_bytes;
    out->max_bytes = sp->max_bytes;
    out->rows = sp->last_seq - sp->acked;
    out->last_seq = sp->last_seq;
    out->acked_seq = sp->acked;
    out->segments = sp->nsegs;
    out->corrupt_bytes = sp->corrupt_bytes;
    out->torn_bytes = sp->torn_bytes;
    pthread_mutex_unlock(&sp->mu);
}
