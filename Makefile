# privax: a thin driver over CMake + Ninja (see STYLE.md §12 for why the build itself is CMake).
#
#   make            build build/privax (RelWithDebInfo)
#   make deps       install missing Debian packages (apt) and the Node test client (npm ci)
#   make run        deps + build, then privax sim on :11434 and privax serve on :8000
#   make test       deps, then tests/run (unit, valgrind, integration, ASan+UBSan, fuzz replay)
#   make fuzz       longer libFuzzer runs by hand (FUZZ_SECONDS per target, default 60)
#   make bench      bench/run
#   make clean      remove the build trees

BUILD       ?= build
BUILD_TYPE  ?= RelWithDebInfo
JOBS        ?= 2
FUZZ_SECONDS ?= 60
NODE_DIR    := tests/integration/node

.PHONY: all build deps apt-deps node-deps run test fuzz bench clean

all: build

build:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)
	ninja -C $(BUILD) -j$(JOBS)

deps: apt-deps node-deps

apt-deps:
	@bash tools/deps.sh

node-deps: $(NODE_DIR)/node_modules/.package-lock.json

# npm ci only when node_modules is absent or older than the lock file.
$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json | apt-deps
	cd $(NODE_DIR) && npm ci --no-audit --no-fund

run: deps build
	@bash tools/run-local.sh

test: deps
	./tests/run

fuzz:
	@bash tools/fuzz.sh $(FUZZ_SECONDS)

bench:
	@if [ -x bench/run ]; then ./bench/run; else echo "bench/run does not exist yet (issue 6)" >&2; exit 1; fi

clean:
	rm -rf build build-asan build-fuzz
