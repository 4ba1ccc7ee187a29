"""kernels/: every op's backend is visible, the fast linear path falls back where the CPU cannot run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from livevlm import kernels
from livevlm.kernels import PackedLinears, linear_choice


def test_backend_reports_every_op_with_a_reason():
    table = kernels.backend()
    assert set(table) == {"similarity", "pool", "quant", "relevance", "linear"}
    for choice in table.values():
        assert choice.backend in ("torch", "onednn") and choice.reason


def test_bf16_prepack_is_not_chosen_on_a_cpu_without_avx512(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    # an AMD EPYC without AVX-512 (the crash of issue 17): no avx512bw, avx_ne_convert or amx_bf16
    epyc = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
    choice = linear_choice(torch.device("cpu"), torch.bfloat16, flags=epyc)
    assert choice.backend == "torch" and "avx512bw" in choice.reason
    assert linear_choice(torch.device("cpu"), torch.float32, flags=epyc).backend in ("onednn", "torch")
    assert linear_choice(torch.device("cpu"), torch.float16).backend == "torch"
    assert linear_choice(torch.device("meta"), torch.bfloat16).backend == "torch"


def test_forced_torch_path_matches_the_module(monkeypatch):
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    linear = torch.nn.Linear(32, 48).to(torch.bfloat16)
    packed = PackedLinears(torch.device("cpu"), torch.bfloat16)
    assert packed.choice.backend == "torch" and "LIVEVLM_KERNELS" in packed.choice.reason
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(linear, x), linear(x))
    assert all("forced" in c.reason for c in kernels.backend().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_path_where_chosen_agrees_with_the_module(dtype):
    packed = PackedLinears(torch.device("cpu"), dtype)
    linear = torch.nn.Linear(64, 96).to(dtype)
    x = torch.randn(7, 64, dtype=dtype)
    with torch.inference_mode():
        torch.testing.assert_close(packed(linear, x), linear(x), rtol=2e-2, atol=2e-2)
    assert packed.backend == linear_choice(torch.device("cpu"), dtype).backend or packed.backend == "torch"


def _ask_stats(env: dict[str, str]) -> subprocess.CompletedProcess:
    from livevlm.assets import sample_video_path

    return subprocess.run(
        [sys.executable, "-m", "livevlm.cli", "ask", str(sample_video_path()), "What colour is the circle?",
         "--vit-cache", "balanced", "--dtype", "bfloat16", "--stats", "--no-progress"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=600, check=False,
    )


def test_cli_stats_show_the_linear_backend_actually_used_and_the_forced_fallback_answers():
    default = _ask_stats({})
    forced = _ask_stats({kernels.FORCE_ENV: "torch"})
    assert default.returncode == 0 and forced.returncode == 0, default.stderr + forced.stderr
    assert default.stdout.strip() and forced.stdout.strip()  # both paths answer
    expected = linear_choice(torch.device("cpu"), torch.bfloat16)
    assert f"'linear': '{expected}'" in default.stderr
    assert "'linear': 'torch: forced by LIVEVLM_KERNELS=torch'" in forced.stderr


def test_the_torch_path_never_imports_triton():
    code = (
        "import sys, torch, livevlm; from livevlm import kernels as k; k.backend(); "
        "k.pool_tokens(torch.randn(2, 5, 8), 2); k.chunk_logits(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 3, 8)); "
        "k.from_bytes(k.to_bytes(torch.randn(3, 7), 4), (3, 7), torch.float32, 4, 'cpu'); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    env = {k: v for k, v in os.environ.items() if k not in (kernels.FORCE_ENV, "TRITON_INTERPRET")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
