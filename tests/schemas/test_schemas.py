"""The JSON Schemas shipped in alexnet_deploy/schemas/ against REAL documents: report.json of a small deployment
(finished and in-progress), alexnet-verify --json (a passing folder and a tampered one), alexnet-parity --json
(against PyTorch and against a golden set) and alexnet-bench --json (measured and skipped rows). Each schema must
also refuse a document with a required field removed or renamed, a wrong type, or a field a closed record does
not have."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from alexnet_deploy.schemas import KINDS, load_schema, schema_path, validate, validation_errors
from helpers import deploy_opts as _opts


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits_checkpoint) -> Path:
    """FP32 ONNX on ORT only, a small golden set: the cheapest complete deployment (~8 s)."""
    from alexnet_deploy.deploy.run import run_deploy

    out = tmp_path_factory.mktemp("schemas") / "dep"
    report = run_deploy(_opts(digits_checkpoint, out, precisions=("fp32",), targets=("onnx",), engines=("ort",),
                              batch_sizes=(1,), bench_iterations=2, parity_images=60, golden_images=30),
                        echo=lambda *a: None)
    assert report["passed"], report["failures"]
    return out


@pytest.fixture(scope="module")
def docs(folder, digits_onnx, tmp_path_factory) -> dict[str, dict]:
    """One real document of each kind, made by the commands (module-scoped: the negative tests copy them)."""
    from click.testing import CliRunner

    from alexnet_deploy.cli import bench_main, parity_main, verify_main

    tmp = tmp_path_factory.mktemp("schema-docs")

    def run(command, *args):
        res = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    run(verify_main, folder, "--json", tmp / "verify.json")
    run(parity_main, digits_onnx, "--num-images", 40, "--random-samples", 4, "--json", tmp / "parity.json")
    run(parity_main, digits_onnx, "--golden", folder / "golden", "--json", tmp / "parity-golden.json")
    # trt on an ONNX file: a skipped row next to the measured ones; roofline on (costs and ceilings filled in)
    run(bench_main, digits_onnx, "--engine", "ort,trt", "--batch-sizes", "1,2", "--iterations", 3, "--warmup-ms", 0,
        "--json", tmp / "bench.json")
    out = {k: json.loads((tmp / f"{k}.json").read_text()) for k in ("verify", "parity", "parity-golden", "bench")}
    out["report"] = json.loads((folder / "report.json").read_text())
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_are_valid_draft_2020_12_and_shipped_as_package_data(kind):
    from jsonschema import Draft202012Validator

    path = schema_path(kind)
    assert path.parent.name == "schemas" and path.is_file()
    schema = load_schema(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:alexnet-deploy:schema:{kind}"
    Draft202012Validator.check_schema(schema)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"alexnet_deploy.schemas" = ["*.json"]' in pyproject  # else a wheel ships the helper without its files


def test_the_schemas_follow_the_code_constants():
    """The enums in the schemas are the code's own lists (a new status needs the schema too)."""
    from alexnet_deploy.deploy.report_json import ROW_FIELDS, SCHEMA, STATES, STATUSES
    from alexnet_deploy.parity.verify import ENGINES, VERIFY_SCHEMA

    report = load_schema("report")
    row = report["$defs"]["row"]
    assert tuple(row["properties"]) == ROW_FIELDS and row["required"] == list(ROW_FIELDS)
    assert row["properties"]["status"]["enum"] == list(STATUSES)
    assert report["properties"]["state"]["enum"] == list(STATES)
    assert report["properties"]["schema"]["const"] == SCHEMA
    verify = load_schema("verify")
    assert verify["properties"]["schema"]["const"] == VERIFY_SCHEMA
    assert verify["$defs"]["row"]["properties"]["engine"]["enum"] == list(ENGINES)


@pytest.mark.parametrize("name,kind", [("report", "report"), ("verify", "verify"), ("parity", "parity"),
                                       ("parity-golden", "parity"), ("bench", "bench")])
@pytest.mark.slow
def test_real_documents_validate(docs, name, kind):
    assert validation_errors(docs[name], kind) == []
    validate(docs[name], kind)


@pytest.mark.slow
def test_real_documents_cover_what_the_schemas_constrain(docs):
    """The positive tests mean something only if the documents hold the records the schemas describe."""
    assert docs["report"]["state"] == "complete" and docs["report"]["rows"] and docs["report"]["parity"]
    assert next(iter(docs["report"]["benchmarks"].values()))["schema"] == "alexnet-deploy.bench/1"
    assert docs["verify"]["rows"][0]["parity"]["sets"]
    assert "candidate_sha256" in docs["parity-golden"] and "golden" in docs["parity-golden"]
    rows = docs["bench"]["rows"]
    assert any(r["skipped"] for r in rows) and any(r["skipped"] is None and r["p50_ms"] > 0 for r in rows)
    assert docs["bench"]["ceilings"] and docs["bench"]["costs"]


@pytest.mark.slow
def test_an_in_progress_and_an_interrupted_report_validate(digits_checkpoint, tmp_path, monkeypatch):
    """The report written before the first artifact changes (kept while the run goes on) and the one an
    interrupted run leaves: real ones, from a run stopped at its parity step."""
    from alexnet_deploy.deploy.plan import step_kinds
    from alexnet_deploy.deploy.run import run_deploy

    out = tmp_path / "dep"
    seen = []

    def interrupted(ctx, step):
        seen.append(json.loads((out / "report.json").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(step_kinds()["parity"], "check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_deploy(_opts(digits_checkpoint, out, precisions=("fp32",), targets=("onnx",), engines=("ort",),
                         batch_sizes=(1,), golden_images=30), echo=lambda *a: None)
    (progress,) = seen
    assert progress["state"] == "in-progress" and progress["rows"] == []
    assert validation_errors(progress, "report") == []
    final = json.loads((out / "report.json").read_text())
    assert final["state"] == "interrupted" and final["passed"] is False
    assert validation_errors(final, "report") == []
    broken = copy.deepcopy(progress)
    broken["rows"] = final["rows"]  # an in-progress report claims no rows
    assert validation_errors(broken, "report")


@pytest.mark.slow
def test_a_failing_verify_of_a_tampered_folder_validates(folder, cli, tmp_path):
    from alexnet_deploy.cli import verify_main

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    model = dst / "onnx-fp32" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    code, out, err = cli(verify_main, dst, "--json", tmp_path / "v.json")
    assert code == 1, out + err
    doc = json.loads((tmp_path / "v.json").read_text())
    (row,) = doc["rows"]
    assert row["status"] == "fail" and row["parity"] is None and "sha256" in row["reason"]
    assert validation_errors(doc, "verify") == []


def _drop(doc: dict, path: tuple):
    d = doc
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]


# (document, path to a required field): the field removed must fail, and so must the same field renamed
REQUIRED = [
    ("report", ("passed",)), ("report", ("schema",)), ("report", ("rows", 0, "top1_agreement")),
    ("report", ("steps", 0, "status")), ("report", ("counts", "gates")), ("report", ("inputs", "weights_sha256")),
    ("report", ("artifacts", "onnx-fp32", "files")), ("report", ("machine", "cpu")), ("report", ("options", "precisions")),
    ("report", ("parity", "onnx-fp32 ort", "sets", 0, "metrics")), ("report", ("benchmarks", "onnx-fp32", "rows", 0, "p50_ms")),
    ("verify", ("passed",)), ("verify", ("rows", 0, "status")), ("verify", ("golden", "manifest_sha256")),
    ("verify", ("rows", 0, "parity", "tolerances", "max_abs")), ("verify", ("warnings",)),
    ("parity", ("sets",)), ("parity", ("sets", 0, "failures")), ("parity", ("tolerances", "min_cosine")),
    ("parity", ("machine", "versions")), ("parity-golden", ("golden", "images")),
    ("bench", ("schema",)), ("bench", ("rows", 0, "throughput_ips")), ("bench", ("rows", 0, "p90_ms")),
    ("bench", ("config", "batch_sizes")), ("bench", ("ceilings", "memory_bandwidth_gbs")),
]


def _kind(name: str) -> str:
    return "parity" if name.startswith("parity") else name


def _measured(doc: dict, name: str, path: tuple) -> tuple:
    """Bench rows: index of a measured row (a skipped row has no latency summary to remove)."""
    if name == "bench" and path[0] == "rows":
        return ("rows", next(i for i, r in enumerate(doc["rows"]) if r["skipped"] is None), *path[2:])
    return path


@pytest.mark.parametrize("name,path", REQUIRED, ids=lambda v: v if isinstance(v, str) else "/".join(map(str, v)))
@pytest.mark.slow
def test_a_removed_or_renamed_required_field_fails(docs, name, path):
    path = _measured(docs[name], name, path)
    removed = copy.deepcopy(docs[name])
    _drop(removed, path)
    errors = validation_errors(removed, _kind(name))
    assert errors and any(repr(path[-1]) in e for e in errors), errors
    renamed = copy.deepcopy(docs[name])
    parent = renamed
    for p in path[:-1]:
        parent = parent[p]
    parent[f"{path[-1]}_renamed"] = parent.pop(path[-1])
    assert validation_errors(renamed, _kind(name))


@pytest.mark.parametrize("name,path,value", [
    ("report", ("passed",), "yes"), ("report", ("rows", 0, "status"), "ok"), ("report", ("rows", 0, "size_mb"), "9 MB"),
    ("report", ("schema",), "alexnet-deploy.deploy-report/2"), ("report", ("steps", 0, "seconds"), None),
    ("verify", ("rows", 0, "engine"), "onnxruntime"), ("verify", ("rows", 0, "model_sha256"), "abc"),
    ("verify", ("created_utc",), "yesterday"),
    ("parity", ("sets", 0, "n"), -1), ("parity", ("precision",), "fp64"), ("parity", ("sets", 0, "metrics", "max_abs"), "0"),
    ("bench", ("rows", 0, "batch"), "1"), ("bench", ("rows", 0, "mode"), "warm"), ("bench", ("config", "engines"), "ort"),
])
@pytest.mark.slow
def test_a_wrong_type_or_value_fails(docs, name, path, value):
    doc = copy.deepcopy(docs[name])
    d = doc
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    assert validation_errors(doc, _kind(name))


@pytest.mark.parametrize("name,path", [("report", ()), ("report", ("rows", 0)), ("report", ("counts",)),
                                       ("verify", ()), ("verify", ("rows", 0)), ("parity", ()),
                                       ("parity", ("sets", 0)), ("bench", ()), ("bench", ("config",))])
@pytest.mark.slow
def test_closed_records_refuse_an_unknown_field(docs, name, path):
    doc = copy.deepcopy(docs[name])
    d = doc
    for p in path:
        d = d[p]
    d["surprise"] = 1
    errors = validation_errors(doc, _kind(name))
    assert errors and any("surprise" in e for e in errors), errors


def test_validate_raises_one_typed_line():
    from alexnet_deploy.errors import UserInputError

    with pytest.raises(UserInputError, match=r"not a valid bench document .*'schema' is a required property"):
        validate({"rows": []}, "bench")
    with pytest.raises(UserInputError, match="unknown schema kind 'html'; choose one of report, parity, bench, verify"):
        schema_path("html")
