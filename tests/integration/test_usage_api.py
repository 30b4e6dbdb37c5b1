"""Issue 4: the platform's usage API on the SQLite store (the ClickHouse store is exercised in
test_clickhouse.py): GET /v1/usage/{tenant}?period=day|week|month and POST /v1/usage/check,
with Bearer auth; the queries run off the event loop and answer what the store holds."""

import time

import harness
from harness import T, wait_for


def tiers():
    big = {"rpm": 1000000, "tpm": 100000000000, "max_context": 1000000}
    return {"starter": dict(big), "pro": dict(big), "enterprise": dict(big),
            "capped": dict(big, monthly_tokens=60, price_gbp=1, overage="block")}


class UsageApiTest(harness.TestCase):
    def setUp(self):
        super().setUp()
        self.sim = self.h.start_sim()
        cfg = self.h.sim_config(self.sim, tiers=tiers())
        cfg["tenants"] = [{"id": "tiny", "tier": "capped"}]
        self.gw = self.h.start_gateway(cfg)

    def spend(self, tenant, n):
        total = 0
        for i in range(n):
            r = self.gw.chat(headers=harness.auth_headers(tenant=tenant), prompt="api %d" % i)
            self.assertEqual(r.status, 200, r)
            total += r.json()["usage"]["total_tokens"]
        return total

    def wait_tenant_rows(self, tenant, n):
        self.gw.wait_rows(n, "tenant_id = ?", (tenant,))

    def test_get_periods_and_errors(self):
        total = self.spend("acme", 3)
        self.wait_tenant_rows("acme", 3)
        for period in ("day", "week", "month"):
            r = self.gw.get("/v1/usage/acme?period=%s" % period, headers=harness.auth_headers())
            self.assertEqual(r.status, 200, r)
            j = r.json()
            self.assertEqual((j["tenant_id"], j["period"], j["requests"], j["total_tokens"]),
                             ("acme", period, 3, total))
            self.assertEqual(len(j["days"]), 1)
            self.assertEqual(j["days"][0]["date"], time.strftime("%Y-%m-%d", time.gmtime()))
            self.assertEqual(j["month"]["monthly_tokens"], total)
            self.assertEqual(j["month"]["allowance"], 5000000)
            self.assertTrue(r.header("X-Request-ID"))
        # Default period: the month; an unknown tenant has no usage.
        r = self.gw.get("/v1/usage/nobody", headers=harness.auth_headers())
        self.assertEqual((r.status, r.json()["period"], r.json()["requests"]), (200, "month", 0))
        # Percent-encoded tenant ids.
        r = self.gw.get("/v1/usage/ac%6De?period=day", headers=harness.auth_headers())
        self.assertEqual(r.json()["requests"], 3)
        self.assertErrorJSON(self.gw.get("/v1/usage/acme?period=year", headers=harness.auth_headers()),
                             400, "invalid_value")
        self.assertErrorJSON(self.gw.get("/v1/usage/acme"), 401, "invalid_token")
        self.assertErrorJSON(self.gw.get("/v1/usage/acme", headers=harness.auth_headers(token="nope")),
                             401, "invalid_token")
        self.assertErrorJSON(self.gw.get("/v1/usage/ac%0Ame", headers=harness.auth_headers()),
                             400, "invalid_value")
        # The route is a prefix: /v1/usage alone is not it.
        self.assertEqual(self.gw.get("/v1/usage", headers=harness.auth_headers()).status, 404)

    def test_check_allowed_and_blocked(self):
        used = self.spend("tiny", 2)
        self.wait_tenant_rows("tiny", 2)
        self.assertGreater(used, 60)   # past the capped tier's 60 tokens
        h = harness.auth_headers()
        r = self.gw.post("/v1/usage/check", {"tenant_id": "acme", "plan_tier": "pro",
                                             "estimated_tokens": 1000}, headers=h)
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertTrue(j["allowed"])
        self.assertEqual((j["plan_tier"], j["monthly_tokens"], j["overage_tokens"]), ("pro", 0, 0))
        r = self.gw.post("/v1/usage/check", {"tenant_id": "tiny", "plan_tier": "pro",
                                             "estimated_tokens": 10}, headers=h)
        self.assertEqual(r.status, 429, r)
        j = r.json()
        self.assertFalse(j["allowed"])
        self.assertEqual(j["error"]["code"], "monthly_quota_exceeded")
        self.assertEqual((j["plan_tier"], j["monthly_tokens"], j["allowance"]), ("capped", used, 60))
        self.assertEqual(j["overage_tokens"], used + 10 - 60)
        self.assertEqual(j["percent_used"], round(used * 100 / 60, 1))
        self.assertTrue(int(r.header("Retry-After")) > 0)
        for bad in ({}, {"tenant_id": ""}, {"tenant_id": "a", "plan_tier": "gold"},
                    {"tenant_id": "a", "estimated_tokens": -1},
                    {"tenant_id": "a", "estimated_tokens": "5"}):
            with self.subTest(bad=bad):
                self.assertErrorJSON(self.gw.post("/v1/usage/check", bad, headers=h), 400, "invalid_value")
        self.assertErrorJSON(self.gw.post("/v1/usage/check", "nope", headers=h), 400, "invalid_json")
        self.assertErrorJSON(self.gw.post("/v1/usage/check", {"tenant_id": "a"}), 401, "invalid_token")

    def test_health_shows_spool(self):
        self.spend("acme", 2)
        u = wait_for(lambda: (lambda u: u if u["backlog"] == 0 and u["shipped"] >= 2 else None)(
            self.gw.get("/health").json()["usage"]), T(10), "the rows shipped")
        self.assertEqual(self.gw.get("/health").json()["status"], "ok")
        self.assertGreater(u["last_ship_unix_ms"], 0)
        self.assertGreater(u["spool_bytes"], 0)
        self.assertFalse(u["spool_full"])
        self.assertEqual(u["dropped"], 0)
