"""Needle accuracy of a GGUF model, measured by the engram binary itself.

  python3 eval_engram.py --engram build/engram --model models/engram.gguf \
      --tokenizer RUN_DIR/tokenizer.bin --kjv RUN_DIR [--length 2048] [--trials 50]

Builds RULER-style prompts from the held-out end of the KJV (never trained
on), runs `engram logits` (greedy continuation) on each, and compares the
generated token ids with the planted values. Also checks that engram
tokenizes every prompt exactly as the training code does.
Prints a JSON report; --json writes it to a file too.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402
from train import HELD_OUT  # noqa: E402

DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def run_engram(engram, model, prompt, steps, threads, tmp):
    out = os.path.join(tmp, "logits.bin")
    r = subprocess.run([engram, "logits", "-m", model, "-p", prompt, "-n", str(steps), "-o", out, "-t", str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"engram logits failed: {r.stderr.strip()}")
    return [int(x) for x in r.stdout.replace(",", " ").split()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engram", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--kjv", required=True, help="directory with (or for) the kjv.txt cache")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--trials", type=int, default=50, help="per task")
    p.add_argument("--tasks", default="single,multikey,multivalue")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json")
    args = p.parse_args()

    tok = Tokenizer.load_llama2c(args.tokenizer, args.vocab)
    verses = data.kjv_text(args.kjv)
    split = int(len(verses) * (1 - HELD_OUT))
    maker = data.TaskMaker(tok, data.Haystack(tok, verses[split:]), data.usable_keys(tok))
    report = dict(model=args.model, length=args.length, trials=args.trials, tasks={})
    tok_mismatch = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            rng = random.Random(f"{args.seed}-{task}")
            good, per_depth = 0, {}
            for i in range(args.trials):
                depth = DEPTHS[i % len(DEPTHS)] if task == "single" else None
                nk = 4 if task == "multikey" else None
                s = maker.sample(rng, args.length, task, n_keys=nk, depth=depth)
                # The prompt stops right before the first answer token.
                first = s["queries"][0][0] + 1
                answer_pos = [q + 1 for q in s["queries"][0]]
                prompt_ids = s["ids"][:first]
                n_steps = answer_pos[-1] - first + 1
                prompt = tok.decode(prompt_ids)[1:]  # drop the dummy-prefix space
                got = run_engram(args.engram, args.model, prompt, n_steps, args.threads, tmp)
                if got[:first] != prompt_ids:
                    tok_mismatch += 1
                gen = got[first:]
                ok = all(gen[p - first] == s["ids"][p] for p in answer_pos if p - first < len(gen))
                ok = ok and len(gen) >= n_steps
                good += ok
                if depth is not None:
                    d = per_depth.setdefault(str(int(depth * 100)), [0, 0])
                    d[0] += ok
                    d[1] += 1
            entry = dict(accuracy=good / args.trials, correct=good, trials=args.trials)
            if per_depth:
                entry["by_depth"] = {k: v[0] / v[1] for k, v in per_depth.items()}
            report["tasks"][task] = entry
            print(f"{task}: {good}/{args.trials} = {good / args.trials:.3f}", file=sys.stderr, flush=True)
    report["tokenization_mismatches"] = tok_mismatch
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
