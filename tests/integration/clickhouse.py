"""A real ClickHouse server for the integration tests (Debian's clickhouse-server, 18.16 here).

Started as root with its own config in a temp dir, on free loopback ports, like every other child
of the harness (stderr in a file, watchdog, PR_SET_PDEATHSIG, pid recorded in PX_CHILD_PIDS), and
stopped with SIGTERM at teardown. It can be stopped and started again on the same ports and data
(the "ClickHouse down for a while" tests).

    ch = ClickHouse(harness)          # writes DIR/config.xml + users.xml, does not start
    ch.start()                        # waits for GET /ping -> "Ok."
    ch.query("SELECT 1")              # one statement per request (18.16), text result
    ch.query_json("SELECT ...")       # rows as dicts (FORMAT JSON, 64-bit integers unquoted)
    ch.stop()                         # SIGTERM, wait
    ch.url, ch.http_port

Python 3 standard library only.
"""

import base64
import json
import os
import shutil
import signal
import urllib.error
import urllib.parse
import urllib.request

import harness

SERVER_BIN = "/usr/sbin/clickhouse-server"


def available():
    return os.path.exists(SERVER_BIN) and os.access(SERVER_BIN, os.X_OK)


CONFIG_XML = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <interserver_http_port>{inter_port}</interserver_http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>8589934592</uncompressed_cache_size>
    <mark_cache_size>53687091</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

USERS_XML = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <privax>
            <password>{password}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </privax>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""

PASSWORD = "ch-secret-1"   # the password of user "privax" (tests pass it via password_env)


class ClickHouseError(AssertionError):
    pass


class ClickHouse:
    def __init__(self, h, name="clickhouse"):
        self.h = h
        self.name = name
        self.dir = h.path(name)
        os.makedirs(os.path.join(self.dir, "log"), exist_ok=True)
        self._pick_ports()
        with open(os.path.join(self.dir, "users.xml"), "w") as f:
            f.write(USERS_XML.format(password=PASSWORD))
        self.child = None
        self.starts = 0
        self.ever_up = False  # a restart keeps its ports (clients know them)

    def _pick_ports(self):
        self.http_port = harness.free_port()
        self.tcp_port = harness.free_port()
        inter = harness.free_port()
        with open(os.path.join(self.dir, "config.xml"), "w") as f:
            f.write(CONFIG_XML.format(dir=self.dir, http_port=self.http_port, tcp_port=self.tcp_port,
                                      inter_port=inter))
        self.url = "http://127.0.0.1:%d" % self.http_port

    # ---- lifecycle

    def start(self, timeout=None):
        # A port that was free when picked can be taken by someone's ephemeral port before
        # the server binds it (three ports: it happens). Before the first start nobody knows
        # the ports yet, so pick new ones and try again; a restart must keep its ports.
        for attempt in range(3):
            try:
                self._start(timeout)
                self.ever_up = True
                return self
            except harness.Fatal as e:
                if self.ever_up or attempt == 2 or "Address already in use" not in str(e):
                    raise
                self._pick_ports()

    def _start(self, timeout=None):
        self.starts += 1
        name = "%s-%d" % (self.name, self.starts) if self.starts > 1 else self.name
        self.child = self.h.spawn(name, [SERVER_BIN, "--config-file=%s" % os.path.join(self.dir, "config.xml")])
        # ClickHouse writes nothing to stderr on success; its own log has the details.
        def ready():
            if not self.child.alive():
                self.child.expected_exit = True
                raise harness.Fatal("clickhouse-server exited with %s: %s\n%s" % (
                    self.child.popen.returncode, self.child.stderr()[-2000:], self.errlog()))
            return self.ping()
        harness.wait_for(ready, timeout or harness.T(30), "clickhouse-server to answer /ping")
        return self

    def ping(self):
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                return r.read().strip() == b"Ok."
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, sig=signal.SIGTERM):
        if self.child is None:
            return
        self.child.expected_exit = True
        self.child.stop(sig, harness.T(30))
        self.child = None

    def errlog(self):
        try:
            with open(os.path.join(self.dir, "log", "clickhouse-server.err.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    # ---- queries (HTTP interface, one statement per request)

    def query(self, sql, database=None, user="default", password="", timeout=30, data=None,
              settings=None):
        params = {"query": sql} if data is not None else {}
        params.update(settings or {})
        if database:
            params["database"] = database
        url = self.url + "/?" + urllib.parse.urlencode(params)
        body = data if data is not None else sql.encode("utf-8")
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Authorization", "Basic " + base64.b64encode(
            ("%s:%s" % (user, password)).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=harness.T(timeout)) as r:
                text = r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise ClickHouseError("ClickHouse %d for %r: %s" % (e.code, sql[:300], e.read()[:2000]))
        if "e.displayText() = DB::Exception" in text:
            raise ClickHouseError("ClickHouse exception for %r: %s" % (sql[:300], text[:2000]))
        return text

    def query_json(self, sql, **kw):
        kw.setdefault("settings", {})["output_format_json_quote_64bit_integers"] = "0"
        text = self.query(sql + " FORMAT JSON", **kw)
        return json.loads(text)["data"]

    def scalar(self, sql, **kw):
        return self.query(sql, **kw).strip()


def remove_dir(path):
    shutil.rmtree(path, ignore_errors=True)


class FaultProxy:
    """An HTTP proxy in front of ClickHouse that can spoil the replies to INSERTs.

    mode "pass": forward everything. "exception200": forward the next `count` INSERTs (so
    their rows land) and answer 200 with a ClickHouse exception in the body. "cut": forward
    them and cut the reply off mid-body. "error500": do not forward, answer 500. Other
    requests (SELECTs, DDL) always pass. `faulted` counts spoiled INSERTs."""

    def __init__(self, ch):
        import http.server
        import socketserver
        import threading
        self.ch = ch
        self.mode = "pass"
        self.count = 0
        self.faulted = 0
        self.inserts = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                is_insert = "query=INSERT" in self.path or "query=insert" in self.path
                with proxy.lock:
                    mode = proxy.mode if is_insert and proxy.count > 0 else "pass"
                    if is_insert:
                        proxy.inserts += 1
                    if mode != "pass":
                        proxy.count -= 1
                        proxy.faulted += 1
                if mode == "error500":
                    return self._reply(500, b"Code: 999, e.displayText() = DB::Exception: injected by the test proxy\n")
                status, data = proxy._forward(self.path, body, self.headers.get("Authorization"))
                if mode == "exception200":
                    return self._reply(200, data + b"Code: 1000, e.displayText() = DB::Exception: injected after success, e.what() = DB::Exception\n")
                if mode == "cut":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"partial")
                    self.wfile.flush()
                    self.close_connection = True
                    import socket as _s
                    try:
                        self.connection.shutdown(_s.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                return self._reply(status, data)

            def do_GET(self):
                status, data = proxy._forward(self.path, None, self.headers.get("Authorization"), "GET")
                self._reply(status, data)

            def _read_chunked(self):
                out = b""
                while True:
                    line = self.rfile.readline().strip()
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def _reply(self, status, data):
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _forward(self, path, body, auth, method="POST"):
        req = urllib.request.Request(self.ch.url + path, data=body, method=method)
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            return 502, ("proxy: %s" % e).encode()

    def fault(self, mode, count=1):
        with self.lock:
            self.mode = mode
            self.count = count

    def close(self):
        self.server.shutdown()
        self.server.server_close()
