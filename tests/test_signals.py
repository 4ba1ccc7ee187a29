"""SIGTERM is handled like Ctrl-C: `livevlm watch` stops, closes its session and leaves no spill files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _spill_files(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("livevlm-kv-*/chunks.bin"))


def test_sigterm_stops_watch_and_removes_its_spill_files(tiny_checkpoints, tmp_path: Path) -> None:
    spill = tmp_path / "tmp"
    spill.mkdir()
    cmd = [sys.executable, "-m", "livevlm.cli", "watch", "lavfi:testsrc2=size=112x112:rate=10",
           "--model", tiny_checkpoints["qwen2_5_vl"], "--fps", "10", "--kv", "bilevel", "--kv-budget", "32K",
           "--status-every", "0"]
    env = {**os.environ, "TMPDIR": str(spill), "HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for _ in range(600):  # wait (bounded) until chunks have spilled to disk
            if _spill_files(spill) and _spill_files(spill)[0].stat().st_size > 0:
                break
            assert proc.poll() is None, proc.communicate()[1].decode()
            time.sleep(0.2)
        assert _spill_files(spill), "no chunk reached the disk tier"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err.decode()
    assert "Traceback" not in err.decode()
    assert "[watch] done after" in err.decode()  # the summary of a clean stop
    assert list(spill.glob("livevlm-kv-*")) == []
