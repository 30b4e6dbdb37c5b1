#!/usr/bin/env python3
"""Write the mock upstream's fixed answers (run by hand; the outputs are committed):

  chat.json   a ~430-byte OpenAI chat.completion (model "bench-json")
  stream.sse  a ~13.5 KB OpenAI stream (model "bench-sse"): 52 events = a role chunk,
              48 content chunks, a finish chunk, a usage chunk (empty choices), data: [DONE]

The model names equal the names privax is configured with, so privax relays the bytes as
they are (no model rewrite), as it would for a vLLM backend serving the same name.
"""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
CREATED = 1733200000

def compact(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)

answer = ("This is the fixed answer of the benchmark's mock upstream: the same "
          "for every request, so the proxy is what is measured.")
chat = {
    "id": "chatcmpl-bench-0000000000000001", "object": "chat.completion", "created": CREATED,
    "model": "bench-json", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 40, "total_tokens": 64},
}
with open(os.path.join(HERE, "chat.json"), "w") as f:
    f.write(compact(chat))

words = ("The quick brown fox jumps over the lazy dog while the gateway relays every "
         "token as soon as it arrives from the upstream server and counts it for billing "
         "purposes without adding latency to the stream that the client is reading from "
         "its side of the connection today").split()

def chunk(delta, finish=None, usage=None, choices=True):
    o = {"id": "chatcmpl-bench-0000000000000002", "object": "chat.completion.chunk",
         "created": CREATED, "model": "bench-sse", "system_fingerprint": "fp_bench",
         "choices": [{"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": finish}] if choices else []}
    if usage is not None:
        o["usage"] = usage
    return "data: " + compact(o) + "\n\n"

events = [chunk({"role": "assistant", "content": ""})]
for i in range(48):
    # Two or three words per chunk, like a tokenizer's pieces grouped by a server's flushes.
    n = 4 + (i % 3)
    w = " ".join(words[(i * 3 + k) % len(words)] for k in range(n))
    events.append(chunk({"content": " " + w}))
events.append(chunk({}, finish="stop"))
events.append(chunk(None, usage={"prompt_tokens": 24, "completion_tokens": 192,
                                  "total_tokens": 216}, choices=False))
events.append("data: [DONE]\n\n")
assert len(events) == 52
with open(os.path.join(HERE, "stream.sse"), "w") as f:
    f.write("".join(events))
print("chat.json", os.path.getsize(os.path.join(HERE, "chat.json")), "bytes;",
      "stream.sse", os.path.getsize(os.path.join(HERE, "stream.sse")), "bytes,", len(events), "events")
