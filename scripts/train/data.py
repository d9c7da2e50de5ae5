"""Training data: KJV haystack text and RULER-style retrieval tasks.

Every sample is built from token pieces that each start at a word boundary
(a space), so the token ids equal what engram's tokenizer gives for the
sample's text. The text of a sample is decode(ids) without the dummy space.

Templates (the contract with `engram bench niah` and the demo):
  needle:       " The special magic number for {key} is {value}."
  question:     " What is the special magic number for {key}? The special magic number for {key} is"
  answer:       " {value}."
  multi-value:  " What are all the special magic numbers for {key}? The special magic numbers for {key} are"
  answer:       " {v1}, {v2}, {v3}."   (values in the order they appear in the text)
Keys are single-token common nouns (models/engram-keys.txt), values are
numbers 100-999 (one token each).
"""
import os
import random
import subprocess

import numpy as np

from tokenizer import BOS, EOS, FIRST_BYTE, N_BYTES

FIRST_WORD_ID = FIRST_BYTE + N_BYTES  # first id after the byte tokens

NEEDLE = "The special magic number for {key} is {value}."
QUESTION = "What is the special magic number for {key}? The special magic number for {key} is"
MV_QUESTION = "What are all the special magic numbers for {key}? The special magic numbers for {key} are"
VALUE_MIN, VALUE_MAX = 100, 999

# Candidate keys: concrete, common nouns. Those that are not a single token
# in the final vocabulary are dropped (see usable_keys).
KEY_CANDIDATES = """
apple river garden window silver mountain candle forest island bridge castle
tiger rabbit violin pepper copper marble cotton pencil ladder basket anchor
button carpet dragon engine feather guitar hammer helmet jacket kettle lemon
magnet mirror needle orange parrot pillow pocket puzzle rocket saddle shadow
spider sugar tablet tomato tunnel turtle wallet walnut wizard zebra cherry
coffee cookie dolphin falcon ginger harbor lantern meadow monkey ocean palace
planet pirate potato purple rainbow ribbon salmon spoon summer winter autumn
thunder tower valley velvet village wagon yellow camera cactus compass crystal
diamond eagle emerald fountain glacier honey iron jungle kitchen laptop mango
museum noodle olive panda piano pumpkin radio robot sandal scarf shovel
squirrel station stove sunset taxi tent ticket tulip umbrella vase whale
banana bottle butter cabin circle cloud desert dinner doctor donkey garlic
horse lion house water bread stone gold fire city table chair door paper
""".split()

# Words of the templates: boosted so that each is one token.
TEMPLATE_WORDS = "The What special magic number numbers for is are all the".split()

KJV_CACHE_NAME = "kjv.txt"


def kjv_text(cache_dir):
    """The King James Bible as one verse per line (Debian's `bible` program
    decompresses bible-kjv-text)."""
    path = os.path.join(cache_dir, KJV_CACHE_NAME)
    if not os.path.exists(path):
        out = subprocess.run(["bible", "-l", "100000", "gen1:1-rev22:21"], check=True,
                             capture_output=True, text=True).stdout
        verses = []
        for line in out.splitlines():
            parts = line.strip().split(" ", 1)
            if line.startswith("  ") and len(parts) == 2 and parts[0].isdigit():
                verses.append(" ".join(parts[1].split()))
        os.makedirs(cache_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(verses) + "\n")
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return [v for v in f.read().split("\n") if v]


def usable_keys(tok):
    return [k for k in KEY_CANDIDATES if len(tok.encode_word(k)) == 1]


def encode_words(tok, text):
    """Tokens of text that starts at a word boundary (leading space implied)."""
    out = []
    for w in text.split(" "):
        out.extend(tok.encode_word(w))
    return out


class Haystack:
    """The KJV as one token stream, with the verse starts as cut points."""

    def __init__(self, tok, verses):
        ids, starts = [], []
        for v in verses:
            starts.append(len(ids))
            ids.extend(encode_words(tok, v))
        self.ids = np.array(ids, dtype=np.int32)
        self.starts = np.array(starts, dtype=np.int64)

    def take(self, rng, n):
        """About n tokens of whole consecutive verses (at most n); returns the
        token list and the offsets of the verse starts within it."""
        if n <= 0:
            return [], [0]
        i = rng.randrange(len(self.starts) - 1)
        begin = int(self.starts[i])
        j = int(np.searchsorted(self.starts, begin + n, side="right")) - 1
        end = int(self.starts[j]) if j > i else begin
        if end == begin:  # one verse longer than n: cut it at a word start
            end = begin + n
        cuts = [int(s) - begin for s in self.starts[i:j]] if j > i else [0]
        return self.ids[begin:end].tolist(), cuts


class TaskMaker:
    """Builds training and evaluation samples: ids plus per-token loss weights
    and the answer positions (where the next token is an answer)."""

    def __init__(self, tok, haystack, keys):
        self.tok = tok
        self.hay = haystack
        self.keys = keys
        self.value_ids = {v: tok.encode_word(str(v)) for v in range(VALUE_MIN, VALUE_MAX + 1)}
        assert all(len(x) == 1 for x in self.value_ids.values())
        self.period = tok.encode_word(".")[-1]
        self.comma = tok._spm(",")[0]
        self._tmpl = {}

    def words(self, text):
        ids = self._tmpl.get(text)
        if ids is None:
            ids = encode_words(self.tok, text)
            self._tmpl[text] = ids
        return ids

    def needle(self, key, value):
        # ids and the index of the value token (its weight is zero: random).
        pre = self.words(NEEDLE.split(" {value}")[0].format(key=key))
        return pre + self.value_ids[value] + [self.period], len(pre)

    def sample(self, rng, T, task, n_keys=None, depth=None):
        """One sequence of at most T+1 tokens (inputs ids[:-1], targets ids[1:]).

        task: single | multikey | multivalue | dense
        Returns dict(ids, weights (per target position), answers (target
        positions that are answers), queries (list of answer-position lists)).
        """
        if task == "repeat":
            return self.repeat_sample(rng, T)
        if task == "single":
            n, q = 1, 1
        elif task == "multikey":
            n = n_keys or rng.randint(2, 8)
            q = 1 if n_keys else rng.randint(1, min(n, 4))
        elif task == "multivalue":
            n = rng.randint(2, 4)
            q = 1
        elif task == "dense":
            # A needle and its question take 27 tokens: pack the sequence
            # (associative recall as in MQAR: the haystack is what is left).
            top = max(2, min(len(self.keys), (T - 16) // 28))
            n = rng.randint(max(2, top // 2), top)
            q = n
        else:
            raise ValueError(task)
        keys = rng.sample(self.keys, n + (rng.randint(0, 3) if task == "multivalue" else 0))
        values = [rng.randint(VALUE_MIN, VALUE_MAX) for _ in keys]
        if task == "multivalue":
            # Key 0 holds n values; the other keys are distractors.
            mv_values = [rng.randint(VALUE_MIN, VALUE_MAX) for _ in range(n)]
            needle_kv = [(keys[0], v) for v in mv_values] + list(zip(keys[1:], values[1:]))
        else:
            needle_kv = list(zip(keys, values))
        rng.shuffle(needle_kv)

        # The questions, with the positions of their answer tokens.
        qblocks = []  # (ids, [answer token offsets])
        if task == "multivalue":
            k = keys[0]
            ids = self.words(MV_QUESTION.format(key=k))
            ans = []
            in_order = [v for kk, v in needle_kv if kk == k]
            for i, v in enumerate(in_order):
                ans.append(len(ids))
                ids = ids + self.value_ids[v] + ([self.comma] if i + 1 < len(in_order) else [self.period])
            qblocks.append((ids, ans))
        else:
            asked = rng.sample(range(n), q)
            for a in asked:
                k, v = keys[a], values[a]
                ids = self.words(QUESTION.format(key=k))
                qblocks.append((ids + self.value_ids[v] + [self.period], [len(ids)]))

        needles = [self.needle(k, v) for k, v in needle_kv]
        fixed = 1 + sum(len(x[0]) for x in needles) + sum(len(x[0]) for x in qblocks)
        hay, cuts = self.hay.take(rng, T + 1 - fixed)

        # Needles go in at verse starts, at uniform (or given) depths.
        spots = []
        for _ in needles:
            d = depth if depth is not None else rng.random()
            spots.append(cuts[min(len(cuts) - 1, int(round(d * (len(cuts) - 1))))])
        spots.sort()
        ids = [BOS]
        weights = []  # weight of predicting ids[t+1] from ids[:t+1]; filled below
        zero = set()  # positions (in ids) whose token is not predictable
        prev = 0
        for (nd, vpos), s in zip(needles, spots):
            ids.extend(hay[prev:s])
            prev = s
            start = len(ids)
            ids.extend(nd)
            zero.add(start + vpos)          # the value: random
            zero.add(start + vpos - 2)      # the key: random
        ids.extend(hay[prev:])
        answers, queries = [], []
        for qids, ans in qblocks:
            start = len(ids)
            ids.extend(qids)
            pos = [start + a - 1 for a in ans]  # target index t predicts ids[t+1]
            answers.extend(pos)
            queries.append(pos)
        if len(ids) > T + 1:
            raise ValueError(f"{task} sample of {len(ids)} tokens does not fit T={T}")
        weights = np.ones(len(ids) - 1, dtype=np.float32)
        for z in zero:
            weights[z - 1] = 0.0
        return dict(ids=ids, weights=weights, answers=answers, queries=queries, task=task)


def _repeat_sample(self, rng, T):
    """Random token strings, each followed by its copy: plain induction
    (copy what followed the last time), the circuit retrieval builds on.
    Only the copies, after their first token, are predictable."""
    ids, zero, answers = [BOS], set(), []
    lo = FIRST_WORD_ID
    while True:
        L = rng.randint(8, 32)
        if len(ids) + 2 * L > T + 1:
            break
        s = [rng.randrange(lo, self.tok.vocab_size) for _ in range(L)]
        zero.update(range(len(ids), len(ids) + L + 1))
        # Copied tokens after the first: target index t predicts ids[t+1].
        answers.extend(range(len(ids) + L, len(ids) + 2 * L - 1))
        ids.extend(s + s)
    weights = np.ones(len(ids) - 1, dtype=np.float32)
    for z in zero:
        if 0 < z < len(ids):
            weights[z - 1] = 0.0
    return dict(ids=ids, weights=weights, answers=answers, queries=[[a] for a in answers], task="repeat")


TaskMaker.repeat_sample = _repeat_sample


def batch(maker, rng, T, B, tasks, probs, answer_weight):
    """B samples of T tokens, padded with EOS (weight 0)."""
    x = np.full((B, T + 1), EOS, dtype=np.int64)
    w = np.zeros((B, T), dtype=np.float32)
    ans = np.zeros((B, T), dtype=bool)
    queries = []
    for b in range(B):
        task = rng.choices(tasks, probs)[0]
        s = maker.sample(rng, T, task)
        n = len(s["ids"])
        x[b, :n] = s["ids"]
        w[b, :n - 1] = s["weights"]
        for p in s["answers"]:
            w[b, p] = answer_weight
            ans[b, p] = True
        queries.append((task, s["queries"]))
    return x, w, ans, queries
