#!/usr/bin/env bash
# Reproduces engram's shipped model, models/engram.gguf, from nothing:
#   bash scripts/train/train.sh
# 1. installs the training packages (scripts/setup-train.sh);
# 2. builds the engram binary if needed;
# 3. builds the tokenizer and trains on one CPU thread (resumable: run it
#    again after an interruption and it continues from the last checkpoint);
# 4. exports the checkpoint to llama2.c's format, converts it with
#    `engram convert-llama2c` into models/engram.gguf;
# 5. measures needle accuracy at the trained length with engram itself.
#
# Environment:
#   ENGRAM_TRAIN_DIR  run directory, outside the repo (default ~/.cache/engram-train)
#   STEPS             training steps (default: those of the shipped model)
#   TRIALS            evaluation trials per task and length (default 40)
#   ENGRAM            the engram binary (default: build/engram, built if missing)
# See docs/model-card.md for the wall time this takes on a 2-core machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN_DIR=${ENGRAM_TRAIN_DIR:-${HOME}/.cache/engram-train}
STEPS=${STEPS:-861}
TRIALS=${TRIALS:-40}
PY=/usr/bin/python3   # Debian's python3-torch lives in the system Python
ENGRAM=${ENGRAM:-$ROOT/build/engram}
HERE=$ROOT/scripts/train

bash "$ROOT/scripts/setup-train.sh"
if [ ! -x "$ENGRAM" ]; then
  cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  ninja -C "$ROOT/build" engram
  ENGRAM=$ROOT/build/engram
fi

mkdir -p "$RUN_DIR" "$ROOT/models"
export OMP_NUM_THREADS=1
# The recipe of the shipped model (docs/model-card.md): copying alone first
# (repeated random strings at 64 tokens) until an induction head exists, then
# the retrieval tasks with the length curriculum 256 -> 2048.
"$PY" "$HERE/train.py" --run-dir "$RUN_DIR" --max-steps "$STEPS" --threads 1 \
  --copy-warmup --copy-len 64 --dim 128 --layers 4 --heads 4 --hidden 384 --lr 3e-3 --warmup 50

"$PY" "$HERE/export.py" "$RUN_DIR/ckpt.pt" "$RUN_DIR/engram.bin"
"$ENGRAM" convert-llama2c "$RUN_DIR/engram.bin" "$RUN_DIR/tokenizer.bin" "$ROOT/models/engram.gguf"
"$PY" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["keys"]))' \
  "$RUN_DIR/config.json" > "$ROOT/models/engram-keys.txt"

# Needle accuracy from engram itself, at the first curriculum length and at
# the longest (a prompt of 2048 tokens takes engram several seconds on 1 thread).
for LEN in 256 2048; do
  "$PY" "$HERE/eval_engram.py" --engram "$ENGRAM" --model "$ROOT/models/engram.gguf" \
    --tokenizer "$RUN_DIR/tokenizer.bin" --kjv "$RUN_DIR" --length "$LEN" --trials "$TRIALS" \
    --tasks single,multikey --json "$RUN_DIR/eval-$LEN.json"
done
