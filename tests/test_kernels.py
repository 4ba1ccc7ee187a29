"""kernels/: every op's backend is visible, the fast linear path falls back where the CPU cannot run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from livevlm import kernels
from livevlm.kernels import RowLinears, linear_choice
from livevlm.kernels import linear as linear_module


def test_backend_reports_every_op_with_a_reason():
    table = kernels.backend()
    assert set(table) == {"similarity", "pool", "quant", "relevance", "sparse_attention", "linear", "packed_linear",
                          "vision_attention", "sdpa_backends"}  # fmt: skip
    for choice in table.values():
        assert choice.backend in ("torch", "onednn", "packed", "default") and choice.reason


def test_linear_choice_per_dtype_device_and_cpu(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    # an AMD EPYC without AVX-512 (the crash of issue 17): fp32 oneDNN runs there, bf16 stays on F.linear
    epyc = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
    fp32 = linear_choice(torch.device("cpu"), torch.float32, flags=epyc)
    assert fp32.backend == ("onednn" if torch.backends.mkldnn.is_available() else "torch")
    old_x86 = linear_choice(torch.device("cpu"), torch.float32, flags=frozenset({"sse4_2", "avx"}))
    assert old_x86.backend == "torch" and "avx2" in old_x86.reason
    assert linear_choice(torch.device("cpu"), torch.bfloat16, flags=epyc).backend == "torch"
    assert linear_choice(torch.device("cpu"), torch.float16).backend == "torch"
    assert linear_choice(torch.device("meta"), torch.float32).backend == "torch"
    assert linear_choice(torch.device("cpu"), torch.float32, enabled=False).backend == "torch"


def test_forced_torch_path_matches_the_module(monkeypatch):
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    linear = torch.nn.Linear(32, 48)
    rows = RowLinears(torch.device("cpu"), torch.float32)
    assert rows.choice.backend == "torch" and "LIVEVLM_KERNELS" in rows.choice.reason
    x = torch.randn(5, 32)
    with torch.inference_mode():
        assert torch.equal(rows(linear, x), linear(x))
    assert all("forced" in c.reason for c in kernels.backend().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_linear_where_chosen_agrees_with_the_module(dtype):
    rows = RowLinears(torch.device("cpu"), dtype)
    linear = torch.nn.Linear(64, 96).to(dtype)
    for n in (1, 7, 130):
        x = torch.randn(n, 64, dtype=dtype)
        with torch.inference_mode():
            torch.testing.assert_close(rows(linear, x), linear(x), rtol=2e-2, atol=2e-2)
    assert rows.backend == linear_choice(torch.device("cpu"), dtype).backend
    assert vars(rows).keys() == {"choice"}  # no weight (packed or not) is held: the module's own is read


def test_a_onednn_failure_falls_back_to_the_module_for_good(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    calls = []

    def refuse(*args):
        calls.append(args)
        raise RuntimeError("could not create a primitive descriptor\n(details)")

    rows = RowLinears(torch.device("cpu"), torch.float32)
    rows.choice = kernels.Choice("onednn", "as on a cpu that supports it")
    monkeypatch.setattr(linear_module, "onednn_linear", refuse)
    linear, x = torch.nn.Linear(16, 24), torch.randn(3, 16)
    with torch.inference_mode():
        assert torch.equal(rows(linear, x), linear(x))
        assert torch.equal(rows(linear, x), linear(x))
    assert len(calls) == 1 and rows.backend == "torch"
    assert rows.choice.reason == "oneDNN linear failed: could not create a primitive descriptor"


def _ask_stats(env: dict[str, str]) -> subprocess.CompletedProcess:
    from livevlm.assets import sample_video_path

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "livevlm.cli",
            "ask",
            str(sample_video_path()),
            "What colour is the circle?",
            "--vit-cache",
            "balanced",
            "--dtype",
            "bfloat16",
            "--stats",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        check=False,
    )


def test_cli_stats_show_the_linear_backend_actually_used_and_the_forced_fallback_answers():
    default = _ask_stats({})
    forced = _ask_stats({kernels.FORCE_ENV: "torch"})
    assert default.returncode == 0 and forced.returncode == 0, default.stderr + forced.stderr
    assert default.stdout.strip() and forced.stdout.strip()  # both paths answer
    packs = kernels.pack_choice("cpu", torch.bfloat16).backend == "packed"  # the bf16 tower packed at load
    expected = linear_choice(torch.device("cpu"), torch.bfloat16, packed=packs)
    assert f"'linear': '{expected}'" in default.stderr
    assert ("'packed_linear': 'packed: " in default.stderr) == packs
    assert "'linear': 'torch: forced by LIVEVLM_KERNELS=torch'" in forced.stderr
    assert "'packed_linear': 'torch: forced by LIVEVLM_KERNELS=torch'" in forced.stderr


def test_the_torch_path_never_imports_triton():
    code = (
        "import sys, torch, livevlm; from livevlm import kernels as k; k.backend(); "
        "k.pool_tokens(torch.randn(2, 5, 8), 2); k.chunk_logits(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 3, 8)); "
        "k.from_bytes(k.to_bytes(torch.randn(3, 7), 4), (3, 7), torch.float32, 4, 'cpu'); "
        "k.sparse_row_attention(torch.randn(2, 3, 8), torch.randn(2, 9, 8), torch.randn(2, 9, 8), "
        "torch.tensor([4, 0, 8]), torch.tensor([0, 4, 9], dtype=torch.int32)); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    env = {k: v for k, v in os.environ.items() if k not in (kernels.FORCE_ENV, "TRITON_INTERPRET")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr


def test_a_kernel_setting_that_cannot_run_is_refused_when_the_model_loads(tiny_checkpoints, monkeypatch, capsys):
    """LIVEVLM_KERNELS=triton on CPU without the interpreter used to load the model, ingest the whole video and
    fail at the first question with a traceback; a misspelt value was a bare ValueError traceback."""
    import livevlm
    from livevlm.assets import sample_video_path
    from livevlm.cli import main
    from livevlm.errors import ConfigError

    model = tiny_checkpoints["qwen2_vl"]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cases = {"triton": "TRITON_INTERPRET=1", "Torhc": "must be one of torch, triton, auto"}
    for value, needle in cases.items():
        monkeypatch.setenv(kernels.FORCE_ENV, value)
        with pytest.raises(ConfigError, match=needle):
            livevlm.load_model(model)
        assert main(["ask", str(sample_video_path()), "q", "--model", model, "--no-progress"]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("livevlm: error: ")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    if kernels.triton_version() is not None:  # the interpreter makes the forced kernels runnable on CPU
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv(kernels.FORCE_ENV, "triton")
        assert livevlm.load_model(model).family == "qwen2_vl"
