"""The pruner comparison of docs/pruners.md, from the JSON the two benchmarks wrote (nothing is re-measured).

    python benchmarks/pruners_table.py                      # results/accuracy-pruners.json + pruner-qwen2-vl-2b-papers.json
    python benchmarks/pruners_table.py --accuracy A.json --speed B.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _parser import BenchParser

RESULTS = Path(__file__).resolve().parent / "results"

PAPERS: dict[str, tuple[str, str]] = {
    "uniform": ("-- (spatial stride baseline)", "same evenly spread cells every chunk"),
    "temporal": ("vLLM EVS", "drop what did not change since the token last kept at its place"),
    "adaptive": ("VidCom2", "chunk budget by uniqueness (saved, then spent), dual-anchor inside"),
    "dual_anchor": ("STC-Pruner, cosine variant", "least like the chunk mean and the position's past (1 - cos)"),
    "stc": ("STC-Pruner", "same anchors, multi-scale gaussian similarity on low-variance channels"),
    "tome": ("ToMe (as in AuroraCap / TinyChart)", "bipartite soft matching, size-weighted merges"),
    "visiondrop": ("VisionDrop", "visual-to-visual attention received, progressive drop, merge"),
    "cluster": ("CenterCLIP", "k-medoids of the chunk's tokens, medoids kept"),
    "keyframe": ("KFFocus", "chunk budget by change from the previous chunk (spend ahead), stc inside"),
    "dedup": ("B-VLLM", "near-duplicate patches refused before the ViT, stc inside"),
    "hiprune": ("HiPrune", "ViT attention: middle-layer anchors + neighbours + deep-layer registers"),
    "fastv": ("FastV", "question-time: top stored visual KV by the question's layer-2 attention"),
}


def _name(setting: str) -> tuple[str, str] | None:
    """'prune:stc:0.5' -> ('stc', '0.5'); 'kv:fastv:keep_ratio=0.5' -> ('fastv', '0.5'); else None."""
    parts = setting.split(":")
    if parts[0] == "prune" and len(parts) == 3:
        return parts[1], parts[2]
    if parts[0] == "kv" and len(parts) == 3 and parts[2].startswith("keep_ratio="):
        return parts[1], parts[2].split("=", 1)[1]
    return None


def rows(accuracy: dict[str, Any], speed: dict[str, Any] | None) -> list[list[str]]:
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for setting, entry in accuracy["settings"].items():
        named = _name(setting)
        if named:
            by.setdefault(named[0], {})[named[1]] = entry
    base = accuracy["settings"]["baseline"]["accuracy"]
    acc = f"{base['overall']:.2f}"
    out = [["baseline (`none`)", "--", "every token", acc, acc, "1.00", "1.00", "1.00", "1.00 / 1.00", "1.00 / 1.00"]]
    for name, (paper, mechanism) in PAPERS.items():
        if name not in by:
            continue
        half, quarter = by[name].get("0.5"), by[name].get("0.25")
        fast = (speed or {}).get("strategies", {}).get(name)
        cells = [f"`{name}`", paper, mechanism]
        cells += [f"{e['accuracy']['overall']:.2f}" if e else "--" for e in (half, quarter)]
        cells += [f"{e['retention']['overall']:.2f}" if e else "--" for e in (half, quarter)]
        cells.append(f"{quarter['retention']['needle']:.2f}" if quarter and "needle" in quarter["retention"] else "--")
        r = quarter["ratios"] if quarter else None
        cells.append(f"{r['kept_tokens']:.2f} / {r['context_tokens']:.2f}" if r else "--")
        cells.append(f"{fast['token_ratio']:.2f} / {fast['prefill_ratio']:.2f}" if fast else "--")
        out.append(cells)
    return out


def table(accuracy: dict[str, Any], speed: dict[str, Any] | None) -> str:
    head = ["strategy", "paper", "mechanism", "acc @0.5", "acc @0.25", "retention @0.5", "retention @0.25",
            "needle ret. @0.25", "tokens kept / attended @0.25", "2B tokens / prefill @0.25"]  # fmt: skip
    lines = [head, ["---"] * len(head), *rows(accuracy, speed)]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def main() -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy", type=Path, default=RESULTS / "accuracy-pruners.json")
    p.add_argument("--speed", type=Path, default=None,
                   help="pruner.py's JSON (default results/pruner-qwen2-vl-2b-papers.json, its column left out if absent)")
    args = p.parse_args()
    if not args.accuracy.is_file():
        p.error(f"--accuracy {args.accuracy}: no such file (benchmarks/accuracy.py --prune-only writes it)")
    if args.speed is not None and not args.speed.is_file():
        p.error(f"--speed {args.speed}: no such file (benchmarks/pruner.py writes it)")
    speed_path = args.speed or RESULTS / "pruner-qwen2-vl-2b-papers.json"
    accuracy = json.loads(args.accuracy.read_text())
    if "baseline" not in accuracy.get("settings", {}):
        p.error(f"--accuracy {args.accuracy}: not a benchmarks/accuracy.py result (no baseline setting)")
    speed = json.loads(speed_path.read_text()) if speed_path.is_file() else None
    print(table(accuracy, speed))


if __name__ == "__main__":
    main()
