"""A real Redis server for the integration tests (Debian's redis-server, 7.0 here).

Started like every other child of the harness (stderr in a file, watchdog, PR_SET_PDEATHSIG,
pid recorded in PX_CHILD_PIDS, stopped at teardown), on a free loopback port, with no
persistence: `--save '' --appendonly no`, its own --dir in the test's temp dir. It can be
killed and started again on the same port (the "Redis down for a while" tests); a restarted
server starts empty.

    r = RedisServer(h)            # picks a free port, does not start
    r.start()                     # waits until PING answers PONG (~80 ms)
    r.command("GET", "k")         # one command on a fresh connection (RESP), the decoded reply
    r.keys("privax:*")            # sorted list of str
    r.kill()                      # SIGKILL, like a crash; r.stop() is SIGTERM
    r.pause(); ...; r.kill()      # a crash with commands in flight: clients get a TCP reset
    r.start()                     # again, same port, empty
    r.url                         # redis://127.0.0.1:PORT

Python 3 standard library only (a few lines of RESP instead of redis-py).
"""

import os
import shutil
import signal
import socket

import harness

SERVER_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


def available():
    return os.path.exists(SERVER_BIN) and os.access(SERVER_BIN, os.X_OK)


class RedisError(AssertionError):
    pass


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        raise RedisError("redis error: %s" % rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:n]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f) for _ in range(n)]
    raise RedisError("unexpected RESP reply %r" % line)


class RedisServer:
    def __init__(self, h, name="redis", port=None):
        self.h = h
        self.name = name
        self.dir = h.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or harness.free_port()
        self.url = "redis://127.0.0.1:%d" % self.port
        self.child = None
        self.starts = 0
        self.paused = False

    # ---- lifecycle

    def start(self, timeout=None):
        self.starts += 1
        name = "%s-%d" % (self.name, self.starts) if self.starts > 1 else self.name
        argv = [SERVER_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log")]
        self.child = self.h.spawn(name, argv)
        self.paused = False

        def ready():
            if not self.child.alive():
                self.child.expected_exit = True
                raise harness.Fatal("redis-server exited with %s: %s\n%s" % (
                    self.child.popen.returncode, self.child.stderr()[-2000:], self.log()))
            return self.ping()
        harness.wait_for(ready, timeout or harness.T(20), "redis-server on port %d to answer PING" % self.port)
        return self

    def ping(self):
        try:
            return self.command("PING", timeout=1) == "PONG"
        except (OSError, ConnectionError, RedisError):
            return False

    def stop(self, sig=signal.SIGTERM):
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait for it."""
        if self.child is None:
            return
        self.child.expected_exit = True
        if sig != signal.SIGKILL:
            self.resume()
        self.child.stop(sig, harness.T(15))
        self.child = None
        self.paused = False

    def kill(self):
        self.stop(signal.SIGKILL)

    def pause(self):
        """SIGSTOP: the server stops reading; commands sent now wait in its socket buffers
        (killing it then makes the kernel reset those connections instead of closing them)."""
        self.child.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        if self.child is not None and self.paused:
            self.child.send_signal(signal.SIGCONT)
        self.paused = False

    def alive(self):
        return self.child is not None and self.child.alive()

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    # ---- commands

    def command(self, *args, timeout=None):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout or harness.T(10)) as s:
            s.sendall(_encode(args))
            with s.makefile("rb") as f:
                return _read_reply(f)

    def keys(self, pattern="*"):
        return sorted(self.command("KEYS", pattern) or [])

    def flushall(self):
        return self.command("FLUSHALL")
