#!/usr/bin/env bash
# Installs every host tool and Python package pifleet needs, idempotently.
# The README quick start, .ci/run and the Vagrantfile all call this one script.
# It leaves the host's package configuration as it found it: no foreign dpkg
# architectures, no extra apt sources. One line per step; apt and pip talk to a log.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="${PIFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pifleet}"
mkdir -p "$cache"
log="$cache/setup.log"
: >"$log"

APT_PACKAGES=(
  mtools e2fsprogs dosfstools fdisk bmap-tools cloud-init eatmydata
  xz-utils zstd unzip gzip openssl openssh-client
  qemu-system-arm qemu-utils qemu-user-static ipxe-qemu
  mmdebstrap arch-test cpio kmod ca-certificates debian-archive-keyring
  python3 python3-venv make
  python3-gi gir1.2-nm-1.0  # libnm's keyfile reader, for tests/test_injection_fuzz.py
)
# Real arm64/armhf ELF files used as stand-in K3s binaries in tests: busybox-static
# from Debian, downloaded with a private apt state (below) and unpacked into the cache.
ELF_ARCHS=(arm64 armhf)
ELF_SUITE=bookworm # its armhf index verifies on every mirror tried
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

say() { printf 'setup: %s\n' "$*" >&2; }
fail() {
  say "$* (last lines of $log:)"
  tail -n 15 "$log" | sed 's/^/  | /' >&2
  exit 1
}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Runs "$@" up to three times, waiting longer each time (mirrors are sometimes mid-sync).
retry() {
  local i
  for i in 1 2 3; do
    "$@" >>"$log" 2>&1 && return 0
    [ "$i" -lt 3 ] && say "  attempt $i failed, retrying" && sleep $((i * 5))
  done
  return 1
}

missing_apt() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s ' "$p"
  done
}

host_apt() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -q "$@"; }

updated=""
host_update() {
  [ -n "$updated" ] && return 0
  say "apt-get update (host sources)"
  retry host_apt update --error-on=any || say "  apt-get update still reports errors; continuing with the indexes it has"
  updated=1
}

install_host_packages() {
  local missing
  missing=$(missing_apt)
  [ -z "$missing" ] && return 0
  host_update
  say "installing host packages: $missing"
  # shellcheck disable=SC2086 # one word per package
  host_apt install -y --no-install-recommends $missing >>"$log" 2>&1 || fail "apt-get install failed"
}

install_kubectl() {
  command -v kubectl >/dev/null && return 0
  host_update
  say "installing kubernetes-client (kubectl)"
  host_apt install -y --no-install-recommends kubernetes-client >>"$log" 2>&1 ||
    say "  kubernetes-client could not be installed (see $log); continuing without kubectl"
}

# The first Debian archive URI among the host's apt sources (one-line or deb822), so a
# local mirror or proxy is used; Debian's default otherwise (also on Ubuntu hosts).
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -vE '^[[:space:]]*#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ') || true
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# apt-get with a private state directory: its own sources, lists, cache and an empty
# dpkg status, so neither the host's dpkg architectures nor its indexes change.
private_apt() {
  local d=$1
  shift
  apt-get -q \
    -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::status=/dev/null \
    -o APT::Architectures::=arm64 -o APT::Architectures::=armhf \
    -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)" "$@"
}

fetch_test_elfs() {
  local arch missing="" d mirror
  for arch in "${ELF_ARCHS[@]}"; do
    [ -x "$cache/test-elf/$arch/busybox" ] || missing+=" busybox-static:$arch"
  done
  [ -z "$missing" ] && return 0
  d=$(mktemp -d)
  # shellcheck disable=SC2064 # the directory is known now; the local is gone at exit
  trap "rm -rf '$d'" EXIT
  mirror=$(debian_mirror)
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs"
  echo "deb [arch=arm64,armhf signed-by=$DEBIAN_KEYRING] $mirror $ELF_SUITE main" >"$d/sources.list"
  say "apt-get update (private state, $mirror $ELF_SUITE arm64 armhf)"
  retry private_apt "$d" update --error-on=any || fail "apt-get update of the private state failed"
  say "downloading test ELFs:$missing"
  # shellcheck disable=SC2086 # one word per package
  (cd "$d/debs" && private_apt "$d" download $missing) >>"$log" 2>&1 || fail "apt-get download failed"
  for arch in "${ELF_ARCHS[@]}"; do
    [ -x "$cache/test-elf/$arch/busybox" ] && continue
    dpkg-deb -x "$d"/debs/busybox-static_*_"$arch".deb "$d/x-$arch" >>"$log" 2>&1 ||
      fail "unpacking busybox-static:$arch failed"
    mkdir -p "$cache/test-elf/$arch"
    install -m 0755 "$d/x-$arch/bin/busybox" "$cache/test-elf/$arch/busybox.part"
    mv -f "$cache/test-elf/$arch/busybox.part" "$cache/test-elf/$arch/busybox"
  done
}

install_python() {
  local venv="${PIFLEET_VENV:-$here/.venv}" stamp
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv" >>"$log" 2>&1 || fail "python3 -m venv failed"
  fi
  stamp="$venv/.pifleet-setup"
  if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    say "installing Python packages into $venv"
    retry "$venv/bin/python" -m pip install -q --upgrade pip || fail "pip install --upgrade pip failed"
    retry "$venv/bin/python" -m pip install -q -e "$here[dev]" || fail "pip install failed"
    touch "$stamp"
  fi
}

install_host_packages
install_kubectl
fetch_test_elfs
install_python
foreign=$(dpkg --print-foreign-architectures | tr '\n' ' ')
case " $foreign " in
  *" arm64 "* | *" armhf "*)
    say "note: dpkg lists foreign architectures ($foreign); pifleet does not need them" \
      "(earlier versions of this script added arm64/armhf: 'sudo dpkg --remove-architecture armhf' undoes it)"
    ;;
esac
say "ready"
