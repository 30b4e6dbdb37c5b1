"""GET /metrics and the GPU figures (issue 5): the exposition passes `promtool check metrics`,
its counters and histograms match the requests made (and the usage rows), and GPU figures from a
file, a command or NVML (a stand-in libnvidia-ml.so.1) appear in /health and /metrics -- and are
null / absent, never made up, when the source is none, missing, failing or hung."""

import os
import re
import shutil
import subprocess
import unittest

import harness
from harness import OLLAMA_MODEL, OPENAI_MODEL, T, auth_headers, wait_for

MIB = 1024 * 1024
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prom(text):
    """{(name, ((label, value), ...)): float} of every sample; labels sorted, values unescaped."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = []
        for k, v in LABEL_RE.findall(m.group(3) or ""):
            labels.append((k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")))
        key = (m.group(1), tuple(sorted(labels)))
        if key in out:
            raise AssertionError("duplicate series %r" % (key,))
        out[key] = float(m.group(4))
    return out


def sample(samples, name, **labels):
    """The value of one series, or None."""
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name, **match):
    """Sum over the series of name whose labels include match."""
    s = 0.0
    for (n, labels), v in samples.items():
        d = dict(labels)
        if n == name and all(d.get(k) == v2 for k, v2 in match.items()):
            s += v
    return s


def promtool_check(text):
    tool = shutil.which("promtool")
    if tool is None:
        raise AssertionError("promtool is not installed (Debian package prometheus; tools/deps.sh installs it)")
    p = subprocess.run([tool, "check", "metrics"], input=text.encode("utf-8"), capture_output=True,
                       timeout=T(30))
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def get_metrics(gw):
    r = gw.get("/metrics")
    if r.status != 200:
        raise AssertionError("GET /metrics -> %r" % r)
    ct = r.header("Content-Type") or ""
    if not ct.startswith("text/plain"):
        raise AssertionError("GET /metrics Content-Type %r" % ct)
    return r.text


def health(gw):
    r = gw.get("/health")
    if r.status not in (200, 503):
        raise AssertionError("GET /health -> %r" % r)
    return r.json()


def gpu_of(h, gpu_id):
    for g in h["gpus"]:
        if g["gpu_id"] == gpu_id:
            return g
    return None


class MetricsTest(harness.TestCase):

    def gpu_file(self, text, name="gpus.txt"):
        p = self.h.path(name)
        with open(p + ".tmp", "w") as f:
            f.write(text)
        os.replace(p + ".tmp", p)  # never half-written for the sampler
        return p

    def test_promtool_and_counters_match_requests(self):
        sim = self.h.start_sim()
        gfile = self.gpu_file("0 95 1024 16384\n1, [N/A], 2048, 16384\n")
        gw = self.h.start_gateway(self.h.sim_config(
            sim, gpu={"source": "file", "file": gfile, "interval_ms": 100, "history": 50}))
        want_tokens = {}

        def count(tier, model, backend, usage):
            k = (tier, model, backend)
            p, c = want_tokens.get(k, (0, 0))
            want_tokens[k] = (p + usage["prompt_tokens"], c + usage["completion_tokens"])

        for i in range(3):
            r = gw.chat(model=OLLAMA_MODEL, prompt="json %d" % i,
                        headers=auth_headers(X_Plan_Tier="pro", X_User_ID="u%d" % i))
            count("pro", OLLAMA_MODEL, "gpu0", self.assertCompletion(r)["usage"])
        for i in range(2):
            r, s = gw.stream(model=OPENAI_MODEL, prompt="stream %d" % i)
            self.assertCompleteStream(r, s)
            count("starter", OPENAI_MODEL, "vllm0", s.usage)
        self.assertEqual(gw.chat(model="no-such-model").status, 404)
        self.assertEqual(gw.post("/v1/chat/completions", "{not json", headers=auth_headers()).status, 400)

        rows = gw.wait_rows(7)
        text = wait_for(lambda: (lambda t: t if total(parse_prom(t), "privax_requests_total") == 7 else None)(
            get_metrics(gw)), T(15), "7 requests counted in /metrics")
        rc, out = promtool_check(text)
        self.assertEqual(rc, 0, "promtool check metrics:\n%s\n---\n%s" % (out, text[:4000]))
        self.assertEqual(out.strip(), "", out)
        m = parse_prom(text)

        self.assertEqual(len(rows), 7)
        self.assertEqual(sample(m, "privax_requests_total", tier="pro", model=OLLAMA_MODEL,
                                backend="gpu0", status="200"), 3)
        self.assertEqual(sample(m, "privax_requests_total", tier="starter", model=OPENAI_MODEL,
                                backend="vllm0", status="200"), 2)
        # What clients invent is never a label: an unknown model is "_other", no backend "none".
        self.assertEqual(sample(m, "privax_requests_total", tier="starter", model="_other",
                                backend="none", status="404"), 1)
        self.assertEqual(total(m, "privax_requests_total", status="400"), 1)
        self.assertNotIn("no-such-model", text)
        self.assertNotIn(harness.TENANT, text)  # tenant ids are never labels
        for (tier, model, backend), (p, c) in want_tokens.items():
            self.assertEqual(sample(m, "privax_tokens_total", tier=tier, model=model, backend=backend,
                                    status="200", kind="prompt"), p)
            self.assertEqual(sample(m, "privax_tokens_total", tier=tier, model=model, backend=backend,
                                    status="200", kind="completion"), c)
        # The same totals as the usage rows.
        self.assertEqual(total(m, "privax_tokens_total", kind="prompt"), sum(r["prompt_tokens"] for r in rows))
        self.assertEqual(total(m, "privax_tokens_total", kind="completion"),
                         sum(r["completion_tokens"] for r in rows))

        # Histograms: the requests that reached a backend, by model; queue wait by tier.
        self.assertEqual(sample(m, "privax_request_duration_seconds_count", model=OLLAMA_MODEL), 3)
        self.assertEqual(sample(m, "privax_request_duration_seconds_count", model=OPENAI_MODEL), 2)
        self.assertEqual(sample(m, "privax_request_duration_seconds_bucket", model=OLLAMA_MODEL, le="+Inf"), 3)
        lat_sum = sum(r["latency_ms"] for r in rows if r["model_name"] == OLLAMA_MODEL) / 1000.0
        self.assertAlmostEqual(sample(m, "privax_request_duration_seconds_sum", model=OLLAMA_MODEL), lat_sum,
                               places=3)
        self.assertEqual(sample(m, "privax_time_to_first_token_seconds_count", model=OPENAI_MODEL), 2)
        self.assertEqual(sample(m, "privax_queue_wait_seconds_count", tier="pro"), 3)
        self.assertEqual(sample(m, "privax_queue_wait_seconds_count", tier="starter"), 2)
        prev = -1
        for le in ("0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300", "+Inf"):
            v = sample(m, "privax_queue_wait_seconds_bucket", tier="pro", le=le)
            self.assertIsNotNone(v, le)
            self.assertGreaterEqual(v, prev, "buckets must be cumulative")
            prev = v

        # Limit checks: the 5 requests that reached the limiter (the 404 and the 400 were refused
        # before it), decided locally within the histogram's range.
        self.assertEqual(sample(m, "privax_limits_check_seconds_count", mode="local"), 5)
        self.assertEqual(sample(m, "privax_limits_check_seconds_bucket", mode="local", le="1"), 5)
        self.assertEqual(sample(m, "privax_limits_check_seconds_count", mode="redis"), 0)
        self.assertIsNone(sample(m, "privax_limits_check_seconds_count", mode="degraded"))

        # Gauges.
        self.assertEqual(sample(m, "privax_inflight_requests"), 0)
        self.assertEqual(sample(m, "privax_queue_length"), 0)
        self.assertEqual(sample(m, "privax_backend_up", backend="gpu0"), 1)
        self.assertEqual(sample(m, "privax_backend_max_concurrency", backend="vllm0"), 8)
        self.assertEqual(sample(m, "privax_info", node_id="it-node"), 1)
        self.assertIsNotNone(sample(m, "privax_usage_backlog"))
        self.assertEqual(sample(m, "privax_usage_dropped_rows_total"), 0)
        # Every row reached the store: the store's own count says so.
        m2 = parse_prom(wait_for(lambda: (lambda t: t if sample(parse_prom(t), "privax_usage_shipped_rows_total")
                                          == 7 else None)(get_metrics(gw)), T(15), "7 rows shipped"))
        self.assertEqual(sample(m2, "privax_usage_store_up"), 1)
        self.assertEqual(sample(m2, "privax_usage_backlog"), 0)
        self.assertIsNotNone(sample(m, "privax_limits_mode", mode=health(gw)["limits"]))

        # GPU figures from the file: known ones as samples, N/A ones absent.
        m = parse_prom(wait_for(lambda: (lambda t: t if "privax_gpu_utilization_ratio{" in t else None)(
            get_metrics(gw)), T(10), "GPU figures in /metrics"))
        self.assertEqual(sample(m, "privax_gpu_source", source="file"), 1)
        self.assertEqual(sample(m, "privax_gpu_utilization_ratio", gpu="0"), 0.95)
        self.assertIsNone(sample(m, "privax_gpu_utilization_ratio", gpu="1"))
        self.assertEqual(sample(m, "privax_gpu_memory_used_bytes", gpu="0"), 1024 * MIB)
        self.assertEqual(sample(m, "privax_gpu_memory_used_bytes", gpu="1"), 2048 * MIB)
        self.assertEqual(sample(m, "privax_gpu_memory_total_bytes", gpu="1"), 16384 * MIB)
        self.assertGreater(sample(m, "privax_gpu_samples_total", result="ok"), 0)

    def test_gpu_file_in_health_then_unknown_when_the_file_goes(self):
        sim = self.h.start_sim()
        gfile = self.gpu_file("0, 95, 1024, 16384\n1, [N/A], 2048, 16384\n")
        gw = self.h.start_gateway(self.h.sim_config(
            sim, gpu={"source": "file", "file": gfile, "interval_ms": 50, "history": 10}))
        h = wait_for(lambda: (lambda j: j if len(gpu_of(j, 0)["utilization_history_pct"]) >= 3 else None)(
            health(gw)), T(10), "three GPU samples in /health")
        self.assertEqual(h["gpu"]["source"], "file")
        self.assertIsNone(h["gpu"]["error"])
        g0, g1 = gpu_of(h, 0), gpu_of(h, 1)
        self.assertEqual(g0["utilization_pct"], 95)
        self.assertEqual(g0["memory_used_mib"], 1024)
        self.assertEqual(g0["memory_total_mib"], 16384)
        self.assertTrue(all(v == 95 for v in g0["utilization_history_pct"]), g0)
        self.assertIsNone(g1["utilization_pct"])
        self.assertEqual(g1["memory_used_mib"], 2048)
        self.assertTrue(all(v is None for v in g1["utilization_history_pct"]), g1)
        # The history is capped at gpu.history samples.
        h = wait_for(lambda: (lambda j: j if len(gpu_of(j, 0)["utilization_history_pct"]) == 10 else None)(
            health(gw)), T(10), "a full history")
        self.assertGreaterEqual(h["gpu"]["samples_ok"], 10)

        self.gpu_file("0, 40, 1024, 16384\n1, 5, 2048, 16384\n")
        wait_for(lambda: gpu_of(health(gw), 0)["utilization_pct"] == 40, T(10), "the new figure")
        self.assertEqual(gpu_of(health(gw), 1)["utilization_pct"], 5)

        os.unlink(gfile)
        h = wait_for(lambda: (lambda j: j if j["gpu"]["error"] else None)(health(gw)), T(10), "a sample error")
        self.assertIn("No such file", h["gpu"]["error"])
        for gid in (0, 1):
            g = gpu_of(h, gid)
            self.assertIsNone(g["utilization_pct"], g)
            self.assertIsNone(g["memory_used_mib"], g)
            self.assertIsNone(g["memory_total_mib"], g)
        self.assertIsNone(gpu_of(h, 0)["utilization_history_pct"][-1])
        m = parse_prom(get_metrics(gw))
        self.assertNotIn("privax_gpu_utilization_ratio", {k[0] for k in m})
        self.assertGreater(sample(m, "privax_gpu_samples_total", result="error"), 0)

        # A malformed file is an error too, not a guess.
        self.gpu_file("GPU 0: Tesla T4\n")
        h = wait_for(lambda: (lambda j: j if j["gpu"]["error"] and "line 1" in j["gpu"]["error"] else None)(
            health(gw)), T(10), "a parse error")
        self.assertIsNone(gpu_of(h, 0)["utilization_pct"])
        self.gpu_file("0 77 1 2\n")
        wait_for(lambda: gpu_of(health(gw), 0)["utilization_pct"] == 77, T(10), "recovery")
        rc, out = promtool_check(get_metrics(gw))
        self.assertEqual(rc, 0, out)

    def test_gpu_source_none_is_null(self):
        sim = self.h.start_sim()
        for source in ("none", "auto"):
            with self.subTest(source=source):
                cfg = self.h.sim_config(sim, gpu={"source": source, "interval_ms": 50},
                                        data_dir=self.h.path("data-" + source),
                                        store={"sqlite": self.h.path("data-" + source, "usage.db")})
                gw = self.h.start_gateway(cfg, name="gw-" + source)
                h = health(gw)
                # No NVML on this machine and no command or file: nothing is sampled, and the
                # backends' GPUs are listed with null figures.
                self.assertEqual(h["gpu"]["source"], "none")
                self.assertIsNone(h["gpu"]["last_sample_unix_ms"])
                self.assertEqual([g["gpu_id"] for g in h["gpus"]], [0, 1])
                for g in h["gpus"]:
                    self.assertEqual(g, {"gpu_id": g["gpu_id"], "utilization_pct": None, "memory_used_mib": None,
                                         "memory_total_mib": None, "utilization_history_pct": []})
                text = get_metrics(gw)
                m = parse_prom(text)
                self.assertEqual(sample(m, "privax_gpu_source", source="none"), 1)
                for name in ("privax_gpu_utilization_ratio", "privax_gpu_memory_used_bytes",
                             "privax_gpu_memory_total_bytes"):
                    self.assertNotIn(name, {k[0] for k in m})
                rc, out = promtool_check(text)
                self.assertEqual(rc, 0, out)
                gw.stop()

    def test_gpu_command_source(self):
        sim = self.h.start_sim()
        cases = [
            ("ok", "printf '0, 37, 100, 200\\n'", None),
            ("fails", "echo 0 1 2 3; exit 3", "exit status 3"),
            ("hangs", "sleep 30", "killed"),
        ]
        for name, command, err in cases:
            with self.subTest(case=name):
                cfg = self.h.sim_config(sim, gpu={"source": "command", "command": command,
                                                  "interval_ms": 50, "timeout_ms": 300},
                                        data_dir=self.h.path("data-" + name),
                                        store={"sqlite": self.h.path("data-" + name, "usage.db")})
                gw = self.h.start_gateway(cfg, name="gw-" + name)
                if err is None:
                    wait_for(lambda: gpu_of(health(gw), 0)["utilization_pct"] == 37, T(10), "the command's figure")
                    g = gpu_of(health(gw), 0)
                    self.assertEqual((g["memory_used_mib"], g["memory_total_mib"]), (100, 200))
                else:
                    h = wait_for(lambda: (lambda j: j if j["gpu"]["error"] else None)(health(gw)), T(10),
                                 "a command error")
                    self.assertIn(err, h["gpu"]["error"])
                    self.assertIsNone(gpu_of(h, 0)["utilization_pct"])
                # A sample running in the thread pool does not hold up a SIGTERM drain for long.
                rc, killed = gw.stop(grace=T(10))
                self.assertFalse(killed)
                self.assertEqual(rc, 0)
        # The hung command's process group was killed, not left behind.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        self.assertNotIn("sleep 30", [ln.strip() for ln in ps.splitlines()])

    def test_gpu_nvml_through_dlopen(self):
        fakes = os.path.join(os.path.dirname(harness.PRIVAX_BIN), "fakes")
        if not os.path.exists(os.path.join(fakes, "libnvidia-ml.so.1")):
            self.fail("the stand-in %s/libnvidia-ml.so.1 was not built" % fakes)
        sim = self.h.start_sim()
        nv = self.gpu_file("88 4000 16000\nlost\n", name="nvml.txt")
        env = {"LD_LIBRARY_PATH": fakes, "PX_FAKE_NVML_FILE": nv}
        gw = self.h.start_gateway(self.h.sim_config(sim, gpu={"interval_ms": 50}), env=env)
        h = wait_for(lambda: (lambda j: j if gpu_of(j, 0)["utilization_pct"] is not None else None)(
            health(gw)), T(10), "NVML figures")
        self.assertEqual(h["gpu"]["source"], "nvml")  # auto picked NVML
        g0, g1 = gpu_of(h, 0), gpu_of(h, 1)
        self.assertEqual((g0["utilization_pct"], g0["memory_used_mib"], g0["memory_total_mib"]), (88, 4000, 16000))
        # A GPU NVML cannot reach: listed, every figure unknown.
        self.assertEqual((g1["utilization_pct"], g1["memory_used_mib"]), (None, None))
        self.gpu_file("12 1 2\n", name="nvml.txt")
        wait_for(lambda: gpu_of(health(gw), 0)["utilization_pct"] == 12, T(10), "a new NVML figure")
        m = parse_prom(get_metrics(gw))
        self.assertEqual(sample(m, "privax_gpu_utilization_ratio", gpu="0"), 0.12)
        gw.stop()

        # source: nvml without the library: no figures and the reason, and privax still serves.
        cfg = self.h.sim_config(sim, gpu={"source": "nvml", "interval_ms": 50},
                                data_dir=self.h.path("data2"), store={"sqlite": self.h.path("data2", "usage.db")})
        gw = self.h.start_gateway(cfg, name="gw-nolib")
        h = health(gw)
        self.assertEqual(h["gpu"]["source"], "nvml")
        self.assertIn("libnvidia-ml.so.1", h["gpu"]["error"])
        self.assertIsNone(gpu_of(h, 0)["utilization_pct"])
        self.assertCompletion(gw.chat())


if __name__ == "__main__":
    unittest.main()
