#ifndef PX_USAGE_EVENT_H
#define PX_USAGE_EVENT_H

/* One usage row: everything billing needs about one request (PRODUCT.md "Usage rows").
 * Self-contained (fixed-size strings, no pointers into request memory) so it can outlive the
 * request and cross to the writer thread. Strings are NUL-terminated and truncated to fit;
 * the gateway validates ids to these lengths before they get here. */

#include <stdint.h>

#define USAGE_ID_MAX 128 /* tenant_id and user_id byte cap, as the API contract says */

struct usage_event {
    int64_t event_time_ms;          /* wall clock when the request arrived, ms since epoch */
    char request_id[USAGE_ID_MAX + 1];
    char tenant_id[USAGE_ID_MAX + 1];
    char user_id[USAGE_ID_MAX + 1];
    char api_key_id[65];
    char plan_tier[33];
    char model_name[129];
    char provider[16];              /* ollama | vllm | openai */
    char backend[65];               /* backend name from config */
    char request_type[33];          /* chat | ... */
    char error_code[49];            /* "" on success */
    char node_id[65];
    int stream;                     /* 1 for stream:true */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int usage_estimated;            /* 1 when the upstream gave no counts */
    int64_t queue_ms;               /* wait in privax's queue before an upstream slot */
    int64_t ttft_ms;                /* arrival to first byte sent to the client, -1 if none */
    int64_t latency_ms;             /* arrival to end of response */
    int status_code;                /* HTTP status given to the client (499: client gone) */
    int success;                    /* 1 when the request completed normally */
    int64_t input_chars;            /* characters of prompt content */
    int64_t output_chars;           /* characters of completion content relayed */
    int gpu_id;                     /* -1 when none (rejected before routing) */
    int overage;                    /* 1 when billed past the monthly allowance */
    struct usage_event *next;       /* queue link, owned by whoever holds the event */
};

#endif
