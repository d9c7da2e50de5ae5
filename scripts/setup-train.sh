#!/usr/bin/env bash
# Installs the Debian 12 packages that engram's model training needs
# (scripts/train/train.sh). Idempotent: quick when everything is present.
#   python3-torch        PyTorch 1.13, CPU
#   python3-numpy
#   libopenblas0-pthread OpenBLAS as the BLAS alternative: the reference BLAS
#                        that torch otherwise gets trains about 7x slower
#   bible-kjv-text       the public-domain haystack text (compressed)
#   bible-kjv            the `bible` program that decompresses it
set -euo pipefail

PACKAGES=(python3-torch python3-numpy libopenblas0-pthread bible-kjv-text bible-kjv)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#missing[@]} -ne 0 ]; then
  echo "setup-train: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Installing OpenBLAS normally makes it the BLAS alternative (higher priority);
# check it, because torch silently falls back to the slow reference BLAS.
ALT=libblas.so.3-x86_64-linux-gnu
if ! update-alternatives --query "$ALT" 2>/dev/null | grep -q '^Value:.*openblas'; then
  target=$(update-alternatives --list "$ALT" | grep openblas | head -n1 || true)
  if [ -z "$target" ]; then
    echo "setup-train: no OpenBLAS alternative for $ALT" >&2
    exit 1
  fi
  echo "setup-train: selecting $target for $ALT" >&2
  $SUDO update-alternatives --set "$ALT" "$target"
fi
update-alternatives --query "$ALT" | grep '^Value:' >&2
