# Switchboard: the two commands are `make run` and `make test`.
.PHONY: run test build release lint fmt token bench deps

CARGO ?= cargo

## Start NATS, Redis, a gateway and all workers on localhost (foreground).
run:
	@bash scripts/run.sh

## Run the whole test suite (starts its own NATS and Redis on free ports).
test: deps
	$(CARGO) test --workspace --all-targets

## Install nats-server and redis-server when missing.
deps:
	@bash scripts/ensure-deps.sh

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Print a development token: make token USER=alice APP=demo [ROOMS=couple-*]
USER_ID = $(or $(USER),alice)
APP ?= demo
token:
	@$(CARGO) run -q -p switchboard-gateway -- token --app $(APP) --user $(USER_ID) $(foreach r,$(ROOMS),--room '$(r)')

## Benchmarks against the baselines and the Socket.IO peer (release build).
bench:
	@bash loadtest/bench.sh
