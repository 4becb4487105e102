# Two commands do all the set-up on a fresh machine: `make demo`, `make test`.
# Each creates .venv with pip when it is missing and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# BentoML, the serving benchmark's peer, in a venv of its own: it pins
# opentelemetry 1.45.1, which the stack's packages do not accept (STACK.md).
BENTOML_VENV := .venv-bentoml
BENTOML_STAMP := $(BENTOML_VENV)/.installed

.PHONY: demo test bench lint typecheck up down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# httptools and uvloop, pinned as in pyproject.toml: uvicorn picks them up, so
# BentoML parses HTTP and runs its loop as our router does (benchmarks/serving.py).
$(BENTOML_STAMP):
	test -x $(BENTOML_VENV)/bin/python || $(PYTHON) -m venv $(BENTOML_VENV)
	$(BENTOML_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENTOML_VENV)/bin/python -m pip install --quiet bentoml==1.4.39 onnxruntime==1.31.1 \
		numpy==2.4.6 httptools==0.9.0 uvloop==0.23.0
	touch $(BENTOML_STAMP)

demo: $(STAMP)
	$(BIN)/falaj demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(BENCH_STAMP) $(BENTOML_STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy falaj functions inference training eventing benchmarks

clean:
	rm -rf .falaj benchmarks/results
