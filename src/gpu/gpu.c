/* GPU sampling: the line parser, the three sources and the sampler on the loop.
 *
 * Design note. A sample runs in libuv's thread pool (uv_queue_work) because every source may
 * block: NVML calls take the driver's lock, a file may sit on a slow disk, a command may
 * hang. One sample is in flight at a time; when it is back on the loop thread (after_work)
 * it is published and the next one is scheduled interval_ms later, so a slow source slows
 * the sampling down instead of piling up work. A command runs under /bin/sh -c in its own
 * process group with stdin and stderr on /dev/null and every other descriptor closed; it is
 * killed (the whole group) when it runs past gpu.timeout_ms, and its output is capped at
 * GPU_OUTPUT_MAX bytes. The sampler is freed only when both its timer is closed and no work
 * is in flight, whichever comes last.
 *
 * History: one tick per finished sample; a tick holds the utilisation of every GPU slot or
 * -1 (failed sample, GPU missing from it, or N/A). Slots map GPU ids in the order they are
 * first seen (at most GPU_MAX). */
#include "gpu/gpu.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

extern char **environ;

/* ------------------------------------------------------------------------------------------
 * The line parser */

/* An N/A spelling nvidia-smi uses for a figure it cannot read. */
static int is_na(const char *p, size_t n)
{
    static const char *const na[] = {"N/A", "[N/A]", "[Not Supported]", "[Unknown Error]",
                                     "[GPU is lost]"};
    for (size_t i = 0; i < sizeof(na) / sizeof(na[0]); i++) {
        if (strlen(na[i]) == n && memcmp(na[i], p, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* A non-negative decimal: digits, optionally '.' and 1..6 digits. At most 12 integer digits,
 * so the value is exact in a double. */
static int parse_decimal(const char *p, size_t n, double *out)
{
    size_t i = 0;
    double v = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (i >= 12) {
            return PX_EPARSE;
        }
        v = v * 10 + (p[i] - '0');
    }
    if (i == 0) {
        return PX_EPARSE;
    }
    if (i < n) {
        if (p[i] != '.' || n - i - 1 == 0 || n - i - 1 > 6) {
            return PX_EPARSE;
        }
        double scale = 0.1;
        for (i++; i < n; i++) {
            if (p[i] < '0' || p[i] > '9') {
                return PX_EPARSE;
            }
            v += (p[i] - '0') * scale;
            scale /= 10;
        }
    }
    *out = v;
    return 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Split (p, n) into at most 5 fields, trimmed of blanks: at commas when the line has one
 * (CSV; an empty field is an error), else at runs of blanks. An N/A figure in brackets may
 * contain a space ("[Not Supported]"), so in blank-separated mode a '[' starts a field that
 * runs to its ']'. Returns the field count, or -1. */
static int split_fields(const char *p, size_t n, const char *f[5], size_t fl[5])
{
    int nf = 0;
    if (memchr(p, ',', n) != NULL) {
        size_t start = 0;
        for (;;) {
            const char *c = memchr(p + start, ',', n - start);
            size_t a = start;
            size_t b = c ? (size_t)(c - p) : n;
            while (a < b && is_space(p[a])) {
                a++;
            }
            while (b > a && is_space(p[b - 1])) {
                b--;
            }
            if (a == b || nf == 5) {
                return -1;
            }
            f[nf] = p + a;
            fl[nf++] = b - a;
            if (c == NULL) {
                return nf;
            }
            start = (size_t)(c - p) + 1;
        }
    }
    size_t i = 0;
    for (;;) {
        while (i < n && is_space(p[i])) {
            i++;
        }
        if (i == n) {
            return nf;
        }
        if (nf == 5) {
            return -1;
        }
        size_t start = i;
        if (p[i] == '[') {
            while (i < n && p[i] != ']') {
                i++;
            }
            if (i == n) {
                return -1;
            }
            i++;
        } else {
            while (i < n && !is_space(p[i])) {
                i++;
            }
        }
        f[nf] = p + start;
        fl[nf++] = i - start;
    }
}

static int parse_figure(const char *p, size_t n, double max, double *out)
{
    if (is_na(p, n)) {
        *out = -1;
        return 0;
    }
    if (parse_decimal(p, n, out) < 0 || *out > max) {
        return PX_EPARSE;
    }
    return 0;
}

int gpu_parse_line(const char *p, size_t n, struct gpu_reading *out)
{
    if (n > 0 && p[n - 1] == '\r') {
        n--;
    }
    size_t i = 0;
    while (i < n && is_space(p[i])) {
        i++;
    }
    if (i == n || p[i] == '#') {
        return 0;
    }
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)p[k];
        if (c < 0x20 && c != '\t') {
            return PX_EPARSE;
        }
    }
    const char *f[5];
    size_t fl[5];
    if (split_fields(p, n, f, fl) != 4) {
        return PX_EPARSE;
    }
    double id;
    struct gpu_reading r;
    if (parse_decimal(f[0], fl[0], &id) < 0 || memchr(f[0], '.', fl[0]) != NULL ||
        id > GPU_ID_MAX) {
        return PX_EPARSE;
    }
    r.id = (int)id;
    if (parse_figure(f[1], fl[1], 100, &r.util_pct) < 0 ||
        parse_figure(f[2], fl[2], 1e12, &r.mem_used_mib) < 0 ||
        parse_figure(f[3], fl[3], 1e12, &r.mem_total_mib) < 0) {
        return PX_EPARSE;
    }
    if (r.mem_used_mib >= 0 && r.mem_total_mib >= 0 && r.mem_used_mib > r.mem_total_mib) {
        return PX_EPARSE;
    }
    *out = r;
    return 1;
}

int gpu_parse(const char *p, size_t n, struct gpu_reading *out, size_t cap, size_t *nout, char *err,
              size_t errcap)
{
    size_t count = 0;
    size_t start = 0;
    int line = 1;
    *nout = 0;
    while (start < n) {
        const char *nl = memchr(p + start, '\n', n - start);
        size_t end = nl ? (size_t)(nl - p) : n;
        struct gpu_reading r;
        int rc = gpu_parse_line(p + start, end - start, &r);
        if (rc < 0) {
            snprintf(err, errcap,
                     "line %d: expected \"gpu_id utilization_pct memory_used_mib "
                     "memory_total_mib\"",
                     line);
            return PX_EPARSE;
        }
        if (rc == 1) {
            for (size_t k = 0; k < count; k++) {
                if (out[k].id == r.id) {
                    snprintf(err, errcap, "line %d: gpu %d listed twice", line, r.id);
                    return PX_EPARSE;
                }
            }
            if (count == cap) {
                snprintf(err, errcap, "line %d: more than %zu GPUs", line, cap);
                return PX_EPARSE;
            }
            out[count++] = r;
        }
        start = end + 1;
        line++;
    }
    *nout = count;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * NVML, declared here (no header needed): the few calls and structs privax uses, as in
 * nvml.h of the NVIDIA driver. Every call returns nvmlReturn_t, 0 = NVML_SUCCESS. */

typedef struct nvml_device *nvml_device_t;
struct nvml_utilization {
    unsigned int gpu;    /* percent of time a kernel ran over the last sample period */
    unsigned int memory; /* percent of time memory was read or written */
};
struct nvml_memory {
    unsigned long long total; /* bytes */
    unsigned long long free;  /* bytes */
    unsigned long long used;  /* bytes */
};
typedef int (*nvml_init_fn)(void);
typedef int (*nvml_shutdown_fn)(void);
typedef int (*nvml_count_fn)(unsigned int *count);
typedef int (*nvml_handle_fn)(unsigned int index, nvml_device_t *dev);
typedef int (*nvml_util_fn)(nvml_device_t dev, struct nvml_utilization *u);
typedef int (*nvml_mem_fn)(nvml_device_t dev, struct nvml_memory *m);

struct nvml {
    void *lib;
    nvml_init_fn init;
    nvml_shutdown_fn shutdown;
    nvml_count_fn count;
    nvml_handle_fn handle;
    nvml_util_fn util;
    nvml_mem_fn mem;
    int initialised; /* nvmlInit_v2 succeeded (touched by the worker, then by the freeing) */
};

/* dlsym into a function pointer without the object/function pointer cast warning. */
static void *sym(void *lib, const char *name)
{
    return dlsym(lib, name);
}

static int nvml_load(struct nvml *n, char *err, size_t errcap)
{
    memset(n, 0, sizeof(*n));
    n->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (n->lib == NULL) {
        const char *e = dlerror();
        snprintf(err, errcap, "nvml: cannot load libnvidia-ml.so.1: %s", e ? e : "?");
        return PX_ECONFIG;
    }
    void *p[6] = {sym(n->lib, "nvmlInit_v2"),
                  sym(n->lib, "nvmlShutdown"),
                  sym(n->lib, "nvmlDeviceGetCount_v2"),
                  sym(n->lib, "nvmlDeviceGetHandleByIndex_v2"),
                  sym(n->lib, "nvmlDeviceGetUtilizationRates"),
                  sym(n->lib, "nvmlDeviceGetMemoryInfo")};
    for (size_t i = 0; i < 6; i++) {
        if (p[i] == NULL) {
            snprintf(err, errcap, "nvml: libnvidia-ml.so.1 lacks a symbol (driver too old?)");
            dlclose(n->lib);
            n->lib = NULL;
            return PX_ECONFIG;
        }
    }
    memcpy(&n->init, &p[0], sizeof(void *));
    memcpy(&n->shutdown, &p[1], sizeof(void *));
    memcpy(&n->count, &p[2], sizeof(void *));
    memcpy(&n->handle, &p[3], sizeof(void *));
    memcpy(&n->util, &p[4], sizeof(void *));
    memcpy(&n->mem, &p[5], sizeof(void *));
    return 0;
}

static void nvml_unload(struct nvml *n)
{
    if (n->lib == NULL) {
        return;
    }
    if (n->initialised) {
        n->shutdown();
    }
    dlclose(n->lib);
    n->lib = NULL;
}

/* Worker thread. */
static int nvml_sample(struct nvml *n, struct gpu_reading *out, size_t cap, size_t *nout, char *err,
                       size_t errcap)
{
    int rc;
    if (!n->initialised) {
        if ((rc = n->init()) != 0) {
            snprintf(err, errcap, "nvml: nvmlInit_v2 failed (nvmlReturn_t %d)", rc);
            return PX_EUPSTREAM;
        }
        n->initialised = 1;
    }
    unsigned int count = 0;
    if ((rc = n->count(&count)) != 0) {
        snprintf(err, errcap, "nvml: nvmlDeviceGetCount_v2 failed (nvmlReturn_t %d)", rc);
        return PX_EUPSTREAM;
    }
    size_t k = 0;
    for (unsigned int i = 0; i < count && k < cap && i <= GPU_ID_MAX; i++) {
        nvml_device_t dev;
        struct nvml_utilization u;
        struct nvml_memory m;
        struct gpu_reading *r = &out[k++];
        r->id = (int)i;
        r->util_pct = r->mem_used_mib = r->mem_total_mib = -1;
        if (n->handle(i, &dev) != 0) {
            continue; /* a lost GPU: its figures are unknown, not zero */
        }
        if (n->util(dev, &u) == 0 && u.gpu <= 100) {
            r->util_pct = u.gpu;
        }
        if (n->mem(dev, &m) == 0 && m.used <= m.total) {
            r->mem_used_mib = (double)(m.used / (1024 * 1024));
            r->mem_total_mib = (double)(m.total / (1024 * 1024));
        }
    }
    *nout = k;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Command and file sources (worker thread) */

static int read_file_capped(const char *path, char *buf, size_t cap, size_t *n, char *err,
                            size_t errcap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        snprintf(err, errcap, "file %s: %s", path, strerror(errno));
        return -errno;
    }
    size_t len = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            char c;
            ssize_t r = read(fd, &c, 1);
            if (r > 0) {
                snprintf(err, errcap, "file %s: larger than %zu bytes", path, cap);
                rc = PX_EOVERFLOW;
            }
            break;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r == -1 && errno == EINTR) {
            continue;
        }
        if (r == -1) {
            snprintf(err, errcap, "file %s: %s", path, strerror(errno));
            rc = -errno;
            break;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
    }
    close(fd);
    *n = len;
    return rc;
}

static uint64_t mono_ms(void)
{
    return px_mono_ms();
}

/* Wait for pid until deadline (mono ms); then kill its group and reap. Returns the wait
 * status, or -1 when it had to be killed. */
static int reap_by(pid_t pid, uint64_t deadline)
{
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            return st;
        }
        if (r == -1 && errno != EINTR) {
            return 0; /* not our child any more (reaped elsewhere): nothing to report */
        }
        if (mono_ms() >= deadline) {
            kill(-pid, SIGKILL);
            while (waitpid(pid, &st, 0) == -1 && errno == EINTR) {
            }
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int run_command(const char *cmd, uint64_t timeout_ms, char *buf, size_t cap, size_t *n,
                       char *err, size_t errcap)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == -1) {
        snprintf(err, errcap, "command: pipe: %s", strerror(errno));
        return -errno;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&at);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGTERM);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGCHLD);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dfl);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
    char sh[] = "/bin/sh", dash_c[] = "-c";
    char *argv[] = {sh, dash_c, (char *)(uintptr_t)cmd, NULL};
    pid_t pid;
    int src = posix_spawn(&pid, "/bin/sh", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(fds[1]);
    if (src != 0) {
        close(fds[0]);
        snprintf(err, errcap, "command: cannot start /bin/sh: %s", strerror(src));
        return -src;
    }
    uint64_t deadline = mono_ms() + timeout_ms;
    size_t len = 0;
    int rc = 0;
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline) {
            snprintf(err, errcap, "command: no output end within %llu ms (killed)",
                     (unsigned long long)timeout_ms);
            rc = -ETIMEDOUT;
            break;
        }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr == -1 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            continue; /* timeout: the deadline check above ends the loop */
        }
        if (len == cap) {
            snprintf(err, errcap, "command: more than %zu bytes of output", cap);
            rc = PX_EOVERFLOW;
            break;
        }
        ssize_t r = read(fds[0], buf + len, cap - len);
        if (r == -1 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0) {
            break; /* EOF (or an error reading the pipe, which ends it too) */
        }
        len += (size_t)r;
    }
    close(fds[0]);
    int st = reap_by(pid, rc == 0 ? deadline : 0);
    if (rc == 0 && st == -1) {
        snprintf(err, errcap, "command: did not exit within %llu ms (killed)",
                 (unsigned long long)timeout_ms);
        rc = -ETIMEDOUT;
    } else if (rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0) {
        snprintf(err, errcap, "command: exit status %d", WEXITSTATUS(st));
        rc = PX_EUPSTREAM;
    } else if (rc == 0 && WIFSIGNALED(st)) {
        snprintf(err, errcap, "command: killed by signal %d", WTERMSIG(st));
        rc = PX_EUPSTREAM;
    }
    *n = len;
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * The sampler */

enum gpu_src {
    GPU_SRC_NVML = 0,
    GPU_SRC_COMMAND,
    GPU_SRC_FILE,
    GPU_SRC_NONE,
};

static const char *const src_names[] = {"nvml", "command", "file", "none"};

/* What one sample produced; filled by the worker, read by after_work. */
struct gpu_result {
    int rc;                        /* 0 or an error (message in err) */
    struct gpu_reading r[GPU_MAX]; /* readings */
    size_t n;                      /* entries in r */
    char err[256];                 /* why the sample failed */
};

struct gpu_sampler {
    uv_loop_t *loop;
    const struct px_config *cfg;
    enum gpu_src src;      /* the source in use */
    struct nvml nvml;      /* loaded when src is NVML */
    uv_timer_t timer;      /* next sample */
    uv_work_t work;        /* the sample in flight */
    int working;           /* work is queued or running */
    int stopping;          /* gpu_sampler_stop() was called */
    int timer_closed;      /* the timer's close callback ran */
    char *outbuf;          /* GPU_OUTPUT_MAX bytes for command/file output (worker) */
    struct gpu_result res; /* the worker's result */
    /* Published (loop thread): */
    struct gpu_reading cur[GPU_MAX]; /* the last good sample */
    size_t ncur;                     /* entries in cur */
    uint64_t cur_mono_ms;            /* px_mono_ms() of the last good sample, 0 = never */
    int64_t cur_unix_ms;             /* wall clock of the last good sample */
    int last_ok;                     /* the last sample succeeded */
    char err[256];                   /* the last failure ("" when the last sample succeeded) */
    uint64_t ok_samples;             /* successful samples since start */
    uint64_t failed_samples;         /* failed samples since start */
    /* History: hist[tick * GPU_MAX + slot], ticks in a ring of hist_cap. */
    int slot_id[GPU_MAX]; /* GPU id in each slot */
    size_t nslots;        /* slots in use */
    float *hist;          /* utilisation percent or -1 */
    size_t hist_cap;      /* ticks kept (gpu.history) */
    size_t hist_len;      /* ticks stored, <= hist_cap */
    size_t hist_next;     /* ring index of the next tick */
};

static void work_cb(uv_work_t *w)
{
    struct gpu_sampler *s = w->data;
    struct gpu_result *res = &s->res;
    res->rc = 0;
    res->n = 0;
    res->err[0] = '\0';
    size_t len = 0;
    switch (s->src) {
    case GPU_SRC_NVML:
        res->rc = nvml_sample(&s->nvml, res->r, GPU_MAX, &res->n, res->err, sizeof(res->err));
        return;
    case GPU_SRC_COMMAND:
        res->rc = run_command(s->cfg->gpu_command, s->cfg->gpu_timeout_ms, s->outbuf,
                              GPU_OUTPUT_MAX, &len, res->err, sizeof(res->err));
        break;
    case GPU_SRC_FILE:
        res->rc = read_file_capped(s->cfg->gpu_file, s->outbuf, GPU_OUTPUT_MAX, &len, res->err,
                                   sizeof(res->err));
        break;
    case GPU_SRC_NONE:
        return;
    }
    if (res->rc == 0) {
        char perr[128];
        res->rc = gpu_parse(s->outbuf, len, res->r, GPU_MAX, &res->n, perr, sizeof(perr));
        if (res->rc < 0) {
            snprintf(res->err, sizeof(res->err), "%s: %s", src_names[s->src], perr);
        }
    }
}

static void maybe_free(struct gpu_sampler *s)
{
    if (!s->stopping || s->working || !s->timer_closed) {
        return;
    }
    nvml_unload(&s->nvml);
    free(s->outbuf);
    free(s->hist);
    free(s);
}

static size_t slot_of(struct gpu_sampler *s, int id)
{
    for (size_t i = 0; i < s->nslots; i++) {
        if (s->slot_id[i] == id) {
            return i;
        }
    }
    if (s->nslots == GPU_MAX) {
        return GPU_MAX;
    }
    s->slot_id[s->nslots] = id;
    /* A new slot has no past: mark its column unknown in every stored tick. */
    for (size_t t = 0; t < s->hist_cap; t++) {
        s->hist[t * GPU_MAX + s->nslots] = -1;
    }
    return s->nslots++;
}

static void push_tick(struct gpu_sampler *s, const struct gpu_result *res)
{
    float *tick = &s->hist[s->hist_next * GPU_MAX];
    for (size_t i = 0; i < GPU_MAX; i++) {
        tick[i] = -1;
    }
    for (size_t i = 0; res->rc == 0 && i < res->n; i++) {
        size_t slot = slot_of(s, res->r[i].id);
        if (slot < GPU_MAX) {
            tick[slot] = (float)res->r[i].util_pct;
        }
    }
    s->hist_next = (s->hist_next + 1) % s->hist_cap;
    if (s->hist_len < s->hist_cap) {
        s->hist_len++;
    }
}

static void timer_cb(uv_timer_t *t);

static void after_work_cb(uv_work_t *w, int status)
{
    struct gpu_sampler *s = w->data;
    s->working = 0;
    if (s->stopping || status != 0) {
        maybe_free(s);
        return;
    }
    const struct gpu_result *res = &s->res;
    push_tick(s, res);
    if (res->rc == 0) {
        memcpy(s->cur, res->r, res->n * sizeof(res->r[0]));
        s->ncur = res->n;
        s->cur_mono_ms = px_mono_ms();
        s->cur_unix_ms = px_now_ms();
        s->ok_samples++;
        if (!s->last_ok && s->err[0]) {
            px_log(PX_LOG_INFO, "event=gpu_sample_ok source=%s gpus=%zu", src_names[s->src],
                   res->n);
        }
        s->last_ok = 1;
        s->err[0] = '\0';
    } else {
        s->failed_samples++;
        /* Log a failure when it starts or changes, not every interval. */
        if (s->last_ok || strcmp(s->err, res->err) != 0) {
            px_log(PX_LOG_WARN, "event=gpu_sample_failed source=%s error=\"%s\"", src_names[s->src],
                   res->err);
        }
        s->last_ok = 0;
        snprintf(s->err, sizeof(s->err), "%s", res->err);
    }
    uv_timer_start(&s->timer, timer_cb, s->cfg->gpu_interval_ms, 0);
}

static void timer_cb(uv_timer_t *t)
{
    struct gpu_sampler *s = t->data;
    if (s->stopping || s->working) {
        return;
    }
    s->work.data = s;
    if (uv_queue_work(s->loop, &s->work, work_cb, after_work_cb) == 0) {
        s->working = 1;
    } else {
        uv_timer_start(&s->timer, timer_cb, s->cfg->gpu_interval_ms, 0);
    }
}

struct gpu_sampler *gpu_sampler_start(uv_loop_t *loop, const struct px_config *cfg)
{
    struct gpu_sampler *s = px_calloc(1, sizeof(*s));
    s->loop = loop;
    s->cfg = cfg;
    s->hist_cap = cfg->gpu_history > 0 ? cfg->gpu_history : 1;
    s->hist = px_malloc(s->hist_cap * GPU_MAX * sizeof(*s->hist));
    for (size_t i = 0; i < s->hist_cap * GPU_MAX; i++) {
        s->hist[i] = -1;
    }
    char err[256] = "";
    switch (cfg->gpu_source) {
    case PX_GPU_AUTO:
        if (nvml_load(&s->nvml, err, sizeof(err)) == 0) {
            s->src = GPU_SRC_NVML;
        } else if (cfg->gpu_command != NULL) {
            s->src = GPU_SRC_COMMAND;
        } else if (cfg->gpu_file != NULL) {
            s->src = GPU_SRC_FILE;
        } else {
            s->src = GPU_SRC_NONE;
        }
        err[0] = '\0';
        break;
    case PX_GPU_NVML:
        s->src = GPU_SRC_NVML;
        nvml_load(&s->nvml, err, sizeof(err)); /* on failure: no samples, the error shows */
        break;
    case PX_GPU_COMMAND:
        s->src = GPU_SRC_COMMAND;
        break;
    case PX_GPU_FILE:
        s->src = GPU_SRC_FILE;
        break;
    default:
        s->src = GPU_SRC_NONE;
        break;
    }
    if (s->src == GPU_SRC_COMMAND || s->src == GPU_SRC_FILE) {
        s->outbuf = px_malloc(GPU_OUTPUT_MAX);
    }
    snprintf(s->err, sizeof(s->err), "%s", err);
    if (err[0]) {
        px_log(PX_LOG_WARN, "event=gpu_source_unavailable error=\"%s\"", err);
    }
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    if (s->src != GPU_SRC_NONE && (s->src != GPU_SRC_NVML || s->nvml.lib != NULL)) {
        /* The first sample at once, so /health has figures within one interval of start. */
        uv_timer_start(&s->timer, timer_cb, 0, 0);
        /* Sampling alone must not keep a draining loop alive. */
        uv_unref((uv_handle_t *)&s->timer);
    }
    px_log(PX_LOG_INFO, "event=gpu_sampler source=%s interval_ms=%llu", src_names[s->src],
           (unsigned long long)cfg->gpu_interval_ms);
    return s;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct gpu_sampler *s = h->data;
    s->timer_closed = 1;
    maybe_free(s);
}

void gpu_sampler_stop(struct gpu_sampler *s)
{
    if (s == NULL) {
        return;
    }
    s->stopping = 1;
    uv_timer_stop(&s->timer);
    if (s->working && uv_cancel((uv_req_t *)&s->work) == 0) {
        /* Cancelled before it ran: after_work still fires, with UV_ECANCELED. */
    }
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

const char *gpu_sampler_source(const struct gpu_sampler *s)
{
    return src_names[s->src];
}

static int is_fresh(const struct gpu_sampler *s)
{
    if (!s->last_ok || s->cur_mono_ms == 0) {
        return 0;
    }
    uint64_t max_age = 3 * s->cfg->gpu_interval_ms + s->cfg->gpu_timeout_ms;
    return px_mono_ms() - s->cur_mono_ms <= max_age;
}

size_t gpu_sampler_current(const struct gpu_sampler *s, const struct gpu_reading **out)
{
    *out = s->cur;
    return is_fresh(s) ? s->ncur : 0;
}

uint64_t gpu_sampler_samples(const struct gpu_sampler *s, int ok)
{
    return ok ? s->ok_samples : s->failed_samples;
}

static json_t *figure(double v)
{
    return v < 0 ? json_null() : json_real((double)(int64_t)(v * 10 + 0.5) / 10);
}

static json_t *mib(double v)
{
    return v < 0 ? json_null() : json_integer((json_int_t)(v + 0.5));
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

json_t *gpu_sampler_gpus_json(const struct gpu_sampler *s, const struct px_config *cfg)
{
    /* The ids to show: every slot the sampler has seen and every backend's gpu_id. */
    int ids[GPU_MAX * 2];
    size_t nids = 0;
    for (size_t i = 0; i < s->nslots; i++) {
        ids[nids++] = s->slot_id[i];
    }
    for (size_t b = 0; b < cfg->nbackends && nids < GPU_MAX * 2; b++) {
        int id = cfg->backends[b].gpu_id;
        int seen = id < 0;
        for (size_t k = 0; k < nids && !seen; k++) {
            seen = ids[k] == id;
        }
        if (!seen) {
            ids[nids++] = id;
        }
    }
    qsort(ids, nids, sizeof(ids[0]), cmp_int);
    const struct gpu_reading *cur;
    size_t ncur = gpu_sampler_current(s, &cur);
    json_t *arr = json_array();
    for (size_t k = 0; k < nids; k++) {
        const struct gpu_reading *r = NULL;
        for (size_t i = 0; i < ncur; i++) {
            if (cur[i].id == ids[k]) {
                r = &cur[i];
            }
        }
        json_t *hist = json_array();
        for (size_t slot = 0; slot < s->nslots; slot++) {
            if (s->slot_id[slot] != ids[k]) {
                continue;
            }
            size_t first = (s->hist_next + s->hist_cap - s->hist_len) % s->hist_cap;
            for (size_t t = 0; t < s->hist_len; t++) {
                float v = s->hist[((first + t) % s->hist_cap) * GPU_MAX + slot];
                json_array_append_new(hist, figure(v));
            }
        }
        json_array_append_new(arr,
                              json_pack("{s:i,s:o,s:o,s:o,s:o}", "gpu_id", ids[k],
                                        "utilization_pct", r ? figure(r->util_pct) : json_null(),
                                        "memory_used_mib", r ? mib(r->mem_used_mib) : json_null(),
                                        "memory_total_mib", r ? mib(r->mem_total_mib) : json_null(),
                                        "utilization_history_pct", hist));
    }
    return arr;
}

json_t *gpu_sampler_status_json(const struct gpu_sampler *s)
{
    const char *err = s->err[0] ? s->err : NULL;
    if (err == NULL && s->last_ok && !is_fresh(s)) {
        err = "stale: no sample finished within 3 intervals";
    }
    return json_pack("{s:s,s:I,s:I,s:o,s:o,s:I,s:I}", "source", src_names[s->src], "interval_ms",
                     (json_int_t)s->cfg->gpu_interval_ms, "history", (json_int_t)s->hist_cap,
                     "last_sample_unix_ms",
                     s->cur_unix_ms ? json_integer(s->cur_unix_ms) : json_null(), "error",
                     err ? json_string(err) : json_null(), "samples_ok", (json_int_t)s->ok_samples,
                     "samples_failed", (json_int_t)s->failed_samples);
}
