"""`benchmarks/serve_load.py` runs end to end on the bundled model and writes the JSON the README describes.

Behaviour only: a short run against a real loopback server answers questions, ingests pushed frames and
records every reported field. Timings are never asserted (the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_serve_load_smoke(tmp_path):
    out = tmp_path / "serve_load.json"
    flags = ["--seconds", "2", "--streams", "2", "--questioners", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], check=False, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TTFT p95" in done.stdout and str(out) in done.stdout
    assert "adding N=1" in done.stdout  # the baseline every N is reported against, measured in the same run

    result = json.loads(out.read_text())
    assert result["benchmark"] == "serve_load" and result["shape"] == "bundled"
    assert result["command"] == "python benchmarks/serve_load.py " + " ".join(flags) and result["date"]
    assert result["flags"]["streams"] == [1, 2] and result["torch_threads"] == 1
    assert {"model", "simd_flags"} <= set(result["cpu"])
    assert result["goal"]["ttft_p95_ratio_4_vs_1"] is None  # no N = 4 setting in this run
    assert [s["streams"] for s in result["settings"]] == [1, 2]
    for s in result["settings"]:
        assert s["error_count"] == 0 and s["answered"] == s["questions"] >= 1
        assert len(s["ttft_ms_samples"]) == s["answered"]
        assert 0 < s["ttft_ms_p50"] <= s["ttft_ms_p95"] <= s["ttft_ms_max"]
        assert s["ttft_ms_p50"] <= s["answer_ms_p50"]
        assert s["peak_rss_mib"] > 0 and s["contention"]["machine_cores"] >= 1
        assert s["scheduler"]["question_turns"] >= s["answered"]
        assert len(s["per_stream"]) == s["streams"] == len(s["scheduler"]["turns_by_stream"])
        for p in s["per_stream"]:
            assert p["frames_sent"] >= 1 and not p["push_errors"]
            # every frame the server received is ingested, counted as dropped, or still buffered
            assert p["frames_processed"] + p["frames_dropped"] <= p["frames_in"] + 8
    first = result["settings"][0]
    assert first["ttft_p95_vs_1_stream"] == pytest.approx(1.0)
