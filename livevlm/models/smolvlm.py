"""Adapter for SmolVLM / SmolVLM2 (Idefics3 architecture: SigLIP-style ViT + pixel shuffle + Llama decoder).

Video as the HF processor lays it out: each frame resized so its longest edge is the processor's video size
(aspect kept, odd sides rounded up to even), then squashed to the ViT's square input (both LANCZOS), encoded,
pixel-shuffled by `scale_factor` and projected: (g / scale)^2 tokens per frame. The prompt is text around
them, with 1-D positions:

    User: <intro>\n  then per frame:  \nFrame from MM:SS:<fake_token_around_image><global-img><image>*n<fake_token_around_image>
    then  \n\n<question><end_of_utterance>\nAssistant:

One frame is one chunk; its timestamp and delimiters are the chunk's text (`chunk_text_ids`), never pruned.
The HF intro names the frame count and duration ("... series of four frames from a 0:00:04 [H:MM:SS] video"),
which a live stream does not know up front: ours says "a live video" instead (see `VIDEO_INTRO`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ..kernels.transfer import upload
from ..kernels.varlen_attention import VARLEN, vision_choice
from ..records import ChunkPlace, VisionEncoder
from .base import DEFAULT_SYSTEM_PROMPT
from .lm_side import LanguageModelSide, LinearPositions
from .loading import processor_config
from .preprocess import _check_frames, resize_normalize

VIDEO_INTRO = "You are provided the following series of frames from a live video."
# The intro's last characters go with the first frame's text: BPE pre-tokenizers join punctuation with the
# newlines after it (".\n\n" is one piece), so the prompt is only cut where the whole string would be.
_INTRO_TAIL = ".\n"
IMAGENET_STANDARD = (0.5, 0.5, 0.5)
LANCZOS, BICUBIC = 1, 3  # PIL resample codes, as processor configs store them


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """HF SmolVLM's `get_resize_output_image_size`: longest edge to `longest`, aspect kept, odd side made even."""
    if width >= height:
        w, h = longest, int(longest / (width / height))
        h += h % 2
    else:
        h, w = longest, int(longest * (width / height))
        w += w % 2
    return max(h, 1), max(w, 1)


def resize_frames(frames: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, h, w, 3): PIL LANCZOS (what torchvision >= 0.27 and HF's PIL backend run), or
    the antialiased uint8 bicubic of `resize_normalize`."""
    if tuple(size) == frames.shape[1:3]:
        return frames
    if resample == LANCZOS:
        from PIL import Image

        return np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.LANCZOS)) for f in frames])
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    video = F.interpolate(video, size=list(size), mode="bicubic", align_corners=False, antialias=True)
    return video.permute(0, 2, 3, 1).contiguous().numpy()


class SmolVLMAdapter(LinearPositions, LanguageModelSide):
    """SmolVLM2: one frame per chunk, pixel-shuffled ViT tokens between a timestamp and image delimiters."""

    family = "smolvlm"
    frames_per_chunk = 1

    def __init__(self, model: Any, tokenizer: Any, **pixel_bounds: Any) -> None:
        # pixel_bounds (min/max pixels) do not apply: every frame is resized to the ViT's square input.
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        vcfg = cfg.vision_config
        side, patch, self.scale = int(vcfg.image_size), int(vcfg.patch_size), int(cfg.scale_factor)
        proc = processor_config(model.name_or_path)
        sampling = (proc.get("video_sampling") or {}).get("video_size") or {}
        first = proc.get("size") if "size" in proc and "video_sampling" in proc else sampling or proc.get("size")
        self.first_edge = int((first or {}).get("longest_edge", 4 * 364))
        square = int((proc.get("max_image_size") or {}).get("longest_edge", 364))
        self.resample = int(proc.get("resample", LANCZOS))
        if square != side or self.resample not in (LANCZOS, BICUBIC):
            raise ModelLoadError(
                f"{model.name_or_path!r}: frames go to {square}x{square} with resample {self.resample}; supported: "
                f"the vision tower's {side}x{side}, LANCZOS (1) or BICUBIC (3)"
            )
        self.size = (side, side)
        self.image_mean = tuple(proc.get("image_mean") or IMAGENET_STANDARD)
        self.image_std = tuple(proc.get("image_std") or IMAGENET_STANDARD)
        g = side // patch
        self.grid = (1, g, g)
        self.shuffled = (g // self.scale, g // self.scale)
        self.video_token_id = int(cfg.image_token_id)  # frames are images to this model
        self._bind_language_model(model.model.text_model, "<end_of_utterance>", extra_eos=("<|im_end|>", "<|endoftext|>"))

    # -- vision ---------------------------------------------------------------------------------------
    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        return self.size

    def tokens_per_chunk(self, size: tuple[int, int]) -> int:
        return self.shuffled[0] * self.shuffled[1]

    def preprocess(self, frames: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One frame (1, H, W, 3) uint8 -> ((1, 3, S, S) normalized pixels on the device, patch grid)."""
        _check_frames(frames)
        first = longest_edge_size(*frames.shape[1:3], self.first_edge)
        frames = resize_frames(resize_frames(frames, first, self.resample), self.size, self.resample)
        return upload(resize_normalize(frames, self.size, self.image_mean, self.image_std), self.device), self.grid

    def merged_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        return self.shuffled

    def vision_encoder(self) -> VisionEncoder:
        return VisionEncoder(full=self.vision_features, runner=self.vision_runner, family=self.family)

    @torch.inference_mode()
    def vision_features(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The model's own image encode of one frame: ((g / scale)^2, D). On CUDA through the runner's loop
        (`SiglipVisionRunner.encode`, the same layers and head without the host reads that select real images,
        so `encode="graph"` can capture it), elsewhere as the model's forward."""
        if vision_choice(self.device).backend == VARLEN:
            return self.vision_runner().encode(pixels, grid).to(self.dtype)
        out = self.model.model.get_image_features(pixel_values=pixels[None], return_dict=True)
        return out.pooler_output[0].to(self.dtype)

    def vision_runner(self) -> Any:
        """The ViT run layer by layer; the head is post_layernorm, pixel shuffle and the projection."""
        if self._vision_runner is None:
            from .siglip_vision import SiglipVisionRunner

            inner = self.model.model
            tower = inner.vision_model
            self._vision_runner = SiglipVisionRunner(
                tower, len(tower.encoder.layers), lambda x: inner.connector(x[None])[0],
                self.grid[1] * self.grid[2], self.tokens_per_chunk(self.size), post_norm=True,
            )  # fmt: skip
        return self._vision_runner

    # -- text -----------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prefix_ids(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
        system = f"System: {system_prompt}<end_of_utterance>\n" if system_prompt else ""
        return self._ids(f"<|im_start|>{system}User: {VIDEO_INTRO.removesuffix(_INTRO_TAIL[0])}")

    def chunk_text_ids(self, place: ChunkPlace, pts_seconds: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """`\\nFrame from MM:SS:` and the image delimiters around the frame's tokens (the intro's end first)."""
        t = pts_seconds[0]
        stamp = f"{int(t // 60):02d}:{int(t % 60):02d}"
        lead = _INTRO_TAIL if place.index == 0 else ""
        before = f"{lead}\nFrame from {stamp}:<fake_token_around_image><global-img>"
        return self._ids(before), self._ids("<fake_token_around_image>")

    def suffix_ids(self, question: str) -> list[int]:
        return self._ids(f"\n\n{question}<end_of_utterance>\nAssistant:")
