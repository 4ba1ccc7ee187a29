"""ViT cache, this checkout against an earlier revision, on the same machine in one run.

    python benchmarks/vit_cache_versus.py --shape qwen2-vl-2b --threads 2     # against 06645ef, 3 repeats each

A speedup measured on one day's machine is not comparable with one measured on another day's: the dense encode
and a partial pass lean on different parts of the CPU (a few-row partial pass is mostly reading the block's
weights, the dense encode mostly multiplying), so their ratio moves with the machine. "No slower than revision
R" is a claim about the code, and is measured here with both codes on this machine: revision R's own
`benchmarks/vit_cache.py` (its tree extracted with `git archive` into a temporary directory, removed on exit)
and this checkout's, alternated `--repeats` times (who goes first alternates too), each as one pass after a
warm-up (this checkout's script with `--rounds 0`, the protocol revision R's script had). Per version, clip and
preset the speedup pools the repeats (summed dense seconds / summed cached seconds); the per-repeat speedups,
cosines and recomputed fractions are kept beside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from _machine import BenchParser, provenance, run_context, write_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REV = "06645ef65c09ca78727e27548922ed63d3f622c5"
"""The revision whose run (2026-11-26, 2 threads) set issue #19's "no worse than today's" ratios."""


class VersusError(RuntimeError):
    """The earlier revision could not be extracted or its benchmark failed."""


def resolve(rev: str) -> str:
    """Full commit id of `rev` in this checkout (VersusError when it is not a git checkout holding `rev`)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise VersusError(
            f"revision {rev!r} is not a commit of the git checkout at {ROOT}: {done.stderr.strip()}"
        )
    return done.stdout.strip()


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` written under `into` (no git metadata, nothing registered in the repository)."""
    into.mkdir(parents=True)
    archive = into.with_suffix(".tar")
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise VersusError(f"git archive {commit} failed: {done.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    if not (into / "benchmarks" / "vit_cache.py").is_file():
        raise VersusError(f"revision {commit} has no benchmarks/vit_cache.py")
    return into


def run_version(tree: Path, flags: list[str], out: Path, label: str) -> dict[str, Any]:
    """One run of `tree`'s vit_cache benchmark with its own `livevlm` first on the path; returns its JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import livevlm; print(livevlm.__file__)"],
        env=env,
        cwd=tree,
        check=False,
        capture_output=True,
        text=True,
    )
    if probe.returncode or not Path(probe.stdout.strip()).resolve().is_relative_to(tree.resolve()):
        raise VersusError(
            f"{label}: livevlm does not import from {tree} ({probe.stdout.strip() or probe.stderr})"
        )
    cmd = [sys.executable, str(tree / "benchmarks" / "vit_cache.py"), *flags, "--out", str(out)]
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, env=env, cwd=tree, check=False, capture_output=True, text=True)
    if done.returncode:
        raise VersusError(f"{label} benchmark failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return dict(json.loads(out.read_text()), livevlm_imported_from=probe.stdout.strip())


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family / clip / preset over the repeats: pooled speedup, per-repeat speedups, cosine, fraction."""
    out: dict[str, Any] = {}
    for tower in runs[0]["towers"]:
        fam = tower["family"]
        towers = [next(t for t in r["towers"] if t["family"] == fam) for r in runs]
        out[fam] = {}
        for clip, first in tower["clips"].items():
            dense = sum(t["clips"][clip]["full_seconds"] for t in towers)
            rows = {}
            for preset, row in first["presets"].items():
                cached = [t["clips"][clip]["presets"][preset]["seconds"] for t in towers]
                rows[preset] = {
                    "speedup": dense / sum(cached),
                    "speedup_repeats": [t["clips"][clip]["presets"][preset]["speedup"] for t in towers],
                    "cosine_mean": row["cosine_mean"],
                    "recompute_fraction": row["recompute_fraction"],
                    "dense_seconds": dense / len(towers),
                    "cached_seconds": sum(cached) / len(towers),
                }
            out[fam][clip] = rows
    return out


def compare(rev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """This checkout's pooled speedup over the revision's, per family / clip / preset present in both."""
    return {
        fam: {
            clip: {
                p: cur[fam][clip][p]["speedup"] / r["speedup"]
                for p, r in presets.items()
                if p in cur.get(fam, {}).get(clip, {})
            }
            for clip, presets in clips.items()
            if clip in cur.get(fam, {})
        }
        for fam, clips in rev.items()
    }


def print_table(result: dict[str, Any]) -> None:
    rev = result["revision"][:9]
    head = (
        f"{'family':<11} {'clip':<18} {'preset':<9} {rev + ' x':>11} {'this x':>7} {'this/rev':>8} "
        f"{'dense s rev/this':>16} {'cached s rev/this':>17} {'cos rev/this':>15} {'frac rev/this':>13}"
    )
    frames = result["runs"]["this"][0]["frames_per_clip"]
    print(
        f"\nViT cache speedup over the dense encode, {result['repeats']} repeats each, threads "
        f"{result['torch_threads']}, {result['cpu']['model']} (seconds: per run, {frames // 2} chunks)"
    )
    print(head)
    print("-" * len(head))
    for fam, clips in result["compare"].items():
        for clip, presets in clips.items():
            for p, ratio in presets.items():
                r, c = result["pooled"]["revision"][fam][clip][p], result["pooled"]["this"][fam][clip][p]
                print(
                    f"{fam:<11} {clip:<18} {p:<9} {r['speedup']:10.2f}x {c['speedup']:6.2f}x {ratio:8.3f} "
                    f"{r['dense_seconds']:8.2f}/{c['dense_seconds']:<7.2f} {r['cached_seconds']:9.2f}/{c['cached_seconds']:<7.2f} "
                    f"{r['cosine_mean']:7.4f}/{c['cosine_mean']:<7.4f} {r['recompute_fraction']:6.3f}/{c['recompute_fraction']:<6.3f}"
                )


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default=DEFAULT_REV, help="the earlier revision (default: issue #19's 06645ef)")
    p.add_argument("--shape", default="qwen2-vl-2b", help="as benchmarks/vit_cache.py --shape")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads, both versions (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each version, alternated (default 3)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (both scripts' default: 16)")
    p.add_argument(
        "--clips",
        nargs="+",
        default=None,
        help="clips (default: each script's own list; the table shows the common ones)",
    )
    p.add_argument("--presets", nargs="+", default=["lossless", "balanced", "fast"])
    p.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/vit_cache_versus-<shape>.json"
    )
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    from baseline import SHAPES  # this checkout's shapes: a typo fails here, not inside each child run

    if args.shape not in ("tiny", *SHAPES):
        p.error(f"--shape: unknown {args.shape!r}; choose from tiny, {', '.join(SHAPES)}")
    try:
        commit = resolve(args.rev)
    except VersusError as e:
        p.error(str(e))
    flags = ["--shape", args.shape, "--threads", str(args.threads), "--presets", *args.presets]
    flags += ["--frames", str(args.frames)] if args.frames else []
    flags += ["--clips", *args.clips] if args.clips else []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still removes its temporary tree
    runs: dict[str, list[dict[str, Any]]] = {"revision": [], "this": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="livevlm-versus-") as tmp:
        tree = extract(commit, Path(tmp) / "rev")
        versions = {"revision": (tree, flags), "this": (ROOT, [*flags, "--rounds", "0"])}
        for i in range(args.repeats):
            order = ["revision", "this"] if i % 2 == 0 else ["this", "revision"]
            for name in order:
                where, version_flags = versions[name]
                out = Path(tmp) / f"{name}-{i}.json"
                runs[name].append(run_version(where, version_flags, out, f"{name} {i + 1}/{args.repeats}"))
    pooled = {name: pool(r) for name, r in runs.items()}
    result = {
        "revision": commit,
        "shape": args.shape,
        "repeats": args.repeats,
        **provenance(__file__, args, argv),
        "vit_cache_flags": flags,
        "pooled": pooled,
        "compare": compare(pooled["revision"], pooled["this"]),
        "runs": runs,
        **run_context(load_before, threads=args.threads),
    }
    print_table(result)
    out = args.out or Path(__file__).resolve().parent / "results" / f"vit_cache_versus-{args.shape}.json"
    write_result(out, result)


if __name__ == "__main__":
    try:
        main()
    except VersusError as e:  # a revision's run failed: its stderr is in the message
        raise SystemExit(f"vit_cache_versus.py: error: {e}") from None
