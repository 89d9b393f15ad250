# Quick start:  make train     (builds the environment once, then trains the default model)
#               make test      (the fast tier: unit and contract tests, after every edit)
#               make test-gpu  (the GPU tier: CUDA against fp32 and the CPU, deterministic resume, compile)
#               make test-all  (everything: real processes, signals, torchrun, the README's commands, sweeps on a
#                               two-node Ray cluster, MLflow tracking against a real server, with the cluster and
#                               tracking extras installed first; CI runs this)
#
# The environment lives outside the checkout, in $(VENV), and is reused by every clone: the stack with its
# CUDA libraries is about 6 GB, so building one per clone would fill the disk. It is (re)installed only when
# requirements.txt changes (the stamp file is named after its hash).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= $(HOME)/.cache/seg_ext/venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.requirements-$(REQ_HASH)
CLUSTER_STAMP := $(VENV)/.cluster-$(shell sha256sum requirements-cluster.txt | cut -c1-16)
TRACKING_STAMP := $(VENV)/.tracking-$(shell sha256sum requirements-tracking.txt | cut -c1-16)
ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv venv-cluster venv-tracking train train-instance test test-all test-gpu bench clean-runs

# the package itself, editable from this checkout (so `python -m ...` and snippets work from any folder once the
# environment is activated): reinstalled when the environment's seg_ext is another checkout's (a second clone).
# From a checkout's root its own seg_ext is imported first either way.
venv: $(STAMP)
	@cd / && $(PY) -c "import seg_ext, sys; sys.exit(seg_ext.__file__ != '$(CURDIR)/seg_ext/__init__.py')" 2>/dev/null \
	|| $(PY) -m pip install --quiet --no-deps --no-build-isolation -e "$(CURDIR)" >/dev/null 2>&1 \
	|| echo "make: could not install seg_ext into $(VENV) (editable); the tools still run from the checkout"

# the cluster extra (Ray Tune, Optuna) for the Ray sweep tests; the rest of the package does not need it
venv-cluster: venv $(CLUSTER_STAMP)

# (where it cannot be installed, say so and go on: the Ray tests then skip, saying why)
$(CLUSTER_STAMP):
	@if $(PY) -m pip install --quiet -r requirements-cluster.txt; then rm -f $(VENV)/.cluster-*; touch $@; \
	else echo "make: could not install the cluster extra (requirements-cluster.txt); the Ray tests will skip"; fi

# the tracking extra (MLflow) for the tracking tests against a real `mlflow server`; likewise optional
venv-tracking: venv $(TRACKING_STAMP)

$(TRACKING_STAMP):
	@if $(PY) -m pip install --quiet -r requirements-tracking.txt; then rm -f $(VENV)/.tracking-*; touch $@; \
	else echo "make: could not install the tracking extra (requirements-tracking.txt); the MLflow tests will skip"; fi

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.requirements-*
	@touch $@

train: venv
	$(PY) tools/train_semantic.py $(ARGS)

test: venv
	$(PY) -m pytest -q -m "not slow and not cuda" $(ARGS)

# the GPU tier: what the package promises on CUDA (skipped, saying why, where no GPU is visible)
test-gpu: venv
	$(PY) -m pytest -q -m cuda $(ARGS)

test-all: venv-cluster venv-tracking
	$(PY) -m pytest -q $(ARGS)

bench: venv
	$(PY) benchmarks/run.py $(ARGS)

clean-runs:
	rm -rf runs
