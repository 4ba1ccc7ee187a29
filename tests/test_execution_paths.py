"""The execution-path fields of `SessionConfig` (decode, encode, prefill: how the same model calls run, eagerly,
in fixed shapes, or as CUDA graphs) refuse an impossible value at construction with a message naming it, and the
command line takes each as a flag: a fixed-shape path answers what the usual one does, a graph path on a
machine without CUDA exits 2 with the same message. What each path computes is tested in test_static_decode.py,
test_static_prefill.py, test_graph_capturable.py and (on CUDA) test_gpu.py."""

from __future__ import annotations

import pytest

from livevlm import ConfigError, SessionConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decode", "graph", "decode='graph' needs a CUDA device (CUDA graphs), got device 'cpu'"),
        ("decode", "fast", "decode must be one of dynamic, static, graph, got 'fast'"),
        ("decode", 1, "decode must be a string, got 1"),
        ("encode", "graph", "encode='graph' needs a CUDA device (CUDA graphs), got device 'cpu'"),
        ("encode", "static", "encode must be one of eager, graph, got 'static'"),
        ("encode", True, "encode must be a string, got True"),
        ("prefill", "graph", "prefill='graph' needs a CUDA device (CUDA graphs), got device 'cpu'"),
        ("prefill", "fixed", "prefill must be one of eager, static, graph, got 'fixed'"),
        ("prefill", 2, "prefill must be a string, got 2"),
    ],
)
def test_an_impossible_path_is_refused_at_construction(field, value, message):
    with pytest.raises(ConfigError) as info:
        SessionConfig(**{field: value})
    assert str(info.value) == message


@pytest.mark.parametrize(("flag", "fixed"), [("--decode", "static"), ("--encode", "eager"), ("--prefill", "static")])
def test_the_command_line_takes_each_path(capsys, flag, fixed):
    from livevlm.assets import sample_video_path
    from livevlm.cli import main

    ask = ["ask", str(sample_video_path()), "What colour is the circle?", "--no-progress"]
    assert main(ask) == 0
    usual = capsys.readouterr().out.strip()
    assert main([*ask, flag, fixed]) == 0
    assert capsys.readouterr().out.strip() == usual != ""
    assert main([*ask, flag, "graph"]) == 2
    name = flag.removeprefix("--")
    assert f"{name}='graph' needs a CUDA device (CUDA graphs), got device 'cpu'" in capsys.readouterr().err
