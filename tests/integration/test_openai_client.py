"""The official `openai` npm client (^6) against privax (node/test_openai.mjs), then
`privax usage --json` totals equal the usage the client received."""

import json
import os
import shutil
import signal
import subprocess
import unittest

from harness import HERE, OLLAMA_MODEL, OPENAI_MODEL, T, TestCase

NODE_DIR = os.path.join(HERE, "node")


class OpenAIClientTest(TestCase):

    def run_client(self, port, tenant, model):
        self.assertTrue(shutil.which("node"), "node is not installed (make deps)")
        self.assertTrue(os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")),
                        "tests/integration/node/node_modules is missing: run `make deps` (npm ci)")
        env = dict(os.environ, PX_PORT=str(port), PX_TENANT=tenant, PX_MODEL=model)
        p = subprocess.run(["node", "test_openai.mjs"], cwd=NODE_DIR, env=env, capture_output=True,
                           timeout=T(180))
        out = p.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            res = json.loads(out[-1])
        except (IndexError, ValueError):
            self.fail("node printed no result (exit %d): stdout %r stderr %r" % (
                p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
        self.assertTrue(res.get("ok"), "openai client check failed: %s\nstderr: %s" % (
            res.get("error"), p.stderr.decode("utf-8", "replace")[-2000:]))
        self.assertEqual(p.returncode, 0, p.stderr)
        return res

    def test_openai_client_and_usage_totals(self):
        sim, gw = self.h.start_stack()
        want = {}
        for tenant, model in (("node-ollama", OLLAMA_MODEL), ("node-openai", OPENAI_MODEL)):
            with self.subTest(model=model):
                want[tenant] = self.run_client(gw.port, tenant, model)
        rc, killed = gw.stop(signal.SIGTERM, T(20))
        self.assertFalse(killed)
        self.assertEqual(rc, 0)
        for tenant, res in want.items():
            with self.subTest(tenant=tenant):
                got = self.h.usage_json(gw.config_path, "--tenant", tenant)
                self.assertEqual(len(got), 1, got)
                row = got[0]
                for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    self.assertEqual(row[k], res["usage"][k], "%s: %r vs client %r" % (k, row, res))
                # Two completions; models.list may or may not count as a request (it carries no
                # tokens). The 401 with a wrong key is not an authenticated request: no row.
                self.assertIn(row["requests"], (res["requests"], res["requests"] + 1), row)
                self.assertEqual(row["errors"], 0, row)


if __name__ == "__main__":
    unittest.main()
