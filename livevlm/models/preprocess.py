"""Qwen2/2.5-VL video preprocessing in plain numpy + torch, so no torchvision is needed at runtime.

Reproduces `transformers`' `Qwen2VLVideoProcessor` (`pixel_values_videos`, `video_grid_thw`) for uint8 RGB
clips: smart-resize to a multiple of `patch_size * merge_size`, bicubic antialiased resize done on the uint8
tensor (what torchvision's `resize` does on CPU), fused rescale + normalize in float32, pad T to a multiple of
`temporal_patch_size` with the last frame, then the same patch flattening order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FrameError

# transformers.utils.constants, copied so this module does not import transformers.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionGeometry:
    """Patch geometry and pixel budget of a Qwen2/2.5-VL vision tower (defaults = HF video processor's)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28  # Qwen2VLVideoProcessor.size["shortest_edge"]
    max_pixels: int = 768 * 28 * 28  # Qwen2VLVideoProcessor.size["longest_edge"]
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_vision_config(cls, vision_config: Any, **overrides: Any) -> VisionGeometry:
        """Geometry read from a HF Qwen2/2.5-VL `vision_config`, so patches match the checkpoint's encoder."""
        fields = {
            "patch_size": "patch_size",
            "temporal_patch_size": "temporal_patch_size",
            "merge_size": "spatial_merge_size",
        }
        kwargs = {
            name: int(getattr(vision_config, attr))
            for name, attr in fields.items()
            if getattr(vision_config, attr, None) is not None
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def factor(self) -> int:
        """Side lengths must be multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size


MAX_ASPECT = 200
"""The longest side over the shortest that Qwen-VL's processors take (HF's `smart_resize` refuses more)."""


def aspect_error(height: int, width: int) -> FrameError:
    """The error for a `height` x `width` frame over `MAX_ASPECT`, in one line: the size, the model's limit and
    the crop or pad that brings the frame within it (a resize that keeps the aspect would not)."""
    long, short = max(height, width), min(height, width)
    crop, pad = (MAX_ASPECT * short, short), (long, math.ceil(long / MAX_ASPECT))
    crop_wh, pad_wh = (crop, pad) if width >= height else (crop[::-1], pad[::-1])
    return FrameError(
        f"frame of {width}x{height} pixels has an aspect ratio of {long / short:.1f}:1, over this model's input "
        f"limit of {MAX_ASPECT}:1: crop it (e.g. to {crop_wh[0]}x{crop_wh[1]}), pad it (e.g. to "
        f"{pad_wh[0]}x{pad_wh[1]}) or resize it to a ratio of at most {MAX_ASPECT}:1 before giving it to the model"
    )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """HF's `smart_resize`: (h, w) multiples of `factor`, area within [min, max] pixels, aspect ratio kept."""
    if height <= 0 or width <= 0:
        raise FrameError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise aspect_error(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def target_size(height: int, width: int, geom: VisionGeometry) -> tuple[int, int]:
    """The (h, w) the HF video processor resizes a height x width clip to under `geom`."""
    return smart_resize(height, width, geom.factor, geom.min_pixels, geom.max_pixels)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise FrameError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise FrameError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise FrameError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise FrameError("frames is empty (T == 0)")


def resize_normalize(
    frames: np.ndarray, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> float32 (T, 3, h, w): HF's torchvision-backend resize (bicubic, antialiased, on
    the uint8 tensor) to `size` when it differs, then the fused rescale + normalize."""
    _check_frames(frames)
    height, width = frames.shape[1:3]
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
    if tuple(size) != (height, width):
        # torchvision's v2 resize, bicubic on a CPU uint8 tensor, calls interpolate on the uint8 tensor itself
        # (native uint8 kernel: rounds and saturates internally), antialias=True, align_corners=False.
        video = F.interpolate(video, size=list(size), mode="bicubic", align_corners=False, antialias=True)
    # HF fuses rescale (1/255) into normalize: mean and std are scaled by 255 in float32, then (x - m) / s.
    m = (torch.tensor(mean) * 255.0).view(-1, 1, 1)
    s = (torch.tensor(std) * 255.0).view(-1, 1, 1)
    return video.to(torch.float32).sub_(m).div_(s)


def frames_to_patches(
    frames: np.ndarray, geom: VisionGeometry, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Turn uint8 (T, H, W, 3) RGB frames into HF's (`pixel_values_videos`, `video_grid_thw`) for one clip.

    `size` is the (h, w) to resize to (multiples of `geom.factor`); None picks `target_size(H, W, geom)`.
    Returns float32 patches of shape (grid_t*grid_h*grid_w, 3*tp*p*p) and (grid_t, grid_h, grid_w).
    """
    _check_frames(frames)
    height, width = frames.shape[1:3]
    h, w = target_size(height, width, geom) if size is None else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0 or h % geom.factor or w % geom.factor:
        raise FrameError(f"size {h}x{w} must be positive multiples of factor {geom.factor}")

    video = resize_normalize(frames, (h, w), geom.image_mean, geom.image_std)

    tp, p, m = geom.temporal_patch_size, geom.patch_size, geom.merge_size
    if pad := -video.shape[0] % tp:
        video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)), dim=0)
    grid_t, grid_h, grid_w = video.shape[0] // tp, h // p, w // p
    patches = video.view(grid_t, tp, 3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, 3 * tp * p * p), (grid_t, grid_h, grid_w)
