"""`livevlm serve` as a user runs it: a process on a free port that prints its URL, serves, reaps idle streams,
and on SIGTERM closes every stream (spill files removed) and exits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD = 120.0


@pytest.fixture
def serve_process(tmp_path):
    procs = []

    def start(*flags: str) -> tuple[subprocess.Popen, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
        proc = subprocess.Popen([sys.executable, "-m", "livevlm.cli", "serve", "--port", "0", *flags],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + HANG_GUARD
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if m := re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line):
                return proc, m.group(1)
            assert line or proc.poll() is None, "".join(lines)
        raise AssertionError("serve did not print its URL: " + "".join(lines))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_runs_reaps_idle_streams_and_stops_cleanly_on_sigterm(serve_process, tmp_path):
    proc, url = serve_process("--idle-timeout", "2", "--kv", "retrieval", "--kv-budget", "8K")
    assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"
    idle = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    live = httpx.post(f"{url}/v1/streams", json={"source": "lavfi:testsrc=size=96x96:rate=4"}).json()["id"]
    deadline = time.monotonic() + HANG_GUARD

    def listed() -> set[str]:  # listing does not count as activity on a stream; GET /v1/streams/{id} does
        return {s["id"] for s in httpx.get(f"{url}/v1/streams").json()["streams"]}

    while idle in listed():  # nothing pushed, nothing asked: reaped
        assert time.monotonic() < deadline, "the idle stream was never closed"
        time.sleep(0.5)
    assert live in listed()  # frames keep coming: kept
    assert httpx.get(f"{url}/v1/streams/{idle}").status_code == 404
    while not list(tmp_path.glob("livevlm-kv-*/chunks.bin")):  # the live stream spills its older chunks
        assert time.monotonic() < deadline, "the live stream never spilled"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(HANG_GUARD) in (0, 143)
    assert not list(tmp_path.glob("livevlm-kv-*")), "spill files left behind"


def test_port_in_use_is_a_clear_error(serve_process):
    _, url = serve_process()
    port = url.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    again = subprocess.run([sys.executable, "-m", "livevlm.cli", "serve", "--port", port], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=HANG_GUARD, check=False)  # fmt: skip
    assert again.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in again.stderr
    assert "Traceback" not in again.stderr


def test_max_body_bytes_and_max_tokens_limit_raise_the_request_limits(serve_process):
    """A long chat history (~100 KB) is over the 64 KiB default; `--max-body-bytes 256K` lets it through.
    `max_tokens` over 512 had no flag at all; `--max-tokens-limit` sets it."""
    _, url = serve_process("--max-body-bytes", "256K", "--max-new-tokens", "2", "--max-tokens-limit", "600",
                           "--max-frame-pixels", "4096")  # fmt: skip
    sid = httpx.post(f"{url}/v1/streams", json={"source": "lavfi:testsrc=size=96x96:rate=4"}).json()["id"]
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(100)]
    body = {"model": sid, "messages": [*history, {"role": "user", "content": "What is shown?"}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=HANG_GUARD)
    assert r.status_code == 200, r.text
    body["messages"] = history * 3
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=HANG_GUARD)
    assert r.status_code == 413 and "over the limit of 262144" in r.json()["error"]["message"]
    for tokens, code in ((600, 200), (601, 422)):
        r = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "What is shown?", "max_tokens": tokens,
                                                             "stream": False, "stop": "."}, timeout=HANG_GUARD)  # fmt: skip
        assert r.status_code == code, r.text
    assert "over the server's limit of 600 (livevlm serve --max-tokens-limit)" in r.json()["error"]["message"]
    pushed = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    raw = {"content-type": "application/octet-stream"}
    for side, code in ((64, 202), (65, 413)):  # 64x64 = 4096 pixels: at the limit
        r = httpx.post(f"{url}/v1/streams/{pushed}/frames?width={side}&height={side}", content=b"\0" * (3 * side * side),
                       headers=raw, timeout=HANG_GUARD)  # fmt: skip
        assert r.status_code == code, r.text
    assert "over the limit of 4096 pixels (livevlm serve --max-frame-pixels)" in r.json()["error"]["message"]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "livevlm.cli", "serve", "--port", "0", "--max-body-bytes", "lots"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=HANG_GUARD, check=False)  # fmt: skip
    assert bad.returncode == 2 and "not a byte size: 'lots'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_server_ends_a_running_answer_with_its_error_event(serve_process, sig):
    """An answer longer than uvicorn's graceful timeout (5 s) was cut mid-SSE (no `error` event, a partial
    transfer) and the log showed a CancelledError traceback; the streams are now closed first."""
    proc, url = serve_process("--max-tokens-limit", "2000")
    sid = httpx.post(f"{url}/v1/streams", json={"source": "lavfi:testsrc=size=96x96:rate=4"}).json()["id"]
    body = {"question": "What colour is the circle?", "max_tokens": 2000, "regex": "(red ){1990}", "stream": True}
    events, error = [], None
    with httpx.stream("POST", f"{url}/v1/streams/{sid}/ask", json=body, timeout=HANG_GUARD) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event:"):
                events.append(line)
                if len(events) == 3:  # decoding: stop the server
                    proc.send_signal(sig)
            elif line.startswith("data:") and events[-1] == "event: error":
                error = json.loads(line[5:])
    assert events[-1] == "event: error", events[-3:]
    assert error["status"] == 410 and "the server stopping" in error["message"], error
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode in {signal.SIGINT: (0, 130), signal.SIGTERM: (143,)}[sig], err  # (uvicorn: 0 or 130)
    assert "Traceback" not in err and "CancelledError" not in err, err


def test_a_keyless_server_rate_limits_by_the_real_address_not_x_forwarded_for(serve_process):
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: a new header value was a new allowance."""
    _, url = serve_process("--questions-per-minute", "2")
    sid = httpx.post(f"{url}/v1/streams", json={"source": "lavfi:testsrc=size=96x96:rate=4"}).json()["id"]
    codes = [httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "What colour?", "max_tokens": 1},
                        headers={"x-forwarded-for": f"10.0.0.{i}"}, timeout=HANG_GUARD).status_code
             for i in range(3)]  # fmt: skip
    assert codes == [200, 200, 429], codes
