# Two commands a new user needs: `make demo` and `make test`. Both bootstrap first.
SHELL := /bin/bash
CARGO ?= cargo
VENV ?= $(CURDIR)/.venv
export TESTUDO_PYTHON ?= $(VENV)/bin/python
# Tests find the venv through these at run time: a path compiled in (env!) would name
# whichever clone last built the crate, since clones share the build cache.
export TESTUDO_VENV ?= $(VENV)
# Builds live outside the clone and are reused by the next clone on this machine: a cold
# build takes about 25 minutes on 2 cores (RocksDB's C++ and the AWS SDK are most of it), a
# warm one seconds. Set CARGO_TARGET_DIR to put them elsewhere.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/testudo/target

.PHONY: all bootstrap build lint test demo fuzz chaos bench image clean

all: build

bootstrap:
	@bash deploy/bootstrap.sh

build: bootstrap
	$(CARGO) build --workspace --all-targets

## Layout and lints first: rustfmt.toml sets the width, and clippy's warnings are errors.
lint: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Every test: unit, property, interop (openssl, PyJWT, jsonwebtoken), multi-process and doc
## tests. Benchmarks are only compiled here (`--all-targets` would run them); `make bench`
## runs them. The last line sums every test binary's result, so the run ends with one total.
test: bootstrap lint
	@set -o pipefail; status=0; mkdir -p target; \
	$(CARGO) build --workspace --benches 2>&1 | tee target/test-output.log || status=1; \
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast 2>&1 | tee -a target/test-output.log || status=1; \
	$(CARGO) test --workspace --doc 2>&1 | tee -a target/test-output.log || status=1; \
	bash deploy/sum-test-results.sh target/test-output.log || status=1; \
	exit $$status

## Three replicas on loopback form a cluster and mint a workload SVID (deploy/demo.sh).
## An agent attests to them and this shell fetches X.509- and JWT-SVIDs from it.
demo: bootstrap
	$(CARGO) build -p testudo-server --bin testudo-server -p testudo-agent --bin testudo-agent
	@bash deploy/demo.sh

## Fuzz one target for a while: make fuzz TARGET=spiffe_id SECONDS=60 (needs cargo-fuzz).
## identity/fuzz: spiffe_id, jwt, bundle_json, x509_svid; server/fuzz: api_requests, server_config.
TARGET ?= spiffe_id
SECONDS ?= 60
SERVER_FUZZ_TARGETS := api_requests server_config
fuzz:
	cd $(if $(filter $(TARGET),$(SERVER_FUZZ_TARGETS)),server/fuzz,identity/fuzz) && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $(TARGET) -- -max_total_time=$(SECONDS)

## Every benchmark; deploy/bench.sh writes what each printed, with the command, the machine
## and the date, to docs/benchmarks-latest.md (docs/benchmarks.md explains the figures).
BENCH_SECONDS ?= 10
bench: bootstrap
	CARGO="$(CARGO)" BENCH_SECONDS=$(BENCH_SECONDS) bash deploy/bench.sh

## Every failure drill, longer than `make test` runs them, then a summary table:
## make chaos DURATION=30m ITERATIONS=5 (DRILLS="partition leader_kill" for a subset).
## DURATION is the whole run's: each drill keeps injecting faults for its equal share.
DURATION ?= 0s
ITERATIONS ?= 3
DRILLS ?=
chaos: bootstrap
	@mkdir -p target
	$(CARGO) build --workspace --bins
	$(CARGO) run -p testudo-chaos-tests --bin testudo-chaos -- --duration $(DURATION) --iterations $(ITERATIONS) \
		$(foreach d,$(DRILLS),--drill $(d)) --table target/chaos-summary.md

## The container image (deploy/Containerfile), with podman or docker: make image TAG=testudo:dev
TAG ?= testudo:dev
image:
	@engine=$$(command -v podman || command -v docker) || { echo "make image: needs podman or docker" >&2; exit 1; }; \
	$$engine build -f deploy/Containerfile -t $(TAG) .

clean:
	$(CARGO) clean
