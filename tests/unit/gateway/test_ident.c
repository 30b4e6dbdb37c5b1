/* Caller identification tests (gw_identify): a table of header sets, each with the outcome
 * (status, code, message fragment) or the identity it must produce. The config is built by
 * hand: two service tokens, three tiers, a pinned tenant and an unpinned one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "core/util.h"
#include "gateway/internal.h"

static struct px_token_cfg tokens[] = {{.id = "platform"}, {.id = "ci"}};
static struct px_tier_cfg tiers[] = {{.name = "starter"}, {.name = "pro"}, {.name = "enterprise"}};
static struct px_tenant_cfg tenants[] = {
    {.id = "acme", .tier = 2, .pinned = 1},  /* tier set in the file: wins over the header */
    {.id = "loose", .tier = 1, .pinned = 0}, /* limits overridden only: the header picks */
};
static struct px_config cfg = {
    .tokens = tokens,
    .ntokens = 2,
    .tiers = tiers,
    .ntiers = 3,
    .default_tier = 0,
    .tenants = tenants,
    .ntenants = 2,
};
static struct gateway gw = {.cfg = &cfg};

static int setup(void **state)
{
    (void)state;
    px_sha256("secret-token", strlen("secret-token"), tokens[0].sha256);
    px_sha256("other-token", strlen("other-token"), tokens[1].sha256);
    return 0;
}

/* Headers as name/value pairs; a value may hold any bytes (its length is strlen unless a
 * pair in a case says otherwise). */
#define MAXH 8
struct hdr {
    const char *name;
    const char *value;
    size_t len; /* 0: strlen(value) */
};

#define AUTH                                                                                       \
    {                                                                                              \
        "Authorization", "Bearer secret-token", 0                                                  \
    }
#define TENANT                                                                                     \
    {                                                                                              \
        "X-Tenant-ID", "t1", 0                                                                     \
    }
#define GEN   NULL                      /* request_id: a generated UUID */
#define NO_ID NULL, NULL, NULL, 0, NULL /* a rejected case has no identity to check */

static const struct {
    const char *name;
    struct hdr h[MAXH];
    int status; /* 0: accepted */
    const char *code;
    const char *frag;
    /* when accepted: */
    const char *key_id;
    const char *tenant;
    const char *user;
    size_t tier;
    const char *request_id; /* GEN or the value kept */
} cases[] = {
    {"ok", {AUTH, TENANT}, 0, NULL, NULL, "platform", "t1", "", 0, GEN},
    {"second token",
     {{"Authorization", "Bearer other-token", 0}, TENANT},
     0,
     NULL,
     NULL,
     "ci",
     "t1",
     "",
     0,
     GEN},
    {"lowercase bearer",
     {{"Authorization", "bearer secret-token", 0}, TENANT},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"uppercase BEARER",
     {{"Authorization", "BEARER secret-token", 0}, TENANT},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"extra spaces after Bearer",
     {{"Authorization", "Bearer   secret-token", 0}, TENANT},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"header names are case-insensitive",
     {{"AUTHORIZATION", "Bearer secret-token", 0}, {"x-tenant-id", "t1", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"wrong token",
     {{"Authorization", "Bearer wrong", 0}, TENANT},
     401,
     "invalid_token",
     "invalid service token",
     NO_ID},
    {"token prefix",
     {{"Authorization", "Bearer secret-toke", 0}, TENANT},
     401,
     "invalid_token",
     "invalid service token",
     NO_ID},
    {"token plus suffix",
     {{"Authorization", "Bearer secret-tokenX", 0}, TENANT},
     401,
     "invalid_token",
     "invalid service token",
     NO_ID},
    {"token case matters",
     {{"Authorization", "Bearer SECRET-TOKEN", 0}, TENANT},
     401,
     "invalid_token",
     "invalid service token",
     NO_ID},
    {"missing Authorization",
     {TENANT},
     401,
     "invalid_token",
     "missing Authorization header",
     NO_ID},
    {"Basic",
     {{"Authorization", "Basic x", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"Basic long",
     {{"Authorization", "Basic c2VjcmV0LXRva2Vu", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"bare token",
     {{"Authorization", "secret-token", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"Bearer without space",
     {{"Authorization", "Bearer", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"Bearer with tab",
     {{"Authorization", "Bearer\tsecret-token", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"empty Authorization",
     {{"Authorization", "", 0}, TENANT},
     401,
     "invalid_token",
     "malformed Authorization header",
     NO_ID},
    {"Bearer empty",
     {{"Authorization", "Bearer ", 0}, TENANT},
     401,
     "invalid_token",
     "empty Bearer token",
     NO_ID},
    {"Bearer spaces only",
     {{"Authorization", "Bearer    ", 0}, TENANT},
     401,
     "invalid_token",
     "empty Bearer token",
     NO_ID},
    {"two Authorization headers are refused, whichever is right",
     {{"Authorization", "Bearer wrong", 0}, {"Authorization", "Bearer secret-token", 0}, TENANT},
     401,
     "invalid_token",
     "sent more than once",
     NO_ID},
    {"two X-Tenant-ID headers are refused",
     {AUTH, {"X-Tenant-ID", "a", 0}, {"X-Tenant-ID", "b", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID header is sent more than once",
     NO_ID},
    /* tenant */
    {"tenant missing", {AUTH}, 400, "missing_header", "X-Tenant-ID header is required", NO_ID},
    {"tenant empty",
     {AUTH, {"X-Tenant-ID", "", 0}},
     400,
     "missing_header",
     "X-Tenant-ID header is required",
     NO_ID},
    {"tenant control char",
     {AUTH, {"X-Tenant-ID", "a\x01z", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must be 1-128 bytes of UTF-8 without control characters",
     NO_ID},
    {"tenant tab",
     {AUTH, {"X-Tenant-ID", "a\tz", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant DEL",
     {AUTH, {"X-Tenant-ID", "a\x7fz", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant NUL",
     {AUTH, {"X-Tenant-ID", "a\0z", 3}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant invalid UTF-8",
     {AUTH, {"X-Tenant-ID", "caf\xe9", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant overlong UTF-8",
     {AUTH, {"X-Tenant-ID", "\xc0\xaf", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant truncated UTF-8",
     {AUTH, {"X-Tenant-ID", "ab\xe6\x97", 0}},
     400,
     "invalid_value",
     "X-Tenant-ID must",
     NO_ID},
    {"tenant UTF-8",
     {AUTH, {"X-Tenant-ID", "caf\xc3\xa9 \xe6\x97\xa5", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "caf\xc3\xa9 \xe6\x97\xa5",
     "",
     0,
     GEN},
    {"tenant with spaces",
     {AUTH, {"X-Tenant-ID", "team a", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "team a",
     "",
     0,
     GEN},
    /* user */
    {"user",
     {AUTH, TENANT, {"X-User-ID", "alice@example.com", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "alice@example.com",
     0,
     GEN},
    {"user empty is no user",
     {AUTH, TENANT, {"X-User-ID", "", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"user control char",
     {AUTH, TENANT, {"X-User-ID", "bob\n", 0}},
     400,
     "invalid_value",
     "X-User-ID must be 1-128 bytes of UTF-8 without control characters",
     NO_ID},
    {"user invalid UTF-8",
     {AUTH, TENANT, {"X-User-ID", "\xff", 0}},
     400,
     "invalid_value",
     "X-User-ID must",
     NO_ID},
    /* tier */
    {"tier header",
     {AUTH, TENANT, {"X-Plan-Tier", "pro", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     1,
     GEN},
    {"tier header enterprise",
     {AUTH, TENANT, {"x-plan-tier", "enterprise", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     2,
     GEN},
    {"tier header empty: default",
     {AUTH, TENANT, {"X-Plan-Tier", "", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"tier unknown",
     {AUTH, TENANT, {"X-Plan-Tier", "platinum", 0}},
     400,
     "invalid_value",
     "unknown X-Plan-Tier (configured tiers: starter, pro, enterprise)",
     NO_ID},
    {"tier names are case-sensitive",
     {AUTH, TENANT, {"X-Plan-Tier", "Pro", 0}},
     400,
     "invalid_value",
     "unknown X-Plan-Tier",
     NO_ID},
    {"tier prefix",
     {AUTH, TENANT, {"X-Plan-Tier", "pr", 0}},
     400,
     "invalid_value",
     "unknown X-Plan-Tier",
     NO_ID},
    {"pinned tenant wins over the header",
     {AUTH, {"X-Tenant-ID", "acme", 0}, {"X-Plan-Tier", "starter", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "acme",
     "",
     2,
     GEN},
    {"pinned tenant without header",
     {AUTH, {"X-Tenant-ID", "acme", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "acme",
     "",
     2,
     GEN},
    {"unpinned tenant: the header picks",
     {AUTH, {"X-Tenant-ID", "loose", 0}, {"X-Plan-Tier", "enterprise", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "loose",
     "",
     2,
     GEN},
    {"unpinned tenant without header: its tier",
     {AUTH, {"X-Tenant-ID", "loose", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "loose",
     "",
     1,
     GEN},
    {"tenant ids are exact",
     {AUTH, {"X-Tenant-ID", "ACME", 0}, {"X-Plan-Tier", "pro", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "ACME",
     "",
     1,
     GEN},
    /* request id */
    {"request id kept",
     {AUTH, TENANT, {"X-Request-ID", "req-abc_123.XYZ~", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     "req-abc_123.XYZ~"},
    {"request id empty: generated",
     {AUTH, TENANT, {"X-Request-ID", "", 0}},
     0,
     NULL,
     NULL,
     "platform",
     "t1",
     "",
     0,
     GEN},
    {"request id with space",
     {AUTH, TENANT, {"x-request-id", "a b", 0}},
     400,
     "invalid_value",
     "X-Request-ID must be 1-128 printable ASCII characters without spaces",
     NO_ID},
    {"request id with tab",
     {AUTH, TENANT, {"X-Request-ID", "a\tb", 0}},
     400,
     "invalid_value",
     "X-Request-ID must",
     NO_ID},
    {"request id non-ASCII",
     {AUTH, TENANT, {"X-Request-ID", "caf\xc3\xa9", 0}},
     400,
     "invalid_value",
     "X-Request-ID must",
     NO_ID},
    {"request id DEL",
     {AUTH, TENANT, {"X-Request-ID", "a\x7f", 0}},
     400,
     "invalid_value",
     "X-Request-ID must",
     NO_ID},
    /* order: request id, then auth, then tenant */
    {"bad request id before auth",
     {{"X-Request-ID", "a b", 0}},
     400,
     "invalid_value",
     "X-Request-ID",
     NO_ID},
    {"auth before tenant",
     {{"Authorization", "Bearer wrong", 0}},
     401,
     "invalid_token",
     "invalid service token",
     NO_ID},
};

static size_t build_headers(struct http_header *hs, const struct hdr *h)
{
    size_t n = 0;
    for (; n < MAXH && h[n].name; n++) {
        hs[n].name = h[n].name;
        hs[n].name_len = strlen(h[n].name);
        hs[n].value = h[n].value;
        hs[n].value_len = h[n].len ? h[n].len : strlen(h[n].value);
    }
    return n;
}

static int is_uuid4(const char *s)
{
    if (strlen(s) != 36) {
        return 0;
    }
    for (size_t i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') {
                return 0;
            }
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http_header hs[MAXH];
        struct http_req req;
        memset(&req, 0, sizeof(req));
        req.headers = hs;
        req.nheaders = build_headers(hs, cases[i].h);
        struct gw_ident id;
        struct gw_error err;
        memset(&err, 0, sizeof(err));
        int rc = gw_identify(&gw, &req, &id, &err);
        int ok;
        if (cases[i].status) {
            const char *type =
                cases[i].status == 401 ? "authentication_error" : "invalid_request_error";
            ok = rc == -1 && err.status == cases[i].status && err.type &&
                 strcmp(err.type, type) == 0 && err.code && strcmp(err.code, cases[i].code) == 0 &&
                 strstr(err.message, cases[i].frag);
        } else {
            ok = rc == 0 && strcmp(id.api_key_id, cases[i].key_id) == 0 &&
                 strcmp(id.tenant_id, cases[i].tenant) == 0 &&
                 strcmp(id.user_id, cases[i].user) == 0 && id.tier == cases[i].tier &&
                 (cases[i].request_id ? strcmp(id.request_id, cases[i].request_id) == 0
                                      : is_uuid4(id.request_id));
        }
        /* Whatever happened, the request has an id to echo. */
        ok = ok && strlen(id.request_id) > 0;
        if (!ok) {
            print_error("case \"%s\": rc %d status %d code %s message \"%s\"\n  key %s tenant %s "
                        "user %s tier %zu request_id %s\n",
                        cases[i].name, rc, err.status, err.code ? err.code : "(null)", err.message,
                        id.api_key_id, id.tenant_id, id.user_id, id.tier, id.request_id);
            fail();
        }
    }
}

static void identify(const struct hdr *h, struct gw_ident *id, struct gw_error *err, int want_rc)
{
    struct http_header hs[MAXH];
    struct http_req req;
    memset(&req, 0, sizeof(req));
    req.headers = hs;
    req.nheaders = build_headers(hs, h);
    assert_int_equal(gw_identify(&gw, &req, id, err), want_rc);
}

static void test_id_lengths(void **state)
{
    (void)state;
    char v128[129];
    char v129[130];
    memset(v128, 'a', 128);
    v128[128] = '\0';
    memset(v129, 'b', 129);
    v129[129] = '\0';
    struct gw_ident id;
    struct gw_error err;

    /* 128 bytes: accepted and copied whole (tenant, user, request id). */
    struct hdr ok128[] = {AUTH,
                          {"X-Tenant-ID", v128, 0},
                          {"X-User-ID", v128, 0},
                          {"X-Request-ID", v128, 0},
                          {NULL, NULL, 0}};
    identify(ok128, &id, &err, 0);
    assert_string_equal(id.tenant_id, v128);
    assert_string_equal(id.user_id, v128);
    assert_string_equal(id.request_id, v128);

    struct hdr t129[] = {AUTH, {"X-Tenant-ID", v129, 0}, {NULL, NULL, 0}};
    identify(t129, &id, &err, -1);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.code, "invalid_value");
    assert_non_null(strstr(err.message, "X-Tenant-ID must be 1-128 bytes"));

    struct hdr u129[] = {AUTH, TENANT, {"X-User-ID", v129, 0}, {NULL, NULL, 0}};
    identify(u129, &id, &err, -1);
    assert_int_equal(err.status, 400);
    assert_non_null(strstr(err.message, "X-User-ID must be 1-128 bytes"));

    struct hdr r129[] = {AUTH, TENANT, {"X-Request-ID", v129, 0}, {NULL, NULL, 0}};
    identify(r129, &id, &err, -1);
    assert_int_equal(err.status, 400);
    assert_non_null(strstr(err.message, "X-Request-ID must be 1-128"));
    /* The rejected request still has an id to echo: a fresh one, not the bad value. */
    assert_true(is_uuid4(id.request_id));

    /* 128 bytes of 4-byte characters is 32 characters: the limit is in bytes. */
    char emoji[200];
    for (int i = 0; i < 32; i++) {
        memcpy(emoji + 4 * i, "\xf0\x9f\x98\x80", 4);
    }
    emoji[128] = '\0';
    struct hdr e128[] = {AUTH, {"X-Tenant-ID", emoji, 0}, {NULL, NULL, 0}};
    identify(e128, &id, &err, 0);
    assert_string_equal(id.tenant_id, emoji);
    memcpy(emoji + 128, "x", 2);
    struct hdr e129[] = {AUTH, {"X-Tenant-ID", emoji, 0}, {NULL, NULL, 0}};
    identify(e129, &id, &err, -1);
}

static void test_request_id_on_rejection(void **state)
{
    (void)state;
    struct gw_ident id;
    struct gw_error err;
    /* A valid X-Request-ID is kept even when the request is then refused. */
    struct hdr h[] = {
        {"X-Request-ID", "r-1", 0}, {"Authorization", "Bearer nope", 0}, TENANT, {NULL, NULL, 0}};
    identify(h, &id, &err, -1);
    assert_int_equal(err.status, 401);
    assert_string_equal(id.request_id, "r-1");
    assert_string_equal(id.api_key_id, "");

    struct hdr h2[] = {{"X-Request-ID", "r-2", 0}, AUTH, {NULL, NULL, 0}};
    identify(h2, &id, &err, -1);
    assert_int_equal(err.status, 400);
    assert_string_equal(id.request_id, "r-2");
    assert_string_equal(id.api_key_id, "platform"); /* auth passed, tenant failed */
}

static void test_generated_ids_differ(void **state)
{
    (void)state;
    struct hdr h[] = {AUTH, TENANT, {NULL, NULL, 0}};
    char seen[16][37];
    for (int i = 0; i < 16; i++) {
        struct gw_ident id;
        struct gw_error err;
        identify(h, &id, &err, 0);
        assert_true(is_uuid4(id.request_id));
        for (int k = 0; k < i; k++) {
            assert_string_not_equal(seen[k], id.request_id);
        }
        memcpy(seen[i], id.request_id, 37);
    }
}

/* The identity is reset on every call: nothing leaks from a previous request. */
static void test_ident_reset(void **state)
{
    (void)state;
    struct gw_ident id;
    struct gw_error err;
    struct hdr h1[] = {
        AUTH, TENANT, {"X-User-ID", "alice", 0}, {"X-Plan-Tier", "pro", 0}, {NULL, NULL, 0}};
    identify(h1, &id, &err, 0);
    assert_string_equal(id.user_id, "alice");
    struct hdr h2[] = {AUTH, {"X-Tenant-ID", "t2", 0}, {NULL, NULL, 0}};
    identify(h2, &id, &err, 0);
    assert_string_equal(id.user_id, "");
    assert_string_equal(id.tenant_id, "t2");
    assert_int_equal(id.tier, 0);
}

/* Many tiers with long names: the list in the message is cut, never overrun. */
static void test_tier_list_long(void **state)
{
    (void)state;
    static struct px_tier_cfg many[12];
    static char names[12][40];
    for (int i = 0; i < 12; i++) {
        snprintf(names[i], sizeof(names[i]), "tier-with-a-rather-long-name-%02d", i);
        many[i].name = names[i];
    }
    struct px_config c2 = cfg;
    c2.tiers = many;
    c2.ntiers = 12;
    struct gateway g2 = {.cfg = &c2};
    struct http_header hs[MAXH];
    struct hdr h[] = {AUTH, TENANT, {"X-Plan-Tier", "nope", 0}, {NULL, NULL, 0}};
    struct http_req req;
    memset(&req, 0, sizeof(req));
    req.headers = hs;
    req.nheaders = build_headers(hs, h);
    struct gw_ident id;
    struct gw_error err;
    assert_int_equal(gw_identify(&g2, &req, &id, &err), -1);
    assert_int_equal(err.status, 400);
    assert_non_null(strstr(err.message, "unknown X-Plan-Tier (configured tiers: tier-with-a"));
    assert_true(strlen(err.message) < sizeof(err.message));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_id_lengths),
        cmocka_unit_test(test_request_id_on_rejection),
        cmocka_unit_test(test_generated_ids_differ),
        cmocka_unit_test(test_ident_reset),
        cmocka_unit_test(test_tier_list_long),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
