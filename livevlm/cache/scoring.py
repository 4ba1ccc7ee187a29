"""How the query-aware policies (retrieval, bilevel) find the chunks that matter, query-free and per question.

    ingestion (query-free):  novelty(chunk) = 1 - cos(its values, the previous chunk's values), per token at the
                             same position, max over tokens  ─►  the `memory` most novel older chunks stay dense
                             in every new chunk's context and every answer (events: appear / leave / change)
    question:                the answer position's query (or the mean over the question), on the late layers
                             only, against each chunk's mean key and its `key_reps` most atypical keys
                             (max over them)  ─►  one relevance per chunk, one choice shared by every layer

Why: a small event fills 1-3 of a chunk's tokens, so q·mean(k) hides it and early layers score at chance;
counting needs every event's chunk in reach of the ones after it, which a sliding window loses.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..kernels.relevance import chunk_logits

QUERY_MODES = ("last", "mean")


def check_selection(owner: str, query: str, key_reps: int, score_layers: str | tuple[int, ...], memory: int) -> None:
    """Refuse impossible selection settings at construction, naming the field."""
    if query not in QUERY_MODES:
        raise ConfigError(f"{owner}.query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
    for name, value in (("key_reps", key_reps), ("memory", memory)):
        if not (isinstance(value, int) and value >= 0):
            raise ConfigError(f"{owner}.{name} must be an int >= 0, got {value!r}")
    if isinstance(score_layers, str):
        if score_layers not in ("all", "late"):
            raise ConfigError(f"{owner}.score_layers must be 'all', 'late' or a tuple of layer indices, got {score_layers!r}")
    elif not (score_layers and all(isinstance(i, int) and i >= 0 for i in score_layers)):
        raise ConfigError(f"{owner}.score_layers must be 'all', 'late' or a non-empty tuple of layer indices >= 0")


def layer_ids(spec: str | tuple[int, ...], num_layers: int) -> list[int]:
    """'all' -> every layer, 'late' -> the second half, a tuple -> those layers (must exist)."""
    if spec == "all":
        return list(range(num_layers))
    if spec == "late":
        return list(range(num_layers // 2, num_layers))
    bad = [i for i in spec if i >= num_layers]
    if bad:
        raise ConfigError(f"score_layers {tuple(spec)} names layers {bad} of a model with {num_layers} layers")
    return sorted(set(spec))


def reduce_queries(queries: torch.Tensor, mode: str) -> torch.Tensor:
    """(layers, heads, q_len, dim) per-token queries -> (layers, heads, dim): the last token's or the mean."""
    return queries[:, :, -1] if mode == "last" else queries.float().mean(2)


def representative_keys(keys: torch.Tensor, count: int) -> torch.Tensor:
    """(layers, kv_heads, tokens, dim) -> (layers, count, kv_heads, dim): per layer and head, the keys farthest
    from the chunk's mean key (the tokens that differ from the rest: a small object, an event); repeated when
    the chunk has fewer tokens."""
    tokens = int(keys.shape[2])
    k = keys.float()
    far = (k - k.mean(2, keepdim=True)).norm(dim=-1)  # (layers, heads, tokens)
    idx = far.topk(min(count, tokens), dim=-1).indices
    if tokens < count:
        idx = idx.repeat(1, 1, -(-count // tokens))[:, :, :count]
    reps = k.gather(2, idx[..., None].expand(-1, -1, -1, k.shape[-1]))  # (layers, heads, count, dim)
    return reps.permute(0, 2, 1, 3)


def novelty(values: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """How much a chunk differs from the one before it, in [0, 2]: 1 - cosine of their values at the same token
    position (max over tokens; averaged over layers and heads), or of their mean values when sizes differ.
    A 0-dim float32 tensor on the values' device (read on the host when needed: on a GPU a read waits)."""
    if previous is None:
        return torch.ones((), device=values.device)
    a, b = values.float(), previous.float()  # (layers, kv_heads, tokens, dim)
    if a.shape != b.shape:
        a, b = a.mean(2, keepdim=True), b.mean(2, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # (layers, heads, tokens)
    return (1 - cos.mean((0, 1))).max()


def chunk_relevance(queries: torch.Tensor, rows: torch.Tensor, kv_heads: int, reps: int) -> torch.Tensor:
    """(layers, kv_heads, group, n) logits of chunks for the scoring layers' queries (layers, heads, dim) against
    each chunk's index row (layers, 2 + reps, kv_heads, n, dim): its mean key (0) and its `reps` representative
    keys (2 ...; 1 is the mean value), the max over them, in one `chunk_logits` call (fused in the Triton
    kernel). The key sets are read as views of `rows`, not gathered."""
    layers, heads, dim = queries.shape
    q = queries.reshape(layers, kv_heads, heads // kv_heads, dim)
    return chunk_logits(q, rows[:, 0], rows[:, 2 : 2 + reps] if reps else None)


def top_salient(scores: np.ndarray, alive: np.ndarray, count: int) -> list[int]:
    """Indices of the `count` highest `scores` among the `alive` ones (ties: the newer first), in stream order."""
    candidates = np.flatnonzero(alive)
    if count <= 0 or not len(candidates):
        return []
    if len(candidates) > count:
        values = scores[candidates]
        kth = np.partition(values, len(values) - count)[len(values) - count]
        top = candidates[values >= kth]
        candidates = np.array(sorted(top.tolist(), key=lambda i: (-scores[i], -i))[:count])
    return sorted(candidates.tolist())
