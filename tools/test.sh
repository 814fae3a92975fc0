#!/usr/bin/env bash
# The whole test suite, as `make test` runs it: set-up, the three QEMU bases, ruff, mypy and
# pytest, each phase timed. The table at the end (and pytest's own time per test file) makes a
# slow-down visible in the next CI log.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here" || exit 1
venv="${PIFLEET_VENV:-$here/.venv}"
: "${PIFLEET_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/pifleet}"
: "${SUITE_ARM64:?run the suite as make test (the Makefile names the bases suites)}"
export PIFLEET_CACHE
phases=()
status=0

# phase NAME CMD...: runs CMD, records its wall time, and stops the suite at the first failure.
phase() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  "$@"
  rc=$?
  phases+=("$(printf '%-28s %5ss%s' "$name" $(($(date +%s) - start)) "$([ $rc -eq 0 ] || echo "  FAILED (exit $rc)")")")
  [ $rc -eq 0 ] || status=$rc
  return $rc
}

summary() {
  printf '\n== time per phase ==\n'
  printf '%s\n' "${phases[@]}"
}
trap summary EXIT

# `pifleet base` (mmdebstrap) needs root: SUDO is "sudo" for other users (Makefile).
base() { ${SUDO:-} env PIFLEET_CACHE="$PIFLEET_CACHE" "$venv/bin/python" -m builder base "$@" >/dev/null; }

phase "set-up (tools/setup.sh)" bash tools/setup.sh || exit $status
phase "base arm64 $SUITE_ARM64" base --arch arm64 --suite "$SUITE_ARM64" || exit $status
phase "base armhf $SUITE_ARMHF" base --arch armhf --suite "$SUITE_ARMHF" || exit $status
phase "base arm64 $SUITE_SYSTEMD systemd" base --arch arm64 --suite "$SUITE_SYSTEMD" --format systemd || exit $status
phase "ruff" "$venv/bin/ruff" check . || exit $status
phase "mypy" "$venv/bin/mypy" || exit $status
# Two workers: the QEMU boots of one image stay together on one worker (tests/conftest.py),
# and the other worker runs the rest meanwhile.
phase "pytest" "$venv/bin/python" -m pytest -n 2 --dist loadgroup "$@" || exit $status
exit $status
