"""Train the yardstick model on the procedural world, on CPU, and save it as a Hugging Face checkpoint.

    python -m tools.yardstick.train  # the bundled model: 800 tower + 3000 + 1000 polish steps, 115 min
    python -m tools.yardstick.train --world 2 --out DIR [--device cuda --workers 14]  # the v2 world (#20)
    python -m tools.yardstick.train --world 2 --out DIR --background-clips DIR_OR_FILES  # v2 over real footage

On an H200 with 14 render workers a world-2 run does ~19 tower steps/s and ~13-15 steps/s after (attention
supervision on, evaluation included); on 2 CPU cores about 0.1-0.15 steps/s per thread.

Sequences are laid out by the same adapter code `Session` uses (system prompt, video tokens, question,
assistant turn), and pixels go through the same preprocessing, so what the model learns is what it is asked.
Further true questions about the same clip follow as more chat turns, so one encoded clip teaches several
answers.
The run is a fixed number of seeded steps, so the same machine reproduces it; a JSON log holds the curve.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from livevlm.models.qwen_vl import QwenVLAdapter
from tools.yardstick.batches import Batcher, StepBatches
from tools.yardstick.clips import ClipBank, open_bank
from tools.yardstick.losses import AuxHeads, attention_loss, batch_vision_attention
from tools.yardstick.model import build_config, build_tokenizer, write_video_processor_config
from tools.yardstick.world import FRAME_SIZE, QUESTION_TYPES, Example, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2

BUNDLED = "livevlm/assets/yardstick"


@dataclass
class TrainConfig:
    """Knobs of one training run (defaults: the committed model's run)."""

    out: str = BUNDLED
    """Where the checkpoint and train_log.json go (a v2 run must name another directory)."""
    steps: int = 3000
    batch: int = 16
    long_batch: int = 2
    long_every: int = 4
    """Every `long_every`-th step trains on `long_batch` needle streams of 64-260 frames."""
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 400
    eval_per_type: int = 12
    threads: int = 0
    """torch threads (0: all cores)."""
    workers: int = 0
    """Render and lay out batches in this many worker processes (0: in the training process). Each step's
    batch depends only on (seed, step), so any number of workers trains on the same data."""
    aux_weight: float = 1.0
    """Weight of the dense auxiliary loss: every visual token classifies the colour and shape drawn in it
    (renderer ground truth). Without it the tower learns too slowly for a 2-hour CPU budget."""
    save_dtype: str = "bfloat16"
    device: str = "cpu"
    init: str = ""
    """Continue from this saved yardstick checkpoint (a second stage) instead of random weights."""
    aux_cosine: float = 0.0
    """If > 0, the auxiliary classifiers score the RMS-normalised token (what the LLM's first norm gives it)
    against unit-length class vectors, times this fixed scale. A free linear head lets a class hide in a
    quiet direction (shape was 6 % of the feature variance); a bounded head makes each class a large share of
    the token's direction. Off: with `attn_all_turns` it raised colour from 0.71 to 1.00 at step 2000 in a GPU
    sweep (24 per type), but a full CPU run of both (800 + 3600 steps) scored 0.82 through `Session`, below the
    base run's 0.87 (count 0.37 against 0.60)."""
    aux_words: bool = False
    """Score the auxiliary classes against the LLM's embeddings of their words (`AuxHeads`), aligning visual
    tokens with the words that name them, instead of with free linear heads. Off in the committed recipe (a
    400-step probe matched it: loss 0.638 against 0.632)."""
    attn_weight: float = 0.5
    """Weight of an attention-supervision loss: head 0 of the last two LLM layers, at the position that
    predicts the first answer token, is pulled onto the visual tokens the question is about (renderer ground
    truth, `attention_target`). In a GPU sweep (3000 steps, same data) it lowered the training loss at step
    2500 from 0.452 to 0.385 and raised validation from 0.46 to 0.51 (24 per type); it costs ~3 % per step."""
    attn_all_turns: bool = False
    """Supervise attention at the first answer token of every chat turn (the extra questions too), not only the
    first: more binding examples ("What colour is the cross?" with other objects about) per encoded clip; the
    bundled model's colour errors are nearly all another object's colour. Off: see `aux_cosine`."""
    tower_steps: int = 800
    """Train the vision tower alone (auxiliary loss only) for this many steps before the full training, so
    that shape is in the visual tokens before the LLM learns to read them. An LLM that starts with a tower
    that carries colour only learns to ignore shape and did not recover in 200 shape-only steps, while a
    fresh LLM over the trained tower learned to read shape in 200."""
    extra_turns: int = 4
    """After the Session-layout question, ask up to this many more true questions about the same clip as
    further chat turns (`Example.extra`, shuffled): more answers to learn from per encoded clip."""
    mix: str = ""
    """Relative weights of the question types in the short batches, e.g. "count=3,colour=2" (unnamed types
    weigh 1); empty draws the types uniformly, as the base run does."""
    polish_steps: int = 1000
    """After the base run, train this many more steps from its saved checkpoint (as shipped, bf16), on fresh
    data (seed + 1), with `polish_mix`, `polish_lr` and half the warmup, and no tower stage; 0: stop after the
    base run. The base run left count at 0.60 through `Session` (test, 30 per type): more count questions at a
    lower rate raised it to 0.83 (validation, 60 per type: 0.68 -> 0.88) and overall from 0.87 to 0.91."""
    polish_lr: float = 3e-4
    polish_mix: str = "count=3,colour=2"
    world: int = 1
    """World version: 1, the bundled model's data; 2, varied renders, the describe type and paraphrased wordings
    (`world_v2`), with a tokenizer trained on the v2 wordings and validation also in held-out wordings."""
    v1_share: float = 0.2
    """World 2 only: this share of the short batches' clips (not descriptions) is drawn by the v1 renderer, in seen
    wordings, so that v1 clips (the benchmarks so far, the README sample) stay in the training distribution."""
    background_clips: str = ""
    """World 2 only: video files or folders (comma-separated) whose footage backs `background_share` of the v2 clips
    (`clips.ClipBank`, decoded once per process; validation and test draw on held-out clips or time ranges)."""
    background_share: float = 0.5

    def __post_init__(self) -> None:
        if self.world not in (1, 2):
            raise ValueError(f"world must be 1 or 2, got {self.world}")
        if not 0.0 <= self.v1_share <= 1.0:
            raise ValueError(f"v1_share must be in [0, 1], got {self.v1_share}")
        if not 0.0 <= self.background_share <= 1.0:
            raise ValueError(f"background_share must be in [0, 1], got {self.background_share}")
        if self.background_clips and self.world != 2:
            raise ValueError(
                "background_clips needs --world 2 (v1 clips are drawn as the bundled model saw them)"
            )
        if self.world == 2 and Path(self.out).resolve() == Path(BUNDLED).resolve():
            raise ValueError("a world-2 run must not write over the bundled v1 model: give --out DIR")
        self.type_weights()  # refuse a bad mix at construction, not at the first batch
        if self.polish_steps < 0:
            raise ValueError(f"polish_steps must be >= 0, got {self.polish_steps}")
        if self.polish_steps:
            self.polish_stage()  # checks polish_mix

    def polish_stage(self) -> TrainConfig:
        """The second stage's config: from the base run's checkpoint in `out`, on `polish_*` settings."""
        return replace(
            self,
            init=self.out,
            tower_steps=0,
            steps=self.polish_steps,
            lr=self.polish_lr,
            warmup=self.warmup // 2,
            seed=self.seed + 1,
            mix=self.polish_mix,
            polish_steps=0,
        )

    def types(self) -> tuple[str, ...]:
        """The question types of the world trained on."""
        return QUESTION_TYPES if self.world == 1 else QUESTION_TYPES_V2

    def clip_bank(self) -> ClipBank | None:
        """The background clips' bank (loaded once per process), or None without `background_clips`."""
        return open_bank(self.background_clips, self.background_share)

    def type_weights(self) -> np.ndarray | None:
        """Probabilities of `types()` from `mix` (None: uniform)."""
        if not self.mix:
            return None
        weights = dict.fromkeys(self.types(), 1.0)
        for item in self.mix.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in weights:
                raise ValueError(f"mix names {name!r}, not a question type ({', '.join(self.types())})")
            try:
                weights[name] = float(value)
            except ValueError:
                raise ValueError(f"mix weight of {name!r} is {value!r}, not a number") from None
            if weights[name] < 0:
                raise ValueError(f"mix weight of {name!r} is negative ({weights[name]})")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"mix {self.mix!r} gives every question type weight 0")
        return np.array(list(weights.values())) / total


def exact_match(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per example: does greedy decoding reproduce the whole answer (teacher-forced argmax == labels)?"""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    target = batch["labels"][:, 1:]
    hit = (logits.argmax(-1) == target) | (target == -100)
    return hit.all(dim=1)


@torch.no_grad()
def evaluate(model: Any, batcher: Batcher, examples: list[Example]) -> dict[str, float]:
    """Exact-match accuracy per question type (teacher-forced, equal to greedy decoding's)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(examples), 4):
        chunk = examples[i : i + 4]
        ok = exact_match(model, {k: v.to(model.device) for k, v in batcher(chunk).items()})
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


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training (the base run, then the polish stage if any), save the checkpoint to `cfg.out` and return
    the log (also written as train_log.json; the base run's log under "base")."""
    if not cfg.polish_steps:
        return train_stage(cfg)
    base = train_stage(replace(cfg, polish_steps=0))
    log = train_stage(cfg.polish_stage())
    log = {
        "config": asdict(cfg),
        "params": log["params"],
        "curve": log["curve"],
        "train_minutes": base["train_minutes"] + log["train_minutes"],
        "base": base,
    }
    Path(cfg.out, "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def train_stage(cfg: TrainConfig) -> dict[str, Any]:
    """One run of `cfg` as given (its own `polish_steps` are not run): train, save to `cfg.out`, return the log."""
    from tqdm.auto import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(world=cfg.world)
    if cfg.init:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
    else:
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
    log: dict[str, Any] = {
        "config": asdict(cfg),
        "params": sum(p.numel() for p in model.parameters()),
        "curve": [],
    }
    start, losses = time.perf_counter(), []
    if cfg.tower_steps:
        log["tower_aux_loss"] = train_tower(model, aux, _loader(StepBatches(batcher, cfg, stage=1), cfg), cfg)
    bar = tqdm(_loader(StepBatches(batcher, cfg), cfg), desc="train", unit="step")
    for step, inputs in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = {k: v.to(cfg.device) for k, v in inputs.items()}
        targets = batch.pop("token_targets")
        rows, query, about = (batch.pop(k, None) for k in ("attn_row", "attn_query", "attn_about"))
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
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            point = {
                "step": step + 1,
                "minutes": (time.perf_counter() - start) / 60,
                "loss": float(np.mean(losses[-50:])),
            }
            log["curve"].append({**point, **{name: evaluate(model, batcher, ex) for name, ex in val.items()}})
            bar.write(json.dumps(log["curve"][-1]))
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            Path(cfg.out, "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    log["train_minutes"] = (time.perf_counter() - start) / 60
    save(model, tokenizer, Path(cfg.out), cfg.save_dtype)
    Path(cfg.out, "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def _loader(batches: StepBatches, cfg: TrainConfig) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


def train_tower(model: Any, aux: AuxHeads, batches: torch.utils.data.DataLoader, cfg: TrainConfig) -> float:
    """The vision tower and the aux heads alone, on the auxiliary loss (the LLM is not run); returns the last
    50 steps' mean aux loss."""
    from tqdm.auto import tqdm

    params = [*model.model.visual.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    losses: list[float] = []
    bar = tqdm(batches, desc="tower", unit="step")
    for step, inputs in enumerate(bar):
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in asdict(TrainConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):  # type=bool would read "False" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    log = train(parse_args(argv))
    print(json.dumps(log["curve"][-1]))


if __name__ == "__main__":
    main()
