#ifndef PX_SIM_INTERNAL_H
#define PX_SIM_INTERNAL_H

/* Declarations shared inside src/sim only. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "http/server.h"
#include "sim/gen.h"
#include "sim/sim.h"

/* Which API a generation request came in on; it decides every wire detail. */
enum sim_api {
    SIM_API_OLLAMA_CHAT = 0,
    SIM_API_OLLAMA_GENERATE,
    SIM_API_OPENAI_CHAT,
    SIM_API_OPENAI_COMPLETION,
};

enum sim_fault_kind {
    SIM_FAULT_NONE = 0,
    SIM_FAULT_ERROR,     /* answer with status arg and the API's error JSON */
    SIM_FAULT_HANG,      /* never answer */
    SIM_FAULT_RESET,     /* reset the connection without answering */
    SIM_FAULT_CUT,       /* close after arg tokens (JSON: before answering) */
    SIM_FAULT_MALFORMED, /* a malformed line/event before token arg, then continue */
    SIM_FAULT_NO_USAGE,  /* no usage chunk (OpenAI), no counts (Ollama) */
};

struct sim_fault {
    int kind; /* enum sim_fault_kind */
    int arg;  /* status for ERROR, token index for CUT and MALFORMED */
};

enum sim_job_state {
    SIM_JOB_WAITING = 0, /* in its model's FIFO */
    SIM_JOB_PREFILL,     /* holds a slot; load and prefill delay running */
    SIM_JOB_GENERATING,  /* emitting tokens */
    SIM_JOB_HANGING,     /* fault: will never answer */
};

struct sim_model {
    char *name;                 /* served name, as configured */
    char digest[65];            /* sha256 of the name, hex: stable fake digest */
    unsigned running;           /* jobs holding a slot */
    unsigned waiting;           /* jobs in the FIFO */
    uint64_t loaded_at_ms;      /* loop ms when the load completes; 0 = never requested */
    int64_t loaded_unix_ms;     /* wall clock of the load, for /api/ps */
    uint64_t prompt_tokens;     /* total prompt tokens prefilled (metrics) */
    uint64_t generation_tokens; /* total tokens generated (metrics) */
    struct sim_job *wait_head;  /* FIFO of waiting jobs */
    struct sim_job *wait_tail;
};

/* One generation request in flight. */
struct sim_job {
    uv_timer_t timer;     /* load/prefill delay, then token pacing */
    struct sim *sim;      /* owner */
    struct sim_job *prev; /* sim's list of live jobs */
    struct sim_job *next;
    struct sim_job *wnext;   /* model FIFO link while waiting */
    struct http_req *req;    /* the request; NULL once ended */
    struct sim_model *model; /* served model */
    char *model_name;        /* the name as the request spelled it (echoed back) */
    int api;                 /* enum sim_api */
    int stream;              /* 1 for NDJSON/SSE, 0 for one JSON body */
    int include_usage;       /* OpenAI stream_options.include_usage */
    int state;               /* enum sim_job_state */
    int paused;              /* 1 while the client's socket is over the high-water mark */
    int started;             /* 1 once the response head (and role chunk) went out */
    struct sim_fault fault;  /* the fault applied to this request */
    struct sim_gen gen;      /* token source */
    uint32_t n_tokens;       /* completion tokens to produce */
    uint32_t emitted;        /* completion tokens produced so far */
    uint32_t prompt_tokens;  /* prompt token count */
    int finish_length;       /* 1: finish_reason "length"; 0: "stop" */
    uint64_t t_arrive_ns;    /* uv_hrtime() at arrival */
    uint64_t t_start_ns;     /* when a slot was granted */
    uint64_t t_loaded_ns;    /* when the model load wait ended */
    uint64_t t_first_ns;     /* when prefill ended (first token due) */
    uint64_t t_last_ns;      /* when the last token was produced */
    uint64_t gen_t0_ms;      /* loop ms at which token 0 is due */
    int64_t created;         /* unix seconds, OpenAI "created" */
    char id[48];             /* "chatcmpl-<32hex>" or "cmpl-<32hex>" */
    struct buf text;         /* whole completion (non-stream) */
    struct buf out;          /* bytes of the next write, reused */
};

/* ---- wire.c: the exact bytes of each API ---- */

/* Append the stream preamble (OpenAI chat role chunk; nothing for other APIs). */
int sim_wire_stream_start(struct buf *out, const struct sim_job *j);
/* Append one token's line (NDJSON) or event (SSE). */
int sim_wire_stream_token(struct buf *out, const struct sim_job *j, const char *tok);
/* Append the end of the stream: Ollama's done object; OpenAI's finish chunk, the usage chunk
 * when asked (and not suppressed), and [DONE]. */
int sim_wire_stream_end(struct buf *out, const struct sim_job *j);
/* Append a malformed line or event, as a broken server would. */
int sim_wire_stream_malformed(struct buf *out, const struct sim_job *j);
/* Append the whole non-stream body. */
int sim_wire_full(struct buf *out, const struct sim_job *j);
/* The error body of an API family (ollama: 1 for /api/..., 0 for OpenAI/vLLM shape) into
 * out; returns the content type. */
const char *sim_wire_error(struct buf *out, int ollama, int status, const char *msg);
/* RFC 3339 UTC time with microseconds, into out[40]. */
void sim_wire_time(char *out, size_t cap, int64_t unix_us);
/* Append a JSON value's compact text to out; steals the reference. 0 or PX_EOVERFLOW. */
int sim_wire_json(struct buf *out, json_t *v);

#endif
