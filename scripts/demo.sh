#!/usr/bin/env bash
# engram's main job: generate text with the model that ships in models/.
set -euo pipefail
cd "$(dirname "$0")/.."
engram=build/engram
[ -x "$engram" ] || { echo "demo: build first: cmake -S . -B build -G Ninja && cmake --build build" >&2; exit 1; }

model=models/engram.gguf
if [ ! -f "$model" ]; then
  model=../shared/ref/models/stories260K.gguf
  [ -f "$model" ] || { echo "demo: no model: models/engram.gguf is not shipped yet and $model is absent" >&2; exit 1; }
  echo "demo: models/engram.gguf is not shipped yet; using $model" >&2
fi
"$engram" run -m "$model" -p "Once upon a time" -n 200 --temp 0.8 --seed 42 --echo
