# The two commands of the README quick start.
VENV ?= .venv
PY := $(VENV)/bin/python
# `pifleet base` (mmdebstrap) needs root; everything else runs as you. The base lands in your cache.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CACHE ?= $(or $(PIFLEET_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pifleet)
export PIFLEET_CACHE := $(CACHE)

.PHONY: setup base demo test lint bench
setup:
	bash tools/setup.sh

# The QEMU-bootable arm64 base the demo and the boot tests start from (cached by its inputs).
base: setup
	$(SUDO) env PIFLEET_CACHE="$(CACHE)" $(PY) -m builder base --arch arm64 >/dev/null

# Main job on the bundled example: build a base, build the fleet image from it,
# boot it under QEMU against the K3s test server and show that it joined.
demo: base
	$(PY) -m builder demo

# The whole test suite, slow QEMU boots included, plus lint and type checks.
test: base
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

bench: base
	$(PY) bench/run.py
