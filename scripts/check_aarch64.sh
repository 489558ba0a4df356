#!/usr/bin/env bash
# make check-aarch64: prove the torch-free runtime on aarch64 (the CPU of every Jetson) on an x86 machine.
#
# Builds (once, then cached) a Debian bookworm arm64 root with debootstrap, runs it under qemu-user-static
# through binfmt_misc, installs '.[runtime,serve]' (+ [stream] when the project has it) there from PyPI's
# aarch64 wheels, and checks, against the same model run by x86 ONNX Runtime on this host:
#   1. alexnet-predict (FP32 and INT8 QDQ): logits within tolerance of x86's (FP32 1e-4; INT8 a few of the
#      last layer's quantization steps, from the model's scales), same top-1, same JSON labels
#   2. alexnet-verify: a deployment folder built on this x86 host by alexnet-deploy (digits-trained checkpoint,
#      FP32/FP16/INT8 ONNX, golden set) passes every gate on aarch64 with [runtime] only
#   3. alexnet-stream on a short video: same per-frame top-1 as on x86 (skipped, saying why, without [stream])
#   4. alexnet-bench --engine ort: runs, and its output is marked emulated
#   5. alexnet-serve: one classify request answered with the same label as alexnet-predict
#   6. a Jetson-style venv (--system-site-packages) over Debian's python3-opencv (GStreamer) and numpy 1.x:
#      '.[runtime,build,serve,stream]' keeps both, and alexnet-stream classifies a videotestsrc pipeline
# Needs root (debootstrap, chroot, mount) and network access to Debian and PyPI. Exits non-zero on the first
# failure with one line saying what failed; prints the time each stage took.
#
# Environment: AARCH64_CACHE (default /var/cache/alexnet-deploy/aarch64: the arm64 root with pip's cache),
# DEBIAN_MIRROR, PYTHON (the host venv's python, for exporting the model and the x86 reference), KEEP=1 keeps
# the work folder.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${AARCH64_CACHE:-/var/cache/alexnet-deploy/aarch64}
MIRROR=${DEBIAN_MIRROR:-}  # empty: debootstrap's default Debian mirror
SUITE=bookworm
HOST_PY=${PYTHON:-$REPO/.venv/bin/python}
HOST_BIN=$(dirname "$HOST_PY")
ROOT=$CACHE/bookworm-arm64  # holds .alexnet-deploy-root once debootstrap finished
START=$(date +%s)
STAGE_START=$START
TIMINGS=()

die() { echo "check-aarch64: FAILED: $*" >&2; exit 1; }
stage() {  # stage NAME: close the previous stage's timer
    local now; now=$(date +%s)
    TIMINGS+=("$(printf '%-34s %5ss' "$1" $((now - STAGE_START)))")
    echo "check-aarch64: $1 done in $((now - STAGE_START)) s"
    STAGE_START=$now
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mount); run: sudo make check-aarch64"
[ "$(uname -m)" = x86_64 ] || die "meant for an x86_64 host (on an aarch64 machine, just pip install and run the tests)"
[ -x "$HOST_PY" ] || die "no host Python at $HOST_PY; run make install first (or set PYTHON=)"
# onnxruntime's cpuinfo complains on every start without /sys (see below): keep those lines off the output
exec 3>&2 2> >(grep --line-buffered -v -e '^Error in cpuinfo' -e 'cpuinfo_initialize failed' -e 'cpuid_info warning' >&2)
trap '' PIPE  # a signal to the whole group ends that filter first: no SIGPIPE death before the cleanup

# ---------------------------------------------------------------------------------------------- host tools
if ! command -v debootstrap >/dev/null || ! command -v update-binfmts >/dev/null \
        || ! [ -e /usr/bin/qemu-aarch64-static ]; then
    echo "check-aarch64: installing debootstrap qemu-user-static binfmt-support (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        debootstrap qemu-user-static binfmt-support >/dev/null || die "apt-get install debootstrap qemu-user-static binfmt-support"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (a container needs --privileged)"
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered in binfmt_misc (update-binfmts --enable qemu-aarch64)"
stage "host tools + binfmt_misc"

# ----------------------------------------------------------------------------------- arm64 root (cached)
mkdir -p "$CACHE"
exec 4>"$CACHE/.lock"
flock -n 4 || die "another check-aarch64 is using $CACHE"
if [ ! -e "$ROOT/.alexnet-deploy-root" ]; then
    [ -e "$ROOT" ] && die "$ROOT exists but is not a finished root of this script; remove it or set AARCH64_CACHE"
    [ -e "$ROOT.tmp" ] && { [ -e "$ROOT.tmp/debootstrap" ] || [ -e "$ROOT.tmp/.alexnet-deploy-partial" ]; } \
        && rm -rf --one-file-system "$ROOT.tmp"
    [ -e "$ROOT.tmp" ] && die "$ROOT.tmp is in the way and is not a half-built root of this script"
    mkdir -p "$ROOT.tmp" && touch "$ROOT.tmp/.alexnet-deploy-partial"
    echo "check-aarch64: debootstrap --arch=arm64 $SUITE (a few minutes under emulation; cached in $CACHE)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT.tmp" $MIRROR >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -5 "$CACHE/debootstrap.log" >&2; die "debootstrap (log: $CACHE/debootstrap.log)"; }
    rm -f "$ROOT.tmp/.alexnet-deploy-partial" && touch "$ROOT.tmp/.alexnet-deploy-root"
    mv "$ROOT.tmp" "$ROOT"
    stage "debootstrap arm64 root"
else
    stage "arm64 root (cached)"
fi
[ "$(chroot "$ROOT" uname -m)" = aarch64 ] || die "the root does not run as aarch64"

rm -rf --one-file-system "${ROOT:?}"/tmp/* "$ROOT/opt/venv"  # what an interrupted run left behind
WORK=$(mktemp -d "$ROOT/tmp/check.XXXXXX")
INNER=${WORK#"$ROOT"}  # the same folder as seen inside the root
SERVER_PID=""
cleanup() {
    exec 2>&3  # the filter above may already be gone (a signal to the whole process group)
    trap '' PIPE INT TERM HUP
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    mountpoint -q "$ROOT/proc" && umount "$ROOT/proc"
    [ "${KEEP:-0}" = 1 ] && echo "check-aarch64: kept $WORK" || rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exec 2>&3; exit 130' INT TERM HUP  # stderr first: the filter may be dead (SIGPIPE)

# /proc only: bind-mounting the host's /sys makes onnxruntime segfault at import (its cpuinfo reads the
# host's x86 topology). No /dev bind mount either (a forgotten one turns a later rm -rf of the cache into a
# wipe of the host's /dev): debootstrap made the few device nodes Python and pip use.
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
for node in null zero random urandom; do [ -c "$ROOT/dev/$node" ] || die "$ROOT/dev/$node is missing"; done
# Name resolution, the host's CA bundle (it may hold a proxy's CA) and pip's configuration, so that pip
# inside reaches the same registry as pip here.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
CA=$(for f in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        [ -n "$f" ] && [ -f "$f" ] && echo "$f" && break; done)
[ -n "$CA" ] && cp -L "$CA" "$ROOT/etc/ssl/host-ca-bundle.crt"
[ -f /etc/pip.conf ] && cp -L /etc/pip.conf "$ROOT/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOT/etc/xdg" && rm -rf "$ROOT/etc/xdg/pip" && cp -rL /etc/xdg/pip "$ROOT/etc/xdg/pip"
for f in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [ -f "$f" ] && install -D -m 644 "$f" "$ROOT/root/${f#"$HOME"/}"
done
ENV=(HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
     PIP_CACHE_DIR=/var/cache/pip)  # kept in the cached root: later runs download nothing
[ -n "$CA" ] && ENV+=(PIP_CERT=/etc/ssl/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt)
while IFS='=' read -r k v; do [[ $k == PIP_* && $k != PIP_CERT ]] && ENV+=("$k=$v"); done < <(env)
inside() { chroot "$ROOT" /usr/bin/env -i "${ENV[@]}" "$@"; }

# ------------------------------------------------------------------------- the project, installed inside
rm -rf --one-file-system "$ROOT/src" && mkdir -p "$ROOT/src"
(cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
    | tar -xf - -C "$ROOT/src"
EXTRAS=runtime,serve
STREAM_SKIP=""
if grep -q '^stream *=' "$REPO/pyproject.toml" && [ -d "$REPO/alexnet_deploy/stream" ]; then
    EXTRAS+=,stream
else
    STREAM_SKIP="alexnet-stream not in this tree yet (no [stream] extra / alexnet_deploy/stream)"
fi
rm -rf --one-file-system "$ROOT/opt/venv"
inside python3 -m venv /opt/venv || die "python3 -m venv inside the root"
inside /opt/venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
inside /opt/venv/bin/pip install -q "/src[$EXTRAS]" >"$WORK/pip.log" 2>&1 \
    || { tail -15 "$WORK/pip.log" >&2; die "pip install '.[$EXTRAS]' inside the arm64 root"; }
inside /opt/venv/bin/python -c 'import torch' 2>/dev/null && die "torch ended up in the runtime install"
inside /opt/venv/bin/python -c 'import platform, onnxruntime; print("aarch64 runtime:", platform.machine(), "onnxruntime", onnxruntime.__version__)'
stage "pip install .[$EXTRAS] (aarch64)"

# ------------------------------------------------------------------- models and inputs, made on the host
"$HOST_BIN/alexnet-export" onnx --variant cifar10 --weights random --seed 0 -o "$WORK/c10.onnx" >"$WORK/export.log" 2>&1 \
    || { tail -5 "$WORK/export.log" >&2; die "alexnet-export onnx on the host"; }
"$HOST_BIN/alexnet-calibrate" "$WORK/c10.onnx" -o "$WORK/c10-int8.onnx" --dataset digits --num-images 64 \
    --eval-images 64 >"$WORK/calibrate.log" 2>&1 || { tail -5 "$WORK/calibrate.log" >&2; die "alexnet-calibrate on the host"; }
"$HOST_PY" "$REPO/scripts/aarch64_reference.py" inputs "$WORK" || die "writing the test images/video on the host"
for m in c10 c10-int8; do
    "$HOST_PY" "$REPO/scripts/aarch64_reference.py" logits "$WORK/$m.onnx" "$WORK/images" "$WORK/$m.x86.json" \
        || die "x86 reference logits for $m"
done
stage "export + calibrate + x86 reference (host)"

# ------------------------------------------------------------------------------------ 1. alexnet-predict
for m in c10 c10-int8; do
    inside alexnet-predict "$INNER/$m.onnx" "$INNER/images" --top-k 10 --json >"$WORK/$m.predict.arm64.json" \
        || die "alexnet-predict $m.onnx on aarch64"
    inside python /src/scripts/aarch64_reference.py logits "$INNER/$m.onnx" "$INNER/images" "$INNER/$m.arm64.json" || die "aarch64 logits for $m"
    "$HOST_PY" "$REPO/scripts/aarch64_reference.py" compare "$WORK/$m.x86.json" "$WORK/$m.arm64.json" \
        "$WORK/$m.predict.arm64.json" "$WORK/$m.onnx" || die "$m: aarch64 logits differ from x86's"
done
stage "alexnet-predict fp32 + int8 (aarch64)"

# -------------------------------------------------- 2. alexnet-verify of a deployment folder built on x86
# A trained model (random weights make near-tied logits, which say nothing about accuracy), deployed here with
# its golden set; the folder is copied as a user would copy it to a Jetson, and verified there torch-free.
"$HOST_BIN/alexnet-train" --variant cifar10 --dataset digits --epochs 30 --seed 0 --no-progress \
    -o "$WORK/digits.pt" >"$WORK/train.log" 2>&1 || { tail -5 "$WORK/train.log" >&2; die "alexnet-train on the host"; }
"$HOST_BIN/alexnet-deploy" --weights "$WORK/digits.pt" --out "$WORK/built-on-x86" --targets onnx \
    --batch-sizes 1,8 --bench-duration-s 0.5 --no-roofline --no-sensitivity --parity-images 300 \
    --calib-images 256 >"$WORK/deploy.log" 2>&1 || { tail -8 "$WORK/deploy.log" >&2; die "alexnet-deploy on the host"; }
"$HOST_BIN/alexnet-verify" "$WORK/built-on-x86" --json "$WORK/verify.x86.json" >"$WORK/verify.x86.txt" 2>&1 \
    || { cat "$WORK/verify.x86.txt" >&2; die "alexnet-verify of the x86-built folder on x86 itself"; }
cp -a "$WORK/built-on-x86" "$WORK/deploy-copy"  # another path: the folder must not depend on where it was built
inside alexnet-verify "$INNER/deploy-copy" --json "$INNER/verify.arm64.json" | tee "$WORK/verify.arm64.txt" \
    || die "alexnet-verify of the x86-built deployment folder on aarch64"
"$HOST_PY" "$REPO/scripts/aarch64_reference.py" verified "$WORK/verify.arm64.json" aarch64 \
    || die "alexnet-verify on aarch64"
stage "alexnet-verify x86-built folder (aarch64)"

# ------------------------------------------------------------------------------------- 3. alexnet-stream
if [ -z "$STREAM_SKIP" ]; then
    "$HOST_BIN/alexnet-stream" "$WORK/c10.onnx" "$WORK/digits.mkv" --jsonl "$WORK/stream.x86.jsonl" \
        --no-progress >/dev/null 2>"$WORK/stream.x86.err" || { cat "$WORK/stream.x86.err" >&2; die "alexnet-stream on x86"; }
    inside alexnet-stream "$INNER/c10.onnx" "$INNER/digits.mkv" --jsonl "$INNER/stream.arm64.jsonl" \
        --output "$INNER/annotated.mp4" --no-progress >/dev/null 2>"$WORK/stream.arm64.err" \
        || { cat "$WORK/stream.arm64.err" >&2; die "alexnet-stream on aarch64"; }
    tail -3 "$WORK/stream.arm64.err"
    "$HOST_PY" "$REPO/scripts/aarch64_reference.py" compare-stream "$WORK/stream.x86.jsonl" \
        "$WORK/stream.arm64.jsonl" "$WORK/annotated.mp4" || die "alexnet-stream: aarch64 frames differ from x86's"
    stage "alexnet-stream video (aarch64)"
else
    echo "check-aarch64: SKIPPED alexnet-stream: $STREAM_SKIP"
fi

# -------------------------------------------------------------------------------------- 4. alexnet-bench
inside alexnet-bench "$INNER/c10.onnx" --engine ort --batch-sizes 1,8 --duration-s 2 --warmup-ms 200 \
    --no-roofline --json "$INNER/bench.json" | tee "$WORK/bench.txt" || die "alexnet-bench on aarch64"
grep -q "EMULATED" "$WORK/bench.txt" || die "alexnet-bench did not mark its rows emulated"
"$HOST_PY" -c 'import json, sys; m = json.load(open(sys.argv[1]))["machine"]; assert m.get("emulated") == "qemu-user", m' \
    "$WORK/bench.json" || die "bench JSON lacks machine.emulated"
stage "alexnet-bench --engine ort (aarch64)"

# -------------------------------------------------------------------------------------- 5. alexnet-serve
PORT=$("$HOST_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
inside alexnet-serve "$INNER/c10.onnx" --host 127.0.0.1 --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$HOST_PY" "$REPO/scripts/aarch64_reference.py" serve "http://127.0.0.1:$PORT" "$WORK/images" \
    "$WORK/c10.predict.arm64.json" 180 || { tail -5 "$WORK/serve.log" >&2; die "alexnet-serve request on aarch64"; }
kill -TERM "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
stage "alexnet-serve request (aarch64)"

# ------------------------------------------- 6. Jetson-style install: system OpenCV (GStreamer) + numpy 1.x
# What a Jetson venv does: Debian's python3-opencv (built with GStreamer, against Debian's numpy 1.24) and the
# system numpy in a --system-site-packages venv; '.[runtime,build,serve,stream]' must install next to them without
# replacing numpy (no constraints file: pyproject alone) or bringing pip's OpenCV, and alexnet-stream classifies
# a GStreamer pipeline through that cv2.
if [ -z "$STREAM_SKIP" ]; then
    inside sh -c 'dpkg -s python3-opencv gstreamer1.0-plugins-base >/dev/null 2>&1 || { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-opencv python3-numpy \
        gstreamer1.0-plugins-base; }' >"$WORK/apt-sys.log" 2>&1 \
        || { tail -8 "$WORK/apt-sys.log" >&2; die "apt-get install python3-opencv inside the arm64 root"; }
    rm -rf --one-file-system "$ROOT/opt/venv-sys"
    inside /usr/bin/python3 -m venv --system-site-packages /opt/venv-sys || die "python3 -m venv --system-site-packages"
    inside /opt/venv-sys/bin/pip install -q "/src[runtime,build,serve,stream]" >"$WORK/pip-sys.log" 2>&1 \
        || { tail -15 "$WORK/pip-sys.log" >&2; die "pip install '.[runtime,build,serve,stream]' next to the system numpy/cv2"; }
    inside /opt/venv-sys/bin/python -c '
import re, sys, cv2, numpy, onnxruntime, av
where = {"numpy": numpy.__file__, "cv2": cv2.__file__}
bad = {k: v for k, v in where.items() if not v.startswith("/usr/lib/python3/")}
assert not bad, f"not the system module: {bad} (pip replaced it in the venv)"
assert numpy.__version__.startswith("1."), numpy.__version__
assert re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()), "this cv2 has no GStreamer"
print(f"system numpy {numpy.__version__}, system cv2 {cv2.__version__} (GStreamer), onnxruntime {onnxruntime.__version__}, PyAV {av.__version__}")
' || die "the venv does not use the system numpy 1.x and cv2"
    inside env PATH=/opt/venv-sys/bin:/usr/bin:/bin alexnet-stream "$INNER/c10.onnx" \
        "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! appsink" \
        --no-live --jsonl "$INNER/gst.arm64.jsonl" --output "$INNER/gst-frames/%03d.jpg" --no-progress \
        >/dev/null 2>"$WORK/gst.arm64.err" || { tail -5 "$WORK/gst.arm64.err" >&2; die "alexnet-stream on a GStreamer pipeline (system cv2)"; }
    "$HOST_PY" -c '
import json, pathlib, sys
recs = [json.loads(line) for line in open(sys.argv[1])]
frames = sorted(pathlib.Path(sys.argv[2]).glob("*.jpg"))
assert len(recs) == 30 and all(len(r["top"]) == 5 for r in recs), f"{len(recs)} records"
assert len(frames) == 30, f"{len(frames)} annotated frames"
print(f"GStreamer videotestsrc: {len(recs)} frames classified through the system cv2, {len(frames)} annotated JPEGs")
' "$WORK/gst.arm64.jsonl" "$WORK/gst-frames" || die "alexnet-stream GStreamer output on aarch64"
    stage "system cv2 + numpy 1.x venv, GStreamer (aarch64)"
else
    echo "check-aarch64: SKIPPED the system-OpenCV install: $STREAM_SKIP"
fi

echo
echo "check-aarch64: PASSED on $(date -u +%Y-%m-%d) in $(( $(date +%s) - START )) s ($(nproc) cores)"
printf '  %s\n' "${TIMINGS[@]}"
[ -n "$STREAM_SKIP" ] && echo "  (alexnet-stream skipped: $STREAM_SKIP)"
exit 0
