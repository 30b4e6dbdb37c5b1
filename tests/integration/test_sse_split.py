"""SSE relay across every read boundary, against a scripted `openai` upstream (fakes/): one byte
at a time, CRLF, several events per write, multi-byte UTF-8 split across writes. The client must
get every event intact and well-formed, valid UTF-8, the content exactly, the last usage seen
(never a sum), then [DONE]."""

import json
import unittest

from harness import SSEError, Stream, T, TestCase, auth_headers, chat_body

PIECES = ["Hello", ", wörld", ": 日本語", " 😀😀", " naïve café", " — ok", "!", " ½ 𝄞 end"]
CONTENT = "".join(PIECES)
USAGE = {"prompt_tokens": 11, "completion_tokens": len(PIECES), "total_tokens": 11 + len(PIECES)}
MODEL = "fake-model"
UPSTREAM_MODEL = "upstream-fake"


def chunk(delta=None, finish=None, usage=None, choices=True):
    c = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
         "model": UPSTREAM_MODEL,
         "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    if usage is not None:
        c["usage"] = usage
    return c


def sse_body(eol="\n", cumulative_usage=False, usage_chunk=True, comments=False, nospace=False,
             done=True, pieces=PIECES):
    events = [chunk({"role": "assistant", "content": ""})]
    for i, p in enumerate(pieces):
        u = None
        if cumulative_usage:
            u = {"prompt_tokens": 11, "completion_tokens": i + 1, "total_tokens": 12 + i}
        events.append(chunk({"content": p}, usage=u))
    events.append(chunk({}, finish="stop"))
    if usage_chunk:
        events.append(chunk(usage=USAGE, choices=False))
    out = []
    for e in events:
        if comments:
            out.append(": keep-alive" + eol)
        out.append(("data:" if nospace else "data: ") + json.dumps(e, ensure_ascii=False) + eol + eol)
    if done:
        out.append(("data:" if nospace else "data: ") + "[DONE]" + eol + eol)
    return "".join(out)


def json_body():
    return json.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                       "model": UPSTREAM_MODEL,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT},
                                    "finish_reason": "stop"}],
                       "usage": USAGE}, ensure_ascii=False)


def split_inside_multibyte(text):
    """Write sizes that cut every multi-byte character in the middle."""
    data = text.encode("utf-8")
    sizes, last = [], 0
    pos = 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if n > 1:
            cut = pos + 1
            sizes.append(cut - last)
            last = cut
        pos += n
    sizes.append(len(data) - last)
    return [s for s in sizes if s > 0]


class SSESplitTest(TestCase):

    def start(self, stream_route, json_route=None, idle_ms=None):
        routes = [dict({"method": "POST", "path": "/v1/chat/completions", "stream": True, "status": 200,
                        "headers": [["Content-Type", "text/event-stream"]]}, **stream_route)]
        routes.append(dict({"method": "POST", "path": "/v1/chat/completions", "stream": False, "status": 200,
                            "headers": [["Content-Type", "application/json"]], "body": json_body(),
                            "writes": 1}, **(json_route or {})))
        self.fake = self.h.start_fake({"routes": routes, "models": [UPSTREAM_MODEL]})
        cfg = self.h.gateway_config(
            [{"name": "fake0", "url": self.fake.url, "protocol": "openai", "gpu_id": 3, "max_concurrency": 4}],
            [{"name": MODEL, "upstream_model": UPSTREAM_MODEL, "backends": ["fake0"]}])
        if idle_ms is not None:
            cfg["timeouts"]["idle_ms"] = idle_ms
        self.gw = self.h.start_gateway(cfg)

    def upstream_requests(self):
        with open(self.fake.requests_log) as f:
            return [json.loads(line) for line in f]

    def check_stream(self, usage=USAGE):
        r, s = self.gw.stream(model=MODEL, prompt="split me", timeout=T(60))
        self.assertCompleteStream(r, s)
        self.assertEqual(s.content, CONTENT)
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        self.assertEqual({k: s.usage[k] for k in keys}, usage)
        return r, s

    def test_one_byte_writes(self):
        self.start({"body": sse_body(), "writes": 1})
        self.check_stream()

    def test_one_byte_writes_crlf(self):
        self.start({"body": sse_body(eol="\r\n"), "writes": 1})
        self.check_stream()

    def test_all_events_in_one_write_crlf(self):
        self.start({"body": sse_body(eol="\r\n")})
        self.check_stream()

    def test_several_events_per_write(self):
        self.start({"body": sse_body(), "writes": 300, "delay_ms": 2})
        self.check_stream()

    def test_several_events_per_write_odd_size(self):
        self.start({"body": sse_body(eol="\r\n"), "writes": 777, "delay_ms": 2})
        self.check_stream()

    def test_multibyte_split_across_writes(self):
        body = sse_body()
        self.start({"body": body, "writes": split_inside_multibyte(body), "delay_ms": 5})
        self.check_stream()

    def test_multibyte_split_three_byte_writes(self):
        self.start({"body": sse_body(eol="\r\n"), "writes": 3})
        self.check_stream()

    def test_comments_and_no_space_after_colon(self):
        """Both are plain SSE (a ': ping' comment line, 'data:' with no space); relays must cope."""
        self.start({"body": sse_body(comments=True, nospace=True), "writes": 5})
        self.check_stream()

    def test_last_usage_wins_not_sum(self):
        """vLLM continuous usage: every chunk carries cumulative usage; the final one is the truth."""
        self.start({"body": sse_body(cumulative_usage=True), "writes": 1})
        self.check_stream()

    def test_upstream_request_has_include_usage_and_upstream_model(self):
        self.start({"body": sse_body()})
        self.check_stream()
        reqs = [r for r in self.upstream_requests() if r["path"] == "/v1/chat/completions"]
        self.assertEqual(len(reqs), 1, reqs)
        body = json.loads(reqs[0]["body"])
        self.assertEqual(body.get("model"), UPSTREAM_MODEL, body)
        self.assertIs(body.get("stream"), True, body)
        self.assertIs((body.get("stream_options") or {}).get("include_usage"), True, body)
        self.assertEqual(body.get("messages"), chat_body(prompt="split me")["messages"], body)
        # The platform's credentials are not forwarded to the inference server.
        self.assertNotIn("test-token", json.dumps(reqs[0]["headers"]))

    def test_json_response_one_byte_writes(self):
        self.start({"body": sse_body()})
        r = self.gw.chat(model=MODEL, prompt="json please")
        j = self.assertCompletion(r)
        self.assertEqual(j["choices"][0]["message"]["content"], CONTENT)
        self.assertEqual(j["usage"]["total_tokens"], USAGE["total_tokens"])
        self.assertEqual(j["model"], MODEL, "the client sees the model name it asked for")

    def test_upstream_without_usage_still_gives_usage(self):
        """No usage from upstream: the client still gets a final usage chunk; the row says estimated."""
        self.start({"body": sse_body(usage_chunk=False), "writes": 7})
        rid = "no-usage-1"
        r, s = self.gw.stream(model=MODEL, prompt="count me", headers=auth_headers(**{"X-Request-ID": rid}))
        self.assertCompleteStream(r, s)
        self.assertEqual(s.content, CONTENT)
        self.assertGreater(s.usage["completion_tokens"], 0)
        row = self.gw.wait_rows(1, "request_id = ?", (rid,))[0]
        self.assertEqual(row["usage_estimated"], 1, row)
        self.assertEqual(row["total_tokens"], s.usage["total_tokens"], row)

    def test_upstream_idle_timeout_mid_stream(self):
        """The upstream stalls between chunks longer than timeouts.idle_ms: the client gets what
        came, then an error event, and no [DONE]."""
        body = sse_body()
        first = body.index("data: ", body.index(PIECES[2]))  # three whole events, then a stall
        self.start({"body": body, "writes": [first, len(body) - first], "delay_ms": 4000}, idle_ms=1000)
        r, s = self.gw.stream(model=MODEL, prompt="stall", timeout=T(30))
        self.assertEqual(r.status, 200, r)
        self.assertFalse(s.done, "a stalled stream must not end with [DONE]: %r" % s.data[-3:])
        self.assertTrue(s.errors, "a stalled stream must end with an error event: %r" % s.data[-3:])
        self.assertIn("error", s.chunks[-1], s.data[-3:])
        self.assertTrue(CONTENT.startswith(s.content) and s.content, s.content)

    def test_upstream_cut_mid_stream(self):
        """The upstream connection closes mid-event (chunked body, no terminating chunk)."""
        body = sse_body()
        cut = body.index(PIECES[4]) + 2
        self.start({"body": body[:cut], "writes": 9, "abort": True})
        r, s = self.gw.stream(model=MODEL, prompt="cut me")
        self.assertEqual(r.status, 200, r)
        self.assertFalse(s.done, "a cut stream must not end with [DONE]: %r" % s.data[-3:])
        self.assertTrue(s.errors, "a cut stream must end with an error event: %r" % s.data[-3:])
        self.assertIn("error", s.chunks[-1], "the error event must be the last one: %r" % s.data[-3:])
        self.assertTrue(CONTENT.startswith(s.content), s.content)


if __name__ == "__main__":
    unittest.main()
