#!/usr/bin/env bash
# Builds engram and runs the whole test suite:
#   1. Release build, every unit and end-to-end test (CTest + GoogleTest);
#   2. `engram serve` driven by the official openai npm client (tests/js:
#      chat, batch API, 64-client load test, kill -9 crash test);
#   3. ASan+UBSan build of the unit tests (not the tool's end-to-end tests),
#      run under the sanitizers;
#   4. the GGUF reader fuzzer for a bounded time (ENGRAM_FUZZ_SECONDS, default 40:
#      CI must stay under 20 minutes on 2 cores; scripts/fuzz.sh alone runs 60);
#   5. aarch64 cross build of the kernel/quant/model tests, run under qemu-user
#      on emulated NEON, SVE and SVE2 + dot product cores (scripts/test-aarch64.sh).
# Tests that need ../shared/ref skip with a printed reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)
step() { printf '\n=== %s (at %d s) ===\n' "$*" "$SECONDS"; }

step "release build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"

step "tests (release)"
ctest --test-dir build --output-on-failure -j "$jobs"

step "server tests with the openai npm client"
bash scripts/test-js.sh build/engram

step "ASan+UBSan build"
# -O1 with line tables only: half the compile time of -O2 -g (the sanitizer
# build was 23 of CI's 39 minutes), and still file:line in every report.
# The unit tests only: the `engram` tool and its end-to-end tests ran in the
# release build above (they were a third of this build's compile time).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENGRAM_SANITIZE=ON -DENGRAM_BUILD_TOOLS=OFF \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" >/dev/null
cmake --build build-asan -j "$jobs"

step "tests (ASan+UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -j "$jobs"

step "GGUF fuzzing"
if [ -x scripts/fuzz.sh ]; then
  bash scripts/fuzz.sh "${ENGRAM_FUZZ_SECONDS:-40}"
else
  echo "fuzz: scripts/fuzz.sh missing" >&2
  exit 1
fi

step "aarch64 cross build + qemu tests"
aarch64_status=0
bash scripts/test-aarch64.sh || aarch64_status=$?
if [ "$aarch64_status" -eq 77 ]; then
  echo "aarch64: SKIPPED, the cross toolchain could not be installed (see scripts/setup.sh)"
elif [ "$aarch64_status" -ne 0 ]; then
  exit "$aarch64_status"
fi
step "all passed"
