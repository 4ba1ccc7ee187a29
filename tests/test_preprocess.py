"""Tests of livevlm.models.preprocess: equality with HF's Qwen2VLVideoProcessor, smart_resize, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from livevlm.errors import FrameError
from livevlm.models.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    VisionGeometry,
    frames_to_patches,
    smart_resize,
    target_size,
)

SMALL = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64}

# name: (T, H, W, VisionGeometry / Qwen2VLVideoProcessor overrides)
CASES = {
    "valid_308x336_t4": (4, 308, 336, {}),  # already a valid size: no resize
    "resize_300x410_t3": (3, 300, 410, {}),  # rounded to 308x420; odd T is padded
    "upscale_56x84_t4": (4, 56, 84, {}),  # below min_pixels: upscaled to 280x392
    "upscale_100x150_t3": (3, 100, 150, {}),  # below min_pixels and odd T
    "downscale_720x1280_t1": (1, 720, 1280, {}),  # above max_pixels: downscaled to 560x1008; T=1 padded
    "small_geom_56x84_t4": (4, 56, 84, SMALL),  # valid under SMALL: no resize
    "small_geom_100x150_t3": (3, 100, 150, SMALL),  # resized to 112x140 (downscale, odd T)
}


def synthetic_clip(t: int, h: int, w: int) -> np.ndarray:
    """Deterministic uint8 (T, H, W, 3) clip: a high-frequency pattern averaged with a smooth gradient."""
    T, I, J, C = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    pattern = (I * 7 + J * 13 + T * 29 + C * 50) % 256
    grad = (I * 255 // max(h - 1, 1) + J * 255 // max(w - 1, 1)) // 2
    return ((pattern + grad) // 2).astype(np.uint8)


def run_case(name: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    t, h, w, kw = CASES[name]
    return frames_to_patches(synthetic_clip(t, h, w), VisionGeometry(**kw))


# --- 1. live comparison with the real HF processor (needs torchvision) ---


@pytest.mark.parametrize("name", list(CASES))
def test_matches_hf_video_processor(name: str) -> None:
    pytest.importorskip(
        "torchvision",
        reason="torchvision not installed: live HF comparison skipped "
        "(the recorded-reference tests below still cover it)",
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    t, h, w, kw = CASES[name]
    clip = synthetic_clip(t, h, w)
    out = Qwen2VLVideoProcessor(cap_pixels_per_frame=False, **kw)(
        videos=[clip], do_sample_frames=False, return_tensors="pt"
    )
    ours, grid = frames_to_patches(clip, VisionGeometry(**kw))
    assert out["video_grid_thw"].tolist() == [list(grid)]
    ref = out["pixel_values_videos"]
    assert ours.dtype == ref.dtype == torch.float32 and ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5


def test_smart_resize_matches_hf() -> None:
    pytest.importorskip("torchvision", reason="torchvision not installed: HF smart_resize comparison skipped")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize as hf_smart_resize

    for h, w in [
        (1, 1),
        (1, 200),
        (27, 29),
        (42, 70),
        (100, 150),
        (300, 410),
        (720, 1280),
        (2160, 3840),
        (5600, 28),
        (333, 7),
    ]:
        for lo, hi in [
            (56 * 56, 28 * 28 * 1280),
            (128 * 28 * 28, 768 * 28 * 28),
            (SMALL["min_pixels"], SMALL["max_pixels"]),
        ]:
            expected = hf_smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
            assert smart_resize(h, w, 28, lo, hi) == expected


# --- 2. recorded reference values (always run) ---
# Recorded from transformers 5.24.0 Qwen2VLVideoProcessor (default args + the CASES overrides,
# cap_pixels_per_frame=False, do_sample_frames=False) with torchvision 0.29.1 / torch 2.14.1 on CPU.
# sum / sumsq / sumabs: float64 sums of the float32 pixel_values_videos; vals: its flattened entries at idx.
# Our output was bit-identical to HF's on every case.
RECORDED = {
    "valid_308x336_t4": {
        "grid": (2, 22, 24),
        "shape": (1056, 1176),
        "sum": 221897.29615,
        "sumsq": 597121.65783,
        "sumabs": 706457.57602,
        "idx": [0, 137983, 275967, 413951, 551935, 689919, 827903, 965887, 1103871, 1241855],
        "vals": [
            -1.792263,
            -0.2302309,
            1.414542,
            -0.1008734,
            0.762462,
            -0.3563747,
            -0.3994948,
            -0.9455538,
            0.6641535,
            0.5816898,
        ],
    },
    "resize_300x410_t3": {
        "grid": (2, 22, 30),
        "shape": (1320, 1176),
        "sum": 277446.50247,
        "sumsq": 722595.62678,
        "sumabs": 865602.21246,
        "idx": [0, 172479, 344959, 517439, 689919, 862399, 1034879, 1207359, 1379839, 1552319],
        "vals": [
            -1.792263,
            -0.146266,
            0.9960369,
            0.08398749,
            1.084371,
            0.1055329,
            0.1693079,
            0.1839049,
            1.404793,
            1.349573,
        ],
    },
    "upscale_56x84_t4": {
        "grid": (2, 20, 28),
        "shape": (1120, 1176),
        "sum": 239150.43466,
        "sumsq": 618458.79753,
        "sumabs": 736867.06132,
        "idx": [0, 146346, 292693, 439039, 585386, 731732, 878079, 1024425, 1170772, 1317119],
        "vals": [
            -1.792263,
            -0.4164058,
            -0.6127958,
            -0.3324199,
            0.9798517,
            0.3245093,
            -0.1762815,
            0.0179423,
            1.399534,
            1.178933,
        ],
    },
    "upscale_100x150_t3": {
        "grid": (2, 20, 28),
        "shape": (1120, 1176),
        "sum": 235568.32864,
        "sumsq": 613950.92304,
        "sumabs": 734652.78267,
        "idx": [0, 146346, 292693, 439039, 585386, 731732, 878079, 1024425, 1170772, 1317119],
        "vals": [
            -1.792263,
            -0.3263592,
            -0.7265563,
            -0.01125455,
            1.050952,
            -0.916357,
            0.7241845,
            1.025234,
            0.3940136,
            1.961036,
        ],
    },
    "downscale_720x1280_t1": {
        "grid": (1, 40, 72),
        "shape": (2880, 1176),
        "sum": 605128.88327,
        "sumsq": 1529811.0332,
        "sumabs": 1859860.5735,
        "idx": [0, 376319, 752639, 1128959, 1505279, 1881599, 2257919, 2634239, 3010559, 3386879],
        "vals": [
            -1.777664,
            0.1124276,
            -0.6412359,
            0.3826089,
            1.505994,
            -0.228854,
            0.8092109,
            0.04132729,
            1.079392,
            0.9798517,
        ],
    },
    "small_geom_56x84_t4": {
        "grid": (2, 4, 6),
        "shape": (48, 1176),
        "sum": 10249.411026,
        "sumsq": 27366.246637,
        "sumabs": 32225.247166,
        "idx": [0, 6271, 12543, 18815, 25087, 31359, 37631, 43903, 50175, 56447],
        "vals": [
            -1.792263,
            -0.4784042,
            0.5590991,
            0.3968289,
            0.6602731,
            0.6491457,
            0.02710722,
            0.7478636,
            -0.1012427,
            1.150492,
        ],
    },
    "small_geom_100x150_t3": {
        "grid": (2, 8, 10),
        "shape": (160, 1176),
        "sum": 33746.078452,
        "sumsq": 87181.294977,
        "sumabs": 104619.06073,
        "idx": [0, 20906, 41813, 62719, 83626, 104532, 125439, 146345, 167252, 188159],
        "vals": [
            -1.792263,
            0.6670102,
            -0.146266,
            1.083627,
            0.7770604,
            -0.6838961,
            0.8292389,
            0.3489904,
            -0.60979,
            1.946816,
        ],
    },
}


@pytest.mark.parametrize("name", list(RECORDED))
def test_matches_recorded_hf_reference(name: str) -> None:
    ref = RECORDED[name]
    pixels, grid = run_case(name)
    assert grid == ref["grid"]
    assert tuple(pixels.shape) == ref["shape"] and pixels.dtype == torch.float32
    p64 = pixels.double()
    # One uint8 step in one element moves a sum by ~0.015, so 1e-3 still catches a single off-by-one pixel.
    assert p64.sum().item() == pytest.approx(ref["sum"], abs=1e-3)
    assert (p64**2).sum().item() == pytest.approx(ref["sumsq"], abs=1e-3)
    assert p64.abs().sum().item() == pytest.approx(ref["sumabs"], abs=1e-3)
    np.testing.assert_allclose(pixels.flatten()[ref["idx"]].numpy(), ref["vals"], rtol=0, atol=1e-5)


# --- 3. smart_resize, padding, geometry, errors ---


@pytest.mark.parametrize(
    ("h", "w", "lo", "hi", "expected"),
    [
        (308, 336, 128 * 784, 768 * 784, (308, 336)),  # already valid: unchanged
        (300, 410, 128 * 784, 768 * 784, (308, 420)),  # nearest multiples of 28
        (42, 42, 1, 10**9, (56, 56)),  # round(1.5) == 2 (Python round, as HF)
        (70, 70, 1, 10**9, (56, 56)),  # round(2.5) == 2: banker's rounding, as HF
        (56, 84, 128 * 784, 768 * 784, (280, 392)),  # below min_pixels: ceil after scaling up
        (720, 1280, 128 * 784, 768 * 784, (560, 1008)),  # above max_pixels: floor after scaling down
        (5600, 28, 1, 28 * 28 * 10, (1232, 28)),  # downscale clamps the short side at one factor
        (1, 200, 128 * 784, 768 * 784, (28, 4480)),  # aspect ratio exactly 200 is allowed
    ],
)
def test_smart_resize_cases(h: int, w: int, lo: int, hi: int, expected: tuple[int, int]) -> None:
    assert smart_resize(h, w, 28, lo, hi) == expected


@pytest.mark.parametrize("h", [1, 17, 56, 99, 240, 480, 721, 1080, 2160])
@pytest.mark.parametrize("w", [3, 28, 100, 320, 640, 1279, 1920, 3840])
def test_smart_resize_invariants(h: int, w: int) -> None:
    if max(h, w) / min(h, w) > 200:
        return
    geom = VisionGeometry()
    rh, rw = target_size(h, w, geom)
    assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
    assert rh * rw >= geom.min_pixels or (rh, rw) == (round(h / 28) * 28, round(w / 28) * 28)
    assert rh * rw <= geom.max_pixels or min(rh, rw) == 28
    # both sides scaled by the same factor up to one factor step of rounding (aspect ratio kept)
    assert abs(rh / h - rw / w) <= 28 / h + 28 / w + 1e-9 or min(rh, rw) == 28


def test_smart_resize_rejects_extreme_aspect_and_empty() -> None:
    with pytest.raises(FrameError, match="aspect ratio"):
        smart_resize(1, 201, 28, 56 * 56, 28 * 28 * 1280)
    with pytest.raises(FrameError, match="aspect ratio"):
        target_size(10_000, 40, VisionGeometry())
    with pytest.raises(FrameError):
        smart_resize(0, 10, 28, 56 * 56, 28 * 28 * 1280)


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_odd_t_is_padded_with_last_frame(t: int) -> None:
    geom = VisionGeometry(**SMALL)
    clip = synthetic_clip(t, 56, 84)
    pixels, grid = frames_to_patches(clip, geom)
    assert grid == (math.ceil(t / 2), 4, 6)
    assert pixels.shape == (math.ceil(t / 2) * 4 * 6, 3 * 2 * 14 * 14)
    padded = np.concatenate([clip, np.repeat(clip[-1:], t % 2, axis=0)])
    assert torch.equal(pixels, frames_to_patches(padded, geom)[0])
    if t % 2:  # in the last temporal group both frames are the last input frame
        last = pixels[-24:].view(24, 3, 2, 14 * 14)
        assert torch.equal(last[:, :, 0], last[:, :, 1])


def test_patch_layout_and_normalization() -> None:
    """Rows run (t, h-block, w-block, h-in-block, w-in-block); columns are (channel, t, y, x) of one patch."""
    geom = VisionGeometry(**SMALL)
    clip = synthetic_clip(2, 56, 84)
    pixels, (_gt, gh, gw) = frames_to_patches(clip, geom)
    mean = np.array(OPENAI_CLIP_MEAN, dtype=np.float32) * 255
    std = np.array(OPENAI_CLIP_STD, dtype=np.float32) * 255
    # patch at grid row 3, column 5 -> block (1, 2), position in block (1, 1)
    row = ((0 * (gh // 2) + 1) * (gw // 2) + 2) * 4 + 1 * 2 + 1
    patch = pixels[row].view(3, 2, 14, 14).numpy()
    raw = clip[:, 3 * 14 : 4 * 14, 5 * 14 : 6 * 14, :].transpose(3, 0, 1, 2).astype(np.float32)
    np.testing.assert_allclose(patch, (raw - mean[:, None, None, None]) / std[:, None, None, None], atol=1e-6)


def test_explicit_size_and_no_resize_when_equal() -> None:
    geom = VisionGeometry()
    clip = synthetic_clip(2, 100, 150)
    pixels, grid = frames_to_patches(clip, geom, size=(56, 84))
    assert grid == (1, 4, 6) and pixels.shape == (24, 1176)
    same, _ = frames_to_patches(synthetic_clip(2, 56, 84), geom, size=(56, 84))
    expected, _ = frames_to_patches(synthetic_clip(2, 56, 84), VisionGeometry(**SMALL))
    assert torch.equal(same, expected)  # no resize at the input size, whatever the pixel budget
    with pytest.raises(FrameError, match="multiples"):
        frames_to_patches(clip, geom, size=(50, 84))


def test_geometry_from_vision_config() -> None:
    cfg = SimpleNamespace(patch_size=16, temporal_patch_size=2, spatial_merge_size=2)
    geom = VisionGeometry.from_vision_config(cfg, max_pixels=1024 * 32 * 32)
    assert (geom.patch_size, geom.temporal_patch_size, geom.merge_size, geom.factor) == (16, 2, 2, 32)
    assert geom.max_pixels == 1024 * 32 * 32 and geom.min_pixels == VisionGeometry().min_pixels
    from transformers import Qwen2_5_VLConfig

    assert VisionGeometry.from_vision_config(Qwen2_5_VLConfig().vision_config) == VisionGeometry()


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 56, 56, 3), dtype=np.float32), "uint8"),
        (np.zeros((56, 56, 3), dtype=np.uint8), "shape"),
        (np.zeros((2, 56, 56, 4), dtype=np.uint8), "shape"),
        (np.zeros((2, 3, 56, 56), dtype=np.uint8), "shape"),
        (np.zeros((0, 56, 56, 3), dtype=np.uint8), "empty"),
        (np.zeros((1, 2, 500, 3), dtype=np.uint8), "aspect ratio"),
        ([[[[0, 0, 0]]]], "numpy"),
    ],
)
def test_bad_frames_raise_frame_error(frames, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        frames_to_patches(frames, VisionGeometry())
