"""Adapter for Qwen3-VL (transformers' `Qwen3VLForConditionalGeneration`): DeepStack, interleaved M-RoPE, text
timestamps between frames.

    prompt:  ...user\\n  then per temporal patch (2 frames):  <t.t seconds><|vision_start|><|video_pad|>*n<|vision_end|>
             then  question<|im_end|>\\n<|im_start|>assistant\\n

- Timestamps: each chunk's `<t seconds>` (the mean time of its two frames, as the processor computes it) and
  the vision delimiters are the chunk's text (`chunk_text_ids`), never pruned.
- Positions: HF's get_rope_index splits a video into one grid per temporal patch and gives each patch's tokens
  (t, h, w) = (s, s + row, s + col) from the first free position s after the text before it; text counts up
  from the last visual token + 1. `video_positions` builds exactly that from `ChunkPlace.start`.
- DeepStack: the tower also returns k features per token (from intermediate blocks) that the decoder adds to
  the hidden states of the visual tokens after its first k layers. We pack them as extra columns of the
  chunk's embeds, (N, D * (1 + k)), so every pruner keeps (and a merging pruner merges) them with the same index
  as the main features; `_decoder_inputs` unpacks them and hooks add them after those layers to every row
  (`layer_additions`: HF picks the visual rows by a boolean mask, a device wait). Text has no extra columns
  (zero padding where text sits in a chunk), so nothing is added there, as in HF.
- Frames: the HF processor's budget (`size.shortest_edge / longest_edge`) is for a whole clip; a live stream's
  length is unknown, so a chunk is sized as the processor sizes a clip of one temporal patch (per-frame bounds,
  like every family's `min_pixels` / `max_pixels`, are half the checkpoint's clip budget).
- Similarity pruners compare whole packed rows (main and DeepStack features together).
- Block runner: `Qwen3VisionRunner` (learned position embeddings, DeepStack taps) for the token ViT cache.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..kernels.transfer import upload
from ..records import ChunkPlace, VisionEncoder
from .base import DEFAULT_SYSTEM_PROMPT
from .layer_additions import ADDED_PER_LAYER
from .lm_side import LanguageModelSide
from .loading import processor_config
from .preprocess import MAX_ASPECT, VisionGeometry, aspect_error, frames_to_patches

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
CLIP_MIN_PIXELS = 128 * 32 * 32  # Qwen3VLVideoProcessor.size, for a whole clip
CLIP_MAX_PIXELS = 768 * 32 * 32


def clip_smart_resize(
    frames: int, height: int, width: int, factor: int, temporal: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The Qwen3-VL video processor's size rule for a clip of `frames` frames (its budget covers all of them)."""
    given = (height, width)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise aspect_error(*given)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen3VLAdapter(LanguageModelSide):
    """Qwen3-VL: one temporal patch per chunk, a timestamp before it, DeepStack features packed with its tokens."""

    family = "qwen3_vl"

    def __init__(
        self, model: Any, tokenizer: Any, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> None:
        # min_pixels / max_pixels: per frame, as for every family (`pixel_bounds` converts the checkpoint's)
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        vcfg = cfg.vision_config
        proc = processor_config(model.name_or_path)
        self.geometry = VisionGeometry(
            patch_size=int(vcfg.patch_size),
            temporal_patch_size=int(vcfg.temporal_patch_size),
            merge_size=int(vcfg.spatial_merge_size),
            min_pixels=int(min_pixels or CLIP_MIN_PIXELS // int(vcfg.temporal_patch_size)),
            max_pixels=int(max_pixels or CLIP_MAX_PIXELS // int(vcfg.temporal_patch_size)),
            image_mean=tuple(proc.get("image_mean") or IMAGENET_STANDARD),
            image_std=tuple(proc.get("image_std") or IMAGENET_STANDARD),
        )
        self.frames_per_chunk = self.geometry.temporal_patch_size
        self.merge = self.geometry.merge_size
        self.deepstack = len(vcfg.deepstack_visual_indexes)
        self.hidden = int(cfg.get_text_config().hidden_size)
        self.video_token_id = int(cfg.video_token_id)
        self._bind_language_model(model.model.language_model, "<|im_end|>")

    # -- vision ---------------------------------------------------------------------------------------
    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """The size of a chunk's frames: the processor's rule for a clip of one temporal patch; `min_pixels` /
        `max_pixels` (per frame) override the checkpoint's budget."""
        g, tp = self.geometry, self.geometry.temporal_patch_size
        lo, hi = (min_pixels or g.min_pixels) * tp, (max_pixels or g.max_pixels) * tp
        return clip_smart_resize(tp, height, width, g.factor, tp, lo, hi)

    @staticmethod
    def pixel_bounds(name: str) -> dict[str, int]:
        """Per-frame bounds from the checkpoint's video processor, whose `size` budgets a whole clip: a chunk is
        a clip of one temporal patch (2 frames), so each frame gets half."""
        from .loading import checkpoint_pixel_bounds

        return {k: v // 2 for k, v in checkpoint_pixel_bounds(name).items()}

    def tokens_per_chunk(self, size: tuple[int, int]) -> int:
        f = self.geometry.factor
        return (size[0] // f) * (size[1] // f)

    def preprocess(self, frames: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        pixels, grid = frames_to_patches(frames, self.geometry, size=size)
        return upload(pixels, self.device), (int(grid[0]), int(grid[1]), int(grid[2]))

    def merged_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        return grid[1] // self.merge, grid[2] // self.merge

    def vision_encoder(self) -> VisionEncoder:
        return VisionEncoder(full=self.vision_features, runner=self.vision_runner, family=self.family)

    def vision_runner(self) -> Any:
        """The tower block by block (`Qwen3VisionRunner`: DeepStack taps merged beside the main features)."""
        if self._vision_runner is None:
            from .qwen_vision import Qwen3VisionRunner

            self._vision_runner = Qwen3VisionRunner(self.model.model.visual)
        return self._vision_runner

    @torch.inference_mode()
    def vision_features(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The model's own encode of one temporal patch: (M, D * (1 + k)), main then DeepStack features. On CUDA
        it runs in our block loop (`Qwen3VisionRunner`'s `encode`: one varlen attention call per block, no host
        sync, so `encode="graph"` can capture it), elsewhere as the tower's forward."""
        runner = self.vision_runner()
        if runner.varlen:
            return runner.encode(pixels, grid).to(self.dtype)
        grid_t = torch.tensor([grid], dtype=torch.long, device=self.device)
        out = self.model.model.get_video_features(pixels, grid_t, return_dict=True)
        parts = [out.pooler_output[0], *(f[0] for f in out.deepstack_features)]
        return torch.cat(parts, dim=-1).to(self.dtype)

    # -- positions: interleaved M-RoPE, restarting after each timestamp --------------------------------
    def video_positions(self, place: ChunkPlace, h: int, w: int) -> torch.Tensor:
        """(3, h*w): (s, s + row, s + col) from the chunk's first position s, as HF's get_rope_index."""
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([torch.zeros(h * w, dtype=torch.long), hh.reshape(-1), ww.reshape(-1)]) + place.start

    def text_positions(self, start: int, count: int) -> torch.Tensor:
        return torch.arange(start, start + count, device=self.device).expand(3, -1)

    def text_start_after_video(self, place: ChunkPlace, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        return place.start

    def _decoder_inputs(self, embeds: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Unpack DeepStack columns: added after the first k decoder layers (zeros where text sits)."""
        embeds = embeds.to(self.dtype)
        if embeds.shape[-1] == self.hidden:
            return embeds[None], {}
        n = embeds.shape[0]
        added = embeds[:, self.hidden :].reshape(n, self.deepstack, self.hidden)  # every row: no mask to pick them
        return embeds[None, :, : self.hidden], {ADDED_PER_LAYER: added}

    # -- text -----------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prefix_ids(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
        system = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
        return self._ids(f"{system}<|im_start|>user\n")

    def chunk_text_ids(self, place: ChunkPlace, pts_seconds: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """`<t seconds><|vision_start|>` before (t: the mean of the patch's first and last frame times) and
        `<|vision_end|>` after."""
        t = (pts_seconds[0] + pts_seconds[-1]) / 2
        return self._ids(f"<{t:.1f} seconds><|vision_start|>"), self._ids("<|vision_end|>")

    def suffix_ids(self, question: str) -> list[int]:
        return self._ids(f"{question}<|im_end|>\n<|im_start|>assistant\n")
