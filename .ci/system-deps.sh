#!/usr/bin/env bash
# System packages the tests need beyond pip: a GStreamer RTSP server (run with the system python3) that
# tests/rtsp_server.py uses to serve a real H.264 clip over RTSP on 127.0.0.1, and Debian's Chromium that
# tests/test_serve_page.py drives headless through Playwright (which must not download a browser of its own).
# Idempotent; needs root.
set -euo pipefail
packages=(
    python3-gi                  # GObject introspection for /usr/bin/python3
    gir1.2-gst-rtsp-server-1.0  # GstRtspServer (pulls gstreamer and its base typelibs)
    gstreamer1.0-plugins-base   # core RTP/SDP helpers
    gstreamer1.0-plugins-good   # qtdemux (mp4), rtph264pay, udp and rtpmanager elements
    chromium                    # /usr/bin/chromium, headless with a fake camera (y4m) for the serve page test
    fonts-dejavu-core           # a font for the page's text in screenshots (chromium only recommends fonts)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
/usr/bin/python3 - <<'PY'
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer  # noqa: F401
Gst.init(None)
missing = [e for e in ("qtdemux", "rtph264pay") if Gst.ElementFactory.find(e) is None]
assert not missing, f"GStreamer elements missing: {missing}"
print("system-deps: RTSP server ready")
PY
version=$(/usr/bin/chromium --version) || { echo "system-deps: /usr/bin/chromium does not run" >&2; exit 1; }
echo "system-deps: ${version}"
