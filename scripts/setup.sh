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

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
