"""`benchmarks/vit_cache_versus.py` runs an earlier revision's ViT-cache benchmark beside this checkout's.

Behaviour only: against the committed HEAD (the same cache code on both sides) the two versions must agree on
every feature cosine and recomputed fraction, the revision must really run from its own extracted tree, and
the temporary tree must be gone afterwards; a revision that is not a commit is refused by name. Timings are
never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vit_cache_versus.py"
TINY = ["--shape", "tiny", "--frames", "4", "--clips", "static", "--presets", "lossless", "balanced"]


def run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp_path))  # where the extracted revision goes (and must leave)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_versus_head_agrees_on_fidelity_and_cleans_up(tmp_path):
    out = tmp_path / "versus.json"
    done = run(tmp_path, "--rev", "HEAD", "--repeats", "1", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "this/rev" in done.stdout and str(out) in done.stdout
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("livevlm-")]
    assert left == []  # the extracted revision (and each run's clip directory) is removed

    result = json.loads(out.read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=SCRIPT.parent, check=False, capture_output=True, text=True
    )
    assert result["revision"] == head.stdout.strip() and result["repeats"] == 1
    assert {"model", "simd_flags"} <= set(result["cpu"])
    assert set(result["pooled"]["revision"]) == {"qwen2_vl", "qwen2_5_vl"}
    for fam, clips in result["pooled"]["revision"].items():
        for preset, rev in clips["static"].items():
            this = result["pooled"]["this"][fam]["static"][preset]
            assert (
                rev["cosine_mean"] == this["cosine_mean"]
                and rev["recompute_fraction"] == this["recompute_fraction"]
            )
            assert rev["speedup"] > 0 and this["speedup"] > 0
            assert result["compare"][fam]["static"][preset] == this["speedup"] / rev["speedup"]
    assert result["pooled"]["this"]["qwen2_vl"]["static"]["lossless"]["recompute_fraction"] == 1.0
    assert result["pooled"]["this"]["qwen2_vl"]["static"]["balanced"]["recompute_fraction"] < 1.0
    # the revision ran from its own tree, this checkout with one pass after the warm-up (the same protocol)
    assert "livevlm-versus-" in result["runs"]["revision"][0]["livevlm_imported_from"]
    assert Path(result["runs"]["this"][0]["livevlm_imported_from"]).is_relative_to(SCRIPT.parents[1])
    assert result["runs"]["this"][0]["rounds"] == 0


def test_versus_refuses_an_unknown_revision(tmp_path):
    done = run(tmp_path, "--rev", "no-such-revision", *TINY, "--out", str(tmp_path / "x.json"))
    assert done.returncode != 0
    assert "no-such-revision" in done.stderr and "is not a commit" in done.stderr
    assert not (tmp_path / "x.json").exists()
