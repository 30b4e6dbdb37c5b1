#ifndef PX_PROXY_PROVIDER_SCAN_H
#define PX_PROXY_PROVIDER_SCAN_H

/* Reading an OpenAI-shaped answer without building a tree: libyajl's callback parser walks the
 * bytes once and keeps only the few fields the relay needs. The OpenAI adapter uses it for the
 * common case (a chunk or answer that goes to the client byte for byte) and keeps jansson for
 * everything else (docs/internals/provider_scan.md).
 *
 * The contract that makes the two paths interchangeable: provider_scan() succeeds only for
 * input that jansson's json_loadb(data, len, 0) accepts as an object, and then every field below
 * holds what the same lookups on jansson's tree give. Anything it is not sure of (surrogate or
 * NUL escapes, a relevant key given twice, nesting deeper than PROVIDER_SCAN_DEPTH_MAX, numbers
 * yajl will not convert) makes it fail, and the caller asks jansson, which then decides exactly
 * as before. */

#include <stddef.h>
#include <stdint.h>

/* Deeper nesting is left to jansson (which refuses past 2048): it bounds the parser's stack. */
#define PROVIDER_SCAN_DEPTH_MAX 64

enum provider_scan_mode {
    PROVIDER_SCAN_CHUNK = 0,  /* a stream chunk: content is choices[0].delta.content */
    PROVIDER_SCAN_ANSWER = 1, /* a whole answer: content is choices[0].message.content */
};

/* The JSON type of a field. */
enum provider_scan_type {
    PROVIDER_SCAN_ABSENT = 0,
    PROVIDER_SCAN_OBJECT = 1,
    PROVIDER_SCAN_ARRAY = 2,
    PROVIDER_SCAN_OTHER = 3, /* a string, number, boolean or null */
};

/* Index of each count in provider_scan.counts (bit i of counts_seen / counts_int). */
enum provider_scan_count {
    PROVIDER_SCAN_PROMPT = 0,
    PROVIDER_SCAN_COMPLETION = 1,
    PROVIDER_SCAN_TOTAL = 2,
};

/* What the relay reads from one JSON object. Strings are copies (the input may go away). */
struct provider_scan {
    int has_error;                   /* a top-level "error" key, whatever its value */
    enum provider_scan_type usage;   /* type of top-level "usage" */
    unsigned counts_seen;            /* bit i: usage key i present (any type) */
    unsigned counts_int;             /* bit i: usage key i is an integer, value in counts[i] */
    int64_t counts[3];               /* prompt_tokens, completion_tokens, total_tokens */
    enum provider_scan_type choices; /* type of top-level "choices" */
    size_t nchoices;                 /* its elements, when an array */
    int content_string;              /* choices[0].delta|message.content is a string */
    size_t content_len;              /* its length in bytes */
    int64_t content_chars;           /* its length in Unicode characters */
    int has_role;                    /* choices[0].delta|message has "role", whatever its value */
    int id_string;                   /* top-level "id" is a string */
    char id[64];                     /* that string, cut at a character boundary, NUL-terminated */
    int finish_string;               /* choices[0].finish_reason is a string */
    char finish_reason[16];          /* its first 15 bytes, NUL-terminated */
};

/* Scan (data, len), untrusted bytes of any length (the caller's caps bound it), into *out.
 * 0 when it is one JSON object that jansson would accept with the same field values; PX_EPARSE
 * when it is not, or when the scanner cannot be sure (see above): ask jansson then. Allocates
 * only inside the call (freed before it returns). Any thread. */
int provider_scan(const char *data, size_t len, enum provider_scan_mode mode,
                  struct provider_scan *out);

#endif
