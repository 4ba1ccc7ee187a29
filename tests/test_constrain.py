"""Constrained answers (#22): real tokenizers, random logits as the model; the answers must match.

Needs llguidance (the `constrain` extra, part of `dev`): without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from livevlm import constrain
from livevlm.constrain import build_constraint
from livevlm.errors import ConfigError

REGEXES = [
    r"(yes|no)",
    r"[0-9]{1,3}",
    r"(red|green|blue) (circle|square|triangle)",
    r"-?[1-9][0-9]{0,2}\.[0-9]{2}",
    r"at (1[0-2]|[1-9]):[0-5][0-9] (am|pm)",
    r"[a-z]{2,6}( [a-z]{2,6}){0,3}\.",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer"},
    },
    "required": ["colour", "count"],
}
NESTED = {
    "type": "object",
    "properties": {
        "shapes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": ["circle", "square"]},
                               "big": {"type": "boolean"}},
                "required": ["kind", "big"],
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["shapes", "note"],
}
SEEDS = range(6)
MAX_STEPS = 300


@pytest.fixture(scope="module")
def yardstick():
    from transformers import AutoTokenizer

    from livevlm.models.loading import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    return tok, 448  # the checkpoint's logits width: 23 ids past the tokenizer's 425


@pytest.fixture(scope="module")
def qwen2():
    from livevlm.models.tokenizer import build_qwen2_tokenizer

    return build_qwen2_tokenizer(), 151936  # Qwen2-VL's lm_head width: 279 ids past the tokenizer


@pytest.fixture(params=["yardstick", "qwen2"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def _eos(tok) -> frozenset[int]:
    return frozenset(tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))


def _decode(tok, vocab_size, seed, **pattern):
    """Greedy decoding over seeded random logits, masked by the constraint, as the decode loop does it."""
    eos = _eos(tok)
    c = build_constraint(tok, vocab_size, eos, **pattern)
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(MAX_STEPS):
        allowed = c.mask()
        assert allowed.dtype == torch.bool and allowed.shape == (vocab_size,)
        assert allowed.any()
        assert not allowed[len(tok):].any(), "an id past the tokenizer was allowed"
        logits = torch.randn(vocab_size, generator=gen)
        token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        c.accept(token)
        if token in eos:
            break
        ids.append(token)
        if c.done():
            break
    else:
        pytest.fail(f"no end after {MAX_STEPS} tokens: {tok.decode(ids)!r}")
    assert c.done()
    return tok.decode(ids)


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_answers_match(tokenizer, regex):
    tok, vocab_size = tokenizer
    texts = [_decode(tok, vocab_size, seed, regex=regex) for seed in SEEDS]
    for text in texts:
        assert re.fullmatch(regex, text), (regex, text)


def _check_schema(value, schema):
    """A hand check of the few keywords these tests use (jsonschema is not a dependency)."""
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict)
        assert set(schema.get("required", [])) <= set(value) <= set(schema["properties"])
        for key, sub in value.items():
            _check_schema(sub, schema["properties"][key])
    elif kind == "array":
        assert isinstance(value, list)
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
        for item in value:
            _check_schema(item, schema["items"])
    elif kind == "string":
        assert isinstance(value, str)
        assert len(value) <= schema.get("maxLength", len(value))
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif kind == "boolean":
        assert isinstance(value, bool)
    if "enum" in schema:
        assert value in schema["enum"]


@pytest.mark.parametrize("schema", [SCHEMA, NESTED], ids=["flat", "nested"])
def test_json_answers_are_valid(tokenizer, schema):
    tok, vocab_size = tokenizer
    for seed in SEEDS:
        text = _decode(tok, vocab_size, seed, json_schema=schema)
        value = json.loads(text)  # strict: no raw control characters in strings
        _check_schema(value, schema)
        assert list(value) == [k for k in schema["properties"] if k in value]  # keys in the schema's order


def test_schema_as_text_and_explicit_extra_keys(yardstick):
    tok, vocab_size = yardstick
    text = _decode(tok, vocab_size, 0, json_schema=json.dumps(SCHEMA))
    assert set(json.loads(text)) == {"colour", "count"}
    # additionalProperties said outright is kept: the object may go on with other keys
    c = build_constraint(tok, vocab_size, _eos(tok), json_schema={**SCHEMA, "additionalProperties": True})
    for t in tok.encode('{"colour": "red", "count": 3', add_special_tokens=False):
        c.accept(t)
    comma = tok.convert_tokens_to_ids(",")
    assert c.mask()[comma]


def test_none_without_a_pattern(yardstick):
    tok, vocab_size = yardstick
    assert build_constraint(tok, vocab_size, _eos(tok)) is None


def test_end_tokens_only_when_complete(qwen2):
    tok, vocab_size = qwen2
    eos = sorted(_eos(tok))
    c = build_constraint(tok, vocab_size, frozenset(eos), regex=r"[0-9]{1,3}")
    assert not c.mask()[eos].any()  # an empty answer does not match
    c.accept(tok.convert_tokens_to_ids("4"))
    assert c.mask()[eos].all() and not c.done()  # "4" matches, but more digits may follow
    c.accept(tok.convert_tokens_to_ids("2"))
    c.accept(tok.convert_tokens_to_ids("7"))
    allowed = c.mask()
    assert c.done() and allowed.nonzero().flatten().tolist() == eos  # "427" is complete: only an end
    c2 = build_constraint(tok, vocab_size, frozenset(eos), regex=r"[0-9]{1,3}")
    c2.accept(tok.convert_tokens_to_ids("4"))
    c2.accept(eos[0])
    assert c2.done()


def test_special_tokens_never_allowed(qwen2):
    tok, vocab_size = qwen2
    c = build_constraint(tok, vocab_size, _eos(tok), json_schema={"type": "string"})
    c.accept(tok.convert_tokens_to_ids('"'))
    allowed = c.mask()
    assert allowed.sum() > 100_000  # inside a string almost anything goes ...
    assert not allowed[len(tok) - 14:].any()  # ... but no <|vision_start|>, <|im_start|>, nor padding ids


def test_each_answer_starts_fresh_and_compilation_is_cached(yardstick):
    tok, vocab_size = yardstick
    eos = _eos(tok)
    first = build_constraint(tok, vocab_size, eos, regex="(yes|no)")
    for t in tok.encode("yes", add_special_tokens=False):
        first.accept(t)
    assert first.done()
    second = build_constraint(tok, vocab_size, eos, regex="(yes|no)")
    assert not second.done() and not second.mask()[sorted(eos)].any()
    prepared = constrain._PREPARED[tok][(vocab_size, tuple(sorted(eos)))]
    assert constrain._prepared(None, tok, vocab_size, tuple(sorted(eos))) is prepared
    assert ("regex", "(yes|no)") in prepared._grammars


def test_both_patterns_refused(yardstick):
    tok, vocab_size = yardstick
    with pytest.raises(ConfigError, match="not both"):
        build_constraint(tok, vocab_size, _eos(tok), regex="yes", json_schema=SCHEMA)


@pytest.mark.parametrize("regex, problem", [
    ("(yes|no", "unclosed group"),
    ("[z-a]", "invalid character class range"),
    (r"(?<=a)b", "look-around"),
    (r"(a)\1", "backreferences"),
])
def test_bad_regex_refused(yardstick, regex, problem):
    tok, vocab_size = yardstick
    with pytest.raises(ConfigError, match="cannot be compiled") as err:
        build_constraint(tok, vocab_size, _eos(tok), regex=regex)
    assert problem in str(err.value) and "start:" not in str(err.value)
    assert "\n" not in str(err.value)  # one line, as the CLI prints errors


@pytest.mark.parametrize("schema, problem", [
    ({"type": "strng"}, "Invalid type"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum"),
    ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "nowhere"),
    ({"type": "string", "pattern": "(("}, "unclosed group"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (42, "must be a JSON object"),
])
def test_bad_schema_refused(yardstick, schema, problem):
    tok, vocab_size = yardstick
    with pytest.raises(ConfigError, match=re.escape(problem)):
        build_constraint(tok, vocab_size, _eos(tok), json_schema=schema)


def test_missing_library_is_a_config_error(yardstick, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_llguidance(name, *args, **kwargs):
        if name.split(".")[0] == "llguidance":
            raise ImportError("No module named 'llguidance'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llguidance)
    tok, vocab_size = yardstick
    with pytest.raises(ConfigError, match=re.escape("pip install 'livevlm[constrain]'")):
        build_constraint(tok, vocab_size, _eos(tok), regex="yes")
