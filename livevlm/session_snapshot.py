"""`Session.save(dir)` / `Session.load(dir, model)`: a stream's whole state, and the same stream back.

    save: under the session lock ─► tree = {session: bookkeeping (pending frames, positions, frame size, stats),
                                            kv: store.state_dict(), vit_cache: ..., prune: ...}
          ─► write_snapshot (snapshot.py: safetensors + blobs + JSON manifest, atomic) with the config and the
             model's identity
    load: manifest ─► the saved config (+ the overrides that do not change what was stored)
          ─► the model: the given adapter, the given path, or the saved config's ─► its fingerprint and dtype
             must be the snapshot's ─► a Session built without a prompt ─► each part's load_state

The stores, the ViT cache and the pruner hand out and take back plain tensors and values; only this module
knows where they go. Restored, the next answer equals the one the saved session would have given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import KV_POLICIES, KVTiers, ViTCacheConfig
from .errors import ConfigError, SnapshotError
from .models import ChunkPlace, VideoLMAdapter, check_adapter, load_model
from .prune import PRUNERS
from .records import load_fields
from .session_config import SessionConfig, StageSeconds
from .snapshot import SnapshotInfo, read_manifest, read_snapshot, write_snapshot
from .stream import Frame

if TYPE_CHECKING:
    from typing_extensions import Self

OVERRIDABLE = ("device", "max_new_tokens", "stop_repeats", "max_frames", "decode", "encode", "prefill")
"""SessionConfig fields `Session.load` may change: none of them changes what the snapshot stored (the execution
paths among them: a snapshot saved with CUDA graphs loads on a CPU with encode='eager', prefill='eager')."""
_STAGES = ("prune", "vit_cache", "kv", "stream", "kernels", "standing", "seconds")


class SnapshotMixin:
    """save / load for `Session` (uses its lock, adapter, stores and bookkeeping fields)."""

    def save(self, path: str | Path) -> SnapshotInfo:
        """Write the stream's whole state to the directory `path`, atomically: a snapshot already there is
        replaced only once the new one is complete (a failure raises `SnapshotError` and leaves it as it was).
        Ingestion waits while it writes; questions being answered go on."""
        s: Any = self
        with s._lock:
            s._check_open()
            meta = {"model": _identity(s.adapter), "config": config_to_json(s.config)}
            info = write_snapshot(path, meta, s._snapshot_tree())
            return dataclasses.replace(info, frames_seen=s._stats.frames_seen, last_pts_seconds=s._stats.last_pts_seconds)

    @classmethod
    def load(
        cls, path: str | Path, model: str | Path | VideoLMAdapter | None = None, *, spill_dir: str | None = None,
        **overrides: Any,
    ) -> Self:
        """The session saved at `path`, ready to take frames and questions where it stopped.

        `model`: an adapter already loaded, a checkpoint path, or None for the one the saved config names; it must
        be the model the snapshot was taken with (same config and weights, same dtype), else `SnapshotError`.
        `spill_dir`: where a disk tier's spill file goes on this machine. `overrides`: other `OVERRIDABLE`
        SessionConfig fields (e.g. device="cuda:1"), and `vit_recompute` (the ViT cache's `recompute`: a session
        saved with recompute="graph" loads on a CPU with vit_recompute="static"). A corrupt, truncated or other-version snapshot raises
        `SnapshotError`."""
        manifest = read_manifest(path)
        config = _with_overrides(config_from_json(_section(manifest, "config", path)), spill_dir, overrides)
        if model is None or isinstance(model, (str, Path)):
            config = dataclasses.replace(config, model=str(model)) if model is not None else config
            model = load_model(config.model, device=config.device, dtype=config.dtype)
        model = check_adapter(model)
        _check_identity(_section(manifest, "model", path), model, path)
        tree = read_snapshot(path, manifest)
        session = cls.__new__(cls)
        session._build(model, config)  # type: ignore[attr-defined]
        try:
            session._restore_tree(tree)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            session.close()  # type: ignore[attr-defined]
            raise SnapshotError(f"the snapshot at {path} does not fit this session: {type(e).__name__}: {e}") from e
        except BaseException:  # e.g. a full spill dir (OutputError): the half-built session's store is released
            session.close()  # type: ignore[attr-defined]
            raise
        return session

    def _snapshot_tree(self) -> dict[str, Any]:
        s: Any = self
        fc = s._feature_cache
        stats = {f.name: getattr(s._stats, f.name) for f in dataclasses.fields(s._stats) if f.name not in _STAGES}
        session = {
            "pending": [_frame_state(f) for f in s._pending],
            "latest": _frame_state(s._latest) if s._latest is not None else None,
            "frame_shape": s._frame_shape, "size": s._size, "grid_hw": s._grid_hw,
            "max_position": s._max_position, "prompt_ids": s._prompt_ids,
            "place0": dataclasses.astuple(s._place0), "stand_ins": s._stand_ins.state_dict(),
            "stats": {**stats, "seconds": dataclasses.asdict(s._stats.seconds)},
        }  # fmt: skip
        return {
            "session": session,
            "kv": s._kv.state_dict(),
            "vit_cache": fc.state_dict() if fc is not None else None,
            "prune": s._pruner.state_dict(),
        }

    def _restore_tree(self, tree: dict[str, Any]) -> None:
        s: Any = self
        device = s.adapter.device
        s._kv.load_state(tree["kv"])
        if (tree["vit_cache"] is None) != (s._feature_cache is None):
            raise ValueError("the ViT cache policy differs from the saved one")
        if s._feature_cache is not None:
            s._feature_cache.load_state(tree["vit_cache"], device)
        s._pruner.load_state(tree["prune"], device)
        st = tree["session"]
        s._pending = [_frame_of(f) for f in st["pending"]]
        s._latest = _frame_of(st["latest"]) if st["latest"] is not None else None
        s._frame_shape = tuple(st["frame_shape"]) if st["frame_shape"] is not None else None
        s._size = tuple(st["size"]) if st["size"] is not None else None
        s._grid_hw = tuple(st["grid_hw"])
        s._max_position = int(st["max_position"])  # older snapshots also hold an unused "stored_end"
        s._prompt_ids = [int(i) for i in st["prompt_ids"]]
        s._place0 = ChunkPlace(*st["place0"])
        s._stand_ins.load_state(st.get("stand_ins"))
        stats = dict(st["stats"])
        s._stats.seconds = StageSeconds(**stats.pop("seconds"))
        load_fields(s._stats, stats)
        s._stats.kv_tokens, s._stats.kv_bytes = s._kv.stats.tokens, s._kv.stats.bytes


def _frame_state(frame: Frame) -> dict[str, Any]:
    return {"data": torch.from_numpy(np.ascontiguousarray(frame.data)), "pts": frame.pts_seconds,
            "source_id": frame.source_id}  # fmt: skip


def _frame_of(state: dict[str, Any]) -> Frame:
    return Frame(state["data"].numpy().copy(), float(state["pts"]), state["source_id"])


def _section(manifest: dict[str, Any], name: str, path: str | Path) -> dict[str, Any]:
    """The manifest's `name` object; a manifest without it (hand-edited, or not a session's) is corrupt."""
    part = manifest.get(name)
    if not isinstance(part, dict):
        raise SnapshotError(f"the snapshot at {path} is corrupt: its manifest has no {name!r} object")
    return part


def _identity(adapter: VideoLMAdapter) -> dict[str, str]:
    return {"fingerprint": adapter.fingerprint(), "family": adapter.family, "dtype": str(adapter.dtype)}


def _check_identity(saved: dict[str, Any], adapter: VideoLMAdapter, path: str | Path) -> None:
    mine = _identity(adapter)
    if saved.get("fingerprint") != mine["fingerprint"]:
        raise SnapshotError(
            f"the snapshot at {path} was taken with another model ({saved.get('family')}, "
            f"{saved.get('fingerprint')}) than this one ({mine['family']}, {mine['fingerprint']}): "
            "restore it onto the checkpoint it was saved with"
        )
    if saved.get("dtype") != mine["dtype"]:
        raise SnapshotError(
            f"the snapshot at {path} holds KV in {saved.get('dtype')}, the model runs in {mine['dtype']}: "
            f"load the model with that dtype"
        )


def config_to_json(config: SessionConfig) -> dict[str, Any]:
    """A resolved `SessionConfig` as JSON values (the prune budget as its string)."""
    out = dataclasses.asdict(config)
    out["prune"]["budget"] = str(config.prune.budget)  # type: ignore[union-attr]
    out["kv_budget"] = None  # already applied to out["kv"]["tiers"]
    model = out.get("model")
    if isinstance(model, str) and model and Path(model).expanduser().exists():  # a local checkpoint: loadable from
        out["model"] = str(Path(model).expanduser().resolve())  # any working directory (a hub id stays as it is)
    return out


def config_from_json(values: dict[str, Any]) -> SessionConfig:
    """The `SessionConfig` `config_to_json` wrote."""
    try:
        values = dict(values)
        kv = dict(values.pop("kv"))
        if "tiers" in kv:
            kv["tiers"] = KVTiers(**kv["tiers"])
        prune, vit_cache = values.pop("prune"), values.pop("vit_cache")
        return SessionConfig(
            **values,
            vit_cache=ViTCacheConfig(**vit_cache),
            prune=PRUNERS.config_class(prune["strategy"])(**prune),
            kv=KV_POLICIES.config_class(kv["policy"])(**kv),
        )
    except (TypeError, KeyError, ConfigError) as e:
        raise SnapshotError(f"the snapshot's session config cannot be read: {type(e).__name__}: {e}") from e


def _with_overrides(config: SessionConfig, spill_dir: str | None, overrides: dict[str, Any]) -> SessionConfig:
    refused = sorted(set(overrides) - set(OVERRIDABLE) - {"vit_recompute"})
    if refused:
        raise ConfigError(
            f"a restored session keeps its saved {', '.join(refused)} (what it stored depends on them); "
            f"Session.load may change only {', '.join(OVERRIDABLE)}, vit_recompute and spill_dir"
        )
    overrides = dict(overrides)
    if "vit_recompute" in overrides:  # the ViT cache's own execution path (`ViTCacheConfig.recompute`)
        vit_cache = config.vit_cache
        assert isinstance(vit_cache, ViTCacheConfig)  # resolved by SessionConfig
        overrides["vit_cache"] = dataclasses.replace(vit_cache, recompute=overrides.pop("vit_recompute"))
    config = dataclasses.replace(config, **overrides) if overrides else config
    tiers = getattr(config.kv, "tiers", None)
    if spill_dir is not None and tiers is not None:
        config = dataclasses.replace(config, kv=dataclasses.replace(config.kv, tiers=dataclasses.replace(tiers, spill_dir=spill_dir)))
    return config
