#!/usr/bin/env bash
# Installs exactly the Debian 12 packages that engram's build, tests and tools
# need. Idempotent: quiet and quick when everything is already present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config clang
  libhwy-dev            # portable SIMD with run-time dispatch
  libpcre2-dev          # Unicode classes for the BPE pre-tokenizers
  nlohmann-json3-dev    # JSON manifests and reports
  libcli11-dev          # command-line parsing
  libgtest-dev libgmock-dev   # unit tests
  libstb-dev            # PNG heatmaps of `engram bench niah`
  libcpp-httplib-dev    # HTTP server of `engram serve`
  libsqlite3-dev        # usage ledger and batch store of `engram serve`
  bible-kjv bible-kjv-text    # default haystack and text of the benchmarks (public-domain KJV)
)

# aarch64 cross build run under qemu (scripts/test-aarch64.sh): the cross
# compiler, qemu-user, and the arm64 builds of the libraries the kernel, quant
# and model layers link, through Debian multiarch. Optional: when they cannot
# be installed, scripts/test.sh skips its aarch64 step with a message.
ARM64_PACKAGES=(
  g++-aarch64-linux-gnu qemu-user
  libhwy-dev:arm64 libpcre2-dev:arm64 libgtest-dev:arm64
)

missing_of() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}
mapfile -t missing < <(missing_of "${PACKAGES[@]}")
mapfile -t missing_arm64 < <(missing_of "${ARM64_PACKAGES[@]}")
[ ${#missing[@]} -eq 0 ] && [ ${#missing_arm64[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing_arm64[@]} -gt 0 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64 || echo "setup: cannot add the arm64 architecture" >&2
fi
$SUDO apt-get update -qq

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#missing_arm64[@]} -gt 0 ]; then
  echo "setup: installing ${missing_arm64[*]}" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing_arm64[@]}" >/dev/null ||
    echo "setup: the aarch64 cross toolchain could not be installed; scripts/test.sh will skip its aarch64 step" >&2
fi
