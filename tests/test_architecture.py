"""The shape of the house: layers, no import cycles, one registry shape, stores that never call the model."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from livevlm import SessionConfig
from livevlm.cache import KV_POLICIES, VIT_CACHES
from livevlm.cli.flags import COMPRESSION_FLAGS, SESSION_FLAGS, add_session_args, field_docs
from livevlm.errors import ConfigError, ModelLoadError
from livevlm.models import MODEL_FAMILIES
from livevlm.prune import PRUNERS
from livevlm.registry import Registry, UnknownNameError
from livevlm.stream import SOURCES
from tools.import_graph import ROOT, cycles, module_graph, package_graph

LOWER = ("stream", "models", "cache", "prune", "kernels", "records", "errors", "registry")
UPPER = ("session", "session_config", "cli")


def test_no_import_cycles_between_modules_or_packages():
    graph = module_graph()
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


def test_lower_layers_never_import_the_loop_or_the_cli():
    packages = package_graph(module_graph())
    for low in LOWER:
        assert not packages.get(low, set()) & set(UPPER), f"{low} imports {packages[low] & set(UPPER)}"
    assert packages["kernels"] <= {"errors"}  # the ops depend on nothing of ours but the error types,
    assert packages.get("errors", set()) == set()  # which depend on nothing
    assert packages["records"] == set()
    assert "models" not in packages["prune"] and "models" not in packages["cache"]  # records are shared


def test_caches_never_call_the_model():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "cache").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "adapter." in line
    ]
    assert offenders == []


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


@pytest.mark.parametrize(
    ("registry", "error"),
    [(MODEL_FAMILIES, ModelLoadError), (VIT_CACHES, ConfigError), (PRUNERS, ConfigError),
     (KV_POLICIES, ConfigError), (SOURCES, ConfigError)],
    ids=["models", "vit_caches", "pruners", "kv_policies", "sources"],
)
def test_one_registry_shape_with_typed_unknown_name_errors(registry, error):
    assert isinstance(registry, Registry)
    with pytest.raises(error) as info:
        registry.get("no-such-thing")
    for name in registry.names():  # the message lists every valid name
        assert name in str(info.value)
        registry.load(name)  # and every entry imports
    if error is ConfigError:
        assert isinstance(info.value, UnknownNameError) and info.value.valid == registry.names()


def test_entries_carry_their_config_class():
    for registry in (VIT_CACHES, PRUNERS, KV_POLICIES):
        for name in registry.names():
            config = registry.config_class(name)()
            assert dataclasses.is_dataclass(config)
    assert KV_POLICIES.for_config(KV_POLICIES.config_class("bilevel")()).name == "bilevel"


def test_session_config_resolves_each_stage_once():
    config = SessionConfig(vit_cache="balanced", prune="temporal", kv="bilevel", kv_budget="64M")
    assert type(config.vit_cache).__name__ == "ViTCacheConfig" and config.vit_cache.policy == "token"
    assert config.prune.strategy == "temporal" and config.prune.fps == config.fps
    assert config.kv.policy == "bilevel" and config.kv.tiers.device_bytes == 16 * 2**20
    with pytest.raises(UnknownNameError):
        SessionConfig(kv="everything")


def test_cli_flags_come_from_the_session_config():
    fields = {f.name: f for f in dataclasses.fields(SessionConfig)}
    parser = argparse.ArgumentParser()
    add_session_args(parser)
    actions = {a.dest: a for a in parser._actions}
    for name in (*SESSION_FLAGS, *COMPRESSION_FLAGS):
        assert name in fields, f"--{name} sets no SessionConfig field"
        assert actions[name].default == fields[name].default
        assert actions[name].help.removesuffix(" (default: %(default)s)") == field_docs(SessionConfig)[name]
    assert actions["prune"].choices == PRUNERS.names() and actions["kv"].choices == KV_POLICIES.names()
