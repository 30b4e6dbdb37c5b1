"""`privax sim` on its own: the Ollama and vLLM APIs it imitates, determinism, stats, faults.
Everything else in the suite relies on these."""

import json
import unittest

from harness import OLLAMA_MODEL, OPENAI_MODEL, SharedStackTestCase, Stream, T, TestCase, wait_for


def ndjson(body):
    lines = [ln for ln in body.decode("utf-8").split("\n") if ln.strip()]
    return [json.loads(ln) for ln in lines]


class SimAPITest(SharedStackTestCase):

    def v1(self, model=OPENAI_MODEL, prompt="hi sim", stream=False, **kw):
        b = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
        b.update(kw)
        return self.sim.post("/v1/chat/completions", b)

    def test_health_models_tags_ps_metrics(self):
        self.assertEqual(self.sim.get("/health").status, 200)
        m = self.sim.get("/v1/models")
        self.assertEqual(m.status, 200, m)
        self.assertEqual(m.json().get("object"), "list", m)
        self.assertTrue(m.json().get("data"), m)
        tags = self.sim.get("/api/tags")
        self.assertEqual(tags.status, 200, tags)
        names = [t.get("name") for t in tags.json().get("models", [])]
        self.assertIn(OLLAMA_MODEL, names, tags)
        ps = self.sim.get("/api/ps")
        self.assertEqual(ps.status, 200, ps)
        self.assertIn("models", ps.json(), ps)
        met = self.sim.get("/metrics")
        self.assertEqual(met.status, 200, met)
        self.assertIn("vllm:num_requests_running", met.text)
        self.assertIn("vllm:num_requests_waiting", met.text)

    def test_stats_fields(self):
        st = self.sim.stats()
        for k in ("requests", "active", "completed", "client_disconnects", "last_disconnect_unix_ms",
                  "tokens_generated"):
            self.assertIn(k, st, st)
            self.assertIsInstance(st[k], int, st)

    def test_openai_json_and_stream_agree(self):
        j = self.v1(prompt="agree?").json()
        self.assertEqual(j["object"], "chat.completion")
        r = self.v1(prompt="agree?", stream=True, stream_options={"include_usage": True})
        self.assertEqual(r.status, 200, r)
        s = Stream(r.body)
        self.assertTrue(s.done, s.data[-2:])
        self.assertEqual(s.content, j["choices"][0]["message"]["content"])
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        self.assertEqual({k: s.usage[k] for k in keys}, {k: j["usage"][k] for k in keys})
        self.assertEqual(s.chunks[-1].get("choices"), [], "vLLM's usage chunk has empty choices")

    def test_openai_stream_without_include_usage_has_no_usage(self):
        s = Stream(self.v1(prompt="no usage asked", stream=True).body)
        self.assertTrue(s.done)
        self.assertIsNone(s.usage, "vLLM sends usage in a stream only with stream_options.include_usage")

    def test_ollama_chat_ndjson(self):
        b = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "ollama?"}]}
        r = self.sim.post("/api/chat", dict(b, stream=True))
        self.assertEqual(r.status, 200, r)
        objs = ndjson(r.body)
        self.assertTrue(objs[-1]["done"], objs[-1])
        for o in objs[:-1]:
            self.assertFalse(o["done"], o)
            self.assertEqual(o["message"]["role"], "assistant", o)
        last = objs[-1]
        for k in ("prompt_eval_count", "eval_count", "total_duration", "load_duration", "prompt_eval_duration",
                  "eval_duration"):
            self.assertIsInstance(last.get(k), int, last)
        text = "".join(o["message"]["content"] for o in objs)
        one = self.sim.post("/api/chat", dict(b, stream=False)).json()
        self.assertTrue(one["done"], one)
        self.assertEqual(one["message"]["content"], text)
        self.assertEqual(one["eval_count"], last["eval_count"])
        self.assertEqual(one["prompt_eval_count"], last["prompt_eval_count"])

    def test_ollama_generate_ndjson(self):
        r = self.sim.post("/api/generate", {"model": OLLAMA_MODEL, "prompt": "gen?"})
        self.assertEqual(r.status, 200, r)
        objs = ndjson(r.body)
        self.assertTrue(objs[-1]["done"])
        self.assertTrue("".join(o.get("response", "") for o in objs))
        self.assertIsInstance(objs[-1].get("eval_count"), int)

    def test_ollama_and_openai_count_alike(self):
        """The same prompt costs the same tokens through either API of one node."""
        o = self.sim.post("/api/chat", {"model": OLLAMA_MODEL, "stream": False,
                                        "messages": [{"role": "user", "content": "count"}]}).json()
        v = self.v1(model=OLLAMA_MODEL, prompt="count").json()
        self.assertEqual(o["eval_count"], v["usage"]["completion_tokens"])
        self.assertEqual(o["prompt_eval_count"], v["usage"]["prompt_tokens"])
        self.assertEqual(o["message"]["content"], v["choices"][0]["message"]["content"])

    def test_deterministic_and_multibyte(self):
        outs = []
        for i in range(15):
            a = self.v1(prompt="det %d" % i, max_tokens=64).json()["choices"][0]["message"]["content"]
            b = self.v1(prompt="det %d" % i, max_tokens=64).json()["choices"][0]["message"]["content"]
            self.assertEqual(a, b)
            outs.append(a)
        self.assertTrue(any(ord(c) > 127 for o in outs for c in o), "no multi-byte UTF-8 token in 15 answers")
        self.assertGreater(len(set(outs)), 1, "different prompts, same answer")

    def test_fault_control(self):
        self.sim.fault("error:503", 1)
        r = self.v1()
        self.assertEqual(r.status, 503, r)
        self.assertEqual(self.v1().status, 200, "a fault with count 1 fires once")


class SimSeedTest(TestCase):

    def test_seed_changes_text(self):
        a = self.h.start_sim(name="a", seed=1)
        b = self.h.start_sim(name="b", seed=2)
        body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "same prompt"}]}
        ta = a.post("/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
        tb = b.post("/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
        self.assertNotEqual(ta, tb)

    def test_busy_queue_503(self):
        """--parallel and --max-queue count per model, like Ollama's."""
        sim = self.h.start_sim(tps=10, args=["--parallel", "1", "--max-queue", "1"])
        import socket
        body = json.dumps({"model": OPENAI_MODEL, "stream": True, "max_tokens": 200,
                           "messages": [{"role": "user", "content": "occupy"}]}).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        socks = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", sim.port), timeout=T(10))
                s.sendall(req)
                socks.append(s)
            wait_for(lambda: sim.stats()["requests"] >= 2, T(10), "two requests in the sim")
            r = sim.post("/v1/chat/completions", json.loads(body))
            self.assertEqual(r.status, 503, r)
            o = sim.post("/api/chat", {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]})
            self.assertEqual(o.status, 503, o)
        finally:
            for s in socks:
                s.close()


if __name__ == "__main__":
    unittest.main()
