#!/usr/bin/env bash
# `make fuzz`: build the libFuzzer targets (clang, ASan+UBSan) in build-fuzz/ and fuzz each one
# for SECONDS (default 60). New inputs go to build-fuzz/corpus-new/<name>/, so the committed
# corpus only grows by hand: review them, then copy the interesting ones (and every crash, with a
# unit test, STYLE.md §10) into tests/fuzz/corpus/<name>/. Crashes land in build-fuzz/crashes/.
#   FUZZ_TARGETS="sse h1" make fuzz     only these targets
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}

CC=clang cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPX_FUZZ=ON \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
ninja -C build-fuzz -j2

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p build-fuzz/crashes
status=0
shopt -s nullglob
for bin in build-fuzz/fuzz/fuzz_*; do
  name=${bin##*/fuzz_}
  if [ -n "${FUZZ_TARGETS:-}" ] && [[ " $FUZZ_TARGETS " != *" $name "* ]]; then continue; fi
  new=build-fuzz/corpus-new/$name
  mkdir -p "$new"
  args=(-max_total_time="$SECONDS_PER_TARGET" -artifact_prefix=build-fuzz/crashes/"$name"- -print_final_stats=1)
  [ -f "tests/fuzz/$name.dict" ] && args+=(-dict="tests/fuzz/$name.dict")
  seeds=()
  [ -d "tests/fuzz/corpus/$name" ] && seeds+=("tests/fuzz/corpus/$name")
  echo "== fuzz_$name for ${SECONDS_PER_TARGET}s"
  if ! "$bin" "${args[@]}" "$new" "${seeds[@]}"; then
    echo "== fuzz_$name FAILED: see build-fuzz/crashes/" >&2
    status=1
  fi
done
exit $status
