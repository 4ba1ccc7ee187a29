"""`BenchParser`: the benchmarks' argument parser (no livevlm import: kernel_speed.py sets TRITON_INTERPRET first)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class BenchParser(argparse.ArgumentParser):
    """A benchmark's argument parser: besides its flags, `--out` and `--threads` are checked before any work (an
    unwritable --out was a traceback after the whole run; --threads -1 one from torch)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        threads, default = getattr(parsed, "threads", None), self.get_default("threads")
        if threads is not None and threads != default and (isinstance(threads, bool) or threads < 1):
            self.error(f"--threads must be at least 1, got {threads}")  # (a script's own default: its "auto")
        out = getattr(parsed, "out", None)
        if isinstance(out, (str, Path)) and str(out):
            self._check_out(Path(out))
        return parsed

    def _check_out(self, out: Path) -> None:
        """--out must be a file this run can write: not a folder, its folder creatable and writable."""
        if out.is_dir():
            self.error(f"--out {out} is a folder: give a file path (e.g. {out / 'result.json'})")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.error(f"--out {out}: its folder cannot be made ({e.strerror or e})")
        if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
            self.error(f"--out {out}: not writable")
