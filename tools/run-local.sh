#!/usr/bin/env bash
# `make run`: a simulated GPU node on 127.0.0.1:11434 in the background and the gateway on
# 127.0.0.1:8000 in the foreground, with examples/privax.yaml. The sim is stopped when serve
# exits, whatever the reason (Ctrl-C, SIGTERM, an error).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PRIVAX_BIN:-build/privax}
CONFIG=${PX_CONFIG:-examples/privax.yaml}
SIM_ADDR=127.0.0.1:11434
GW_ADDR=127.0.0.1:8000

[ -x "$BIN" ] || { echo "run: $BIN is missing; run 'make build' first" >&2; exit 1; }
[ -f "$CONFIG" ] || { echo "run: $CONFIG is missing" >&2; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for a in "$SIM_ADDR" "$GW_ADDR"; do
  if port_busy "$a"; then
    echo "run: $a is already in use (another 'make run'?); stop that first" >&2
    exit 1
  fi
done

"$BIN" config check "$CONFIG"
mkdir -p data

sim_pid=
cleanup() {
  if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
    kill -TERM "$sim_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$sim_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN" sim --listen "$SIM_ADDR" &
sim_pid=$!

for _ in $(seq 100); do
  port_busy "$SIM_ADDR" && break
  kill -0 "$sim_pid" 2>/dev/null || { echo "run: privax sim exited" >&2; exit 1; }
  sleep 0.1
done
port_busy "$SIM_ADDR" || { echo "run: privax sim did not listen on $SIM_ADDR" >&2; exit 1; }

cat <<MSG

privax sim is up on $SIM_ADDR (pid $sim_pid); starting privax serve on $GW_ADDR.
In another terminal, paste:

curl -sS http://$GW_ADDR/v1/chat/completions -H 'Authorization: Bearer test-token' -H 'X-Tenant-ID: acme' -H 'Content-Type: application/json' -d '{"model":"qwen2.5-coder:7b","messages":[{"role":"user","content":"Write hello world in C"}]}'

Streaming: add "stream":true to the body and -N to curl. Usage so far: $BIN usage --config $CONFIG
Ctrl-C stops both.

MSG

"$BIN" serve --config "$CONFIG"
