# wps-bridge: `make run` runs the main job, `make test` runs every test. Both install what they
# need first (scripts/bootstrap, idempotent).

SWIFT ?= swift
BIN := .build/debug/wps-bridge
CONFIG ?= bridge.yaml.example

.PHONY: run test build release bootstrap validate clean

run: bootstrap
	$(SWIFT) build --product wps-bridge
	@echo "Type a line and press Enter; each line is a message for hub chat, group demo (Ctrl-D ends)."
	$(BIN) run --config $(CONFIG) --dry-run

test:
	scripts/bootstrap --tests
	$(SWIFT) build --build-tests
	WPS_TEST_PYTHON=$(CURDIR)/.venv/bin/python WPS_BRIDGE_BIN=$(BIN) $(SWIFT) test --skip-build

build: bootstrap
	$(SWIFT) build

release: bootstrap
	$(SWIFT) build -c release --product wps-bridge
	@echo "built $$($(SWIFT) build -c release --show-bin-path)/wps-bridge"

validate: build
	$(BIN) validate --config $(CONFIG)

bootstrap:
	scripts/bootstrap

clean:
	rm -rf .build .venv
