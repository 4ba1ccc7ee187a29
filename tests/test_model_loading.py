"""Loading a checkpoint fails with a typed error, never a traceback, never running the checkpoint's code."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import livevlm
from livevlm import ConfigError, DeviceUnavailableError, LivevlmError, ModelLoadError, Session, SessionConfig
from livevlm.assets import sample_video_path
from livevlm.cli import main

REPO = Path(livevlm.__file__).resolve().parent.parent
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor", "AutoTokenizer")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def checkpoint(tiny_checkpoints, tmp_path) -> Path:
    """A private copy of the tiny Qwen2.5-VL checkpoint (built with `build_tiny_checkpoint`), free to damage."""
    return Path(shutil.copytree(tiny_checkpoints["qwen2_5_vl"], tmp_path / "ckpt"))


def _plant_code(directory: Path, marker: Path) -> None:
    """An `evil.py` that writes `marker` as soon as anything imports it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_thing'\n"
    )


def _add_auto_map(json_path: Path, model_type: str | None = None) -> None:
    cfg = json.loads(json_path.read_text()) if json_path.exists() else {}
    cfg["auto_map"] = {name: f"evil.Evil{name[4:]}" for name in AUTO_CLASSES}
    if model_type is not None:
        cfg["model_type"] = model_type
    json_path.write_text(json.dumps(cfg))


@pytest.fixture
def evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A directory whose config.json names an unknown model_type and its own code in auto_map."""
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil"
    _plant_code(evil, marker)
    _add_auto_map(evil / "config.json", model_type="evil_thing")
    return evil, marker


def _run_cli(*args: str, tmp_path: Path, stdin: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "hf-modules"),
        LIVEVLM_HOME=str(tmp_path / "home"),
        PYTHONPATH=str(REPO),
    )
    cmd = [sys.executable, "-m", "livevlm.cli", *args]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False
    )


def _assert_one_line_error(res: subprocess.CompletedProcess | str, *needles: str) -> str:
    err = res if isinstance(res, str) else res.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("livevlm: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# 1. a checkpoint's own code is never run, and stdin is never read


def test_cli_refuses_remote_code_even_when_stdin_says_yes(evil_checkpoint, tmp_path):
    evil, marker = evil_checkpoint
    res = _run_cli("ask", str(sample_video_path()), "q", "--model", str(evil), tmp_path=tmp_path, stdin="y\n")
    assert not marker.exists()
    assert res.returncode == 2
    _assert_one_line_error(res, "never runs a checkpoint's own code", "qwen2_5_vl, qwen2_vl", "evil_thing")
    assert "[y/N]" not in res.stdout + res.stderr
    assert not (tmp_path / "hf-modules").exists() or not any((tmp_path / "hf-modules").rglob("evil.py"))


def test_api_refuses_remote_code_without_reading_stdin(evil_checkpoint, monkeypatch):
    evil, marker = evil_checkpoint
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    with pytest.raises(ModelLoadError) as info:
        livevlm.load_model(evil)
    assert not marker.exists() and stdin.tell() == 0  # nothing run, nothing read
    message = str(info.value)
    assert "never runs a checkpoint's own code" in message and "qwen2_5_vl, qwen2_vl" in message
    with pytest.raises(ModelLoadError, match="evil_thing"):
        Session(str(evil))
    assert not marker.exists() and stdin.tell() == 0


def test_supported_family_with_auto_map_loads_builtin_code_only(checkpoint, tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    _plant_code(checkpoint, marker)
    _add_auto_map(checkpoint / "config.json")
    _add_auto_map(checkpoint / "tokenizer_config.json")
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    adapter = livevlm.load_model(checkpoint)
    assert type(adapter.model).__module__.startswith("transformers.models.qwen2_5_vl.")
    assert type(adapter.tokenizer).__module__.startswith("transformers.")
    assert not marker.exists() and stdin.tell() == 0


# 2. damaged safetensors


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _randomise(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _bad_header_length(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(struct.pack("<Q", 2**40))


DAMAGES = {"half": _truncate, "random": _randomise, "header": _bad_header_length}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_safetensors(checkpoint, damage):
    weights = checkpoint / "model.safetensors"
    damage(weights)
    with pytest.raises(ModelLoadError, match="corrupt or truncated") as info:
        livevlm.load_model(checkpoint)
    assert str(weights) in str(info.value)


def test_damaged_safetensors_on_the_cli(checkpoint, capsys):
    _truncate(checkpoint / "model.safetensors")
    assert main(["ask", str(sample_video_path()), "q", "--model", str(checkpoint), "--no-progress"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "model.safetensors", "corrupt or truncated")


# 3. no tokenizer files


def test_missing_tokenizer_files(checkpoint, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (checkpoint / name).unlink()
    expected = r"no tokenizer.*tokenizer\.json.*vocab\.json.*merges\.txt"
    with pytest.raises(ModelLoadError, match=expected) as info:
        livevlm.load_model(checkpoint)
    assert str(checkpoint) in str(info.value)
    assert main(["ask", str(sample_video_path()), "q", "--model", str(checkpoint), "--no-progress"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "tokenizer.json", str(checkpoint))


def test_half_a_slow_tokenizer_names_the_missing_file(checkpoint):
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "vocab.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"merges\.txt") as info:
        livevlm.load_model(checkpoint)
    assert "vocab.json" not in str(info.value).split("missing")[-1]


# 4. devices, checked before anything is read from the checkpoint


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cuda:0"])
def test_cuda_without_cuda(device, tmp_path):
    with pytest.raises(DeviceUnavailableError, match=rf"{device!r}.*available: cpu"):
        livevlm.load_model(tmp_path / "no-such-model", device=device)  # the device is checked first


def test_cuda_index_beyond_the_count(tiny_checkpoints):
    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 where there is none)
    with pytest.raises(DeviceUnavailableError, match=r"available: cpu"):
        livevlm.load_model(tiny_checkpoints["qwen2_vl"], device=device)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_mps(tiny_checkpoints):
    with pytest.raises(DeviceUnavailableError, match="'mps'.*available: cpu"):
        livevlm.load_model(tiny_checkpoints["qwen2_vl"], device="mps")


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "", "cuda:-1", "meta"])
def test_unknown_device_string(device, tmp_path):
    with pytest.raises(LivevlmError, match="device") as info:
        livevlm.load_model(tmp_path / "no-such-model", device=device)
    assert isinstance(info.value, (ConfigError, DeviceUnavailableError))
    if device != "meta":
        assert isinstance(info.value, ConfigError)


@no_cuda
def test_session_and_cli_with_cuda_without_cuda(tiny_checkpoints, capsys):
    with pytest.raises(DeviceUnavailableError):
        Session(config=SessionConfig(device="cuda"))
    args = ["ask", str(sample_video_path()), "q", "--model", tiny_checkpoints["qwen2_vl"], "--device", "cuda"]
    assert main(args) == 2
    _assert_one_line_error(capsys.readouterr().err, "'cuda'", "available: cpu")


def test_device_error_is_exported():
    assert issubclass(DeviceUnavailableError, LivevlmError)
    assert "DeviceUnavailableError" in livevlm.__all__


# 5. dtype


def test_float16_on_cpu_loads_and_answers(tiny_checkpoints):
    import numpy as np

    adapter = livevlm.load_model(tiny_checkpoints["qwen2_vl"], dtype="float16")
    assert adapter.model.dtype == torch.float16
    session = Session(adapter)
    rng = np.random.default_rng(0)
    for _ in range(2):
        session.push(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    assert len(list(session.ask_ids("What is it?", 3))) == 3


def test_bogus_dtype(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown dtype 'bogus'"):
        livevlm.load_model(tmp_path / "no-such-model", dtype="bogus")  # refused before the path is read


def test_cache_keyword_follows_the_installed_transformers(tiny_adapters):
    """transformers 5.24 renamed the decoders' `past_key_values` to `cache`; an unknown keyword is swallowed by
    `**kwargs` and the decoder fills a cache of its own, so the name is read off the decoder's signature."""
    import torch

    from livevlm.models.lm_side import cache_kwarg

    class OldDecoder(torch.nn.Module):  # the signature of a transformers < 5.24 decoder
        def forward(self, inputs_embeds=None, position_ids=None, past_key_values=None, use_cache=None, **kwargs):
            return None

    assert cache_kwarg(OldDecoder()) == "past_key_values"
    lm = tiny_adapters["qwen2_5_vl"]._lm
    import inspect

    expected = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    assert cache_kwarg(lm) == expected


# 6. hub ids without network: the local cache, read once, no retry rounds


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: a connection to it is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_hub_id(hf_home: Path, repo_id: str, checkpoint: Path) -> None:
    """Lay out `checkpoint` in a Hugging Face cache under `hf_home` as `repo_id` at revision main (what an
    earlier download leaves)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_a_cached_hub_id_loads_offline_without_retry_rounds(checkpoint, tmp_path):
    """Offline, huggingface_hub retried every file lookup five times (~23 s each, a dozen lookups: minutes of
    'Retrying in 8s'); a hub id that is not cached took two rounds (~50 s) to be refused."""
    hf_home = tmp_path / "hf"
    _cache_hub_id(hf_home, "acme/tiny-vl", checkpoint)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", LIVEVLM_HOME=str(tmp_path))

    def ask(model: str) -> subprocess.CompletedProcess:
        args = ["ask", str(sample_video_path()), "q", "--model", model, "--max-new-tokens", "2", "--no-progress"]
        return subprocess.run([sys.executable, "-m", "livevlm.cli", *args], capture_output=True, text=True,
                              env=env, timeout=900, check=False)  # fmt: skip

    cached = ask("acme/tiny-vl")
    assert cached.returncode == 0, cached.stderr
    assert "Retrying" not in cached.stderr and cached.stdout.strip()
    missing = ask("acme/not-cached")
    _assert_one_line_error(missing, "'acme/not-cached'", "not in the local Hugging Face cache", "cannot be reached")
    assert "Retrying" not in missing.stderr
