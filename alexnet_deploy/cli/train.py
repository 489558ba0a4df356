"""`alexnet-train` command."""
from __future__ import annotations

import click

from alexnet_deploy.cli.common import (
    VARIANT_HELP,
    _handle_errors,
    _setup_logging,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--variant", default="cifar10", show_default=True, help=VARIANT_HELP)
@click.option("--dataset", default="digits", show_default=True,
              help="digits (embedded) | CIFAR-10 python-batch folder | ImageFolder tree.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="Checkpoint to write (.pt or .safetensors).")
@click.option("--weights", default="random", show_default=True,
              help="Initial weights: random | PATH (a checkpoint, or a Keras .keras / .h5 / .weights.h5).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="Peak learning rate (one-cycle schedule), SGD with momentum.")
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def train_cmd(variant, dataset, output, weights, epochs, batch_size, lr, momentum, weight_decay, seed, threads,
              no_progress):
    """Train an AlexNet variant with SGD + momentum and write a checkpoint (atomically)."""
    _setup_logging()
    from alexnet_deploy.data.datasets import load_dataset
    from alexnet_deploy.fileio import check_writable, refuse_overlapping_paths
    from alexnet_deploy.training.train import TrainConfig, model_for_dataset, train

    refuse_overlapping_paths(inputs={"--weights": None if weights == "random" else weights, "--dataset": dataset},
                             outputs={"--output": output})
    check_writable(output, "--output")
    train_set, held = load_dataset(dataset, "train"), load_dataset(dataset, "heldout")
    loaded = model_for_dataset(variant, weights, train_set, seed)
    if "keras" in loaded.info:  # fine-tuning a Keras import
        if loaded.info.get("preprocessing_unknown"):
            from alexnet_deploy.errors import UserInputError
            from alexnet_deploy.models.keras_h5 import preprocessing_unknown_message

            raise UserInputError(preprocessing_unknown_message(weights, options=False))
        if loaded.softmax:  # checkpoints of the non-plain variants carry logits; the export can add softmax back
            loaded.softmax = False
            loaded.model.softmax = False
            click.echo("note: the Keras model's final softmax is dropped: the checkpoint outputs logits")
    click.echo(f"training {loaded.variant} on {dataset}: {len(train_set)} train / {len(held)} held-out images, "
               f"{len(train_set.class_names)} classes")
    result = train(loaded, train_set, held, TrainConfig(epochs, batch_size, lr, momentum, weight_decay, seed, threads),
                   output, progress=not no_progress)
    click.echo(f"held-out accuracy {result.heldout_accuracy:.2%} after {epochs} epochs in {result.seconds:.1f} s; "
               f"checkpoint: {result.checkpoint}")
