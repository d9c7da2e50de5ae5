#!/usr/bin/env bash
# Portability check on 64-bit Arm: cross-compiles the kernel, quant and model
# layers and their tests with Debian's g++-aarch64-linux-gnu, then runs the
# tests under qemu-user, so the Highway code that an Arm machine would run is
# executed, not only compiled:
#   cortex-a72  - NEON, the common Armv8.0 server/SBC core (the default);
#   max         - every feature qemu emulates. The SVE targets are disabled
#                 in Arm builds for now (CMakeLists.txt: wrong integer dots),
#                 so this runs NEON too; use it to test SVE once re-enabled.
# The kernel tests also run on ENGRAM_AARCH64_DOTPROD_CPU (default max), a
# CPU with Armv8.2's dot product, so the sdot path of the Q8_0 / Q4_0 dots
# runs as well (cortex-a72 has none).
# The model tests compare logits with llama.cpp's (../shared/ref) as on x86.
# Needs the packages of scripts/setup.sh (cross compiler, qemu-user, arm64
# libraries through multiarch). Exit status 77: toolchain missing (skip).
#
#   scripts/test-aarch64.sh            # build + cortex-a72
#   ENGRAM_AARCH64_CPUS="max" scripts/test-aarch64.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build=${ENGRAM_AARCH64_BUILD:-build-aarch64}
cpus=${ENGRAM_AARCH64_CPUS:-"cortex-a72"}
tests=(engram_kernels_tests engram_quant_tests engram_model_tests)
# Under qemu the whole model suite takes minutes per CPU; its golden tests
# (logits against llama.cpp's from ../shared/ref) are what matter here.
model_filter=${ENGRAM_AARCH64_MODEL_FILTER:-"Ref/TinyModel.*:Ref/Deepseek2Ref.*:Ref/Stories.*"}

qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
if ! command -v aarch64-linux-gnu-g++ >/dev/null || [ -z "$qemu" ] ||
   [ ! -f /usr/lib/aarch64-linux-gnu/cmake/hwy/hwy-config.cmake ]; then
  echo "aarch64: cross toolchain, qemu-user or arm64 libraries missing (run scripts/setup.sh)" >&2
  exit 77
fi

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" -DENGRAM_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${tests[@]}"

status=0
for cpu in $cpus; do
  for t in "${tests[@]}"; do
    printf '\n--- %s on qemu -cpu %s ---\n' "$t" "$cpu"
    # Tests find ../shared/ref from the repository root, the working directory.
    # No -L: loader and libc are multiarch libc6:arm64's (see the toolchain file).
    filter='*'
    [ "$t" = engram_model_tests ] && filter=$model_filter
    if ! QEMU_CPU=$cpu "$qemu" "$build/$t" --gtest_brief=1 --gtest_filter="$filter" \
         --gtest_output="xml:$build/$t.$cpu.xml"; then
      echo "aarch64: $t FAILED on qemu -cpu $cpu" >&2
      status=1
    fi
  done
done
dotprod_cpu=${ENGRAM_AARCH64_DOTPROD_CPU:-max}
if [ -n "$dotprod_cpu" ]; then
  printf '\n--- engram_kernels_tests on qemu -cpu %s (Arm dot product) ---\n' "$dotprod_cpu"
  if ! QEMU_CPU=$dotprod_cpu "$qemu" "$build/engram_kernels_tests" --gtest_brief=1 \
       --gtest_output="xml:$build/engram_kernels_tests.$dotprod_cpu.xml"; then
    echo "aarch64: engram_kernels_tests FAILED on qemu -cpu $dotprod_cpu" >&2
    status=1
  fi
fi
exit $status
