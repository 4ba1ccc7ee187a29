"""`livevlm build-tiny OUT`: writes only into a new or empty folder, never over a checkpoint that is there."""

from __future__ import annotations

import json

import pytest

import livevlm
from livevlm.cli import main
from livevlm.errors import OutputError
from livevlm.models.tiny import build_tiny_checkpoint


def test_build_tiny_refuses_a_folder_that_holds_a_checkpoint(tmp_path, capsys):
    """`save_pretrained` over a user's sharded checkpoint replaced its config.json and deleted its weight shards
    (model-0000N-of-0000M.safetensors), silently: the folder was left broken."""
    real = tmp_path / "my-finetune"
    real.mkdir()
    config = {"model_type": "qwen2_vl", "note": "the user's own"}
    (real / "config.json").write_text(json.dumps(config))
    shards = [real / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for shard in shards:
        shard.write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in real.iterdir()}

    assert main(["build-tiny", str(real), "--family", "qwen2_vl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("livevlm: error: ") and "is not empty" in err and "config.json" in err
    with pytest.raises(OutputError, match="not empty"):
        build_tiny_checkpoint(real, "qwen2_vl")
    assert {p.name: p.read_bytes() for p in real.iterdir()} == before  # nothing touched


def test_build_tiny_writes_into_a_new_or_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "nested"):
        assert build_tiny_checkpoint(out, "smolvlm") == out
        assert livevlm.load_model(out).family == "smolvlm"
