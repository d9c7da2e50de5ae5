#!/usr/bin/env bash
# Integration tests of `engram serve` with the official openai npm client
# (tests/js: chat, batch, load and crash tests; node's built-in test runner).
#
#   bash scripts/test-js.sh [ENGRAM_BINARY]      # default: build/engram
#
# Skips (exit 0, with the reason) when node/npm are missing or too old, the
# binary or the reference model is absent, or npm cannot install the client
# (offline); ENGRAM_JS_REQUIRED=1 turns those skips into failures.
# ENGRAM_TEST_MODEL picks another model (default ../shared/ref/models/stories260K.gguf).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${1:-${ENGRAM_BINARY:-$repo/build/engram}}"
[[ "$binary" == /* ]] || binary="$PWD/$binary"  # the tests run from another directory
model="${ENGRAM_TEST_MODEL:-$repo/../shared/ref/models/stories260K.gguf}"

skip() {
  echo "test-js: SKIPPED: $*"
  if [[ "${ENGRAM_JS_REQUIRED:-0}" == 1 ]]; then exit 1; fi
  exit 0
}

command -v node >/dev/null 2>&1 || skip "node is not installed"
command -v npm >/dev/null 2>&1 || skip "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
(( node_major >= 20 )) || skip "node $(node --version) is too old (need 20 or newer)"
[[ -x "$binary" ]] || skip "no engram binary at $binary (build it, or pass its path)"
[[ -f "$model" ]] || skip "reference model not found at $model"

cd "$repo/tests/js"
if ! npm install --no-audit --no-fund --silent; then
  skip "npm install of the openai client failed (offline?)"
fi

cd "$repo"
echo "test-js: $binary with $model"
ENGRAM_BINARY="$binary" ENGRAM_TEST_MODEL="$model" node --test --test-concurrency=1 tests/js/
