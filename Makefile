# raccnn: every target sets up .venv on first use (no network beyond the package index).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

CONFIG ?= experiments/configs/fgsynth_default.yaml
OPTS   ?=

.PHONY: setup test train-alternate clean-venv

setup: $(STAMP)

# The stamp depends on setup.cfg, so a changed dependency list reinstalls once; otherwise nothing is reinstalled.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .[dev]
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

train-alternate: $(STAMP)
	$(PY) tools/train.py --config $(CONFIG) --resume auto $(if $(OPTS),--opts $(OPTS))

clean-venv:
	rm -rf $(VENV)
