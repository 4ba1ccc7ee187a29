"""Print livevlm's module import graph (static: every `import` in a module, function-level ones included).

    python -m tools.import_graph            # package -> packages it imports, and any cycle
    python -m tools.import_graph --modules  # module level

Layers: records/errors/registry < kernels < stream, models < prune, cache < session < cli.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "livevlm"


def module_name(path: Path) -> str:
    parts = ["livevlm", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules under livevlm that `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("livevlm")}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("livevlm"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else target)
    out.discard(name)
    return out


def module_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def package_of(module: str) -> str:
    """livevlm.cache.kv -> cache; livevlm.session -> session; livevlm -> livevlm."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "livevlm"


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        if mod == "livevlm":
            continue  # the top-level re-exports sit above everything
        src = package_of(mod)
        out.setdefault(src, set()).update(package_of(d) for d in deps if package_of(d) not in (src, "livevlm"))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module level instead of package level")
    args = parser.parse_args()
    graph = module_graph()
    shown = graph if args.modules else package_graph(graph)
    for src in sorted(shown):
        print(f"{src:32s} -> {', '.join(sorted(shown[src])) or '-'}")
    print("cycles:", cycles(shown) or "none")


if __name__ == "__main__":
    main()
