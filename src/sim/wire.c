/* The exact bytes each simulated API sends, built with jansson (object keys keep insertion
 * order, so fields appear in the order the real servers use). Ollama: application/x-ndjson,
 * one object per line. OpenAI as vLLM serves it: text/event-stream, "data: <json>\n\n"
 * events ending with "data: [DONE]\n\n". The field lists are documented in
 * docs/internals/sim.md; keep the two in step. */
#include "sim/internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/err.h"

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return buf_append(data, buffer, size) == 0 ? 0 : -1;
}

int sim_wire_json(struct buf *out, json_t *v)
{
    if (!v) {
        return PX_EPARSE;
    }
    int rc = json_dump_callback(v, dump_cb, out, JSON_COMPACT) == 0 ? 0 : PX_EOVERFLOW;
    json_decref(v);
    return rc;
}

void sim_wire_time(char *out, size_t cap, int64_t unix_us)
{
    time_t s = (time_t)(unix_us / 1000000);
    unsigned int frac = (unsigned int)(unix_us % 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    char tail[16];
    snprintf(tail, sizeof(tail), ".%06uZ", frac % 1000000u);
    if (n > 0 && n + strlen(tail) < cap) {
        memcpy(out + n, tail, strlen(tail) + 1);
    }
}

static void now_time(char *out, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sim_wire_time(out, cap, (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}

static int is_ollama(const struct sim_job *j)
{
    return j->api == SIM_API_OLLAMA_CHAT || j->api == SIM_API_OLLAMA_GENERATE;
}

static int is_chat(const struct sim_job *j)
{
    return j->api == SIM_API_OLLAMA_CHAT || j->api == SIM_API_OPENAI_CHAT;
}

static const char *finish(const struct sim_job *j)
{
    return j->finish_length ? "length" : "stop";
}

static json_t *openai_usage(const struct sim_job *j, int with_details)
{
    json_t *u = json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)j->prompt_tokens,
                          "total_tokens", (json_int_t)(j->prompt_tokens + j->emitted),
                          "completion_tokens", (json_int_t)j->emitted);
    if (u && with_details) {
        json_object_set_new(u, "prompt_tokens_details", json_null());
    }
    return u;
}

/* {"id","object","created","model","choices":[choice]} plus "usage":null when asked for. */
static json_t *openai_chunk(const struct sim_job *j, json_t *choice)
{
    const char *object = is_chat(j) ? "chat.completion.chunk" : "text_completion";
    json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", j->id, "object", object, "created",
                          (json_int_t)j->created, "model", j->model_name, "choices", choice);
    if (c && j->include_usage) {
        json_object_set_new(c, "usage", json_null());
    }
    return c;
}

static int sse(struct buf *out, json_t *v)
{
    int rc = buf_append(out, "data: ", 6);
    if (rc != 0) {
        json_decref(v);
        return rc;
    }
    rc = sim_wire_json(out, v);
    return rc ? rc : buf_append(out, "\n\n", 2);
}

static int ndjson(struct buf *out, json_t *v)
{
    int rc = sim_wire_json(out, v);
    return rc ? rc : buf_append(out, "\n", 1);
}

int sim_wire_stream_start(struct buf *out, const struct sim_job *j)
{
    if (j->api != SIM_API_OPENAI_CHAT) {
        return 0;
    }
    json_t *choice = json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", 0, "delta", "role",
                               "assistant", "content", "", "logprobs", "finish_reason");
    return sse(out, openai_chunk(j, choice));
}

int sim_wire_stream_token(struct buf *out, const struct sim_job *j, const char *tok)
{
    char ts[40];
    switch (j->api) {
    case SIM_API_OLLAMA_CHAT:
        now_time(ts, sizeof(ts));
        return ndjson(out,
                      json_pack("{s:s,s:s,s:{s:s,s:s},s:b}", "model", j->model_name, "created_at",
                                ts, "message", "role", "assistant", "content", tok, "done", 0));
    case SIM_API_OLLAMA_GENERATE:
        now_time(ts, sizeof(ts));
        return ndjson(out, json_pack("{s:s,s:s,s:s,s:b}", "model", j->model_name, "created_at", ts,
                                     "response", tok, "done", 0));
    case SIM_API_OPENAI_CHAT:
        return sse(out, openai_chunk(j, json_pack("{s:i,s:{s:s},s:n,s:n}", "index", 0, "delta",
                                                  "content", tok, "logprobs", "finish_reason")));
    default:
        return sse(out, openai_chunk(j, json_pack("{s:i,s:s,s:n,s:n,s:n}", "index", 0, "text", tok,
                                                  "logprobs", "finish_reason", "stop_reason")));
    }
}

/* Ollama's final object; content is "" for streams and the whole text otherwise. */
static json_t *ollama_done(const struct sim_job *j, const char *content, size_t content_len)
{
    char ts[40];
    now_time(ts, sizeof(ts));
    uint64_t now = uv_hrtime();
    json_t *o;
    if (j->api == SIM_API_OLLAMA_CHAT) {
        o = json_pack("{s:s,s:s,s:{s:s,s:s%},s:s,s:b}", "model", j->model_name, "created_at", ts,
                      "message", "role", "assistant", "content", content, content_len,
                      "done_reason", finish(j), "done", 1);
    } else {
        o = json_pack("{s:s,s:s,s:s%,s:b,s:s}", "model", j->model_name, "created_at", ts,
                      "response", content, content_len, "done", 1, "done_reason", finish(j));
    }
    if (!o) {
        return NULL;
    }
    json_object_set_new(o, "total_duration", json_integer((json_int_t)(now - j->t_arrive_ns)));
    json_object_set_new(o, "load_duration",
                        json_integer((json_int_t)(j->t_loaded_ns - j->t_start_ns)));
    if (j->fault.kind != SIM_FAULT_NO_USAGE) {
        json_object_set_new(o, "prompt_eval_count", json_integer(j->prompt_tokens));
        json_object_set_new(o, "prompt_eval_duration",
                            json_integer((json_int_t)(j->t_first_ns - j->t_loaded_ns)));
        json_object_set_new(o, "eval_count", json_integer(j->emitted));
        json_object_set_new(o, "eval_duration",
                            json_integer((json_int_t)(j->t_last_ns - j->t_first_ns)));
    }
    return o;
}

int sim_wire_stream_end(struct buf *out, const struct sim_job *j)
{
    if (is_ollama(j)) {
        return ndjson(out, ollama_done(j, "", 0));
    }
    json_t *choice;
    if (j->api == SIM_API_OPENAI_CHAT) {
        choice = json_pack("{s:i,s:{},s:n,s:s,s:n}", "index", 0, "delta", "logprobs",
                           "finish_reason", finish(j), "stop_reason");
    } else {
        choice = json_pack("{s:i,s:s,s:n,s:s,s:n}", "index", 0, "text", "", "logprobs",
                           "finish_reason", finish(j), "stop_reason");
    }
    int rc = sse(out, openai_chunk(j, choice));
    if (rc == 0 && j->include_usage && j->fault.kind != SIM_FAULT_NO_USAGE) {
        json_t *u = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", j->id, "object",
                              is_chat(j) ? "chat.completion.chunk" : "text_completion", "created",
                              (json_int_t)j->created, "model", j->model_name, "choices", "usage",
                              openai_usage(j, 0));
        rc = sse(out, u);
    }
    return rc ? rc : buf_append_str(out, "data: [DONE]\n\n");
}

int sim_wire_stream_malformed(struct buf *out, const struct sim_job *j)
{
    if (is_ollama(j)) {
        return buf_printf(out, "{\"model\":\"%s\",\"created_at\":\n", "sim");
    }
    return buf_printf(
        out, "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"choices\":[{\n\n", j->id);
}

int sim_wire_full(struct buf *out, const struct sim_job *j)
{
    const char *text = j->text.data ? j->text.data : "";
    if (is_ollama(j)) {
        return sim_wire_json(out, ollama_done(j, text, j->text.len));
    }
    json_t *v;
    if (j->api == SIM_API_OPENAI_CHAT) {
        v = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s%,s:[]},s:n,s:s,s:n}]}", "id", j->id,
                      "object", "chat.completion", "created", (json_int_t)j->created, "model",
                      j->model_name, "choices", "index", 0, "message", "role", "assistant",
                      "content", text, j->text.len, "tool_calls", "logprobs", "finish_reason",
                      finish(j), "stop_reason");
    } else {
        v = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:s%,s:n,s:s,s:n,s:n}]}", "id", j->id, "object",
                      "text_completion", "created", (json_int_t)j->created, "model", j->model_name,
                      "choices", "index", 0, "text", text, j->text.len, "logprobs", "finish_reason",
                      finish(j), "stop_reason", "prompt_logprobs");
    }
    if (!v) {
        return PX_EPARSE;
    }
    if (j->fault.kind != SIM_FAULT_NO_USAGE) {
        json_object_set_new(v, "usage", openai_usage(j, 1));
    }
    if (j->api == SIM_API_OPENAI_CHAT) {
        json_object_set_new(v, "prompt_logprobs", json_null());
    }
    return sim_wire_json(out, v);
}

static const char *vllm_error_type(int status)
{
    switch (status) {
    case 400:
        return "BadRequestError";
    case 401:
        return "AuthenticationError";
    case 403:
        return "PermissionDeniedError";
    case 404:
        return "NotFoundError";
    case 422:
        return "UnprocessableEntityError";
    case 429:
        return "RateLimitError";
    case 500:
        return "InternalServerError";
    case 502:
    case 503:
    case 504:
        return "ServiceUnavailableError";
    default:
        return status >= 500 ? "InternalServerError" : "BadRequestError";
    }
}

const char *sim_wire_error(struct buf *out, int ollama, int status, const char *msg)
{
    if (ollama) {
        sim_wire_json(out, json_pack("{s:s}", "error", msg));
    } else {
        sim_wire_json(out, json_pack("{s:s,s:s,s:s,s:n,s:i}", "object", "error", "message", msg,
                                     "type", vllm_error_type(status), "param", "code", status));
    }
    return "application/json";
}
