"""Small models with known behaviour, shared by the attack tests."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class Affine(nn.Module):
    """logits = W · flatten(x) + b."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


class TinyMLP(nn.Module):
    """d → h (tanh) → k, weights N(0, scale²/fan_in) from ``seed``; optional dropout."""

    def __init__(self, d=64, h=32, k=10, seed=0, dropout=0.0, scale=1.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(d, h)
        self.l2 = nn.Linear(h, k)
        self.drop = nn.Dropout(dropout)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (scale / math.sqrt(p.shape[-1])))

    def forward(self, x):
        return self.l2(self.drop(torch.tanh(self.l1(x.flatten(1)))))


class Counting(nn.Module):
    """Counts the rows of forward passes (``rows``, per call in ``batches``) and of backward
    passes through the logits (``grad_rows``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.grad_rows = 0
        self.batches = []

    def forward(self, x):
        self.rows += x.shape[0]
        self.batches.append(x.shape[0])
        out = self.inner(x)
        if out.requires_grad:
            n = x.shape[0]

            def hook(g, n=n):
                self.grad_rows += n

            out.register_hook(hook)
        return out
