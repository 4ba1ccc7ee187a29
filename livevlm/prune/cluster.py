"""`cluster` (CenterCLIP-style): a segment's tokens clustered by k-medoids; the `budget` centres are kept.

CenterCLIP (Zhao et al., SIGIR 2022) clusters the tokens of a segment of consecutive frames and keeps the
cluster centres (medoids: real tokens, not means) as the segment's representation. Here:

    distance   1 - cosine between tokens
    init       k-medoids++ made deterministic: the token nearest the segment's mean, then repeatedly the
               token farthest from every centre so far (ties to the lower index)
    iterate    `iterations` rounds of: assign each token to its nearest centre; in each cluster the member
               with the least summed distance to its cluster becomes the centre; stop when nothing moves
    keep       the k medoids at their original positions; with `average`, each medoid's row becomes the mean
               of its cluster (the others then count as merged)

Adapted to streaming: the segment is the chunk (one temporal patch of 2 frames): a live stream cannot wait
for later frames, so segments never span chunks. Budget 1.0 makes every token its own centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..kernels.similarity import unit_rows
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class ClusterConfig(PrunerConfig):
    """k-medoids over each chunk's tokens to `budget` centres."""

    strategy: str = "cluster"
    """Registered strategy name."""
    iterations: int = 10
    """Most assign/update rounds of k-medoids (it stops early when no centre moves)."""
    average: bool = False
    """Replace each kept medoid by its cluster's mean (merging) instead of keeping the medoid token as is."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.merge != "none":
            raise ConfigError("cluster keeps medoids (or cluster means with average=True): merge must be 'none'")


def k_medoids(x: torch.Tensor, k: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k medoid row indices ascending, (N,) index into them of each row's cluster), cosine distance."""
    u = unit_rows(x)
    dist = (1.0 - u @ u.T).clamp_min_(0.0)
    first = int(torch.argmax(u @ unit_rows(u.mean(0, keepdim=True))[0]))
    centres = [first]
    nearest = dist[first].clone()
    for _ in range(1, k):
        nearest[centres] = -1.0  # never pick a centre twice
        nxt = int(torch.argmax(nearest))
        centres.append(nxt)
        nearest = torch.minimum(nearest, dist[nxt])
    medoids = torch.tensor(sorted(centres), dtype=torch.long, device=x.device)
    for _ in range(iterations):
        assign = dist[:, medoids].argmin(dim=1)
        assign[medoids] = torch.arange(k, device=x.device)  # a medoid belongs to its own cluster
        moved = medoids.clone()
        for c in range(k):
            members = (assign == c).nonzero().squeeze(1)
            cost = dist[members][:, members].sum(1)
            moved[c] = members[int(torch.argmin(cost))]
        moved = moved.sort().values
        if torch.equal(moved, medoids):
            break
        medoids = moved
    assign = dist[:, medoids].argmin(dim=1)
    assign[medoids] = torch.arange(k, device=x.device)
    return medoids, assign


@register_pruner("cluster")
class ClusterPruner(BasePruner):
    """CenterCLIP-style: the chunk's k-medoid centres (exactly `budget` of them)."""

    config_class = ClusterConfig
    config: ClusterConfig

    def reduce(self, chunk: VisualChunk, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        n, dev = chunk.num_tokens, chunk.embeds.device
        if k >= n:
            return torch.arange(n, device=dev), chunk.embeds, 0
        medoids, assign = k_medoids(chunk.embeds, k, self.config.iterations)
        if not self.config.average:
            return medoids, chunk.embeds[medoids], 0
        total = torch.zeros(k, chunk.embeds.shape[1], device=dev).index_add_(0, assign, chunk.embeds.float())
        count = torch.bincount(assign, minlength=k).to(total.dtype)
        return medoids, (total / count[:, None]).to(chunk.embeds.dtype), n - k
