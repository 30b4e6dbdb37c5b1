#ifndef PX_CONFIG_YAML_H
#define PX_CONFIG_YAML_H

/* Helpers shared by the YAML loaders built on libfyaml's document API: the config loader
 * (config.c) and the nodes file parser (ops/nodes.c). They hold the rules both files follow:
 * errors are "FILE:LINE: key.path: message" and only the first one is kept, lines are
 * 1-based, the text is checked for NUL bytes and invalid UTF-8 before libfyaml sees it, and
 * aliases and tags are refused. Pure functions of their arguments; any thread. */

#include <stdarg.h>
#include <stddef.h>

#include <libfyaml.h>

/* Where a loader writes its error. Every pointer is borrowed from the loader's caller. */
struct cfg_yaml_err {
    const char *fname; /* file name at the start of every message */
    char *buf;         /* message buffer, cap bytes; NULL when the caller wants none */
    size_t cap;        /* bytes at buf */
    int code;          /* what the failing calls return: PX_ECONFIG, PX_EPARSE, ... */
};

/* Write "FNAME:LINE: WHERE: message" into e->buf (truncated to e->cap). line <= 0 leaves out
 * ":LINE", and a NULL or empty where leaves out "WHERE: ". Returns e->code. */
int cfg_yaml_fail(const struct cfg_yaml_err *e, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* cfg_yaml_fail with a va_list, for loaders that wrap it in their own printf-like function. */
int cfg_yaml_vfail(const struct cfg_yaml_err *e, int line, const char *where, const char *fmt,
                   va_list ap) __attribute__((format(printf, 4, 0)));

/* 1-based line of node n (borrowed): its own token for a scalar, else the first scalar inside,
 * going at most max_depth levels down; fallback when there is none (an empty mapping or list
 * has no token of its own in the document API) or n is NULL. */
int cfg_yaml_node_line(struct fy_node *n, int fallback, int max_depth);

/* 0 when v (borrowed) is plain data; an alias or a tag is an error at v's line (fallback
 * line). Returns 0 or e->code. */
int cfg_yaml_check_plain(const struct cfg_yaml_err *e, struct fy_node *v, const char *where,
                         int line, int max_depth);

/* The bytes of scalar v: *s (borrowed from the document, not NUL-terminated) and *len; "" and
 * 0 for an empty scalar or on error. A NULL v, an alias, a tag, a mapping or a list is an error
 * naming what was expected ("missing value (expected WHAT)", "expected WHAT, got a list").
 * Returns 0 or e->code. */
int cfg_yaml_scalar(const struct cfg_yaml_err *e, struct fy_node *v, const char *where, int line,
                    int max_depth, const char *what, const char **s, size_t *len);

/* A parsed document and the diagnostics that outlive it. Owned by the caller, released with
 * cfg_yaml_doc_cleanup(). */
struct cfg_yaml_doc {
    struct fy_diag *diag;    /* libfyaml's collected diagnostics, or NULL */
    struct fy_document *doc; /* the document, or NULL */
    struct fy_node *root;    /* its root node, borrowed from doc; non-NULL after success */
};

/* Check (data, len) line by line for NUL bytes ("NUL byte in the file (KIND is text)") and
 * invalid UTF-8, then build the document with libfyaml's diagnostics collected, not printed:
 * a syntax error becomes "FNAME:LINE: YAML syntax error: ...", a file without a root node
 * becomes empty_msg at line 1. The text check comes first both for the precise line and
 * because libfyaml 0.7.12 loops forever on some invalid UTF-8. data is borrowed and must stay
 * valid until cfg_yaml_doc_cleanup(). Returns 0 with d filled, or e->code; call
 * cfg_yaml_doc_cleanup() in both cases. */
int cfg_yaml_doc_parse(struct cfg_yaml_doc *d, const struct cfg_yaml_err *e, const char *data,
                       size_t len, const char *kind, const char *empty_msg);

/* Free what d holds and zero it. A zeroed d is a no-op. */
void cfg_yaml_doc_cleanup(struct cfg_yaml_doc *d);

#endif
