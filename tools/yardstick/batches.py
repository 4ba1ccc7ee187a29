"""Training batches: world examples drawn from (seed, step) alone and laid out exactly as a `Session` lays them out."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from livevlm.models.preprocess import frames_to_patches
from livevlm.models.qwen_vl import QwenVLAdapter
from livevlm.summary.formats import clock
from livevlm.summary.run import DESCRIBE_PROMPT
from tools.yardstick import compose
from tools.yardstick.describe_attention import clause_rows, token_objects
from tools.yardstick.losses import attention_target, token_targets
from tools.yardstick.phrasing import filler_words, perturb
from tools.yardstick.timeline_describe import draw_window
from tools.yardstick.world import COLOURS, FPS, SHAPES, Example, make_example
from tools.yardstick.world_v2 import DESCRIBE_QUESTION

if TYPE_CHECKING:
    from tools.yardstick.recipe import TrainConfig


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
        self, ex: Example, extra: list[tuple[str, str]] = (), wording: str | None = None
    ) -> tuple[list[int], list[bool], torch.Tensor, tuple[int, int, int]]:
        """Token ids (Session layout, then `extra` as further chat turns) and which of them are answer targets;
        `wording`: the question as the model reads it (None: `ex.question`)."""
        pixels, grid = frames_to_patches(ex.frames, self.adapter.geometry)
        n_video = grid[0] * grid[1] * grid[2] // self.adapter.merge**2
        question = ex.question if wording is None else wording
        ids = self.prefix + [self.adapter.video_token_id] * n_video + self.adapter.suffix_ids(question)
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
        wordings: list[str] | None = None,
        describe_clauses: bool = False,
    ) -> dict[str, torch.Tensor]:
        """`wordings`: each example's question as the model reads it (a perturbed one); the targets still
        follow `ex.question`. `describe_clauses` (with `attention`): a row for every clause of a describe answer."""
        wordings = wordings or [None] * len(examples)  # type: ignore[list-item]
        enc = [self.encode(ex, turns, w) for ex, turns, w in zip(examples, extra or [[]] * len(examples), wordings)]
        length = max(len(ids) for ids, *_ in enc)
        input_ids = torch.full((len(enc), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), length), dtype=torch.long)
        labels = torch.full((len(enc), length), -100, dtype=torch.long)
        for i, (ids, target, _, _) in enumerate(enc):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.where(torch.tensor(target), torch.tensor(ids), -100)
        turns = extra if all_turns and extra else [[]] * len(examples)
        aux = self._targets(examples, input_ids, labels, attention, turns, describe_clauses) if targets else {}
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
        describe_clauses: bool = False,
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
            questions = [_about(ex.question), *(q for q, _ in turns[i])]
            firsts = starts[i].nonzero().squeeze(1).tolist()
            for pos, question in zip(firsts, questions):
                mask = torch.zeros(input_ids.shape[1], dtype=torch.bool)
                mask[video] = attention_target(question, tt, len(tt) // -(-ex.num_frames // 2))
                rows.append(i)
                query.append(pos - 1)
                about.append(mask)
            if describe_clauses and ex.qtype == "describe" and ex.labels is not None:
                for k, place in clause_rows(ex.answer, self._text(ex.answer), token_objects(ex.labels), self._text):
                    mask = torch.zeros(input_ids.shape[1], dtype=torch.bool)
                    mask[video] = place
                    rows.append(i)
                    query.append(firsts[0] + k - 1)
                    about.append(mask)
        return {
            "token_targets": torch.cat(per_token),
            "attn_row": torch.tensor(rows),
            "attn_query": torch.tensor(query),
            "attn_about": torch.stack(about),
        }


def sample_batch(rng: np.random.Generator, step: int, cfg: TrainConfig) -> list[Example]:
    clips = cfg.clip_bank()
    if cfg.long_every and step % cfg.long_every == cfg.long_every - 1:
        indices = [int(rng.integers(2**40)) for _ in range(cfg.long_batch)]
        return [
            make_example("train", i, "needle", needle_frames=(64, 260), version=cfg.world, clips=clips,
                         variety=cfg.variety)
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
        elif qtype == "describe" and cfg.timeline_describe_share and rng.random() < cfg.timeline_describe_share:
            out.append(draw_window(rng, cfg.describe_frames_max, clips, cfg.variety))  # drawn only when on
        else:
            out.append(make_example("train", index, qtype, needle_frames=(16, 64), version=cfg.world, clips=clips,
                                    describe_frames=cfg.describe_frames_max, variety=cfg.variety))  # fmt: skip
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
        if self.cfg.timed_describe_share:  # drawn only when on, so that older runs' data stay the same
            examples = [timed(ex, rng) if ex.qtype == "describe" and rng.random() < self.cfg.timed_describe_share
                        else ex for ex in examples]  # fmt: skip
        extra = [pick_turns(ex, rng, self.cfg.extra_turns) for ex in examples]
        wordings = None
        if self.cfg.composed_wordings:  # drawn only when on, so that older runs' data stay the same
            share = self.cfg.composed_wordings
            wordings = [compose.reword(ex.question, rng) if rng.random() < share else ex.question for ex in examples]
            if not self.cfg.attn_all_turns:  # attention targets read only the first question's words
                extra = [[(compose.reword(q, rng) if rng.random() < share else q, a) for q, a in turns]
                         for turns in extra]  # fmt: skip
        if self.cfg.phrase_noise:  # drawn only when on, so that older runs' data stay the same
            fillers, skip = filler_words(), set(self.cfg.phrase_noise_skip.split(","))
            read = wordings or [ex.question for ex in examples]
            wordings = [perturb(w, rng, fillers) if rng.random() < self.cfg.phrase_noise
                        and ex.qtype not in skip else w for ex, w in zip(examples, read)]  # fmt: skip
        attention = bool(self.cfg.attn_weight) and not self.stage  # the tower stage runs no LLM attention
        batch = self.batcher(
            examples, targets=True, extra=extra, attention=attention, all_turns=self.cfg.attn_all_turns,
            wordings=wordings, describe_clauses=self.cfg.describe_attention,
        )
        if self.cfg.stream_offset_share and not self.stage:
            batch["stream_offset"] = torch.tensor([stream_offset(rng, self.cfg) for _ in examples])
        return batch


def timed(ex: Example, rng: np.random.Generator) -> Example:
    """`ex` asked with summarize's per-segment prompt, the clip placed at a random time in the first three hours."""
    start = int(rng.integers(0, 3 * 3600))
    return replace(ex, question=DESCRIBE_PROMPT.format(start=clock(start), end=clock(start + ex.num_frames / FPS)))


def _about(question: str) -> str:
    """The world question whose attention target `question` has (a timed describe prompt: the describe one)."""
    return DESCRIBE_QUESTION if question.startswith(DESCRIBE_PROMPT.split("{")[0]) else question


def stream_offset(rng: np.random.Generator, cfg: TrainConfig) -> int:
    """0, or (with `cfg.stream_offset_share`) a log-uniform count of chunks in [1, `cfg.stream_offset_max`]."""
    if rng.random() >= cfg.stream_offset_share:
        return 0
    return round(math.exp(rng.uniform(0.0, math.log(cfg.stream_offset_max))))


def session_positions(
    positions: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, video_token: int, shift: torch.Tensor
) -> torch.Tensor:
    """HF's training positions (3, B, L) moved to where a `Session` puts each token when it answers:

    - the video's temporal ids `shift[b]` further (the clip as the newest chunks of a longer stream: chunk k of
      a stream sits at t = offset + k x interval, so a bounded store keeps the newest chunks at large t, while
      their h / w ids and the question stay where they are);
    - the answer (and any later turn) from one past the largest id before it: a Session, like HF's `generate`,
      decodes at max(position) + 1, while HF's layout for a whole sequence (transformers 5.17-5.24: text after a
      video resumes at the video's start + the grid's side) puts the answer right after the question. The two
      differ once the video's temporal ids pass the question's (more than ~30 frames at 2 fps)."""
    out = positions.clone()
    video = input_ids == video_token
    out[0] += video * shift.to(out.device)[:, None]
    answer = labels != -100
    for row in range(out.shape[1]):
        first = int(answer[row].nonzero()[0]) if answer[row].any() else None
        if first is None:
            continue
        jump = int(out[:, row, :first].max()) + 1 - int(out[0, row, first])
        if jump > 0:
            out[:, row, first:] += jump
    return out


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
