/* Shared libfyaml helpers: see yaml.h. Moved out of config.c and ops/nodes.c, which had a
 * copy each, so both files keep the same error format and the same rules. */
#include "config/yaml.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"

int cfg_yaml_vfail(const struct cfg_yaml_err *e, int line, const char *where, const char *fmt,
                   va_list ap)
{
    if (e->buf == NULL || e->cap == 0) {
        return e->code;
    }
    int n = line > 0 ? snprintf(e->buf, e->cap, "%s:%d: ", e->fname, line)
                     : snprintf(e->buf, e->cap, "%s: ", e->fname);
    if (n > 0 && (size_t)n < e->cap && where != NULL && where[0] != '\0') {
        n += snprintf(e->buf + n, e->cap - (size_t)n, "%s: ", where);
    }
    if (n > 0 && (size_t)n < e->cap) {
        vsnprintf(e->buf + n, e->cap - (size_t)n, fmt, ap);
    }
    return e->code;
}

int cfg_yaml_fail(const struct cfg_yaml_err *e, int line, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cfg_yaml_vfail(e, line, where, fmt, ap);
    va_end(ap);
    return rc;
}

int cfg_yaml_node_line(struct fy_node *n, int fallback, int max_depth)
{
    for (int depth = 0; n != NULL && depth < max_depth; depth++) {
        void *it = NULL;
        if (fy_node_get_type(n) == FYNT_SCALAR) {
            struct fy_token *t = fy_node_get_scalar_token(n);
            const struct fy_mark *m = t ? fy_token_start_mark(t) : NULL;
            return m ? m->line + 1 : fallback;
        } else if (fy_node_get_type(n) == FYNT_SEQUENCE) {
            n = fy_node_sequence_iterate(n, &it);
        } else {
            struct fy_node_pair *p = fy_node_mapping_iterate(n, &it);
            n = p ? fy_node_pair_key(p) : NULL;
        }
    }
    return fallback;
}

int cfg_yaml_check_plain(const struct cfg_yaml_err *e, struct fy_node *v, const char *where,
                         int line, int max_depth)
{
    if (fy_node_is_alias(v) || fy_node_get_style(v) == FYNS_ALIAS) {
        return cfg_yaml_fail(e, cfg_yaml_node_line(v, line, max_depth), where,
                             "aliases are not supported");
    }
    size_t tl = 0;
    if (fy_node_get_tag(v, &tl) != NULL) {
        return cfg_yaml_fail(e, cfg_yaml_node_line(v, line, max_depth), where,
                             "tags are not supported");
    }
    return 0;
}

int cfg_yaml_scalar(const struct cfg_yaml_err *e, struct fy_node *v, const char *where, int line,
                    int max_depth, const char *what, const char **s, size_t *len)
{
    *s = "";
    *len = 0;
    if (v == NULL) {
        return cfg_yaml_fail(e, line, where, "missing value (expected %s)", what);
    }
    int rc = cfg_yaml_check_plain(e, v, where, line, max_depth);
    if (rc < 0) {
        return rc;
    }
    if (fy_node_get_type(v) != FYNT_SCALAR) {
        return cfg_yaml_fail(e, cfg_yaml_node_line(v, line, max_depth), where,
                             "expected %s, got a %s", what,
                             fy_node_get_type(v) == FYNT_MAPPING ? "mapping" : "list");
    }
    *s = fy_node_get_scalar(v, len);
    if (*s == NULL) {
        *s = "";
        *len = 0;
    }
    return 0;
}

/* No NUL byte and valid UTF-8, with the line of the first problem. */
static int check_text(const struct cfg_yaml_err *e, const char *data, size_t len, const char *kind)
{
    int line = 1;
    size_t start = 0;
    while (start < len) {
        const char *nl = memchr(data + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - data) : len;
        if (memchr(data + start, '\0', end - start) != NULL) {
            return cfg_yaml_fail(e, line, NULL, "NUL byte in the file (%s is text)", kind);
        }
        if (!px_utf8_valid(data + start, end - start)) {
            return cfg_yaml_fail(e, line, NULL, "invalid UTF-8");
        }
        start = end + 1;
        line++;
    }
    return 0;
}

int cfg_yaml_doc_parse(struct cfg_yaml_doc *d, const struct cfg_yaml_err *e, const char *data,
                       size_t len, const char *kind, const char *empty_msg)
{
    memset(d, 0, sizeof(*d));
    int rc = check_text(e, data, len, kind);
    if (rc < 0) {
        return rc;
    }
    /* Collect libfyaml's diagnostics instead of letting it print, so a syntax error is
     * reported once, in our format, with its line. */
    struct fy_diag_cfg dcfg;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.colorize = false;
    d->diag = fy_diag_create(&dcfg);
    if (d->diag == NULL) {
        return cfg_yaml_fail(e, 0, NULL, "cannot create the YAML diagnostics");
    }
    fy_diag_set_collect_errors(d->diag, true);
    struct fy_parse_cfg pcfg = {.flags = FYPCF_QUIET | FYPCF_JSON_NONE | FYPCF_ALLOW_DUPLICATE_KEYS,
                                .diag = d->diag};
    /* A parser rather than fy_document_build_from_string, which reads the first document and
     * ignores the rest: whatever follows a "---" would be silently dropped, typos included. */
    struct fy_parser *fyp = fy_parser_create(&pcfg);
    if (fyp == NULL || fy_parser_set_string(fyp, data, len) != 0) {
        fy_parser_destroy(fyp);
        return cfg_yaml_fail(e, 0, NULL, "cannot create the YAML parser");
    }
    d->doc = fy_parse_load_document(fyp);
    struct fy_document *more = d->doc ? fy_parse_load_document(fyp) : NULL;
    int more_line = 0;
    if (more != NULL) {
        struct fy_node *r = fy_document_root(more);
        more_line = r ? cfg_yaml_node_line(r, 0, 8) : 0;
        fy_parse_document_destroy(fyp, more);
    }
    fy_parser_destroy(fyp);
    void *it = NULL;
    struct fy_diag_error *de = fy_diag_errors_iterate(d->diag, &it);
    if (de != NULL) {
        return cfg_yaml_fail(e, de->line > 0 ? de->line : 1, NULL, "YAML syntax error: %s",
                             de->msg ? de->msg : "invalid YAML");
    }
    if (d->doc == NULL) {
        return cfg_yaml_fail(e, 1, NULL, "%s", empty_msg);
    }
    if (more != NULL) {
        return cfg_yaml_fail(e, more_line > 0 ? more_line : 1, NULL,
                             "a second YAML document (after \"---\"): the file must hold one");
    }
    d->root = fy_document_root(d->doc);
    if (d->root == NULL) {
        return cfg_yaml_fail(e, 1, NULL, "%s", empty_msg);
    }
    return 0;
}

void cfg_yaml_doc_cleanup(struct cfg_yaml_doc *d)
{
    fy_document_destroy(d->doc);
    if (d->diag != NULL) {
        fy_diag_destroy(d->diag);
    }
    memset(d, 0, sizeof(*d));
}
