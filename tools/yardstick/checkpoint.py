"""Resumable yardstick training: a time budget checked between steps, and the checkpoint a stopped run continues from.

A run split across GPU leases (#20) trains until `Budget` says the next step might not finish with time left to
save, then `Run.check` writes a `TrainState` (phase, next step, fp32 weights, aux heads, the phase's AdamW state,
torch RNG, the log so far) and raises `BudgetReached`. `--resume` loads it, refuses another recipe or footage
(`ResumeMismatchError` names the fields), and the loop continues at that step: data and learning rates are functions
of the step, so the resumed run computes what the uninterrupted one would have.

File: one .npz written to a temp name and renamed (never half-written); each float32 tensor as its byte planes
(deflate packs the exponent plane to 20-40 %; mantissa bytes are noise). Adam moments may keep fewer planes
(`moment_bytes` 3: 15 stored mantissa bits, rounded, relative error <= 2**-16) to fit a GPU lease's carry budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from livevlm.errors import ConfigError
from tools.yardstick.files import TrainFileError, meta_array, read_meta, read_npz, write_npz

FORMAT = "yardstick-train-state/1"
PHASES = ("tower", "main", "polish")
STOPPED_EXIT = 75
"""Exit status of `python -m tools.yardstick.train` stopped by its budget with a checkpoint (EX_TEMPFAIL: run again)."""
RESERVE_S = 30.0
"""Seconds a budget keeps free after the last step: the checkpoint's write (~5 s) and slack."""
RESUME_FREE = ("out", "workers", "threads", "device", "background_clips", "background_bank")
"""Config fields a resumed run may change: where it writes, how it renders, where its footage comes from (the
footage itself must be the same: compared by digest)."""
MOMENTS = ("exp_avg", "exp_avg_sq")
RECENT = 20
"""A budget predicts a step's time as the longest of the last this-many of its kind (startup outliers age out)."""


class ResumeMismatchError(TrainFileError, ConfigError):
    """A checkpoint made by another recipe, world or footage than the run resuming it; names each difference."""


class BudgetReached(Exception):
    """Raised out of the training loops once the checkpoint is written; carries the log so far."""

    def __init__(self, log: dict[str, Any]) -> None:
        super().__init__(
            f"stopped by the time budget at {log['stopped']['phase']} step {log['stopped']['step']}"
        )
        self.log = log


def pack(t: torch.Tensor, keep: int = 4) -> np.ndarray:
    """A float32 tensor as its `keep` most significant byte planes, (keep, n) uint8, rounded to nearest if keep < 4."""
    u = t.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1).view("<u4")
    if keep < 4:  # sign-magnitude: adding half a kept ulp rounds the magnitude to nearest
        u = u + np.uint32(1 << (8 * (4 - keep) - 1))
    return u.view(np.uint8).reshape(-1, 4)[:, 4 - keep :].T.copy()


def unpack(planes: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack` (dropped low bytes read as zero)."""
    full = np.zeros((planes.shape[1], 4), np.uint8)
    full[:, 4 - planes.shape[0] :] = planes.T
    return torch.from_numpy(full.view("<f4").reshape(shape))


@dataclass
class TrainState:
    """Everything a run stopped before `step` of `phase` needs to continue as if it had not stopped."""

    phase: str
    step: int
    config: dict[str, Any]
    """`asdict` of the whole run's `TrainConfig`."""
    model: dict[str, torch.Tensor] = field(repr=False)
    aux: dict[str, torch.Tensor] = field(repr=False)
    optimizer: dict[int, dict[str, torch.Tensor]] = field(repr=False)
    """The phase's AdamW `state_dict()["state"]` (its param groups are rebuilt from the config)."""
    log: dict[str, Any] = field(repr=False)
    """The current stage's log so far."""
    losses: list[float] = field(repr=False)
    """The phase's last losses (the log's running means)."""
    elapsed_s: float
    """Training seconds of the current stage before the stop (the log's minutes continue from it)."""
    base: dict[str, Any] | None = field(default=None, repr=False)
    """In the polish phase: the finished base run's log."""
    rng: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    data: str = ""
    """Digest of the background footage (`ClipBank.digest`), empty without."""


def save_state(path: str | Path, state: TrainState, moment_bytes: int = 4) -> int:
    """Write `state` to `path` atomically, Adam moments with `moment_bytes` byte planes (4: exact); returns bytes."""
    if moment_bytes not in (2, 3, 4):
        raise ConfigError(f"moment_bytes must be 2, 3 or 4, got {moment_bytes}")
    tensors = {f"model/{k}": v for k, v in state.model.items()}
    tensors |= {f"aux/{k}": v for k, v in state.aux.items()}
    tensors |= {f"opt/{i}/{k}": v for i, s in state.optimizer.items() for k, v in s.items()}
    tensors |= {f"rng/{k}": v for k, v in state.rng.items()}
    arrays, index = {}, {}
    for name, t in tensors.items():
        keep = moment_bytes if name.rsplit("/", 1)[-1] in MOMENTS else 4
        arrays[name] = pack(t, keep) if t.dtype == torch.float32 else t.detach().cpu().numpy()
        index[name] = {"shape": list(t.shape), "float32": t.dtype == torch.float32}
    meta = {"format": FORMAT, "phase": state.phase, "step": state.step, "config": state.config, "log": state.log,
            "losses": state.losses, "elapsed_s": state.elapsed_s, "base": state.base, "data": state.data,
            "moment_bytes": moment_bytes, "tensors": index}  # fmt: skip
    return write_npz(path, {"meta": meta_array(meta), **arrays})


def load_state(path: str | Path) -> TrainState:
    """The `TrainState` written by `save_state` at `path` (typed errors for a missing or damaged file)."""
    arrays = read_npz(path, "checkpoint")
    meta = read_meta(arrays, path, "checkpoint", FORMAT)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "aux": {}, "opt": {}, "rng": {}}
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for name, info in meta["tensors"].items():
            a = arrays[name]
            group, key = name.split("/", 1)
            groups[group][key] = unpack(a, tuple(info["shape"])) if info["float32"] else torch.from_numpy(a)
        for key, t in groups["opt"].items():
            i, name = key.split("/", 1)
            optimizer.setdefault(int(i), {})[name] = t
        plain = {
            k: meta[k] for k in ("phase", "step", "config", "log", "losses", "elapsed_s", "base", "data")
        }
        state = TrainState(
            **plain, model=groups["model"], aux=groups["aux"], optimizer=optimizer, rng=groups["rng"]
        )
    except (KeyError, ValueError) as e:
        raise TrainFileError(f"checkpoint {path} lacks or garbles {type(e).__name__}: {e}") from e
    if state.phase not in PHASES:
        raise TrainFileError(f"checkpoint {path} names phase {state.phase!r}, not one of {PHASES}")
    return state


def check_resumable(state: TrainState, config: Mapping[str, Any], data: str, path: str | Path) -> None:
    """Refuse to resume `state` under another recipe (`config`, `asdict` of the run's config) or other footage."""
    keys = (set(state.config) | set(config)) - set(RESUME_FREE)
    diffs = [f"{k}: {state.config.get(k, '(absent)')!r} there, {config.get(k, '(absent)')!r} here"
             for k in sorted(keys) if state.config.get(k) != config.get(k)]  # fmt: skip
    if state.data != data:
        diffs.append(f"background footage (bank digest): {state.data or 'none'} there, {data or 'none'} here")
    if diffs:
        raise ResumeMismatchError(
            f"checkpoint {path} was made by another run; it differs in {'; '.join(diffs)} "
            f"(a resumed run may change only {', '.join(RESUME_FREE)})"
        )


class LiveStage(Protocol):
    """What `Run.check` saves of a training stage (train.Stage)."""

    model: torch.nn.Module
    aux: torch.nn.Module
    log: dict[str, Any]
    base: dict[str, Any] | None

    def elapsed(self) -> float: ...


class Budget:
    """Wall-clock seconds for one process's training; asked once before each step whether that step still fits."""

    def __init__(
        self, seconds: float | None, reserve_s: float = RESERVE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds, self.reserve_s, self.clock = seconds, reserve_s, clock
        self.start = self.last = clock()
        self.recent: dict[str, deque[float]] = {"step": deque(maxlen=RECENT), "eval": deque(maxlen=RECENT)}
        self.pending: str | None = None

    def holds(self, kind: str = "step") -> bool:
        """Whether a unit of `kind` ("step", or "eval": a step that also evaluates) started now ends with the reserve
        to spare, predicted by the longest recent unit of that kind or a plain step (an eval, before any step)."""
        now = self.clock()
        if self.pending is not None:
            self.recent[self.pending].append(now - self.last)
        self.last, self.pending = now, kind
        if self.seconds is None:
            return True
        need = max([*self.recent[kind], *self.recent["step"]] or [*self.recent["eval"], 0.0])
        return now - self.start + need + self.reserve_s <= self.seconds


@dataclass
class Control:
    """How this process runs the recipe: its time budget, the checkpoint it resumes, where a stop writes one."""

    budget_s: float | None = None
    """Stop cleanly before this many seconds (counted from `train()`), writing a resumable checkpoint."""
    resume: str = ""
    """Continue from this checkpoint (written by a run stopped by its budget)."""
    checkpoint: str = ""
    """Where a stop writes its checkpoint (default: OUT/resume.npz)."""
    moment_bytes: int = 4
    """Byte planes kept of each Adam moment in the checkpoint: 4 exact, 3 (~16 mantissa bits) or 2 (bf16-like)."""
    reserve_s: float = RESERVE_S
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.moment_bytes not in (2, 3, 4):
            raise ConfigError(f"moment_bytes must be 2, 3 or 4, got {self.moment_bytes}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ConfigError(f"time budget must be > 0 seconds, got {self.budget_s}")


class Run:
    """One process's part of a training run: the budget, the state it resumed from, and the checkpoint a stop writes."""

    def __init__(self, control: Control, config: dict[str, Any], out: str, data: str) -> None:
        self.control, self.config, self.data = control, config, data
        self.path = Path(control.checkpoint or Path(out, "resume.npz"))
        self.budget = Budget(control.budget_s, control.reserve_s, control.clock)
        self.state: TrainState | None = None
        if control.resume:
            self.state = load_state(control.resume)
            check_resumable(self.state, config, data, control.resume)

    def take(self, phases: tuple[str, ...]) -> TrainState | None:
        """The resumed state if it stopped in one of `phases` (handed out once), else None."""
        state, self.state = (
            (self.state, None) if self.state and self.state.phase in phases else (None, self.state)
        )
        return state

    def check(self, phase: str, step: int, stage: LiveStage, opt: torch.optim.Optimizer, losses: list[float],
              evaluates: bool = False) -> None:  # fmt: skip
        """Before `step` of `phase`: if the budget cannot hold it, write the checkpoint and raise `BudgetReached`."""
        if self.budget.holds("eval" if evaluates else "step"):
            return
        state = TrainState(phase, step, self.config, stage.model.state_dict(), stage.aux.state_dict(),
                           opt.state_dict()["state"], stage.log, losses[-50:], stage.elapsed(), stage.base,
                           rng_state(), self.data)  # fmt: skip
        size = save_state(self.path, state, self.control.moment_bytes)
        stopped = {
            "phase": phase,
            "step": step,
            "checkpoint": str(self.path),
            "megabytes": round(size / 1e6, 2),
        }
        raise BudgetReached({**stage.log, **({"base": stage.base} if stage.base else {}), "stopped": stopped})

    def finish(self) -> None:
        """A finished run leaves no checkpoint behind (resuming it would train nothing)."""
        self.path.unlink(missing_ok=True)


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's generator states (CPU, and CUDA once initialised); no step draws from them, restored all the same."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def restore_rng(rng: Mapping[str, torch.Tensor]) -> None:
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def load_optimizer(opt: torch.optim.Optimizer, state: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
    """Load a saved `state_dict()["state"]` into `opt`, keeping its own param groups (rebuilt from the config)."""
    count = sum(len(g["params"]) for g in opt.param_groups)
    if state and max(state) >= count:
        raise TrainFileError(
            f"checkpoint optimizer state covers {max(state) + 1} parameters, this model has {count}"
        )
    opt.load_state_dict(
        {"state": {i: dict(s) for i, s in state.items()}, "param_groups": opt.state_dict()["param_groups"]}
    )
