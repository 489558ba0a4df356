"""Atomic writes and hashing: an interrupted write never leaves a file that a later run trusts."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from alexnet_deploy.errors import OutputWriteError, UserInputError

# a full disk, a quota, a file-size limit: errors of the write, not of the path
_NO_SPACE = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n)}

# Folders created for outputs by this process, deepest last; a failed or interrupted command removes the ones
# that are still empty (see ``remove_created_folders_on_failure``), so a failed export leaves no empty tree.
_CREATED_FOLDERS: list[Path] = []


def _make_folders(folder: Path) -> None:
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    _CREATED_FOLDERS.extend(reversed(missing))


@contextlib.contextmanager
def remove_created_folders_on_failure() -> Iterator[None]:
    """On an exception (``KeyboardInterrupt`` and ``SystemExit`` with a non-zero code included), remove the
    output folders that ``check_writable`` created during the block and that are still empty."""
    start = len(_CREATED_FOLDERS)
    ok = False
    try:
        yield
        ok = True
    except SystemExit as exc:
        ok = exc.code in (0, None)
        raise
    finally:
        created = _CREATED_FOLDERS[start:]
        del _CREATED_FOLDERS[start:]
        if not ok:
            for folder in reversed(created):
                try:
                    folder.rmdir()  # only succeeds when empty
                except OSError:
                    pass


def printable_path(path: str | os.PathLike) -> str:
    """A path as valid Unicode text for JSON and reports: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) are written as ``\\xNN`` escapes instead of surrogate code points strict parsers reject."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def native_path_or_bytes(path: str | os.PathLike) -> str | bytes:
    """``path`` as text for libraries that take only UTF-8 paths (ONNX Runtime's C++ constructor), or, when
    the name is not valid UTF-8, the file's bytes (which those libraries also accept)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        with open(text, "rb") as f:
            return f.read()


def _labelled(paths) -> list[tuple[str, str]]:
    if paths is None:
        return []
    items = paths.items() if isinstance(paths, Mapping) else paths
    out = []
    for item in items:
        label, p = item if isinstance(item, tuple) else ("", item)
        if p is not None and os.fspath(p) != "":
            out.append((label, os.fspath(p)))
    return out


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def refuse_overlapping_paths(inputs: Mapping[str, object] | Iterable = (),
                             outputs: Mapping[str, object] | Iterable = ()) -> None:
    """Refuse, before any work, an output path that resolves (symlinks included) to one of the command's
    inputs or to another of its outputs.

    ``inputs`` / ``outputs``: ``{"--json": path, "model": path}`` or ``[(label, path), ...]`` or plain paths;
    ``None`` entries are skipped. Files that are read and rewritten (a timing cache) belong in ``outputs``.
    """
    ins, outs = _labelled(inputs), _labelled(outputs)
    for i, (olabel, out) in enumerate(outs):
        for ilabel, src in ins:
            if _same_file(out, src):
                raise UserInputError(f"{_name(olabel, out)} is the same file as {_name(ilabel, src)}; "
                                     "writing it would destroy an input: choose another path")
        for olabel2, out2 in outs[:i]:
            if _same_file(out, out2):
                raise UserInputError(f"{_name(olabel, out)} and {_name(olabel2, out2)} are the same file; "
                                     "give each output its own path")


def _name(label: str, path: str) -> str:
    return f"{label} {printable_path(path)}" if label else printable_path(path)


def check_writable(path: str | os.PathLike, option: str | None = None) -> Path:
    """Fail early, with one line, when ``path`` cannot be written (before any expensive work). ``option`` names
    the command-line option the path came from, for the message (default: "path")."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserInputError(f"output path {path} is a directory; give a file name")
    try:
        _make_folders(parent)
    except OSError as exc:
        raise UserInputError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"output folder {parent} is not writable; choose another {option or 'path'}")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it over ``path`` only on success."""
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserInputError(f"cannot write into {path.parent}: {exc.strerror}; choose another output path") from None
    tmp_path = Path(tmp)
    try:
        os.close(fd)
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (or the one it replaces)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in _NO_SPACE and not isinstance(exc, OutputWriteError):  # the write itself names no file
            raise OutputWriteError(f"cannot write {printable_path(path)}: {exc.strerror or exc}", exc.errno,
                                   str(path)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_bytes(obj) -> bytes:
    """``obj`` as the JSON text ``atomic_write_json`` writes (for a caller that writes it through ``atomic_path``)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
