"""Metering: one row per request; `privax usage --json` totals equal what the clients were told;
SIGTERM finishes in-flight work, flushes the rows and exits 0."""

import http.client
import signal
import threading
import time
import unittest

from harness import (OLLAMA_MODEL, OPENAI_MODEL, T, TestCase, auth_headers, chat_body, wait_for)

FIELDS = ("tenant", "tier", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors",
          "avg_latency_ms", "p95_latency_ms")


def this_month():
    return time.strftime("%Y-%m", time.gmtime())


class UsageTotalsTest(TestCase):

    def test_totals_equal_client_usage_after_sigterm(self):
        sim, gw = self.h.start_stack()
        plan = [("acme", OLLAMA_MODEL, False), ("acme", OPENAI_MODEL, False), ("acme", OLLAMA_MODEL, True),
                ("acme", OPENAI_MODEL, True), ("acme", OLLAMA_MODEL, False),
                ("globex", OPENAI_MODEL, True), ("globex", OLLAMA_MODEL, True), ("globex", OPENAI_MODEL, False)]
        want = {}
        for i, (tenant, model, stream) in enumerate(plan):
            prompt = "usage request %d for %s" % (i, tenant)
            if stream:
                r, s = gw.stream(model=model, prompt=prompt, headers=auth_headers(tenant=tenant))
                self.assertCompleteStream(r, s)
                u = s.usage
            else:
                u = self.assertCompletion(gw.chat(model=model, prompt=prompt, headers=auth_headers(tenant=tenant)))["usage"]
            t = want.setdefault(tenant, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            t["requests"] += 1
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                t[k] += u[k]

        rc, killed = gw.stop(signal.SIGTERM, T(20))
        self.assertFalse(killed, "serve did not exit on SIGTERM")
        self.assertEqual(rc, 0, "serve must exit 0 on SIGTERM")
        self.assertEqual(len(gw.rows()), len(plan), "one row per request, all flushed before exit")

        for args in ((), ("--month", this_month())):
            with self.subTest(args=args):
                got = self.h.usage_json(gw.config_path, *args)
                self.assertIsInstance(got, list, got)
                by_tenant = {}
                for row in got:
                    for f in FIELDS:
                        self.assertIn(f, row, row)
                    by_tenant[row["tenant"]] = row
                self.assertEqual(set(by_tenant), set(want), got)
                for tenant, w in want.items():
                    row = by_tenant[tenant]
                    for k, v in w.items():
                        self.assertEqual(row[k], v, "%s %s: %r" % (tenant, k, row))
                    self.assertEqual(row["errors"], 0, row)
                    self.assertIsInstance(row["tier"], str, row)
                    for k in ("avg_latency_ms", "p95_latency_ms"):
                        self.assertIsInstance(row[k], (int, float), row)
                        self.assertGreaterEqual(row[k], 0, row)

        only = self.h.usage_json(gw.config_path, "--tenant", "globex")
        self.assertEqual([r["tenant"] for r in only], ["globex"], only)
        self.assertEqual(only[0]["requests"], want["globex"]["requests"], only)
        self.assertEqual(self.h.usage_json(gw.config_path, "--month", "2001-01"), [])
        self.assertEqual(self.h.usage_json(gw.config_path, "--tenant", "nobody"), [])

        text = self.h.privax(["usage", "--config", gw.config_path])
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn(b"acme", text.stdout)
        self.assertIn(b"globex", text.stdout)

    def test_usage_while_serving(self):
        """The report reads the same store the live gateway writes."""
        sim, gw = self.h.start_stack()
        j = self.assertCompletion(gw.chat(headers=auth_headers(tenant="live")))
        wait_for(lambda: gw.rows("tenant_id = ?", ("live",)), T(15), "the row to be flushed")
        got = self.h.usage_json(gw.config_path, "--tenant", "live")
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["total_tokens"], j["usage"]["total_tokens"], got)
        self.assertEqual(got[0]["requests"], 1, got)

    def test_rejected_requests_get_rows(self):
        """Every authenticated request gets a row, rejected ones included."""
        sim, gw = self.h.start_stack()
        cases = (("rej-json", b"{nope", 400), ("rej-model", chat_body(model="no-such-model"), 404),
                 ("rej-value", chat_body(max_tokens=-5), 400))
        for rid, body, status in cases:
            r = gw.post("/v1/chat/completions", body, auth_headers(tenant="rejco", **{"X-Request-ID": rid}))
            self.assertEqual(r.status, status, r)
        rows = gw.wait_rows(len(cases), "tenant_id = ?", ("rejco",))
        self.assertEqual(len(rows), len(cases), rows)
        by_id = {r["request_id"]: r for r in rows}
        for rid, _, status in cases:
            self.assertIn(rid, by_id, rows)
            self.assertEqual(by_id[rid]["status_code"], status, by_id[rid])
            self.assertEqual(by_id[rid]["success"], 0, by_id[rid])
            self.assertTrue(by_id[rid]["error_code"], by_id[rid])
            self.assertEqual(by_id[rid]["api_key_id"], "platform", by_id[rid])
        u = self.h.usage_json(gw.config_path, "--tenant", "rejco")
        self.assertEqual(u[0]["requests"], len(cases), u)
        self.assertEqual(u[0]["errors"], len(cases), u)


class GracefulShutdownTest(TestCase):

    def test_sigterm_lets_inflight_stream_finish(self):
        sim = self.h.start_sim(tps=40)
        gw = self.h.start_gateway(self.h.sim_config(sim, timeouts={"shutdown_ms": 15000}))
        result = {}
        started = threading.Event()

        def client():
            import http.client, json as _json
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=T(60))
            try:
                conn.request("POST", "/v1/chat/completions",
                             _json.dumps(chat_body(prompt="finish me", stream=True, max_tokens=40)),
                             dict(auth_headers(tenant="inflight", **{"X-Request-ID": "inflight-1"}),
                                  **{"Content-Type": "application/json"}))
                resp = conn.getresponse()
                result["status"] = resp.status
                body = resp.read(1)
                started.set()
                body += resp.read()
                result["body"] = body
            except Exception as e:  # noqa: BLE001
                result["error"] = repr(e)
                started.set()
            finally:
                conn.close()

        t = threading.Thread(target=client)
        t.start()
        self.assertTrue(started.wait(T(20)), "the stream did not start")
        gw.child.expected_exit = True
        gw.child.send_signal(signal.SIGTERM)
        # While it drains, new work is refused: connection refused or a 503 JSON error. (Wait until
        # the gateway has taken the signal: it logs event=shutdown; the signal is asynchronous.)
        wait_for(lambda: "event=shutdown" in gw.child.stderr() or not gw.child.alive(), T(10),
                 "the gateway to log event=shutdown")
        late = None
        try:
            late = gw.chat(prompt="too late", timeout=T(10))
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            pass
        if late is not None:
            self.assertErrorJSON(late, 503)
        rc = gw.child.wait(T(30))
        killed = rc is None
        if killed:
            rc, _ = gw.stop(signal.SIGKILL, T(5))
        t.join(T(30))
        self.assertNotIn("error", result, result)
        self.assertEqual(result.get("status"), 200, result)
        from harness import Stream
        s = Stream(result["body"])
        self.assertTrue(s.done, "in-flight stream cut by SIGTERM: %r" % s.data[-3:])
        self.assertFalse(killed, "serve did not exit on SIGTERM")
        self.assertEqual(rc, 0)
        rows = gw.rows("request_id = ?", ("inflight-1",))
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["status_code"], 200, rows)

    def test_sigterm_idle_exits_zero(self):
        sim, gw = self.h.start_stack()
        self.assertEqual(gw.get("/health").status, 200)
        rc, killed = gw.stop(signal.SIGTERM, T(20))
        self.assertFalse(killed)
        self.assertEqual(rc, 0)


if __name__ == "__main__":
    unittest.main()
