"""`WebcamSource`: a local camera through FFmpeg's device inputs, by index or by name.

Linux   v4l2          /dev/video<index>, a /dev path, or the card name from /sys/class/video4linux/*/name
macOS   avfoundation  "<index or name>:none" (no audio)
Windows dshow         "video=<name>" (dshow opens cameras by name only)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError, DeviceNotFoundError, SourceError
from .config import WebcamConfig
from .live import AVLiveSource, OpenSpec

_V4L2_SYSFS = Path("/sys/class/video4linux")
_COMPRESSED = ("mjpeg", "h264")


def linux_devices(dev_root: Path = Path("/dev"), sysfs: Path = _V4L2_SYSFS) -> dict[str, str]:
    """Video4Linux devices present on this machine: {'/dev/video0': 'card name', ...}."""
    found = {}
    for path in sorted(dev_root.glob("video[0-9]*")):
        name_file = sysfs / path.name / "name"
        found[str(path)] = name_file.read_text().strip() if name_file.is_file() else ""
    return found


def _linux_path(device: int | str, devices: dict[str, str]) -> str:
    """The /dev path of `device` (an index, a path or a card name), or DeviceNotFoundError."""
    if isinstance(device, int):
        path = f"/dev/video{device}"
    elif device.startswith("/"):
        path = device
    else:
        by_name = [p for p, name in devices.items() if name == device]
        if not by_name:
            raise DeviceNotFoundError(f"no camera named {device!r}; {_describe(devices)}")
        path = by_name[0]
    if path not in devices and not Path(path).exists():
        raise DeviceNotFoundError(f"camera {device!r} not found: {path} does not exist; {_describe(devices)}")
    return path


def _describe(devices: dict[str, str]) -> str:
    if not devices:
        return "this machine has no video devices (/dev/video*)"
    return "available: " + ", ".join(f"{p} ({n})" if n else p for p, n in devices.items())


def webcam_spec(config: WebcamConfig, devices: dict[str, str] | None = None) -> OpenSpec:
    """The `av.open` arguments that open `config.device` on `config.platform` (default: this machine's)."""
    platform = config.platform or ("darwin" if sys.platform == "darwin" else sys.platform)
    options: dict[str, str] = {}
    if config.capture_size is not None:
        options["video_size"] = f"{config.capture_size[0]}x{config.capture_size[1]}"
    if config.capture_fps is not None:
        options["framerate"] = f"{config.capture_fps:g}"
    if platform.startswith("linux"):
        if config.input_format is not None:
            options["input_format"] = config.input_format
        path = _linux_path(config.device, linux_devices() if devices is None else devices)
        return OpenSpec(path, "v4l2", options)
    if platform == "darwin":
        options.setdefault("framerate", "30")  # avfoundation rejects FFmpeg's default 29.97 on most cameras
        if config.input_format is not None:
            options["pixel_format"] = config.input_format
        return OpenSpec(f"{config.device}:none", "avfoundation", options)
    if platform == "win32":
        if isinstance(config.device, int):
            raise ConfigError(
                "dshow opens cameras by name: pass WebcamConfig(device='Integrated Camera'); list the names "
                "with `ffmpeg -list_devices true -f dshow -i dummy`"
            )
        if config.input_format is not None:
            key = "vcodec" if config.input_format in _COMPRESSED else "pixel_format"
            options[key] = config.input_format
        return OpenSpec(f"video={config.device}", "dshow", options)
    raise ConfigError(f"no camera input for platform {platform!r} (linux, darwin and win32 are supported)")


class WebcamSource(AVLiveSource):
    """Sampled frames from a local camera; a camera that vanishes is reopened with backoff."""

    def __init__(self, config: WebcamConfig) -> None:
        self.config = config
        spec = webcam_spec(config)
        super().__init__(
            spec,
            source_id=f"webcam:{config.device}",
            fps=config.fps,
            live=True,
            open_timeout=config.open_timeout,
            read_timeout=config.read_timeout,
            reconnect=config.reconnect,
            max_frames=config.max_frames,
            max_input_pixels=config.max_input_pixels,
        )

    def _not_found(self, error: Exception) -> SourceError:
        if self.spec.format == "v4l2":
            hint = _describe(linux_devices())
        else:
            hint = f'list the cameras with `ffmpeg -f {self.spec.format} -list_devices true -i ""`'
        return DeviceNotFoundError(f"camera {self.config.device!r} not found ({error}); {hint}")
