"""The deployment folder: artifacts are built in a hidden staging folder next to their final place and swapped
in with renames, so DIR never holds a half-written artifact; a failed or interrupted step removes its staging
folder (``finally``), and the next run removes any left by a killed process."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from alexnet_deploy.errors import UserInputError

STAGING_PREFIX = ".deploy-staging-"
OLD_PREFIX = ".deploy-old-"
LOCK_NAME = ".deploy.lock"


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def refuse_overlap(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is, contains or lies inside one of the inputs (before any work)."""
    out_r = out.resolve()
    for label, path in inputs.items():
        src = Path(path).resolve()
        if src == out_r or _inside(src, out_r):
            raise UserInputError(f"--out {out} contains {label} {path}; a deployment folder must not hold its "
                                 "inputs (choose another --out)")
        if _inside(out_r, src):
            raise UserInputError(f"--out {out} lies inside {label} {path}; choose a folder outside the inputs")
    try:
        from alexnet_deploy.fileio import refuse_overlapping_paths  # shared helper (same-file checks)

        refuse_overlapping_paths({k: v for k, v in inputs.items()}, {"--out": out})
    except ImportError:
        pass


def prepare(out: Path) -> Path:
    """Create ``out`` (one line when it cannot be)."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create --out {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UserInputError(f"--out {out} is not writable; choose another folder")
    return out


def remove_leftovers(out: Path) -> None:
    """Staging folders a killed run left (call while holding :func:`locked`)."""
    for leftover in out.iterdir():
        if leftover.name.startswith((STAGING_PREFIX, OLD_PREFIX)) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One alexnet-deploy at a time per folder (a second one would remove the first one's staging folders)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = out / LOCK_NAME
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserInputError(f"another alexnet-deploy is writing {out}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_folder(out: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out/name`` (old one removed), else it is removed."""
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}.", dir=out))
    try:
        yield stage
        replace_folder(stage, out / name)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def replace_folder(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` with renames: the old ``dst`` moves aside first and is removed after."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{dst.name}.", dir=dst.parent))
        os.rmdir(old)
        os.replace(dst, old)
    os.replace(src, dst)
    os.chmod(dst, 0o777 & ~_umask())
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_artifact(out: Path, name: str) -> None:
    """Remove ``out/name`` (an artifact that is no longer valid) without leaving a half-deleted folder."""
    path = out / name
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{name}.", dir=out))
        os.rmdir(old)
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
