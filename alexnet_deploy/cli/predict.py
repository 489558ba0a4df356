"""`alexnet-predict` command."""
from __future__ import annotations

import json
import os
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
@click.option("--max-pixels", type=click.IntRange(min=0), default=None,
              help="Refuse images whose header declares more pixels (default 50000000, as alexnet-serve; 0: no limit).")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def predict_cmd(model, images, top_k, engine, variant, batch_size, as_json, rebuild_if_stale, max_pixels):
    """Classify images (files or folders) with a checkpoint, an ONNX model or an engine.

    An image that cannot be read (corrupt, not an image, over --max-pixels) is reported on stderr and skipped;
    the exit code is then 2 after the others are classified."""
    _setup_logging()
    from tqdm import tqdm

    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.fileio import printable_path
    from alexnet_deploy.runtime.postprocess import to_probabilities, topk
    from alexnet_deploy.runtime.preprocess import DEFAULT_MAX_PIXELS, find_images, load_image, model_batch
    from alexnet_deploy.runtime.runners.factory import open_runner

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None)
    files = find_images(images)
    from alexnet_deploy.exporter.rebuild import rebuild_engine  # the builder a stale engine is rebuilt with

    runner = open_runner(model, engine, variant=variant, rebuild_if_stale=rebuild_if_stale,
                         rebuild=rebuild_engine if rebuild_if_stale else None)
    if len(files) == 1:  # one image: a bad one is the command's error, before the model is activated
        load_image(files[0], max_pixels=limit, name=printable_path(files[0]))
    meta = runner.metadata
    results, skipped = [], []
    with runner:
        step = min(batch_size, runner.max_batch or batch_size)
        for i in tqdm(range(0, len(files), step), disable=len(files) <= step, desc="predict", file=sys.stderr):
            chunk, imgs = [], []
            for f in files[i: i + step]:
                try:
                    if not os.path.isfile(f):  # a FIFO or device named *.png would block the decoder
                        raise UserInputError(f"{printable_path(f)} is not a regular file")
                    imgs.append(load_image(f, max_pixels=limit, name=printable_path(f)))
                    chunk.append(f)
                except UserInputError as exc:  # ImageTooLargeError included: report, skip, go on
                    skipped.append(f)
                    click.echo(f"error: {exc}; skipped", err=True)
            if not chunk:
                continue
            probs = to_probabilities(runner.infer_batches(model_batch(imgs, meta), step), meta.output_kind)
            results += [{"image": printable_path(f), "top": t}
                        for f, t in zip(chunk, topk(probs, top_k, meta.class_names))]
    if as_json:
        click.echo(json.dumps({"model": printable_path(model), "engine": runner.describe(), "results": results,
                               "skipped": [printable_path(f) for f in skipped]}, indent=2))
    else:
        for r in results:
            best = r["top"][0]
            rest = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"][1:])
            click.echo(f"{r['image']}: {best['label']} ({best['probability']:.3f})" + (f"  [{rest}]" if rest else ""))
    if skipped:
        click.echo(f"error: {len(skipped)} of {len(files)} images could not be read (listed above)", err=True)
        sys.exit(2)
