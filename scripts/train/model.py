"""A llama-architecture transformer in plain PyTorch, laid out as llama2.c's
run.c computes it, so that the exported weights run unchanged in engram:
RMSNorm (eps 1e-5), RoPE on adjacent pairs (2i, 2i+1) with base 10000,
SwiGLU feed-forward, no biases, output tied to the token embeddings.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 3
    n_kv_heads: int = 3
    vocab_size: int = 2048
    hidden_dim: int = 512
    max_seq_len: int = 2048
    norm_eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_size, max_len):
    # run.c: freq = 1 / 10000^(i / head_size) for the pair starting at even i.
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_size, 2).float() / head_size))
    angles = torch.outer(torch.arange(max_len).float(), freqs)  # [T, hs/2]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hs]; rotates (x[2i], x[2i+1]) by the angle of pair i.
    x0, x1 = x[..., 0::2], x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack((r0, r1), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.n_heads, self.n_kv = c.n_heads, c.n_kv_heads
        self.hs = c.dim // c.n_heads
        self.wq = nn.Linear(c.dim, c.n_heads * self.hs, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * self.hs, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * self.hs, bias=False)
        self.wo = nn.Linear(c.n_heads * self.hs, c.dim, bias=False)

    def forward(self, x, cos, sin, chunk=256):
        B, T, _ = x.shape
        H, hs = self.n_heads, self.hs
        q = self.wq(x).view(B, T, H, hs).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv, hs).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv, hs).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv != H:
            k = k.repeat_interleave(H // self.n_kv, dim=1)
            v = v.repeat_interleave(H // self.n_kv, dim=1)
        q = (q * (1.0 / math.sqrt(hs))).reshape(B * H, T, hs)
        k = k.reshape(B * H, T, hs)
        v = v.reshape(B * H, T, hs)
        # Causal attention by query chunks: chunk i only sees keys < its end,
        # so the upper triangle beyond the chunk is never computed.
        outs = []
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            mask = torch.full((e - s, e), float("-inf"), device=x.device)
            mask = torch.triu(mask, diagonal=s + 1)
            att = torch.baddbmm(mask.unsqueeze(0), q[:, s:e], k[:, :e].transpose(1, 2))
            outs.append(torch.bmm(torch.softmax(att, dim=-1), v[:, :e]))
        y = torch.cat(outs, dim=1).view(B, H, T, hs).transpose(1, 2).reshape(B, T, H * hs)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.w2 = nn.Linear(c.hidden_dim, c.dim, bias=False)
        self.w3 = nn.Linear(c.dim, c.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attention = Attention(c)
        self.feed_forward = FeedForward(c)
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied
        cos, sin = rope_tables(c.dim // c.n_heads, c.max_seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2 style: residual projections scaled down with depth.
        for name, p in self.named_parameters():
            if name.endswith("wo.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.tok_embeddings(ids)
        cos, sin = self.cos[:T], self.sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))

    def n_params(self):
        return sum(p.numel() for p in self.parameters())
