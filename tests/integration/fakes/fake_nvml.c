/* A stand-in for the NVIDIA driver's libnvidia-ml.so.1, so the integration suite can drive
 * privax's NVML source (src/gpu/gpu.c loads it with dlopen) on a machine without a GPU.
 * Built as fakes/libnvidia-ml.so.1 in each build tree, found through LD_LIBRARY_PATH.
 *
 * Every call re-reads the file named by PX_FAKE_NVML_FILE, one GPU per line, by index:
 * "UTIL USED_MIB TOTAL_MIB", or "lost" for a GPU whose handle cannot be had. No file, or the
 * environment variable unset: nvmlInit_v2 fails with NVML_ERROR_DRIVER_NOT_LOADED (9). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fake_util {
    unsigned int gpu;
    unsigned int memory;
};
struct fake_mem {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
};

int nvmlInit_v2(void);
int nvmlShutdown(void);
int nvmlDeviceGetCount_v2(unsigned int *count);
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **dev);
int nvmlDeviceGetUtilizationRates(void *dev, struct fake_util *u);
int nvmlDeviceGetMemoryInfo(void *dev, struct fake_mem *m);

#define FAKE_MAX 16

struct fake_gpu {
    int lost;
    unsigned int util;
    unsigned long long used_mib, total_mib;
};

/* Read the file: the number of GPUs, or -1 when there is none. */
static int load(struct fake_gpu *g)
{
    const char *path = getenv("PX_FAKE_NVML_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f == NULL) {
        return -1;
    }
    char line[256];
    int n = 0;
    while (n < FAKE_MAX && fgets(line, sizeof(line), f) != NULL) {
        memset(&g[n], 0, sizeof(g[n]));
        if (strncmp(line, "lost", 4) == 0) {
            g[n].lost = 1;
        } else if (sscanf(line, "%u %llu %llu", &g[n].util, &g[n].used_mib, &g[n].total_mib) != 3) {
            continue;
        }
        n++;
    }
    fclose(f);
    return n;
}

int nvmlInit_v2(void)
{
    struct fake_gpu g[FAKE_MAX];
    return load(g) < 0 ? 9 : 0;
}

int nvmlShutdown(void)
{
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *count)
{
    struct fake_gpu g[FAKE_MAX];
    int n = load(g);
    if (n < 0) {
        return 9;
    }
    *count = (unsigned int)n;
    return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **dev)
{
    struct fake_gpu g[FAKE_MAX];
    int n = load(g);
    if (n < 0 || index >= (unsigned int)n || g[index].lost) {
        return 15; /* NVML_ERROR_GPU_IS_LOST */
    }
    *dev = (void *)(uintptr_t)(index + 1);
    return 0;
}

int nvmlDeviceGetUtilizationRates(void *dev, struct fake_util *u)
{
    struct fake_gpu g[FAKE_MAX];
    int n = load(g);
    unsigned int i = (unsigned int)((uintptr_t)dev - 1);
    if (n < 0 || i >= (unsigned int)n) {
        return 15;
    }
    u->gpu = g[i].util;
    u->memory = 0;
    return 0;
}

int nvmlDeviceGetMemoryInfo(void *dev, struct fake_mem *m)
{
    struct fake_gpu g[FAKE_MAX];
    int n = load(g);
    unsigned int i = (unsigned int)((uintptr_t)dev - 1);
    if (n < 0 || i >= (unsigned int)n) {
        return 15;
    }
    m->total = g[i].total_mib * 1024 * 1024;
    m->used = g[i].used_mib * 1024 * 1024;
    m->free = m->total - m->used;
    return 0;
}
