/* Identify the caller from the headers: request id, service token, tenant, user, plan tier.
 * The body is never consulted: a tenant cannot name itself or its tier in the payload.
 *
 * Rejected: a Bearer token that matches no configured token (every token is compared, in
 * constant time, on SHA-256 digests so neither length nor content leaks through timing);
 * X-Tenant-ID missing, empty, over 128 bytes, or with control bytes or invalid UTF-8;
 * X-User-ID likewise (but optional); X-Plan-Tier naming no configured tier; X-Request-ID
 * over 128 bytes or outside printable ASCII (it is echoed in a header). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"
#include "gateway/internal.h"

void gw_error_set(struct gw_error *err, int status, const char *type, const char *code,
                  const char *fmt, ...)
{
    err->status = status;
    err->retry_after_s = status == 503 ? 1 : 0;
    err->type = type;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    /* Messages quote input (jansson echoes the bytes near a parse error, and truncation can
     * cut a character): the error body is JSON and must stay valid UTF-8. */
    px_utf8_sanitize(err->message);
}

/* The value of a header that may appear at most once: 0 with *v (NULL when absent), or -1
 * with err set when it appears twice (which one would win is exactly what an attacker or a
 * confused proxy would exploit). */
static int single_header(const struct http_req *req, const char *name, const char **v, size_t *n,
                         struct gw_error *err)
{
    *v = NULL;
    *n = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (!px_view_ieq(h->name, h->name_len, name)) {
            continue;
        }
        if (*v) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "the %s header is sent more than once", name);
            return -1;
        }
        *v = h->value;
        *n = h->value_len;
    }
    return 0;
}

/* 1 when (p, n) is a usable id: 1..USAGE_ID_MAX bytes, valid UTF-8, no control bytes. */
static int id_ok(const char *p, size_t n)
{
    if (n == 0 || n > USAGE_ID_MAX || !px_utf8_valid(p, n)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}

static int request_id(const struct http_req *req, struct gw_ident *id, struct gw_error *err)
{
    size_t n;
    const char *v;
    if (single_header(req, "X-Request-ID", &v, &n, err) != 0) {
        px_uuid4(id->request_id);
        return -1;
    }
    if (!v || n == 0) {
        px_uuid4(id->request_id);
        return 0;
    }
    int ok = n <= USAGE_ID_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        ok = v[i] > 0x20 && v[i] < 0x7f;
    }
    if (!ok) {
        px_uuid4(id->request_id);
        gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                     "X-Request-ID must be 1-%d printable ASCII characters without spaces",
                     USAGE_ID_MAX);
        return -1;
    }
    memcpy(id->request_id, v, n);
    id->request_id[n] = '\0';
    return 0;
}

static int authenticate(const struct gateway *gw, const struct http_req *req, struct gw_ident *id,
                        struct gw_error *err)
{
    size_t n;
    const char *v;
    if (single_header(req, "Authorization", &v, &n, err) != 0) {
        err->status = 401;
        err->type = "authentication_error";
        err->code = "invalid_token";
        return -1;
    }
    if (!v) {
        gw_error_set(err, 401, "authentication_error", "invalid_token",
                     "missing Authorization header (expected: Bearer <token>)");
        return -1;
    }
    if (n < 7 || !px_view_ieq(v, 7, "bearer ")) {
        gw_error_set(err, 401, "authentication_error", "invalid_token",
                     "malformed Authorization header (expected: Bearer <token>)");
        return -1;
    }
    v += 7;
    n -= 7;
    while (n > 0 && v[0] == ' ') {
        v++;
        n--;
    }
    if (n == 0) {
        gw_error_set(err, 401, "authentication_error", "invalid_token", "empty Bearer token");
        return -1;
    }
    unsigned char digest[32];
    px_sha256(v, n, digest);
    long match = -1;
    for (size_t i = 0; i < gw->cfg->ntokens; i++) {
        /* No early exit: the time taken does not say which token (if any) matched. */
        if (px_ct_equal(digest, gw->cfg->tokens[i].sha256, 32) && match < 0) {
            match = (long)i;
        }
    }
    if (match < 0) {
        gw_error_set(err, 401, "authentication_error", "invalid_token", "invalid service token");
        return -1;
    }
    snprintf(id->api_key_id, sizeof(id->api_key_id), "%s", gw->cfg->tokens[match].id);
    return 0;
}

static int tenant(const struct gateway *gw, const struct http_req *req, struct gw_ident *id,
                  struct gw_error *err)
{
    size_t n;
    const char *v;
    if (single_header(req, "X-Tenant-ID", &v, &n, err) != 0) {
        return -1;
    }
    if (!v || n == 0) {
        gw_error_set(err, 400, "invalid_request_error", "missing_header",
                     "X-Tenant-ID header is required");
        return -1;
    }
    if (!id_ok(v, n)) {
        gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                     "X-Tenant-ID must be 1-%d bytes of UTF-8 without control characters",
                     USAGE_ID_MAX);
        return -1;
    }
    memcpy(id->tenant_id, v, n);
    id->tenant_id[n] = '\0';

    if (single_header(req, "X-User-ID", &v, &n, err) != 0) {
        return -1;
    }
    if (v && n > 0) {
        if (!id_ok(v, n)) {
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "X-User-ID must be 1-%d bytes of UTF-8 without control characters",
                         USAGE_ID_MAX);
            return -1;
        }
        memcpy(id->user_id, v, n);
        id->user_id[n] = '\0';
    }

    /* Tier: a pin in config wins, then the header, then the default tier. */
    const struct px_config *cfg = gw->cfg;
    long t = px_config_tenant(cfg, id->tenant_id, strlen(id->tenant_id));
    if (single_header(req, "X-Plan-Tier", &v, &n, err) != 0) {
        return -1;
    }
    long hdr = -1;
    if (v && n > 0) {
        hdr = px_config_tier(cfg, v, n);
        if (hdr < 0) {
            char names[160] = "";
            size_t off = 0;
            for (size_t i = 0; i < cfg->ntiers && off < sizeof(names); i++) {
                off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                        cfg->tiers[i].name);
            }
            gw_error_set(err, 400, "invalid_request_error", "invalid_value",
                         "unknown X-Plan-Tier (configured tiers: %s)", names);
            return -1;
        }
    }
    if (t >= 0 && cfg->tenants[t].pinned) {
        id->tier = cfg->tenants[t].tier;
    } else if (hdr >= 0) {
        id->tier = (size_t)hdr;
    } else {
        id->tier = t >= 0 ? cfg->tenants[t].tier : cfg->default_tier;
    }
    return 0;
}

int gw_identify(const struct gateway *gw, const struct http_req *req, struct gw_ident *id,
                struct gw_error *err)
{
    memset(id, 0, sizeof(*id));
    if (request_id(req, id, err) != 0) {
        return -1;
    }
    if (authenticate(gw, req, id, err) != 0) {
        return -1;
    }
    return tenant(gw, req, id, err);
}
