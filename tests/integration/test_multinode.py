"""Issue 5's multi-node scenario end to end: two privax nodes, each with its own simulated GPU,
sharing one real ClickHouse (usage rows) and one real Redis (limits), behind a real nginx
running the config `privax nodes nginx-conf` renders. 500 non-streaming requests from four
clients; node 1 is SIGKILLed half-way. Every request still succeeds (nginx retries those node 1
never answered on node 2), `privax nodes check` sees node 1 down, every response has its usage
row, `privax usage --by node` shows both nodes, and node 1, restarted, rejoins."""

import json
import os
import signal
import threading
import unittest

import clickhouse
import harness
import nginx
import redis_server
from harness import T, wait_for

DB = "privax_mn"
CH_ENV = {"PX_CH_PASSWORD": clickhouse.PASSWORD}
TOTAL = 500
CLIENTS = 4


@unittest.skipUnless(clickhouse.available() and redis_server.available() and nginx.available(),
                     "needs clickhouse-server, redis-server and nginx (tools/deps.sh installs them)")
class TwoNodesTest(harness.TestCase):

    def node_cfg(self, sim, name, port, ch, redis):
        d = self.h.path("data-" + name)
        return self.h.sim_config(
            sim, node_id=name, listen="127.0.0.1:%d" % port, data_dir=d,
            store={"sqlite": os.path.join(d, "usage.db"),
                   "clickhouse": {"url": ch.url, "database": DB, "user": "privax",
                                  "password_env": "PX_CH_PASSWORD", "timeout_ms": 5000}},
            limits={"redis": redis.url, "nodes": 2})

    def metered(self, gw):
        import test_metrics
        return test_metrics.total(test_metrics.parse_prom(test_metrics.get_metrics(gw)), "privax_requests_total")

    def test_500_requests_node_killed_half_way(self):
        ch = clickhouse.ClickHouse(self.h).start()
        redis = redis_server.RedisServer(self.h).start()
        sims = [self.h.start_sim(name="sim%d" % i, seed=i) for i in (1, 2)]
        cfgs = [self.node_cfg(sims[i], "node%d" % (i + 1), 0, ch, redis) for i in (0, 1)]
        cfg_paths = [self.h.write_config(c, "node%d.yaml" % (i + 1)) for i, c in enumerate(cfgs)]
        p = self.h.privax(["migrate", "--config", cfg_paths[0]], env=CH_ENV)
        self.assertEqual(p.returncode, 0, p.stderr)
        gws = [self.h.start_gateway(cfgs[i], name="node%d" % (i + 1), env=CH_ENV) for i in (0, 1)]
        # The restart must come back on the same port (nginx's config names it).
        cfgs[0]["listen"] = "127.0.0.1:%d" % gws[0].port

        nodes = self.h.path("nodes.yaml")
        with open(nodes, "w") as f:
            f.write(harness.to_yaml({"nodes": [{"name": "node%d" % (i + 1), "url": g.url, "max_fails": 1,
                                                "fail_timeout_s": 1} for i, g in enumerate(gws)]}) + "\n")
        lb_port = harness.free_port()
        r = self.h.privax(["nodes", "nginx-conf", "--nodes", nodes, "--listen", "127.0.0.1:%d" % lb_port])
        self.assertEqual(r.returncode, 0, r.stderr)
        ng = nginx.Nginx(self.h, r.stdout.decode(), port=lb_port)
        ok, out = ng.check()
        self.assertTrue(ok, out)
        ng.start()

        # Four clients share the 500 requests; node 1 dies when half of them are answered.
        lock = threading.Lock()
        statuses = {}       # request id -> status through nginx
        failures = []       # requests that got no HTTP answer at all
        next_i = [0]
        half = threading.Event()

        def client(cid):
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= TOTAL:
                    return
                rid = "mn-%03d" % i
                try:
                    resp = harness.request(lb_port, "POST", "/v1/chat/completions",
                                           harness.chat_body(prompt="request %d" % i),
                                           headers=harness.auth_headers(tenant="t%d" % (i % 5),
                                                                        X_User_ID="u%d" % (i % 17),
                                                                        X_Request_ID=rid),
                                           timeout=T(60))
                except Exception as e:  # noqa: BLE001 - recorded and asserted on below
                    with lock:
                        failures.append((rid, repr(e)))
                    continue
                with lock:
                    statuses[rid] = resp.status
                    if len(statuses) >= TOTAL // 2:
                        half.set()

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        self.assertTrue(half.wait(T(120)), "half of the requests answered")
        gws[0].child.expected_exit = True
        gws[0].child.stop(signal.SIGKILL)
        for t in threads:
            t.join(T(180))
        self.assertEqual(failures, [])
        self.assertEqual(len(statuses), TOTAL)
        bad = {k: v for k, v in statuses.items() if v != 200}
        self.assertEqual(bad, {}, "every non-streaming request succeeds through nginx")

        # The operator's view while node 1 is down.
        chk = self.h.privax(["nodes", "check", "--nodes", nodes, "--json"])
        self.assertEqual(chk.returncode, 69, chk.stdout)
        st = {n["name"]: n["status"] for n in json.loads(chk.stdout)["nodes"]}
        self.assertEqual(st, {"node1": "unreachable", "node2": "ok"})

        # Node 1 comes back on its port with its spool (rows it had not shipped go out now).
        gw1 = self.h.start_gateway(cfgs[0], name="node1-restarted", env=CH_ENV)
        self.assertEqual(gw1.port, gws[0].port)
        chk = self.h.privax(["nodes", "check", "--nodes", nodes])
        self.assertEqual(chk.returncode, 0, chk.stdout)

        # Every response has its row in the shared ClickHouse. A request node 1 had served when
        # it was killed but whose answer never left it was retried by nginx on node 2: its id
        # may have two rows, at most one per client.
        def rows():
            return ch.query_json("SELECT request_id, node_id FROM llm_requests FINAL", database=DB)
        try:
            got = wait_for(lambda: (lambda rs: rs if set(statuses) <= {x["request_id"] for x in rs} else None)(
                rows()), T(60), "a usage row for every response")
        except AssertionError:
            missing = sorted(set(statuses) - {x["request_id"] for x in rows()})
            logs = {g.child.name: g.child.stderr() for g in gws + [gw1]}
            raise AssertionError("no usage row for %d response(s): %s; logged by: %s" % (
                len(missing), missing[:10],
                {m: [n for n, t in logs.items() if "request_id=%s " % m in t] for m in missing[:10]}))
        extra = len(got) - len(statuses)
        self.assertGreaterEqual(extra, 0)
        self.assertLessEqual(extra, CLIENTS, "more rows than responses beyond the in-flight retries")
        by = json.loads(self.h.privax(["usage", "--config", cfg_paths[1], "--by", "node", "--json"],
                                      env=CH_ENV).stdout)
        per_node = {x["node"]: x["requests"] for x in by}
        self.assertEqual(set(per_node), {"node1", "node2"})
        self.assertTrue(all(v > 0 for v in per_node.values()), per_node)
        self.assertEqual(sum(per_node.values()), len(got))

        # Rejoined: once its fail_timeout (1 s) has passed, nginx sends node 1 requests again.
        before = self.metered(gw1)

        def one_more():
            resp = harness.request(lb_port, "POST", "/v1/chat/completions", harness.chat_body(prompt="again"),
                                   headers=harness.auth_headers())
            if resp.status != 200:
                raise harness.Fatal("a request after the restart failed: %r" % resp)
            return self.metered(gw1) > before
        wait_for(one_more, T(20), "node 1 to serve again", interval=0.05)


if __name__ == "__main__":
    unittest.main()
