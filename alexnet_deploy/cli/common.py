"""Shared pieces of the command-line entry points: error handling, logging, common options.

Every ``AlexnetDeployError`` becomes one line on stderr and a non-zero exit; heavy imports happen inside
the commands so ``--help`` works without torch, onnxruntime or any optional dependency.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading

import click

from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.fileio import refuse_overlapping_paths, remove_created_folders_on_failure

__all__ = ["refuse_overlapping_paths", "Terminated", "VARIANT_HELP"]

VARIANT_HELP = "cifar10 | torchvision | paper | paper-ungrouped | plain | bn"
# Signals that end a run the way Ctrl-C does (`timeout`, CI cancellation and `docker stop` send SIGTERM; a
# closed terminal sends SIGHUP): they unwind through every `finally`, so no temporary file or folder is left.
_TERMINATING = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised in the main thread so clean-up runs as for Ctrl-C (SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_RECEIVED: list[int] = []  # the terminating signal of the running command, if one arrived


def _raise_terminated(signum, _frame):
    _RECEIVED[:] = [signum]
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind():
    """While a command runs, SIGTERM and SIGHUP raise :class:`Terminated`; the old handlers come back after."""
    old = {}
    _RECEIVED.clear()
    if threading.current_thread() is threading.main_thread():
        for sig in _TERMINATING:
            if signal.getsignal(sig) == signal.SIG_IGN:  # `nohup` and friends: an ignored signal stays ignored
                continue
            try:
                old[sig] = signal.signal(sig, _raise_terminated)
            except (ValueError, OSError):  # not settable here (embedded interpreter)
                pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _signals_unwind(), remove_created_folders_on_failure():
            return _run(fn, args, kwargs)
    return wrapper


def _run(fn, args, kwargs):
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
    except SystemExit as exc:
        # a command that caught the interrupt itself and exits "as for Ctrl-C" reports the signal that came
        if exc.code == 128 + signal.SIGINT and _RECEIVED:
            sys.exit(128 + int(_RECEIVED[0]))
        raise
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        name = signal.Signals(signum).name
        click.echo(f"interrupted ({name}); no partial output was kept", err=True)
        sys.exit(128 + int(signum))  # what a shell reports: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
    except OSError as exc:  # disk full, permission denied mid-write, ...: one line, not a traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)


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
