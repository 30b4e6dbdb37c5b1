"""Backend pool, health, failover and the wait queue (issue 5, first half), end to end: several
real `privax sim` processes as the backends of one model behind one `privax serve`.

- failover: a dead backend (connect refused), a 5xx or no first byte moves the request to
  another backend before anything reached the client (at most routing.max_tries, never the same
  backend twice); a stream cut after it started is never retried;
- health: nginx's max_fails / fail_timeout (passive), active probes (health.interval_ms),
  backups only while no primary is usable, a recovered backend rejoins; /health shows it;
- queue: never more than max_concurrency in flight per backend, the rest wait (queue_ms in the
  rows), bounded by queue.max_length and queue.timeout_ms (503 + Retry-After), higher tiers
  first.

Which backend a request goes to is deterministic when nothing is in flight: the least loaded,
ties to the first listed; tests use that to know where a fault lands."""

import json
import signal
import socket
import threading
import time
import unittest

import harness
from harness import (OLLAMA_MODEL, OPENAI_MODEL, T, TestCase, auth_headers, chat_body, wait_for)

MODEL = OPENAI_MODEL


def kill(server):
    """SIGKILL a sim (a node that died): its port refuses connections from now on."""
    server.child.expected_exit = True
    server.child.stop(signal.SIGKILL)


class PoolTestCase(TestCase):

    def sims(self, n, tps=0, names=None, args=()):
        return [self.h.start_sim(name=(names[i] if names else "sim%d" % (i + 1)), tps=tps, args=args)
                for i in range(n)]

    def pool(self, sims, names=None, backup=(), protocol="openai", max_concurrency=8, max_fails=1,
             fail_timeout_ms=60000, health_interval_ms=0, max_tries=2, queue=None, **over):
        """A gateway whose model MODEL is served by one backend per sim, in that order."""
        names = names or ["b%d" % (i + 1) for i in range(len(sims))]
        backends = []
        for i, (name, sim) in enumerate(zip(names, sims)):
            proto = protocol[i] if isinstance(protocol, (list, tuple)) else protocol
            backends.append({"name": name, "url": sim.url, "protocol": proto, "gpu_id": i,
                             "max_concurrency": max_concurrency, "max_fails": max_fails,
                             "fail_timeout_ms": fail_timeout_ms, "backup": name in backup})
        cfg = self.h.gateway_config(
            backends, [{"name": MODEL, "backends": names}],
            health={"interval_ms": health_interval_ms, "timeout_ms": 1000},
            routing={"max_tries": max_tries}, queue=queue or {"max_length": 1024, "timeout_ms": 60000},
            **over)
        self.gw = self.h.start_gateway(cfg)
        return self.gw

    def health(self):
        # 200 while some model can be served (status ok or degraded); 503 when none can
        # (status down), so nginx and the check script stop sending traffic to this node.
        r = self.gw.get("/health")
        j = r.json()
        self.assertEqual(r.status, 503 if j["status"] == "down" else 200, r)
        self.assertIn(j["status"], ("ok", "degraded", "down"), r)
        return j

    def backend(self, name, health=None):
        for b in (health or self.health())["backends"]:
            if b["name"] == name:
                return b
        raise AssertionError("backend %s not in /health: %r" % (name, health))

    def wait_state(self, name, state, timeout=None):
        return wait_for(lambda: self.backend(name)["state"] == state, timeout or T(15),
                        "/health to say backend %s is %s" % (name, state))

    def requests(self, sim):
        return sim.stats()["requests"]

    def chat_ok(self, stream=False, **kw):
        kw.setdefault("max_tokens", 5)
        if stream:
            r, s = self.gw.stream(model=MODEL, **kw)
            self.assertCompleteStream(r, s)
            return r
        r = self.gw.chat(model=MODEL, **kw)
        self.assertCompletion(r)
        return r

    def concurrently(self, n, fn):
        """Run fn(i) for i in 0..n-1 in threads at once; returns the results in order."""
        out = [None] * n
        barrier = threading.Barrier(n)

        def one(i):
            try:
                barrier.wait()
                out[i] = fn(i)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                out[i] = e
        ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(T(120))
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out


# --------------------------------------------------------------------------------------------
# Failover and health


class FailoverTest(PoolTestCase):

    def test_killed_backend_requests_move_to_the_other_without_client_errors(self):
        s1, s2 = self.sims(2)
        gw = self.pool([s1, s2])
        for stream in (False, True):
            self.chat_ok(stream=stream)
        self.assertEqual(self.requests(s1), 2, "an idle pool sends to its first backend")
        kill(s1)
        rids = []
        for i in range(6):
            rid = "after-kill-%d" % i
            rids.append(rid)
            self.chat_ok(stream=i % 2 == 1, headers=auth_headers(**{"X-Request-ID": rid}))
        # And a few at once.
        results = self.concurrently(6, lambda i: gw.chat(model=MODEL, max_tokens=5, stream=i % 2 == 1))
        for r in results:
            self.assertEqual(r.status, 200, r)
        self.assertEqual(self.requests(s2), 12)
        rows = gw.wait_rows(6, "request_id LIKE 'after-kill-%'")
        for x in rows:
            self.assertEqual((x["status_code"], x["backend"], x["success"]), (200, "b2", 1), x)
        b1 = self.backend("b1")
        self.assertEqual(b1["state"], "down", b1)
        self.assertGreaterEqual(b1["failures"], 1, b1)
        self.assertEqual(self.backend("b2")["state"], "up")
        self.assertIn("event=failover", gw.child.stderr())

    def test_5xx_and_no_first_byte_fail_over_to_the_other_backend(self):
        s1, s2 = self.sims(2)
        # max_fails out of reach: each case starts with both backends up.
        gw = self.pool([s1, s2], max_fails=100, timeouts={"first_byte_ms": 1000})
        for fault in ("error:500", "error:503", "error:502", "hang"):
            for stream in (False, True):
                with self.subTest(fault=fault, stream=stream):
                    wait_for(lambda: s1.stats()["active"] == 0, T(10), "sim1 idle")
                    before = (self.requests(s1), self.requests(s2))
                    s1.fault(fault, 1)
                    rid = "fo-%s-%d" % (fault.replace(":", ""), stream)
                    r = self.chat_ok(stream=stream, headers=auth_headers(**{"X-Request-ID": rid}))
                    self.assertEqual((self.requests(s1) - before[0], self.requests(s2) - before[1]),
                                     (1, 1), "one try on each backend")
                    row = gw.wait_rows(1, "request_id = ?", (rid,))[0]
                    self.assertEqual((row["status_code"], row["backend"]), (200, "b2"), row)
                    self.assertEqual(r.header("X-Request-ID"), rid)

    def test_failover_never_tries_a_backend_twice_nor_more_than_max_tries(self):
        sims = self.sims(3)
        gw = self.pool(sims, max_fails=100, max_tries=5)
        for s in sims:
            s.fault("error:500", 10)
        before = [self.requests(s) for s in sims]
        r = gw.chat(model=MODEL, max_tokens=5)
        self.assertErrorJSON(r, 502)
        self.assertEqual([self.requests(s) - b for s, b in zip(sims, before)], [1, 1, 1],
                         "every backend once, none twice (max_tries 5, 3 backends)")

    def test_max_tries_1_does_not_fail_over(self):
        s1, s2 = self.sims(2)
        gw = self.pool([s1, s2], max_fails=100, max_tries=1)
        s1.fault("error:500", 1)
        r = gw.chat(model=MODEL, max_tokens=5)
        self.assertErrorJSON(r, 502)
        self.assertEqual((self.requests(s1), self.requests(s2)), (1, 0))
        self.chat_ok()

    def test_stream_cut_midway_is_not_retried(self):
        s1, s2 = self.sims(2)
        gw = self.pool([s1, s2], max_fails=100)
        # Stream: the client got chunks already; the rest must not come from another GPU.
        s1.fault("cut:3", 1)
        r, s = gw.stream(model=MODEL, max_tokens=20)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(s.errors, "a cut stream must end with an error event: %r" % s.data)
        self.assertFalse(s.done, "a cut stream must not end with [DONE]: %r" % s.data)
        self.assertEqual(s.done_count, 0)
        self.assertTrue(s.content, "the cut came after some chunks")
        self.assertEqual((self.requests(s1), self.requests(s2)), (1, 0), "the cut stream was retried")
        # JSON: the backend dropped the connection after the request went out (the GPU may be
        # working on it): an error, not a second generation elsewhere.
        s1.fault("cut:3", 1)
        r = gw.chat(model=MODEL, max_tokens=20)
        self.assertErrorJSON(r, 502)
        self.assertEqual((self.requests(s1), self.requests(s2)), (2, 0), "the cut request was retried")
        rows = gw.wait_rows(2, "status_code != 200")
        for x in rows:
            self.assertEqual(x["backend"], "b1", x)
        self.chat_ok(stream=True)

    def test_backup_serves_only_when_both_primaries_are_down(self):
        p1, p2, bk = self.sims(3, names=["p1", "p2", "bk"])
        gw = self.pool([p1, p2, bk], names=["p1", "p2", "bk"], backup=("bk",))
        # Busy primaries do not make the backup serve: 8 at once, 8 slots each on the primaries.
        self.concurrently(8, lambda i: self.chat_ok(stream=i % 2 == 1))
        self.assertEqual(self.requests(bk), 0)
        kill(p1)
        for i in range(4):
            self.chat_ok(stream=i % 2 == 1)
        self.assertEqual(self.requests(bk), 0, "the backup served while a primary was up")
        self.assertEqual(self.backend("p1")["state"], "down")
        kill(p2)
        for i in range(4):
            self.chat_ok(stream=i % 2 == 1)
        self.assertEqual(self.requests(bk), 4)
        h = self.health()
        self.assertEqual([self.backend(n, h)["state"] for n in ("p1", "p2", "bk")], ["down", "down", "up"])
        self.assertTrue(self.backend("bk", h)["backup"])
        self.assertFalse(self.backend("p1", h)["backup"])
        rows = gw.wait_rows(16)
        self.assertEqual(sorted({x["backend"] for x in rows}), ["bk", "p1", "p2"])
        self.assertEqual(sum(1 for x in rows if x["backend"] == "bk"), 4)
        self.assertTrue(all(x["status_code"] == 200 for x in rows), rows)

    def test_recovered_backend_rejoins_on_the_next_probe(self):
        s1, s2 = self.sims(2)
        port1 = s1.port
        # fail_timeout far away: only a probe can bring b1 back.
        self.pool([s1, s2], health_interval_ms=200, fail_timeout_ms=600000)
        kill(s1)
        self.wait_state("b1", "down")
        self.assertIn("probe", self.backend("b1")["last_error"])
        self.chat_ok()
        s1b = self.h.start_sim(name="sim1-again", args=("--listen", "127.0.0.1:%d" % port1))
        self.wait_state("b1", "up")
        self.assertEqual(self.backend("b1")["last_error"], "")
        self.chat_ok()
        self.assertEqual(self.requests(s1b), 1, "the idle pool's first backend is b1 again")

    def test_recovered_backend_rejoins_after_fail_timeout(self):
        s1, s2 = self.sims(2)
        port1 = s1.port
        # No probes: passive marking only. Down for fail_timeout, then one trial request.
        self.pool([s1, s2], health_interval_ms=0, fail_timeout_ms=1000)
        kill(s1)
        self.chat_ok()                      # connect refused on b1 -> b2, b1 marked down
        self.assertEqual(self.backend("b1")["state"], "down")
        self.assertEqual(self.requests(s2), 1)
        s1b = self.h.start_sim(name="sim1-again", args=("--listen", "127.0.0.1:%d" % port1))
        self.wait_state("b1", "trial", T(10))
        self.chat_ok()                      # the trial, on b1
        self.assertEqual(self.requests(s1b), 1)
        self.assertEqual(self.backend("b1")["state"], "up")
        self.chat_ok()
        self.assertEqual(self.requests(s1b), 2)
        self.assertEqual(self.requests(s2), 1)

    def test_health_reports_a_down_backend(self):
        s1, s2 = self.sims(2)
        self.pool([s1, s2], protocol=["ollama", "openai"], health_interval_ms=200)
        h = self.health()
        self.assertEqual(h["limits"], "local")
        self.assertEqual(h["queue"]["length"], 0)
        for name in ("b1", "b2"):
            b = self.backend(name, h)
            for k in ("state", "inflight", "max_concurrency", "backup", "requests", "failures",
                      "last_error", "url", "protocol", "gpu_id"):
                self.assertIn(k, b)
            self.assertEqual((b["state"], b["inflight"], b["max_concurrency"]), ("up", 0, 8), b)
        self.assertEqual([self.backend(n, h)["protocol"] for n in ("b1", "b2")], ["ollama", "openai"])
        # Both probes (/api/tags, /v1/models) have run.
        wait_for(lambda: all(self.backend(n)["last_check_unix_ms"] > 0 for n in ("b1", "b2")), T(10),
                 "both backends probed")
        kill(s2)
        self.wait_state("b2", "down")            # found by the probe alone, no traffic
        b2 = self.backend("b2")
        self.assertTrue(b2["last_error"], b2)
        self.assertEqual(self.backend("b1")["state"], "up")
        self.assertEqual(self.health()["status"], "degraded")
        kill(s1)
        self.wait_state("b1", "down")
        self.assertEqual(self.health()["status"], "down")
        r = self.gw.chat(model=MODEL, max_tokens=5)
        e = self.assertErrorJSON(r, 502)
        self.assertIn(MODEL, e["message"], r)


# --------------------------------------------------------------------------------------------
# The wait queue


class QueueTest(PoolTestCase):

    def sample(self, sims, stop, out):
        """Until stop is set: the largest sim 'active' and /health inflight per backend, and
        the largest queue length seen."""
        while not stop.is_set():
            try:
                for i, s in enumerate(sims):
                    out["sim%d" % i] = max(out.get("sim%d" % i, 0), s.stats()["active"])
                h = self.health()
                for b in h["backends"]:
                    out[b["name"]] = max(out.get(b["name"], 0), b["inflight"])
                out["queue"] = max(out.get("queue", 0), h["queue"]["length"])
            except Exception:  # noqa: BLE001 - a sample may race with teardown
                pass
            time.sleep(0.01)

    def test_max_concurrency_caps_in_flight_and_the_rest_wait(self):
        # 20 tokens at 40 tokens/s: each request holds its slot for about half a second.
        s1, s2 = self.sims(2, tps=40)
        gw = self.pool([s1, s2], max_concurrency=2, max_fails=100)
        stop = threading.Event()
        seen = {}
        sampler = threading.Thread(target=self.sample, args=([s1, s2], stop, seen), daemon=True)
        sampler.start()
        try:
            results = self.concurrently(10, lambda i: gw.chat(
                model=MODEL, max_tokens=20, stream=i % 2 == 1,
                headers=auth_headers(**{"X-Request-ID": "q-%d" % i})))
        finally:
            stop.set()
            sampler.join(T(10))
        for r in results:
            self.assertEqual(r.status, 200, r)
        self.assertLessEqual(seen["b1"], 2, seen)
        self.assertLessEqual(seen["b2"], 2, seen)
        self.assertLessEqual(seen["sim0"], 2, "sim1 had more than max_concurrency at once: %r" % seen)
        self.assertLessEqual(seen["sim1"], 2, "sim2 had more than max_concurrency at once: %r" % seen)
        self.assertGreater(seen["queue"], 0, seen)
        self.assertEqual(self.requests(s1) + self.requests(s2), 10)
        self.assertGreater(self.requests(s1), 0)
        self.assertGreater(self.requests(s2), 0)
        rows = gw.wait_rows(10, "request_id LIKE 'q-%'")
        waited = [x for x in rows if x["queue_ms"] > 0]
        self.assertGreaterEqual(len(waited), 6, "4 slots for 10 requests: at least 6 waited: %r" % (
            [(x["request_id"], x["queue_ms"]) for x in rows],))
        self.assertTrue(all(x["status_code"] == 200 for x in rows), rows)
        self.assertEqual(self.health()["queue"]["length"], 0)

    def hold_slot(self, sim, gw, model=MODEL, tenant="blocker", tier=None):
        """Take a backend slot until release_slot(): a request the sim never answers (fault
        hang), sent on a raw socket. Closing that socket is a client hang-up: the gateway
        cancels the upstream request and frees the slot, so tests wait for events, not for a
        generation of some length."""
        sim.fault("hang", 1)
        before = sim.stats()["active"]
        body = json.dumps(chat_body(model=model, max_tokens=5)).encode("utf-8")
        hdr = auth_headers(tenant=tenant, **({"X-Plan-Tier": tier} if tier else {}))
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
            "%s: %s\r\n" % kv for kv in hdr.items()) + \
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=T(30))
        self.addCleanup(sock.close)
        sock.sendall(head.encode("latin-1") + body)
        wait_for(lambda: sim.stats()["active"] == before + 1, T(10), "the slot holder to reach the sim")
        return sock

    def release_slot(self, sim, sock):
        active = sim.stats()["active"]
        sock.close()
        wait_for(lambda: sim.stats()["active"] < active, T(10), "the slot holder to be cancelled")

    def in_thread(self, fn):
        res = {}
        t = threading.Thread(target=lambda: res.setdefault("r", fn()), daemon=True)
        t.start()
        return t, res

    def test_queue_timeout_is_503_with_retry_after(self):
        (s1,) = self.sims(1)
        gw = self.pool([s1], max_concurrency=1, queue={"max_length": 10, "timeout_ms": 300})
        holder = self.hold_slot(s1, gw)
        for stream in (False, True):
            with self.subTest(stream=stream):
                rid = "qt-%d" % stream
                r = gw.chat(model=MODEL, max_tokens=5, stream=stream,
                            headers=auth_headers(**{"X-Request-ID": rid}))
                self.assertErrorJSON(r, 503, code="queue_timeout")
                ra = r.header("Retry-After")
                self.assertIsNotNone(ra, "503 queue_timeout without Retry-After: %r" % r)
                self.assertRegex(ra, r"^\d+$")
                row = gw.wait_rows(1, "request_id = ?", (rid,))[0]
                self.assertEqual((row["status_code"], row["error_code"], row["backend"]),
                                 (503, "queue_timeout", ""), row)
                self.assertGreaterEqual(row["queue_ms"], 300, row)
        self.assertEqual(s1.stats()["requests"], 1, "a timed-out request reached the backend")
        self.assertEqual(self.health()["queue"]["length"], 0)
        self.release_slot(s1, holder)
        self.chat_ok()

    def test_queue_max_length_rejects_at_once(self):
        (s1,) = self.sims(1)
        gw = self.pool([s1], max_concurrency=1, queue={"max_length": 1, "timeout_ms": 600000})
        holder = self.hold_slot(s1, gw)
        t2, res2 = self.in_thread(lambda: gw.chat(model=MODEL, max_tokens=5, timeout=T(60),
                                                  headers=auth_headers(tenant="waiter")))
        wait_for(lambda: self.health()["queue"]["length"] == 1, T(10), "one request waiting")
        for stream in (False, True):
            rid = "full-%d" % stream
            r = gw.chat(model=MODEL, max_tokens=5, stream=stream,
                        headers=auth_headers(**{"X-Request-ID": rid}))
            e = self.assertErrorJSON(r, 503)
            self.assertIsNotNone(r.header("Retry-After"), r)
            row = gw.wait_rows(1, "request_id = ?", (rid,))[0]
            self.assertEqual((row["status_code"], row["error_code"]), (503, e["code"]), row)
        # Answered while the slot is still taken and the other still waits: not after a wait.
        self.assertEqual(self.health()["queue"]["length"], 1)
        self.assertFalse(res2)
        self.release_slot(s1, holder)
        t2.join(T(60))
        self.assertCompletion(res2["r"])
        waiter = gw.wait_rows(1, "tenant_id = 'waiter'")[0]
        self.assertGreater(waiter["queue_ms"], 0, waiter)
        self.assertEqual(s1.stats()["requests"], 2)

    def test_queue_max_length_0_means_no_waiting(self):
        (s1,) = self.sims(1)
        gw = self.pool([s1], max_concurrency=1, queue={"max_length": 0, "timeout_ms": 600000})
        holder = self.hold_slot(s1, gw)
        for stream in (False, True):
            r = gw.chat(model=MODEL, max_tokens=5, stream=stream)
            self.assertErrorJSON(r, 503)
            self.assertIsNotNone(r.header("Retry-After"), r)
        self.assertEqual(s1.stats()["requests"], 1)
        self.release_slot(s1, holder)
        self.chat_ok()

    def test_higher_tier_is_served_first_from_the_queue(self):
        # Queued requests take ~0.1 s each (2 tokens at 20/s), so dispatch times are distinct.
        (s1,) = self.sims(1, tps=20)
        gw = self.pool([s1], max_concurrency=1)
        holder = self.hold_slot(s1, gw, tier="starter")
        waiting = []
        order = [("s1", "starter"), ("s2", "starter"), ("p1", "pro"), ("s3", "starter"),
                 ("e1", "enterprise")]
        for n, (name, tier) in enumerate(order):
            waiting.append(self.in_thread(lambda name=name, tier=tier: gw.chat(
                model=MODEL, max_tokens=2, timeout=T(60),
                headers=auth_headers(tenant="t-" + name, **{"X-Plan-Tier": tier,
                                                            "X-Request-ID": "prio-" + name}))))
            wait_for(lambda: self.health()["queue"]["length"] == n + 1, T(10),
                     "%s to be queued" % name)
        self.release_slot(s1, holder)
        for t, res in waiting:
            t.join(T(60))
            self.assertEqual(res["r"].status, 200, res)
        rows = gw.wait_rows(5, "request_id LIKE 'prio-%'")
        # Dispatch time = arrival + queue wait.
        dispatched = sorted(rows, key=lambda x: x["event_time"] + x["queue_ms"])
        got = [x["request_id"][5:] for x in dispatched]
        self.assertEqual(got, ["e1", "p1", "s1", "s2", "s3"],
                         "dispatch order (higher tier first, FIFO within a tier): %r" % (
                             [(x["request_id"], x["plan_tier"], x["event_time"], x["queue_ms"]) for x in rows],))

    def test_a_busy_model_does_not_hold_up_another_models_request(self):
        """Requests waiting for model A's only slot must not make a request for model B, whose
        backend is idle, wait behind them."""
        (s1,) = self.sims(1)
        backends = [
            {"name": "a", "url": s1.url, "protocol": "openai", "max_concurrency": 1, "max_fails": 100},
            {"name": "b", "url": s1.url, "protocol": "ollama", "max_concurrency": 1, "max_fails": 100},
        ]
        cfg = self.h.gateway_config(
            backends, [{"name": OPENAI_MODEL, "backends": ["a"]}, {"name": OLLAMA_MODEL, "backends": ["b"]}],
            health={"interval_ms": 0}, queue={"max_length": 100, "timeout_ms": 600000})
        gw = self.gw = self.h.start_gateway(cfg)
        holder = self.hold_slot(s1, gw, model=OPENAI_MODEL)          # model A's only slot
        t2, res2 = self.in_thread(lambda: gw.chat(model=OPENAI_MODEL, max_tokens=5, timeout=T(60),
                                                  headers=auth_headers(tenant="a-waiter")))
        wait_for(lambda: self.health()["queue"]["length"] == 1, T(10), "a request for A waiting")
        try:
            r = gw.chat(model=OLLAMA_MODEL, max_tokens=5, timeout=T(3),
                        headers=auth_headers(**{"X-Request-ID": "model-b"}))
        except OSError as e:   # socket.timeout
            h = self.health()
            self.fail("a request for model B, whose backend is idle (%r), got no answer within "
                      "%.0f s: it waits behind model A's queue (queue length %d) (%r)" % (
                          self.backend("b", h), T(3), h["queue"]["length"], e))
        self.assertCompletion(r)
        self.assertFalse(res2, "model A's waiter finished first")
        row = gw.wait_rows(1, "request_id = 'model-b'")[0]
        self.assertEqual((row["status_code"], row["backend"]), (200, "b"), row)
        self.release_slot(s1, holder)
        t2.join(T(60))
        self.assertCompletion(res2["r"])

if __name__ == "__main__":
    unittest.main()
