# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install the project on first use; pyproject.toml changes trigger a reinstall.
PY ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
OUT ?= runs/demo

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

.PHONY: demo test lint
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/adpo demo --out $(OUT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
