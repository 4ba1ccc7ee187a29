"""README "Adding a model family" followed literally: `register_model_family` from user code, and the mistakes a
user makes there (a typo in "module:attr", a dot where the colon goes) as typed errors before any weight is read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import livevlm
from livevlm.errors import ConfigError, ModelLoadError
from livevlm.models import MODEL_FAMILIES, register_model_family
from livevlm.models.qwen_vl import Qwen2VLAdapter


@pytest.fixture
def qwen2_vl_entry():
    """Put the built-in qwen2_vl entry back after a test re-registers it."""
    target = MODEL_FAMILIES.get("qwen2_vl").target
    yield
    register_model_family("qwen2_vl", target)


def test_an_adapter_class_registered_from_user_code_is_what_load_model_builds(tiny_checkpoints, qwen2_vl_entry):
    class MyAdapter(Qwen2VLAdapter):
        """A user's own adapter for the family (e.g. another prompt)."""

    register_model_family("qwen2_vl", MyAdapter)
    adapter = livevlm.load_model(tiny_checkpoints["qwen2_vl"])
    assert type(adapter) is MyAdapter and adapter.family == "qwen2_vl"


@pytest.mark.parametrize(
    "target", ["livevlm.models.qwen_vl:Qwen2VLAdaptr", "livevlm.models.qwen_vll:Qwen2VLAdapter"], ids=["attr", "module"]
)
def test_a_registered_target_that_does_not_import_is_a_typed_error_before_the_weights(
    target, tiny_checkpoints, tmp_path, qwen2_vl_entry
):
    """It was a bare AttributeError / ModuleNotFoundError, raised only after every weight had been read."""
    checkpoint = Path(shutil.copytree(tiny_checkpoints["qwen2_vl"], tmp_path / "ckpt"))
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # reading the weights would fail
    register_model_family("qwen2_vl", target)
    with pytest.raises(ModelLoadError, match="cannot be imported") as info:
        livevlm.load_model(checkpoint)
    assert f"model family 'qwen2_vl' is registered as {target!r}" in str(info.value)


@pytest.mark.parametrize("target", ["livevlm.models.qwen_vl.Qwen2VLAdapter", "livevlm.models.qwen_vl:", ":Qwen2VLAdapter"])
def test_a_lazy_target_without_module_colon_attr_is_refused_when_registered(target, qwen2_vl_entry):
    with pytest.raises(ConfigError, match="'package.module:Name'"):
        register_model_family("qwen2_vl", target)
    assert MODEL_FAMILIES.get("qwen2_vl").target is not target  # the working entry is kept
