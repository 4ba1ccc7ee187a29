"""`token` policy: partial recompute inside the ViT, block by block, for the tokens whose input moved.

Per stream it keeps, for every block l and token i, the input the token was last computed from (R), its
block output then (O) and its rotated key / value (K, V). A chunk then runs:

    backing off (a pan) ─► a full encode, no detection, nothing recorded (see below)
    pixels bit-identical to the last chunk ─► the last features, nothing computed
    x = embed(pixels)                                   the runner's `detect_embed` (a matmul, not its conv)
    refresh? first chunk, new grid, scene cut, age, drift ─► full pass (exact, own embed), state replaced
    for each block l:
        e_i = |x_i - R_i| / |R_i|                       how far token i moved since it was computed here
        S   = {i : e_i > threshold}, the largest budget*N of them
        x'_i = O_i + (x_i - R_i)            i not in S  the residual path carries the small change exactly
        x'_S = block_l(x_S)                             attention rows over the token's whole segment
                                                        (frame, or Qwen2.5-VL window): fresh K/V for S,
                                                        cached K/V for the rest; then R, O, K, V of S updated
    merger for merge units with a recomputed token; the cached merged features for the others

Backoff (a pan): when a chunk is a scene cut or more than `pan_fraction` of its patch embeddings moved over
`threshold` since the last chunk (busy), twice in a row, nearly everything changes every chunk, and detection
only adds cost. That chunk and the next `backoff` chunks run a full encode with no detection (the runner's full
pass, whose state is dropped; the reference goes stale); the chunk after them is a probe, its patch embedding
compared with the last chunk's: busy again doubles the backoff (up to `backoff_max`), else a full pass records a
fresh reference ("resume") and partial recompute goes on. A single busy chunk (a scene cut) is handled as before.
A full pass's state is the pass's own tensors until a partial pass first updates it (then copied, `_own`), so
the full passes that start a pan (start, cut) cost what the model's encode does.

What is exact and what approximate (vs a full encode of the same chunk):
  exact   bit-identical chunks (returned as they are) and full passes (refreshes; every chunk that is not
          bit-identical when threshold is 0, which makes the policy lossless).
  approx  (a) a token outside S skips the block's response to its own change (at most `threshold` of its
          input per block; how much that moves the output depends on the tower's sensitivity);
          (b) its attention output keeps the context (the other tokens' K/V) it was computed with;
          (c) recomputed rows read other tokens' cached K/V, computed from inputs within `threshold` of now.
          (b) is not bounded per chunk: that is what the age and drift refreshes bound.
Memory per stream: 4 x N x D per block (R, O, K, V) in the model dtype, e.g. 71 MB for Qwen2-VL-2B at 216
patches per chunk (224x224-class frames) in bf16; 5 x N x D while a full pass's state is not yet copied (each
block's output, rotated keys and whole qkv output, of which V is a view).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from ..records import VisionEncoder
from ._change import ChunkTests, chunk_tests, relative_change, row_norms, select_tokens
from ._fixed_recompute import FixedRecompute
from .vit_cache import FeatureCacheBase, ViTCacheConfig


class VisionRunner(Protocol):
    """What the token policy needs from a model family's vision tower (see `models.qwen_vision`)."""

    depth: int
    merge_unit: int

    def layout(self, grid: tuple[int, int, int]) -> Any: ...

    def embed(self, pixels: torch.Tensor, layout: Any) -> torch.Tensor: ...

    def full(self, x: torch.Tensor, layout: Any) -> tuple[torch.Tensor, Any]: ...

    def partial(
        self, index: int, x: torch.Tensor, rows: torch.Tensor, state: Any, layout: Any
    ) -> torch.Tensor: ...

    def merge(self, x: torch.Tensor, layout: Any, units: torch.Tensor | None = None) -> torch.Tensor: ...

    def block_state(self, **tensors: torch.Tensor) -> Any:
        """A block's cached keys / values rebuilt from the tensors its dataclass fields held (a restore)."""
        ...

    # Optional: `detect_embed(pixels, layout)`, a cheaper `embed` that may round differently (change detection
    # and partial passes read it; full passes run `embed`).
    # Optional: `taps`, blocks whose outputs the merge also reads (Qwen3-VL's DeepStack); then merge is called
    # with `taps=[output of block i for i in taps]` as well.


@dataclass
class _Reference:
    """One stream's reference state (internal token order)."""

    grid: tuple[int, int, int]
    layout: Any
    pixels: torch.Tensor
    """The last chunk's pixels (a bit-identical chunk returns `merged` as it is)."""
    embed_at_refresh: torch.Tensor
    """Patch embeddings of the last full encode (drift is measured against them)."""
    refresh_norms: torch.Tensor
    inputs: list[torch.Tensor]
    norms: list[torch.Tensor]
    """Per block: (N,) float32 L2 norm of each token's reference input (kept in step with `inputs`); only block
    0's until the state is owned."""
    outputs: list[torch.Tensor]
    blocks: list[Any]
    """Per block: the runner's cached keys / values of every token."""
    merged: torch.Tensor
    """(M, D) the last features, output order."""
    age: int = 0
    owned: bool = True
    """False right after a full pass: `inputs`, `outputs`, `blocks` are still the pass's own tensors (inputs[l + 1]
    is outputs[l], inputs[0] is embed_at_refresh, K / V are views); `_own` copies them before anything is
    updated in place, so a full pass that no partial pass follows (a pan) records its state for free."""


@dataclass
class _Backoff:
    """Pan handling: busy chunks in a row (nearly everything moved), the current backoff length, the dense chunks
    still to run, and while the reference is stale (after dense chunks) the last chunk's pixels and features."""

    busy: int = 0
    length: int = 0
    skip: int = 0
    pixels: torch.Tensor | None = None
    merged: torch.Tensor | None = None
    embed: torch.Tensor | None = None
    """The last dense chunk's patch embedding (what the probe after a backoff compares with)."""


class TokenRecomputeCache(FeatureCacheBase):
    """Per-stream partial ViT recompute against per-token, per-block reference state."""

    def __init__(self, config: ViTCacheConfig, encoder: VisionEncoder) -> None:
        super().__init__(config, encoder)
        if encoder.runner is None:
            raise ConfigError(
                f"the token ViT cache needs a vision block runner, which {encoder.family!r} lacks; "
                "use the 'lossless' preset (frame policy) or 'none'"
            )
        self.runner: VisionRunner = encoder.runner()
        self._ref: _Reference | None = None
        self._pan = _Backoff()
        self._fixed: FixedRecompute | None = None
        """Fixed-shape partial passes of the current grid (`ViTCacheConfig.recompute` static / graph)."""
        self.stats.recompute = str(config.recompute)

    def _encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ref, pan, c = self._ref, self._pan, self.config
        same_grid = ref is not None and ref.grid == grid
        if pan.skip:  # backing off: a full encode, no detection
            pan.skip -= 1
            return self._dense(pixels, grid, "backoff", ref.layout if same_grid else None)
        stale = pan.pixels is not None
        last = (pan.pixels, pan.merged) if stale else (ref.pixels, ref.merged) if ref is not None else None
        if same_grid and last is not None and torch.equal(pixels, last[0]):
            pan.busy = pan.length = 0
            return self._account("reuse", [0] * self.runner.depth, pixels.shape[0], last[1])
        layout = ref.layout if same_grid else self.runner.layout(grid)
        x0 = self._detect_embed(pixels, layout)
        moved = self._moved(x0, layout) if same_grid and c.threshold > 0 else None
        tests = self._tests(x0, moved) if moved is not None else None
        reason = self._refresh_reason(grid, tests)
        busy = reason == "cut" or (tests is not None and tests.spread)
        pan.busy = pan.busy + 1 if busy else 0
        if pan.busy >= 2 and c.backoff:  # nearly everything moved twice in a row: a pan, back off
            pan.length = min(2 * pan.length, c.backoff_max) if pan.length else c.backoff
            pan.skip = pan.length
            self.stats.pans += 1
            return self._dense(pixels, grid, "pan", layout)
        if not busy:  # a detection that finds reuse: the next pan backs off from the start
            pan.length = 0
        if reason is not None:
            pan.pixels = pan.merged = pan.embed = None
            return self._full(pixels, grid, layout, x0, reason)
        return self._partial(pixels, x0)

    def _dense(
        self, pixels: torch.Tensor, grid: tuple[int, int, int], event: str, layout: Any = None
    ) -> tuple[torch.Tensor, None]:
        """A full encode whose state is dropped (a pan): the runner's full pass, the tower's own ops (the same
        features as the model's encode, at its cost: the pass copies nothing); the reference goes stale. Its
        patch embedding is kept for the probe that ends the backoff."""
        if self.encoder.graphed:  # the model's encode replayed as a CUDA graph; the probe re-embeds the pixels
            x0, merged = None, self.encoder.full(pixels, grid)
        else:
            layout = self.runner.layout(grid) if layout is None else layout
            x0 = self.runner.embed(pixels, layout)
            x, state = self.runner.full(x0, layout)
            merged = self._merge(x, layout, None, state.outputs)
        pan = self._pan
        pan.pixels, pan.merged, pan.embed = pixels.clone(), merged, x0
        s = self.stats
        s.full_encodes += 1
        s.chunks_backoff += event == "backoff"
        n = pixels.shape[0]
        embeds, _ = self._account(f"full:{event}", [n] * self.runner.depth, n, merged)  # a copy: merged is kept
        return embeds, None

    def state_dict(self) -> dict[str, Any]:
        ref, pan = self._ref, self._pan
        backoff = {f.name: getattr(pan, f.name) for f in dataclasses.fields(pan)}
        state = {**super().state_dict(), "backoff": backoff}
        if ref is None:
            return {**state, "ref": None}
        self._own(ref)
        skip = ("layout", "blocks", "owned")
        tensors = {f.name: getattr(ref, f.name) for f in dataclasses.fields(ref) if f.name not in skip}
        blocks = [{f.name: getattr(b, f.name) for f in dataclasses.fields(b)} for b in ref.blocks]
        return {**state, "ref": {**tensors, "grid": list(ref.grid), "blocks": blocks}}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self.stats.recompute = str(self.config.recompute)  # the path this session runs, not the saved one
        pan = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state["backoff"].items()}
        self._pan = _Backoff(**pan)
        saved = state["ref"]
        if saved is None:
            self._ref = None
            return
        grid = tuple(int(g) for g in saved["grid"])
        moved = {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device)
                 for k, v in saved.items() if k not in ("grid", "blocks", "age")}  # fmt: skip
        blocks = [self.runner.block_state(**{k: t.to(device) for k, t in b.items()}) for b in saved["blocks"]]
        self._ref = _Reference(grid=grid, layout=self.runner.layout(grid), blocks=blocks, age=int(saved["age"]), **moved)  # type: ignore[arg-type]

    def _detect_embed(self, pixels: torch.Tensor, layout: Any) -> torch.Tensor:
        """Patch embeddings to measure change with and feed partial passes: the runner's `detect_embed` when it
        has one (cheaper, rounds differently from its `embed`), else `embed`. Full passes run `embed`."""
        return getattr(self.runner, "detect_embed", self.runner.embed)(pixels, layout)

    def _moved(self, x0: torch.Tensor, layout: Any) -> torch.Tensor:
        """Per token: relative change of the patch embedding since the last chunk (the reference's block-0
        input; after dense chunks, the last chunk's embedding)."""
        ref, pan = self._ref, self._pan
        if pan.pixels is not None:  # after dense chunks: the last one's embedding (re-embedded if not kept)
            last = pan.embed if pan.embed is not None else self._detect_embed(pan.pixels, layout)
            return relative_change(x0 - last, row_norms(last))
        assert ref is not None
        return relative_change(x0 - ref.inputs[0], ref.norms[0])

    def _tests(self, x0: torch.Tensor, moved: torch.Tensor) -> ChunkTests:
        ref = self._ref
        assert ref is not None
        return chunk_tests(self.config, moved, relative_change(x0 - ref.embed_at_refresh, ref.refresh_norms))

    def _refresh_reason(self, grid: tuple[int, int, int], tests: ChunkTests | None) -> str | None:
        ref, c = self._ref, self.config
        if ref is None:
            return "start"
        if ref.grid != grid:
            return "grid"
        if c.threshold == 0 or tests is None:  # lossless: all that is not bit-identical is encoded in full
            return "changed"
        if tests.cut:
            return "cut"
        if self._pan.pixels is not None:  # the probe after a backoff found reuse: the reference is stale
            return "resume"
        if c.max_age and ref.age >= c.max_age:
            return "age"
        return "drift" if tests.drift else None

    def _full(
        self, pixels: torch.Tensor, grid: tuple[int, int, int], layout: Any, x0: torch.Tensor, reason: str
    ) -> tuple[torch.Tensor, None]:
        fixed = self._fixed
        if fixed is not None and fixed.layout.grid == grid:  # fixed shapes: into the buffers (a graph on CUDA)
            self._ref = fixed.refresh(pixels, x0)
            self._ref.pixels, self._ref.age, merged = pixels.clone(), 0, self._ref.merged
            if fixed.failed is not None:
                self.stats.recompute = f"static: the graph capture failed, {fixed.failed}"
        else:
            exact = self.runner.embed(pixels, layout) if hasattr(self.runner, "detect_embed") else x0
            x, state = self.runner.full(exact, layout)
            merged = self._merge(x, layout, None, state.outputs)
            norms = row_norms(x0)
            self._ref = _Reference(  # the pass's own tensors, copied by `_own` before a partial pass updates them
                grid=grid, layout=layout, pixels=pixels.clone(), embed_at_refresh=x0, refresh_norms=norms,
                inputs=[x0, *state.inputs[1:]],  # block 0's reference in the detection embedding the next chunks read
                norms=[norms], outputs=state.outputs, blocks=state.blocks,
                merged=merged,  # the caller gets a copy (`_account`)
                owned=False,
            )  # fmt: skip
        s = self.stats
        s.full_encodes += 1
        s.refreshes += reason not in ("start", "changed")  # resume: a fresh reference after a backoff
        s.scene_cuts += reason == "cut"
        n = x0.shape[0]
        embeds, _ = self._account(f"full:{reason}", [n] * self.runner.depth, n, merged)  # a copy: merged is kept
        return embeds, None

    @staticmethod
    def _own(ref: _Reference) -> None:
        """Copy a full pass's state into tensors this cache may update in place (once per reference)."""
        if ref.owned:
            return
        ref.inputs[0] = ref.inputs[0].clone()  # was embed_at_refresh itself
        ref.outputs = [o.clone() for o in ref.outputs]  # were inputs[l + 1] themselves
        ref.blocks = [
            type(b)(**{f.name: getattr(b, f.name).contiguous() for f in dataclasses.fields(b)}) for b in ref.blocks
        ]  # views of the pass's keys and qkv output -> compact copies
        ref.norms = [ref.norms[0].clone(), *(row_norms(t) for t in ref.inputs[1:])]
        ref.owned = True

    def _partial(self, pixels: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ref, runner, c = self._ref, self.runner, self.config
        assert ref is not None
        n = x.shape[0]
        cap = math.ceil(c.budget * n)
        if c.recompute != "dynamic" and cap:
            return self._partial_fixed(pixels, x, cap)
        self._own(ref)
        touched = torch.zeros(n, dtype=torch.bool, device=x.device)
        counts = []
        taps = set(getattr(runner, "taps", ()))
        tapped: dict[int, torch.Tensor] = {}
        for i in range(runner.depth):
            r_in, r_out = ref.inputs[i], ref.outputs[i]
            delta = x - r_in
            rows = select_tokens(relative_change(delta, ref.norms[i]), c.threshold, cap)
            nxt = r_out + delta  # tokens not recomputed: the reference output moved by the input's change
            if len(rows):
                y = runner.partial(i, x, rows, ref.blocks[i], ref.layout)
                xr = x.index_select(0, rows)
                r_in.index_copy_(0, rows, xr)
                ref.norms[i].index_copy_(0, rows, row_norms(xr))
                r_out.index_copy_(0, rows, y)
                nxt.index_copy_(0, rows, y)
                touched.index_fill_(0, rows, True)
            counts.append(len(rows))
            x = nxt
            if i in taps:
                tapped[i] = x
        slots = touched.view(-1, runner.merge_unit).any(dim=1).nonzero()[:, 0]
        changed = torch.zeros(ref.merged.shape[0], dtype=torch.bool, device=x.device)
        if len(slots):
            places = ref.layout.unit_order[slots]
            ref.merged[places] = self._merge(x, ref.layout, slots, tapped)
            changed[places] = True
        ref.pixels = pixels.clone()
        ref.age += 1
        self.stats.chunks_partial += bool(len(slots))
        embeds, _ = self._account("partial" if len(slots) else "reuse", counts, n, ref.merged)
        return embeds, changed

    def _partial_fixed(self, pixels: torch.Tensor, x: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`_partial` in fixed shapes (`_fixed_recompute`): `cap` rows per block always, the same features."""
        ref, c = self._ref, self.config
        assert ref is not None
        graph = c.recompute == "graph"
        if graph and x.device.type != "cuda":
            raise ConfigError(f"ViTCacheConfig.recompute='graph' needs the vision tower on CUDA, it runs on {x.device}")
        if self._fixed is None or self._fixed.layout.grid != ref.grid:
            self._fixed = FixedRecompute(self.runner, ref.layout, cap, float(c.threshold), graph)
        self._fixed.adopt(ref)
        changed, counts = self._fixed.run(x)
        if self._fixed.failed is not None:
            self.stats.recompute = f"static: the graph capture failed, {self._fixed.failed}"
        ref.pixels = pixels.clone()
        ref.age += 1
        partial = any(counts)
        self.stats.chunks_partial += partial
        self.stats.tokens_padded += cap * len(counts) - sum(counts)
        embeds, _ = self._account("partial" if partial else "reuse", counts, x.shape[0], ref.merged)
        return embeds, changed

    def _merge(self, x: torch.Tensor, layout: Any, units: torch.Tensor | None, outputs: Any) -> torch.Tensor:
        """The runner's merge; a runner with `taps` also gets those blocks' outputs (`outputs[i]`)."""
        taps = getattr(self.runner, "taps", ())
        if not taps:
            return self.runner.merge(x, layout, units)
        return self.runner.merge(x, layout, units, taps=[outputs[i] for i in taps])

    def _account(
        self, event: str, counts: list[int], n: int, merged: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Record one chunk in the stats; returns (a copy of the features, all-unchanged mask for reuse)."""
        s = self.stats
        s.last_event = event
        s.chunks_reused += event == "reuse"
        s.tokens += n * len(counts)
        s.tokens_recomputed += sum(counts)
        s.last_recomputed_per_layer = tuple(counts)
        prev = s.recomputed_per_layer or (0,) * len(counts)
        s.recomputed_per_layer = tuple(a + b for a, b in zip(prev, counts, strict=True))
        unchanged = torch.zeros(merged.shape[0], dtype=torch.bool, device=merged.device)
        return merged.clone(), unchanged
