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

from livevlm.models.preprocess import frames_to_patches
from livevlm.models.qwen_vl import QwenVLAdapter
from tools.yardstick.clips import ClipBank, open_bank
from tools.yardstick.model import build_config, build_tokenizer, write_video_processor_config
from tools.yardstick.phrasing import parse
from tools.yardstick.world import COLOURS, FPS, FRAME_SIZE, QUESTION_TYPES, SHAPES, Example, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2

BUNDLED = "livevlm/assets/yardstick"

TOKEN_PIXELS = 28  # one merged visual token covers 28 x 28 pixels of 2 frames
MIN_OBJECT_SHARE = 0.08


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


class Batcher:
    """Turns world examples into model inputs laid out exactly as a `Session` lays them out."""

    def __init__(self, adapter: QwenVLAdapter) -> None:
        self.adapter = adapter
        self.prefix = adapter.prefix_ids()
        tok = adapter.tokenizer
        self.end = tok.convert_tokens_to_ids("<|im_end|>")
        self.pad = tok.convert_tokens_to_ids("<|endoftext|>")

    def _text(self, text: str) -> list[int]:
        return list(self.adapter.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(
        self, ex: Example, extra: list[tuple[str, str]] = ()
    ) -> tuple[list[int], list[bool], torch.Tensor, tuple[int, int, int]]:
        """Token ids (Session layout, then `extra` as further chat turns) and which of them are answer targets."""
        pixels, grid = frames_to_patches(ex.frames, self.adapter.geometry)
        n_video = grid[0] * grid[1] * grid[2] // self.adapter.merge**2
        ids = self.prefix + [self.adapter.video_token_id] * n_video + self.adapter.suffix_ids(ex.question)
        target = [False] * len(ids)
        for i, (question, answer) in enumerate([("", ex.answer), *extra]):
            if i:
                turn = self._text(f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
                ids, target = ids + turn, target + [False] * len(turn)
            reply = self._text(answer) + [self.end]
            ids, target = ids + reply, target + [True] * len(reply)
        return ids, target, pixels, grid

    def __call__(
        self,
        examples: list[Example],
        targets: bool = False,
        extra: list[list[tuple[str, str]]] | None = None,
        attention: bool = False,
        all_turns: bool = False,
    ) -> dict[str, torch.Tensor]:
        enc = [self.encode(ex, turns) for ex, turns in zip(examples, extra or [[]] * len(examples))]
        length = max(len(ids) for ids, *_ in enc)
        input_ids = torch.full((len(enc), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), length), dtype=torch.long)
        labels = torch.full((len(enc), length), -100, dtype=torch.long)
        for i, (ids, target, _, _) in enumerate(enc):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.where(torch.tensor(target), torch.tensor(ids), -100)
        turns = extra if all_turns and extra else [[]] * len(examples)
        aux = self._targets(examples, input_ids, labels, attention, turns) if targets else {}
        # which tokens are video (2): without it transformers gives every token a 1-D text position, while a
        # Session places video tokens at their (t, h, w) M-RoPE positions
        types = (input_ids == self.adapter.video_token_id).to(torch.int) * 2
        return {
            **aux,
            "mm_token_type_ids": types,
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values_videos": torch.cat([p for _, _, p, _ in enc]),
            "video_grid_thw": torch.tensor([g for *_, g in enc]),
            "second_per_grid_ts": torch.full((len(enc),), self.adapter.frames_per_chunk / FPS),
        }

    def _targets(
        self,
        examples: list[Example],
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention: bool,
        turns: list[list[tuple[str, str]]],
    ) -> dict[str, torch.Tensor]:
        """Dense targets: each visual token's colour / shape and, with `attention`, one row per supervised answer
        (the first of each example, and those of `turns`): the sequence, the position that predicts the answer's
        first token and the visual positions its question is about (`attn_weight`)."""
        per_token = [token_targets(ex.labels) for ex in examples]
        if not attention:
            return {"token_targets": torch.cat(per_token)}
        answer = labels != -100
        starts = answer & ~torch.nn.functional.pad(answer[:, :-1], (1, 0))  # first token of each answer
        rows, query, about = [], [], []
        for i, (ex, tt) in enumerate(zip(examples, per_token)):
            video = (input_ids[i] == self.adapter.video_token_id).nonzero().squeeze(1)
            questions = [ex.question, *(q for q, _ in turns[i])]
            for pos, question in zip(starts[i].nonzero().squeeze(1).tolist(), questions):
                mask = torch.zeros(input_ids.shape[1], dtype=torch.bool)
                mask[video] = attention_target(question, tt, len(tt) // -(-ex.num_frames // 2))
                rows.append(i)
                query.append(pos - 1)
                about.append(mask)
        return {
            "token_targets": torch.cat(per_token),
            "attn_row": torch.tensor(rows),
            "attn_query": torch.tensor(query),
            "attn_about": torch.stack(about),
        }


def attention_target(question: str, targets: torch.Tensor, per_chunk: int) -> torch.Tensor:
    """(tokens,) bool: the visual tokens `question` is about, from `token_targets` (all False if none is)."""
    colour, shape = targets[:, 0], targets[:, 1]
    asked = parse(question)  # any wording: the slots say what it is about
    named = [asked.slots[k] for k in ("shape", "colour", "obj", "a", "b") if k in asked.slots]
    words = " ".join(named).split()
    colours = [list(COLOURS).index(w) for w in words if w in COLOURS]
    shapes = [SHAPES.index(w) for w in words if w in SHAPES]
    if asked.kind == "order":  # either object, where the first of them shows
        mask = torch.zeros_like(shape, dtype=torch.bool)
        for c, sh in zip(colours, shapes):
            mask |= (colour == c) & (shape == sh)
        return _edge_chunk(mask, per_chunk, "start")
    mask = shape < len(SHAPES)  # any object
    for c in colours:
        mask &= colour == c
    for sh in shapes:
        mask &= shape == sh
    return _edge_chunk(mask, per_chunk, asked.slots["at"]) if "at" in asked.slots else mask


def _edge_chunk(mask: torch.Tensor, per_chunk: int, edge: str) -> torch.Tensor:
    """Keep `mask` only in the first (edge "start") or last temporal chunk where it has any token."""
    rows = mask.view(-1, per_chunk)
    hit = rows.any(dim=1).nonzero().squeeze(1)
    out = torch.zeros_like(rows)
    if len(hit):
        k = int(hit[0] if edge == "start" else hit[-1])
        out[k] = rows[k]
    return out.view(-1)


def attention_loss(
    attentions: tuple[torch.Tensor, ...], row: torch.Tensor, query: torch.Tensor, about: torch.Tensor
) -> torch.Tensor:
    """-log of the attention mass head 0 of the last two layers puts, in sequence `row[k]` at position
    `query[k]`, on the tokens `about[k]` (rows with no such token are left out)."""
    has = about.any(dim=1)
    if not has.any():
        return torch.zeros((), device=about.device)
    mass = torch.stack([(layer[row, 0, query] * about).sum(-1) for layer in attentions[-2:]])
    return -torch.log(mass[:, has] + 1e-6).mean()


def token_targets(labels: np.ndarray) -> torch.Tensor:
    """(tokens, 2) colour / shape class of each merged visual token (last class: no object) from pixel labels."""
    if labels.shape[0] % 2:
        labels = np.concatenate([labels, labels[-1:]])
    t, h, w = labels.shape[0] // 2, labels.shape[1] // TOKEN_PIXELS, labels.shape[2] // TOKEN_PIXELS
    out = []
    for k, n in ((0, len(COLOURS)), (1, len(SHAPES))):
        onehot = np.eye(n + 1, dtype=np.float32)[labels[..., k].astype(np.int64) + 1]
        counts = (
            onehot.reshape(t, 2, h, TOKEN_PIXELS, w, TOKEN_PIXELS, n + 1).sum((1, 3, 5)).reshape(-1, n + 1)
        )
        share = counts[:, 1:].sum(1) / (2 * TOKEN_PIXELS**2)
        out.append(np.where(share >= MIN_OBJECT_SHARE, counts[:, 1:].argmax(1), n))
    return torch.from_numpy(np.stack(out, axis=1))


class AuxHeads(torch.nn.Module):
    """Colour and shape classifiers on the visual tokens; used while training only, never saved.

    With `words` (the LLM's input embedding and its tokenizer) a class is scored against the embeddings of its
    own words ("red" and " red"), so the tower learns to place a red token near the word red: the LLM can then
    find and read out what a question names through embeddings it already has, instead of learning a mapping."""

    def __init__(
        self, hidden: int, words: tuple[torch.nn.Embedding, Any] | None = None, cosine: float = 0.0
    ) -> None:
        super().__init__()
        if words and cosine:
            raise ValueError("choose word-space aux heads or cosine aux heads, not both")
        self.cosine = cosine
        self._words = words[:1] if words else ()  # a tuple: the embedding is the model's, not registered here
        if words:
            ids = [words[1]([n, f" {n}"], add_special_tokens=False).input_ids for n in (*COLOURS, *SHAPES)]
            if any(len(pair) != 1 for word in ids for pair in word):
                raise ValueError("word-space aux heads need every colour and shape to be one token")
            self.register_buffer("ids", torch.tensor([[a[0], b[0]] for a, b in ids]), persistent=False)
            self.none = torch.nn.Parameter(torch.zeros(2, hidden))
            self.scale = torch.nn.Parameter(torch.tensor(10.0))
            self.bias = torch.nn.Parameter(torch.zeros(len(COLOURS) + len(SHAPES) + 2))
        else:
            self.colour = torch.nn.Linear(hidden, len(COLOURS) + 1)
            self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cosine:
            unit = torch.nn.functional.normalize(features, dim=-1)
            return tuple(  # type: ignore[return-value]
                self.cosine * unit @ torch.nn.functional.normalize(head.weight, dim=-1).T + head.bias
                for head in (self.colour, self.shape)
            )
        if not self._words:
            return self.colour(features), self.shape(features)
        word = self._words[0].weight[self.ids].sum(1)  # (classes, hidden)
        n = len(COLOURS)
        colour = torch.cat([word[:n], self.none[:1]]) * self.scale
        shape = torch.cat([word[n:], self.none[1:]]) * self.scale
        return features @ colour.T + self.bias[: n + 1], features @ shape.T + self.bias[n + 1 :]

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy
        colour, shape = self.logits(features)
        return ce(colour, targets[:, 0]) + ce(shape, targets[:, 1])


def batch_vision_attention(model: Any) -> None:
    """Make the vision tower's attention one batched call where every sequence is equally long (a frame pair,
    or a window, of the same size: always so for yardstick clips) instead of transformers' per-sequence loop.
    Same maths (checked in the tests); only the training speed changes, and nothing of it is saved."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = cu_seqlens.diff()
        if int(lengths.min()) != int(lengths.max()) or position_embeddings is None:
            return type(self).forward(
                self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
            )
        n, length, total = len(lengths), int(lengths[0]), hidden_states.shape[0]
        qkv = self.qkv(hidden_states).reshape(total, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = hf.apply_rotary_pos_emb_vision(qkv[0], qkv[1], *position_embeddings)
        q, k, v = (x.reshape(n, length, self.num_heads, -1).transpose(1, 2) for x in (q, k, qkv[2]))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(total, -1))

    for block in model.model.visual.blocks:
        block.attn.forward = forward.__get__(block.attn)


def exact_match(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per example: does greedy decoding reproduce the whole answer (teacher-forced argmax == labels)?"""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    target = batch["labels"][:, 1:]
    hit = (logits.argmax(-1) == target) | (target == -100)
    return hit.all(dim=1)


def sample_batch(rng: np.random.Generator, step: int, cfg: TrainConfig) -> list[Example]:
    clips = cfg.clip_bank()
    if cfg.long_every and step % cfg.long_every == cfg.long_every - 1:
        indices = [int(rng.integers(2**40)) for _ in range(cfg.long_batch)]
        return [
            make_example("train", i, "needle", needle_frames=(64, 260), version=cfg.world, clips=clips)
            for i in indices
        ]
    out, weights, types = [], cfg.type_weights(), cfg.types()
    for _ in range(cfg.batch):
        if weights is None:  # the base run's draws, kept so that it reproduces
            qtype = types[int(rng.integers(len(types)))]
        else:
            qtype = types[int(rng.choice(len(types), p=weights))]
        index = int(rng.integers(2**40))
        if cfg.world == 2 and qtype != "describe" and rng.random() < cfg.v1_share:
            out.append(make_example("train", index, qtype, needle_frames=(16, 64), phrasing="seen"))
        else:
            out.append(
                make_example("train", index, qtype, needle_frames=(16, 64), version=cfg.world, clips=clips)
            )
    return out


class StepBatches(torch.utils.data.Dataset):
    """Step i's training inputs, drawn from a generator seeded by (seed, i) alone: the data stream is the same
    however many worker processes render it."""

    def __init__(self, batcher: Batcher, cfg: TrainConfig, stage: int = 0) -> None:
        self.batcher, self.cfg, self.stage = batcher, cfg, stage

    def __len__(self) -> int:
        return self.cfg.tower_steps if self.stage else self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, step, self.stage][: 3 if self.stage else 2])
        examples = sample_batch(rng, step, self.cfg)
        extra = [pick_turns(ex, rng, self.cfg.extra_turns) for ex in examples]
        attention = bool(self.cfg.attn_weight) and not self.stage  # the tower stage runs no LLM attention
        return self.batcher(
            examples, targets=True, extra=extra, attention=attention, all_turns=self.cfg.attn_all_turns
        )


def _names(text: str) -> set[str]:
    return {w for w in text.replace("?", " ").replace(",", " ").split() if w in COLOURS or w in SHAPES}


def pick_turns(ex: Example, rng: np.random.Generator, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` of the clip's extra questions in random order, skipping any whose colour and shape words
    were all said in earlier turns (its answer could be copied from the text instead of read off the video)."""
    said, out = _names(f"{ex.question} {ex.answer}"), []
    for j in rng.permutation(len(ex.extra)):
        question, answer = ex.extra[j]
        names = _names(f"{question} {answer}")
        if len(out) < limit and not names <= said:
            out.append((question, answer))
            said |= names
    return out


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
