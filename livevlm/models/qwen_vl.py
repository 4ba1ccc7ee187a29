"""Adapters for the Qwen2-VL and Qwen2.5-VL families (transformers' own modules, no patching).

The seam: we compute video embeddings ourselves and feed the language model `inputs_embeds` with explicit
M-RoPE positions, so later stages can drop or reuse visual tokens while keeping their (t, h, w) places.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..kernels.transfer import upload
from ..records import ChunkPlace, VisionEncoder
from .base import DEFAULT_SYSTEM_PROMPT
from .lm_side import LanguageModelSide
from .preprocess import VisionGeometry, frames_to_patches, target_size


class QwenVLAdapter(LanguageModelSide):
    """Qwen2.5-VL (and, via the subclass, Qwen2-VL): vision tower, M-RoPE positions, cached LLM steps."""

    family = "qwen2_5_vl"
    _text_start_rule: str | None = None
    """How `get_rope_index` places text after video (found on first use): after_grid, after_last or model."""

    def __init__(
        self, model: Any, tokenizer: Any, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        vcfg = cfg.vision_config
        overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.geometry = VisionGeometry.from_vision_config(vcfg, **overrides)
        self.frames_per_chunk = self.geometry.temporal_patch_size
        self.merge = self.geometry.merge_size
        self.video_token_id = int(cfg.video_token_id)
        self._bind_language_model(model.model.language_model, "<|im_end|>")

    # -- vision ---------------------------------------------------------------------------------------
    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """The size frames of (height, width) are resized to; the pixel bounds override the model's."""
        geom = self.geometry
        if min_pixels or max_pixels:
            geom = dataclasses.replace(
                geom, min_pixels=min_pixels or geom.min_pixels, max_pixels=max_pixels or geom.max_pixels
            )
        return target_size(height, width, geom)

    def tokens_per_chunk(self, size: tuple[int, int]) -> int:
        """Visual tokens one temporal patch of frames resized to `size` turns into."""
        f = self.geometry.factor
        return (size[0] // f) * (size[1] // f)

    def time_interval(self, seconds_per_chunk: float) -> torch.Tensor:
        """M-RoPE temporal step between consecutive chunks (Qwen2.5-VL: tokens_per_second x seconds)."""
        tps = getattr(self.model.config.vision_config, "tokens_per_second", None)
        if tps is None:
            return torch.tensor(1.0)
        return torch.tensor(float(tps)) * torch.tensor(seconds_per_chunk, dtype=torch.float32)

    def preprocess(self, frames: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One temporal patch of frames -> (HF-layout patches on the model's device, grid (1, gh, gw))."""
        pixels, grid = frames_to_patches(frames, self.geometry, size=size)
        if grid[0] != 1:
            raise ValueError(f"one chunk is one temporal patch, got grid {grid}")
        return upload(pixels, self.device), (int(grid[0]), int(grid[1]), int(grid[2]))

    def merged_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        return grid[1] // self.merge, grid[2] // self.merge

    def vision_encoder(self) -> VisionEncoder:
        """The tower for a ViT feature cache: the model's own full encode and the block runner."""
        return VisionEncoder(
            full=self.vision_features, runner=self.vision_runner, family=self.family, attention=self.vision_attention
        )

    @torch.inference_mode()
    def vision_attention(
        self, pixels: torch.Tensor, grid: tuple[int, int, int], layers: tuple[float, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One full encode that also reports, per layer (a fraction of the depth: 0 first, 1 last block), the
        (M,) attention each merged token receives in that block. The features are the runner's full pass
        (the tower's own ops, the same values as `vision_features`)."""
        runner = self.vision_runner()
        layout = runner.layout(grid)
        x, state = runner.full(runner.embed(pixels, layout), layout)
        blocks = tuple(min(runner.depth - 1, max(0, round(f * (runner.depth - 1)))) for f in layers)
        return runner.merge(x, layout).to(self.dtype), runner.received_attention(state, layout, blocks)

    @torch.inference_mode()
    def vision_features(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The model's own full vision encode of one temporal patch: (h*w/merge^2, D) merged tokens. On CUDA it
        runs in our block loop (`QwenVisionRunner.encode`: one varlen attention call per block, the layout kept
        per grid), elsewhere as the tower's forward."""
        runner = self.vision_runner()
        if runner.varlen:
            return runner.encode(pixels, grid).to(self.dtype)
        grid_t = torch.tensor([grid], dtype=torch.long, device=self.device)
        out = self.model.model.get_video_features(pixels, grid_t, return_dict=True)
        return out.pooler_output[0].to(self.dtype)

    def vision_runner(self) -> Any:
        """The vision tower run block by block in our own loop, for a feature cache's partial recompute.

        One per model, shared by its sessions: it holds no stream state and no weights of its own."""
        if self._vision_runner is None:
            from .qwen_vision import QwenVisionRunner

            self._vision_runner = QwenVisionRunner(self.model.model.visual)
        return self._vision_runner

    def video_positions(self, place: ChunkPlace, h: int, w: int) -> torch.Tensor:
        """(3, h*w) M-RoPE ids of chunk `place.index` (on the host): the same values HF's get_rope_index gives it."""
        t = (torch.tensor(place.index) * self.time_interval(place.seconds_per_chunk)).long()
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([t.expand(h * w), hh.reshape(-1), ww.reshape(-1)]) + place.offset

    def text_positions(self, start: int, count: int) -> torch.Tensor:
        """(3, count) M-RoPE ids of text tokens: the same id on t, h and w, counting up from `start`."""
        return torch.arange(start, start + count, device=self.device).expand(3, -1)

    def text_start_after_video(self, place: ChunkPlace, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        """Where text resumes after `num_chunks` chunks of video, as the model's own `get_rope_index` places it.

        Asking it costs O(stream) per question (3.5 ms at 10k frames), so the rule it follows is found once
        on small cases — the grid's larger side after the video's start (transformers 5.17-5.24) or one past the
        last chunk's largest id — and applied in closed form; neither matching, it is asked each time."""
        if num_chunks == 0:
            return place.offset
        h, w = grid_hw
        rule = self._text_start_rule if self._text_start_rule is not None else self._find_text_start_rule()
        if rule == "after_grid":
            return place.offset + max(h, w)
        if rule == "after_last":
            return int(self.video_positions(dataclasses.replace(place, index=num_chunks - 1), h, w).max()) + 1
        return self._rope_text_start(place, num_chunks, grid_hw)

    def _find_text_start_rule(self) -> str:
        cases = [(ChunkPlace(0, 7, s), n, hw) for s, n, hw in ((1.0, 1, (2, 3)), (1.0, 3, (3, 2)), (0.5, 5, (4, 2)), (2.0, 9, (1, 1)))]
        truth = [self._rope_text_start(p, n, hw) for p, n, hw in cases]
        self._text_start_rule = "model"
        for rule in ("after_grid", "after_last"):
            self._text_start_rule = rule
            if [self.text_start_after_video(p, n, hw) for p, n, hw in cases] == truth:
                return rule
        self._text_start_rule = "model"
        return "model"

    def _rope_text_start(self, place: ChunkPlace, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        """Ask the model's own `get_rope_index` (the reference the closed forms are checked against)."""
        h, w = grid_hw
        n = num_chunks * h * w
        ids = torch.full((1, n + 1), self.video_token_id, dtype=torch.long)
        ids[0, -1] = 0
        types = torch.full((1, n + 1), 2, dtype=torch.int)
        types[0, -1] = 0
        grid = torch.tensor([[num_chunks, h * self.merge, w * self.merge]])
        kwargs = {}
        if getattr(self.model.config.vision_config, "tokens_per_second", None) is not None:
            kwargs["second_per_grid_ts"] = torch.tensor([place.seconds_per_chunk])
        pos, _ = self.model.model.get_rope_index(ids, types, video_grid_thw=grid, **kwargs)
        return place.offset + int(pos[0, 0, -1])

    # -- text -----------------------------------------------------------------------------------------
    def prefix_ids(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
        text = f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def suffix_ids(self, question: str) -> list[int]:
        text = f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


class Qwen2VLAdapter(QwenVLAdapter):
    """Qwen2-VL: same seam; the temporal M-RoPE step is one per chunk (no tokens_per_second)."""

    family = "qwen2_vl"
