"""`benchmarks/gpu.py` runs end to end (on CPU, tiny shape) and writes every field the README's GPU table reads.

Behaviour only: the script is what a lent GPU session runs once, so it must not rot between sessions. Timings
are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
FIELDS = {"ingest_fps", "vit_ms_per_frame", "prefill_ms_per_chunk", "ttft_ms", "ttft_second_ms", "decode_tokens_per_s",
          "tokens_kept", "kv_tokens", "kernels", "cuda_peak_mib"}  # fmt: skip


def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    flags = ["--device", "cpu", "--shapes", "tiny", "--frames", "8", "--long", "12", "--long-shapes", "tiny",
             "--new-tokens", "3", "--reps", "1", "--profile", "tiny", "--out", str(out)]  # fmt: skip
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], check=False, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TMPDIR": str(tmp)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]  # torch.compile's own cache
    assert not left, f"the benchmark left {left} in the temp dir"
    result = json.loads(out.read_text())
    (shape,) = result["shapes"]
    assert shape["shape"] == "tiny"
    assert set(shape["settings"]) == {"uncompressed", "uncompressed_torch_kernels", "compressed", "compressed_static"}
    assert shape["not_measured"] == [f"{s}_graphs: needs CUDA (run on cpu)" for s in ("uncompressed", "compressed")]
    assert shape["failed"] == []
    for name, m in shape["settings"].items():
        assert FIELDS <= set(m) and m["frames"] == 8 and m["chunks"] == 4, name
        assert m["answer_tokens"] >= 1 and m["kernels"]["attention_llm"] == "sdpa_grouped"  # 4 query heads, 2 KV
        fixed = name == "compressed_static"
        paths = {"static": 1, "dynamic": 1} if fixed else {"dynamic": 2}  # (the second question: a one-token answer)
        assert m["decode_paths"] == paths and m["encode_paths"] == {}, name
        assert m["prefill_paths"] == ({"static": 4} if fixed else {}), name
        by_clip = m["vit_by_clip"]  # 8 frames: all from the first clip
        assert list(by_clip) == ["bikes"] and by_clip["bikes"]["chunks"] == 4 and by_clip["bikes"]["vit_ms_per_frame"] > 0
        assert sum(by_clip["bikes"]["events"].values()) == 4 and (name != "uncompressed" or by_clip["bikes"]["events"] == {"dense": 4})
        assert by_clip["bikes"]["vs_uncompressed"] is not None
    assert shape["settings"]["compressed"]["tokens_kept"] < shape["settings"]["compressed"]["visual_tokens"]
    assert [(p["policy"], p["frames"]) for p in shape["long"]] == [("bilevel", 12), ("full", 12)]
    assert {"model", "simd_flags"} <= set(result["cpu"])
    assert result["benchmark"] == "gpu" and result["command"].split()[:2] == ["python", "benchmarks/gpu.py"]
    assert result["flags"]["shapes"] == ["tiny"] and result["date"]
    # every figure beside its ratio to the uncompressed setting of the same run; long points to `full`'s TTFT
    assert shape["settings"]["uncompressed"]["vs_uncompressed"]["ttft_ms"] == 1.0
    compressed = shape["settings"]["compressed"]["vs_uncompressed"]
    assert compressed["ingest_fps"] == shape["settings"]["compressed"]["ingest_fps"] / shape["settings"][
        "uncompressed"]["ingest_fps"]  # fmt: skip
    assert [p["ttft_vs_full"] is not None for p in shape["long"]] == [True, True]
    assert "x)" in done.stdout  # the table prints the ratios
    assert "ViT ms/frame by clip" in done.stdout and "full:start 1" in done.stdout
    assert shape["settings"]["uncompressed_torch_kernels"]["kernels"]["vision_attention"].startswith("torch: forced")
    assert not shape["settings"]["uncompressed"]["kernels"]["vision_attention"].startswith("torch: forced")
    for setting, prof in shape["profile"].items():  # --profile: 8 chunks and an answer per setting
        ingest, answer = prof["ingest_per_chunk"], prof["answer_per_token"]
        assert ingest["units"] == 8 and ingest["wall_ms_per_unit"] > 0 and answer["units"] >= 1, setting
        assert ingest["top_host"] and {"op", "calls", "host_self_ms"} <= set(ingest["top_host"][0])
    assert set(shape["profile"]) == set(shape["settings"]) and "profile tiny compressed" in done.stdout


def test_shapes_past_the_budget_are_in_the_json_as_in_the_table(tmp_path):
    out = tmp_path / "gpu.json"
    flags = ["--device", "cpu", "--shapes", "tiny", "tiny", "--frames", "8", "--long", "12", "--long-shapes", "tiny",
             "--budget-s", "0.001", "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], check=False, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shapes = json.loads(out.read_text())["shapes"]  # before: no file at all (it said "wrote" all the same)
    assert [s["not_measured"] for s in shapes] == [["past --budget-s"]] * 2
    assert done.stdout.count("past --budget-s") >= 2


def test_a_point_that_raises_is_recorded_and_the_run_goes_on(tmp_path):
    """A lent GPU's minutes are few: a setting (or long point) that raises is recorded with its error, the others
    still run, the JSON and table are written, and the exit status says something failed. Here every session is
    refused at construction (an answer budget past the tiny model's context)."""
    out = tmp_path / "gpu.json"
    flags = ["--device", "cpu", "--shapes", "tiny", "--frames", "4", "--long", "6", "--long-shapes", "tiny",
             "--new-tokens", "10000000", "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], check=False, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    (shape,) = json.loads(out.read_text())["shapes"]
    points = ["uncompressed_torch_kernels", "uncompressed", "compressed", "compressed_static", "bilevel at 6 frames",
              "full at 6 frames"]
    assert [line.split(":")[0] for line in shape["failed"]] == points
    assert all("ConfigError: max_new_tokens 10000000 does not fit" in line for line in shape["failed"])
    assert shape["settings"] == {} and shape["long"] == []
    assert done.stdout.count("FAILED") == 6 and "failed: compressed: ConfigError" in done.stdout
    assert "6 point(s) failed" in done.stderr

def test_gpu_benchmark_without_cuda_names_the_cpu_smoke_run():
    """Without a GPU the default run (2B/3B/7B shapes) is refused in one line, not built in RAM for minutes."""
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--device cpu --shapes tiny" in done.stderr and "Traceback" not in done.stderr
