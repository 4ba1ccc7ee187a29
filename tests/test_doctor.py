"""`livevlm doctor`: the fields a bug report needs, as text and as JSON, run the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from livevlm import kernels
from livevlm.cli.doctor import NOT_INSTALLED, package_version


def _doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livevlm.cli", "doctor", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False,
    )  # fmt: skip


def test_doctor_json_reports_devices_versions_dtypes_isa_and_every_kernel_backend():
    res = _doctor("--json", LIVEVLM_KERNELS="torch")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["devices"]["cpu"]["cores"] == os.cpu_count()
    assert data["versions"]["torch"] == torch.__version__
    assert set(data["versions"]) == {"torch", "transformers", "triton", "flash-attn"}
    assert data["versions"]["triton"] == package_version("triton") != NOT_INSTALLED  # the dev extra has it
    assert data["versions"]["flash-attn"] == package_version("flash-attn")
    assert data["dtypes"]["cpu"]["bfloat16"]["runs"] is True and "native" in data["dtypes"]["cpu"]["float16"]
    flags = kernels.cpu_flags()
    assert data["cpu_isa"] == sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "avx_vnni",
                                                                          "avx_ne_convert", "fma", "f16c")))  # fmt: skip
    assert data["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    table = data["kernels"]["cpu"]
    assert set(table) == {"similarity", *kernels.TRITON_OPS, "linear", "packed_linear", "attention",
                          "attention_grouped_llm", "vision_attention", "sdpa_backends"}  # fmt: skip
    assert table.pop("attention") == "sdpa: forced by LIVEVLM_KERNELS=torch"
    assert table.pop("attention_grouped_llm").startswith("sdpa: forced by LIVEVLM_KERNELS=torch")
    assert table.pop("vision_attention").startswith("torch: forced by LIVEVLM_KERNELS=torch")
    assert table.pop("sdpa_backends").startswith("default: forced by LIVEVLM_KERNELS=torch")
    assert all(reason == "torch: forced by LIVEVLM_KERNELS=torch" for reason in table.values())
    assert data["env"]["LIVEVLM_KERNELS"] == "torch"
    assert ("cuda:0" in data["devices"]) == torch.cuda.is_available()


def test_doctor_text_shows_the_automatic_choice_and_survives_a_bad_setting(monkeypatch):
    res = _doctor(LIVEVLM_KERNELS="")
    assert res.returncode == 0, res.stderr
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    for op, choice in kernels.backend(torch.bfloat16, "cpu").items():
        assert f"    {op}: {choice}" in res.stdout
    for field in ("versions:", "flash-attn:", "triton:", "bfloat16:", "cpu_isa:", "torch_cpu_capability:"):
        assert field in res.stdout
    bad = _doctor("--json", LIVEVLM_KERNELS="fastest")
    assert bad.returncode == 1 and "LIVEVLM_KERNELS" in json.loads(bad.stdout)["kernels"]["cpu"]["error"]
    assert "got 'fastest'" in bad.stderr and "Traceback" not in bad.stderr


def test_doctor_with_triton_forced_where_it_cannot_run_still_shows_the_kernel_table():
    """Triton forced on CPU without the interpreter: every op is listed, the Triton ones marked, exit status 1."""
    text = _doctor(LIVEVLM_KERNELS="triton", TRITON_INTERPRET="")
    assert text.returncode == 1, text.stderr
    why = "LIVEVLM_KERNELS=triton on cpu tensors needs TRITON_INTERPRET=1"
    for op in kernels.TRITON_OPS:
        assert f"    {op}: UNAVAILABLE: {why}" in text.stdout  # was: one error line instead of the table
    for op in ("similarity", "linear", "packed_linear", "attention", "attention_grouped_llm"):
        assert f"    {op}: " in text.stdout and f"    {op}: UNAVAILABLE" not in text.stdout
    assert text.stderr.count(why) == 1
    table = json.loads(_doctor("--json", LIVEVLM_KERNELS="triton", TRITON_INTERPRET="").stdout)["kernels"]["cpu"]
    assert "error" not in table and table["linear"].startswith(("torch", "onednn"))
    interpreted = _doctor("--json", LIVEVLM_KERNELS="triton", TRITON_INTERPRET="1")
    assert interpreted.returncode == 0, interpreted.stderr
    assert json.loads(interpreted.stdout)["kernels"]["cpu"]["pool"] == "triton: forced by LIVEVLM_KERNELS=triton (interpreter)"
