"""The README's quick start, minus the fixed ports: examples/privax.yaml in front of a sim, and the
exact curl that `make run` prints (tools/run-local.sh) returns a completion with usage."""

import os
import re
import shlex
import unittest

from harness import REPO, Stream, TestCase, curl

EXAMPLE = os.path.join(REPO, "examples", "privax.yaml")
RUN_LOCAL = os.path.join(REPO, "tools", "run-local.sh")


class QuickStartTest(TestCase):

    def test_example_config_serves_the_printed_curl(self):
        sim = self.h.start_sim(models=["qwen2.5-coder:7b"])
        with open(EXAMPLE) as f:
            text = f.read()
        # Same file, but free ports and a temp data dir (make run uses 8000 and 11434).
        self.assertIn("127.0.0.1:8000", text)
        self.assertIn("http://127.0.0.1:11434", text)
        text = text.replace("http://127.0.0.1:11434", sim.url).replace("127.0.0.1:8000", "127.0.0.1:0")
        text = text.replace("./data", self.h.path("data"))
        gw = self.h.start_gateway(text)

        with open(RUN_LOCAL) as f:
            printed = [ln for ln in f.read().splitlines() if ln.startswith("curl ")]
        self.assertEqual(len(printed), 1, "run-local.sh prints one curl line")
        line = printed[0].replace("$GW_ADDR", "127.0.0.1:%d" % gw.port)
        self.assertNotIn("$", line)
        argv = shlex.split(line)[1:]
        argv = [a for a in argv if a != "-sS"]
        rc, r, err = curl(argv)
        self.assertEqual(rc, 0, err)
        j = self.assertCompletion(r)
        self.assertTrue(re.search(r"\S", j["choices"][0]["message"]["content"]))

        # The stream variant the script mentions: "stream":true and -N.
        argv_s = [a.replace('"messages"', '"stream":true,"messages"') for a in argv] + ["-N"]
        rc, r, err = curl(argv_s)
        self.assertEqual(rc, 0, err)
        self.assertCompleteStream(r, Stream(r.body))

        rows = gw.wait_rows(2, "tenant_id = ?", ("acme",))
        self.assertEqual(len(rows), 2, rows)


if __name__ == "__main__":
    unittest.main()
