"""The yardstick's training losses beyond the answers: dense colour / shape targets of the visual tokens, the
attention target of a question, and the batched vision attention that makes training them fast."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tools.yardstick.phrasing import parse
from tools.yardstick.world import COLOURS, SHAPES

TOKEN_PIXELS = 28  # one merged visual token covers 28 x 28 pixels of 2 frames
MIN_OBJECT_SHARE = 0.08


def attention_target(question: str, targets: torch.Tensor, per_chunk: int) -> torch.Tensor:
    """(tokens,) bool: the visual tokens `question` is about, from `token_targets` (all False if none is)."""
    colour, shape = targets[:, 0], targets[:, 1]
    asked = parse(question)  # any wording: the slots say what it is about
    named = [asked.slots[k] for k in ("shape", "colour", "obj", "a", "b") if k in asked.slots]
    words = " ".join(named).split()
    colours = [list(COLOURS).index(w) for w in words if w in COLOURS]
    shapes = [SHAPES.index(w) for w in words if w in SHAPES]
    if asked.kind == "order":  # either object, where the first of them shows
        mask = torch.zeros_like(shape, dtype=torch.bool)
        for c, sh in zip(colours, shapes):
            mask |= (colour == c) & (shape == sh)
        return _edge_chunk(mask, per_chunk, "start")
    mask = shape < len(SHAPES)  # any object
    for c in colours:
        mask &= colour == c
    for sh in shapes:
        mask &= shape == sh
    return _edge_chunk(mask, per_chunk, asked.slots["at"]) if "at" in asked.slots else mask


def _edge_chunk(mask: torch.Tensor, per_chunk: int, edge: str) -> torch.Tensor:
    """Keep `mask` only in the first (edge "start") or last temporal chunk where it has any token."""
    rows = mask.view(-1, per_chunk)
    hit = rows.any(dim=1).nonzero().squeeze(1)
    out = torch.zeros_like(rows)
    if len(hit):
        k = int(hit[0] if edge == "start" else hit[-1])
        out[k] = rows[k]
    return out.view(-1)


def attention_loss(
    attentions: tuple[torch.Tensor, ...], row: torch.Tensor, query: torch.Tensor, about: torch.Tensor
) -> torch.Tensor:
    """-log of the attention mass head 0 of the last two layers puts, in sequence `row[k]` at position
    `query[k]`, on the tokens `about[k]` (rows with no such token are left out)."""
    has = about.any(dim=1)
    if not has.any():
        return torch.zeros((), device=about.device)
    mass = torch.stack([(layer[row, 0, query] * about).sum(-1) for layer in attentions[-2:]])
    return -torch.log(mass[:, has] + 1e-6).mean()


def token_targets(labels: np.ndarray) -> torch.Tensor:
    """(tokens, 2) colour / shape class of each merged visual token (last class: no object) from pixel labels."""
    if labels.shape[0] % 2:
        labels = np.concatenate([labels, labels[-1:]])
    t, h, w = labels.shape[0] // 2, labels.shape[1] // TOKEN_PIXELS, labels.shape[2] // TOKEN_PIXELS
    out = []
    for k, n in ((0, len(COLOURS)), (1, len(SHAPES))):
        onehot = np.eye(n + 1, dtype=np.float32)[labels[..., k].astype(np.int64) + 1]
        counts = (
            onehot.reshape(t, 2, h, TOKEN_PIXELS, w, TOKEN_PIXELS, n + 1).sum((1, 3, 5)).reshape(-1, n + 1)
        )
        share = counts[:, 1:].sum(1) / (2 * TOKEN_PIXELS**2)
        out.append(np.where(share >= MIN_OBJECT_SHARE, counts[:, 1:].argmax(1), n))
    return torch.from_numpy(np.stack(out, axis=1))


class AuxHeads(torch.nn.Module):
    """Colour and shape classifiers on the visual tokens; used while training only, never saved.

    With `words` (the LLM's input embedding and its tokenizer) a class is scored against the embeddings of its
    own words ("red" and " red"), so the tower learns to place a red token near the word red: the LLM can then
    find and read out what a question names through embeddings it already has, instead of learning a mapping."""

    def __init__(
        self, hidden: int, words: tuple[torch.nn.Embedding, Any] | None = None, cosine: float = 0.0
    ) -> None:
        super().__init__()
        if words and cosine:
            raise ValueError("choose word-space aux heads or cosine aux heads, not both")
        self.cosine = cosine
        self._words = words[:1] if words else ()  # a tuple: the embedding is the model's, not registered here
        if words:
            ids = [words[1]([n, f" {n}"], add_special_tokens=False).input_ids for n in (*COLOURS, *SHAPES)]
            if any(len(pair) != 1 for word in ids for pair in word):
                raise ValueError("word-space aux heads need every colour and shape to be one token")
            self.register_buffer("ids", torch.tensor([[a[0], b[0]] for a, b in ids]), persistent=False)
            self.none = torch.nn.Parameter(torch.zeros(2, hidden))
            self.scale = torch.nn.Parameter(torch.tensor(10.0))
            self.bias = torch.nn.Parameter(torch.zeros(len(COLOURS) + len(SHAPES) + 2))
        else:
            self.colour = torch.nn.Linear(hidden, len(COLOURS) + 1)
            self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cosine:
            unit = torch.nn.functional.normalize(features, dim=-1)
            return tuple(  # type: ignore[return-value]
                self.cosine * unit @ torch.nn.functional.normalize(head.weight, dim=-1).T + head.bias
                for head in (self.colour, self.shape)
            )
        if not self._words:
            return self.colour(features), self.shape(features)
        word = self._words[0].weight[self.ids].sum(1)  # (classes, hidden)
        n = len(COLOURS)
        colour = torch.cat([word[:n], self.none[:1]]) * self.scale
        shape = torch.cat([word[n:], self.none[1:]]) * self.scale
        return features @ colour.T + self.bias[: n + 1], features @ shape.T + self.bias[n + 1 :]

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy
        colour, shape = self.logits(features)
        return ce(colour, targets[:, 0]) + ce(shape, targets[:, 1])


def batch_vision_attention(model: Any) -> None:
    """Make the vision tower's attention one batched call where every sequence is equally long (a frame pair,
    or a window, of the same size: always so for yardstick clips) instead of transformers' per-sequence loop.
    Same maths (checked in the tests); only the training speed changes, and nothing of it is saved."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = cu_seqlens.diff()
        if int(lengths.min()) != int(lengths.max()) or position_embeddings is None:
            return type(self).forward(
                self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
            )
        n, length, total = len(lengths), int(lengths[0]), hidden_states.shape[0]
        qkv = self.qkv(hidden_states).reshape(total, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = hf.apply_rotary_pos_emb_vision(qkv[0], qkv[1], *position_embeddings)
        q, k, v = (x.reshape(n, length, self.num_heads, -1).transpose(1, 2) for x in (q, k, qkv[2]))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(total, -1))

    for block in model.model.visual.blocks:
        block.attn.forward = forward.__get__(block.attn)
