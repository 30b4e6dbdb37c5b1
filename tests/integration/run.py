#!/usr/bin/env python3
"""Run the integration suite: every test_*.py here, one line per test, children's stderr on failure.

    python3 tests/integration/run.py [-k SUBSTRING]... [--json FILE] [--list] [module[.Class[.test]]]...
    PRIVAX_BIN=build-asan/privax PX_TIMEOUT_SCALE=3 python3 tests/integration/run.py
    PX_VALGRIND=1 python3 tests/integration/run.py test_chat

Last line: "N passed, N failed". Exit status 0 only if nothing failed.
"""

import argparse
import json
import os
import signal
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


class Result(unittest.TestResult):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.records = {}      # test id -> {"status", "seconds", "details"}
        self.order = []
        self._t0 = {}

    def _rec(self, test):
        tid = test.id()
        if tid not in self.records:
            self.records[tid] = {"name": tid, "status": "pass", "seconds": 0.0, "details": []}
            self.order.append(tid)
        return self.records[tid]

    def startTest(self, test):
        super().startTest(test)
        harness.Harness.recent.clear()
        self._t0[test.id()] = time.monotonic()
        self._rec(test)

    def _logs(self):
        parts = []
        for h in list(harness.Harness.active) + list(harness.Harness.recent):
            for name, tail in h.logs().items():
                if tail.strip():
                    parts.append("---- %s stderr (%s) ----\n%s" % (name, h.tmp, tail.rstrip()))
        return "\n".join(parts)

    def _fail(self, test, err, label=None):
        rec = self._rec(test)
        rec["status"] = "fail"
        text = "".join(traceback.format_exception(*err)) if isinstance(err, tuple) else str(err)
        rec["details"].append(("%s\n" % label if label else "") + text + ("\n" + self._logs()))

    def addError(self, test, err):
        super().addError(test, err)
        self._fail(test, err)
        if not self._t0.get(test.id()):  # setUpClass / tearDownClass / module errors
            self._print(test.id())

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._fail(test, err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._fail(test, err, label="subtest %s" % subtest._subDescription())

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._rec(test)["status"] = "skip"
        self._rec(test)["details"].append(reason)

    def stopTest(self, test):
        super().stopTest(test)
        rec = self._rec(test)
        rec["seconds"] = time.monotonic() - self._t0.pop(test.id(), time.monotonic())
        self._print(test.id())

    def _print(self, tid):
        rec = self.records[tid]
        word = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[rec["status"]]
        self.out.write("%s %s (%.1fs)\n" % (word, tid, rec["seconds"]))
        if rec["status"] == "fail":
            for d in rec["details"]:
                self.out.write("    " + d.replace("\n", "\n    ").rstrip() + "\n")
        self.out.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", action="append", default=[], help="only tests whose id contains this")
    ap.add_argument("--json", help="write per-test results here")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)

    loader = unittest.TestLoader()
    if a.names:
        suite = loader.loadTestsFromNames(a.names)
    else:
        suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(flatten(suite))
    if a.k:
        tests = [t for t in tests if any(k in t.id() for k in a.k)]
    if a.list:
        for t in tests:
            print(t.id())
        return 0

    out = sys.stdout
    out.write("integration: %d tests against %s%s\n" % (
        len(tests), harness.PRIVAX_BIN, " under valgrind" if harness.VALGRIND else ""))
    out.flush()
    result = Result(out)
    interrupted = False
    t0 = time.monotonic()
    try:
        unittest.TestSuite(tests).run(result)
    except KeyboardInterrupt:
        interrupted = True
        out.write("interrupted: stopping children\n")
    finally:
        for h in list(harness.Harness.active):
            try:
                h.close()
            except AssertionError:
                pass
    recs = [result.records[t] for t in result.order]
    passed = sum(1 for r in recs if r["status"] == "pass")
    failed = sum(1 for r in recs if r["status"] == "fail") + (1 if interrupted else 0)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tests": recs, "interrupted": interrupted}, f, indent=1)
    bad = [r["name"] for r in recs if r["status"] == "fail"]
    if bad:
        out.write("failed:\n" + "".join("  %s\n" % n for n in bad))
    out.write("integration took %.0fs\n" % (time.monotonic() - t0))
    out.write("%d passed, %d failed\n" % (passed, failed))
    out.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
