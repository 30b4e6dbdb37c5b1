"""Issue 4: the shared ClickHouse usage store, against a real clickhouse-server (Debian's 18.16)
started by the harness on free ports in the test's temp dir (tests/integration/clickhouse.py).

- migrate twice = the same schema; N requests -> exactly N rows whose sums equal the usage the
  clients received; the aggregates agree with the raw rows; privax usage reads the same;
- ClickHouse stopped for a while under steady load, then started: every row arrives once;
- privax SIGKILLed under load and restarted: every response a client saw has exactly one row,
  count() = uniqExact(request_id);
- ClickHouse answering errors for a batch: the table dropped and re-created (privax migrate),
  a 200 carrying an exception, a reply cut short, a 500: nothing lost, nothing doubled;
- the billing report on a fixed data set equals hand-computed totals (overage included), on
  ClickHouse and on SQLite, and both stores give the same usage report.
"""

import calendar
import json
import os
import signal
import sqlite3
import threading
import time
import unittest

import clickhouse
import harness
from harness import T, wait_for

DB = "privax_it"


def ch_store(ch_url, database=DB):
    return {"clickhouse": {"url": ch_url, "database": database, "user": "privax",
                           "password_env": "PX_CH_PASSWORD", "timeout_ms": 5000}}


CH_ENV = {"PX_CH_PASSWORD": clickhouse.PASSWORD}


class Load:
    """Steady load: `clients` threads, each sending chat requests one after another with its own
    request ids, recording every response that came back whole (status, id, usage)."""

    def __init__(self, port_fn, clients=4, tenants=("acme", "beta", "gamma"), stream_every=3):
        self.port_fn = port_fn
        self.clients = clients
        self.tenants = tenants
        self.stream_every = stream_every
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.ok = {}        # request_id -> total_tokens of a complete 200 response
        self.statuses = {}  # request_id -> status of any complete response
        self.errors = 0     # connection failures (e.g. privax killed)
        self.sent = 0
        self.threads = []

    def _one(self, cid, i):
        rid = "load-%d-%d-%d" % (cid, i, int(time.time() * 1000))
        tenant = self.tenants[(cid + i) % len(self.tenants)]
        stream = self.stream_every and i % self.stream_every == 0
        headers = harness.auth_headers(tenant=tenant, **{"X-Request-ID": rid})
        body = harness.chat_body(prompt="load %d %d" % (cid, i), stream=bool(stream))
        with self.lock:
            self.sent += 1
        try:
            r = harness.request(self.port_fn(), "POST", "/v1/chat/completions", body=body,
                                headers=headers, timeout=T(20))
        except Exception:  # noqa: BLE001 - privax killed or restarting: not a response
            with self.lock:
                self.errors += 1
            time.sleep(0.02)
            return
        usage = None
        if r.status == 200:
            if stream:
                try:
                    s = harness.Stream(r.body)
                    usage = s.usage if s.done else None
                except Exception:  # noqa: BLE001 - a stream cut by the kill
                    usage = None
            else:
                usage = r.json().get("usage")
        with self.lock:
            self.statuses[rid] = r.status
            if usage is not None:
                self.ok[rid] = usage["total_tokens"]

    def _run(self, cid):
        i = 0
        while not self.stop_ev.is_set():
            self._one(cid, i)
            i += 1

    def start(self):
        for c in range(self.clients):
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(T(60))


@unittest.skipUnless(clickhouse.available(), "clickhouse-server is not installed")
class ClickHouseTestCase(harness.TestCase):
    def setUp(self):
        super().setUp()
        self.ch = clickhouse.ClickHouse(self.h).start()
        self.sim = self.h.start_sim()

    def cfg(self, url=None, **over):
        c = self.h.sim_config(self.sim, store=ch_store(url or self.ch.url), **over)
        return c

    def migrate(self, cfg_path, json_out=True):
        p = self.h.privax(["migrate", "--config", cfg_path] + (["--json"] if json_out else []),
                          env=CH_ENV)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        self.stop_merges()
        return json.loads(p.stdout) if json_out else p.stdout.decode()

    def stop_merges(self):
        """ReplacingMergeTree merges would collapse a duplicate before count() sees it: keep
        them off so that count() = uniqExact(...) really proves nothing was inserted twice
        (not persisted: again after every ClickHouse start)."""
        self.ch.query("SYSTEM STOP MERGES %s.llm_requests" % DB)

    def start_gw(self, cfg, name="gw"):
        return self.h.start_gateway(cfg, name=name, env=CH_ENV)

    def q(self, sql):
        return self.ch.query_json(sql, database=DB)

    def count(self):
        r = self.q("SELECT count() AS n, uniqExact(request_id) AS u, "
                   "uniqExact(spool_id, spool_seq) AS s FROM llm_requests")[0]
        return r["n"], r["u"], r["s"]

    def wait_count(self, n, timeout=None):
        return wait_for(lambda: self.count()[0] >= n, timeout or T(30),
                        "%d rows in ClickHouse (have %r)" % (n, self.count()))

    def assert_aggregates_match_raw(self):
        raw = self.q("SELECT tenant_id, count() AS n, sum(total_tokens) AS t FROM llm_requests FINAL "
                     "GROUP BY tenant_id ORDER BY tenant_id")
        daily = self.q("SELECT tenant_id, countMerge(requests) AS n, sumMerge(total_sum) AS t "
                       "FROM llm_usage_daily GROUP BY tenant_id ORDER BY tenant_id")
        monthly = self.q("SELECT tenant_id, countMerge(requests) AS n, sumMerge(total_sum) AS t "
                         "FROM llm_usage_monthly GROUP BY tenant_id ORDER BY tenant_id")
        self.assertEqual(raw, daily)
        self.assertEqual(raw, monthly)


class MigrateAndRowsTest(ClickHouseTestCase):
    def schema(self):
        return self.q("SELECT name, engine, create_table_query FROM system.tables "
                      "WHERE database = '%s' ORDER BY name" % DB)

    def test_migrate_twice_same_schema_then_exact_rows(self):
        cfg = self.cfg()
        path = self.h.write_config(cfg)
        first = self.migrate(path)
        self.assertEqual((first["version_before"], first["version_after"]), (0, 2))
        s1 = self.schema()
        names = [t["name"] for t in s1]
        for t in ("llm_requests", "llm_usage_daily", "llm_usage_daily_mv", "llm_usage_monthly",
                  "llm_usage_monthly_mv", "schema_migrations", "llm_node_distribution_1h",
                  "llm_monthly_totals"):
            self.assertIn(t, names)
        second = self.migrate(path)
        self.assertEqual((second["version_before"], second["version_after"]), (2, 2))
        self.assertEqual(self.schema(), s1)
        self.assertEqual(self.q("SELECT version, count() AS n FROM schema_migrations "
                                "GROUP BY version ORDER BY version"),
                         [{"version": 1, "n": 1}, {"version": 2, "n": 1}])
        # Every PRODUCT.md column, partitioned by month, ordered for per-tenant time ranges.
        cols = {r["name"]: r["type"] for r in self.q(
            "SELECT name, type FROM system.columns WHERE database = '%s' AND table = 'llm_requests'" % DB)}
        for c in ("event_time", "request_id", "tenant_id", "user_id", "api_key_id", "plan_tier",
                  "model_name", "provider", "backend", "request_type", "stream", "prompt_tokens",
                  "completion_tokens", "total_tokens", "usage_estimated", "queue_ms", "ttft_ms",
                  "latency_ms", "status_code", "success", "error_code", "input_chars",
                  "output_chars", "gpu_id", "node_id", "event_ms"):
            self.assertIn(c, cols)
        self.assertEqual(cols["event_time"], "DateTime")
        ddl = [t for t in s1 if t["name"] == "llm_requests"][0]["create_table_query"]
        self.assertIn("PARTITION BY toYYYYMM(event_time)", ddl)
        self.assertIn("ORDER BY (tenant_id, event_time", ddl)

        gw = self.start_gw(cfg)
        sent = {}
        for i in range(40):
            tenant = ("acme", "beta")[i % 2]
            model = (harness.OLLAMA_MODEL, harness.OPENAI_MODEL)[i % 4 // 2]
            rid = "exact-%d" % i
            h = harness.auth_headers(tenant=tenant, **{"X-Request-ID": rid, "X-User-ID": "u%d" % i})
            if i % 3 == 0:
                r, s = gw.stream(headers=h, model=model, prompt="stream %d" % i)
                self.assertEqual(r.status, 200)
                sent[rid] = (tenant, s.usage)
            else:
                r = gw.chat(headers=h, model=model, prompt="json %d" % i)
                self.assertEqual(r.status, 200)
                sent[rid] = (tenant, r.json()["usage"])
        self.wait_count(40)
        time.sleep(0.3)
        n, u, s = self.count()
        self.assertEqual((n, u, s), (40, 40, 40))
        rows = {r["request_id"]: r for r in self.q(
            "SELECT request_id, tenant_id, prompt_tokens, completion_tokens, total_tokens, "
            "user_id, node_id, status_code, success, event_time, event_ms FROM llm_requests")}
        self.assertEqual(set(rows), set(sent))
        for rid, (tenant, usage) in sent.items():
            r = rows[rid]
            self.assertEqual(r["tenant_id"], tenant)
            self.assertEqual((r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]),
                             (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]))
            self.assertEqual((r["status_code"], r["success"], r["node_id"]), (200, 1, "it-node"))
        for tenant in ("acme", "beta"):
            want = sum(u["total_tokens"] for t, u in sent.values() if t == tenant)
            got = self.q("SELECT sum(total_tokens) AS t FROM llm_requests WHERE tenant_id = '%s'" % tenant)[0]["t"]
            self.assertEqual(got, want)
        self.assert_aggregates_match_raw()
        # privax usage reads the same totals from ClickHouse.
        rep = {r["tenant"]: r for r in json.loads(self.h.privax(
            ["usage", "--config", gw.config_path, "--json"], env=CH_ENV).stdout)}
        for tenant in ("acme", "beta"):
            self.assertEqual(rep[tenant]["requests"], 20)
            self.assertEqual(rep[tenant]["total_tokens"],
                             sum(u["total_tokens"] for t, u in sent.values() if t == tenant))
        by_node = json.loads(self.h.privax(["usage", "--config", gw.config_path, "--json", "--by", "node"],
                                           env=CH_ENV).stdout)
        self.assertEqual([(r["node"], r["requests"]) for r in by_node], [("it-node", 40)])
        by_model = json.loads(self.h.privax(["usage", "--config", gw.config_path, "--json", "--by", "model"],
                                            env=CH_ENV).stdout)
        self.assertEqual(sorted((r["model"], r["requests"]) for r in by_model),
                         [(harness.OPENAI_MODEL, 20), (harness.OLLAMA_MODEL, 20)])
        # The platform's usage API reads the same store.
        r = gw.get("/v1/usage/acme?period=day", headers=harness.auth_headers())
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(r.json()["requests"], 20)
        # /health shows the spool drained and the last ship.
        hu = gw.get("/health").json()["usage"]
        self.assertEqual(hu["backlog"], 0)
        self.assertGreater(hu["last_ship_unix_ms"], 0)
        self.assertTrue(hu["store_ok"])


class OutageTest(ClickHouseTestCase):
    def test_clickhouse_down_under_load_every_row_once(self):
        cfg = self.cfg()
        self.migrate(self.h.write_config(cfg))
        gw = self.start_gw(cfg)
        load = Load(lambda: gw.port).start()
        try:
            wait_for(lambda: len(load.ok) >= 20, T(20), "some traffic")
            self.ch.stop()
            down_at = len(load.ok)
            wait_for(lambda: len(load.ok) >= down_at + 40, T(30), "traffic while ClickHouse is down")
            h = wait_for(lambda: (lambda u: u if u["backlog"] > 0 and not u["store_ok"] else None)(
                gw.get("/health").json()["usage"]), T(20), "/health to show the backlog")
            self.assertGreater(h["ship_failures"], 0)
            self.assertFalse(h["spool_full"])
            self.ch.start()
            self.stop_merges()
            wait_for(lambda: len(load.ok) >= down_at + 80, T(30), "traffic after the restart")
        finally:
            load.stop()
        self.assertEqual(load.errors, 0)
        n = len(load.statuses)
        self.wait_count(n, T(60))
        time.sleep(0.5)
        self.assertEqual(self.count(), (n, n, n))
        got = {r["request_id"]: r["total_tokens"] for r in self.q(
            "SELECT request_id, total_tokens FROM llm_requests")}
        for rid, tok in load.ok.items():
            self.assertEqual(got.get(rid), tok, rid)
        self.assert_aggregates_match_raw()
        wait_for(lambda: gw.get("/health").json()["usage"]["backlog"] == 0, T(10), "backlog 0")


class KillTest(ClickHouseTestCase):
    def test_sigkill_under_load_then_restart(self):
        cfg = self.cfg()
        self.migrate(self.h.write_config(cfg))
        gw = self.start_gw(cfg)
        port = {"p": gw.port}
        load = Load(lambda: port["p"]).start()
        try:
            wait_for(lambda: len(load.ok) >= 60, T(20), "traffic before the kill")
            gw.child.send_signal(signal.SIGKILL)
            gw.child.wait(T(10))
            gw.child.expected_exit = True
            at_kill = dict(load.statuses)
            time.sleep(0.3)
            gw2 = self.start_gw(cfg, name="gw2")
            port["p"] = gw2.port
            wait_for(lambda: len(load.ok) >= len(at_kill) + 40, T(30), "traffic after the restart")
        finally:
            load.stop()
        seen = set(load.statuses)
        wait_for(lambda: seen <= {r["request_id"] for r in self.q("SELECT request_id FROM llm_requests")},
                 T(60), "a row for every response a client saw")
        time.sleep(0.5)
        n, u, s = self.count()
        # Exactly once: no request id twice. A request whose answer the kill cut off may have a
        # row (it was served upstream); at most one per client thread.
        self.assertEqual(n, u)
        self.assertEqual(n, s)
        self.assertGreaterEqual(n, len(seen))
        self.assertLessEqual(n - len(seen), load.clients)
        got = {r["request_id"]: r["total_tokens"] for r in self.q(
            "SELECT request_id, total_tokens FROM llm_requests")}
        for rid, tok in load.ok.items():
            self.assertEqual(got[rid], tok, rid)
        self.assert_aggregates_match_raw()


class BatchErrorsTest(ClickHouseTestCase):
    def send(self, gw, n, prefix):
        out = {}
        for i in range(n):
            rid = "%s-%d" % (prefix, i)
            r = gw.chat(headers=harness.auth_headers(**{"X-Request-ID": rid}), prompt=rid)
            self.assertEqual(r.status, 200)
            out[rid] = r.json()["usage"]["total_tokens"]
        return out

    def test_table_dropped_and_recreated_nothing_lost(self):
        cfg = self.cfg()
        path = self.h.write_config(cfg)
        self.migrate(path)
        gw = self.start_gw(cfg)
        before = self.send(gw, 10, "before")
        self.wait_count(10)
        self.ch.query("DROP TABLE %s.llm_requests" % DB)
        during = self.send(gw, 25, "during")
        wait_for(lambda: gw.get("/health").json()["usage"]["ship_failures"] > 0, T(20),
                 "inserts failing while the table is gone")
        self.assertGreater(gw.get("/health").json()["usage"]["backlog"], 0)
        out = self.migrate(path)   # puts the table back (its version was recorded already)
        self.assertEqual(out["version_before"], 2)
        self.wait_count(25, T(30))
        time.sleep(0.5)
        self.assertEqual(self.count(), (25, 25, 25))
        got = {r["request_id"]: r["total_tokens"] for r in self.q(
            "SELECT request_id, total_tokens FROM llm_requests")}
        self.assertEqual(got, during)
        self.assertTrue(set(before).isdisjoint(got))

    def test_exception_in_200_cut_reply_and_500_nothing_doubled(self):
        proxy = clickhouse.FaultProxy(self.ch)
        self.addCleanup(proxy.close)
        cfg = self.cfg(url=proxy.url)
        self.migrate(self.h.write_config(cfg))
        gw = self.start_gw(cfg)
        sent = {}
        for mode in ("exception200", "cut", "error500"):
            proxy.fault(mode, 1)
            sent.update(self.send(gw, 8, mode))
            wait_for(lambda: proxy.count == 0, T(20), "the %s fault to be used" % mode)
        self.wait_count(len(sent), T(30))
        wait_for(lambda: gw.get("/health").json()["usage"]["backlog"] == 0, T(20), "backlog 0")
        time.sleep(0.3)
        self.assertEqual(proxy.faulted, 3)
        n = len(sent)
        self.assertEqual(self.count(), (n, n, n))
        got = {r["request_id"]: r["total_tokens"] for r in self.q(
            "SELECT request_id, total_tokens FROM llm_requests")}
        self.assertEqual(got, sent)
        # Nothing doubled, so the aggregates fed at insert time are exact too.
        self.assert_aggregates_match_raw()
        # The retries asked ClickHouse what had landed and sent only the rest.
        self.assertIn("usage batch had landed already", gw.child.stderr())


# --------------------------------------------------------------------------------------------
# Billing on a fixed data set, on both stores


def month_back(n):
    t = time.gmtime()
    m = t.tm_year * 12 + (t.tm_mon - 1) - n
    return m // 12, m % 12 + 1


def fixed_rows():
    """(tenant, tier, total_tokens, latency_ms, day, ms offset) for a month two months back."""
    y, m = month_back(2)
    base = calendar.timegm((y, m, 1, 0, 0, 0)) * 1000
    day = 86400000
    rows = []
    # acme: pinned pro in config; 30M tokens -> 5M over -> GBP 25.00.
    for i in range(3):
        rows.append(("acme", "pro", 10000000, 100 + i, base + i * day + 1000))
    # beta: starter from its rows; 5,123,457 tokens -> 123,457 over -> 61.7285p -> 62p.
    rows.append(("beta", "starter", 5000000, 50, base + 2 * day))
    rows.append(("beta", "starter", 123457, 70, base + 3 * day))
    # gamma: moved from starter to enterprise: the latest row's tier counts.
    rows.append(("gamma", "starter", 400, 10, base + 1 * day))
    rows.append(("gamma", "enterprise", 600, 30, base + 5 * day))
    # omega: the capped tier blocks at 1000 tokens: 1500 used, 500 over, no overage charge.
    rows.append(("omega", "capped", 1500, 20, base + 4 * day))
    # outside the month: must not count.
    rows.append(("acme", "pro", 99999999, 1, base - 1))
    return "%04d-%02d" % (y, m), rows


EXPECTED_BILL = {
    "acme": ("pro", 30000000, 25000000, 5000000, 14900, 2500, 17400),
    "beta": ("starter", 5123457, 5000000, 123457, 3900, 62, 3962),
    "delta": ("starter", 0, 5000000, 0, 3900, 0, 3900),
    "gamma": ("enterprise", 1000, 100000000, 0, 49900, 0, 49900),
    "omega": ("capped", 1500, 1000, 500, 1000, 0, 1000),
}
EXPECTED_TIERS = {"starter": 7862, "pro": 17400, "enterprise": 49900, "capped": 1000}


def bill_tiers():
    big = {"rpm": 1000000, "tpm": 100000000000, "max_context": 1000000}
    return {"starter": dict(big), "pro": dict(big), "enterprise": dict(big),
            "capped": dict(big, monthly_tokens=1000, price_gbp=10, overage="block")}


def row_dict(i, tenant, tier, tokens, lat, ms):
    return {"event_time": ms // 1000, "event_ms": ms % 1000, "request_id": "bill-%d" % i,
            "tenant_id": tenant, "user_id": "", "api_key_id": "platform", "plan_tier": tier,
            "model_name": harness.OLLAMA_MODEL, "provider": "ollama", "backend": "gpu0",
            "request_type": "chat", "stream": 0, "prompt_tokens": tokens // 2,
            "completion_tokens": tokens - tokens // 2, "total_tokens": tokens, "usage_estimated": 0,
            "queue_ms": 0, "ttft_ms": 5, "latency_ms": lat, "status_code": 200, "success": 1,
            "error_code": "", "input_chars": 10, "output_chars": 10, "gpu_id": 0,
            "node_id": "it-node", "overage": 0, "spool_id": 4242, "spool_seq": i + 1}


class BillingTest(harness.TestCase):
    def check_bill(self, cfg_path, month, env=None):
        p = self.h.privax(["bill", "--config", cfg_path, "--month", month, "--json"], env=env)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        b = json.loads(p.stdout)
        got = {t["tenant"]: (t["tier"], t["tokens"], t["allowance"], t["overage_tokens"],
                             t["base_pence"], t["overage_pence"], t["total_pence"])
               for t in b["tenants"]}
        self.assertEqual(got, EXPECTED_BILL)
        self.assertEqual({t["tier"]: t["revenue_pence"] for t in b["tiers"]}, EXPECTED_TIERS)
        self.assertEqual(b["total_pence"], sum(EXPECTED_TIERS.values()))
        self.assertEqual(b["total_gbp"], "%.2f" % (sum(EXPECTED_TIERS.values()) / 100))
        p = self.h.privax(["usage", "--config", cfg_path, "--month", month, "--json"], env=env)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        return json.loads(p.stdout)

    def config(self, store):
        sim_url = "http://127.0.0.1:%d" % harness.free_port()
        cfg = self.h.gateway_config(
            [{"name": "gpu0", "url": sim_url, "protocol": "ollama"}],
            [{"name": harness.OLLAMA_MODEL, "backends": ["gpu0"]}],
            tiers=bill_tiers(), store=store)
        cfg["tenants"] = [{"id": "acme", "tier": "pro"}, {"id": "delta", "tier": "starter"}]
        return cfg

    @unittest.skipUnless(clickhouse.available(), "clickhouse-server is not installed")
    def test_bill_fixed_data_set_both_stores(self):
        month, rows = fixed_rows()
        data = [row_dict(i, *r) for i, r in enumerate(rows)]

        # SQLite: the schema comes from privax migrate, the rows straight into the file.
        sq_cfg = self.config({"sqlite": self.h.path("bill.db")})
        sq_path = self.h.write_config(sq_cfg, "sqlite.yaml")
        p = self.h.privax(["migrate", "--config", sq_path])
        self.assertEqual(p.returncode, 0, p.stderr)
        con = sqlite3.connect(self.h.path("bill.db"))
        for d in data:
            d2 = dict(d, event_time=d["event_time"] * 1000 + d["event_ms"])
            d2.pop("event_ms")
            cols = ",".join(d2)
            con.execute("INSERT INTO llm_requests (%s) VALUES (%s)" % (cols, ",".join("?" * len(d2))),
                        list(d2.values()))
        con.commit()
        con.close()
        sq_usage = self.check_bill(sq_path, month)

        # ClickHouse: the same rows through JSONEachRow.
        ch = clickhouse.ClickHouse(self.h).start()
        ch_cfg = self.config(ch_store(ch.url))
        ch_path = self.h.write_config(ch_cfg, "ch.yaml")
        p = self.h.privax(["migrate", "--config", ch_path], env=CH_ENV)
        self.assertEqual(p.returncode, 0, p.stderr)
        body = "".join(json.dumps(d) + "\n" for d in data).encode()
        ch.query("INSERT INTO %s.llm_requests FORMAT JSONEachRow" % DB, data=body)
        ch_usage = self.check_bill(ch_path, month, env=CH_ENV)

        # The same usage report from both stores, to the last field.
        self.assertEqual(ch_usage, sq_usage)
        self.assertEqual([r["tenant"] for r in sq_usage], ["acme", "beta", "gamma", "omega"])
        gamma = [r for r in sq_usage if r["tenant"] == "gamma"][0]
        self.assertEqual(gamma["tier"], "enterprise")
        for by in ("node", "model", "day"):
            a = self.h.privax(["usage", "--config", sq_path, "--month", month, "--json", "--by", by])
            b = self.h.privax(["usage", "--config", ch_path, "--month", month, "--json", "--by", by],
                              env=CH_ENV)
            self.assertEqual(json.loads(a.stdout), json.loads(b.stdout), by)


if __name__ == "__main__":
    unittest.main()
