#!/usr/bin/env bash
# Install the Debian packages privax builds and tests with, but only those that are missing.
# Safe to run again and again: when everything is present it touches nothing (no apt-get update).
# Works as root on a fresh Debian 12; as another user it uses sudo if there is one.
set -euo pipefail

PKGS=(
  # build
  cmake ninja-build pkg-config clang libclang-rt-14-dev
  libuv1-dev libcurl4-openssl-dev libjansson-dev libyajl-dev libhttp-parser-dev libcyaml-dev libfyaml-dev
  libsqlite3-dev libssl-dev libhiredis-dev libcmocka-dev
  # test and run (python3: tests/run and the integration suite, standard library only)
  python3 sqlite3 valgrind curl netcat-openbsd nodejs npm
  clickhouse-server clickhouse-client nginx redis-server
  prometheus  # promtool: tests check /metrics with `promtool check metrics`
  # load tools
  wrk nghttp2-client hyperfine
)

missing=()
for p in "${PKGS[@]}"; do
  case "$p" in
    python3)
      if command -v python3 >/dev/null 2>&1; then continue; fi
      ;;
    nodejs|npm)
      # Node may come from NodeSource (its nodejs bundles npm, and Debian's npm package would
      # conflict with it): a working binary is enough.
      bin=$p; [ "$p" = nodejs ] && bin=node
      if command -v "$bin" >/dev/null 2>&1; then continue; fi
      ;;
  esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

node_check() {
  # The OpenAI Node client (openai@^6) supports Node 20+; Debian 12's own nodejs is 18.
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ]; then
    echo "deps: warning: node $(node --version 2>/dev/null) is older than 20, which openai@^6 needs" >&2
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
  node_check
  exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "deps: missing ${missing[*]} and not root (no sudo): install them as root" >&2
    exit 1
  fi
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Service packages (nginx, redis, clickhouse) must not start system-wide daemons: the tests start
# their own on free ports. Where no policy-rc.d exists, add one for the install and remove it after.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# added by privax tools/deps.sh for one apt-get install\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
node_check
