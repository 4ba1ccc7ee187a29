"""A 10,000-frame bounded stream's snapshot against its budgets: bytes on disk, save and load seconds.

    python benchmarks/snapshot_size.py                               # 10k frames, 56x56, tiny Qwen2-VL
    python benchmarks/snapshot_size.py --frames 2000 --size 112 --device 40K --cpu 150K --disk 200K

A `Session` on the tiny random Qwen2-VL (built here with `build_tiny_checkpoint`, seed 0) with a `retrieval` KV
store bounded by device/cpu/disk tier budgets and the `uniform` pruner is pushed `--frames` random RGB frames of
`--size` pixels a side (a pool of 16 frames cycled, at the next 1/fps instants), so the stream is many times its
budget and old chunks are dropped. Then `Session.save` writes the whole state and `Session.load` reads it back.
Reported: what the tiers hold vs their budgets, the snapshot's bytes (the tensor payload, the manifest, all
files), whether the payload stays within the budgets (+ the latest frame kept for viewers + 16 KiB of
safetensors header, the bound `tests/test_snapshot.py` asserts at 480 frames), and the save/load seconds.
The retrieval store's index (one summary row per chunk, dropped chunks too, for retrieval) counts against the
tier budgets (spilled blocks take at most half of the disk budget; the oldest are forgotten beyond it, and
their chunks' records leave the snapshot): `summary_bytes` and `growth_bytes_per_chunk` (index + manifest over
all chunks ever seen; flat growth would show as a falling figure with more frames) are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, run_cli

from livevlm import Session, SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig, parse_bytes
from livevlm.models import load_model
from livevlm.models.tiny import build_tiny_checkpoint
from livevlm.prune import parse_prune_spec

HEADER_SLACK = 16_384


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model = args.model or str(build_tiny_checkpoint(tmp / "tiny", "qwen2_vl", seed=0))
    adapter = load_model(model)
    budgets = {k: parse_bytes(getattr(args, k)) for k in ("device", "cpu", "disk")}
    (tmp / "spill").mkdir()
    tiers = KVTiers(device_bytes=budgets["device"], cpu_bytes=budgets["cpu"], disk_bytes=budgets["disk"],
                    spill_dir=str(tmp / "spill"))  # fmt: skip
    config = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=tiers), prune=args.prune)
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(16)]
    session = Session(adapter, config)
    start = time.perf_counter()
    for i in range(args.frames):
        session.push(pool[i % len(pool)])
        if args.frames >= 10 and (i + 1) % (args.frames // 10) == 0:
            print(f"  {i + 1} frames, {time.perf_counter() - start:.0f} s", flush=True)
    ingest_s = time.perf_counter() - start
    kv = session.stats.kv
    held = kv.device_bytes + kv.cpu_bytes + kv.disk_bytes
    info = session.save(tmp / "snap")
    files = {p.name: p.stat().st_size for p in info.path.iterdir()}
    payload = files.get("tensors.safetensors", 0) + files.get("blobs.bin", 0)
    start = time.perf_counter()
    restored = Session.load(info.path, adapter, spill_dir=str(tmp / "spill"))
    load_s = time.perf_counter() - start
    same = restored.stats.kv.chunks == kv.chunks
    frame = session.latest_frame.data.nbytes if session.latest_frame is not None else 0
    restored.close(), session.close()
    budget = sum(budgets.values())
    return {
        "frames": args.frames, "frame_size": [args.size, args.size], "chunks_ingested": session.stats.chunks,
        "chunks_recorded": kv.chunks, "chunks_dropped": kv.chunks_dropped,
        "chunks_held": kv.chunks - kv.chunks_dropped, "summary_bytes": kv.summary_bytes,
        "chunk_kv_bytes": held - kv.summary_bytes,
        "budget_bytes": budgets, "budget_total": budget,
        "held_bytes": {"device": kv.device_bytes, "cpu": kv.cpu_bytes, "disk": kv.disk_bytes}, "held_total": held,
        "snapshot_bytes": info.bytes, "payload_bytes": payload, "manifest_bytes": files.get("manifest.json", 0),
        "files": files, "latest_frame_bytes": frame,
        "within_budget": payload <= budget + frame + HEADER_SLACK,
        "within_budget_without_summaries": payload - kv.summary_bytes <= budget + frame + HEADER_SLACK,
        "growth_bytes_per_chunk": round((kv.summary_bytes + files.get("manifest.json", 0)) / max(kv.chunks, 1), 1),
        "held_within_budget": held <= budget,
        "restored_chunks_equal": same, "ingest_s": round(ingest_s, 1),
        "save_s": round(info.seconds, 3), "load_s": round(load_s, 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument(
        "--size", type=int, default=56, help="frame side in pixels (56: the smallest, 2x2 patches)"
    )
    p.add_argument("--device", default="40K", help="device-tier KV budget")
    p.add_argument("--cpu", default="150K", help="cpu-tier KV budget")
    p.add_argument("--disk", default="200K", help="disk-tier KV budget")
    p.add_argument("--prune", default="uniform")
    p.add_argument("--model", default=None, help="a checkpoint (default: the tiny random Qwen2-VL)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "snapshot_size.json"))
    args = p.parse_args(argv)
    for tier in ("device", "cpu", "disk"):  # checked before the model is built
        parse_bytes(getattr(args, tier))
    parse_prune_spec(args.prune)
    if args.frames < 2 or args.size < 28:
        p.error("--frames must be at least 2 (one chunk), --size at least 28 (one merged patch)")
    if args.model is not None and not Path(args.model).exists():
        p.error(f"--model {args.model}: no such checkpoint folder")
    torch.set_num_threads(1)
    out: dict[str, Any] = {**provenance(__file__, args, argv), "machine": cpu_info(), "argv": sys.argv[1:],
                           "load_average_before": os.getloadavg()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        row = out["run"] = run(args, Path(tmp))
    out["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    b, h = row["budget_bytes"], row["held_bytes"]
    print("\n| frames | size | chunks held/recorded | tier | budget | held |\n|---|---|---|---|---|---|")
    for tier in ("device", "cpu", "disk"):
        print(
            f"| {row['frames']} | {args.size}x{args.size} | {row['chunks_held']}/{row['chunks_recorded']} "
            f"| {tier} | {b[tier]} | {h[tier]} |"
        )
    print(
        "\n| budget total | held | snapshot payload | manifest | all files | within budget | save s | load s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {row['budget_total']} | {row['held_total']} | {row['payload_bytes']} | {row['manifest_bytes']} "
        f"| {row['snapshot_bytes']} | {row['within_budget']} | {row['save_s']} | {row['load_s']} |"
    )
    print(
        f"of which the retrieval summary index (within the budgets): {row['summary_bytes']}; "
        f"chunk KV held: {row['chunk_kv_bytes']}; within budget without summaries: "
        f"{row['within_budget_without_summaries']}; growth {row['growth_bytes_per_chunk']} B/chunk "
        f"(index + manifest over every chunk seen)"
    )
    print(f"ingest: {row['ingest_s']} s for {row['frames']} frames")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
