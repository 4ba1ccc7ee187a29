"""One registry shape for every pluggable part: models, ViT caches, pruners, KV policies and sources.

    PRUNERS = Registry("pruner")
    PRUNERS.register("temporal", "livevlm.prune.temporal:TemporalPruner", config="livevlm.prune.temporal:TemporalConfig")
    PRUNERS.load("temporal")            # the class, imported on first use
    PRUNERS.config_class("temporal")    # its config dataclass
    PRUNERS.get("turbo")                # UnknownNameError: unknown pruner 'turbo'; choose one of ...

Entries are lazy ("module:attr" strings import on first use) or objects registered directly (the decorator
form, for strategies defined in user code).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError, LivevlmError

T = TypeVar("T")


class UnknownNameError(ConfigError):
    """A name no registry entry answers to; `valid` lists the names that do."""

    def __init__(self, message: str, valid: list[str]) -> None:
        super().__init__(message)
        self.valid = valid


def _is_import_path(target: str) -> bool:
    module, colon, attr = target.partition(":")
    return bool(colon) and attr.isidentifier() and all(part.isidentifier() for part in module.split("."))


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Entry:
    """A registered name: what it builds and the config dataclass that describes it."""

    name: str
    target: Any
    """The class (or factory), or "module:attr" imported on first use."""
    config: Any = None
    """The config dataclass, or "module:attr"; None when the entry takes no config."""

    def load(self) -> Any:
        self.target = _resolve(self.target)
        return self.target

    def config_class(self) -> Any:
        self.config = _resolve(self.config)
        return self.config


class Registry(Generic[T]):
    """Names -> lazily imported entries carrying their config class."""

    def __init__(self, kind: str, error: type[LivevlmError] | None = None) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any = None, *, config: Any = None) -> Callable[[Any], Any]:
        """Register `target` as `name`; without a target, returns a class decorator that registers it."""

        def deco(obj: Any) -> Any:
            self._entries[name] = Entry(name, obj, config if config is not None else getattr(obj, "config_class", None))
            return obj

        for value in (target, config):
            if isinstance(value, str) and not _is_import_path(value):
                raise ConfigError(
                    f"cannot register {self.kind} {name!r} as {value!r}: a lazy target is 'package.module:Name' "
                    "(a colon before the attribute), or pass the class itself"
                )
        if target is not None:
            self._entries[name] = Entry(name, target, config)
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: Any) -> Entry:
        """The entry for `name`; an unknown name raises a typed error listing the valid ones."""
        if name not in self._entries:
            message = f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            if self._error is not None:
                raise self._error(message)
            raise UnknownNameError(message, self.names())
        return self._entries[name]

    def load(self, name: Any) -> Any:
        """The class registered as `name`, imported on first use; a target that does not import (a typo in
        "module:attr") raises this registry's typed error naming it."""
        entry = self.get(name)
        return self._import(entry, entry.target, entry.load)

    def config_class(self, name: Any) -> Any:
        entry = self.get(name)
        return self._import(entry, entry.config, entry.config_class)

    def _import(self, entry: Entry, target: Any, load: Callable[[], Any]) -> Any:
        try:
            return load()
        except (ImportError, AttributeError) as exc:
            if not isinstance(target, str):
                raise
            error = self._error or ConfigError
            raise error(f"{self.kind} {entry.name!r} is registered as {target!r}, which cannot be imported: {exc}") from exc

    def for_config(self, config: Any) -> Entry | None:
        """The entry whose config class is exactly `type(config)`, or None."""
        for entry in self._entries.values():
            if entry.config is not None and entry.config_class() is type(config):
                return entry
        return None
