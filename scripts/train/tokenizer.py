"""engram's retrieval tokenizer: a small SentencePiece-style vocabulary.

Layout of the vocabulary (ids), as llama2.c's tokenizer.bin expects:
  0 <unk>, 1 <s>, 2 </s>, 3..258 byte-fallback tokens <0x00>..<0xFF>,
  then single characters (printable ASCII and the space marker U+2581),
  then numbers: "▁0".."▁9", "▁10".."▁99", "▁100".."▁999",
  then word pieces learned by BPE on the KJV text, until the vocabulary is full.

Why this shape: every key of the retrieval tasks is one token (a common noun,
"▁river") and every value is one token (a number 100-999, "▁482"), so
recalling a fact is a one-token copy.

Encoding is SentencePiece's merge loop as llama.cpp's llm_tokenizer_spm and
engram's SPM tokenizer run it: start from single characters, repeatedly merge
the adjacent pair whose concatenation is a token with the highest score
(ties: leftmost), byte fallback for characters that are not tokens. The
scores are -rank, so the merge loop replays the learned merges in order.
Word pieces never contain punctuation or a space marker after their first
character, so no merge crosses a space and text can be encoded word by word.
"""
import collections
import heapq
import re
import struct

SPACE = "\u2581"  # SentencePiece's space marker
UNK, BOS, EOS = 0, 1, 2
N_BYTES = 256
FIRST_BYTE = 3

# Runs that word pieces may grow within: an optional space marker and letters.
_RUN = re.compile(SPACE + "?[A-Za-z]+|.", re.S)


def _number_tokens():
    toks = [SPACE + str(d) for d in range(10)]
    toks += [SPACE + str(n) for n in range(10, 100)]
    toks += [SPACE + str(n) for n in range(100, 1000)]
    return toks


def _learn_bpe(run_counts, n_merges):
    """Byte-pair merges over letter runs; returns merged strings in order.

    run_counts: {run string: count}. Deterministic: the most frequent pair
    wins, ties go to the lexicographically smallest pair.
    """
    runs = [list(r) for r in run_counts]
    counts = [run_counts[r] for r in run_counts]
    pair_count = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indices of runs holding it
    for i, syms in enumerate(runs):
        for a, b in zip(syms, syms[1:]):
            pair_count[(a, b)] += counts[i]
            where[(a, b)].add(i)
    merges = []
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    while len(merges) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or negc == 0:
            continue  # stale entry
        a, b = pair
        merged = a + b
        merges.append(merged)
        touched = collections.Counter()
        for i in list(where[pair]):
            syms = runs[i]
            c = counts[i]
            for x, y in zip(syms, syms[1:]):
                pair_count[(x, y)] -= c
                touched[(x, y)] += 0
                where[(x, y)].discard(i)
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            runs[i] = out
            for x, y in zip(out, out[1:]):
                pair_count[(x, y)] += c
                touched[(x, y)] += 0
                where[(x, y)].add(i)
        for p in touched:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
    return merges


class Tokenizer:
    def __init__(self, pieces, scores):
        assert len(pieces) == len(scores)
        self.pieces = pieces          # GGUF form: spaces as U+2581
        self.scores = scores
        self.index = {p: i for i, p in enumerate(pieces) if i >= FIRST_BYTE + N_BYTES}
        self._cache = {}

    @property
    def vocab_size(self):
        return len(self.pieces)

    # ---- building -------------------------------------------------------
    @staticmethod
    def build(text, vocab_size, boost_words=(), boost_count=0):
        """Learns the vocabulary from `text`; `boost_words` get at least
        `boost_count` occurrences so that they end up as whole tokens."""
        pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(N_BYTES)]
        scores = [0.0] * len(pieces)
        chars = [chr(c) for c in range(0x21, 0x7F)] + [SPACE]
        pieces += chars
        scores += [-1e9] * len(chars)  # never a merge result: the value is unused
        rank = 0
        for tok in _number_tokens():
            pieces.append(tok)
            scores.append(-float(rank))
            rank += 1
        run_counts = collections.Counter()
        for word in text.split():
            for run in _RUN.findall(SPACE + word):
                if len(run) > 1 and run[-1].isalpha():
                    run_counts[run] += 1
        for w in boost_words:
            run_counts[SPACE + w] = max(run_counts[SPACE + w], boost_count)
        known = set(pieces)
        want = vocab_size - len(pieces)
        # A string can come out of two different merges; keep its first rank.
        for m in _learn_bpe(dict(sorted(run_counts.items())), want + 64):
            if len(pieces) == vocab_size:
                break
            if m in known:
                continue
            known.add(m)
            pieces.append(m)
            scores.append(-float(rank))
            rank += 1
        assert len(pieces) == vocab_size, (len(pieces), vocab_size)
        return Tokenizer(pieces, scores)

    # ---- llama2.c tokenizer.bin ------------------------------------------
    def save_llama2c(self, path):
        """int32 max_token_length, then per token: float32 score, int32 len, bytes.
        Spaces are stored as ' ' (the converter turns them back into U+2581)."""
        raw = [p.replace(SPACE, " ").encode("utf-8") for p in self.pieces]
        with open(path, "wb") as f:
            f.write(struct.pack("<i", max(len(b) for b in raw)))
            for b, s in zip(raw, self.scores):
                f.write(struct.pack("<fi", s, len(b)))
                f.write(b)

    @staticmethod
    def load_llama2c(path, vocab_size):
        pieces, scores = [], []
        with open(path, "rb") as f:
            data = f.read()
        pos = 4
        for i in range(vocab_size):
            s, n = struct.unpack_from("<fi", data, pos)
            pos += 8
            text = data[pos:pos + n].decode("utf-8")
            pos += n
            pieces.append(text.replace(" ", SPACE))
            scores.append(s)
        assert pos == len(data), "trailing bytes in " + path
        pieces[:3] = ["<unk>", "<s>", "</s>"]
        return Tokenizer(pieces, scores)

    # ---- encoding ---------------------------------------------------------
    def _spm(self, text):
        """The SPM merge loop over one string (spaces already escaped)."""
        n = len(text)
        if n == 0:
            return []
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        begin = list(range(n))
        size = [1] * n
        heap = []

        def add(left, right):
            if left < 0 or right < 0:
                return
            s = text[begin[left]:begin[left] + size[left] + size[right]]
            tid = self.index.get(s)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], left, size[left] + size[right], right))

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, total, right = heapq.heappop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out = []
        i = 0
        while i != -1:
            piece = text[begin[i]:begin[i] + size[i]]
            tid = self.index.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(FIRST_BYTE + b for b in piece.encode("utf-8"))
            i = nxt[i]
        return out

    def encode_word(self, word):
        """Tokens of one space-free chunk, with its leading space marker."""
        ids = self._cache.get(word)
        if ids is None:
            ids = self._spm(SPACE + word)
            if len(self._cache) < 1_000_000:
                self._cache[word] = ids
        return ids

    def encode(self, text, bos=True):
        """As engram encodes a prompt: BOS, then the text with a dummy space
        prefix. Only ' ' separates words; other whitespace stays inside them."""
        out = [BOS] if bos else []
        words = text.split(" ")
        # Consecutive spaces: each extra space is its own marker token.
        out.extend(self.encode_word(words[0]))
        for w in words[1:]:
            out.extend(self.encode_word(w))
        return out

    def decode(self, ids):
        """Text of tokens (no dummy prefix removal: callers strip one space)."""
        buf = bytearray()
        for t in ids:
            if t < FIRST_BYTE:
                continue
            if t < FIRST_BYTE + N_BYTES:
                buf.append(t - FIRST_BYTE)
            else:
                buf.extend(self.pieces[t].replace(SPACE, " ").encode("utf-8"))
        return buf.decode("utf-8", errors="replace")
