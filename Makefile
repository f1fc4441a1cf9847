# Switchboard: the two commands are `make run` and `make test`.
.PHONY: run test build release lint fmt token bench soak deps fuzz

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

## Soak: a whole cluster on loopback (NATS, durable Redis, two gateways, two
## worker processes) under load for SOAK_SECONDS (default 180, then at most
## about a minute of end checks) while a seeded schedule kills, pauses and
## restarts its parts; invariants are checked throughout and at the end. Prints
## a summary; non-zero on any violation. Release build; not part of `make test`.
## Repeat a run with the seed it printed: make soak SOAK_SEED=<seed>.
## SOAK_SUMMARY=<file> also writes the summary there.
SOAK_SECONDS ?= 180
SOAK_SEED ?=
SOAK_SUMMARY ?=
soak: deps
	$(CARGO) build --release -q -p switchboard-gateway -p switchboard-workers -p switchboard-loadtest
	@bin="$${CARGO_TARGET_DIR:-target}/release"; \
	ulimit -n 65536 2>/dev/null || true; \
	"$$bin/switchboard-loadtest" soak --gateway-bin "$$bin/switchboard-gateway" \
		--workers-bin "$$bin/switchboard-workers" --seconds $(SOAK_SECONDS) \
		$(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(if $(SOAK_SUMMARY),--summary $(SOAK_SUMMARY))

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
