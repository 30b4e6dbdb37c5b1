#!/usr/bin/env bash
# `make run`: a simulated GPU node on 127.0.0.1:11434 in the background and the gateway on
# 127.0.0.1:8000 in the foreground, with examples/privax.yaml. The sim is stopped when serve
# exits, whatever the reason (Ctrl-C, SIGTERM, an error).
#
# Other ports: PX_SIM_ADDR=127.0.0.1:11435 PX_LISTEN=127.0.0.1:8001 make run writes a copy of
# the config to data/run.yaml with those two addresses (the sim URL in every backend).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PRIVAX_BIN:-build/privax}
CONFIG=${PX_CONFIG:-examples/privax.yaml}
SIM_ADDR=${PX_SIM_ADDR:-127.0.0.1:11434}
GW_ADDR=${PX_LISTEN:-127.0.0.1:8000}

[ -x "$BIN" ] || { echo "run: $BIN is missing; run 'make build' first" >&2; exit 1; }
[ -f "$CONFIG" ] || { echo "run: $CONFIG is missing" >&2; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for a in "$SIM_ADDR" "$GW_ADDR"; do
  if port_busy "$a"; then
    echo "run: $a is already in use (another 'make run'?); stop that, or pick other ports:" >&2
    echo "     PX_SIM_ADDR=127.0.0.1:11435 PX_LISTEN=127.0.0.1:8001 make run" >&2
    exit 1
  fi
done

mkdir -p data
if [ "$SIM_ADDR" != 127.0.0.1:11434 ] || [ "$GW_ADDR" != 127.0.0.1:8000 ]; then
  sed -e "s#^listen: .*#listen: $GW_ADDR#" -e "s#http://127.0.0.1:11434#http://$SIM_ADDR#" \
    "$CONFIG" > data/run.yaml
  CONFIG=data/run.yaml
fi
"$BIN" config check "$CONFIG"

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
