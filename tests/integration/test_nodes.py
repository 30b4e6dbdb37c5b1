"""The nodes inventory (issue 5): `privax nodes check` against live and dead nodes, and
`privax nodes nginx-conf` rendered, checked with `nginx -t` and run by a real nginx in front of two
real privax nodes: requests reach both, a backup node only serves when the primary is gone, and
non-streaming requests keep succeeding when a node is killed (nginx retries them on the other)."""

import json
import os
import re
import shutil
import signal
import subprocess
import unittest

import harness
import nginx
from harness import OLLAMA_MODEL, OPENAI_MODEL, T, auth_headers, request, wait_for


def write_nodes(h, nodes, name="nodes.yaml"):
    p = h.path(name)
    with open(p, "w") as f:
        f.write(harness.to_yaml({"nodes": nodes}) + "\n")
    return p


def node_config(h, sim, node_id, **kw):
    """A privax node in front of sim with its own node_id, data dir and SQLite store."""
    d = h.path("data-" + node_id)
    return h.sim_config(sim, node_id=node_id, data_dir=d, store={"sqlite": os.path.join(d, "usage.db")}, **kw)


class NodesCheckTest(harness.TestCase):

    def check(self, nodes_file, *extra):
        p = self.h.privax(["nodes", "check", "--nodes", nodes_file, "--timeout-ms", str(int(T(5) * 1000))]
                          + list(extra))
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def test_check_reports_a_down_node_and_exits_nonzero(self):
        sim = self.h.start_sim()
        gfile = self.h.path("gpus.txt")
        with open(gfile, "w") as f:
            f.write("0 91 1000 16000\n")
        gw1 = self.h.start_gateway(node_config(self.h, sim, "node1",
                                               gpu={"source": "file", "file": gfile, "interval_ms": 50}),
                                   name="gw1")
        gw2 = self.h.start_gateway(node_config(self.h, sim, "node2"), name="gw2")
        wait_for(lambda: gw1.get("/health").json()["gpus"][0]["utilization_pct"] == 91, T(10), "GPU figures")
        # A node whose /health says down (HTTP 503), as a node with no healthy backend answers.
        fake = self.h.start_fake({"routes": [{"method": "GET", "path": "/health", "status": 503,
                                              "headers": [["Content-Type", "application/json"]],
                                              "body": json.dumps({"status": "down", "node_id": "sick"})}]})
        dead_port = harness.free_port()

        all_up = write_nodes(self.h, [{"name": "node1", "url": gw1.url}, {"name": "node2", "url": gw2.url + "/"}],
                             "up.yaml")
        rc, out, err = self.check(all_up)
        self.assertEqual(rc, 0, out + err)
        self.assertRegex(out, r"(?m)^node1\s+ok\s+200\s")
        self.assertRegex(out, r"(?m)^node2\s+ok\s+200\s")
        self.assertIn("0:91%", out)
        self.assertIn("0:1000/16000", out)
        self.assertIn("0 of 2 node(s) down", out)

        mixed = write_nodes(self.h, [
            {"name": "node1", "url": gw1.url},
            {"name": "dead", "url": "http://127.0.0.1:%d" % dead_port},
            {"name": "sick", "url": fake.url, "backup": True},
        ], "mixed.yaml")
        rc, out, err = self.check(mixed)
        self.assertEqual(rc, 69, "EX_UNAVAILABLE when a node is down:\n" + out + err)
        self.assertRegex(out, r"(?m)^node1\s+ok\s")
        self.assertRegex(out, r"(?m)^dead\s+unreachable\s")
        self.assertRegex(out, r"(?m)^sick \(b\)\s+down\s+503\s")
        self.assertIn("2 of 3 node(s) down", out)

        rc, out, err = self.check(mixed, "--json")
        self.assertEqual(rc, 69, err)
        j = json.loads(out)
        self.assertEqual((j["down"], j["total"]), (2, 3))
        by = {n["name"]: n for n in j["nodes"]}
        self.assertEqual(by["node1"]["status"], "ok")
        self.assertFalse(by["node1"]["down"])
        self.assertEqual(by["node1"]["node_id"], "node1")
        self.assertEqual(by["node1"]["inflight"], 0)
        self.assertEqual(by["node1"]["backends_total"], 2)
        self.assertEqual(by["node1"]["gpus"][0], {"gpu_id": 0, "utilization_pct": 91, "memory_used_mib": 1000,
                                                  "memory_total_mib": 16000})
        # node1 has gpu_id 1 too (its openai backend) with no figures: null, not 0.
        self.assertIsNone(by["node1"]["gpus"][1]["utilization_pct"])
        self.assertEqual(by["dead"]["status"], "unreachable")
        self.assertIsNone(by["dead"]["http_status"])
        self.assertTrue(by["dead"]["error"])
        self.assertEqual((by["sick"]["status"], by["sick"]["http_status"], by["sick"]["backup"]), ("down", 503, True))

        # A node that stops is reported unreachable.
        gw2.stop()
        rc, out, _ = self.check(all_up)
        self.assertEqual(rc, 69, out)
        self.assertRegex(out, r"(?m)^node2\s+unreachable\s")

    def test_bad_input(self):
        bad = self.h.path("bad.yaml")
        with open(bad, "w") as f:
            f.write("nodes:\n  - name: a\n    url: http://h:1\n    bakup: true\n")
        for sub in ("check", "nginx-conf"):
            p = self.h.privax(["nodes", sub, "--nodes", bad])
            self.assertEqual(p.returncode, 78, p)
            self.assertIn("%s:4: nodes[0]: unknown key 'bakup'" % bad, p.stderr.decode())
        good = write_nodes(self.h, [{"name": "a", "url": "http://127.0.0.1:1"}])
        for args, code in [
            (["nodes"], 64),
            (["nodes", "status", "--nodes", good], 64),
            (["nodes", "check"], 64),
            (["nodes", "nginx-conf", "--nodes", good, "--method", "ip_hash"], 64),
            (["nodes", "nginx-conf", "--nodes", good, "--listen", "80; include /etc/passwd"], 64),
            (["nodes", "check", "--nodes", good, "--listen", "80"], 64),
            (["nodes", "check", "--nodes", self.h.path("missing.yaml")], 78),
            (["nodes", "--help"], 0),
        ]:
            p = self.h.privax(args)
            self.assertEqual(p.returncode, code, (args, p.stdout, p.stderr))


@unittest.skipUnless(nginx.available(), "nginx is not installed (tools/deps.sh installs it)")
class NginxTest(harness.TestCase):

    def render(self, nodes_file, listen, *extra):
        p = self.h.privax(["nodes", "nginx-conf", "--nodes", nodes_file, "--listen", listen] + list(extra))
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout.decode()

    def per_node(self, gws):
        """Requests each node has metered (its /metrics counter)."""
        import test_metrics
        return [test_metrics.total(test_metrics.parse_prom(test_metrics.get_metrics(g)), "privax_requests_total")
                for g in gws]

    def test_rendered_conf_balances_two_nodes_and_survives_one_dying(self):
        sim = self.h.start_sim()
        gws = [self.h.start_gateway(node_config(self.h, sim, "node%d" % i), name="gw%d" % i) for i in (1, 2)]
        nodes = write_nodes(self.h, [{"name": "node%d" % (i + 1), "url": g.url, "max_fails": 1, "fail_timeout_s": 30}
                                     for i, g in enumerate(gws)])
        port = harness.free_port()
        conf = self.render(nodes, "127.0.0.1:%d" % port)
        self.assertIn("least_conn;", conf)
        self.assertIn("proxy_next_upstream error timeout http_502 http_503 non_idempotent;", conf)
        ng = nginx.Nginx(self.h, conf, port=port)
        ok, out = ng.check()
        self.assertTrue(ok, "nginx -t:\n%s\n---\n%s" % (out, conf))
        ng.start()

        # Through nginx: tenant headers reach privax (the rows carry them), streams work.
        for i in range(16):
            r = request(port, "POST", "/v1/chat/completions", harness.chat_body(prompt="via nginx %d" % i),
                        headers=auth_headers(tenant="t%d" % (i % 3), X_User_ID="u%d" % i, X_Plan_Tier="pro",
                                             X_Request_ID="req-%d" % i))
            self.assertCompletion(r)
            self.assertEqual(r.header("X-Request-ID"), "req-%d" % i)
        r = request(port, "POST", "/v1/chat/completions", harness.chat_body(model=OPENAI_MODEL, stream=True),
                    headers=auth_headers())
        self.assertCompleteStream(r, harness.Stream(r.body))
        counts = wait_for(lambda: (lambda c: c if sum(c) == 17 else None)(self.per_node(gws)), T(10),
                          "17 requests metered across the nodes")
        self.assertTrue(all(c > 0 for c in counts), "nginx sent everything to one node: %r" % counts)
        rows = wait_for(lambda: (lambda rs: rs if len(rs) == 17 else None)(gws[0].rows() + gws[1].rows()),
                        T(15), "17 usage rows across the nodes")
        self.assertEqual({r["node_id"] for r in rows}, {"node1", "node2"})
        by_req = {r["request_id"]: r for r in rows}
        self.assertEqual(by_req["req-4"]["tenant_id"], "t1")
        self.assertEqual(by_req["req-4"]["user_id"], "u4")
        self.assertEqual(by_req["req-4"]["plan_tier"], "pro")

        # Kill node 1 outright: every non-streaming request still succeeds, through node 2.
        gws[0].child.expected_exit = True
        gws[0].child.stop(signal.SIGKILL)
        before = self.per_node([gws[1]])[0]
        for i in range(12):
            r = request(port, "POST", "/v1/chat/completions", harness.chat_body(prompt="after kill %d" % i),
                        headers=auth_headers())
            self.assertCompletion(r)
        wait_for(lambda: self.per_node([gws[1]])[0] == before + 12, T(10), "node 2 served all 12")
        self.assertIn("127.0.0.1:%d" % gws[0].port, ng.error_log())  # nginx saw node 1 fail

    def test_backup_node_serves_only_when_the_primary_is_gone(self):
        sim = self.h.start_sim()
        gws = [self.h.start_gateway(node_config(self.h, sim, n), name=n) for n in ("primary", "spare")]
        nodes = write_nodes(self.h, [{"name": "primary", "url": gws[0].url},
                                     {"name": "spare", "url": gws[1].url, "backup": True}])
        port = harness.free_port()
        conf = self.render(nodes, "127.0.0.1:%d" % port, "--method", "round_robin")
        self.assertNotIn("least_conn;", conf)
        self.assertRegex(conf, r"server 127\.0\.0\.1:%d max_fails=3 fail_timeout=30s backup;" % gws[1].port)
        ng = nginx.Nginx(self.h, conf, port=port)
        ok, out = ng.check()
        self.assertTrue(ok, out)
        ng.start()
        for _ in range(6):
            self.assertCompletion(request(port, "POST", "/v1/chat/completions", harness.chat_body(),
                                          headers=auth_headers()))
        self.assertEqual(self.per_node(gws), [6, 0])
        gws[0].child.expected_exit = True
        gws[0].child.stop(signal.SIGKILL)
        for _ in range(4):
            self.assertCompletion(request(port, "POST", "/v1/chat/completions", harness.chat_body(),
                                          headers=auth_headers()))
        wait_for(lambda: self.per_node([gws[1]]) == [4], T(10), "the backup served 4")

    def test_deploy_example_is_current_and_valid(self):
        """deploy/nginx.conf is exactly what nginx-conf renders from deploy/nodes.yaml, and nginx
        accepts it; the two example privax configs pass `privax config check`."""
        deploy = os.path.join(harness.REPO, "deploy")
        # Rendered from the repo root, as the file's header says.
        p = subprocess.run([harness.PRIVAX_BIN, "nodes", "nginx-conf", "--nodes", "deploy/nodes.yaml"],
                           capture_output=True, cwd=harness.REPO, timeout=T(30))
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(os.path.join(deploy, "nginx.conf"), "rb") as f:
            self.assertEqual(p.stdout.decode(), f.read().decode(),
                             "deploy/nginx.conf is stale: privax nodes nginx-conf --nodes deploy/nodes.yaml "
                             "> deploy/nginx.conf")
        ng = nginx.Nginx(self.h, re.sub(r"listen 80;", "listen 127.0.0.1:%d;" % harness.free_port(),
                                        p.stdout.decode()))
        ok, out = ng.check()
        self.assertTrue(ok, out)
        for n in ("privax-node1.yaml", "privax-node2.yaml"):
            c = self.h.privax(["config", "check", os.path.join(deploy, n)])
            self.assertEqual(c.returncode, 0, c.stderr)
        # The systemd unit, with the binary where the unit expects it (when systemd-analyze is
        # on the machine; systemd is not PID 1 here, so this is as far as it can be checked).
        sa = shutil.which("systemd-analyze")
        if sa:
            with open(os.path.join(deploy, "privax.service")) as f:
                unit = f.read().replace("/usr/local/bin/privax", harness.PRIVAX_BIN)
            up = self.h.path("privax.service")
            with open(up, "w") as f:
                f.write(unit)
            v = subprocess.run([sa, "verify", "--man=no", up], capture_output=True, timeout=T(60))
            self.assertEqual((v.returncode, v.stdout + v.stderr), (0, b""))


if __name__ == "__main__":
    unittest.main()
