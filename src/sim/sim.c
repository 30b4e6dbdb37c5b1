/* The simulated GPU node: routing, request validation, per-model slots and a FIFO queue,
 * paced token emission, faults, the control endpoints and the stats. The bytes of each API
 * are in wire.c and the token source in gen.c; docs/internals/sim.md is the reference.
 *
 * Design note. Each generation request becomes a job with one uv_timer: the timer first
 * covers the model-load wait, then the prefill delay, then paces tokens (token i is due at
 * gen_t0 + i * 1000 / tokens_per_second ms, so a late callback catches up instead of
 * drifting). A job holds one of its model's `parallel` slots from the end of queueing to its
 * release; releasing a slot starts the next waiting job of that model on a zero timeout, never
 * recursively. A client that hangs up aborts its job at once (timer stopped, slot freed, the
 * disconnect counted and logged). Jobs free themselves from their timer's close callback;
 * the sim struct goes when it is being freed and its last job is gone. */
#include "sim/sim.h"

#include <http_parser.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"
#include "sim/internal.h"

#define SIM_MAX_MODEL_LEN    32768
#define SIM_MODEL_SIZE_BYTES 4683087332LL
#define SIM_KEEP_ALIVE_MS    (5 * 60 * 1000)
#define SIM_TEXT_MAX_BYTES   (4 * 1024 * 1024)
#define SIM_OUT_MAX_BYTES    (64 * 1024)
#define SIM_RESP_MAX_BYTES   (1024 * 1024)
#define SIM_OLLAMA_BUSY_MSG  "server busy, please try again.  maximum pending requests exceeded"

struct sim {
    uv_loop_t *loop;               /* the loop everything runs on */
    struct http_server *srv;       /* our HTTP server */
    struct sim_opts opts;          /* flags (models pointer not kept) */
    struct sim_model *models;      /* served models */
    size_t nmodels;                /* entries in models */
    struct sim_fault base_fault;   /* fault applied when no counted fault is pending */
    struct sim_fault temp_fault;   /* fault for the next temp_left generation requests */
    long temp_left;                /* generation requests temp_fault still applies to */
    struct sim_job *jobs;          /* live jobs */
    size_t njobs;                  /* jobs not yet freed (including closing ones) */
    unsigned waiting;              /* jobs waiting in any model FIFO */
    int freeing;                   /* 1 after sim_free */
    int64_t started_unix;          /* process start, unix seconds (OpenAI "created") */
    uint64_t st_requests;          /* generation requests received */
    uint64_t st_active;            /* generation requests not yet finished */
    uint64_t st_completed;         /* generation requests answered in full */
    uint64_t st_disconnects;       /* requests whose client left before the end */
    int64_t st_last_disconnect_ms; /* unix ms of the latest such disconnect, 0 if none */
    uint64_t st_tokens;            /* completion tokens produced */
};

static void job_pump(struct sim_job *j);
static void job_release(struct sim_job *j);

void sim_opts_default(struct sim_opts *opts)
{
    static const char *const def_models[] = {"qwen2.5-coder:7b"};
    memset(opts, 0, sizeof(*opts));
    opts->listen = "127.0.0.1:11434";
    opts->models = def_models;
    opts->nmodels = 1;
    opts->tokens_per_second = 50;
    opts->prefill_tokens_per_second = 0;
    opts->load_delay_ms = 0;
    opts->parallel = 4;
    opts->max_queue = 512;
    opts->seed = 0;
    opts->fault = NULL;
}

/* ---- faults ---- */

/* Parse a fault spec. Rejects unknown names, missing or out-of-range numbers. */
static int fault_parse(const char *spec, struct sim_fault *f)
{
    f->kind = SIM_FAULT_NONE;
    f->arg = 0;
    const char *colon = strchr(spec, ':');
    size_t nl = colon ? (size_t)(colon - spec) : strlen(spec);
    long arg = 0;
    if (colon) {
        char *end;
        arg = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || arg < 0 || arg > 1000000) {
            return PX_EPARSE;
        }
    }
    static const struct {
        const char *name;
        int kind;
        int needs_arg;
    } kinds[] = {
        {"none", SIM_FAULT_NONE, 0},         {"error", SIM_FAULT_ERROR, 1},
        {"hang", SIM_FAULT_HANG, 0},         {"reset", SIM_FAULT_RESET, 0},
        {"cut", SIM_FAULT_CUT, 1},           {"malformed", SIM_FAULT_MALFORMED, 1},
        {"no-usage", SIM_FAULT_NO_USAGE, 0},
    };
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (strlen(kinds[i].name) == nl && strncmp(spec, kinds[i].name, nl) == 0) {
            if (kinds[i].needs_arg != (colon != NULL)) {
                return PX_EPARSE;
            }
            if (kinds[i].kind == SIM_FAULT_ERROR && (arg < 400 || arg > 599)) {
                return PX_EPARSE;
            }
            f->kind = kinds[i].kind;
            f->arg = (int)arg;
            return 0;
        }
    }
    return PX_EPARSE;
}

int sim_fault_check(const char *spec)
{
    struct sim_fault f;
    return fault_parse(spec, &f);
}

static void fault_format(const struct sim_fault *f, char *out, size_t cap)
{
    static const char *const names[] = {"none", "error",     "hang",    "reset",
                                        "cut",  "malformed", "no-usage"};
    const char *n = names[f->kind];
    if (f->kind == SIM_FAULT_ERROR || f->kind == SIM_FAULT_CUT || f->kind == SIM_FAULT_MALFORMED) {
        snprintf(out, cap, "%s:%d", n, f->arg);
    } else {
        snprintf(out, cap, "%s", n);
    }
}

static struct sim_fault fault_take(struct sim *s)
{
    if (s->temp_left > 0) {
        s->temp_left--;
        return s->temp_fault;
    }
    return s->base_fault;
}

/* ---- responses ---- */

static void send_json(struct http_req *req, int status, json_t *v)
{
    struct buf b;
    buf_init(&b, SIM_RESP_MAX_BYTES);
    if (sim_wire_json(&b, v) != 0) {
        buf_cleanup(&b);
        http_resp_error(req, 500, "server_error", NULL, "response too large");
        return;
    }
    http_resp_send(req, status, "application/json", b.data, b.len);
    buf_cleanup(&b);
}

static void send_api_error(struct http_req *req, int ollama, int status, const char *msg)
{
    struct buf b;
    buf_init(&b, SIM_OUT_MAX_BYTES);
    const char *ctype = sim_wire_error(&b, ollama, status, msg);
    if (status == 429 || status == 503) {
        http_resp_header(req, "Retry-After", "1");
    }
    http_resp_send(req, status, ctype, b.data ? b.data : "", b.len);
    buf_cleanup(&b);
}

/* ---- models ---- */

static struct sim_model *model_find(struct sim *s, const char *name, size_t n)
{
    for (size_t i = 0; i < s->nmodels; i++) {
        const char *m = s->models[i].name;
        size_t ml = strlen(m);
        if (ml == n && memcmp(m, name, n) == 0) {
            return &s->models[i];
        }
        /* Ollama's implicit tag: "foo" is "foo:latest". */
        if (ml + 7 == n && memcmp(m, name, ml) == 0 && memcmp(name + ml, ":latest", 7) == 0) {
            return &s->models[i];
        }
        if (n + 7 == ml && memcmp(m, name, n) == 0 && memcmp(m + n, ":latest", 7) == 0) {
            return &s->models[i];
        }
    }
    return NULL;
}

static json_t *model_details(void)
{
    return json_pack("{s:s,s:s,s:s,s:[s],s:s,s:s}", "parent_model", "", "format", "gguf", "family",
                     "qwen2", "families", "qwen2", "parameter_size", "7.6B", "quantization_level",
                     "Q4_K_M");
}

static void handle_tags(struct sim *s, struct http_req *req, int ps)
{
    json_t *list = json_array();
    char ts[40];
    for (size_t i = 0; i < s->nmodels; i++) {
        struct sim_model *m = &s->models[i];
        if (ps && m->loaded_at_ms == 0) {
            continue;
        }
        json_t *o = json_pack("{s:s,s:s}", "name", m->name, "model", m->name);
        if (!ps) {
            sim_wire_time(ts, sizeof(ts), s->started_unix * 1000000);
            json_object_set_new(o, "modified_at", json_string(ts));
        }
        json_object_set_new(o, "size", json_integer(SIM_MODEL_SIZE_BYTES));
        json_object_set_new(o, "digest", json_string(m->digest));
        json_object_set_new(o, "details", model_details());
        if (ps) {
            sim_wire_time(ts, sizeof(ts), (px_now_ms() + SIM_KEEP_ALIVE_MS) * 1000);
            json_object_set_new(o, "expires_at", json_string(ts));
            json_object_set_new(o, "size_vram", json_integer(SIM_MODEL_SIZE_BYTES));
        }
        json_array_append_new(list, o);
    }
    send_json(req, 200, json_pack("{s:o}", "models", list));
}

static void handle_v1_models(struct sim *s, struct http_req *req)
{
    json_t *data = json_array();
    for (size_t i = 0; i < s->nmodels; i++) {
        const char *n = s->models[i].name;
        json_array_append_new(
            data, json_pack("{s:s,s:s,s:I,s:s,s:s,s:n,s:i,s:[]}", "id", n, "object", "model",
                            "created", (json_int_t)s->started_unix, "owned_by", "vllm", "root", n,
                            "parent", "max_model_len", SIM_MAX_MODEL_LEN, "permission"));
    }
    send_json(req, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static void metric(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void handle_metrics(struct sim *s, struct http_req *req)
{
    struct buf b;
    buf_init(&b, SIM_RESP_MAX_BYTES);
    metric(&b, "vllm:num_requests_running", "gauge",
           "Number of requests currently running on GPU.");
    for (size_t i = 0; i < s->nmodels; i++) {
        buf_printf(&b, "vllm:num_requests_running{model_name=\"%s\"} %u.0\n", s->models[i].name,
                   s->models[i].running);
    }
    metric(&b, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    for (size_t i = 0; i < s->nmodels; i++) {
        buf_printf(&b, "vllm:num_requests_waiting{model_name=\"%s\"} %u.0\n", s->models[i].name,
                   s->models[i].waiting);
    }
    metric(&b, "vllm:gpu_cache_usage_perc", "gauge",
           "GPU KV-cache usage. 1 means 100 percent usage.");
    for (size_t i = 0; i < s->nmodels; i++) {
        double u = s->opts.parallel ? (double)s->models[i].running / s->opts.parallel : 0;
        buf_printf(&b, "vllm:gpu_cache_usage_perc{model_name=\"%s\"} %.4f\n", s->models[i].name, u);
    }
    metric(&b, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
    for (size_t i = 0; i < s->nmodels; i++) {
        buf_printf(&b, "vllm:prompt_tokens_total{model_name=\"%s\"} %llu.0\n", s->models[i].name,
                   (unsigned long long)s->models[i].prompt_tokens);
    }
    metric(&b, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.");
    for (size_t i = 0; i < s->nmodels; i++) {
        buf_printf(&b, "vllm:generation_tokens_total{model_name=\"%s\"} %llu.0\n",
                   s->models[i].name, (unsigned long long)s->models[i].generation_tokens);
    }
    http_resp_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                   b.len);
    buf_cleanup(&b);
}

static void handle_stats(struct sim *s, struct http_req *req)
{
    char f[32];
    fault_format(s->temp_left > 0 ? &s->temp_fault : &s->base_fault, f, sizeof(f));
    send_json(req, 200,
              json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "requests", (json_int_t)s->st_requests,
                        "active", (json_int_t)s->st_active, "completed",
                        (json_int_t)s->st_completed, "client_disconnects",
                        (json_int_t)s->st_disconnects, "last_disconnect_unix_ms",
                        (json_int_t)s->st_last_disconnect_ms, "tokens_generated",
                        (json_int_t)s->st_tokens, "waiting", (json_int_t)s->waiting, "fault", f));
}

/* POST /sim/fault {"fault":"cut:3","count":N}: with a count the fault covers the next N
 * generation requests and then the previous one applies again; without, it replaces it. */
static void handle_fault(struct sim *s, struct http_req *req)
{
    json_error_t err;
    json_t *v = json_loadb(req->body, req->body_len, 0, &err);
    const char *spec = v ? json_string_value(json_object_get(v, "fault")) : NULL;
    json_t *cnt = v ? json_object_get(v, "count") : NULL;
    struct sim_fault f;
    if (!spec || fault_parse(spec, &f) != 0 || (cnt && !json_is_integer(cnt)) ||
        (cnt && json_integer_value(cnt) < 0)) {
        json_decref(v);
        send_json(req, 400,
                  json_pack("{s:s}", "error",
                            "want {\"fault\":\"none|error:STATUS|hang|reset|cut:K|malformed:K|"
                            "no-usage\",\"count\":N}"));
        return;
    }
    long count = cnt ? (long)json_integer_value(cnt) : 0;
    if (count > 0) {
        s->temp_fault = f;
        s->temp_left = count;
    } else {
        s->base_fault = f;
        s->temp_left = 0;
    }
    char txt[32];
    fault_format(&f, txt, sizeof(txt));
    px_log(PX_LOG_INFO, "event=sim_fault fault=%s count=%ld", txt, count);
    json_decref(v);
    send_json(req, 200, json_pack("{s:s,s:I}", "fault", txt, "count", (json_int_t)count));
}

/* ---- jobs ---- */

static void job_free_cb(uv_handle_t *h)
{
    struct sim_job *j = h->data;
    struct sim *s = j->sim;
    buf_cleanup(&j->text);
    buf_cleanup(&j->out);
    free(j->model_name);
    free(j);
    s->njobs--;
    if (s->freeing && s->njobs == 0) {
        for (size_t i = 0; i < s->nmodels; i++) {
            free(s->models[i].name);
        }
        free(s->models);
        free(s);
    }
}

static void job_on_timer(uv_timer_t *t);

/* Give a slot to the job: the load wait starts (first request of a model), then prefill. */
static void job_begin(struct sim_job *j)
{
    struct sim *s = j->sim;
    struct sim_model *m = j->model;
    uint64_t now = uv_now(s->loop);
    m->running++;
    j->state = SIM_JOB_PREFILL;
    j->t_start_ns = uv_hrtime();
    if (m->loaded_at_ms == 0) {
        m->loaded_at_ms = now + s->opts.load_delay_ms;
        m->loaded_unix_ms = px_now_ms() + (int64_t)s->opts.load_delay_ms;
    }
    uint64_t wait = m->loaded_at_ms > now ? m->loaded_at_ms - now : 0;
    j->t_loaded_ns = 0;
    m->prompt_tokens += j->prompt_tokens;
    uv_timer_start(&j->timer, job_on_timer, wait, 0);
}

static void model_schedule(struct sim *s, struct sim_model *m)
{
    while (!s->freeing && m->wait_head && m->running < s->opts.parallel) {
        struct sim_job *j = m->wait_head;
        m->wait_head = j->wnext;
        if (!m->wait_head) {
            m->wait_tail = NULL;
        }
        j->wnext = NULL;
        m->waiting--;
        s->waiting--;
        job_begin(j);
    }
}

static void job_on_timer(uv_timer_t *t)
{
    struct sim_job *j = t->data;
    struct sim *s = j->sim;
    if (j->state == SIM_JOB_PREFILL) {
        if (j->t_loaded_ns == 0) {
            j->t_loaded_ns = uv_hrtime();
            double pf = s->opts.prefill_tokens_per_second;
            uint64_t ms = pf > 0 ? (uint64_t)(j->prompt_tokens * 1000.0 / pf) : 0;
            if (ms > 0) {
                uv_timer_start(&j->timer, job_on_timer, ms, 0);
                return;
            }
        }
        j->t_first_ns = uv_hrtime();
        j->t_last_ns = j->t_first_ns;
        j->gen_t0_ms = uv_now(s->loop);
        j->state = SIM_JOB_GENERATING;
    }
    if (j->state == SIM_JOB_GENERATING) {
        job_pump(j);
    }
}

/* Unlink the job from everything, free its slot (starting the next waiting job), and close
 * its timer; the memory goes in job_free_cb. The request must already be ended. */
static void job_release(struct sim_job *j)
{
    struct sim *s = j->sim;
    struct sim_model *m = j->model;
    int freed_slot = 0;
    if (j->state == SIM_JOB_PREFILL || j->state == SIM_JOB_GENERATING) {
        m->running--;
        freed_slot = 1;
    } else if (j->state == SIM_JOB_WAITING) {
        struct sim_job **pp = &m->wait_head;
        struct sim_job *prev = NULL;
        while (*pp && *pp != j) {
            prev = *pp;
            pp = &(*pp)->wnext;
        }
        if (*pp) {
            *pp = j->wnext;
            if (m->wait_tail == j) {
                m->wait_tail = prev;
            }
            m->waiting--;
            s->waiting--;
        }
    }
    s->st_active--;
    j->req = NULL;
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        s->jobs = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    }
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, job_free_cb);
    if (freed_slot) {
        model_schedule(s, m);
    }
}

static void job_on_abort(struct http_req *req)
{
    struct sim_job *j = req->data;
    struct sim *s = j->sim;
    s->st_disconnects++;
    s->st_last_disconnect_ms = px_now_ms();
    px_log(PX_LOG_INFO, "event=client_disconnect path=%.*s model=%s after_tokens=%u",
           (int)(req->path_len > 200 ? 200 : req->path_len), req->path, j->model->name, j->emitted);
    http_resp_end(req);
    job_release(j);
}

static void job_on_drain(struct http_req *req)
{
    struct sim_job *j = req->data;
    j->paused = 0;
    if (j->state == SIM_JOB_GENERATING) {
        job_pump(j);
    }
}

static const char *job_ctype(const struct sim_job *j)
{
    if (!j->stream) {
        return "application/json";
    }
    if (j->api == SIM_API_OLLAMA_CHAT || j->api == SIM_API_OLLAMA_GENERATE) {
        return "application/x-ndjson";
    }
    return "text/event-stream; charset=utf-8";
}

/* Queue j->out as stream bytes; 0, or PX_ECLOSED when the client is gone. */
static int job_flush(struct sim_job *j)
{
    if (!j->started) {
        j->started = 1;
        http_resp_start(j->req, 200, job_ctype(j));
    }
    if (j->out.len == 0) {
        return 0;
    }
    int rc = http_resp_write(j->req, j->out.data, j->out.len);
    buf_reset(&j->out);
    if (rc < 0) {
        return PX_ECLOSED;
    }
    if (rc > 0) {
        j->paused = 1;
    }
    return 0;
}

static void job_cut(struct sim_job *j)
{
    px_log(PX_LOG_INFO, "event=sim_fault_cut model=%s after_tokens=%u", j->model->name, j->emitted);
    struct http_req *req = j->req;
    http_resp_abort(req, 0);
    job_release(j);
}

static void job_finish(struct sim_job *j)
{
    struct sim *s = j->sim;
    struct http_req *req = j->req;
    if (j->stream) {
        if (j->fault.kind == SIM_FAULT_MALFORMED && (uint32_t)j->fault.arg == j->emitted) {
            sim_wire_stream_malformed(&j->out, j);
        }
        if (j->emitted == 0) {
            sim_wire_stream_start(&j->out, j);
        }
        if (sim_wire_stream_end(&j->out, j) != 0 || job_flush(j) != 0) {
            /* The client is gone; on_abort follows from the close callback. */
            return;
        }
        http_resp_end(req);
    } else {
        if (sim_wire_full(&j->out, j) != 0) {
            http_resp_error(req, 500, "server_error", NULL, "response too large");
        } else {
            size_t n = j->out.len;
            if (j->fault.kind == SIM_FAULT_MALFORMED && n > 0) {
                n--;
            }
            http_resp_send(req, 200, "application/json", j->out.data, n);
        }
    }
    s->st_completed++;
    job_release(j);
}

/* Emit every token that is due; then finish, or wait for the timer or a drain. */
static void job_pump(struct sim_job *j)
{
    struct sim *s = j->sim;
    double tps = s->opts.tokens_per_second;
    uint64_t now = uv_now(s->loop);
    while (j->emitted < j->n_tokens) {
        if (j->paused) {
            return;
        }
        if (tps > 0) {
            uint64_t due = j->gen_t0_ms + (uint64_t)(j->emitted * 1000.0 / tps);
            if (due > now) {
                uv_timer_start(&j->timer, job_on_timer, due - now, 0);
                return;
            }
        }
        if (j->fault.kind == SIM_FAULT_CUT && (uint32_t)j->fault.arg == j->emitted) {
            job_cut(j);
            return;
        }
        if (j->stream && j->fault.kind == SIM_FAULT_MALFORMED &&
            (uint32_t)j->fault.arg == j->emitted) {
            sim_wire_stream_malformed(&j->out, j);
        }
        const char *tok = sim_gen_token(&j->gen);
        j->emitted++;
        j->t_last_ns = uv_hrtime();
        s->st_tokens++;
        j->model->generation_tokens++;
        if (j->stream) {
            if (j->emitted == 1) {
                sim_wire_stream_start(&j->out, j);
            }
            if (sim_wire_stream_token(&j->out, j, tok) != 0 || job_flush(j) != 0) {
                return;
            }
        } else if (buf_append_str(&j->text, tok) != 0) {
            j->finish_length = 1;
            break;
        }
    }
    if (j->fault.kind == SIM_FAULT_CUT) {
        /* A cut always cuts: the end of the stream (or the JSON body) never goes out. */
        job_cut(j);
        return;
    }
    job_finish(j);
}

/* ---- generation requests ---- */

/* What a generation request asks for, after validation. */
struct gen_req {
    struct sim_model *model; /* served model */
    const char *model_name;  /* as the request spelled it */
    int stream;              /* 1 to stream */
    int include_usage;       /* OpenAI stream_options.include_usage */
    long long max_tokens;    /* -1 when unset */
    uint64_t seed;           /* final PRNG seed */
    uint32_t prompt_tokens;  /* prompt token count */
};

/* Hash one message into f and count its tokens. content may be a string, null/absent, or
 * (OpenAI) an array of parts whose "text" members are concatenated. 0 or PX_EPARSE. */
static int add_message(struct sim_fnv *f, uint32_t *tokens, const char *role, json_t *content,
                       int allow_parts)
{
    size_t bytes = 0;
    sim_fnv_update(f, role, strlen(role) + 1);
    if (json_is_string(content)) {
        bytes = json_string_length(content);
        sim_fnv_update(f, json_string_value(content), bytes);
    } else if (allow_parts && json_is_array(content)) {
        size_t i;
        json_t *part;
        json_array_foreach(content, i, part)
        {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t)) {
                sim_fnv_update(f, json_string_value(t), json_string_length(t));
                bytes += json_string_length(t);
            }
        }
    } else if (content && !json_is_null(content)) {
        return PX_EPARSE;
    }
    sim_fnv_update(f, "", 1);
    *tokens += sim_tokens_for_message(bytes);
    return 0;
}

/* Validate the body into g; on failure *msg says why (static text) and the status is
 * returned (400 or 404), else 0. `namebuf` receives a 404 message. */
static int parse_gen_req(struct sim *s, int api, json_t *v, struct gen_req *g, char *namebuf,
                         size_t namecap)
{
    int ollama = api == SIM_API_OLLAMA_CHAT || api == SIM_API_OLLAMA_GENERATE;
    memset(g, 0, sizeof(*g));
    g->max_tokens = -1;
    json_t *jm = json_object_get(v, "model");
    if (jm && !json_is_string(jm)) {
        snprintf(namebuf, namecap, "model must be a string");
        return 400;
    }
    if (!jm || json_string_length(jm) == 0) {
        if (ollama) {
            snprintf(namebuf, namecap, "model is required");
            return 400;
        }
        /* vLLM serves its one model when the request names none. */
        g->model = &s->models[0];
        g->model_name = g->model->name;
    } else {
        g->model_name = json_string_value(jm);
        g->model = model_find(s, g->model_name, json_string_length(jm));
        if (!g->model) {
            if (ollama) {
                snprintf(namebuf, namecap, "model \"%.200s\" not found, try pulling it first",
                         g->model_name);
            } else {
                snprintf(namebuf, namecap, "The model `%.200s` does not exist.", g->model_name);
            }
            return 404;
        }
    }
    json_t *js = json_object_get(v, "stream");
    g->stream = ollama ? !json_is_false(js) : json_is_true(js);
    json_t *so = json_object_get(v, "stream_options");
    g->include_usage = !ollama && g->stream && json_is_true(json_object_get(so, "include_usage"));

    struct sim_fnv f;
    sim_fnv_init(&f);
    sim_fnv_update(&f, g->model->name, strlen(g->model->name) + 1);
    uint32_t tokens = 0;
    if (api == SIM_API_OLLAMA_CHAT || api == SIM_API_OPENAI_CHAT) {
        json_t *msgs = json_object_get(v, "messages");
        if (msgs && !json_is_array(msgs)) {
            snprintf(namebuf, namecap, "messages must be an array");
            return 400;
        }
        if (!ollama && json_array_size(msgs) == 0) {
            snprintf(namebuf, namecap, "messages must be a non-empty list");
            return 400;
        }
        size_t i;
        json_t *msg;
        json_array_foreach(msgs, i, msg)
        {
            const char *role = json_string_value(json_object_get(msg, "role"));
            if (!json_is_object(msg) ||
                add_message(&f, &tokens, role ? role : "", json_object_get(msg, "content"),
                            !ollama) != 0) {
                snprintf(namebuf, namecap, "invalid message at index %zu", i);
                return 400;
            }
        }
    } else {
        json_t *p = json_object_get(v, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) {
            p = json_array_get(p, 0);
        }
        if ((p && !json_is_string(p)) || (!ollama && !p)) {
            snprintf(namebuf, namecap, "prompt must be a string");
            return 400;
        }
        /* A bare prompt counts and hashes as one user message. */
        add_message(&f, &tokens, "user", p, 0);
    }
    g->prompt_tokens = tokens + SIM_PROMPT_OVERHEAD_TOKENS;

    json_t *seed = NULL;
    if (ollama) {
        json_t *o = json_object_get(v, "options");
        json_t *np = json_object_get(o, "num_predict");
        if (json_is_integer(np) && json_integer_value(np) >= 0) {
            g->max_tokens = json_integer_value(np);
            if (g->max_tokens > SIM_MAX_MODEL_LEN) {
                g->max_tokens = SIM_MAX_MODEL_LEN;
            }
        }
        seed = json_object_get(o, "seed");
    } else {
        json_t *mt = json_object_get(v, "max_tokens");
        if (!mt || json_is_null(mt)) {
            mt = json_object_get(v, "max_completion_tokens");
        }
        if (mt && !json_is_null(mt)) {
            if (!json_is_integer(mt) || json_integer_value(mt) < 1) {
                snprintf(namebuf, namecap, "max_tokens must be at least 1");
                return 400;
            }
            g->max_tokens = json_integer_value(mt);
            if (g->max_tokens + g->prompt_tokens > SIM_MAX_MODEL_LEN) {
                snprintf(namebuf, namecap,
                         "This model's maximum context length is %d tokens. However, you "
                         "requested %lld tokens (%u in the messages, %lld in the completion). "
                         "Please reduce the length of the messages or completion.",
                         SIM_MAX_MODEL_LEN, g->max_tokens + g->prompt_tokens, g->prompt_tokens,
                         g->max_tokens);
                return 400;
            }
        }
        seed = json_object_get(v, "seed");
    }
    g->seed = s->opts.seed ^ f.h;
    if (json_is_integer(seed)) {
        g->seed ^= (uint64_t)json_integer_value(seed) * 0x9e3779b97f4a7c15ULL;
    }
    return 0;
}

static void handle_generate(struct sim *s, struct http_req *req, int api)
{
    int ollama = api == SIM_API_OLLAMA_CHAT || api == SIM_API_OLLAMA_GENERATE;
    s->st_requests++;
    json_error_t jerr;
    json_t *v = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!v || !json_is_object(v)) {
        char msg[256];
        if (v) {
            snprintf(msg, sizeof(msg), "request body must be a JSON object");
        } else {
            snprintf(msg, sizeof(msg), "invalid JSON: %s", jerr.text);
        }
        json_decref(v);
        send_api_error(req, ollama, 400, msg);
        return;
    }
    struct gen_req g;
    char msg[512];
    int status = parse_gen_req(s, api, v, &g, msg, sizeof(msg));
    if (status != 0) {
        json_decref(v);
        send_api_error(req, ollama, status, msg);
        return;
    }
    struct sim_fault fault = fault_take(s);
    if (fault.kind == SIM_FAULT_ERROR) {
        json_decref(v);
        snprintf(msg, sizeof(msg), "simulated fault: %s",
                 http_status_str((enum http_status)fault.arg));
        send_api_error(req, ollama, fault.arg, msg);
        return;
    }
    if (fault.kind == SIM_FAULT_RESET) {
        json_decref(v);
        px_log(PX_LOG_INFO, "event=sim_fault_reset model=%s", g.model->name);
        http_resp_abort(req, 1);
        return;
    }
    if (fault.kind != SIM_FAULT_HANG && g.model->running >= s->opts.parallel &&
        s->waiting >= s->opts.max_queue) {
        json_decref(v);
        send_api_error(req, ollama, 503, SIM_OLLAMA_BUSY_MSG);
        return;
    }

    struct sim_job *j = px_calloc(1, sizeof(*j));
    j->sim = s;
    j->req = req;
    j->model = g.model;
    j->model_name = px_strdup(g.model_name);
    json_decref(v);
    j->api = api;
    j->stream = g.stream;
    j->include_usage = g.include_usage;
    j->fault = fault;
    j->prompt_tokens = g.prompt_tokens;
    sim_gen_init(&j->gen, g.seed, 0);
    uint32_t natural = sim_gen_natural_len(&j->gen);
    if (g.max_tokens >= 0) {
        j->n_tokens = (uint32_t)g.max_tokens;
        j->finish_length = 1;
    } else {
        j->n_tokens = natural;
    }
    j->t_arrive_ns = uv_hrtime();
    j->created = px_now_ms() / 1000;
    char uuid[37];
    px_uuid4(uuid);
    char hex[33];
    size_t h = 0;
    for (size_t i = 0; uuid[i] && h < 32; i++) {
        if (uuid[i] != '-') {
            hex[h++] = uuid[i];
        }
    }
    hex[h] = '\0';
    snprintf(j->id, sizeof(j->id), "%s%s", api == SIM_API_OPENAI_COMPLETION ? "cmpl-" : "chatcmpl-",
             hex);
    buf_init(&j->text, SIM_TEXT_MAX_BYTES);
    buf_init(&j->out, SIM_OUT_MAX_BYTES);
    uv_timer_init(s->loop, &j->timer);
    j->timer.data = j;
    j->next = s->jobs;
    if (s->jobs) {
        s->jobs->prev = j;
    }
    s->jobs = j;
    s->njobs++;
    s->st_active++;
    req->data = j;
    req->on_abort = job_on_abort;
    req->on_drain = job_on_drain;

    if (fault.kind == SIM_FAULT_HANG) {
        j->state = SIM_JOB_HANGING;
        px_log(PX_LOG_INFO, "event=sim_fault_hang model=%s", g.model->name);
        return;
    }
    if (g.model->running < s->opts.parallel) {
        job_begin(j);
        return;
    }
    j->state = SIM_JOB_WAITING;
    if (g.model->wait_tail) {
        g.model->wait_tail->wnext = j;
    } else {
        g.model->wait_head = j;
    }
    g.model->wait_tail = j;
    g.model->waiting++;
    s->waiting++;
}

/* ---- routing ---- */

static int path_is(const char *p, size_t n, const char *want)
{
    return strlen(want) == n && memcmp(p, want, n) == 0;
}

static void on_request(struct http_req *req, void *ud)
{
    struct sim *s = ud;
    const char *p = req->path;
    size_t n = req->path_len;
    const char *q = memchr(p, '?', n);
    if (q) {
        n = (size_t)(q - p);
    }
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    int post = req->method == HTTP_POST;
    static const struct {
        const char *path;
        int api;
    } gen_routes[] = {
        {"/api/chat", SIM_API_OLLAMA_CHAT},
        {"/api/generate", SIM_API_OLLAMA_GENERATE},
        {"/v1/chat/completions", SIM_API_OPENAI_CHAT},
        {"/v1/completions", SIM_API_OPENAI_COMPLETION},
    };
    for (size_t i = 0; i < sizeof(gen_routes) / sizeof(gen_routes[0]); i++) {
        if (path_is(p, n, gen_routes[i].path)) {
            if (!post) {
                break;
            }
            handle_generate(s, req, gen_routes[i].api);
            return;
        }
    }
    if (get && path_is(p, n, "/")) {
        http_resp_send(req, 200, "text/plain; charset=utf-8", "Ollama is running", 17);
    } else if (get && path_is(p, n, "/api/version")) {
        send_json(req, 200, json_pack("{s:s}", "version", "0.5.7"));
    } else if (get && path_is(p, n, "/api/tags")) {
        handle_tags(s, req, 0);
    } else if (get && path_is(p, n, "/api/ps")) {
        handle_tags(s, req, 1);
    } else if (get && path_is(p, n, "/v1/models")) {
        handle_v1_models(s, req);
    } else if (get && path_is(p, n, "/health")) {
        http_resp_send(req, 200, NULL, "", 0);
    } else if (get && path_is(p, n, "/metrics")) {
        handle_metrics(s, req);
    } else if (get && path_is(p, n, "/sim/stats")) {
        handle_stats(s, req);
    } else if (post && path_is(p, n, "/sim/fault")) {
        handle_fault(s, req);
    } else if (n >= 5 && memcmp(p, "/api/", 5) == 0) {
        /* Ollama's router (gin) answers unknown routes in plain text. */
        http_resp_send(req, 404, "text/plain", "404 page not found", 18);
    } else {
        send_json(req, 404, json_pack("{s:s}", "detail", "Not Found"));
    }
}

/* ---- lifetime ---- */

int sim_start(struct sim **out, uv_loop_t *loop, const struct sim_opts *opts)
{
    struct sim_fault f0 = {SIM_FAULT_NONE, 0};
    if (opts->fault && fault_parse(opts->fault, &f0) != 0) {
        return PX_ECONFIG;
    }
    if (opts->nmodels == 0 || opts->parallel == 0) {
        return PX_ECONFIG;
    }
    struct sim *s = px_calloc(1, sizeof(*s));
    s->loop = loop;
    s->opts = *opts;
    s->opts.models = NULL;
    s->base_fault = f0;
    s->started_unix = px_now_ms() / 1000;
    s->models = px_calloc(opts->nmodels, sizeof(*s->models));
    s->nmodels = opts->nmodels;
    for (size_t i = 0; i < opts->nmodels; i++) {
        struct sim_model *m = &s->models[i];
        unsigned char d[32];
        m->name = px_strdup(opts->models[i]);
        px_sha256(m->name, strlen(m->name), d);
        for (size_t k = 0; k < 32; k++) {
            snprintf(m->digest + 2 * k, 3, "%02x", d[k]);
        }
    }
    struct http_server_opts ho;
    http_server_opts_default(&ho);
    int rc = http_server_start(&s->srv, loop, opts->listen, &ho, on_request, s);
    if (rc != 0) {
        for (size_t i = 0; i < s->nmodels; i++) {
            free(s->models[i].name);
        }
        free(s->models);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int sim_port(const struct sim *s)
{
    return http_server_port(s->srv);
}

void sim_free(struct sim *s)
{
    if (!s) {
        return;
    }
    s->freeing = 1;
    /* Closing the server aborts every request in flight; their jobs release themselves from
     * job_on_abort, and the last job's close callback frees s. */
    http_server_free(s->srv);
    s->srv = NULL;
    if (s->njobs == 0) {
        for (size_t i = 0; i < s->nmodels; i++) {
            free(s->models[i].name);
        }
        free(s->models);
        free(s);
    }
}
