"""The happy path of the contract (PRODUCT.md, issue 2): chat completions JSON and stream through
both backend protocols, usage, X-Request-ID, /v1/models, /health, keep-alive, token kinds."""

import hashlib
import http.client
import json
import threading
import unittest

from harness import (OLLAMA_MODEL, OPENAI_MODEL, TENANT, TOKEN, UUID_RE, Stream, T, TestCase,
                     auth_headers, chat_body, curl)

MODELS = (OLLAMA_MODEL, OPENAI_MODEL)


class ChatTest(TestCase):

    def setUp(self):
        super().setUp()
        self.sim, self.gw = self.h.start_stack()

    def test_json_completion_with_usage(self):
        for model in MODELS:
            with self.subTest(model=model):
                r = self.gw.chat(model=model, prompt="Write a haiku about GPUs")
                j = self.assertCompletion(r)
                self.assertGreater(j["usage"]["completion_tokens"], 0, r)

    def test_stream_ends_with_usage_then_done(self):
        for model in MODELS:
            with self.subTest(model=model):
                r, s = self.gw.stream(model=model, prompt="Explain SSE in one line")
                self.assertCompleteStream(r, s)
                self.assertGreater(s.usage["completion_tokens"], 0)
                self.assertEqual(s.usage_count, 1, "usage must come once, in the final chunk: %r" % s.data)

    def test_stream_joined_deltas_equal_json_content(self):
        for model in MODELS:
            with self.subTest(model=model):
                prompt = "Tell me about privacy and latency, model %s" % model
                j = self.assertCompletion(self.gw.chat(model=model, prompt=prompt))
                r, s = self.gw.stream(model=model, prompt=prompt)
                self.assertCompleteStream(r, s)
                self.assertEqual(s.content, j["choices"][0]["message"]["content"])
                keys = ("prompt_tokens", "completion_tokens", "total_tokens")
                self.assertEqual({k: s.usage[k] for k in keys}, {k: j["usage"][k] for k in keys})

    def test_stream_with_client_include_usage(self):
        """A client that asks for stream_options.include_usage itself still gets exactly one usage chunk."""
        r, s = self.gw.stream(model=OPENAI_MODEL, prompt="hello there",
                              stream_options={"include_usage": True})
        self.assertCompleteStream(r, s)
        self.assertEqual(s.usage_count, 1, s.data)

    def test_same_prompt_same_answer(self):
        a = self.assertCompletion(self.gw.chat(prompt="determinism please"))
        b = self.assertCompletion(self.gw.chat(prompt="determinism please"))
        self.assertEqual(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"])
        self.assertEqual(a["usage"], b["usage"])

    def test_max_tokens_reaches_backend(self):
        """max_tokens is translated for both protocols (Ollama: options.num_predict)."""
        for model in MODELS:
            with self.subTest(model=model):
                j = self.assertCompletion(self.gw.chat(model=model, prompt="a long story please " * 3,
                                                       max_tokens=3))
                self.assertLessEqual(j["usage"]["completion_tokens"], 3, j)
                r, s = self.gw.stream(model=model, prompt="a long story please " * 3, max_tokens=3)
                self.assertCompleteStream(r, s)
                self.assertLessEqual(s.usage["completion_tokens"], 3, s.data)

    def test_multibyte_utf8_survives(self):
        """The sim emits multi-byte UTF-8 tokens; JSON and stream carry them intact."""
        seen_non_ascii = False
        for i in range(12):
            prompt = "unicode sample %d: naïve café 日本語 😀" % i
            j = self.assertCompletion(self.gw.chat(model=OPENAI_MODEL, prompt=prompt, max_tokens=64))
            r, s = self.gw.stream(model=OPENAI_MODEL, prompt=prompt, max_tokens=64)
            self.assertCompleteStream(r, s)  # parse_sse decodes the raw bytes strictly as UTF-8
            self.assertEqual(s.content, j["choices"][0]["message"]["content"])
            if any(ord(c) > 127 for c in s.content):
                seen_non_ascii = True
                r2, s2 = self.gw.stream(model=OLLAMA_MODEL, prompt=prompt, max_tokens=64)
                self.assertCompleteStream(r2, s2)
                break
        self.assertTrue(seen_non_ascii, "the sim never produced a multi-byte token in 12 prompts")

    def test_request_id_echoed(self):
        rid = "req-1234-abcd"
        r = self.gw.chat(headers=auth_headers(**{"X-Request-ID": rid}))
        self.assertCompletion(r)
        self.assertEqual(r.header("X-Request-ID"), rid)
        r, s = self.gw.stream(headers=auth_headers(**{"X-Request-ID": rid + "-s"}))
        self.assertCompleteStream(r, s)
        self.assertEqual(r.header("X-Request-ID"), rid + "-s")

    def test_request_id_generated_when_absent(self):
        ids = set()
        for _ in range(3):
            r = self.gw.chat()
            self.assertCompletion(r)
            rid = r.header("X-Request-ID")
            self.assertTrue(rid and UUID_RE.match(rid), "X-Request-ID %r is not a UUID" % rid)
            ids.add(rid)
        self.assertEqual(len(ids), 3, "generated request ids repeat: %r" % ids)
        r, s = self.gw.stream()
        self.assertTrue(UUID_RE.match(r.header("X-Request-ID") or ""), r)

    def test_request_id_and_identity_land_in_usage_row(self):
        rid = "row-check-42"
        r = self.gw.chat(headers=auth_headers(tenant="globex", **{"X-Request-ID": rid, "X-User-ID": "u-7",
                                                                  "X-Plan-Tier": "pro"}))
        j = self.assertCompletion(r)
        rows = self.gw.wait_rows(1, "request_id = ?", (rid,))
        self.assertEqual(len(rows), 1, rows)
        row = rows[0]
        self.assertEqual(row["tenant_id"], "globex")
        self.assertEqual(row["user_id"], "u-7")
        self.assertEqual(row["plan_tier"], "pro")
        self.assertEqual(row["api_key_id"], "platform")
        self.assertEqual(row["model_name"], OLLAMA_MODEL)
        self.assertEqual(row["backend"], "gpu0")
        self.assertEqual(row["provider"], "ollama")
        self.assertEqual(str(row["gpu_id"]), "0")
        self.assertEqual(row["node_id"], "it-node")
        self.assertEqual(row["status_code"], 200)
        self.assertEqual(row["success"], 1)
        self.assertEqual(row["stream"], 0)
        self.assertEqual(row["prompt_tokens"], j["usage"]["prompt_tokens"])
        self.assertEqual(row["completion_tokens"], j["usage"]["completion_tokens"])
        self.assertEqual(row["total_tokens"], j["usage"]["total_tokens"])
        self.assertEqual(row["usage_estimated"], 0)
        content = j["choices"][0]["message"]["content"]
        self.assertIn(row["output_chars"], (len(content), len(content.encode("utf-8"))), row)
        self.assertGreater(row["event_time"], 1_600_000_000_000, "event_time must be unix ms")
        self.assertGreaterEqual(row["latency_ms"], 0)

    def test_stream_row(self):
        rid = "row-stream-1"
        r, s = self.gw.stream(model=OPENAI_MODEL, headers=auth_headers(**{"X-Request-ID": rid}))
        self.assertCompleteStream(r, s)
        row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
        self.assertEqual(row["stream"], 1)
        self.assertEqual(row["status_code"], 200)
        self.assertEqual(row["success"], 1)
        self.assertEqual(row["backend"], "vllm0")
        self.assertEqual(str(row["gpu_id"]), "1")
        self.assertEqual(row["total_tokens"], s.usage["total_tokens"])
        self.assertEqual(row["completion_tokens"], s.usage["completion_tokens"])

    def test_models_list(self):
        r = self.gw.get("/v1/models", headers=auth_headers())
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertEqual(j.get("object"), "list", r)
        ids = {m.get("id") for m in j.get("data", [])}
        self.assertEqual(ids, set(MODELS), r)
        for m in j["data"]:
            self.assertEqual(m.get("object"), "model", m)

    def test_health(self):
        r = self.gw.get("/health")
        self.assertEqual(r.status, 200, r)
        # HEAD, as load balancers probe: same status and length, no body, connection reusable.
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=T(30))
        try:
            conn.request("HEAD", "/health")
            h = conn.getresponse()
            self.assertEqual(h.status, 200)
            self.assertEqual(h.read(), b"")
            self.assertGreater(int(h.getheader("Content-Length")), 0)
            conn.request("GET", "/health")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()

    def test_keep_alive_reuses_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=T(30))
        try:
            for i in range(3):
                conn.request("POST", "/v1/chat/completions",
                             body=json.dumps(chat_body(prompt="ka %d" % i, stream=bool(i % 2))),
                             headers=dict(auth_headers(), **{"Content-Type": "application/json"}))
                resp = conn.getresponse()
                body = resp.read()
                self.assertEqual(resp.status, 200, body[:300])
                if i % 2:
                    self.assertTrue(Stream(body).done)
            conn.request("GET", "/health")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()

    def test_pipelined_requests(self):
        """Two requests in one write on one connection: two answers, in order."""
        import socket
        from harness import read_http_response
        reqs = b""
        for rid in ("pipe-1", "pipe-2"):
            body = json.dumps(chat_body(prompt=rid)).encode()
            reqs += ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     "X-Tenant-ID: %s\r\nX-Request-ID: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n" % (TOKEN, TENANT, rid, len(body))).encode() + body
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30)) as s:
            s.sendall(reqs)
            for rid in ("pipe-1", "pipe-2"):
                r = read_http_response(s, T(30))
                self.assertCompletion(r)
                self.assertEqual(r.header("X-Request-ID"), rid)

    def test_concurrent_streams(self):
        results = [None] * 6
        def one(i):
            try:
                r, s = self.gw.stream(model=MODELS[i % 2], prompt="parallel %d" % i)
                results[i] = (r.status, s.done if s else None, s.usage if s else None)
            except Exception as e:  # noqa: BLE001
                results[i] = ("exception", repr(e), None)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(T(60))
        for i, res in enumerate(results):
            self.assertIsNotNone(res, "request %d did not finish" % i)
            self.assertEqual(res[0], 200, res)
            self.assertTrue(res[1], res)
            self.assertTrue(res[2], res)

    def test_curl_quickstart_shape(self):
        """The README's curl (what `make run` prints) against this gateway."""
        rc, r, err = curl([self.gw.url + "/v1/chat/completions",
                           "-H", "Authorization: Bearer " + TOKEN, "-H", "X-Tenant-ID: " + TENANT,
                           "-H", "Content-Type: application/json",
                           "-d", json.dumps({"model": OLLAMA_MODEL,
                                             "messages": [{"role": "user", "content": "Write hello world in C"}]})])
        self.assertEqual(rc, 0, err)
        self.assertCompletion(r)
        rc, r, err = curl(["-N", self.gw.url + "/v1/chat/completions",
                           "-H", "Authorization: Bearer " + TOKEN, "-H", "X-Tenant-ID: " + TENANT,
                           "-H", "Content-Type: application/json",
                           "-d", json.dumps({"model": OLLAMA_MODEL, "stream": True,
                                             "messages": [{"role": "user", "content": "Write hello world in C"}]})])
        self.assertEqual(rc, 0, err)
        self.assertCompleteStream(r, Stream(r.body))

    def test_temperature_boundaries_accepted(self):
        for t in (0, 2, 0.7):
            with self.subTest(temperature=t):
                self.assertCompletion(self.gw.chat(temperature=t))


class TokenKindsTest(TestCase):
    """auth.tokens entries: token, token_env and token_sha256 all authenticate, with their ids."""

    def test_token_env_and_sha256(self):
        sim = self.h.start_sim()
        cfg = self.h.sim_config(sim)
        cfg["auth"] = {"tokens": [
            {"id": "plain", "token": TOKEN},
            {"id": "from-env", "token_env": "PX_IT_TOKEN"},
            {"id": "hashed", "token_sha256": hashlib.sha256(b"hashed-secret").hexdigest()},
        ]}
        gw = self.h.start_gateway(cfg, env={"PX_IT_TOKEN": "env-secret"})
        for tok, kid in ((TOKEN, "plain"), ("env-secret", "from-env"), ("hashed-secret", "hashed")):
            with self.subTest(key=kid):
                rid = "tok-" + kid
                r = gw.chat(headers=auth_headers(token=tok, **{"X-Request-ID": rid}))
                self.assertCompletion(r)
                row = gw.wait_rows(1, "request_id = ?", (rid,))[0]
                self.assertEqual(row["api_key_id"], kid)
        for bad in ("env-secret-x", hashlib.sha256(b"hashed-secret").hexdigest(), "PX_IT_TOKEN"):
            with self.subTest(bad=bad):
                self.assertErrorJSON(gw.chat(headers=auth_headers(token=bad)), 401, "invalid_token",
                                     "authentication_error")


if __name__ == "__main__":
    unittest.main()
