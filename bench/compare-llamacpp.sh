#!/usr/bin/env bash
# Compares `engram bench speed` with llama.cpp's llama-bench on the same GGUF
# files: pp (prompt processing) and tg (generation) tokens/s, run alternately
# (engram, llama.cpp, engram, llama.cpp, ...) so that both see the same
# machine state, then prints a markdown table with the ratios.
#
#   bench/compare-llamacpp.sh PEER_BIN_DIR MODEL...
#
# PEER_BIN_DIR holds a llama.cpp build's llama-bench (this script never builds
# llama.cpp). Without it the script says so and exits 0.
# Environment: THREADS (2), REPS (5) repetitions per run, P (512) prompt
# tokens, N (128) generated tokens, D (0) tokens already in the context
# (passed as -d only when > 0: llama-bench needs its -d option, which older
# builds lack), ROUNDS (2) alternations per model,
# ENGRAM (the engram binary; default build/engram beside this script),
# KEEP (a directory to keep the raw JSON in), PEER_ARGS (extra llama-bench
# flags, e.g. "--poll 0" on a busy machine, where busy-waiting threads stall,
# or "-mmp 0" to load its weights into memory), ENGRAM_ARGS (extra engram
# bench speed flags, e.g. "--load mmap").
set -euo pipefail

THREADS=${THREADS:-2}
REPS=${REPS:-5}
P=${P:-512}
D=${D:-0}
depth_args=()
if [ "$D" != 0 ]; then depth_args=(-d "$D"); fi
N=${N:-128}
ROUNDS=${ROUNDS:-2}
PEER_ARGS=${PEER_ARGS:-}
ENGRAM_ARGS=${ENGRAM_ARGS:-}
here=$(cd "$(dirname "$0")" && pwd)
ENGRAM=${ENGRAM:-$here/../build/engram}

if [ $# -lt 1 ]; then
  echo "usage: $0 PEER_BIN_DIR MODEL..." >&2
  exit 2
fi
peer_dir=$1
shift
if [ ! -x "$peer_dir/llama-bench" ]; then
  echo "compare-llamacpp: no llama-bench in '$peer_dir': no llama.cpp peer to compare with; skipping."
  exit 0
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 PEER_BIN_DIR MODEL..." >&2
  exit 2
fi
if [ ! -x "$ENGRAM" ]; then
  echo "compare-llamacpp: engram binary '$ENGRAM' not found (build it or set ENGRAM)" >&2
  exit 1
fi

raw=${KEEP:-$(mktemp -d)}
mkdir -p "$raw"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$raw"' EXIT

echo "engram: $ENGRAM"
echo "llama.cpp: $peer_dir/llama-bench"
echo "threads $THREADS, -p $P -n $N -d $D, $REPS repetitions x $ROUNDS rounds (alternating)${PEER_ARGS:+, llama-bench $PEER_ARGS}${ENGRAM_ARGS:+, engram $ENGRAM_ARGS}"
echo

i=0
for model in "$@"; do
  if [ ! -f "$model" ]; then
    echo "compare-llamacpp: model '$model' not found" >&2
    exit 1
  fi
  i=$((i + 1))
  for round in $(seq 1 "$ROUNDS"); do
    echo "[$model] round $round/$ROUNDS: engram" >&2
    "$ENGRAM" bench speed -m "$model" -p "$P" -n "$N" "${depth_args[@]}" -t "$THREADS" -r "$REPS" $ENGRAM_ARGS \
      --json "$raw/m$i.engram.$round.json" >/dev/null
    echo "[$model] round $round/$ROUNDS: llama.cpp" >&2
    "$peer_dir/llama-bench" -m "$model" -p "$P" -n "$N" "${depth_args[@]}" -t "$THREADS" -r "$REPS" -o json $PEER_ARGS \
      >"$raw/m$i.llamacpp.$round.json" 2>"$raw/m$i.llamacpp.$round.log"
  done
  echo "$model" >"$raw/m$i.name"
done

# Every repetition of every round is pooled. Medians are the headline; the
# best repetition is shown too, since a busy machine slows single runs down
# (busy-waiting thread pools suffer most when a core is taken away).
python3 - "$raw" "$i" <<'PY'
import json, statistics, sys, os
raw, n_models = sys.argv[1], int(sys.argv[2])
print("| model | test | engram t/s (median) | llama.cpp t/s (median) | ratio | engram best | llama.cpp best | ratio (best) | samples |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for m in range(1, n_models + 1):
    name = open(os.path.join(raw, f"m{m}.name")).read().strip()
    engram, peer = {}, {}
    for f in sorted(os.listdir(raw)):
        path = os.path.join(raw, f)
        if f.startswith(f"m{m}.engram.") and f.endswith(".json"):
            for t in json.load(open(path))["tests"]:
                engram.setdefault(t["test"], []).extend(t["samples_ts"])
        elif f.startswith(f"m{m}.llamacpp.") and f.endswith(".json"):
            for t in json.load(open(path)):
                test = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
                if t.get("n_depth", 0):
                    test += f" @ d{t['n_depth']}"
                peer.setdefault(test, []).extend(t["samples_ts"])
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    for test in sorted(set(engram) | set(peer), key=lambda s: (s[:2] != "pp", s)):
        e, p = engram.get(test, []), peer.get(test, [])
        em, pm = (statistics.median(e) if e else None), (statistics.median(p) if p else None)
        eb, pb = (max(e) if e else None), (max(p) if p else None)
        print(f"| {os.path.basename(name)} | {test} | {fmt(em)} | {fmt(pm)} | {ratio(em, pm)} | {fmt(eb)} | {fmt(pb)} "
              f"| {ratio(eb, pb)} | {len(e)} / {len(p)} |")
PY
