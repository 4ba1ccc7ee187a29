"""Scale-out and snapshots: throughput with 1 vs 2 Ray replicas, and what a session snapshot costs.

    python benchmarks/ray_scale.py                         # both parts: tiny model over Ray, snapshots at 2B shape
    python benchmarks/ray_scale.py --part scale --streams 4 --frames 160 --replicas 1 2
    python benchmarks/ray_scale.py --part snapshot --budgets 64M 256M --disk 512M

scale: `--streams` streams, each fed `--frames` frames from its own thread (two frames = one chunk per call,
one question at the end) through `livevlm.ray.Router` with 1, then 2 replica actors of the tiny random model
(one CPU each). Reported: frames/s over all streams and the 2-vs-1 ratio, with the load average before and
after. On a machine with N free cores the ratio is bounded by N; on a shared box, by whatever else runs.

snapshot: a `retrieval` KV store at Qwen2-VL-2B's KV shape (28 layers, 2 KV heads, head_dim 128, bfloat16:
28 KiB per token; 64 tokens per 224x224 temporal patch) filled to its budget with random KV through the same
view/commit path a forward uses, then written with the snapshot format (`livevlm.snapshot`) and read back
into a fresh store. KV values do not change the cost. Each row counts chunks per tier and those whose KV was
dropped (`chunks_dropped`): a chunk is 1.75 MiB at this shape, its summary index row 140 KiB (`summary_bytes`,
charged to the host tier; its blocks shrink under a small budget and spill first past half of it), so budgets under
a few chunks keep none in host RAM (a warning says so). Not included: the ViT token cache's reference state
(4 x patches x 1280 x 32 blocks x 2 bytes = 84 MB at 256 patches for the 2B tower) and pruner state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, require, run_cli

from livevlm.cache import build_kv_store, kv_config, parse_bytes
from livevlm.records import KVLayout
from livevlm.snapshot import read_snapshot, write_snapshot

QWEN2_VL_2B_KV = (28, 2, 128)
TOKENS_PER_CHUNK = 64


def scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray

    from livevlm import SessionConfig
    from livevlm.models.tiny import build_tiny_checkpoint
    from livevlm.ray import Router, RouterConfig

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (144, 176, 3), dtype=np.uint8) for _ in range(8)]
    rows = []
    ray.init(num_cpus=max(args.replicas), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = str(build_tiny_checkpoint(Path(tmp) / "tiny", "qwen2_5_vl", seed=0))
            for n in args.replicas:
                config = RouterConfig(model=model, session=SessionConfig(max_pixels=160 * 28 * 28), replicas=n,
                                      snapshot_every_s=None)  # fmt: skip
                with Router(config) as router:
                    ids = [router.open() for _ in range(args.streams)]
                    for sid in ids:  # warm-up: every replica has run a chunk and a question
                        router.push(sid, pool[:2])
                        router.ask(sid, "Warm up.", 1)

                    def feed(sid: str) -> None:
                        for i in range(0, args.frames, 2):
                            router.push(sid, [pool[(i + k) % len(pool)] for k in range(2)])
                        router.ask(sid, "What happened?", args.new_tokens)

                    threads = [threading.Thread(target=feed, args=(sid,)) for sid in ids]
                    start = time.perf_counter()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    seconds = time.perf_counter() - start
                rows.append({"replicas": n, "streams": args.streams, "frames_per_stream": args.frames,
                             "seconds": round(seconds, 3), "frames_per_s": round(args.streams * args.frames / seconds, 2),
                             "streams_per_replica": args.streams / n})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    base = next((r for r in rows if r["replicas"] == 1), None)
    for r in rows:
        r["ratio_vs_1"] = round(r["frames_per_s"] / base["frames_per_s"], 3) if base else None
    return rows


def filled_store(budget: int, disk: int | None, spill: str) -> tuple[Any, KVLayout]:
    layers, heads, dim = QWEN2_VL_2B_KV
    layout = KVLayout(layers, heads, dim, torch.device("cpu"), torch.bfloat16)
    config = kv_config("retrieval", budget)
    config.tiers.disk_bytes, config.tiers.spill_dir = disk, spill
    store = build_kv_store(config, layout)
    gen = torch.Generator().manual_seed(0)

    def commit(tokens: int, **kw: Any) -> None:
        view = store.ingest_view()
        new = torch.randn((layers, 2, heads, tokens, dim), generator=gen).to(torch.bfloat16)
        for layer in range(layers):
            view.update(new[layer, 0][None], new[layer, 1][None], layer)
        store.commit(view, tokens, **kw)

    commit(20, is_prompt=True)
    chunk_bytes = layers * 2 * heads * TOKENS_PER_CHUNK * dim * 2
    for i in range(-(-(budget + (disk or 0)) // chunk_bytes) + 4):  # past the budget: the oldest move down
        commit(TOKENS_PER_CHUNK, pts_seconds=(i * 1.0, i * 1.0 + 0.5))
    return store, layout


def snapshot(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    disks = [None] + [parse_bytes(d) for d in args.disk]
    for budget_text in args.budgets:
        for disk in disks:
            budget = parse_bytes(budget_text)
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                store, layout = filled_store(budget, disk or 0, tmp)
                s = store.stats
                start = time.perf_counter()
                state = store.state_dict()
                info = write_snapshot(Path(tmp) / "snap", {}, {"kv": state})
                save_s = time.perf_counter() - start
                start = time.perf_counter()
                fresh = build_kv_store(store.config, layout)
                fresh.load_state(read_snapshot(info.path)["kv"])
                load_s = time.perf_counter() - start
                assert fresh.stats.chunks == s.chunks and fresh.store.bytes == store.store.bytes
                fresh.close(), store.close()
            rows.append({"kv_budget": budget, "disk_bytes": disk or 0, "chunks": s.chunks,
                         "chunks_device": s.chunks_device, "chunks_cpu": s.chunks_cpu, "chunks_disk": s.chunks_disk,
                         "chunks_dropped": s.chunks_dropped, "summary_bytes": s.summary_bytes,
                         "snapshot_bytes": info.bytes, "save_ms": round(save_s * 1e3, 1),
                         "load_ms": round(load_s * 1e3, 1), "save_mb_s": round(info.bytes / save_s / 2**20, 1)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("scale", "snapshot", "both"), default="both",
                   help="scale: frames/s with 1..N Ray replicas; snapshot: snapshot size and time per KV budget")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts tried (1 is always added)")
    p.add_argument("--streams", type=int, default=4, help="streams pushed at once (default 4)")
    p.add_argument("--frames", type=int, default=160, help="frames per stream (default 160)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens decoded per answer (default 8)")
    p.add_argument("--budgets", nargs="+", default=["64M", "256M"], help="KV budgets of the snapshot part (bytes: 64M)")
    p.add_argument("--disk", nargs="*", default=["512M"], help="disk-tier sizes tried besides none")
    p.add_argument("--dir", default=None, help="where snapshots are written (default: the temp dir)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_scale.json"), help="JSON path")
    args = p.parse_args(argv)
    # checked before Ray starts or a store fills: a typo must fail at once
    for size in [*args.budgets, *args.disk]:
        parse_bytes(size)
    if min(args.replicas) < 1 or args.streams < 1 or args.frames < 2 or args.new_tokens < 1:
        p.error("--replicas and --streams must be >= 1, --frames >= 2 (one chunk), --new-tokens >= 1")
    if args.dir is not None and not (os.path.isdir(args.dir) and os.access(args.dir, os.W_OK)):
        p.error(f"--dir {args.dir}: not a folder this run can write (snapshots go in a temp dir made inside it)")
    if args.part in ("scale", "both"):
        require("ray", hint="the scale part runs replicas on Ray: pip install 'livevlm[ray]' (or --part snapshot)")
        if 1 not in args.replicas:  # the ratio's baseline: one replica, in the same run
            args.replicas.insert(0, 1)
    torch.set_num_threads(1)
    out: dict[str, Any] = {**provenance(__file__, args, argv), "machine": cpu_info(), "argv": sys.argv[1:],
                           "load_average_before": os.getloadavg()}  # fmt: skip
    if args.part in ("scale", "both"):
        out["scale"] = scale(args)
    if args.part in ("snapshot", "both"):
        out["snapshot"] = snapshot(args)
    if "scale" in out:
        print("\n| replicas | streams | frames/s | x vs 1 |\n|---|---|---|---|")
        for r in out["scale"]:
            print(f"| {r['replicas']} | {r['streams']} | {r['frames_per_s']} | {r['ratio_vs_1']} |")
    if "snapshot" in out:
        print("\n| KV budget | disk | chunks (dev/cpu/disk/dropped) | index MB | snapshot MB | save ms | load ms |"
              "\n|---|---|---|---|---|---|---|")  # fmt: skip
        for r in out["snapshot"]:
            print(f"| {r['kv_budget'] >> 20}M | {r['disk_bytes'] >> 20}M | {r['chunks']} ({r['chunks_device']}/"
                  f"{r['chunks_cpu']}/{r['chunks_disk']}/{r['chunks_dropped']}) | {r['summary_bytes'] / 2**20:.1f} | "
                  f"{r['snapshot_bytes'] / 2**20:.1f} | {r['save_ms']} | {r['load_ms']} |")  # fmt: skip
    out["load_average_after"] = os.getloadavg()  # other work on the box skews the ratio
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
