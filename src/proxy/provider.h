#ifndef PX_PROXY_PROVIDER_H
#define PX_PROXY_PROVIDER_H

/* Provider adapters: one const ops struct per backend wire protocol (the curl vtls model).
 * Each turns a validated OpenAI chat request into the backend's request, and the backend's
 * answer (a whole JSON body, or stream events one at a time) back into the OpenAI format the
 * client asked for, while keeping count of what was relayed for the usage row.
 *
 * The stream always ends the same way for every provider: relay_finish() appends one usage
 * chunk and then `data: [DONE]`; upstream usage chunks are absorbed, never forwarded, so a
 * client sees exactly one. Pure functions of their input (no I/O): fuzzed by fuzz_usage. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "http/sse.h"

/* Token counts for one response. */
struct px_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int present; /* 1 when the upstream reported counts */
};

/* Per-response translation state, owned by the request. */
struct relay {
    const struct provider_ops *ops;
    const char *model;      /* model name the client sent (borrowed, outlives the relay) */
    int rewrite_model;      /* 1 when the backend calls the model otherwise */
    char id[64];            /* chatcmpl-... id for chunks privax writes */
    int64_t created;        /* unix seconds for chunks privax writes */
    struct px_usage usage;  /* last usage reported upstream */
    int64_t content_chunks; /* stream chunks that carried content (~ tokens relayed) */
    int64_t output_chars;   /* Unicode characters of content relayed */
    int role_sent;          /* the first chunk (role: assistant) was written */
    int id_from_upstream;   /* id was taken from the backend's first chunk */
    int done;               /* the upstream said the stream is complete */
    char finish_reason[16]; /* stop | length | ... as reported */
    char error[256];        /* why the upstream stream failed, when it did */
};

enum relay_result {
    RELAY_CONTINUE = 0, /* go on reading */
    RELAY_DONE = 1,     /* the upstream's stream is complete */
    RELAY_ERROR = 2,    /* the upstream reported an error or sent garbage; see error */
};

struct provider_ops {
    const char *name;          /* protocol name as in config */
    const char *chat_path;     /* appended to the backend URL */
    enum sse_mode stream_mode; /* framing of the backend's streamed answers */
    /* Build the backend request body from the client's request object (borrowed). raw
     * (raw_len bytes, borrowed, may be NULL) is the body req was parsed from, unchanged: an
     * adapter may send it as it came when the result would mean the same. *body is malloc'd.
     * 0 or PX_EPARSE. */
    int (*build_request)(json_t *req, const char *raw, size_t raw_len, const char *upstream_model,
                         int stream, char **body, size_t *len);
    /* Translate one stream event; append the OpenAI SSE bytes to relay to out. */
    enum relay_result (*stream_event)(struct relay *r, const char *data, size_t len,
                                      struct buf *out);
    /* Translate a whole (2xx) JSON answer into an OpenAI chat.completion in out, filling
     * r->usage and r->output_chars; when the backend gave no counts, usage is estimated
     * (prompt_estimate, and the completion's characters / 4) and r->usage.present stays 0.
     * 0 or PX_EPARSE (message in r->error). */
    int (*complete)(struct relay *r, const char *body, size_t len, int64_t prompt_estimate,
                    struct buf *out);
};

extern const struct provider_ops provider_openai;
extern const struct provider_ops provider_ollama;

/* Prepare a relay for one response. */
void relay_init(struct relay *r, const struct provider_ops *ops, const char *model,
                int rewrite_model, const char *request_id);

/* Append the closing usage chunk (estimated from prompt_estimate and the chunks relayed when
 * the upstream gave no counts) and `data: [DONE]`. */
void relay_finish(struct relay *r, int64_t prompt_estimate, struct buf *out);

/* Append an SSE error event {"error":{message,type,code}} (no [DONE] may follow). */
void relay_error_event(struct buf *out, const char *type, const char *code, const char *msg);

/* Fill r->usage from a JSON usage object {prompt_tokens, completion_tokens, total_tokens}
 * (OpenAI shape). Counts must be integers in 0..1e12; total is recomputed when absent.
 * 0 or PX_EPARSE. */
int provider_usage_from_openai(const json_t *usage, struct px_usage *out);

/* The error message in an upstream error body (OpenAI {"error":{"message"}}, vLLM
 * {"object":"error","message"}, Ollama {"error":"..."}), or a cleaned prefix of the body.
 * Writes a NUL-terminated string into msg. */
void provider_error_message(const char *body, size_t len, char *msg, size_t cap);

/* Unicode characters in UTF-8 text (continuation bytes not counted). */
int64_t provider_utf8_chars(const char *s, size_t n);

/* Internal to the adapters: append `data: <compact json>\n\n` (takes a reference to j). */
void provider__sse_json(struct buf *out, json_t *j);
/* Internal to the adapters: copy s (n bytes) into dst (cap bytes, NUL-terminated), cut at a
 * UTF-8 character boundary so the result stays valid UTF-8 (jansson refuses anything else). */
void provider__copy_utf8(char *dst, size_t cap, const char *s, size_t n);
/* Internal to the adapters: the message of a parsed error body (any of the three shapes), or
 * NULL. Borrowed from j. */
const char *provider__error_text(json_t *j);
/* Internal to the adapters: fill *out from counts already read as integers (has_total: a
 * total_tokens was given), with the checks of provider_usage_from_openai. 0 or PX_EPARSE. */
int provider__usage_from_counts(int64_t prompt, int64_t completion, int has_total, int64_t total,
                                struct px_usage *out);
/* Internal to the adapters: the estimated usage when the backend gave none. */
void provider__estimate(struct relay *r, int64_t prompt_estimate, int64_t completion_estimate);

#endif
