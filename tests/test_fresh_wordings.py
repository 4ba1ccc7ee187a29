"""benchmarks/_fresh_wordings.py: questions in words no training or held-out wording uses, scored through the gap
benchmark on the same clips as the other v1 conditions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.yardstick.compose import composed
from tools.yardstick.phrasing import TEMPLATES, parse, templates
from tools.yardstick.world import QUESTION_TYPES, make_example

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from _fresh_wordings import FRESH, fresh_template, freshen

SLOTS = {"shape": "circle", "colour": "red", "obj": "red circle", "a": "red circle", "b": "blue square", "at": "start"}


@pytest.mark.parametrize("kind", list(FRESH))
def test_fresh_wordings_ask_the_same_slots_in_words_never_trained_or_held_out(kind: str) -> None:
    slots = set(re.findall(r"\{(\w+)\}", templates(kind, "seen")[0]))
    used = {t.lower() for pool in ("seen", "held_out") for t in templates(kind, pool)}
    used |= {t.lower() for t in composed(kind)}
    assert len(FRESH[kind]) >= 4
    for template in FRESH[kind]:
        assert set(re.findall(r"\{(\w+)\}", template)) == slots, template
        assert template.lower() not in used, template
        with pytest.raises(ValueError):  # no template parses it: it is new to the world's own wordings too
            parse(template.format(**SLOTS))
        assert fresh_template(template.format(**SLOTS)) == template
    assert set(FRESH) == set(TEMPLATES) - {"describe"}


def test_freshen_keeps_the_clip_and_its_answer_and_pairs_the_same_way_every_run() -> None:
    for t in QUESTION_TYPES:
        for i in range(6):
            ex = make_example("val", i, t, version=1)
            fresh = freshen(ex.question, i)
            assert fresh == freshen(ex.question, i) and fresh_template(fresh) in FRESH[parse(ex.question).kind]
            for value in parse(ex.question).slots.values():
                assert value in fresh


def test_the_gap_benchmark_scores_fresh_wordings_by_template(tmp_path: Path) -> None:
    out = tmp_path / "gap.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "yardstick_v2_gap.py"), "--per-type", "2", "--threads", "1", "--quiet",
         "--conditions", "v1 clips, fresh wordings", "--out", str(out)],
        check=False, capture_output=True, text=True, cwd=BENCH.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    condition = json.loads(out.read_text())["conditions"]["v1 clips, fresh wordings"]
    assert condition["n"] == 2 * len(QUESTION_TYPES)
    assert set(condition["by_wording"]) <= {t for group in FRESH.values() for t in group}
    assert condition["world"] == {"version": 1, "fresh": True}
