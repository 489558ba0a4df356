"""Helpers of scripts/check_aarch64.sh, run both on the x86 host and inside the emulated arm64 root.

    inputs WORK                          test images (WORK/images) and a short lossless video (WORK/digits.mkv)
    logits MODEL IMAGES OUT.json         logits of every image through the torch-free runtime (ONNX Runtime CPU)
    compare X86.json ARM.json PRED.json  logits within LOGIT_TOLERANCE, same top-1, alexnet-predict agrees
    compare-stream X86.jsonl ARM.jsonl ANNOTATED.mp4   same frames and per-frame top-1; the output video decodes
    serve URL IMAGES PRED.json TIMEOUT_S one classify request to a running alexnet-serve, same label as predict

Only numpy, Pillow and the runtime are imported at the top: the arm64 root has '.[runtime,serve]' and no torch.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# aarch64 ONNX Runtime (MLAS NEON kernels) vs x86 (AVX2/AVX-512): same math, other summation order.
LOGIT_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-4
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 24, 64, 12


def inputs(work: str) -> None:
    """Digits and two scikit-image photos as PNG files; 24 digit frames as a lossless FFV1 video (needs the
    host's sklearn/skimage/av, i.e. the dev environment; the video is skipped without PyAV)."""
    from PIL import Image
    from skimage import data

    from alexnet_deploy.data.datasets import load_digits

    out = Path(work) / "images"
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits("heldout")
    for i in range(10):
        digits.image(i).convert("RGB").resize((64, 64)).save(out / f"digit{i:02d}.png")
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((128, 128)).save(out / f"{name}.png")
    try:
        import av
    except ImportError:
        print("note: PyAV not installed on the host; no test video written")
        return
    with av.open(str(Path(work) / "digits.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv444p"
        for i in range(VIDEO_FRAMES):
            img = digits.image(i).convert("RGB").resize((VIDEO_SIZE, VIDEO_SIZE))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def logits(model: str, images: str, out: str) -> None:
    import platform

    from alexnet_deploy.runtime.preprocess import find_images, load_image, model_batch
    from alexnet_deploy.runtime.runners import open_runner

    files = find_images([images])
    with open_runner(model, "ort") as runner:
        x = model_batch([load_image(f) for f in files], runner.metadata)
        y = runner.infer(x)
        names = runner.metadata.class_names
    Path(out).write_text(json.dumps({
        "machine": platform.machine(), "files": [Path(f).name for f in files],
        "logits": y.astype(float).tolist(), "top1": [names[i] for i in y.argmax(1)]}))
    print(f"{platform.machine()}: {len(files)} images through {Path(model).name}")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(x86_path: str, arm_path: str, predict_path: str) -> None:
    x86, arm = json.loads(Path(x86_path).read_text()), json.loads(Path(arm_path).read_text())
    if arm["machine"] != "aarch64":
        sys.exit(f"the 'aarch64' logits were computed on {arm['machine']}")
    if x86["files"] != arm["files"]:
        sys.exit(f"different image lists: {x86['files']} vs {arm['files']}")
    a, b = np.asarray(x86["logits"]), np.asarray(arm["logits"])
    diff = float(np.abs(a - b).max())
    if not diff <= LOGIT_TOLERANCE or x86["top1"] != arm["top1"]:
        sys.exit(f"logits differ by up to {diff:.3g} (tolerance {LOGIT_TOLERANCE}); top-1 x86 {x86['top1']} "
                 f"vs aarch64 {arm['top1']}")
    # alexnet-predict --json (run on aarch64) against the x86 probabilities, label by label
    pred = json.loads(Path(predict_path).read_text())["results"]
    probs = _softmax(a)
    pdiff = 0.0
    for row, p in zip(pred, probs):
        for t in row["top"]:
            pdiff = max(pdiff, abs(t["probability"] - float(p[t["index"]])))
    top1 = [row["top"][0]["label"] for row in pred]
    if [Path(r["image"]).name for r in pred] != x86["files"] or top1 != x86["top1"] or not pdiff <= PROBABILITY_TOLERANCE:
        sys.exit(f"alexnet-predict on aarch64 disagrees with x86: top-1 {top1} vs {x86['top1']}, "
                 f"probabilities up to {pdiff:.3g} apart")
    print(f"{Path(x86_path).name.split('.')[0]}: {len(a)} images, max |logit x86 - aarch64| = {diff:.3g}, "
          f"alexnet-predict probabilities within {pdiff:.3g}, top-1 identical")


def compare_stream(x86_path: str, arm_path: str, annotated: str) -> None:
    def top1(path):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return [(r["frame"], r["top"][0]["label"]) for r in rows]

    x86, arm = top1(x86_path), top1(arm_path)
    if len(arm) != VIDEO_FRAMES or x86 != arm:
        sys.exit(f"stream: {len(arm)} aarch64 frames (expected {VIDEO_FRAMES}); "
                 f"{sum(a != b for a, b in zip(x86, arm))} differ from x86")
    import av

    with av.open(annotated) as container:
        frames = sum(1 for _ in container.decode(video=0))
    if frames != VIDEO_FRAMES:
        sys.exit(f"the annotated video has {frames} frames, expected {VIDEO_FRAMES}")
    print(f"stream: {len(arm)} frames, per-frame top-1 identical to x86; annotated video decodes ({frames} frames)")


def serve(url: str, images: str, predict_path: str, timeout_s: str) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + float(timeout_s)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"alexnet-serve was not ready within {timeout_s} s")
        time.sleep(1)
    first = json.loads(Path(predict_path).read_text())["results"][0]
    body = (Path(images) / Path(first["image"]).name).read_bytes()
    t = time.perf_counter()
    req = urllib.request.Request(f"{url}/models/alexnet/classify", data=body, method="POST",
                                 headers={"content-type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.loads(r.read())
    ms = (time.perf_counter() - t) * 1e3
    got, want = answer["top"][0], first["top"][0]
    if got["label"] != want["label"] or abs(got["probability"] - want["probability"]) > PROBABILITY_TOLERANCE:
        sys.exit(f"alexnet-serve answered {got} for {first['image']}, alexnet-predict said {want}")
    print(f"serve: classify {Path(first['image']).name} -> {got['label']} ({got['probability']:.4f}) in {ms:.0f} ms, "
          "same as alexnet-predict")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"inputs": inputs, "logits": logits, "compare": compare, "compare-stream": compare_stream,
                "serve": serve}
    if not argv or argv[0] not in commands:
        sys.exit(__doc__)
    commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    main()
