# echat: `make demo` (the main job) and `make test` each set themselves up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned and installed first: an unpinned torch makes pip resolve a multi-GB CUDA build.
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.echat-installed
PRESET ?= mini
# make demo's run folder: corpus, recipe checkpoints, evaluations, figures, executed notebooks.
DEMO_OUT ?= $(if $(filter smoke,$(PRESET)),runs/demo-smoke,runs/demo)
# The hub is unreachable offline and a lookup hangs ~45 s before failing.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: setup browser test demo lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev,eval]"
	touch $(STAMP)

# The browser tests (pytest -m browser) drive Debian's chromium through Playwright, which cannot download its own
# browsers here: installed when missing where apt-get exists and we are root (CI); elsewhere they skip, saying why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "chromium could not be installed: the browser tests will skip"

test: setup browser
	$(OFFLINE) $(BIN)/python -m pytest -q

demo: setup
	$(OFFLINE) $(BIN)/echat demo --preset $(PRESET) --out $(DEMO_OUT)

lab: setup
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf runs .pytest_cache .ruff_cache
