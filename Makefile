# crbp-detectron development tasks.
#   make setup  - create .venv (python3.11), install torch/torchvision, detectron2 and this package
#   make test   - run the test suite
#   make demo   - run tools/run_demo.py
#   make demo-compare - feed-forward against C-RBP Panoptic FPN on the demo data (tools/run_demo.py --compare)
#   make lock   - re-resolve requirements/setup.txt from requirements/setup.in (needs uv)
# `make setup` is idempotent: a stamp file makes a re-run a no-op until one of its inputs changes
# (setup.py, this Makefile, the lock file, the detectron2 installer and its files); each step
# also checks before it installs. Everything beyond torch/torchvision is pinned with hashes in
# requirements/setup.txt and installed without dependency resolution (--no-deps: the lock is
# complete), so two machines get the same environment.

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
LOCK := requirements/setup.txt
SETUP_INPUTS := Makefile $(LOCK) tools/install_detectron2.py $(wildcard tools/detectron2_pure/*) \
	$(wildcard setup.py setup.cfg pyproject.toml)

.PHONY: setup test demo demo-compare lock clean-setup

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
	$(VPIP) install --require-hashes --no-deps -r $(LOCK)
	$(VPY) tools/install_detectron2.py
	$(VPIP) install --no-deps --no-build-isolation -e .
	@touch $@

test: setup
	$(VPY) -m pytest -q tests projects/Pathfinder/tests

demo: setup
	$(VPY) tools/run_demo.py

demo-compare: setup
	$(VPY) tools/run_demo.py --compare

# The lock: versions that satisfy requirements/setup.in (and overrides.txt), with the sha256 of
# every file PyPI has for them. Keeps the current pins where they still fit; `make lock
# UPGRADE=--upgrade` moves everything to the newest. Review the diff, then run the tests.
lock:
	uv pip compile --python $(PYTHON) --generate-hashes $(UPGRADE) --custom-compile-command "make lock" \
	  --override requirements/overrides.txt requirements/setup.in -o $(LOCK)

# Forget the stamp so the next `make setup` re-checks every step (the venv is kept).
clean-setup:
	rm -f $(STAMP)
