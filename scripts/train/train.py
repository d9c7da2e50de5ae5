"""Trains engram's retrieval model on one CPU thread, resumably.

  python3 train.py --run-dir /work/train-run [--max-steps N] [--minutes M]

The run directory holds the KJV text cache, tokenizer.bin, the checkpoints
(ckpt.pt: latest, best.pt: best held-out answer accuracy at the longest
length) and train.log. Running the same command again resumes.

Curriculum: sequence lengths 256 -> 512 -> 1024 -> 2048 tokens. A length is
unlocked when the exact-match answer accuracy at the current one passes
--gate; shorter lengths stay in the mix after every jump.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from model import Config, Transformer  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

LENGTHS = [256, 512, 1024, 2048]
TASKS = ["single", "multikey", "multivalue", "dense", "repeat"]
TASK_PROBS = [0.25, 0.30, 0.15, 0.30, 0.0]
# At the first length, mostly dense recall: retrieval is learned there first
# (natural text alone buries the few answer tokens of the other tasks).
FIRST_TASK_PROBS = [0.10, 0.15, 0.05, 0.70, 0.0]
# From --repeat-from-step on, repeated random strings join the mix: without
# them the run above showed no in-context copying at all after 950 steps.
REPEAT_TASK_PROBS = [0.25, 0.30, 0.15, 0.20, 0.10]
REPEAT_FIRST_TASK_PROBS = [0.10, 0.15, 0.05, 0.40, 0.30]
# --copy-warmup: copying alone first, until the copied tokens are predicted
# (an induction head exists); then retrieval, with copying kept in the mix.
COPY_ONLY_PROBS = [0.0, 0.0, 0.0, 0.0, 1.0]
HELD_OUT = 0.05  # the last 5% of the verses: haystack for evaluation only


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", default="/work/train-run")
    p.add_argument("--minutes", type=float, default=1e9, help="wall-clock training budget (total over resumes)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--repeat-from-step", type=int, default=-1,
                   help="add the repeated-random-string task from this step on (-1: never)")
    p.add_argument("--copy-warmup", action="store_true",
                   help="train on repeated random strings alone until --copy-gate, then add retrieval")
    p.add_argument("--copy-gate", type=float, default=0.9)
    p.add_argument("--copy-len", type=int, default=256, help="sequence length of the copy warm-up")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--tokens-per-step", type=int, default=8192)
    p.add_argument("--answer-weight", type=float, default=5.0)
    p.add_argument("--gate", type=float, default=0.95)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--eval-minutes", type=float, default=8.0)
    p.add_argument("--eval-samples", type=int, default=40)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def log(run_dir, msg):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)
    with open(os.path.join(run_dir, "train.log"), "a") as f:
        f.write(line + "\n")


def setup_data(args):
    verses = data.kjv_text(args.run_dir)
    split = int(len(verses) * (1 - HELD_OUT))
    tok_path = os.path.join(args.run_dir, "tokenizer.bin")
    if os.path.exists(tok_path):
        tok = Tokenizer.load_llama2c(tok_path, args.vocab)
    else:
        tok = Tokenizer.build(" ".join(verses[:split]), args.vocab,
                              boost_words=data.KEY_CANDIDATES + data.TEMPLATE_WORDS, boost_count=2000)
        tok.save_llama2c(tok_path + ".tmp")
        os.replace(tok_path + ".tmp", tok_path)
    keys = data.usable_keys(tok)
    train_maker = data.TaskMaker(tok, data.Haystack(tok, verses[:split]), keys)
    eval_maker = data.TaskMaker(tok, data.Haystack(tok, verses[split:]), keys)
    return tok, keys, train_maker, eval_maker


def loss_and_hits(model, x, w, ans):
    """Weighted cross-entropy, plus argmax hits at the answer positions."""
    logits = model(x[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    ce = ce.view_as(w)
    loss = (ce * w).sum() / w.sum()
    hits = (logits.argmax(-1) == x[:, 1:]) & ans
    lm = (ce * (w == 1)).sum() / (w == 1).sum().clamp(min=1)
    return loss, hits, lm


def query_accuracy(hits, queries):
    """Per task: (exact-match queries, queries)."""
    out = {}
    hits = hits.cpu().numpy()
    for b, (task, qs) in enumerate(queries):
        for pos in qs:
            good = bool(all(hits[b, p] for p in pos))
            c = out.setdefault(task, [0, 0])
            c[0] += good
            c[1] += 1
    return out


@torch.no_grad()
def held_out_eval(model, maker, T, n, seed):
    """Exact-match accuracy on fixed held-out samples at length T:
    single needle, and multi-key with 4 keys."""
    model.eval()
    res = {}
    for name, task, nk in [("single", "single", None), ("multikey4", "multikey", 4)]:
        rng = random.Random(seed)
        good = total = 0
        for i in range(0, n, 4):
            xs, ans = [], []
            for _ in range(min(4, n - i)):
                s = maker.sample(rng, T, task, n_keys=nk)
                ids = s["ids"] + [data.EOS] * (T + 1 - len(s["ids"]))
                xs.append(ids)
                ans.append(s["answers"])
            x = torch.tensor(xs, dtype=torch.long)
            pred = model(x[:, :-1]).argmax(-1)
            for b, pos in enumerate(ans):
                good += int(all(pred[b, p] == x[b, p + 1] for p in pos))
                total += 1
        res[name] = good / total
    model.train()
    return res


def save(path, state):
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.run_dir, exist_ok=True)
    tok, keys, maker, eval_maker = setup_data(args)
    cfg = Config(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.heads,
                 vocab_size=tok.vocab_size, hidden_dim=args.hidden, max_seq_len=args.max_len)
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    ckpt_path = os.path.join(args.run_dir, "ckpt.pt")
    st = dict(step=0, tokens=0, elapsed=0.0, level=0, ema={}, best=-1.0, history=[])
    rng = random.Random(args.seed)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        st = ck["state"]
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        log(args.run_dir, f"resumed at step {st['step']} ({st['elapsed'] / 60:.1f} min, level {st['level']})")
    else:
        with open(os.path.join(args.run_dir, "config.json"), "w") as f:
            json.dump(dict(model=cfg.__dict__, args=vars(args), keys=keys), f, indent=1)
        log(args.run_dir, f"new run: {model.n_params() / 1e6:.2f}M params, {cfg}, {len(keys)} keys")

    def checkpoint(path):
        save(path, dict(model=model.state_dict(), opt=opt.state_dict(), state=st, rng=rng.getstate(),
                        torch_rng=torch.get_rng_state(), config=cfg.__dict__))

    t_last = time.time()
    last_ckpt = last_eval = st["elapsed"]
    win = {}  # task -> [good, total] since the last log line
    win_loss, win_lm, win_n = 0.0, 0.0, 0
    lengths = [L for L in LENGTHS if L <= args.max_len]
    while st["elapsed"] < args.minutes * 60 and (args.max_steps <= 0 or st["step"] < args.max_steps):
        level = st["level"]
        if level == 0 or rng.random() < 0.5:
            T = lengths[level]
        else:
            T = lengths[rng.randrange(level)]
        B = max(1, args.tokens_per_step // T)
        copying = args.copy_warmup and not st.get("copy_done", False)
        if copying:
            T, B = args.copy_len, max(1, args.tokens_per_step // args.copy_len)
            probs = COPY_ONLY_PROBS
        elif args.copy_warmup or 0 <= args.repeat_from_step <= st["step"]:
            probs = REPEAT_FIRST_TASK_PROBS if T == lengths[0] else REPEAT_TASK_PROBS
        else:
            probs = FIRST_TASK_PROBS if T == lengths[0] else TASK_PROBS
        x, w, ans, queries = data.batch(maker, rng, T, B, TASKS, probs, args.answer_weight)
        x, w, ans = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(ans)
        lr = args.lr * min(1.0, (st["step"] + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, hits, lm = loss_and_hits(model, x, w, ans)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        now = time.time()
        st["elapsed"] += now - t_last
        t_last = now
        st["step"] += 1
        st["tokens"] += B * T
        acc = query_accuracy(hits, queries)
        # The gate ignores multi-value answers (three values in order: harder,
        # and not one of the targets).
        good = sum(v[0] for t, v in acc.items() if t not in ("multivalue", "repeat"))
        total = sum(v[1] for t, v in acc.items() if t not in ("multivalue", "repeat"))
        key = str(T)
        if "repeat" in acc:
            g, n = acc["repeat"]
            st["ema"]["copy"] = 0.9 * st["ema"].get("copy", 0.0) + 0.1 * g / max(1, n)
        if copying:
            if st["ema"]["copy"] > args.copy_gate:
                st["copy_done"] = True
                log(args.run_dir, f"step {st['step']}: copy accuracy {st['ema']['copy']:.3f}: adding retrieval")
            total = 0  # the length gate waits for retrieval
        if total:
            st["ema"][key] = 0.95 * st["ema"].get(key, 0.0) + 0.05 * (good / total)
        for t, (g, n) in acc.items():
            c = win.setdefault(f"{t}@{T}", [0, 0])
            c[0] += g
            c[1] += n
        win_loss += loss.item()
        win_lm += lm.item()
        win_n += 1
        if T == lengths[level] and level + 1 < len(lengths) and st["ema"].get(key, 0.0) > args.gate:
            st["level"] += 1
            log(args.run_dir, f"step {st['step']}: accuracy {st['ema'][key]:.3f} at T={T}: "
                              f"now training up to T={lengths[st['level']]}")
        if st["step"] % 20 == 0:
            accs = " ".join(f"{k}={g / n:.2f}" for k, (g, n) in sorted(win.items()) if n)
            log(args.run_dir, f"step {st['step']} tok {st['tokens'] / 1e6:.2f}M {st['elapsed'] / 60:.1f}min "
                              f"lr {lr:.1e} loss {win_loss / win_n:.3f} lm {win_lm / win_n:.3f} "
                              f"ema {json.dumps({k: round(v, 3) for k, v in st['ema'].items()})} | {accs}")
            st["history"].append(dict(step=st["step"], tokens=st["tokens"], minutes=st["elapsed"] / 60,
                                      loss=win_loss / win_n, lm=win_lm / win_n))
            win, win_loss, win_lm, win_n = {}, 0.0, 0.0, 0
        if st["elapsed"] - last_eval > args.eval_minutes * 60 and st["level"] == len(lengths) - 1:
            res = held_out_eval(model, eval_maker, lengths[-1], args.eval_samples, seed=999)
            t_last = time.time()  # evaluation time is not training time
            last_eval = st["elapsed"]
            score = res["single"] + res["multikey4"]
            st["history"].append(dict(step=st["step"], eval=res))
            log(args.run_dir, f"held-out T={lengths[-1]}: {res}")
            if score >= st["best"]:
                st["best"] = score
                checkpoint(os.path.join(args.run_dir, "best.pt"))
                log(args.run_dir, "saved best.pt")
        if st["elapsed"] - last_ckpt > args.ckpt_minutes * 60:
            checkpoint(ckpt_path)
            last_ckpt = st["elapsed"]
    checkpoint(ckpt_path)
    log(args.run_dir, f"done: step {st['step']}, {st['tokens'] / 1e6:.2f}M tokens, {st['elapsed'] / 60:.1f} min")


if __name__ == "__main__":
    main()
