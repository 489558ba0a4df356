"""Shared pieces of the command-line entry points: error handling, logging, common options.

Every ``AlexnetDeployError`` becomes one line on stderr and a non-zero exit; heavy imports happen inside
the commands so ``--help`` works without torch, onnxruntime or any optional dependency.
"""
from __future__ import annotations

import functools
import logging
import sys

import click

from alexnet_deploy.errors import AlexnetDeployError, UserInputError

VARIANT_HELP = "cifar10 | torchvision | paper | paper-ungrouped | plain | bn"


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AlexnetDeployError as exc:
            msg = str(exc)
            if "\n" in msg:  # details (a parity table) to stdout, the one-line verdict to stderr
                head, _, rest = msg.partition("\n")
                click.echo(rest)
                msg = head
            click.echo(f"error: {msg}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:  # an optional dependency imported at a module's top
            from alexnet_deploy.deps import missing_module_error

            err = missing_module_error(exc)
            if err is None:
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no partial output was kept", err=True)
            sys.exit(130)
        except OSError as exc:  # disk full, permission denied mid-write, ...: one line, not a traceback
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)
    return wrapper


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


def _weights_options(fn):
    fn = click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")(fn)
    fn = click.option("--num-classes", type=click.IntRange(min=1), default=None,
                      help="Class count (default: the variant's, or the checkpoint's).")(fn)
    fn = click.option("--weights", default="random", show_default=True,
                      help="random | imagenet (torchvision variant) | PATH (.pt/.pth/.safetensors).")(fn)
    fn = click.option("--variant", default=None, help=f"{VARIANT_HELP} (default: read from the checkpoint).")(fn)
    return fn


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32") from None
    return values
