"""Small causal language models for token-level distillation: a Transformer and a GRU.

Input: token ids ``[B, T]`` (int64); output: next-token logits ``[B, T, V]`` where position ``t``
sees tokens ``0..t`` only (a causal mask), so its logits are the distribution of token ``t + 1``.
Sized to train on a CPU in minutes (``conf/teacher/lm_teacher.yaml``, ``conf/student/lm_student.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdbench.models import register_model


class CausalTransformer(nn.Module):
    def __init__(self, vocab: int, max_len: int, width: int = 64, depth: int = 2, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.max_len = max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens, the model was built for at most {self.max_len}")
        h = self.embed(x) + self.pos[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device, dtype=h.dtype)
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


class GRULM(nn.Module):
    def __init__(self, vocab: int, width: int = 64, depth: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


@register_model("transformer_lm", family="lm", description="causal Transformer LM (pre-norm, learned positions)")
def transformer_lm(num_classes: int, in_shape: tuple[int, ...], width: int = 64, depth: int = 2, heads: int = 4,
                   dropout: float = 0.0) -> nn.Module:
    return CausalTransformer(num_classes, int(in_shape[-1]), width=width, depth=depth, heads=heads, dropout=dropout)


@register_model("gru_lm", family="lm", description="one-layer GRU LM")
def gru_lm(num_classes: int, in_shape: tuple[int, ...], width: int = 64, depth: int = 1) -> nn.Module:
    return GRULM(num_classes, width=width, depth=depth)
