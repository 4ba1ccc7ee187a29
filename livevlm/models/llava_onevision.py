"""Adapter for LLaVA-OneVision (SigLIP + Qwen2; transformers' `LlavaOnevisionForConditionalGeneration`).

Video as the model sees it: every frame resized to the tower's square input (no aspect kept), SigLIP, the
projector, bilinear pooling to ceil(g/2) x ceil(g/2) tokens per frame (196 at 384 px), and one learned
`image_newline` after the last frame. Positions are 1-D: token i of the prompt sits at position i.

Our seam: one frame is one chunk; its pooled tokens sit at 1-D positions right after the previous frame's,
so a pruner keeps their places. The newline belongs to the question side: `suffix_ids` starts with the video
placeholder id and `embed_ids` turns that id into `image_newline`, at the position HF gives it (the last
video placeholder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ModelLoadError
from ..kernels.transfer import upload
from ..records import VisionEncoder
from .base import DEFAULT_SYSTEM_PROMPT
from .lm_side import LanguageModelSide, LinearPositions
from .loading import processor_config
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_normalize


class LlavaOnevisionAdapter(LinearPositions, LanguageModelSide):
    """LLaVA-OneVision: SigLIP features, projector, 2x bilinear pooling per frame, Qwen2 with 1-D positions."""

    family = "llava_onevision"
    frames_per_chunk = 1

    def __init__(self, model: Any, tokenizer: Any, **pixel_bounds: Any) -> None:
        # pixel_bounds (min/max pixels) do not apply: every frame is resized to the tower's input size.
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        vcfg = cfg.vision_config
        side, patch = int(vcfg.image_size), int(vcfg.patch_size)
        proc = processor_config(model.name_or_path)
        size = proc.get("size") or {}
        self.size = (int(size.get("height", side)), int(size.get("width", side)))
        if self.size != (side, side):
            raise ModelLoadError(
                f"{model.name_or_path!r}: the processor resizes frames to {self.size}, but the pooling assumes the "
                f"vision tower's {side}x{side}"
            )
        self.image_mean = tuple(proc.get("image_mean") or OPENAI_CLIP_MEAN)
        self.image_std = tuple(proc.get("image_std") or OPENAI_CLIP_STD)
        if cfg.vision_feature_select_strategy != "full":
            raise ModelLoadError(f"{model.name_or_path!r}: only vision_feature_select_strategy 'full' is supported")
        self.grid = (1, side // patch, side // patch)
        self.pooled = (math.ceil(self.grid[1] / 2), math.ceil(self.grid[2] / 2))
        self.video_token_id = int(cfg.video_token_id)
        self._bind_language_model(model.model.language_model, "<|im_end|>")

    # -- vision ---------------------------------------------------------------------------------------
    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """Every frame goes to the tower's square input size, whatever its own (as the HF processor does)."""
        return self.size

    def tokens_per_chunk(self, size: tuple[int, int]) -> int:
        return self.pooled[0] * self.pooled[1]

    def preprocess(self, frames: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One frame (1, H, W, 3) uint8 -> ((1, 3, S, S) normalized pixels on the device, patch grid (1, g, g))."""
        return upload(resize_normalize(frames, self.size, self.image_mean, self.image_std), self.device), self.grid

    def merged_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        return self.pooled

    def vision_encoder(self) -> VisionEncoder:
        runner = self.vision_runner if isinstance(self.model.config.vision_feature_layer, int) else None
        return VisionEncoder(full=self.vision_features, runner=runner, family=self.family)

    @torch.inference_mode()
    def vision_features(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The model's own video encode of one frame: (pooled h*w, D), the trailing newline left out."""
        cfg = self.model.config
        out = self.model.model.get_video_features(
            pixel_values_videos=pixels[None],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            return_dict=True,
        )
        return out.pooler_output[0, :-1].to(self.dtype)

    def vision_runner(self) -> Any:
        """SigLIP run layer by layer up to the feature layer; the head is the projector and the pooling."""
        if self._vision_runner is None:
            from .siglip_vision import SiglipVisionRunner

            inner = self.model.model
            tower = getattr(inner.vision_tower, "vision_model", inner.vision_tower)  # older layouts nest it
            layers = len(tower.encoder.layers)
            layer = int(self.model.config.vision_feature_layer)
            depth = layers + 1 + layer if layer < 0 else layer  # hidden_states[k]: the output of k layers

            def head(x: torch.Tensor) -> torch.Tensor:
                return inner.apply_pooling(inner.multi_modal_projector(x[None]))[0]

            self._vision_runner = SiglipVisionRunner(
                tower, depth, head, self.grid[1] * self.grid[2],
                self.pooled[0] * self.pooled[1],
            )  # fmt: skip
        return self._vision_runner

    # -- text -----------------------------------------------------------------------------------------
    def prefix_ids(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
        text = f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n"
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def suffix_ids(self, question: str) -> list[int]:
        """The video's closing newline (the placeholder id, see `embed_ids`), then the chat template's rest."""
        text = f"\n{question}<|im_end|>\n<|im_start|>assistant\n"
        return [self.video_token_id, *self.tokenizer(text, add_special_tokens=False).input_ids]

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Token embeddings; a video placeholder id becomes the model's learned `image_newline`."""
        embeds = super().embed_ids(ids)
        rows = [j for j, i in enumerate(ids) if i == self.video_token_id]  # read on the host: no device sync
        if rows:
            embeds = embeds.clone()
            embeds[upload(torch.tensor(rows), self.device)] = self.model.model.image_newline.to(embeds.dtype)
        return embeds
