"""Each Triton kernel against its torch reference at a real model's shape: time (median of --reps after a warm-up)
and the largest difference, in one run. On CUDA the numbers are the issue-21 kernel table; on CPU the kernels
run in Triton's interpreter (TRITON_INTERPRET=1, set here) at a tiny size, which checks the script, not speed.

    python benchmarks/kernel_speed.py --device cuda                   # Qwen2.5-VL-7B shape, writes results/kernels-*.json
    python benchmarks/kernel_speed.py --device cpu     # interpreter smoke run: 8 chunks, 2 reps (no JSON unless --out)

Ops: chunk relevance (question queries x 1 mean + `--key-reps` representative keys per chunk, late layers, max
fused) over `--chunks` chunks; pooling one chunk's KV 4x (bilevel); loading a 4-/8-bit host chunk to the device
(the torch path dequantises on the host and copies floats; the Triton path copies codes and dequantises there);
sparse-row attention of the ViT cache (`--vit-changed` of a temporal patch's `--vit-tokens` rows over the keys of
their window / frame, the shape's vision tower) vs its torch reference and vs the masked SDPA CUDA runs instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import torch
from _parser import BenchParser

SHAPES = {  # config.json of the Qwen LLMs (text side): layers, attention heads, kv heads, head dim
    "qwen2-vl-2b": (28, 12, 2, 128),
    "qwen2.5-vl-3b": (36, 16, 2, 128),
    "qwen2.5-vl-7b": (28, 28, 4, 128),
}

VIT_SHAPES = {  # vision_config of each checkpoint: heads, head dim, attention window in tokens (None: the frame)
    "qwen2-vl-2b": (16, 80, None),
    "qwen2.5-vl-3b": (16, 80, 64),  # window_size 112 px / patch 14 = 8x8 patches
    "qwen2.5-vl-7b": (16, 80, 64),
}

SPARSE_VARIANTS = ((32, 64, 4, None), (16, 32, 2, None), (16, 128, 8, None), (16, 64, 4, True))
"""(rows per program, keys per step, warps, float32 dots: None = only where needed) of the sparse-row kernel
timed beside the default (16, 64, 4, None)."""

VARIANTS = (("ieee", 64, 4), ("tf32x3", 128, 8), ("tf32", 64, 4))
"""(input precision, chunks per program, warps) of the relevance kernel timed beside the default (tf32x3, 64, 4)."""


def _time(fn: Callable[[], Any], device: str, reps: int) -> float:
    """Median milliseconds of `fn` over `reps` calls after one warm-up, synchronised on CUDA."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def _row(name: str, shape: str, ours: Callable, ref: Callable, device: str, reps: int) -> dict[str, Any]:
    diff = (ours().float().cpu() - ref().float().cpu()).abs().max().item()
    t_triton, t_torch = _time(ours, device, reps), _time(ref, device, reps)
    return {"op": name, "shape": shape, "triton_ms": round(t_triton, 4), "torch_ms": round(t_torch, 4),
            "speedup": round(t_torch / t_triton, 2), "max_abs_diff": diff}  # fmt: skip


def _load_row(kv: torch.Tensor, bits: int, dev: str, reps: int) -> dict[str, Any]:
    """A host chunk of `bits`-bit rows to the device: codes copied then dequantised there, vs the torch path."""
    from livevlm.kernels import _triton_quant
    from livevlm.kernels.quant import dequantize_torch, to_bytes

    buf = to_bytes(kv, bits).pin_memory() if dev == "cuda" else to_bytes(kv, bits)
    shape, dtype = tuple(kv.shape), kv.dtype
    return _row(
        f"load_int{bits}",
        f"{shape} {len(buf) / 2**20:.1f} MiB",
        lambda: _triton_quant.dequantize_triton(buf.to(dev, non_blocking=True), shape, dtype, bits),
        lambda: dequantize_torch(buf, shape, dtype, bits).to(dev),
        dev,
        reps,
    )


def _sparse_rows(args: argparse.Namespace, dev: str, dtype: torch.dtype) -> list[dict[str, Any]]:
    """The ViT cache's partial-recompute attention at the shape's vision tower: windowed blocks (Qwen2.5-VL) and
    full-attention blocks (the frame), a sorted `--vit-changed` fraction of the rows as queries."""
    from livevlm.kernels import _triton_sparse_attention as T
    from livevlm.kernels.sparse_attention import sparse_row_attention_masked, sparse_row_attention_torch

    heads, dim, window = VIT_SHAPES[args.shape]
    n_tok, g = args.vit_tokens, torch.Generator(device=dev).manual_seed(1)
    changed = max(1, round(args.vit_changed * n_tok))
    rows = torch.randperm(n_tok, device=dev, generator=g)[:changed].sort().values  # select_tokens' order
    q = torch.randn(len(rows), heads, dim, device=dev, generator=g, dtype=dtype).transpose(0, 1)
    keys, values = (torch.randn(heads, n_tok, dim, device=dev, generator=g, dtype=dtype) for _ in range(2))
    out = []
    for kind, size in ([("windows", window)] if window else []) + [("frame", n_tok)]:
        cu = torch.tensor([*range(0, n_tok, size), n_tok], dtype=torch.int32, device=dev)
        shape = f"{heads}x{len(rows)}/{n_tok} rows, d {dim}, {kind} of {size}"
        ref = lambda cu=cu: sparse_row_attention_torch(q, keys, values, rows, cu, dim**-0.5)
        dense = lambda cu=cu: sparse_row_attention_masked(q, keys, values, rows, cu, dim**-0.5)  # cuda's choice
        ours = lambda cu=cu: T.sparse_row_attention_triton(q, keys, values, rows, cu, dim**-0.5)
        out.append(_row(f"sparse_rows:{kind}", shape, ours, ref, dev, args.reps))
        out.append(_row(f"sparse_rows:{kind} vs mask", shape, ours, dense, dev, args.reps))
        for bm, bn, warps, up in SPARSE_VARIANTS:
            out.append(_row(f"sparse_rows:{kind}[{bm},{bn},{warps}{',f32' if up else ''}]", shape,
                            lambda cu=cu, bm=bm, bn=bn, w=warps, up=up: T.sparse_row_attention_triton(
                                q, keys, values, rows, cu, dim**-0.5, block_m=bm, block_n=bn, num_warps=w,
                                upcast=up), ref, dev, args.reps))  # fmt: skip
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from livevlm.kernels import _triton_pool, _triton_relevance
    from livevlm.kernels.pool import pool_tokens_torch
    from livevlm.kernels.relevance import chunk_logits_torch

    dev, dtype = args.device, getattr(torch, args.dtype)
    layers, heads, kv_heads, dim = SHAPES[args.shape]
    late = layers - layers // 2  # score_layers="late"
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(late, kv_heads, heads // kv_heads, dim, device=dev, generator=g)
    keys = torch.randn(
        late, 1 + args.key_reps, kv_heads, args.chunks, dim, device=dev, generator=g, dtype=dtype
    )
    mean, reps = keys[:, 0], keys[:, 1:]  # strided views, as the summary log hands them over
    rows = [_row("chunk_relevance", f"{late}x{kv_heads}x{heads // kv_heads} q, {args.chunks} chunks x "
                 f"{1 + args.key_reps} keys", lambda: _triton_relevance.chunk_logits_triton(q, mean, reps),
                 lambda: chunk_logits_torch(q, mean, reps), dev, args.reps)]  # fmt: skip
    for precision, block, warps in VARIANTS:  # tuning candidates for the relevance kernel, same inputs
        rows.append(_row(f"chunk_relevance[{precision},{block},{warps}]", rows[0]["shape"],
                         lambda p=precision, b=block, w=warps: _triton_relevance.chunk_logits_triton(
                             q, mean, reps, precision=p, block_n=b, num_warps=w),
                         lambda: chunk_logits_torch(q, mean, reps), dev, args.reps))  # fmt: skip
    kv = torch.randn(layers, 2, kv_heads, args.tokens, dim, device=dev, generator=g, dtype=dtype)
    rows.append(_row("pool_tokens", f"{tuple(kv.shape)} /4", lambda: _triton_pool.pool_tokens_triton(kv, 4),
                     lambda: pool_tokens_torch(kv, 4), dev, args.reps))  # fmt: skip
    for bits in (8, 4):
        rows.append(_load_row(kv, bits, dev, args.reps))
    return rows + _sparse_rows(args, dev, dtype)


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"]
    )
    parser.add_argument("--shape", default="qwen2.5-vl-7b", choices=list(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--chunks", type=int, default=None, help="chunks scored (default 10k on cuda, 8 in the CPU interpreter)"
    )
    parser.add_argument(
        "--key-reps", type=int, default=8, help="representative keys per chunk (BilevelConfig)"
    )
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per chunk (default 144, 2 frames at 336x336; 16 in the CPU interpreter)")
    parser.add_argument("--vit-tokens", type=int, default=None,
                        help="ViT tokens per temporal patch (default 576, 336x336's 24x24 patches; 150 on cpu)")
    parser.add_argument("--vit-changed", type=float, default=0.1, help="fraction of ViT rows recomputed")
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 50 on cuda, 2 on cpu)")
    parser.add_argument(
        "--out", default=None, help="JSON path (default on cuda: results/kernels-SHAPE-cuda.json)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the kernels in Triton's interpreter (a smoke run)")
    cuda = args.device == "cuda"
    args.chunks = args.chunks if args.chunks is not None else 10_000 if cuda else 8  # the interpreter is slow
    args.reps = args.reps if args.reps is not None else 50 if cuda else 2
    args.tokens = args.tokens if args.tokens is not None else 144 if cuda else 16  # given ones are kept as given
    args.vit_tokens = args.vit_tokens if args.vit_tokens is not None else 576 if cuda else 150
    if min(args.chunks, args.key_reps, args.tokens, args.vit_tokens, args.reps) < 1 or not 0 < args.vit_changed <= 1:
        parser.error("--chunks, --key-reps, --tokens, --vit-tokens and --reps must be >= 1, --vit-changed in (0, 1]")
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported: they are decorated then
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import cpu_info, provenance, require  # after TRITON_INTERPRET: it imports livevlm.kernels

    require("triton", hint="the kernels are Triton's: pip install 'livevlm[gpu]' (or pip install triton)")
    rows = run(args)
    print(f"{'op':34} {'shape':44} {'triton ms':>10} {'torch ms':>10} {'speedup':>8} {'max diff':>9}")
    for r in rows:
        print(f"{r['op']:34} {r['shape']:44} {r['triton_ms']:10.3f} {r['torch_ms']:10.3f} {r['speedup']:8.2f} "
              f"{r['max_abs_diff']:9.2g}")  # fmt: skip
    out = args.out or (
        f"{Path(__file__).parent}/results/kernels-{args.shape}-cuda.json" if args.device == "cuda" else None
    )
    if out:
        machine = {"platform": platform.platform(), "torch": torch.__version__, "cpu": cpu_info(),
                   "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}  # fmt: skip
        result = {**provenance(__file__, args, argv), "args": vars(args), "machine": machine, "rows": rows}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
