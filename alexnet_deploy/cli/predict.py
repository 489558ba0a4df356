"""`alexnet-predict` command."""
from __future__ import annotations

import json
import sys

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--engine", default=None, help="torch | torch-cuda | ort | ort-cuda | ort-trt | trt (default: from MODEL).")
@click.option("--variant", default=None, help="Variant defaults for a model without alexnet-deploy metadata.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@_handle_errors
def predict_cmd(model, images, top_k, engine, variant, batch_size, as_json, rebuild_if_stale):
    """Classify images (files or folders) with a checkpoint, an ONNX model or an engine."""
    _setup_logging()
    from tqdm import tqdm

    from alexnet_deploy.runtime.postprocess import to_probabilities, topk
    from alexnet_deploy.runtime.preprocess import (
        find_images,
        load_image,
        preprocess_batch,
    )
    from alexnet_deploy.runtime.runners.factory import open_runner

    files = find_images(images)
    runner = open_runner(model, engine, variant=variant, rebuild_if_stale=rebuild_if_stale)
    meta = runner.metadata
    results = []
    with runner:
        step = min(batch_size, runner.max_batch or batch_size)
        for i in tqdm(range(0, len(files), step), disable=len(files) <= step, desc="predict", file=sys.stderr):
            chunk = files[i: i + step]
            x = preprocess_batch([load_image(f) for f in chunk], meta.preprocessing)
            probs = to_probabilities(runner.infer_batches(x, step), meta.output_kind)
            results += [{"image": f, "top": t} for f, t in zip(chunk, topk(probs, top_k, meta.class_names))]
    if as_json:
        click.echo(json.dumps({"model": str(model), "engine": runner.describe(), "results": results}, indent=2))
        return
    for r in results:
        best = r["top"][0]
        rest = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"][1:])
        click.echo(f"{r['image']}: {best['label']} ({best['probability']:.3f})" + (f"  [{rest}]" if rest else ""))
