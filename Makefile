# crbp-detectron development tasks.
#   make setup  - create .venv (python3.11), install torch/torchvision, detectron2 and this package
#   make test   - run the test suite
#   make demo   - run tools/run_demo.py
# `make setup` is idempotent: a stamp file makes a re-run a no-op until setup.py, this Makefile
# or tools/install_detectron2.py change; each step also checks before it installs.

PYTHON ?= python3.11
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1

VPY := $(VENV)/bin/python
# OpenMP threads that spin while waiting thrash as soon as anything else runs on the CPU
# (a data-loader worker, a second job): measured 18x slower steps on 2 cores. Passive waiting
# costs nothing when the CPU is free.
export OMP_WAIT_POLICY ?= PASSIVE
VPIP := $(VPY) -m pip
STAMP := $(VENV)/.setup-stamp
SETUP_INPUTS := Makefile tools/install_detectron2.py $(wildcard setup.py setup.cfg pyproject.toml)

.PHONY: setup test demo clean-setup

setup: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(SETUP_INPUTS) | $(VPY)
	@if $(VPY) -c "import sys; from importlib.metadata import version as v; \
	  sys.exit(0 if [v(p).split('+')[0] for p in ('torch', 'torchvision')] \
	  == ['$(TORCH_VERSION)', '$(TORCHVISION_VERSION)'] else 1)" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) / torchvision $(TORCHVISION_VERSION) already installed"; \
	else \
	  $(VPIP) install torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION); \
	fi
	$(VPY) tools/install_detectron2.py
	$(VPIP) install -e '.[test]'
	@touch $@

test: setup
	$(VPY) -m pytest -q tests

demo: setup
	$(VPY) tools/run_demo.py

# Forget the stamp so the next `make setup` re-checks every step (the venv is kept).
clean-setup:
	rm -f $(STAMP)
