"""A client that hangs up: the gateway cancels the upstream request within 1 s (the sim sees its
connection closed) and records exactly one row, status 499, error_code client_disconnected."""

import json
import socket
import time
import unittest

from harness import (OLLAMA_MODEL, OPENAI_MODEL, TENANT, TOKEN, T, TestCase, chat_body, wait_for)

MODELS = (OLLAMA_MODEL, OPENAI_MODEL)
CANCEL_WITHIN_MS = 1000   # the contract (issue 2): the GPU must stop working for nobody


def stream_request(model, rid, tenant, stream=True):
    body = json.dumps(chat_body(model=model, prompt="a long answer please", stream=stream,
                                max_tokens=400)).encode()
    return ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "X-Tenant-ID: %s\r\nX-Request-ID: %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (TOKEN, tenant, rid, len(body))).encode() + body


class DisconnectTest(TestCase):

    def setUp(self):
        super().setUp()
        # Slow tokens so that the answer is still being generated when the client leaves.
        self.sim = self.h.start_sim(tps=20)
        self.gw = self.h.start_gateway(self.h.sim_config(self.sim))

    def hang_up(self, sock):
        before = self.sim.stats()
        t_close_ms = time.time() * 1000.0
        sock.close()
        st = wait_for(lambda: (lambda s: s if s.get("client_disconnects", 0) > before.get("client_disconnects", 0)
                               else None)(self.sim.stats()),
                      T(10), "the sim to see its upstream connection closed")
        lag = st["last_disconnect_unix_ms"] - t_close_ms
        self.assertLessEqual(lag, CANCEL_WITHIN_MS,
                             "upstream cancelled %.0f ms after the client left (contract: 1 s)" % lag)
        wait_for(lambda: self.sim.stats().get("active", 1) == 0, T(10), "the sim to stop generating")

    def check_row(self, rid, tenant, min_tokens=0):
        rows = self.gw.wait_rows(1, "request_id = ?", (rid,))
        time.sleep(0.3)  # let a (wrong) second row for the same request land, if any
        rows = self.gw.rows("request_id = ?", (rid,))
        self.assertEqual(len(rows), 1, "exactly one row per request: %r" % rows)
        row = rows[0]
        self.assertEqual(row["status_code"], 499, row)
        self.assertEqual(row["error_code"], "client_disconnected", row)
        self.assertEqual(row["success"], 0, row)
        self.assertEqual(row["tenant_id"], tenant, row)
        if min_tokens:
            self.assertGreaterEqual(row["completion_tokens"], min_tokens, row)
            self.assertEqual(row["usage_estimated"], 1, row)
        u = self.h.usage_json(self.gw.config_path, "--tenant", tenant)
        self.assertEqual(len(u), 1, u)
        self.assertEqual(u[0]["requests"], 1, u)
        self.assertEqual(u[0]["errors"], 1, u)
        return row

    def test_disconnect_mid_stream(self):
        for model in MODELS:
            with self.subTest(model=model):
                rid = "gone-mid-%s" % model
                tenant = "leaver-%d" % MODELS.index(model)
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30))
                s.sendall(stream_request(model, rid, tenant))
                got = b""
                while got.count(b"data:") < 4:
                    more = s.recv(4096)
                    self.assertTrue(more, "stream ended early: %r" % got)
                    got += more
                self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])
                self.hang_up(s)
                self.check_row(rid, tenant, min_tokens=1)
                self.assertCompletion(self.gw.chat(model=model))

    def test_disconnect_non_stream_while_generating(self):
        """A JSON (non-stream) request: gone while the answer is being generated upstream."""
        for model in MODELS:
            with self.subTest(model=model):
                rid = "gone-early-%s" % model
                tenant = "early-%d" % MODELS.index(model)
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30))
                s.sendall(stream_request(model, rid, tenant, stream=False))
                wait_for(lambda: self.sim.stats().get("active", 0) >= 1, T(10), "the sim to start generating")
                self.hang_up(s)
                self.check_row(rid, tenant)


if __name__ == "__main__":
    unittest.main()
