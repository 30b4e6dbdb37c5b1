/* Config loader tests: a table of files under tests/data/config (each bad case with the line
 * and a fragment of the message it must produce), plus checks of the values the good files
 * load to. The data files also seed the fuzz_config corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "core/err.h"
#include "core/util.h"

/* The repo root, derived from this file's path so the test runs from any directory. */
static char root[1024];

static void path_of(char *out, size_t cap, const char *rel)
{
    if (snprintf(out, cap, "%s/%s", root, rel) >= (int)cap) {
        fail_msg("path too long: %s/%s", root, rel);
    }
}

static const struct {
    const char *file; /* under tests/data/config */
    int line;         /* expected line in "FILE:LINE: ..." */
    const char *frag; /* expected fragment of the message */
} bad_cases[] = {
    {"bad_empty.yaml", 1, "empty config"},
    {"bad_comments_only.yaml", 1, "empty config"},
    {"bad_syntax.yaml", 14, "YAML syntax error"},
    {"bad_not_mapping.yaml", 1, "expected a mapping"},
    {"bad_unknown_top.yaml", 12, "unknown key 'listn'"},
    {"bad_unknown_backend_key.yaml", 8, "backends[0]: unknown key 'protocl'"},
    {"bad_timeout_unknown.yaml", 13, "timeouts: unknown key 'conect_ms'"},
    {"bad_rpm_string.yaml", 14,
     "tiers[0].rpm: must be an integer, got the quoted string \"sixty\""},
    {"bad_rpm_word.yaml", 14, "tiers[0].rpm: must be an integer, got \"sixty\""},
    {"bad_rpm_negative.yaml", 14, "tiers[0].rpm: must be from 1 to"},
    {"bad_dup_backend.yaml", 9, "duplicate backend 'gpu0' (first defined at line 6)"},
    {"bad_dup_model.yaml", 12, "duplicate model 'm'"},
    {"bad_dup_token.yaml", 5, "duplicate token id 'platform'"},
    {"bad_dup_tier.yaml", 15, "duplicate tier 'pro'"},
    {"bad_dup_tenant.yaml", 15, "duplicate tenant 'acme'"},
    {"bad_dup_key.yaml", 13, "duplicate key 'listen' (first at line 12)"},
    {"bad_model_unknown_backend.yaml", 11, "models[0].backends[1]: unknown backend 'gpu9'"},
    {"bad_url_https.yaml", 7, "backends[0].url: must be http://host:port"},
    {"bad_url_noport.yaml", 7, "with a port from 1 to 65535"},
    {"bad_protocol.yaml", 8, "protocol: must be one of ollama | openai, got \"vllm\""},
    {"bad_listen.yaml", 1, "listen: must be host:port"},
    {"bad_sha256.yaml", 4, "token_sha256: must be 64 hex digits"},
    {"bad_token_env.yaml", 4, "environment variable PX_TEST_SURELY_UNSET_VAR is not set"},
    {"bad_token_two_sources.yaml", 5, "give exactly one of token, token_env, token_sha256"},
    {"bad_token_no_source.yaml", 3, "give exactly one of token, token_env, token_sha256"},
    {"bad_tenant_tier.yaml", 14, "tenants[0].tier: unknown tier 'platinum'"},
    {"bad_default_tier.yaml", 12, "default_tier: unknown tier 'platinum'"},
    {"bad_no_tokens.yaml", 2, "auth.tokens: must list at least one entry"},
    {"bad_no_backends.yaml", 1, "missing required key 'backends'"},
    {"bad_no_models.yaml", 1, "missing required key 'models'"},
    {"bad_custom_tier_missing.yaml", 13, "tiers.gold: missing required key 'tpm'"},
    {"bad_overage.yaml", 14, "overage: must be one of bill | block"},
    {"bad_price.yaml", 14, "price_gbp: must be an amount in GBP with at most 2 decimals"},
    {"bad_alias.yaml", 14, "aliases are not supported"},
    {"bad_body_cap.yaml", 13, "http.body_max_bytes: must be from 1024"},
    {"bad_backup_bool.yaml", 9, "backup: must be true or false"},
    {"bad_no_starter.yaml", 12, "no tier named 'starter'"},
    {"bad_section_scalar.yaml", 12, "usage: expected a mapping"},
    {"bad_redis_url.yaml", 13, "limits.redis: must be redis://"},
    /* Found by fuzz_config: libfyaml 0.7.12 hangs on this input. */
    {"bad_fuzz_directive_utf8.yaml", 1, "invalid UTF-8"},
    {"bad_nul.yaml", 2, "NUL byte"},
    /* Found by fuzz_config: a failure before any key was read leaked limits.key_prefix's
     * default (px_config_free now walks the option tables). */
    {"bad_fuzz_root_tag.yaml", 1, "tags are not supported"},
};

static void test_bad_configs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        char path[1200];
        char err[512];
        char want[1400];
        struct px_config *cfg = (struct px_config *)(uintptr_t)1;
        char rel[256];
        snprintf(rel, sizeof(rel), "tests/data/config/%s", bad_cases[i].file);
        path_of(path, sizeof(path), rel);
        int rc = px_config_load(path, &cfg, err, sizeof(err));
        if (rc != PX_ECONFIG || cfg != NULL) {
            fail_msg("%s: expected PX_ECONFIG, got %d", bad_cases[i].file, rc);
        }
        snprintf(want, sizeof(want), "%s:%d: ", path, bad_cases[i].line);
        if (strncmp(err, want, strlen(want)) != 0 || strstr(err, bad_cases[i].frag) == NULL) {
            fail_msg("%s: got \"%s\", want prefix \"%s\" and \"%s\"", bad_cases[i].file, err, want,
                     bad_cases[i].frag);
        }
    }
}

static void test_missing_file(void **state)
{
    (void)state;
    char err[256];
    struct px_config *cfg;
    assert_int_equal(px_config_load("/nonexistent/privax.yaml", &cfg, err, sizeof(err)),
                     PX_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, "/nonexistent/privax.yaml: cannot open"));
}

static void test_tiny_err_buffer(void **state)
{
    (void)state;
    char path[1200];
    char err[8];
    struct px_config *cfg;
    path_of(path, sizeof(path), "tests/data/config/bad_rpm_word.yaml");
    assert_int_equal(px_config_load(path, &cfg, err, sizeof(err)), PX_ECONFIG);
    assert_int_equal(strlen(err), sizeof(err) - 1);
    assert_int_equal(px_config_load(path, &cfg, NULL, 0), PX_ECONFIG);
}

static void test_minimal_defaults(void **state)
{
    (void)state;
    char path[1200];
    char err[512];
    struct px_config *cfg;
    path_of(path, sizeof(path), "tests/data/config/good_minimal.yaml");
    assert_int_equal(px_config_load(path, &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg->listen, "127.0.0.1:8000");
    assert_string_equal(cfg->data_dir, "./data");
    assert_string_equal(cfg->sqlite_path, "./data/usage.db");
    assert_true(strlen(cfg->node_id) > 0);
    assert_int_equal(cfg->ntokens, 1);
    assert_string_equal(cfg->tokens[0].id, "platform");
    unsigned char h[32];
    px_sha256("test-token", 10, h);
    assert_memory_equal(cfg->tokens[0].sha256, h, 32);
    assert_int_equal(cfg->nbackends, 1);
    assert_string_equal(cfg->backends[0].url, "http://127.0.0.1:11434"); /* slash dropped */
    assert_int_equal(cfg->backends[0].protocol, PX_PROTO_OLLAMA);
    assert_int_equal(cfg->backends[0].gpu_id, -1);
    assert_int_equal(cfg->backends[0].max_concurrency, 4);
    assert_int_equal(cfg->backends[0].weight, 1);
    assert_int_equal(cfg->backends[0].backup, 0);
    assert_string_equal(cfg->models[0].upstream_model, "qwen2.5-coder:7b");
    assert_int_equal(cfg->models[0].nbackends, 1);
    assert_int_equal(cfg->models[0].backends[0], 0);
    assert_int_equal(cfg->models[0].context_window, 0);
    /* The PRODUCT.md plan table. */
    assert_int_equal(cfg->ntiers, 3);
    assert_string_equal(cfg->tiers[cfg->default_tier].name, "starter");
    long s = px_config_tier(cfg, "starter", 7);
    long p = px_config_tier(cfg, "pro", 3);
    long e = px_config_tier(cfg, "enterprise", 10);
    assert_true(s >= 0 && p >= 0 && e >= 0);
    assert_int_equal(cfg->tiers[s].rpm, 60);
    assert_int_equal(cfg->tiers[s].tpm, 100000);
    assert_int_equal(cfg->tiers[s].max_context, 4096);
    assert_int_equal(cfg->tiers[s].monthly_tokens, 5000000);
    assert_int_equal(cfg->tiers[s].price_pence, 3900);
    assert_int_equal(cfg->tiers[s].overage_pence_per_mtok, 500);
    assert_int_equal(cfg->tiers[s].overage, PX_OVERAGE_BILL);
    assert_int_equal(cfg->tiers[p].rpm, 120);
    assert_int_equal(cfg->tiers[p].tpm, 250000);
    assert_int_equal(cfg->tiers[p].max_context, 8192);
    assert_int_equal(cfg->tiers[p].monthly_tokens, 25000000);
    assert_int_equal(cfg->tiers[p].price_pence, 14900);
    assert_int_equal(cfg->tiers[e].rpm, 300);
    assert_int_equal(cfg->tiers[e].tpm, 1000000);
    assert_int_equal(cfg->tiers[e].max_context, 16384);
    assert_int_equal(cfg->tiers[e].monthly_tokens, 100000000);
    assert_int_equal(cfg->tiers[e].price_pence, 49900);
    assert_true(cfg->tiers[e].priority > cfg->tiers[p].priority);
    assert_true(cfg->tiers[p].priority > cfg->tiers[s].priority);
    assert_int_equal(cfg->ntenants, 0);
    assert_int_equal(cfg->header_max_bytes, 16384);
    assert_int_equal(cfg->body_max_bytes, 4 * 1024 * 1024);
    assert_int_equal(cfg->header_timeout_ms, 10000);
    assert_int_equal(cfg->keepalive_timeout_ms, 75000);
    assert_int_equal(cfg->connect_timeout_ms, 5000);
    assert_int_equal(cfg->first_byte_timeout_ms, 120000);
    assert_int_equal(cfg->idle_timeout_ms, 60000);
    assert_int_equal(cfg->shutdown_timeout_ms, 30000);
    assert_int_equal(cfg->usage_flush_ms, 100);
    assert_int_equal(cfg->usage_batch_max, 10000);
    assert_int_equal(px_config_model(cfg, "qwen2.5-coder:7bX", 16), 0); /* by length */
    assert_int_equal(px_config_model(cfg, "qwen2.5-coder:7", 15), -1);
    assert_int_equal(px_config_tenant(cfg, "x", 1), -1);
    assert_int_equal(px_config_backend(cfg, "gpu0", 4), 0);
    px_config_free(cfg);
}

static void test_full(void **state)
{
    (void)state;
    char path[1200];
    char err[512];
    struct px_config *cfg;
    setenv("PX_TEST_TOKEN", "from-env", 1);
    path_of(path, sizeof(path), "tests/data/config/good_full.yaml");
    int rc = px_config_load(path, &cfg, err, sizeof(err));
    if (rc != 0) {
        fail_msg("%s", err);
    }
    assert_string_equal(cfg->node_id, "node7");
    assert_string_equal(cfg->listen, "0.0.0.0:0");
    assert_string_equal(cfg->sqlite_path, "/tmp/privax-test-data/u.db");
    unsigned char h[32];
    px_sha256("from-env", 8, h);
    assert_memory_equal(cfg->tokens[1].sha256, h, 32);
    px_sha256("test", 4, h);
    assert_memory_equal(cfg->tokens[2].sha256, h, 32);
    assert_string_equal(cfg->backends[1].url, "http://[::1]:8001/v1");
    assert_int_equal(cfg->backends[1].protocol, PX_PROTO_OPENAI);
    assert_int_equal(cfg->backends[1].backup, 1);
    assert_int_equal(cfg->backends[0].weight, 3);
    assert_int_equal(cfg->backends[0].max_concurrency, 8);
    assert_string_equal(cfg->models[0].upstream_model, "qwen2.5-coder:7b");
    assert_int_equal(cfg->models[0].nbackends, 2);
    assert_int_equal(cfg->models[0].backends[1], 1);
    assert_int_equal(cfg->models[1].backends[0], 1);
    assert_int_equal(cfg->ntiers, 3);
    /* A built-in tier keeps its defaults for keys it leaves out. */
    assert_int_equal(cfg->tiers[0].rpm, 30);
    assert_int_equal(cfg->tiers[0].tpm, 100000);
    assert_int_equal(cfg->tiers[1].rpm, 120);
    assert_string_equal(cfg->tiers[cfg->default_tier].name, "pro");
    assert_int_equal(cfg->tiers[2].price_pence, 199999);
    assert_int_equal(cfg->tiers[2].overage_pence_per_mtok, 250);
    assert_int_equal(cfg->tiers[2].overage, PX_OVERAGE_BLOCK);
    assert_int_equal(cfg->tiers[2].default_max_tokens, 1024);
    assert_int_equal(cfg->tiers[2].priority, 5);
    assert_int_equal(cfg->ntenants, 2);
    assert_int_equal(cfg->tenants[0].pinned, 1);
    assert_string_equal(cfg->tiers[cfg->tenants[0].tier].name, "gold");
    assert_int_equal(cfg->tenants[1].pinned, 0);
    assert_int_equal(cfg->tenants[1].tier, cfg->default_tier);
    assert_int_equal(cfg->tenants[1].rpm, 5);
    assert_int_equal(cfg->tenants[1].tpm, 0);
    assert_int_equal(cfg->tenants[1].monthly_tokens, 1000);
    assert_int_equal(px_config_tenant(cfg, "small", 5), 1);
    assert_int_equal(cfg->header_max_bytes, 8192);
    assert_int_equal(cfg->shutdown_timeout_ms, 0);
    assert_int_equal(cfg->usage_batch_max, 10);
    px_config_free(cfg);
}

static void test_tiers_mapping(void **state)
{
    (void)state;
    char path[1200];
    char err[512];
    struct px_config *cfg;
    path_of(path, sizeof(path), "tests/data/config/good_tiers_map.yaml");
    assert_int_equal(px_config_load(path, &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg->ntiers, 1);
    assert_string_equal(cfg->tiers[0].name, "free");
    assert_int_equal(cfg->tiers[0].default_max_tokens, 64);
    assert_int_equal(cfg->tiers[0].overage_pence_per_mtok, 500);
    assert_int_equal(cfg->default_tier, 0);
    px_config_free(cfg);
}

/* The sample config the quick start runs must always load. */
static void test_example(void **state)
{
    (void)state;
    char path[1200];
    char err[512];
    struct px_config *cfg;
    path_of(path, sizeof(path), "examples/privax.yaml");
    int rc = px_config_load(path, &cfg, err, sizeof(err));
    if (rc != 0) {
        fail_msg("%s", err);
    }
    assert_string_equal(cfg->listen, "127.0.0.1:8000");
    assert_string_equal(cfg->sqlite_path, "./data/usage.db");
    assert_true(px_config_model(cfg, "qwen2.5-coder:7b", 16) >= 0);
    px_config_free(cfg);
}

int main(void)
{
    const char *self = __FILE__;
    const char *tail = strstr(self, "tests/unit/config/test_config.c");
    if (tail == NULL || self[0] != '/') {
        snprintf(root, sizeof(root), ".");
    } else {
        snprintf(root, sizeof(root), "%.*s", (int)(tail - self - 1), self);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_tiny_err_buffer),
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_tiers_mapping),
        cmocka_unit_test(test_example),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
