# The two commands of the README quick start.
VENV ?= .venv
PY := $(VENV)/bin/python
# `pifleet base` (mmdebstrap) needs root; everything else runs as you. The base lands in your cache.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CACHE ?= $(or $(PIFLEET_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pifleet)
export PIFLEET_CACHE := $(CACHE)

# `make demo ARCH=armhf` shows an ARMv7 device joining. Each architecture's base comes from its
# own Debian suite: armhf's is the boot tests' setting (ARMHF_SUITE in tests/boot_helpers.py; the
# Debian mirror's trixie armhf index does not match its Release file).
ARCH ?= arm64
ARMHF_SUITE := $(shell sed -n 's/^ARMHF_SUITE = "\([a-z]*\)".*/\1/p' tests/boot_helpers.py)
# The arm64 base without cloud-init for the systemd-format boot (tests/test_boot_systemd.py).
SYSTEMD_SUITE := $(shell sed -n 's/^SYSTEMD_SUITE = "\([a-z]*\)".*/\1/p' tests/test_boot_systemd.py)
SUITE_arm64 := trixie
SUITE_armhf := $(ARMHF_SUITE)
SUITE ?= $(SUITE_$(ARCH))
PIFLEET_BASE = $(SUDO) env PIFLEET_CACHE="$(CACHE)" $(PY) -m builder base

.PHONY: setup base demo test lint bench
setup:
	bash tools/setup.sh

# The QEMU-bootable base the demo starts from (cached by its inputs).
base: setup
	$(PIFLEET_BASE) --arch $(ARCH) --suite $(SUITE) >/dev/null

# Main job on the bundled example: build a base, build the fleet image from it,
# boot it under QEMU against the K3s test server and show that it joined.
demo: base
	$(PY) -m builder demo --arch $(ARCH) --suite $(SUITE)

# The whole test suite, slow QEMU boots (arm64 and armhf) included, plus lint and type checks,
# each phase timed (tools/test.sh; `make test PYTEST_ARGS=...` passes arguments to pytest).
test:
	SUDO="$(SUDO)" SUITE_ARM64=$(SUITE_arm64) SUITE_ARMHF=$(SUITE_armhf) \
		SUITE_SYSTEMD=$(SYSTEMD_SUITE) bash tools/test.sh $(PYTEST_ARGS)

bench: base
	$(PY) bench/run.py
