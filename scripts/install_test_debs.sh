#!/usr/bin/env bash
# make test: the Debian packages some tests use, installed when root can apt-get them (else those tests skip and
# say why; under CI=true the AVX2-kernel tests fail instead). Only what is missing is installed.
#   qemu-user-static      ONNX Runtime's AVX2 kernels (no VNNI) on any x86 host  (tests/calibration/test_kernel_portability.py)
#   gst-rtsp-server + gi  a real RTSP server for alexnet-stream in and out        (tests/stream/test_stream_live.py, _outputs.py)
#   python3-numpy         the system numpy 1.x a Jetson-style venv must keep     (tests/project/test_jetson_install.py)
set -u
DEBS=(qemu-user-static gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good
      gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly python3-numpy)
command -v dpkg-query >/dev/null || exit 0
missing=()
for d in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "make test: not root (or no apt-get): ${missing[*]} not installed; the tests that need them skip and say why"
    exit 0
fi
echo "make test: installing ${missing[*]} (apt-get) for the tests that use them"
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null; } || echo "make test: could not install ${missing[*]}; the tests that need them skip and say why"
exit 0
