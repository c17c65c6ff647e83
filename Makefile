# wps-bridge: `make run` runs the main job, `make test` runs every test. Both install what they
# need first (scripts/bootstrap, idempotent).

SWIFT ?= swift
BIN := .build/debug/wps-bridge
CONFIG ?= bridge.yaml.example

.PHONY: run hub test lint format build release bench bench-quick bench-build bootstrap validate clean

run: bootstrap
	$(SWIFT) build --product wps-bridge
	@echo
	@echo "Open http://127.0.0.1:$${WPS_HUB_PORT:-8080}/?hub=chat&group=demo in a browser, then type lines here:"
	@echo "each line is sent to hub chat, group demo, and appears on the page. Ctrl-D or Ctrl-C ends."
	@echo
	$(BIN) run --config $(CONFIG)

hub: bootstrap
	$(SWIFT) build --product wps-bridge
	$(BIN) hub --negotiate --port $${WPS_HUB_PORT:-8080}

test: lint
	scripts/bootstrap --tests
	$(SWIFT) build --build-tests
	WPS_TEST_PYTHON=$(CURDIR)/.venv/bin/python WPS_BRIDGE_BIN=$(BIN) $(SWIFT) test --skip-build

# swift-format ships with the toolchain; .swift-format is the configuration. `make format` fixes
# what `make lint` finds.
FORMAT_PATHS := Sources Tests Plugins Package.swift

lint:
	$(SWIFT) format lint --strict --recursive --parallel $(FORMAT_PATHS)

format:
	$(SWIFT) format format --in-place --recursive --parallel $(FORMAT_PATHS)

build: bootstrap
	$(SWIFT) build

# The Swift runtime and Foundation linked in (--static-swift-stdlib): the binary needs only
# libc, libstdc++, librdkafka and hiredis at run time, and takes about 6 MB less memory (BENCHMARKS.md).
release: bootstrap
	$(SWIFT) build -c release --static-swift-stdlib --product wps-bridge
	@echo "built $$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/wps-bridge"

# The benchmark (bench/bench.py, BENCHMARKS.md): release builds in their own folder, so that
# they do not replace the debug build the tests use.
BENCH_BUILD := .build-static

bench-build:
	scripts/bootstrap --tests
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(BENCH_BUILD) --product wps-bridge
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(BENCH_BUILD) --product wps-bench

bench: bench-build
	BENCH_BIN=$(CURDIR)/$(BENCH_BUILD)/release .venv/bin/python bench/bench.py

bench-quick: bench-build
	BENCH_QUICK=1 BENCH_BIN=$(CURDIR)/$(BENCH_BUILD)/release .venv/bin/python bench/bench.py

validate: build
	$(BIN) validate --config $(CONFIG)

bootstrap:
	scripts/bootstrap

clean:
	rm -rf .build .build-release .build-static .venv
