"""The knobs of a yardstick training run, each with the measurement that chose its default (the bundled model's run)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tools.yardstick.clips import ClipBank, open_bank
from tools.yardstick.world import DESCRIBE_FRAMES, QUESTION_TYPES
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
    vocab_from: str = ""
    """Take the tokenizer saved with this checkpoint instead of training the world's own: a warm start from a model
    of another world (`--init livevlm/assets/yardstick --world 2`) keeps the vocabulary its embeddings were
    trained on. The v1 vocabulary is byte-level, so it spells every v2 wording and description, in more tokens."""
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
    background_bank: str = ""
    """World 2 only, instead of `background_clips`: their bank pre-decoded into a file (`python -m
    tools.yardstick.clips --write-bank FILE CLIPS...`), for machines without PyAV; the same examples."""

    session_layout: bool = False
    """Train (and evaluate) each sequence at the positions a `Session` gives it when it answers: the answer from
    one past the largest position before it (`batches.session_positions`). Off, answers follow the question as in
    HF's layout of a whole sequence, which matches the Session only for clips under ~30 frames: the model so
    trained said the first word of a description of a 60-frame clip and stopped (summarize's 30 s segments)."""
    stream_offset_share: float = 0.0
    """With `session_layout`: this share of clips is laid out as the newest chunks of a longer stream (temporal
    ids moved by a log-uniform count of 1 to `stream_offset_max` chunks), as a bounded KV store keeps them."""
    stream_offset_max: int = 8_000
    """The most chunks before the clip (8 000 chunks of 2 frames: over two hours at 2 fps)."""
    timed_describe_share: float = 0.0
    """World 2 only: this share of describe clips is asked with summarize's per-segment prompt ("Describe what
    happens in the video from 1:02:00 to 1:02:16.", random times) instead of a world wording."""
    timeline_describe_share: float = 0.0
    """World 2 only: this share of describe clips is instead a window of 20 to `describe_frames_max` frames of a long
    scene (`timeline_describe.draw_window`): objects on screen from before the window and past it, events every 8-16 s,
    as in summarize's segments of long videos (the bundled model, trained on standalone scenes alone, scored event
    recall ~0.45 there: "X appears, X leaves" of an object that only appeared)."""
    describe_frames_max: int = DESCRIBE_FRAMES[1]
    """World 2 only: describe clips are 12 to this many frames (the world's own 32 = 16 s; summarize's default 30 s
    segment is 60 frames, longer than any describe clip the model saw at 32)."""
    phrase_noise: float = 0.0
    """This share of training questions is read with one word edited (`phrasing.perturb`: a filler word dropped,
    replaced, swapped or inserted; the words naming the kind and slots kept), so that the model keys on content
    words: the bundled model answered "Which of the A and the B is seen first?" with A's colour alone."""
    phrase_noise_skip: str = ""
    """Question types (comma list) whose questions `phrase_noise` leaves as they are (e.g. "describe")."""
    composed_wordings: float = 0.0
    """This share of training questions (and of their further chat turns) is read in a composed wording of its kind
    (`compose.reword`: hundreds per kind from shared openers, verbs and tails; held-out constructions left out), so
    that the kind is read from what is asked about rather than from a phrase: the bundled model stopped "Which of the
    A and the B is seen first?" after A's colour ("is seen" is a count wording). The targets follow the true question."""
    describe_attention: bool = False
    """With `attn_weight`: also supervise the attention at the first token of every later clause of a describe answer,
    onto the chunk where its object or event is (`describe_attention`); off, only the answer's first token is."""
    variety: float = 0.0
    """World 2 only: this share of v2 clips is redrawn by `render_v2.vary` toward what other generators draw: a light
    background or footage undimmed, small objects, 16:9 / 4:3 frames with round shapes. An independent generator
    found the model failing there (backgrounds over ~130 of 255, undimmed busy footage, objects under 6 % of the
    side); the world's own backgrounds are all darker than 125."""

    def __post_init__(self) -> None:
        if self.world not in (1, 2):
            raise ValueError(f"world must be 1 or 2, got {self.world}")
        if not 0.0 <= self.v1_share <= 1.0:
            raise ValueError(f"v1_share must be in [0, 1], got {self.v1_share}")
        if not 0.0 <= self.background_share <= 1.0:
            raise ValueError(f"background_share must be in [0, 1], got {self.background_share}")
        if (self.background_clips or self.background_bank) and self.world != 2:
            raise ValueError(
                "background_clips / background_bank need --world 2 (v1 clips are drawn as the bundled model saw them)"
            )
        if self.background_clips and self.background_bank:
            raise ValueError(
                "give background_clips or background_bank (the same clips, pre-decoded), not both"
            )
        if self.vocab_from and not (Path(self.vocab_from) / "tokenizer.json").is_file():
            raise ValueError(
                f"vocab_from {self.vocab_from!r} holds no tokenizer.json (a saved yardstick model)"
            )
        if self.world == 2 and Path(self.out).resolve() == Path(BUNDLED).resolve():
            raise ValueError(f"a world-2 run must not write over the bundled model ({BUNDLED}): give --out DIR")
        if self.variety and self.world != 2:
            raise ValueError("variety needs --world 2 (v1 clips are drawn as the bundled model saw them)")
        for name in ("stream_offset_share", "timed_describe_share", "timeline_describe_share", "phrase_noise",
                     "variety", "composed_wordings"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.describe_attention and not self.attn_weight:
            raise ValueError("describe_attention needs attn_weight > 0 (it adds rows to the attention loss)")
        if self.stream_offset_max < 1:
            raise ValueError(f"stream_offset_max must be >= 1, got {self.stream_offset_max}")
        if self.stream_offset_share and not self.session_layout:
            raise ValueError(
                "stream_offset_share needs session_layout (the offset is where a Session puts a clip)"
            )
        if self.timed_describe_share and self.world != 2:
            raise ValueError("timed_describe_share needs --world 2 (the describe type)")
        if self.timeline_describe_share and self.world != 2:
            raise ValueError("timeline_describe_share needs --world 2 (the describe type)")
        if self.describe_frames_max != DESCRIBE_FRAMES[1] and self.world != 2:
            raise ValueError("describe_frames_max needs --world 2 (the describe type)")
        if self.describe_frames_max < DESCRIBE_FRAMES[0]:
            raise ValueError(
                f"describe_frames_max must be >= {DESCRIBE_FRAMES[0]} (the shortest describe clip), "
                f"got {self.describe_frames_max}"
            )
        self.type_weights()  # refuse a bad mix at construction, not at the first batch
        unknown = set(filter(None, self.phrase_noise_skip.split(","))) - set(self.types())
        if unknown:
            raise ValueError(f"phrase_noise_skip names {sorted(unknown)}, not question types ({', '.join(self.types())})")
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
        """The background clips' bank (loaded once per process), or None without `background_clips` / `_bank`."""
        return open_bank(self.background_clips, self.background_share, self.background_bank)

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


def require_out(argv: list[str] | None) -> list[str]:
    """The command line (`sys.argv[1:]` for None) if it names --out; else exit: the default `out` is the bundled
    model's folder, which a trial run (`--steps 2`) or the v1 recipe would replace with its own model."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        raise SystemExit(f"train: give --out DIR ({BUNDLED} holds the bundled model; --out {BUNDLED} replaces it)")
    return argv
