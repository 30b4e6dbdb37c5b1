"""Upstream failures before the first byte (JSON 502/503/504) and after it (an error event and no
[DONE]), driven by the sim's fault modes; each failure leaves a usage row that says so."""

import json
import socket
import threading
import time
import unittest

from harness import (OLLAMA_MODEL, OPENAI_MODEL, TENANT, TOKEN, T, TestCase, auth_headers, chat_body,
                     free_port, wait_for)

MODELS = (OLLAMA_MODEL, OPENAI_MODEL)


class BeforeFirstByteTest(TestCase):

    def setUp(self):
        super().setUp()
        self.sim, self.gw = self.h.start_stack(timeouts={"first_byte_ms": 1000})

    def assert_still_ok(self, model):
        self.assertCompletion(self.gw.chat(model=model, prompt="after the fault"))

    def test_upstream_500_is_502(self):
        for model in MODELS:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    self.sim.fault("error:500", 1)
                    rid = "e500-%s-%d" % (model, stream)
                    r = self.gw.chat(model=model, stream=stream, headers=auth_headers(**{"X-Request-ID": rid}))
                    self.assertErrorJSON(r, 502)
                    self.assertEqual(r.header("X-Request-ID"), rid)
                    row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
                    self.assertEqual(row["status_code"], 502, row)
                    self.assertEqual(row["success"], 0, row)
                    self.assertTrue(row["error_code"], row)
                    # The client got an error, not an answer: nothing is billed.
                    self.assertEqual((row["prompt_tokens"], row["completion_tokens"],
                                      row["total_tokens"]), (0, 0, 0), row)
                    self.assert_still_ok(model)

    def test_upstream_503_busy_is_503_with_retry_after(self):
        for model in MODELS:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    self.sim.fault("error:503", 1)
                    r = self.gw.chat(model=model, stream=stream)
                    self.assertErrorJSON(r, 503)
                    ra = r.header("Retry-After")
                    self.assertIsNotNone(ra, "503 without Retry-After: %r" % r)
                    self.assertRegex(ra, r"^\d+$", r)
                    self.assert_still_ok(model)

    def test_upstream_hang_is_504_after_first_byte_timeout(self):
        for model in MODELS:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    self.sim.fault("hang", 1)
                    rid = "hang-%s-%d" % (model, stream)
                    r = self.gw.chat(model=model, stream=stream, timeout=T(30),
                                     headers=auth_headers(**{"X-Request-ID": rid}))
                    self.assertErrorJSON(r, 504)
                    row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
                    self.assertEqual(row["status_code"], 504, row)
                    self.assertEqual(row["success"], 0, row)
                    self.assertEqual(row["total_tokens"], 0, row)
                    self.assert_still_ok(model)

    def test_upstream_reset_is_502(self):
        """The sim reads the request, then resets the connection. The client gets 502 and the
        request is not silently sent again (the GPU may already be working on it). Repeated,
        because a re-send only shows when the reset connection was a reused keep-alive one."""
        for model in MODELS:
            for i in range(4):
                with self.subTest(model=model, attempt=i):
                    self.assert_still_ok(model)  # leaves a keep-alive connection to reuse
                    before = self.sim.stats()["requests"]
                    self.sim.fault("reset", 1)
                    r = self.gw.chat(model=model)
                    sent = self.sim.stats()["requests"] - before
                    self.assertErrorJSON(r, 502)
                    self.assertEqual(sent, 1, "the gateway sent the request %d times" % sent)
                    msg = r.json()["error"]["message"]
                    self.assertRegex(msg, "reset by the backend|connection lost after the request "
                                     "was sent|closed the connection without answering", msg)

    def test_no_usage_from_upstream_is_estimated(self):
        for model in MODELS:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    self.sim.fault("no-usage", 1)
                    rid = "nousage-%s-%d" % (model, stream)
                    h = auth_headers(**{"X-Request-ID": rid})
                    if stream:
                        r, s = self.gw.stream(model=model, headers=h)
                        self.assertCompleteStream(r, s)
                        usage = s.usage
                    else:
                        usage = self.assertCompletion(self.gw.chat(model=model, headers=h))["usage"]
                    self.assertGreater(usage["completion_tokens"], 0)
                    row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
                    self.assertEqual(row["usage_estimated"], 1, row)
                    self.assertEqual(row["total_tokens"], usage["total_tokens"], row)


class UnreachableBackendTest(TestCase):

    def test_connection_refused_is_502(self):
        dead = "http://127.0.0.1:%d" % free_port()
        cfg = self.h.gateway_config(
            [{"name": "dead-ollama", "url": dead, "protocol": "ollama", "gpu_id": 0, "max_concurrency": 2},
             {"name": "dead-openai", "url": dead, "protocol": "openai", "gpu_id": 1, "max_concurrency": 2}],
            [{"name": OLLAMA_MODEL, "backends": ["dead-ollama"]},
             {"name": OPENAI_MODEL, "backends": ["dead-openai"]}])
        gw = self.h.start_gateway(cfg)
        for model in MODELS:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    rid = "refused-%s-%d" % (model, stream)
                    r = gw.chat(model=model, stream=stream, headers=auth_headers(**{"X-Request-ID": rid}))
                    self.assertErrorJSON(r, 502)
                    row = gw.wait_rows(1, "request_id = ?", (rid,))[0]
                    self.assertEqual(row["status_code"], 502, row)
                    self.assertEqual(row["success"], 0, row)
        # Still serving (not /health: issue 5 makes it 503 while no backend is up).
        self.assertEqual(gw.get("/v1/models", headers=auth_headers()).status, 200)


class SimBusyTest(TestCase):
    """A real busy sim (--parallel 1 --max-queue 1): the third concurrent request is refused by
    the sim with 503, and the gateway passes that on as 503 with Retry-After."""

    def test_sim_queue_full_is_503(self):
        sim = self.h.start_sim(tps=20, args=["--parallel", "1", "--max-queue", "1"])
        gw = self.h.start_gateway(self.h.sim_config(sim))
        for model in MODELS:
            with self.subTest(model=model):
                body = json.dumps(chat_body(model=model, prompt="hold the slot", stream=True,
                                            max_tokens=200)).encode()
                req = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "X-Tenant-ID: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                       % (TOKEN, TENANT, len(body))).encode() + body
                holders = []
                try:
                    before = sim.stats().get("requests", 0)
                    for _ in range(2):  # one running, one queued (the sim counts per model)
                        s = socket.create_connection(("127.0.0.1", gw.port), timeout=T(30))
                        s.sendall(req)
                        holders.append(s)
                    wait_for(lambda: sim.stats().get("requests", 0) >= before + 2, T(15),
                             "the sim to hold one running and one queued request")
                    r = gw.chat(model=model, prompt="no room")
                    self.assertErrorJSON(r, 503)
                    self.assertRegex(r.header("Retry-After") or "", r"^\d+$", r)
                finally:
                    for s in holders:
                        s.close()
                wait_for(lambda: sim.stats().get("active", 1) == 0, T(15), "the sim to drain")
        # Still serving (not /health: issue 5 makes it 503 while no backend is up).
        self.assertEqual(gw.get("/v1/models", headers=auth_headers()).status, 200)


class AfterFirstByteTest(TestCase):

    def setUp(self):
        super().setUp()
        self.sim, self.gw = self.h.start_stack()

    def check_failed_stream(self, fault, model):
        full_r, full = self.gw.stream(model=model, prompt="a stream to cut", max_tokens=40)
        self.assertCompleteStream(full_r, full)
        self.sim.fault(fault, 1)
        rid = "%s-%s" % (fault.replace(":", ""), model)
        r, s = self.gw.stream(model=model, prompt="a stream to cut", max_tokens=40,
                              headers=auth_headers(**{"X-Request-ID": rid}))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(s.done_count, 0, "a failed stream must not carry [DONE]: %r" % s.data[-3:])
        self.assertTrue(s.errors, "a failed stream must end with an error event: %r" % s.data[-3:])
        last = s.chunks[-1]
        self.assertIn("error", last, "the error event must be the last event: %r" % s.data[-3:])
        e = last["error"]
        self.assertIsInstance(e, dict, last)
        for k in ("message", "type", "code"):
            self.assertIn(k, e, last)
        self.assertTrue(full.content.startswith(s.content),
                        "relayed text must be a prefix of the real answer: %r vs %r" % (s.content, full.content))
        row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
        self.assertEqual(row["success"], 0, row)
        self.assertTrue(row["error_code"], row)
        self.assertEqual(row["stream"], 1, row)
        # The next stream is whole again.
        r2, s2 = self.gw.stream(model=model, prompt="a stream to cut", max_tokens=40)
        self.assertCompleteStream(r2, s2)
        self.assertEqual(s2.content, full.content)
        return s, row

    def test_cut_after_3_tokens(self):
        for model in MODELS:
            with self.subTest(model=model):
                s, row = self.check_failed_stream("cut:3", model)
                self.assertTrue(s.content, "3 tokens were generated before the cut: %r" % s.data)

    def test_malformed_chunk(self):
        for model in MODELS:
            with self.subTest(model=model):
                self.check_failed_stream("malformed:3", model)

    def test_failed_stream_counts_as_error_in_usage(self):
        self.sim.fault("cut:2", 1)
        r, s = self.gw.stream(model=OPENAI_MODEL, headers=auth_headers(tenant="cutco"))
        self.assertTrue(s.errors, s.data)
        wait_for(lambda: self.gw.rows("tenant_id = ?", ("cutco",)), T(15), "the row")
        rows = self.h.usage_json(self.gw.config_path, "--tenant", "cutco")
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["requests"], 1, rows)
        self.assertEqual(rows[0]["errors"], 1, rows)


if __name__ == "__main__":
    unittest.main()
