"""SGD + momentum training loop with held-out accuracy each epoch and an atomic checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet_deploy.data.datasets import ImageDataset
from alexnet_deploy.errors import DatasetError, UserInputError
from alexnet_deploy.fileio import check_writable
from alexnet_deploy.models.weights import LoadedModel, save_checkpoint


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int | None = None


@dataclass
class TrainResult:
    heldout_accuracy: float
    train_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out = model(torch.from_numpy(x[i: i + batch_size]))
            correct += int((out.argmax(1).numpy() == y[i: i + batch_size]).sum())
    return correct / max(1, len(x))


def model_for_dataset(variant: str | None, weights: str, train_set: ImageDataset, seed: int = 0) -> LoadedModel:
    """The model to train on ``train_set``: random weights get the dataset's classes; a checkpoint to fine-tune
    must have the same class names (or unnamed classes of the same count) so its outputs keep their meaning."""
    from alexnet_deploy.data.datasets import labels_for_model
    from alexnet_deploy.models.weights import load_model

    names = list(train_set.class_names)
    if weights == "random":
        return load_model(variant, weights, num_classes=len(names), seed=seed, class_names=names)
    loaded = load_model(variant, weights, seed=seed)
    if loaded.class_names != names:
        if loaded.num_classes != len(names):
            raise DatasetError(f"{weights} has {loaded.num_classes} classes but the dataset {len(names)} "
                               f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); train from --weights random")
        if labels_for_model(train_set, loaded.class_names) is not None:  # raises for other class names
            raise DatasetError(f"the dataset's classes are in another order than {weights}'s; "
                               "rename the class folders or train from --weights random")
        loaded.class_names = names  # unnamed classes take the dataset's names
    return loaded


def train(loaded: LoadedModel, train_set: ImageDataset, heldout: ImageDataset, cfg: TrainConfig,
          output: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train ``loaded.model`` in place; write a checkpoint to ``output`` (atomically) when given."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise UserInputError("epochs and batch size must be at least 1 and the learning rate positive")
    if len(train_set) == 0 or len(heldout) == 0:
        raise DatasetError(f"need training and held-out images, got {len(train_set)} and {len(heldout)}")
    n_classes = len(train_set.class_names)
    if n_classes != loaded.num_classes:
        raise UserInputError(
            f"the dataset has {n_classes} classes but the model {loaded.num_classes}; pass --num-classes {n_classes}"
        )
    if output is not None:
        check_writable(output)  # fail before training, not after
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from tqdm import tqdm

    prep = loaded.preprocessing
    x_train, y_train = train_set.arrays(prep), train_set.labels
    x_held, y_held = heldout.arrays(prep), heldout.labels
    model = loaded.model
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    # a model ending in softmax is trained on its logits (the softmax is applied only at inference)
    softmax_flag = getattr(model, "softmax", False)
    history, start = [], time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if softmax_flag:
            model.softmax = False
        order = rng.permutation(len(x_train))
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=None if progress else True, leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size: (step + 1) * cfg.batch_size]
            xb, yb = torch.from_numpy(x_train[idx]), torch.from_numpy(y_train[idx])
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}")
        if softmax_flag:
            model.softmax = True
        acc = evaluate(model, x_held, y_held)
        row = {"epoch": epoch, "loss": loss_sum / total, "train_accuracy": correct / total, "heldout_accuracy": acc}
        history.append(row)
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {row['loss']:.4f}  train {row['train_accuracy']:.2%}  held-out {acc:.2%}")
    model.eval()
    result = TrainResult(history[-1]["heldout_accuracy"], history[-1]["train_accuracy"], history,
                         time.perf_counter() - start)
    loaded.info.update(
        heldout_accuracy=result.heldout_accuracy, dataset=train_set.root or train_set.name, epochs=cfg.epochs,
        train_config=dict(vars(cfg)), heldout_size=len(heldout),
    )
    loaded.class_names = list(train_set.class_names)
    if output is not None:
        result.checkpoint = save_checkpoint(output, loaded)
    return result
