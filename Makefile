# Switchboard: the two commands are `make run` and `make test`.
.PHONY: run test build release lint fmt token bench deps fuzz

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

## Fuzz every parser for FUZZ_SECONDS each (default 60), one target after the
## other; stops non-zero at the first crash (input saved in fuzz/artifacts/).
## Needs the nightly toolchain; installs cargo-fuzz when missing. Not part of
## `make test`. One target: make fuzz FUZZ_TARGETS=token
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= client_frame bus_envelope ids_and_grants token
FUZZ_SANITIZER ?= none
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		$(CARGO) +nightly fuzz run --sanitizer $(FUZZ_SANITIZER) $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done
