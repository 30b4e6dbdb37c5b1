#ifndef PX_GPU_GPU_H
#define PX_GPU_GPU_H

/* GPU figures for /health, /metrics and `privax scale`: utilisation and memory per GPU,
 * sampled every gpu.interval_ms off the event loop (uv_queue_work) from one source:
 *
 *   nvml     libnvidia-ml.so.1 loaded at run time with dlopen (no build-time dependency);
 *   command  a shell command whose stdout is one line per GPU (see gpu_parse_line);
 *   file     a file in the same format (how tests and external collectors feed figures);
 *   none     no figures.
 *
 * `auto` (the default) picks NVML when the library loads, else the configured command, else
 * the configured file, else none. A figure that is not known is reported as unknown (JSON
 * null, no Prometheus sample), never as a made-up number: a failed or stale sample makes
 * every current figure unknown. A short history of utilisation samples (gpu.history ticks)
 * lets `privax scale` judge "sustained > 80%". See docs/internals/metrics.md. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"

#define GPU_MAX        64    /* GPUs tracked per node; more in one sample is an error */
#define GPU_ID_MAX     4095  /* largest GPU index accepted (config's gpu_id bound) */
#define GPU_OUTPUT_MAX 65536 /* bytes of command or file output read per sample */

/* One GPU in one sample. A figure is -1 when the source said it is not available
 * (nvidia-smi's "[N/A]" / "[Not Supported]"). */
struct gpu_reading {
    int id;               /* GPU index, as nvidia-smi and NVML number them */
    double util_pct;      /* GPU utilisation over the driver's last period, 0..100, or -1 */
    double mem_used_mib;  /* memory in use, MiB, or -1 */
    double mem_total_mib; /* memory installed, MiB, or -1 */
};

/* Parse one line of source output, (p, n) without its newline (a trailing '\r' is allowed).
 * Accepted: "ID UTIL USED TOTAL" separated by spaces/tabs, or the CSV nvidia-smi prints for
 * --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits
 * ("0, 37, 1024, 16384"). Numbers are plain decimals (UTIL may have a fraction); a figure may
 * be N/A, [N/A] or [Not Supported]. Rejected: other field counts, ids outside 0..GPU_ID_MAX,
 * utilisation over 100, used > total, anything else. Returns 1 and *out for a reading, 0 for
 * a blank line or a '#' comment, PX_EPARSE otherwise. Pure; any thread. */
int gpu_parse_line(const char *p, size_t n, struct gpu_reading *out);

/* Parse a whole output into out[cap]: every line must parse, no id may repeat and at most
 * cap GPUs are accepted. 0 with *nout set (possibly 0 GPUs), or PX_EPARSE with "line N: why"
 * in err (errcap bytes). Pure; any thread. */
int gpu_parse(const char *p, size_t n, struct gpu_reading *out, size_t cap, size_t *nout, char *err,
              size_t errcap);

struct gpu_sampler;

/* Start sampling as cfg->gpu_* say (cfg borrowed; must outlive the sampler). Never fails for
 * a missing library, file or command: those show as an error in gpu_sampler_json() and as
 * unknown figures. Returns the sampler; loop thread only. */
struct gpu_sampler *gpu_sampler_start(uv_loop_t *loop, const struct px_config *cfg);

/* Stop sampling; the sampler frees itself once its timer is closed and a sample still
 * running in the thread pool has finished (run the loop afterwards). NULL is a no-op. */
void gpu_sampler_stop(struct gpu_sampler *s);

/* The source in use: "nvml", "command", "file" or "none". Borrowed, static. */
const char *gpu_sampler_source(const struct gpu_sampler *s);

/* The current readings: their number, with *out borrowed until the next loop iteration.
 * 0 when the last sample failed, is older than 3 intervals (stale), or none was taken yet. */
size_t gpu_sampler_current(const struct gpu_sampler *s, const struct gpu_reading **out);

/* Samples taken since start that succeeded / failed. */
uint64_t gpu_sampler_samples(const struct gpu_sampler *s, int ok);

/* The "gpus" array of /health: one object per GPU the sampler knows or a backend names
 * (gpu_id >= 0), by id: {gpu_id, utilization_pct, memory_used_mib, memory_total_mib,
 * utilization_history_pct} with null for anything unknown. New reference. Loop thread. */
json_t *gpu_sampler_gpus_json(const struct gpu_sampler *s, const struct px_config *cfg);

/* The "gpu" object of /health: {source, interval_ms, history, last_sample_unix_ms, error}.
 * New reference. Loop thread. */
json_t *gpu_sampler_status_json(const struct gpu_sampler *s);

#endif
