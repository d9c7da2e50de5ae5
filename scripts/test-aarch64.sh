#!/usr/bin/env bash
# Portability check on 64-bit Arm: cross-compiles the kernel, quant and model
# layers and their tests with Debian's g++-aarch64-linux-gnu, then runs the
# tests under qemu-user, so the Highway code that an Arm machine would run is
# executed, not only compiled. Each run is CPU:TESTS (ENGRAM_AARCH64_RUNS):
#   cortex-a72  - NEON without the dot product: the common Armv8.0 core;
#                 kernel, quant and model tests;
#   a64fx       - SVE (512-bit) without the dot product: Highway's SVE target
#                 and its widening integer dots; kernel and model tests;
#   max         - every feature qemu emulates: SVE2 and Armv8.2's dot product,
#                 so the sdot path of the Q8_0 / Q4_0 dots; kernel tests.
# The kernel tests run every Highway target the CPU supports (on max: SVE2,
# SVE and NEON); the model tests compare logits with llama.cpp's
# (../shared/ref) as on x86, through the target dispatched by default.
# The qemu processes run side by side, ENGRAM_AARCH64_JOBS at a time (default:
# the number of cores).
# Needs the packages of scripts/setup.sh (cross compiler, qemu-user, arm64
# libraries through multiarch). Exit status 77: toolchain missing (skip).
#
#   scripts/test-aarch64.sh
#   ENGRAM_AARCH64_RUNS="max,sve-default-vector-length=32:kernels" scripts/test-aarch64.sh   # SVE_256
set -euo pipefail
cd "$(dirname "$0")/.."

build=${ENGRAM_AARCH64_BUILD:-build-aarch64}
runs=${ENGRAM_AARCH64_RUNS:-"cortex-a72:kernels,quant,model a64fx:kernels,model max:kernels"}
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

# Each (CPU, test binary) pair is one qemu process, and qemu-user runs a
# single-threaded test program on one host core: up to ENGRAM_AARCH64_JOBS
# (default: the number of cores) run side by side, each into its own log, and
# the logs are printed in order when all are done.
max_jobs=${ENGRAM_AARCH64_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

run_one() {  # run_one CPU TEST LOG
  local cpu=$1 t=$2 log=$3 filter='*'
  [ "$t" = engram_model_tests ] && filter=$model_filter
  # Tests find ../shared/ref from the repository root, the working directory.
  # No -L: loader and libc are multiarch libc6:arm64's (see the toolchain file).
  {
    printf '\n--- %s on qemu -cpu %s ---\n' "$t" "$cpu"
    if QEMU_CPU=$cpu "$qemu" "$build/$t" --gtest_brief=1 --gtest_filter="$filter" \
         --gtest_output="xml:$build/$t.${cpu%%,*}.xml"; then
      echo ok > "$log.status"
    else
      echo "aarch64: $t FAILED on qemu -cpu $cpu"
    fi
  } > "$log" 2>&1
}

pairs=()
for run in $runs; do
  cpu=${run%%:*}
  IFS=, read -ra layers <<< "${run#*:}"
  for layer in "${layers[@]}"; do
    pairs+=("$cpu engram_${layer}_tests")
  done
done

for i in "${!pairs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do wait -n || true; done
  read -r cpu t <<< "${pairs[$i]}"
  run_one "$cpu" "$t" "$logs/$i" &
done
wait

status=0
for i in "${!pairs[@]}"; do
  cat "$logs/$i"
  if [ ! -f "$logs/$i.status" ]; then
    grep -q FAILED "$logs/$i" || echo "aarch64: ${pairs[$i]} did not finish"
    status=1
  fi
done >&2
exit $status
