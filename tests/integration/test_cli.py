"""The CLI surface: version, help, `config check` (exit 0, or FILE:LINE: message and exit 78)."""

import os
import re
import unittest

from harness import REPO, TestCase

EX_CONFIG = 78

GOOD = """\
node_id: node1
listen: 127.0.0.1:0
data_dir: {data}
auth:
  tokens:
    - id: platform
      token: test-token
    - id: other
      token_env: PX_SOME_TOKEN
    - id: hashed
      token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
backends:
  - name: gpu0
    url: http://127.0.0.1:11434
    protocol: ollama
    gpu_id: 0
    max_concurrency: 4
  - name: vllm0
    url: http://127.0.0.1:8001
    protocol: openai
    gpu_id: 1
    max_concurrency: 8
models:
  - name: qwen2.5-coder:7b
    backends: [gpu0]
  - name: llama3.1:8b
    upstream_model: meta-llama/Llama-3.1-8B-Instruct
    backends: [vllm0]
store:
  sqlite: {data}/usage.db
http:
  header_max_bytes: 16384
  body_max_bytes: 4194304
  header_timeout_ms: 10000
timeouts:
  connect_ms: 2000
  first_byte_ms: 120000
  idle_ms: 60000
  shutdown_ms: 10000
usage:
  flush_ms: 200
  batch_max: 500
"""


def replace_line(text, startswith, new):
    """Replace the first line starting with `startswith`; returns (text, 1-based line number)."""
    lines = text.split("\n")
    for i, ln in enumerate(lines):
        if ln.startswith(startswith):
            lines[i] = new
            return "\n".join(lines), i + 1
    raise KeyError(startswith)


class CliTest(TestCase):

    def good(self):
        return GOOD.format(data=self.h.path("data"))

    def check(self, text, name="c.yaml"):
        p = self.h.write_config(text, name)
        return p, self.h.privax(["config", "check", p], env={"PX_SOME_TOKEN": "set"})

    def test_version(self):
        p = self.h.privax(["version"])
        self.assertEqual(p.returncode, 0, p)
        self.assertRegex(p.stdout.decode(), r"^privax \d+\.\d+\.\d+")

    def test_help_lists_subcommands(self):
        p = self.h.privax(["help"])
        self.assertEqual(p.returncode, 0, p)
        for sub in ("serve", "sim", "usage", "config", "version", "help"):
            self.assertIn(sub, p.stdout.decode())

    def test_unknown_command(self):
        p = self.h.privax(["frobnicate"])
        self.assertNotEqual(p.returncode, 0)
        self.assertTrue(p.stderr, p)

    def test_usage_refuses_dates_that_do_not_exist(self):
        path = self.h.write_config(self.good(), "u.yaml")
        env = {"PX_SOME_TOKEN": "set"}
        for bad in ("2026-02-30", "2026-13-01", "2026-04-31", "2026-01-01T24:00:00Z",
                    "2026-01-01T23:59:60Z", "26-01-01", "2026-01-01x", ""):
            p = self.h.privax(["usage", "--config", path, "--since", bad], env=env)
            self.assertEqual(p.returncode, 64, (bad, p))
            self.assertIn("--since/--until must be", p.stderr.decode(), bad)
        p = self.h.privax(["usage", "--config", path, "--since", "2026-12-05", "--until",
                           "2026-12-01"], env=env)
        self.assertEqual(p.returncode, 64, p)
        self.assertIn("is after --until", p.stderr.decode())
        for good in ("2024-02-29", "2026-12-31T23:59:59Z", "2026-01-01T00:00:00"):
            p = self.h.privax(["usage", "--config", path, "--since", good, "--json"], env=env)
            self.assertEqual(p.returncode, 0, (good, p.stderr.decode()))

    def test_config_check_good(self):
        path, p = self.check(self.good())
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    def test_example_config_is_valid(self):
        ex = os.path.join(REPO, "examples", "privax.yaml")
        self.assertTrue(os.path.exists(ex), "examples/privax.yaml is what `make run` serves")
        p = self.h.privax(["config", "check", ex])
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    def assert_config_error(self, text, line, name="bad.yaml", also=()):
        """Exit 78 and a 'FILE:LINE: message' line naming `line` (or one of `also`)."""
        path, p = self.check(text, name)
        out = (p.stderr + p.stdout).decode("utf-8", "replace")
        self.assertEqual(p.returncode, EX_CONFIG, "exit %d, output %r" % (p.returncode, out))
        lines = "|".join(str(n) for n in (line,) + tuple(also))
        self.assertRegex(out, r"(?m)^%s:(%s): \S" % (re.escape(path), lines),
                         "want '%s:%d: message', got %r" % (path, line, out))

    def test_bad_values_point_at_their_line(self):
        cases = [
            ("    protocol: ollama", "    protocol: grpc"),
            ("    max_concurrency: 4", "    max_concurrency: -1"),
            ("    max_concurrency: 8", "    max_concurrency: lots"),
            ("    url: http://127.0.0.1:11434", "    url: not a url"),
            ("listen:", "listen: nowhere"),
            ("      token_sha256:", "      token_sha256: abc123"),
            ("    backends: [gpu0]", "    backends: [gpu9]"),
            ("  body_max_bytes:", "  body_max_bytes: -5"),
            ("  first_byte_ms:", "  first_byte_ms: soon"),
            ("  flush_ms:", "  flush_ms: -1"),
        ]
        for old, new in cases:
            with self.subTest(line=new.strip()):
                text, line = replace_line(self.good(), old, new)
                # A bad reference may be reported at the list or at its model entry just above.
                self.assert_config_error(text, line, also=(line - 1,) if "backends:" in new else ())

    def test_unknown_key_is_an_error(self):
        text, line = replace_line(self.good(), "listen:", "lissten: 127.0.0.1:0")
        self.assert_config_error(text, line)

    def test_token_entry_without_secret(self):
        text, line = replace_line(self.good(), "      token: test-token", "      note: no secret here")
        # The error may point at the entry (its "- id:" line) or at the stray key.
        path, p = self.check(text)
        out = (p.stderr + p.stdout).decode("utf-8", "replace")
        self.assertEqual(p.returncode, EX_CONFIG, out)
        self.assertRegex(out, r"(?m)^%s:(%d|%d): \S" % (re.escape(path), line - 1, line), out)

    def test_duplicate_backend_name(self):
        text, line = replace_line(self.good(), "  - name: vllm0", "  - name: gpu0")
        self.assert_config_error(text, line)

    def test_yaml_syntax_error(self):
        text, line = replace_line(self.good(), "    backends: [gpu0]", "    backends: [gpu0")
        path, p = self.check(text)
        out = (p.stderr + p.stdout).decode("utf-8", "replace")
        self.assertEqual(p.returncode, EX_CONFIG, out)
        # A parser may notice an unclosed bracket on a later line; it must name a line.
        self.assertRegex(out, r"(?m)^%s:\d+: \S" % re.escape(path), out)

    def test_a_second_yaml_document_is_an_error(self):
        good = self.good()
        n = good.count("\n")
        for tail, what in (("---\nlistn: x\n", "second YAML document"),
                           ("---\ngarbage: [\n", "YAML syntax error")):
            path, p = self.check(good + tail)
            out = (p.stderr + p.stdout).decode("utf-8", "replace")
            self.assertEqual(p.returncode, EX_CONFIG, out)
            self.assertRegex(out, r"(?m)^%s:\d+: " % re.escape(path), out)
            self.assertIn(what, out)
        path, p = self.check(good + "---\nlistn: x\n")
        self.assertIn("%s:%d: " % (path, n + 2), p.stderr.decode())
        # A single document may still open with "---" and close with "...".
        path, p = self.check("---\n" + good + "...\n")
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    def test_booleans_are_true_or_false_only(self):
        for v in ("True", "TRUE", "yes", "on", "1"):
            path, p = self.check(self.good() + "log:\n  access: %s\n" % v)
            out = p.stderr.decode()
            self.assertEqual(p.returncode, EX_CONFIG, (v, out))
            self.assertIn("must be true or false", out, v)

    def test_missing_file(self):
        path = self.h.path("nope.yaml")
        p = self.h.privax(["config", "check", path])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(path, (p.stderr + p.stdout).decode())

    def test_serve_refuses_bad_config(self):
        text, line = replace_line(self.good(), "    protocol: ollama", "    protocol: grpc")
        path = self.h.write_config(text, "bad-serve.yaml")
        p = self.h.privax(["serve", "--config", path, "--port-file", self.h.path("p")], timeout=30,
                          env={"PX_SOME_TOKEN": "x"})
        self.assertEqual(p.returncode, EX_CONFIG, p.stderr)
        self.assertIn(("%s:%d:" % (path, line)).encode(), p.stderr)


if __name__ == "__main__":
    unittest.main()
