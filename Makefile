# The two commands of the README quick start.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench
setup:
	bash tools/setup.sh

# Main job on the bundled example: build a base, build the fleet image from it,
# boot it under QEMU against the K3s test server and show that it joined.
demo: setup
	$(PY) -m builder demo

# The whole test suite, slow QEMU boots included, plus lint and type checks.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py
