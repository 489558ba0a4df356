"""JSON Schemas (draft 2020-12) of the machine-readable outputs, shipped with the package (docs/json-schemas.md).

=========  ================================================  ==============================
kind       document                                          ``schema`` field
=========  ================================================  ==============================
report     ``report.json`` of an ``alexnet-deploy`` folder   ``alexnet-deploy.deploy-report/1``
parity     ``alexnet-parity --json``                         (none)
bench      ``alexnet-bench --json`` (not ``--server``)       ``alexnet-deploy.bench/1``
verify     ``alexnet-verify --json``                         ``alexnet-deploy.verify/1``
=========  ================================================  ==============================

``common.schema.json`` holds the records they share (the machine, the gates, the golden-set summary). The files
refer to each other by ``$id`` (``urn:alexnet-deploy:schema:<kind>``): a validator outside this package needs all
five loaded, as :func:`validate` does. Reading a schema needs nothing beyond the standard library; validating
needs the ``jsonschema`` package (in the ``[dev]`` extra)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from alexnet_deploy.errors import UserInputError

KINDS = ("report", "parity", "bench", "verify")
_FILES = (*KINDS, "common")


def schema_id(kind: str) -> str:
    return f"urn:alexnet-deploy:schema:{kind}"


def _check(kind: str) -> str:
    if kind not in _FILES:
        raise UserInputError(f"unknown schema kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def schema_path(kind: str) -> Path:
    """The installed file of ``kind``'s schema (``report``, ``parity``, ``bench``, ``verify`` or ``common``)."""
    return Path(str(resources.files(__name__) / f"{_check(kind)}.schema.json"))


@lru_cache(maxsize=None)
def _load(kind: str) -> str:
    return schema_path(kind).read_text(encoding="utf-8")


def load_schema(kind: str) -> dict:
    """``kind``'s schema as a dict (a fresh copy each call)."""
    return json.loads(_load(_check(kind)))


def validation_errors(doc, kind: str) -> list[str]:
    """Every way ``doc`` (a parsed JSON document) breaks ``kind``'s schema, one line each (empty: valid), as
    ``<path in the document>: <message>``."""
    from alexnet_deploy.deps import require

    require("jsonschema", "validating documents against the JSON Schemas")
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources((schema_id(k), Resource.from_contents(load_schema(k))) for k in _FILES)
    validator = Draft202012Validator(load_schema(_check(kind)), registry=registry,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errors]


def validate(doc, kind: str) -> None:
    """Raise :class:`UserInputError` naming the first problems when ``doc`` does not match ``kind``'s schema."""
    errors = validation_errors(doc, kind)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise UserInputError(f"not a valid {kind} document ({schema_id(kind)}): " + "; ".join(errors[:5]) + more)
