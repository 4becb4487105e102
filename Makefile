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
# Evidently, the drift benchmark's peer, in a venv of its own too. Not for a
# version clash: pip resolves evidently 0.7.23 against every pin of .venv
# (checked with `pip install --dry-run -c <pip freeze of .venv>`). It is kept
# out because it brings 27 packages the platform does not use (litestar,
# statsmodels, nltk, scikit-learn, plotly<6, ...), and because the peer must
# run without falaj importable (benchmarks/drift_tools/evidently_runner.py).
EVIDENTLY_VENV := .venv-evidently
EVIDENTLY_STAMP := $(EVIDENTLY_VENV)/.installed

.PHONY: demo test bench fuzz lint typecheck up down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# promtool, for the alert rules' tests (tests/manifests/test_monitoring.py): Debian's
# prometheus package unpacked into the venv; nothing installed system-wide, no daemon.
PROMTOOL := $(BIN)/promtool
$(PROMTOOL): | $(STAMP)
	rm -rf $(VENV)/.prometheus && mkdir -p $(VENV)/.prometheus
	cd $(VENV)/.prometheus && apt-get download -q prometheus >/dev/null 2>&1 \
		&& dpkg-deb -x prometheus_*.deb unpacked && cp unpacked/usr/bin/promtool ../bin/promtool \
		|| echo "promtool: Debian's prometheus package is not available here; its tests skip"
	rm -rf $(VENV)/.prometheus

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

# numpy, pandas, scipy and pyarrow at the stack's own pins (pyproject.toml), so
# the drift benchmark compares the two implementations, not two library versions
# (pip would otherwise take pandas 3, which reads strings into another dtype).
$(EVIDENTLY_STAMP):
	test -x $(EVIDENTLY_VENV)/bin/python || $(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EVIDENTLY_VENV)/bin/python -m pip install --quiet evidently==0.7.23 \
		numpy==2.4.6 pandas==2.3.3 scipy==1.17.1 pyarrow==26.0.1
	touch $(EVIDENTLY_STAMP)

demo: $(STAMP)
	$(BIN)/falaj demo

test: $(STAMP) $(PROMTOOL)
	$(BIN)/python -m pytest

# The hostile-input properties with many more cases than `make test` runs.
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	FALAJ_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:randomly \
		tests/eventing/test_ingress_properties.py tests/falaj/test_auth_properties.py \
		tests/inference/test_payload_properties.py \
		tests/eventing/test_storage_notification_properties.py \
		tests/functions/test_ingest_reader_properties.py \
		tests/inference/test_request_properties.py

bench: $(BENCH_STAMP) $(BENTOML_STAMP) $(EVIDENTLY_STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy falaj functions inference training eventing benchmarks

clean:
	rm -rf .falaj benchmarks/results
