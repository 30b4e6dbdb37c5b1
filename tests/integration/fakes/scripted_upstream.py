#!/usr/bin/env python3
"""A scripted upstream: replays exact bytes with chosen write sizes, to pin down read boundaries.

    scripted_upstream.py --script S.json --port-file F [--log REQUESTS.jsonl]

It binds 127.0.0.1:0, writes the port to F and serves HTTP/1.1 (keep-alive) until killed.
The script is JSON:

    {"routes": [{
        "method": "POST", "path": "/v1/chat/completions",
        "stream": true,                    # optional: match only if the request's "stream" is this
        "status": 200,
        "headers": [["Content-Type", "text/event-stream"]],
        "body": "data: ...\\n\\n",           # text (sent as UTF-8), or "body_b64": "..."
        "writes": 1,                       # write size in bytes, a list of sizes, or omitted = all at once
        "delay_ms": 1,                     # pause between writes, so each lands in its own read
        "framing": "chunked",              # chunked (one HTTP chunk per write) | length | close
        "abort": false                     # true: close the connection after the last write
                                           # without the terminating chunk (a cut response)
    }]}

The first route that matches method, path and (if given) "stream" answers; anything else is a
404 JSON error. Every request is appended to the log as {"method","path","headers","body"}.
Only the standard library, like the rest of the suite.
"""

import argparse
import base64
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "scripted-upstream"

    def log_message(self, fmt, *args):  # quiet: stderr is for problems only
        pass

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        srv = self.server
        if srv.log_path:
            with LOG_LOCK, open(srv.log_path, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "headers": dict(self.headers.items()),
                                    "body": body.decode("utf-8", "replace")}) + "\n")
        path = self.path.split("?")[0]
        for route in srv.script.get("routes", []):
            if route.get("method", "POST") != self.command or route.get("path") != path:
                continue
            if "stream" in route and (not isinstance(parsed, dict) or bool(parsed.get("stream")) != route["stream"]):
                continue
            return self._replay(route)
        if self.command == "GET" and path in ("/health", "/v1/models"):
            data = b"{}" if path == "/health" else json.dumps(
                {"object": "list", "data": [{"id": m, "object": "model"} for m in srv.script.get("models", [])]}).encode()
            return self._simple(200, data)
        return self._simple(404, b'{"error":{"message":"no scripted route","type":"invalid_request_error","code":"not_found"}}')

    def _simple(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _replay(self, route):
        if "body_b64" in route:
            data = base64.b64decode(route["body_b64"])
        else:
            data = route.get("body", "").encode("utf-8")
        writes = route.get("writes")
        if writes is None:
            pieces = [data]
        elif isinstance(writes, int):
            pieces = [data[i:i + writes] for i in range(0, len(data), writes)]
        else:
            pieces, off = [], 0
            for n in writes:
                pieces.append(data[off:off + n])
                off += n
            if off < len(data):
                pieces.append(data[off:])
        pieces = [p for p in pieces if p]
        framing = route.get("framing", "chunked")
        delay = route.get("delay_ms", 1) / 1000.0

        self.send_response(route.get("status", 200))
        for k, v in route.get("headers", []):
            self.send_header(k, v)
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "length":
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        try:
            for p in pieces:
                if framing == "chunked":
                    sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
                else:
                    sock.sendall(p)
                if delay:
                    time.sleep(delay)
            if route.get("abort"):
                self.close_connection = True
                sock.shutdown(socket.SHUT_RDWR)
                return
            if framing == "chunked":
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_POST = _handle
    do_GET = _handle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    a = ap.parse_args()
    with open(a.script) as f:
        script = json.load(f)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            super().server_bind()

        def get_request(self):
            conn, addr = super().get_request()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, addr

    srv = Server(("127.0.0.1", 0), Handler)
    srv.script = script
    srv.log_path = a.log
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
