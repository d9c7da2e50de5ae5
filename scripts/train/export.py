"""Exports a checkpoint to llama2.c's legacy (version 0) model format.

  python3 export.py CKPT.pt OUT.bin

Header: 7 x int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len} (vocab_size positive: the classifier is the shared
embedding table), then float32 weights in run.c's order:
token_embedding_table, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
rms_final, freq_cis_real, freq_cis_imag. Each weight is stored [out][in],
as torch's nn.Linear holds it.
"""
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Transformer, rope_tables  # noqa: E402


def load(ckpt_path):
    ck = torch.load(ckpt_path, map_location="cpu")
    cfg = Config(**ck["config"])
    model = Transformer(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def export(model, out_path):
    c = model.config
    layers = model.layers

    def write(f, t):
        f.write(t.detach().contiguous().to(torch.float32).numpy().tobytes())

    with open(out_path + ".tmp", "wb") as f:
        f.write(struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                            c.max_seq_len))
        write(f, model.tok_embeddings.weight)
        for name in ["attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
                     "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]:
            for layer in layers:
                write(f, layer.get_submodule(name).weight)
        write(f, model.norm.weight)
        cos, sin = rope_tables(c.dim // c.n_heads, c.max_seq_len)
        write(f, cos)
        write(f, sin)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    m, _ = load(sys.argv[1])
    export(m, sys.argv[2])
    print(f"wrote {sys.argv[2]} ({os.path.getsize(sys.argv[2])} bytes)")
