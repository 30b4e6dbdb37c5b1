"""`privax scale` (issue 5) on a prepared data set, with exact expected numbers: two live privax
nodes whose GPU figures come from files (95% and 70% busy) plus one dead node, and a SQLite usage
store filled with known rows (tokens this month, hourly queue waits, a one-off burst of
concurrent users), evaluated as of a fixed time with --now-ms."""

import calendar
import json
import os
import sqlite3
import unittest

import harness
from harness import T, wait_for

HOUR = 3600 * 1000
DAY = 24 * HOUR
NOW = calendar.timegm((2026, 3, 20, 12, 0, 0)) * 1000      # as of 2026-03-20 12:00 UTC
MARCH = calendar.timegm((2026, 3, 1, 0, 0, 0)) * 1000
APRIL = calendar.timegm((2026, 4, 1, 0, 0, 0)) * 1000


def fill_store(db):
    """The prepared rows. Returns nothing; the expected figures are spelled out in the test."""
    rows = []
    seq = [0]

    def add(t, tenant, tier, tokens=0, user="", backend="gpu0", queue=0, latency=100, status=200):
        seq[0] += 1
        rows.append((t, "r%d" % seq[0], tenant, user, tier, backend, tokens, queue, latency, status,
                     1 if status == 200 else 0, seq[0]))

    # Tokens: February is another month; March so far has 80M + 30M + 6M = 116M.
    add(calendar.timegm((2026, 2, 10, 9, 0, 0)) * 1000, "acme", "enterprise", tokens=50000000)
    day5 = calendar.timegm((2026, 3, 5, 9, 0, 0)) * 1000
    for i in range(8):
        add(day5 + i * 60000, "acme", "enterprise", tokens=10000000)
    for i in range(3):
        add(day5 + HOUR + i * 60000, "globex", "pro", tokens=10000000)
    for i in range(6):
        add(day5 + 2 * HOUR + i * 60000, "initech", "starter", tokens=1000000)
    # After "now": not counted.
    add(NOW + HOUR, "acme", "enterprise", tokens=1000000)

    # The scan window (the last 7 days): 20 active hours of 20 requests each, one at a time.
    # Queue waits: 100 ms, except two requests of three hours (6 s, 7 s, 9 s), which makes
    # those hours' p95 (the 19th of 20) the long wait.
    high = {3: 6000, 8: 7000, 15: 9000}
    start = NOW - 6 * DAY
    for h in range(20):
        t0 = start + h * 5 * HOUR
        for i in range(20):
            add(t0 + i * 1000, "globex", "pro", user="steady", queue=high.get(h, 100) if i < 2 else 100)
        if h == 10:
            # One burst: 30 users in flight at once (each request runs a minute).
            for u in range(30):
                add(t0 + 30 * 60000 + u * 1000, "initech", "starter", user="burst-%d" % u, latency=60000)
            # Rejected before routing (no backend, no queue): never counted as in flight.
            for u in range(40):
                add(t0 + 30 * 60000 + u * 100, "initech", "starter", user="rejected-%d" % u, backend="",
                    latency=10000, status=429)
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO llm_requests (event_time, request_id, tenant_id, user_id, plan_tier, backend,"
            " total_tokens, queue_ms, latency_ms, status_code, success, spool_id, spool_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)", rows)
    con.close()


class ScaleTest(harness.TestCase):

    def node(self, sim, name, util):
        gfile = self.h.path("%s-gpus.txt" % name)
        with open(gfile, "w") as f:
            f.write("0 %d 8000 16000\n" % util)
        d = self.h.path("data-" + name)
        cfg = self.h.sim_config(sim, node_id=name, data_dir=d, store={"sqlite": os.path.join(d, "usage.db")},
                                gpu={"source": "file", "file": gfile, "interval_ms": 50, "history": 100})
        return self.h.start_gateway(cfg, name=name)

    def scale(self, *args):
        p = self.h.privax(["scale"] + list(args), timeout=T(120))
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def test_prepared_data_set(self):
        sim = self.h.start_sim()
        n1 = self.node(sim, "node1", 95)
        n2 = self.node(sim, "node2", 70)
        # Two seconds of samples on both (the window below), i.e. 40 at 50 ms.
        for g in (n1, n2):
            wait_for(lambda g=g: len(g.get("/health").json()["gpus"][0]["utilization_history_pct"]) >= 45,
                     T(20), "GPU history on %s" % g.url)
        nodes = self.h.path("nodes.yaml")
        with open(nodes, "w") as f:
            f.write(harness.to_yaml({"nodes": [
                {"name": "node1", "url": n1.url},
                {"name": "node2", "url": n2.url},
                {"name": "node3", "url": "http://127.0.0.1:%d" % harness.free_port(), "backup": True},
            ]}) + "\n")

        # The shared store privax scale reads: the schema by privax migrate, the rows by hand.
        db = self.h.path("shared", "usage.db")
        os.makedirs(os.path.dirname(db))
        cfg = self.h.sim_config(sim, node_id="ops", store={"sqlite": db},
                                tenants=[{"id": "acme", "tier": "enterprise"}, {"id": "idle", "tier": "pro"}],
                                scale={"gpu_window_s": 2})
        cfg.pop("tiers")  # the PRODUCT.md tiers: starter 39, pro 149, enterprise 499 GBP
        cfg_path = self.h.write_config(cfg, "scale.yaml")
        p = self.h.privax(["migrate", "--config", cfg_path])
        self.assertEqual(p.returncode, 0, p.stderr)
        fill_store(db)

        rc, out, err = self.scale("--nodes", nodes, "--config", cfg_path, "--now-ms", str(NOW), "--json")
        self.assertEqual(rc, 0, err + out)
        j = json.loads(out)
        self.assertEqual(j["as_of_unix_ms"], NOW)
        self.assertEqual(j["node_count"], 3)
        self.assertIsNone(j["store_error"])
        by = {n["name"]: n for n in j["nodes"]}
        self.assertEqual(by["node1"]["status"], "ok")
        self.assertEqual(by["node3"]["status"], "unreachable")
        self.assertEqual(by["node1"]["gpus"][0]["sustained_pct"], 95)
        self.assertEqual(by["node2"]["gpus"][0]["sustained_pct"], 70)
        self.assertEqual(by["node1"]["inflight"], 0)
        self.assertEqual(by["node1"]["queued_over_threshold_share"], 0)
        t = {x["key"]: x for x in j["triggers"]}
        # GPU: the mean of the sustained levels, 82.5% > 80%.
        self.assertEqual((t["gpu_utilization"]["value"], t["gpu_utilization"]["threshold"],
                          t["gpu_utilization"]["verdict"]), (82.5, 80, "add_node"))
        # Queue: 3 of 20 hours had a p95 over 5 s; 10% of 20 hours is 2, so the value is the
        # 2nd worst hourly p95, 7 s.
        self.assertEqual((t["queue_delay"]["value"], t["queue_delay"]["threshold"], t["queue_delay"]["verdict"]),
                         (7000, 5000, "add_node"))
        # Tokens this month: 116M > 100M (February and the future row left out).
        self.assertEqual((t["monthly_tokens"]["value"], t["monthly_tokens"]["verdict"]), (116000000, "add_node"))
        # Users: a single burst of 30 is not "regularly": the 2nd busiest hour had 1 user.
        self.assertEqual((t["concurrent_users"]["value"], t["concurrent_users"]["verdict"]), (1, "ok"))
        self.assertIn("peak 30", t["concurrent_users"]["detail"])
        self.assertTrue(j["add_node"])
        s = j["scan"]
        self.assertEqual((s["hours"], s["queue_hours_over"], s["worst_queue_p95_ms"], s["users_hours_over"],
                          s["peak_users"], s["distinct_users"]), (20, 3, 9000, 1, 30, 31))
        # Revenue the way privax bill counts it: acme 499 (pinned enterprise, 80M of 100M),
        # globex 149 + 5M over x 5 = 174, initech 39 + 1M over x 5 = 44, idle 149 (pinned, no
        # usage): 866.00.
        m = j["month"]
        self.assertEqual((m["tokens"], m["revenue_gbp"], m["base_gbp"], m["overage_gbp"], m["tenants"]),
                         (116000000, "866.00", "836.00", "30.00", 3))
        # On this pace: 116M over 19.5 of March's 31 days.
        self.assertEqual(m["projected_tokens"], 116000000 * (APRIL - MARCH) // (NOW - MARCH))
        c3, c4 = j["capacity"]
        self.assertEqual((c3["nodes"], c3["cost_usd"], c3["tokens"], c3["users"], c3["breakeven_gbp"],
                          c3["revenue_gbp"], c3["covered"]), (3, "900.00", 390000000, 75, "1500.00", "866.00", False))
        self.assertEqual((c4["nodes"], c4["cost_usd"], c4["tokens"], c4["breakeven_gbp"]),
                         (4, "1200.00", 520000000, "2000.00"))
        self.assertAlmostEqual(c3["tokens_used_pct"], m["projected_tokens"] * 100 / 390000000, places=6)

        # The same report as tables.
        rc, out, err = self.scale("--nodes", nodes, "--config", cfg_path, "--now-ms", str(NOW))
        self.assertEqual(rc, 0, err)
        self.assertIn("as of 2026-03-20 12:00 UTC", out)
        self.assertRegex(out, r"GPU utilisation, sustained\s+82\.5%\s+80\.0%\s+add a node")
        self.assertRegex(out, r"Queue delay, hourly p95\s+7000 ms\s+5000 ms\s+add a node")
        self.assertRegex(out, r"Tokens this month\s+116000000\s+100000000\s+add a node")
        self.assertRegex(out, r"Concurrent users, hourly peak\s+1 users\s+25 users\s+ok")
        self.assertIn("Advice: add a node (3 of 4 triggers hold).", out)
        self.assertRegex(out, r"cost\s+\$900\.00\s+\$1200\.00")
        self.assertRegex(out, r"revenue this month\s+GBP 866\.00\s+GBP 866\.00")
        self.assertRegex(out, r"covers break-even\s+no\s+no")
        self.assertRegex(out, r"(?m)^node3 \(b\)\s+unreachable")

        # Thresholds come from the config: with the GPU bar at 90%, 82.5% is fine.
        cfg["scale"] = {"gpu_window_s": 2, "gpu_util_pct": 90, "queue_p95_ms": 10000,
                        "monthly_tokens": 200000000, "node_cost_usd": 250.5, "breakeven_gbp": 250}
        cfg_path2 = self.h.write_config(cfg, "scale2.yaml")
        rc, out, err = self.scale("--nodes", nodes, "--config", cfg_path2, "--now-ms", str(NOW), "--json")
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        self.assertEqual([x["verdict"] for x in j["triggers"]], ["ok", "ok", "ok", "ok"])
        self.assertFalse(j["add_node"])
        self.assertEqual((j["capacity"][0]["cost_usd"], j["capacity"][0]["covered"]), ("751.50", True))

        # Without --config: the default figures, no store (those triggers unknown), exit 0.
        rc, out, err = self.scale("--nodes", nodes, "--json")
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        verdicts = {x["key"]: (x["verdict"], x["value"]) for x in j["triggers"]}
        self.assertEqual(verdicts["queue_delay"], ("unknown", None))
        self.assertEqual(verdicts["monthly_tokens"], ("unknown", None))
        # The default window is 300 s: not enough samples yet, so unknown too (never a guess).
        self.assertEqual(verdicts["gpu_utilization"], ("unknown", None))
        self.assertIsNone(j["month"])
        self.assertEqual(j["capacity"][0]["cost_usd"], "900.00")

    def test_bad_input_and_unreadable_store(self):
        sim = self.h.start_sim()
        nodes = self.h.path("nodes.yaml")
        with open(nodes, "w") as f:
            f.write("nodes:\n  - {name: n, url: \"http://127.0.0.1:%d\"}\n" % harness.free_port())
        self.assertEqual(self.scale()[0], 64)
        self.assertEqual(self.scale("--nodes", nodes, "--now-ms", "yesterday")[0], 64)
        self.assertEqual(self.scale("--nodes", self.h.path("none.yaml"))[0], 78)
        # A store that cannot be opened: the report is still printed, exit 69.
        bad = self.h.path("notadb")
        os.makedirs(os.path.join(bad, "usage.db"))
        cfg = self.h.sim_config(sim, store={"sqlite": os.path.join(bad, "usage.db")})
        rc, out, err = self.scale("--nodes", nodes, "--config", self.h.write_config(cfg, "bad.yaml"), "--json")
        self.assertEqual(rc, 69, out + err)
        j = json.loads(out)
        self.assertTrue(j["store_error"])
        self.assertEqual({x["key"]: x["verdict"] for x in j["triggers"]}["monthly_tokens"], "unknown")



class ScaleClickHouseTest(harness.TestCase):
    """privax scale reads the shared ClickHouse the same way as SQLite: the same prepared rows
    give the same hourly queue and concurrent-user figures (the store's scan op)."""

    def setUp(self):
        super().setUp()
        import clickhouse
        if not clickhouse.available():
            self.skipTest("clickhouse-server is not installed")
        self.clickhouse = clickhouse
        self.ch = clickhouse.ClickHouse(self.h).start()

    def test_scan_on_clickhouse_matches_sqlite(self):
        import test_clickhouse
        sim = self.h.start_sim()
        nodes = self.h.path("nodes.yaml")
        with open(nodes, "w") as f:
            f.write(harness.to_yaml({"nodes": [
                {"name": "n", "url": "http://127.0.0.1:%d" % harness.free_port()}]}) + "\n")
        # The prepared rows in SQLite, then copied row for row into ClickHouse.
        db = self.h.path("shared", "usage.db")
        os.makedirs(os.path.dirname(db))
        sq_cfg = self.h.write_config(self.h.sim_config(sim, store={"sqlite": db}), "sq.yaml")
        self.assertEqual(self.h.privax(["migrate", "--config", sq_cfg]).returncode, 0)
        fill_store(db)
        ch_cfg = self.h.write_config(
            self.h.sim_config(sim, store=test_clickhouse.ch_store(self.ch.url)), "ch.yaml")
        p = self.h.privax(["migrate", "--config", ch_cfg], env=test_clickhouse.CH_ENV)
        self.assertEqual(p.returncode, 0, p.stderr)
        con = sqlite3.connect(db)
        cols = ("event_time", "request_id", "tenant_id", "user_id", "plan_tier", "backend",
                "total_tokens", "queue_ms", "latency_ms", "status_code", "success", "spool_seq")
        lines = []
        for r in con.execute("SELECT %s FROM llm_requests" % ", ".join(cols)):
            row = dict(zip(cols, r))
            ms = row.pop("event_time")
            row.update({"event_time": ms // 1000, "event_ms": ms % 1000, "spool_id": 1})
            lines.append(json.dumps(row))
        con.close()
        self.ch.query("INSERT INTO %s.llm_requests FORMAT JSONEachRow" % test_clickhouse.DB,
                      data=("\n".join(lines) + "\n").encode())
        out = {}
        for name, cfg in (("sqlite", sq_cfg), ("clickhouse", ch_cfg)):
            p = self.h.privax(["scale", "--nodes", nodes, "--config", cfg, "--now-ms", str(NOW),
                               "--json"], env=test_clickhouse.CH_ENV, timeout=T(120))
            self.assertEqual(p.returncode, 0, p.stderr)
            out[name] = json.loads(p.stdout)
        for key in ("queue_delay", "concurrent_users", "monthly_tokens"):
            a = {x["key"]: x for x in out["sqlite"]["triggers"]}[key]
            b = {x["key"]: x for x in out["clickhouse"]["triggers"]}[key]
            self.assertEqual((a["value"], a["verdict"]), (b["value"], b["verdict"]), key)
            self.assertNotEqual(b["verdict"], "unknown", key)
        self.assertEqual(out["sqlite"]["scan"], out["clickhouse"]["scan"])

if __name__ == "__main__":
    unittest.main()
