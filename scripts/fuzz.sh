#!/usr/bin/env bash
# Fuzzes the GGUF reader with libFuzzer (ASan + UBSan) for SECONDS (default 60).
#
#   scripts/fuzz.sh [SECONDS]
#
# Builds fuzz/gguf_fuzz.cpp with clang in build-fuzz/, seeds a corpus in a
# temporary directory with the reference GGUF files (../shared/ref, when
# present) and a few small hand-made GGUF files, and exits non-zero if
# libFuzzer finds a crash, a leak, a sanitizer error or an out-of-memory input.
# Nothing is written into the repository except build-fuzz/. On failure the
# temporary directory (with the crashing input) is kept and its path printed.
#
# Environment: FUZZ_MAX_LEN (default 262144) caps the input size; JOBS (default
# 2) is the build parallelism.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
MAX_LEN="${FUZZ_MAX_LEN:-262144}"
JOBS="${JOBS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-fuzz"
REF="$ROOT/../shared/ref"

if ! [[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ ]] || [ "$SECONDS_TO_RUN" -eq 0 ]; then
  echo "usage: $0 [SECONDS]   (a positive whole number of seconds, default 60)" >&2
  exit 2
fi
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2; exit 2; }

# ENGRAM_SANITIZE as well, so the engram libraries are instrumented too.
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DENGRAM_FUZZ=ON -DENGRAM_SANITIZE=ON -DENGRAM_TESTS=OFF >/dev/null
ninja -C "$BUILD" -j "$JOBS" gguf_fuzz

WORK="$(mktemp -d "${TMPDIR:-/tmp}/engram-fuzz.XXXXXX")"
CORPUS="$WORK/corpus"
mkdir -p "$CORPUS" "$WORK/artifacts"

# Seeds 1: the reference files (libFuzzer reads at most MAX_LEN bytes of each).
n_ref=0
for f in "$REF"/models/*.gguf "$REF"/vocab/*.gguf; do
  [ -f "$f" ] || continue
  ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$CORPUS/"
  n_ref=$((n_ref + 1))
done

# Seeds 2: small complete files, written here from the format description so
# that the fuzzer starts from inputs that parse all the way to the tensor data.
python3 - "$CORPUS" <<'EOF'
import struct, sys, os
out = sys.argv[1]

def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b

def kv(key, vtype, payload):
    return s(key) + struct.pack('<I', vtype) + payload

def gguf(kvs, tensors, alignment=32, version=3):
    # tensors: (name, ne, type, n_bytes)
    head = b'GGUF' + struct.pack('<IQQ', version, len(tensors), len(kvs)) + b''.join(kvs)
    infos, offset, datas = b'', 0, []
    for name, ne, ttype, nbytes in tensors:
        infos += s(name) + struct.pack('<I', len(ne)) + b''.join(struct.pack('<Q', n) for n in ne)
        infos += struct.pack('<IQ', ttype, offset)
        datas.append(bytes((i * 37 + 11) & 0xff for i in range(nbytes)))
        offset += (nbytes + alignment - 1) // alignment * alignment
    body = head + infos
    body += b'\0' * (-len(body) % alignment)
    for d in datas:
        body += d + b'\0' * (-len(d) % alignment)
    return body

every_type = [
    kv('general.architecture', 8, s('llama')),
    kv('u8', 0, struct.pack('<B', 200)), kv('i8', 1, struct.pack('<b', -3)),
    kv('u16', 2, struct.pack('<H', 60000)), kv('i16', 3, struct.pack('<h', -300)),
    kv('u32', 4, struct.pack('<I', 7)), kv('i32', 5, struct.pack('<i', -7)),
    kv('f32', 6, struct.pack('<f', 1e-5)), kv('bool', 7, b'\1'),
    kv('u64', 10, struct.pack('<Q', 1 << 40)), kv('i64', 11, struct.pack('<q', -(1 << 40))),
    kv('f64', 12, struct.pack('<d', 0.25)),
    kv('tokenizer.ggml.tokens', 9, struct.pack('<IQ', 8, 3) + s('<unk>') + s('<s>') + s('</s>')),
    kv('tokenizer.ggml.scores', 9, struct.pack('<IQ', 6, 3) + struct.pack('<3f', 0, -1, -2)),
    kv('tokenizer.ggml.token_type', 9, struct.pack('<IQ', 5, 3) + struct.pack('<3i', 2, 3, 3)),
    kv('arr.bool', 9, struct.pack('<IQ', 7, 2) + b'\1\0'),
    kv('arr.u8', 9, struct.pack('<IQ', 0, 4) + b'\1\2\3\4'),
]
tensors = [('token_embd.weight', [8, 3], 0, 96),       # f32
           ('blk.0.attn_q.weight', [32, 2], 8, 68),     # q8_0
           ('blk.0.ffn_down.weight', [256], 12, 144),   # q4_K
           ('output_norm.weight', [8], 1, 16)]          # f16
with open(os.path.join(out, 'seed-every-type.gguf'), 'wb') as f:
    f.write(gguf(every_type, tensors))
with open(os.path.join(out, 'seed-align64-v2.gguf'), 'wb') as f:
    f.write(gguf([kv('general.alignment', 4, struct.pack('<I', 64))], tensors[:2], alignment=64, version=2))
with open(os.path.join(out, 'seed-metadata-only.gguf'), 'wb') as f:
    f.write(gguf(every_type[:3], []))
EOF

echo "fuzz.sh: corpus $CORPUS: $n_ref reference files + 3 small seeds; running ${SECONDS_TO_RUN}s, max_len $MAX_LEN"
status=0
(cd "$WORK" && "$BUILD/gguf_fuzz" "$CORPUS" \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -max_len="$MAX_LEN" -timeout=10 \
    -artifact_prefix="$WORK/artifacts/" -print_final_stats=1) 2>&1 | tee "$WORK/fuzz.log" || status=$?
if [ "$status" -ne 0 ] || [ -n "$(ls -A "$WORK/artifacts")" ]; then
  echo "fuzz.sh: FAILED (exit $status); crashing inputs and log kept in $WORK" >&2
  exit 1
fi
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/fuzz.log" | grep -o '[0-9]*$' || true)
rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$WORK/fuzz.log" | grep -o '[0-9]*$' || true)
echo "fuzz.sh: OK, no crashes: ${execs:-?} runs, ${rate:-?} execs/s"
rm -rf "$WORK"
