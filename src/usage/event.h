#ifndef PX_USAGE_EVENT_H
#define PX_USAGE_EVENT_H

/* One usage row: everything billing needs about one request (PRODUCT.md "Usage rows").
 * Self-contained (fixed-size strings, no pointers into request memory) so it can outlive the
 * request and cross to the writer thread. Strings are NUL-terminated and truncated to fit;
 * the gateway validates ids to these lengths before they get here. */

#include <stddef.h>
#include <stdint.h>

struct usage_ack;

#define USAGE_ID_MAX 128 /* tenant_id and user_id byte cap, as the API contract says */

struct usage_event {
    int64_t event_time_ms; /* wall clock when the request arrived, ms since epoch */
    char request_id[USAGE_ID_MAX + 1];
    char tenant_id[USAGE_ID_MAX + 1];
    char user_id[USAGE_ID_MAX + 1];
    char api_key_id[65];
    char plan_tier[33];
    char model_name[129];
    char provider[16];     /* ollama | vllm | openai */
    char backend[65];      /* backend name from config */
    char request_type[33]; /* chat | ... */
    char error_code[49];   /* "" on success */
    char node_id[65];
    int stream; /* 1 for stream:true */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int usage_estimated;      /* 1 when the upstream gave no counts */
    int64_t queue_ms;         /* wait in privax's queue before an upstream slot */
    int64_t ttft_ms;          /* arrival to first byte sent to the client, -1 if none */
    int64_t latency_ms;       /* arrival to end of response */
    int status_code;          /* HTTP status given to the client (499: client gone) */
    int success;              /* 1 when the request completed normally */
    int64_t input_chars;      /* characters of prompt content */
    int64_t output_chars;     /* characters of completion content relayed */
    int gpu_id;               /* -1 when none (rejected before routing) */
    int overage;              /* 1 when billed past the monthly allowance */
    uint64_t spool_id;        /* the spool that recorded the row (0 until spooled) */
    uint64_t spool_seq;       /* its sequence number there, from 1 (0 until spooled) */
    struct usage_ack *ack;    /* who waits for this row to reach the spool file, or NULL */
    struct usage_event *next; /* queue link, owned by whoever holds the event */
};

/* (spool_id, spool_seq) is the row's identity: set once when the row is first appended to the
 * durable spool and carried by every copy sent to a store, so a re-sent row is recognised as
 * the same row (and two requests that reuse one X-Request-ID stay two rows). */

/* The spool's record codec (usage/record.c), pure functions of their arguments.
 * A record is: u32 magic "PXU1", u32 body length, u32 CRC-32C of the body, then the body
 * (version byte, seq, the fields; little-endian; strings as u16 length + bytes). */
#define USAGE_REC_HEAD 12   /* bytes before the body */
#define USAGE_REC_MAX  4096 /* most bytes one record may take, head included */

/* Encode ev with sequence number seq into out (cap bytes, at least USAGE_REC_MAX). Returns
 * the record's length. Strings are taken up to their NUL (or their array size). */
size_t usage_rec_encode(const struct usage_event *ev, uint64_t seq, unsigned char *out, size_t cap);

/* Decode one record at the start of (p, len) into ev (every field set; next = NULL) and its
 * sequence number into *seq. Returns the record's length (> 0), 0 when (p, len) is a proper
 * prefix of a record that may still be completed (a torn tail: more bytes are needed), or
 * PX_EPARSE when the bytes are not a valid record (bad magic, length, checksum or body). */
long usage_rec_decode(const unsigned char *p, size_t len, struct usage_event *ev, uint64_t *seq);

/* CRC-32C (Castagnoli) of (p, n), continuing from crc (0 to start). */
uint32_t usage_crc32c(uint32_t crc, const void *p, size_t n);

#endif
