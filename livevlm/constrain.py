"""Constrained answers (#22): `ask(..., regex=...)` / `ask(..., json_schema=...)` decode only tokens that keep the
answer a match.

Library: llguidance (Rust, no dependencies, a 3 MB wheel; vLLM's `guidance` backend, llama.cpp's). Measured on 2 CPU
cores, Qwen2 (151,936 logits) / yardstick (448): it prepares a tokenizer in 1.9 s / 3 ms, compiles a pattern in 1-2.5 ms
and masks a token in 0.04-0.08 ms (bool tensor included). xgrammar masks as fast (0.8 s prep) but puts triton on CPU
installs (286 MB wheel, 1 GB) and lets raw control characters into maxLength strings (xgrammar#800); outlines-core
builds a 30-260 ms index per pattern; lm-format-enforcer takes 17 ms a token and fails to import on transformers 5.

Regexes use Rust `regex` syntax (Python's `re` less look-around and backreferences) and must match the whole answer.
JSON is written with ", " and ": " separators and no other whitespace, keys in the schema's order; an object schema that
lists `properties` and says nothing of `additionalProperties` allows no other keys (as xgrammar's and OpenAI's strict
modes do).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np
import torch

from .errors import ConfigError

INSTALL_HINT = "constrained answers need `pip install 'livevlm[constrain]'` (the llguidance library)"
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_GRAMMARS_PER_TOKENIZER = 64  # compiled patterns kept per prepared tokenizer (least recently used dropped)


class Constraint(Protocol):
    def mask(self) -> torch.Tensor | None:
        """(vocab,) bool: the tokens allowed at the next position; None = no restriction."""

    def accept(self, token: int) -> None:
        """Advance past the chosen token (always one the mask allowed)."""

    def done(self) -> bool:
        """The text so far is complete and nothing can be added to it, or an end token was accepted."""


def build_constraint(tokenizer, vocab_size: int, eos_token_ids: frozenset[int], *, regex: str | None = None,
                     json_schema: dict | str | None = None) -> Constraint | None:
    """A fresh constraint for one answer, or None when neither `regex` nor `json_schema` is given.

    `vocab_size` is the logits width (ids from len(tokenizer) on are never allowed); `eos_token_ids` are allowed
    exactly when the text so far is a complete match. Raises `ConfigError` for both given, a pattern or schema
    that cannot be compiled, or llguidance missing.
    """
    if regex is None and json_schema is None:
        return None
    if regex is not None and json_schema is not None:
        raise ConfigError("give either regex or json_schema, not both")
    if regex is not None:
        if not isinstance(regex, str):
            raise ConfigError(f"regex must be a string, not {type(regex).__name__}")
        key, what = ("regex", regex), f"regex {regex!r}"
    else:
        schema = _closed(_load_schema(json_schema))
        key, what = ("json", json.dumps(schema)), "json_schema"  # key order kept: keys come in that order
    eos = tuple(sorted({int(t) for t in eos_token_ids}))
    if not eos:
        raise ConfigError("constrained answers need at least one end token id")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be a positive int, not {vocab_size!r}")
    if any(t < 0 or t >= vocab_size for t in eos):
        raise ConfigError(f"end token ids {list(eos)} must lie in [0, {vocab_size})")
    llg = _llguidance()
    prepared = _prepared(llg, tokenizer, vocab_size, eos)
    matcher = prepared.matcher(llg, key, what)
    answer = _Answer(matcher, vocab_size, prepared.n_text, prepared.n_vocab)
    answer.mask(refuse=f"{what} matches no answer the model can write")  # at the call, not at the first token
    return answer


class _Answer:
    """One answer's state: an llguidance matcher, and the packed bit mask it writes into."""

    def __init__(self, matcher, vocab_size: int, n_text: int, n_vocab: int):
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._n_text = n_text  # ids from here on are not the tokenizer's: never allowed
        self._words = torch.zeros((n_vocab + 31) // 32, dtype=torch.int32)
        self._bytes = self._words.numpy().view(np.uint8)

    def mask(self, refuse: str | None = None) -> torch.Tensor:
        """The allowed tokens; a matcher in error (no token can extend the text) raises `ConfigError` starting
        with `refuse` when given (the first mask, computed at the call), else RuntimeError."""
        self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        if self._matcher.is_error():
            reason = (self._matcher.get_error().strip().splitlines() or ["?"])[0]
            if refuse is not None:
                raise ConfigError(f"{refuse} ({reason}): check the pattern")
            raise RuntimeError(f"constrained decoding failed: {reason}")
        bits = np.unpackbits(self._bytes, count=self._vocab_size, bitorder="little")
        allowed = torch.from_numpy(bits).view(torch.bool)
        allowed[self._n_text:] = False
        return allowed

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            reason = (self._matcher.get_error().strip().splitlines() or ["?"])[0]
            raise ValueError(f"token {token} is not allowed here: {reason}")

    def done(self) -> bool:
        return self._matcher.is_stopped()


class _Prepared:
    """A tokenizer turned into llguidance's form (slow for big vocabularies), and the patterns compiled for it."""

    def __init__(self, lltok, n_text: int, n_vocab: int):
        self.lltok, self.n_text, self.n_vocab = lltok, n_text, n_vocab
        self._grammars: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, llg, key: tuple[str, str], what: str):
        """A fresh matcher for the pattern: a copy of the one compiled the first time it was asked for."""
        with self._lock:
            base = self._grammars.get(key)
            if base is not None:
                self._grammars.move_to_end(key)
                return base.deep_copy()
        base = _compile(llg, self.lltok, key, what)
        with self._lock:
            self._grammars[key] = base
            while len(self._grammars) > _GRAMMARS_PER_TOKENIZER:
                self._grammars.popitem(last=False)
            return base.deep_copy()


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(vocab, eos): _Prepared}
_PREPARE_LOCK = threading.Lock()


def _prepared(llg, tokenizer, vocab_size: int, eos: tuple[int, ...]) -> _Prepared:
    with _PREPARE_LOCK:  # one preparation at a time: a second caller waits for the first and reuses it
        try:
            per_tokenizer = _PREPARED.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable or not hashable: prepare it each time
            per_tokenizer = {}
        prepared = per_tokenizer.get((vocab_size, eos))
        if prepared is None:
            try:
                n_text = len(tokenizer)
            except TypeError as e:
                raise ConfigError(f"constrained answers need a Hugging Face tokenizer, not {tokenizer!r}") from e
            n_vocab = max(vocab_size, n_text)  # llguidance refuses fewer ids than the tokenizer has
            try:
                import llguidance.hf

                lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos))
            except (ValueError, TypeError, RuntimeError) as e:  # a slow (Python) tokenizer, or one it cannot read
                raise ConfigError(f"constrained answers cannot use this tokenizer ({type(tokenizer).__name__}): "
                                  f"{e}") from e
            prepared = per_tokenizer[(vocab_size, eos)] = _Prepared(lltok, min(n_text, vocab_size), n_vocab)
        return prepared


def _compile(llg, lltok, key: tuple[str, str], what: str):
    kind, text = key
    matcher_cls = llg.LLMatcher
    try:
        if kind == "regex":
            grammar = matcher_cls.grammar_from_regex(text)
        else:
            grammar = matcher_cls.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)
        failed, messages = matcher_cls.validate_grammar_with_warnings(grammar, lltok)
    except (ValueError, TypeError, RuntimeError) as e:
        failed, messages = True, [str(e)]
    matcher = None
    if not failed:
        matcher = matcher_cls(lltok, grammar, log_level=0)
        failed, messages = matcher.is_error(), [matcher.get_error()]
    if failed:
        raise ConfigError(f"{what} cannot be compiled: {_tidy(messages[0] if messages else 'unknown error')}")
    return matcher


def _tidy(message: str) -> str:
    """llguidance's message without the lines that quote its own wrapper grammar."""
    lines = []
    for line in message.strip().splitlines():
        if re.match(r"\s*\d+ \|", line):
            break
        lines.append(line)
    return " ".join(" ".join(lines).split())[:800]  # one line: the CLI prints one error line


def _llguidance():
    try:
        import llguidance
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return llguidance


def _load_schema(json_schema: dict | str) -> dict:
    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise ConfigError(f"json_schema is not valid JSON: {e}") from e
    if not isinstance(json_schema, dict):
        raise ConfigError(f"json_schema must be a JSON object (a dict), not {type(json_schema).__name__}")
    try:
        return json.loads(json.dumps(json_schema))  # a deep copy, and a check that it is plain JSON data
    except (TypeError, ValueError) as e:
        raise ConfigError(f"json_schema is not plain JSON data: {e}") from e


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("items", "additionalItems", "additionalProperties", "contains", "propertyNames", "not", "if",
               "then", "else", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems", "items")  # allOf is left alone: closing its parts would clash


def _closed(schema: Any) -> Any:
    """The schema (a fresh copy) with `additionalProperties: false` wherever an object lists its properties and
    says nothing of other keys, so an answer holds the keys asked for and ends."""
    if not isinstance(schema, dict):
        return schema
    if "properties" in schema and "additionalProperties" not in schema and "unevaluatedProperties" not in schema:
        schema["additionalProperties"] = False
    for name in _SCHEMA_MAPS:
        if isinstance(schema.get(name), dict):
            schema[name] = {k: _closed(v) for k, v in schema[name].items()}
    for name in _SCHEMA_ONE:
        if isinstance(schema.get(name), dict):
            schema[name] = _closed(schema[name])
    for name in _SCHEMA_LISTS:
        if isinstance(schema.get(name), list):
            schema[name] = [_closed(v) for v in schema[name]]
    return schema
