"""Shared fixtures: tiny random-weight Qwen-VL checkpoints built once, loaded through the public path."""

from __future__ import annotations

import os

import pytest

# Tests never reach a model hub; everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("qwen2_5_vl", "qwen2_vl")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` need CUDA: elsewhere they are skipped, with that reason in the summary."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu; run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny Qwen2.5-VL and Qwen2-VL checkpoints saved with `save_pretrained` (seeded, ~56 MB each)."""
    from livevlm.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-models")
    return {f: str(build_tiny_checkpoint(root / f, f, seed=0)) for f in FAMILIES}


@pytest.fixture(scope="session")
def every_tiny_checkpoint(tmp_path_factory) -> dict[str, str]:
    """A tiny checkpoint of every supported family (`models.tiny.TINY_FAMILIES`), seeded; modules load their own
    adapters from them (a module may change an adapter's attention function or wrap its methods)."""
    from livevlm.models.tiny import TINY_FAMILIES, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("every-tiny-model")
    return {f: str(build_tiny_checkpoint(root / f, f, seed=0)) for f in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_adapters(tiny_checkpoints):
    """Adapters loaded from the saved checkpoints with `livevlm.models.load_model` (the user's path)."""
    from livevlm.models import load_model

    return {f: load_model(path, max_pixels=160 * 28 * 28) for f, path in tiny_checkpoints.items()}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
