"""edgeport triton: the generated repository, parsed by Triton's own ModelConfig definition, matches the manifest."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from conftest import need, rehash_bundle
from edgeport.errors import BundleError, IntegrityError
from edgeport.triton import write_triton_repository

DATA_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
              "string": "TYPE_STRING"}


def model_config_class():
    """Triton's ModelConfig message, from the definition tritonclient ships (tritonclient/grpc/model_config_pb2.py).

    That generated module refuses to import under protobuf < 6.33 (its gencode check), and TF 2.19 holds this venv
    to protobuf < 6, so tritonclient[grpc] can't be installed beside it. The serialized model_config.proto inside
    the module is Triton's definition all the same: it is read from the file and built with this protobuf."""
    import ast
    import importlib.util
    from pathlib import Path

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    spec = importlib.util.find_spec("tritonclient")
    need(spec is not None, "tritonclient is not installed (pip install -e '.[dev]')")
    source = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    serialized = next(node.args[0].value for node in ast.walk(ast.parse(source.read_text()))
                      if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "AddSerializedFile")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(serialized))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_class()())


@pytest.mark.parametrize("name", ["churn", "iris"])
def test_the_repository_parses_as_triton_config_and_matches_the_manifest(bundles, tmp_path, name):
    """churn: a columns layout, five inputs (two strings); iris: one matrix input; both label + probabilities."""
    from google.protobuf import text_format

    bundle = bundles[name]
    result = write_triton_repository(bundle.path, tmp_path / "repo")
    assert result.path == tmp_path / "repo" / name and sorted(p.name for p in result.path.iterdir()) == ["1", "config.pbtxt"]
    config = parse_config((result.path / "config.pbtxt").read_text())
    assert (config.name, config.platform, config.max_batch_size) == (name, "onnxruntime_onnx", 0)
    enum = config.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    for written, specs in ((config.input, bundle.inputs), (config.output, bundle.outputs)):
        assert [(t.name, enum.values_by_number[t.data_type].name, list(t.dims)) for t in written] == \
               [(s.name, DATA_TYPES[s.dtype], [-1 if d is None else d for d in s.shape]) for s in specs]
    if name == "churn":
        assert {"TYPE_STRING", "TYPE_FP32"} == {enum.values_by_number[t.data_type].name for t in config.input}
    model = (result.path / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(model).hexdigest() == bundle.manifest.file(bundle.server_model_file).sha256
    assert text_format.MessageToString(config), "the parsed config round-trips"


def test_the_cli_writes_the_repository_and_never_replaces_a_model(bundles, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["triton", str(bundles["iris"].path), "--out", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "as Triton's version 1" in result.output and "--model-repository" in result.output
    again = runner.invoke(app, ["triton", str(bundles["iris"].path), "--out", str(tmp_path / "repo")])
    assert again.exit_code == 1 and "already exists" in again.output and "Remove it first" in again.output


def test_a_whole_number_version_is_tritons_and_another_is_version_1(bundles, tmp_path):
    for version, directory in (("7", "7"), ("2024.1", "1")):
        copy = tmp_path / f"bundle-{version}"
        shutil.copytree(bundles["iris"].path, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        result = write_triton_repository(copy, tmp_path / f"repo-{version}")
        assert result.triton_version == directory and (result.path / directory / "model.onnx").is_file()


def test_a_changed_model_or_a_graph_without_the_manifests_names_is_refused(bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["iris"].path, copy)
    model = copy / bundles["iris"].server_model_file
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="changed after export"):
        write_triton_repository(copy, tmp_path / "repo")
    shutil.copy(bundles["churn"].path / bundles["churn"].server_model_file, model)  # churn's graph, iris's manifest
    rehash_bundle(copy)
    with pytest.raises(BundleError, match="has no input named 'input'"):
        write_triton_repository(copy, tmp_path / "repo")
    assert not (tmp_path / "repo" / "iris").exists()
