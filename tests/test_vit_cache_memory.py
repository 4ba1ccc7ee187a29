"""The ViT cache's fast path keeps no second copy of the tower's weights (issue 21: a prepacked copy of every
linear added 2.5 GiB at the Qwen2-VL-2B shape in fp32); its answers hold when oneDNN is refused."""

from __future__ import annotations

import gc

import pytest
import torch
from test_vit_cache import chunks_of, clip_frames, cosine, full_encode

from livevlm.cache.vit_cache import ViTCacheConfig, build_feature_cache
from livevlm.kernels import forced_torch
from livevlm.kernels import linear as linear_module
from livevlm.models import load_model

PARTIAL = ViTCacheConfig("fast", cut_fraction=1.0, drift_limit=1.0)  # partial recompute after the first chunk


def weight_shapes(visual) -> set[tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every linear weight in the tower's blocks: what a packed copy would look like."""
    return {
        (tuple(m.weight.shape), m.weight.dtype)
        for m in visual.blocks.modules()
        if isinstance(m, torch.nn.Linear)
    }


def live_weight_tensors(shapes) -> tuple[int, int, int]:
    """Live tensors shaped like a block weight: distinct data (count, bytes), and how many are oneDNN-laid."""
    gc.collect()
    held: dict[object, int] = {}
    mkldnn = 0
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and (tuple(obj.shape), obj.dtype) in shapes:
            mkldnn += obj.is_mkldnn
            key = ("mkldnn", id(obj)) if obj.is_mkldnn else obj.data_ptr()
            held[key] = obj.numel() * obj.element_size()
    return len(held), sum(held.values()), mkldnn


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_partial_recompute_holds_no_copy_of_the_towers_weights(tiny_checkpoints, family):
    adapter = load_model(tiny_checkpoints[family], max_pixels=160 * 28 * 28)  # fresh: no runner built yet
    visual = adapter.model.model.visual
    shapes = weight_shapes(visual)
    params = {p.data_ptr(): p.numel() * p.element_size() for p in visual.parameters()}
    before = live_weight_tensors(shapes)
    cache = build_feature_cache(PARTIAL, adapter.vision_encoder())
    for pixels, grid in chunks_of(adapter, clip_frames("carphone_pristine", 6)):
        cache.encode(pixels, grid)
    assert cache.stats.chunks_partial == 2
    assert adapter.vision_runner().linear.backend == ("torch" if forced_torch() else "onednn")
    del cache  # the stream's own state goes; what the model keeps for every stream stays
    after = live_weight_tensors(shapes)
    assert after == before and after[2] == 0, (
        f"weight-shaped tensors (count, bytes, oneDNN) {before} -> {after}"
    )
    assert {p.data_ptr(): p.numel() * p.element_size() for p in visual.parameters()} == params


def test_partial_recompute_answers_when_onednn_is_refused(tiny_checkpoints, monkeypatch):
    def refuse(*args):
        raise RuntimeError("onednn: unsupported on this cpu")

    monkeypatch.setattr(linear_module, "onednn_linear", refuse)
    adapter = load_model(tiny_checkpoints["qwen2_vl"], max_pixels=160 * 28 * 28)
    cache = build_feature_cache(PARTIAL, adapter.vision_encoder())
    for pixels, grid in chunks_of(adapter, clip_frames("carphone_pristine", 6)):
        embeds, _ = cache.encode(pixels, grid)
        assert float(cosine(embeds, full_encode(adapter, pixels, grid)).mean()) > 0.9
    assert cache.stats.chunks_partial == 2
    choice = adapter.vision_runner().linear.choice
    assert choice.backend == "torch" and ("failed: onednn: unsupported" in choice.reason or forced_torch())
