"""Slow clients: a request body trickled a byte at a time must not hold a connection for ever
(http.body_timeout_ms bounds the whole body, not just the gap between bytes)."""

import socket
import time
import unittest

import harness
from harness import T


class SlowBodyTest(harness.TestCase):

    def test_trickled_body_gets_408_at_the_body_deadline(self):
        sim = self.h.start_sim()
        gw = self.h.start_gateway(self.h.sim_config(
            sim, http={"body_timeout_ms": 1500, "header_timeout_ms": 1000}))
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=T(10))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        s.settimeout(0.2)
        got = b""
        t0 = time.monotonic()
        # One byte every 0.3 s: never idle long enough for the gap timeout (1 s).
        while time.monotonic() - t0 < T(20) and not got:
            try:
                s.sendall(b"x")
            except OSError:
                break
            try:
                got = s.recv(4096)
            except socket.timeout:
                pass
            time.sleep(0.3)
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 408 "), got[:80])
        self.assertIn(b'"request_timeout"', got)
        # The server still serves.
        self.assertEqual(gw.get("/health").status, 200)


if __name__ == "__main__":
    unittest.main()
