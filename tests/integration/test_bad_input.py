"""Issue 2, "Bad input that must get a clear 4xx JSON error and no crash": every case against one
gateway (which is also how we know it keeps serving), each followed by a good request."""

import json
import socket
import time
import unittest

from harness import (OLLAMA_MODEL, TENANT, TOKEN, SharedStackTestCase, Stream, T, UUID_RE,
                     auth_headers, chat_body, curl, raw_request, read_http_response, request)

BODY_CAP = 64 * 1024
HEADER_CAP = 16 * 1024

INVALID_REQUEST = "invalid_request_error"
AUTH_ERROR = "authentication_error"


def raw(method, path, headers, body=b""):
    """A raw HTTP/1.1 request (bytes), so that we can send what http.client refuses to."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    lines += ["%s: %s" % (k, v) for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def good_body(**kw):
    return json.dumps(chat_body(**kw)).encode()


class BadInputTest(SharedStackTestCase):
    cfg_overrides = {"http": {"body_max_bytes": BODY_CAP, "header_max_bytes": HEADER_CAP,
                              "header_timeout_ms": 1000}}

    def tearDown(self):
        # After every bad input the same gateway must still answer a good request.
        r = self.gw.chat(prompt="still serving?")
        self.assertCompletion(r)

    def post(self, body, headers=None):
        return self.gw.post("/v1/chat/completions", body, headers=auth_headers() if headers is None else headers)

    # ---- tenant header

    def test_missing_tenant(self):
        h = {"Authorization": "Bearer " + TOKEN}
        self.assertErrorJSON(self.post(chat_body(), h), 400, "missing_header", INVALID_REQUEST)

    def test_empty_tenant(self):
        self.assertErrorJSON(self.post(chat_body(), auth_headers(tenant="")), 400, "missing_header",
                             INVALID_REQUEST)

    def test_tenant_too_long(self):
        self.assertErrorJSON(self.post(chat_body(), auth_headers(tenant="t" * 129)), 400, "invalid_value",
                             INVALID_REQUEST)
        # 128 bytes is the limit, not over it.
        self.assertCompletion(self.post(chat_body(), auth_headers(tenant="t" * 128)))

    def test_tenant_with_tab(self):
        """HTAB is legal inside an HTTP header value, but not in a tenant id: the gateway's check."""
        r = raw_request(self.gw.port, raw("POST", "/v1/chat/completions",
                                          [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", "ac\tme"),
                                           ("Content-Type", "application/json")], good_body()))
        self.assertErrorJSON(r, 400, "invalid_value", INVALID_REQUEST)

    def test_tenant_with_control_chars(self):
        """Other control characters are not even legal HTTP; any clear 400 JSON error will do."""
        for bad in ("ac\x01me", "acme\x7f", "ac\x1bme"):
            with self.subTest(tenant=repr(bad)):
                r = raw_request(self.gw.port, raw("POST", "/v1/chat/completions",
                                                  [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", bad),
                                                   ("Content-Type", "application/json")], good_body()))
                self.assertErrorJSON(r, 400)

    # ---- bearer token

    def test_missing_bearer(self):
        self.assertErrorJSON(self.post(chat_body(), {"X-Tenant-ID": TENANT}), 401, "invalid_token", AUTH_ERROR)

    def test_malformed_bearer(self):
        for value in ("Basic dGVzdC10b2tlbjo=", "Bearer", "Bearer ", "test-token", "Bearer test-token extra",
                      "Token test-token"):
            with self.subTest(authorization=value):
                r = self.post(chat_body(), {"X-Tenant-ID": TENANT, "Authorization": value})
                self.assertErrorJSON(r, 401, "invalid_token", AUTH_ERROR)

    def test_wrong_bearer(self):
        for tok in ("wrong-token", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * 4096):
            with self.subTest(token=tok[:20]):
                self.assertErrorJSON(self.post(chat_body(), auth_headers(token=tok)), 401, "invalid_token",
                                     AUTH_ERROR)

    def test_errors_carry_request_id(self):
        for headers, body, status in ((auth_headers(**{"X-Request-ID": "bad-1"}), b"nope", 400),
                                      ({"X-Tenant-ID": TENANT, "X-Request-ID": "bad-2"}, chat_body(), 401),
                                      (auth_headers(**{"X-Request-ID": "bad-3"}), chat_body(model="no-such"), 404)):
            r = self.post(body, headers)
            self.assertEqual(r.status, status, r)
            self.assertEqual(r.header("X-Request-ID"), headers["X-Request-ID"], r)
        r = self.post(b"nope")
        self.assertTrue(UUID_RE.match(r.header("X-Request-ID") or ""), r)

    # ---- body: JSON shape

    def test_body_not_json(self):
        for body in (b"not json", b'{"model": ', b"", b"{'model': 'x'}", b'{"model":"a"} trailing'):
            with self.subTest(body=body):
                self.assertErrorJSON(self.post(body), 400, "invalid_json", INVALID_REQUEST)

    def test_nul_escape_in_a_string_is_named_plainly(self):
        body = b'{"model":"x","messages":[{"role":"user","content":"a\\u0000b"}]}'
        r = self.post(body)
        self.assertErrorJSON(r, 400, "invalid_json", INVALID_REQUEST)
        msg = json.loads(r.body)["error"]["message"]
        self.assertIn("\\u0000 is not allowed in a string", msg)
        self.assertNotIn("JSON_ALLOW_NUL", msg)

    def test_json_not_object(self):
        for body in (b"[]", b'"hello"', b"42", b"null", b"true", json.dumps([chat_body()]).encode()):
            with self.subTest(body=body[:30]):
                self.assertErrorJSON(self.post(body), 400, "invalid_value", INVALID_REQUEST)

    def test_messages_missing_empty_or_not_array(self):
        for msgs in ("<missing>", [], {}, "hello", None, 5):
            with self.subTest(messages=msgs):
                b = {"model": OLLAMA_MODEL}
                if msgs != "<missing>":
                    b["messages"] = msgs
                self.assertErrorJSON(self.post(b), 400, "invalid_value", INVALID_REQUEST)

    def test_message_without_role_or_content(self):
        for msgs in ([{"content": "hi"}], [{"role": "user"}], [{}], ["hi"], [None],
                     [{"role": 1, "content": "hi"}], [{"role": "user", "content": 5}],
                     [{"role": "user", "content": "ok"}, {"content": "second lacks role"}]):
            with self.subTest(messages=msgs):
                self.assertErrorJSON(self.post({"model": OLLAMA_MODEL, "messages": msgs}), 400, "invalid_value",
                                     INVALID_REQUEST)

    def test_model_missing(self):
        for model in ("<missing>", None, 7, ["x"], {}):
            with self.subTest(model=model):
                b = chat_body()
                if model == "<missing>":
                    del b["model"]
                else:
                    b["model"] = model
                self.assertErrorJSON(self.post(b), 400, "invalid_value", INVALID_REQUEST)

    def test_model_unknown(self):
        self.assertErrorJSON(self.post(chat_body(model="gpt-17-turbo")), 404, "model_not_found")

    def test_model_empty_string(self):
        """"" is either a missing model (400 invalid_value) or an unknown one (404): both are fine."""
        r = self.post(chat_body(model=""))
        self.assertIn(r.status, (400, 404), r)
        self.assertErrorJSON(r, r.status, "invalid_value" if r.status == 400 else "model_not_found")

    def test_stream_not_bool(self):
        for v in ("true", 1, 0, "yes", {}, []):
            with self.subTest(stream=v):
                b = chat_body()
                b["stream"] = v
                self.assertErrorJSON(self.post(b), 400, "invalid_value", INVALID_REQUEST)

    def test_max_tokens_invalid(self):
        for v in (-1, 0, "100", 1.5, True, [], {}):
            with self.subTest(max_tokens=v):
                self.assertErrorJSON(self.post(chat_body(max_tokens=v)), 400, "invalid_value", INVALID_REQUEST)
        for v in (10 ** 12, 2 ** 63, 10 ** 30):
            with self.subTest(max_tokens=v):
                self.assertErrorJSON(self.post(chat_body(max_tokens=v)), 400, type_=INVALID_REQUEST,
                                     codes=("invalid_value", "context_length_exceeded"))

    def test_temperature_out_of_range(self):
        for v in (-0.1, 2.01, 100, -5, "hot", [], True):
            with self.subTest(temperature=v):
                self.assertErrorJSON(self.post(chat_body(temperature=v)), 400, "invalid_value", INVALID_REQUEST)

    def test_invalid_utf8_in_body(self):
        for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"):
            with self.subTest(bytes=bad):
                body = b'{"model":"' + OLLAMA_MODEL.encode() + b'","messages":[{"role":"user","content":"a' + bad + b'b"}]}'
                self.assertErrorJSON(self.post(body), 400, type_=INVALID_REQUEST, codes=("invalid_json", "invalid_value"))

    # ---- size caps

    def _over_cap(self, head):
        """Send head; if the server waits for the body, send it; the answer must be 413."""
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30)) as s:
            s.sendall(head)
            s.settimeout(2)
            try:
                first = s.recv(1, socket.MSG_PEEK)
            except socket.timeout:
                first = None
            if first is None:
                try:
                    s.sendall(b'{"model":"' + b"x" * (BODY_CAP + 1024) + b'"}')
                except (BrokenPipeError, ConnectionResetError):
                    pass
            return read_http_response(s, T(30))

    def test_body_over_cap_content_length(self):
        head = raw("POST", "/v1/chat/completions",
                   [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT),
                    ("Content-Type", "application/json"), ("Content-Length", str(BODY_CAP + 1024 + 12))])
        self.assertErrorJSON(self._over_cap(head), 413)

    def test_body_over_cap_sent(self):
        """The whole oversized body actually sent (a client that does not wait)."""
        big = json.dumps(chat_body(prompt="x" * (BODY_CAP + 10))).encode()
        try:
            r = self.post(big)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.fail("gateway reset the connection instead of answering 413: %r" % e)
        self.assertErrorJSON(r, 413)

    def test_body_just_under_cap_is_not_413(self):
        b = chat_body(prompt="")
        pad = BODY_CAP - len(json.dumps(b)) - 64
        b["messages"][0]["content"] = "y" * pad
        r = self.post(b)
        self.assertNotEqual(r.status, 413, r)

    def test_chunked_body_over_cap(self):
        head = raw("POST", "/v1/chat/completions",
                   [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT),
                    ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30)) as s:
            s.sendall(head)
            try:
                for _ in range(BODY_CAP // 4096 + 4):
                    s.sendall(b"1000\r\n" + b"z" * 4096 + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = read_http_response(s, T(30))
        self.assertErrorJSON(r, 413)

    def test_header_over_cap(self):
        h = auth_headers()
        h["X-Padding"] = "p" * (HEADER_CAP + 100)
        try:
            r = request(self.gw.port, "POST", "/v1/chat/completions", json.dumps(chat_body()).encode(), h)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.fail("gateway reset the connection instead of answering 431: %r" % e)
        self.assertErrorJSON(r, 431)

    def test_many_headers_over_cap(self):
        hs = [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT)]
        hs += [("X-H%d" % i, "v" * 60) for i in range(HEADER_CAP // 60 + 10)]
        r = raw_request(self.gw.port, raw("GET", "/health", hs))
        self.assertErrorJSON(r, 431)

    # ---- transfer framing

    def test_chunked_request_body(self):
        """Chunked request bodies are decoded (or refused clearly): no hang, no crash."""
        body = good_body(prompt="chunked body")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        req = raw("POST", "/v1/chat/completions",
                  [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT),
                   ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
                  chunks + b"0\r\n\r\n")
        r = raw_request(self.gw.port, req, T(30))
        if r.status == 200:
            self.assertCompletion(r)
        else:
            self.assertErrorJSON(r, r.status)
            self.assertIn(r.status, (400, 411, 413, 415, 501), r)

    def test_expect_100_continue_curl(self):
        big = json.dumps(chat_body(prompt="e" * 2048))
        rc, r, err = curl([self.gw.url + "/v1/chat/completions", "-H", "Authorization: Bearer " + TOKEN,
                           "-H", "X-Tenant-ID: " + TENANT, "-H", "Content-Type: application/json",
                           "-H", "Expect: 100-continue", "-d", big])
        self.assertEqual(rc, 0, err)
        self.assertCompletion(r)

    def test_expect_100_continue_answered(self):
        """A client that waits for 100 Continue before sending a valid body gets it (RFC 9110 10.1.1)."""
        body = good_body(prompt="f" * 2048)
        head = raw("POST", "/v1/chat/completions",
                   [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT),
                    ("Content-Type", "application/json"), ("Expect", "100-continue"),
                    ("Content-Length", str(len(body)))])
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30)) as s:
            s.sendall(head)
            try:
                r = read_http_response(s, T(10), allow_interim=True)
            except socket.timeout:
                self.fail("no 100 Continue while the client waits for it")
            self.assertEqual(r.status, 100, "expected 100 Continue for a valid request: %r" % r)
            s.sendall(body)
            r = read_http_response(s, T(30))
            self.assertCompletion(r)

    def test_expect_100_continue_rejected_early(self):
        """A request that will fail anyway (bad token) is answered without waiting for the body."""
        head = raw("POST", "/v1/chat/completions",
                   [("Authorization", "Bearer nope"), ("X-Tenant-ID", TENANT),
                    ("Content-Type", "application/json"), ("Expect", "100-continue"),
                    ("Content-Length", "5000")])
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(30)) as s:
            s.sendall(head)
            r = read_http_response(s, T(10), allow_interim=True)
            if r.status == 100:
                s.sendall(b"{" + b" " * 4998 + b"}")
                r = read_http_response(s, T(30))
        self.assertErrorJSON(r, 401, "invalid_token")

    # ---- routes and protocol garbage

    def test_unknown_route(self):
        for method, path in (("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/"), ("POST", "/v1/chat/completions/x")):
            with self.subTest(path=path):
                r = self.gw.post(path, chat_body(), auth_headers()) if method == "POST" else self.gw.get(path, auth_headers())
                self.assertErrorJSON(r, 404)

    def test_wrong_method(self):
        r = self.gw.get("/v1/chat/completions", auth_headers())
        self.assertIn(r.status, (404, 405), r)
        self.assertErrorJSON(r, r.status)

    def test_garbage_request_line(self):
        for junk in (b"HELLO\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                     b"POST /v1/chat/completions HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            with self.subTest(junk=junk[:20]):
                with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(10)) as s:
                    s.sendall(junk)
                    try:
                        r = read_http_response(s, T(10))
                        self.assertGreaterEqual(r.status, 400, r)
                        self.assertLess(r.status, 500, r)
                    except ConnectionError:
                        pass  # closing the connection is a fine answer to garbage

    def test_framing_errors_say_which_rule(self):
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        cases = ((head + b"Content-Length: -5\r\n\r\n", "content-length"),
                 (head + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "content-length"),
                 (head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
                 (head + b"X-A: 1\x7f\r\n\r\n", "header"),
                 (b"CONNECT x:443 HTTP/1.1\r\n\r\n", "CONNECT"))
        for raw, what in cases:
            with self.subTest(raw=raw[-40:]):
                with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(10)) as s:
                    s.sendall(raw)
                    r = read_http_response(s, T(10))
                self.assertEqual(r.status, 400, r)
                msg = json.loads(r.body)["error"]["message"]
                self.assertTrue(msg.startswith("malformed HTTP request: "), msg)
                self.assertIn(what, msg)

    def test_truncated_body_then_close(self):
        req = raw("POST", "/v1/chat/completions",
                  [("Authorization", "Bearer " + TOKEN), ("X-Tenant-ID", TENANT),
                   ("Content-Type", "application/json"), ("Content-Length", "1000")], b'{"model":')
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(10)) as s:
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(T(10))
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass

    def test_slow_header_times_out(self):
        """http.header_timeout_ms (1 s here): a client that never finishes its head is dropped."""
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=T(10)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Ten")
            t0 = time.monotonic()
            s.settimeout(T(10))
            try:
                data = s.recv(65536)
                while data and b"\r\n\r\n" not in data:
                    more = s.recv(65536)
                    if not more:
                        break
                    data += more
            except ConnectionResetError:
                data = b""
            except socket.timeout:
                self.fail("connection still open %.0fs after a 1 s header timeout" % (time.monotonic() - t0))
            if data:
                self.assertTrue(data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 400"), data[:200])


class DefaultCapsTest(SharedStackTestCase):
    """No http: section: the documented defaults (4 MiB body, 16 KiB header block)."""

    def test_default_body_cap_is_4mib(self):
        b = json.dumps(chat_body(prompt="q" * (4 * 1024 * 1024))).encode()
        try:
            r = self.gw.post("/v1/chat/completions", b, auth_headers())
        except (BrokenPipeError, ConnectionResetError) as e:
            self.fail("gateway reset the connection instead of answering 413: %r" % e)
        self.assertErrorJSON(r, 413)

    def test_default_header_cap_is_16kib(self):
        h = auth_headers()
        h["X-Padding"] = "p" * (16 * 1024 + 10)
        self.assertErrorJSON(self.gw.get("/health", h), 431)
        h["X-Padding"] = "p" * (8 * 1024)
        r = self.gw.chat(headers=h)
        self.assertCompletion(r)


if __name__ == "__main__":
    unittest.main()
