#!/usr/bin/env bash
# engram's main job: facts hidden in a long document (128K tokens of the KJV by
# default) are read once into Engram memory and recalled by the model shipped
# in models/, which was trained on 2K-token contexts. Prints the answers, the
# memory used and the speed. Extra arguments go to `engram demo`
# (e.g. --length 1M --memory-budget 2GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
engram=build/engram
[ -x "$engram" ] || { echo "demo: build first: cmake -S . -B build -G Ninja && cmake --build build" >&2; exit 1; }

if [ -f models/engram.gguf ]; then
  exec "$engram" demo -m models/engram.gguf "$@"
fi
# A checkout without the shipped model: plain generation with stories260K.
model=../shared/ref/models/stories260K.gguf
[ -f "$model" ] || { echo "demo: no model: models/engram.gguf is missing and $model is absent" >&2; exit 1; }
echo "demo: models/engram.gguf is missing; generating with $model instead" >&2
"$engram" run -m "$model" -p "Once upon a time" -n 200 --temp 0.8 --seed 42 --echo
