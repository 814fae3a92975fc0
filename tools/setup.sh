#!/usr/bin/env bash
# Installs every host tool and Python package pifleet needs, idempotently.
# The README quick start, .ci/run and the Vagrantfile all call this one script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="${PIFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pifleet}"

APT_PACKAGES=(
  mtools e2fsprogs dosfstools fdisk bmap-tools cloud-init eatmydata
  xz-utils zstd unzip gzip openssl openssh-client
  qemu-system-arm qemu-utils qemu-user-static ipxe-qemu
  mmdebstrap arch-test cpio kmod ca-certificates debian-archive-keyring
  python3 python3-venv make
)
# Real arm64/armhf ELF files used as stand-in K3s binaries in tests. The two
# busybox-static packages conflict with each other, so they are unpacked into
# the cache rather than installed.
TEST_ELF_PACKAGES=(busybox-static:arm64 busybox-static:armhf)

say() { printf 'setup: %s\n' "$*" >&2; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing_apt() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 0
  done
  return 1
}

apt_update() {
  # Debian mirrors are occasionally mid-sync; a failed index for one foreign
  # architecture must not stop the whole set-up, so retry, then carry on.
  local i
  for i in 1 2 3; do
    $sudo apt-get update -q && return 0
    say "apt-get update failed (attempt $i), retrying"
    sleep $((i * 5))
  done
  say "apt-get update still reports errors; continuing with the indexes it has"
}

if missing_apt || [ ! -x "$cache/test-elf/arm64/busybox" ] || [ ! -x "$cache/test-elf/armhf/busybox" ]; then
  say "installing host packages (apt)"
  $sudo dpkg --add-architecture arm64
  $sudo dpkg --add-architecture armhf
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for pkg in "${TEST_ELF_PACKAGES[@]}"; do
    arch=${pkg#*:}
    (cd "$tmp" && apt-get download -q "$pkg" 2>/dev/null)
    mkdir -p "$tmp/x-$arch" "$cache/test-elf/$arch"
    dpkg-deb -x "$tmp"/busybox-static_*_"$arch".deb "$tmp/x-$arch"
    install -m 0755 "$tmp/x-$arch/bin/busybox" "$cache/test-elf/$arch/busybox"
  done
fi

venv="${PIFLEET_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.pifleet-setup"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  say "installing Python packages into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$here[dev]"
  touch "$stamp"
fi
say "ready"
