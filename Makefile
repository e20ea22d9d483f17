# raccnn: every target sets up .venv on first use (no network beyond the package index).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

CONFIG ?= experiments/configs/fgsynth_default.yaml
OPTS   ?=
NPROC  ?= 1
# NPROC > 1: that many processes on this machine through torchrun (data.batch_size is per process)
LAUNCH := $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY))

GRID   ?= experiments/grids/full.yaml
JOBS   ?= 1
# JOBS > 1: the grids train that many runs at a time, each on cores / JOBS threads
LOGDIR ?= work_dirs
TB_PORT ?= 6006

.PHONY: setup test train-alternate train-seeds ablation ablation-quick tensorboard clean-venv

setup: $(STAMP)

# The stamp depends on setup.cfg, so a changed dependency list reinstalls once; otherwise nothing is reinstalled.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .[dev]
	touch $(STAMP)

# two test processes (pytest-xdist): much of the suite waits on the trainings and torchrun runs it starts
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal tests

train-alternate: $(STAMP)
	$(LAUNCH) tools/train.py --config $(CONFIG) --resume auto $(if $(OPTS),--opts $(OPTS))

# The default run with seeds 0-4 and its mean ± sd (work_dirs/ablation_seeds/results.md); re-running resumes.
train-seeds: $(STAMP)
	$(PY) experiments/ablation.py --grid experiments/grids/seeds.yaml --jobs $(JOBS)

# A grid of trainings compared in one table (work_dirs/ablation_<grid>/results.md); re-running resumes.
ablation: $(STAMP)
	$(PY) experiments/ablation.py --grid $(GRID) --jobs $(JOBS)

ablation-quick: $(STAMP)
	$(PY) experiments/ablation.py --grid experiments/grids/quick.yaml --jobs $(JOBS)

# TensorBoard over every run under $(LOGDIR) (each work dir holds its event files), on localhost.
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host localhost --port $(TB_PORT)

clean-venv:
	rm -rf $(VENV)
