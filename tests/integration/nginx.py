"""Real nginx for the integration suite, in the test's temp dir (ENVIRONMENT.md "nginx 1.22 in a
temp folder"): every path nginx writes (pid, logs, *_temp_path) is under the dir, it listens on a
free loopback port, runs in the foreground as one process (master_process off, so a SIGKILL
leaves no orphaned worker behind) under the harness's watchdog, and is stopped at teardown.

    ng = nginx.Nginx(h, body)      # body: what goes inside http { } (e.g. nodes nginx-conf output)
    ng.check()                     # nginx -t: (ok, output)
    ng.start()                     # then ng.port, ng.url
"""

import os
import shutil
import socket
import subprocess

import harness

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def available():
    return os.path.exists(NGINX)


class Nginx:
    def __init__(self, h, body, name="nginx", port=None):
        self.h = h
        self.name = name
        self.dir = h.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or harness.free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.child = None
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.body_path = os.path.join(self.dir, "privax.conf")
        with open(self.body_path, "w") as f:
            f.write(body)
        d = self.dir
        lines = []
        if os.geteuid() == 0:
            lines.append("user root;")
        lines += [
            "master_process off;",
            "worker_processes 1;",
            "pid %s/nginx.pid;" % d,
            "error_log %s/error.log warn;" % d,
            "events { worker_connections 512; }",
            "http {",
            "    access_log %s/access.log;" % d,
            "    client_body_temp_path %s/client_body;" % d,
            "    proxy_temp_path %s/proxy;" % d,
            "    fastcgi_temp_path %s/fastcgi;" % d,
            "    uwsgi_temp_path %s/uwsgi;" % d,
            "    scgi_temp_path %s/scgi;" % d,
            "    include %s;" % self.body_path,
            "}",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def argv(self, *extra):
        return [NGINX, "-p", self.dir + "/", "-c", self.conf, "-e", os.path.join(self.dir, "error.log")] + list(extra)

    def check(self):
        """nginx -t on the config: (ok, output)."""
        p = subprocess.run(self.argv("-t", "-q"), capture_output=True, timeout=harness.T(30))
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        return p.returncode == 0, out

    def start(self):
        self.child = self.h.spawn(self.name, self.argv("-g", "daemon off;"))

        def ready():
            if not self.child.alive():
                self.child.expected_exit = True
                raise harness.Fatal("nginx exited with %s: %s\n%s" % (
                    self.child.popen.returncode, self.child.stderr()[-2000:], self.error_log()[-2000:]))
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        harness.wait_for(ready, harness.T(20), "nginx to listen on %d" % self.port)
        return self

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "access.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.child is not None:
            self.child.expected_exit = True
            self.child.stop()
