"""Load a Hugging Face checkpoint (local path or hub id, safetensors) into the adapter for its family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from ..kernels import KernelUnavailableError
from ..kernels._backend import check_forced
from ..registry import Registry
from .devices import check_device
from .hub import looks_like_path, resolve_offline, typo_or_hub_hint

logger = logging.getLogger(__name__)

MODEL_FAMILIES: Registry = Registry("model family", error=ModelLoadError)
"""transformers `model_type` -> the adapter class for that family (imported on first use)."""
MODEL_FAMILIES.register("qwen2_5_vl", "livevlm.models.qwen_vl:QwenVLAdapter")
MODEL_FAMILIES.register("qwen2_vl", "livevlm.models.qwen_vl:Qwen2VLAdapter")
MODEL_FAMILIES.register("llava_onevision", "livevlm.models.llava_onevision:LlavaOnevisionAdapter")
MODEL_FAMILIES.register("smolvlm", "livevlm.models.smolvlm:SmolVLMAdapter")
MODEL_FAMILIES.register("qwen3_vl", "livevlm.models.qwen3_vl:Qwen3VLAdapter")


def register_model_family(model_type: str, adapter: Any) -> None:
    """Register an adapter class (or "module:attr") for a transformers `model_type`."""
    MODEL_FAMILIES.register(model_type, adapter)


def supported_families() -> list[str]:
    return MODEL_FAMILIES.names()


def _resolve_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except (KeyError, TypeError):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def default_model_path() -> Path:
    """The bundled default: the yardstick Qwen2.5-VL trained on the synthetic shapes world (tools/yardstick/)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "yardstick"
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(
            f"the bundled default model is missing from {path} (a broken install?); reinstall livevlm, "
            "pass a checkpoint with --model, or rebuild it from a source checkout with "
            "`python -m tools.yardstick.train`"
        )
    return path


def checkpoint_pixel_bounds(name: str) -> dict[str, int]:
    """min/max pixels per frame from the checkpoint's `video_preprocessor_config.json`, as HF's Qwen2-VL video
    processor reads them (`size.shortest_edge/longest_edge`, or the older `min_pixels/max_pixels`); {} if absent."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(
            name, "video_preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        return {}
    if path is None:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable video_preprocessor_config.json in {name!r}: {exc}") from exc
    size = cfg.get("size") or {}
    bounds = {
        "min_pixels": size.get("shortest_edge", cfg.get("min_pixels")),
        "max_pixels": size.get("longest_edge", cfg.get("max_pixels")),
    }
    return {k: int(v) for k, v in bounds.items() if v is not None}


def _read_json(name: str, filename: str) -> dict:
    """`filename` of checkpoint `name` as a dict; {} when absent or unreadable (the loader reports that)."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
        data = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def processor_config(name: str) -> dict:
    """The checkpoint's preprocessor_config.json overlaid with its video_preprocessor_config.json ({} if neither):
    what its HF processor reads for frame size, mean and std."""
    return {**_read_json(name, "preprocessor_config.json"), **_read_json(name, "video_preprocessor_config.json")}


def _refuse_own_code(name: str) -> None:
    """Refuse, before transformers parses it, an unsupported checkpoint whose config.json names its own code."""
    raw = _read_json(name, "config.json")
    model_type = raw.get("model_type")
    if model_type in MODEL_FAMILIES:
        if "auto_map" in raw:
            logger.warning("%s: ignoring auto_map; loading transformers' own %s code", name, model_type)
        return
    if "auto_map" in raw:
        raise ModelLoadError(
            f"model {name!r} has model_type {model_type!r} and ships its own code (auto_map in config.json); "
            f"livevlm never runs a checkpoint's own code; supported: {', '.join(supported_families())}"
        )


def _load_config(name: str):
    from transformers import AutoConfig

    _refuse_own_code(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if Path(name).exists():
            hint = first
        elif looks_like_path(name):
            hint = "no such directory"
        else:  # a typo'd local folder and a hub id look alike: say both
            hint = typo_or_hub_hint(name, first)
        raise ModelLoadError(f"cannot load model config from {name!r}: {hint}") from exc
    if config.model_type not in MODEL_FAMILIES:
        raise ModelLoadError(
            f"model {name!r} has model_type {config.model_type!r}; supported: {', '.join(supported_families())}"
        )
    return config


def _check_tokenizer_files(name: str) -> None:
    """A local checkpoint must ship tokenizer.json, or vocab.json and merges.txt."""
    folder = Path(name)
    if not folder.is_dir() or (folder / "tokenizer.json").is_file():
        return
    slow = ("vocab.json", "merges.txt")
    missing = [f for f in slow if not (folder / f).is_file()]
    if len(missing) == len(slow):
        raise ModelLoadError(
            f"no tokenizer in {str(folder)!r}: missing tokenizer.json (or vocab.json and merges.txt); "
            "copy the tokenizer files of the model it was trained from into that directory"
        )
    if missing:
        (have,) = set(slow) - set(missing)
        raise ModelLoadError(
            f"incomplete tokenizer in {str(folder)!r}: has {have} but missing {missing[0]} (and no tokenizer.json)"
        )


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return [folder / "model.safetensors"]
    shards = _read_json(str(folder), index.name).get("weight_map", {}).values()
    return [folder / shard for shard in sorted(set(shards))]


def _check_weight_files(name: str) -> None:
    """Open the header of each safetensors file of a local checkpoint: a damaged one is named, not traced back."""
    from safetensors import SafetensorError, safe_open

    folder = Path(name)
    if not folder.is_dir():
        return  # a hub id: checked as it loads
    for path in _weight_files(folder):
        if not path.is_file():
            continue  # from_pretrained says what is missing
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as exc:
            raise ModelLoadError(
                f"{str(path)!r} is corrupt or truncated ({exc}); re-download or re-save the checkpoint"
            ) from exc


def _load_weights(name: str, config, dtype, device: str):
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText

    from ..kernels.attention import GROUPED_SDPA, attention_choice, grouped_choice
    from ..kernels.packed_linear import pack_linears
    from .grouped_sdpa import enable_grouped_sdpa

    _check_weight_files(name)
    attention = attention_choice(device, getattr(config, "dtype", None) if dtype == "auto" else dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            name, config=config, dtype=dtype, use_safetensors=True, trust_remote_code=False,
            attn_implementation=attention.backend,
        ).to(device)
    except SafetensorError as exc:
        raise ModelLoadError(f"the weights of {name!r} are corrupt or truncated: {exc}") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the weights of {name!r}: {exc}") from exc
    if grouped_choice(device, getattr(config, "dtype", None) if dtype == "auto" else dtype).backend == GROUPED_SDPA:
        enable_grouped_sdpa(model.get_decoder())  # grouped KV heads: fold query heads instead of repeating KV
    head = tuple(m for m in (model.get_output_embeddings(),) if m is not None)  # often tied to the embeddings
    pack_linears(model, skip=head)  # bf16 on a CPU: every other linear packed once, bit-identical products
    return model


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {exc}") from exc
    # the session checks the context itself (ContextOverflowError); the tokenizer's own length warning, printed
    # for a long question before that clear error, is noise (nothing here truncates by model_max_length)
    tokenizer.model_max_length = max(int(tokenizer.model_max_length or 0), 1 << 60)
    return tokenizer


def _check_pixel_bounds(min_pixels: object, max_pixels: object) -> None:
    """`min_pixels` / `max_pixels` given to `load_model`: None or ints >= 784 (one 28x28 patch), min <= max."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 28 * 28):
            raise ConfigError(f"{name} must be an int >= 784 (one 28x28 patch) or None, got {value!r}")
    if isinstance(min_pixels, int) and isinstance(max_pixels, int) and min_pixels > max_pixels:
        raise ConfigError(f"min_pixels ({min_pixels}) must not be above max_pixels ({max_pixels})")


def load_model(
    name_or_path: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto", **adapter_kwargs: Any
):
    """Load `name_or_path` (None: the bundled default) and wrap it in its family's adapter.

    Never runs code shipped with a checkpoint and never reads stdin. The device, dtype and LIVEVLM_KERNELS are
    checked first, then the config, the family's adapter class, tokenizer files and safetensors headers, and only
    then are the weights read. A hub id with the hub unreachable loads from the local cache without retrying.
    Frame pixel bounds come from the checkpoint's video processor config when it has one; `min_pixels` /
    `max_pixels` in `adapter_kwargs` override them."""
    torch_dtype = _resolve_dtype(dtype)
    check_device(device)
    _check_pixel_bounds(adapter_kwargs.get("min_pixels"), adapter_kwargs.get("max_pixels"))
    try:  # a bad LIVEVLM_KERNELS fails here, not at the first question after a whole ingest
        check_forced(device)
    except (ValueError, KernelUnavailableError) as exc:
        raise ConfigError(str(exc)) from None
    name = resolve_offline(str(default_model_path() if name_or_path is None else name_or_path))
    config = _load_config(name)
    adapter_cls = MODEL_FAMILIES.load(config.model_type)  # a registered family that does not import: before weights
    _check_tokenizer_files(name)
    model = _load_weights(name, config, torch_dtype, device)
    tokenizer = _load_tokenizer(name)
    bounds = getattr(adapter_cls, "pixel_bounds", checkpoint_pixel_bounds)  # a family may read them its own way
    adapter_kwargs = {**bounds(name), **{k: v for k, v in adapter_kwargs.items() if v}}
    return adapter_cls(model, tokenizer, **adapter_kwargs)
