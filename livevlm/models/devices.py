"""Check a torch device string before any weights are read: unknown -> ConfigError, absent -> DeviceUnavailableError."""

from __future__ import annotations

from ..errors import ConfigError, DeviceUnavailableError


def available_devices() -> list[str]:
    """Devices this machine can run a model on: cpu, then each device of the available accelerator."""
    import torch

    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return ["cpu"]
    return ["cpu", *(f"{accelerator.type}:{i}" for i in range(torch.accelerator.device_count()))]


def _why_unavailable(kind: str) -> str:
    import torch

    if kind == "meta":
        return "meta tensors hold no data, so no model can run there"
    backend = {"cuda": torch.backends.cuda, "mps": torch.backends.mps}.get(kind)
    if backend is not None and not backend.is_built():
        return f"this torch build ({torch.__version__}) has no {kind} support"
    return f"no {kind} device found"


def check_device(device: str) -> str:
    """`device` unchanged if a model can run there, else a typed error listing the available devices."""
    import torch

    available = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N or mps (available here: {', '.join(available)})"
        ) from None
    if dev.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None or accelerator.type != dev.type:
        raise DeviceUnavailableError(
            f"device {device!r} is not available: {_why_unavailable(dev.type)}; available: {', '.join(available)}"
        )
    count = torch.accelerator.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceUnavailableError(
            f"device {device!r} does not exist: this machine has {count} {dev.type} device(s); "
            f"available: {', '.join(available)}"
        )
    return device

