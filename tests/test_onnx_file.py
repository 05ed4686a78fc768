"""Bring your own ONNX: an .onnx file made elsewhere (here with skl2onnx, zipmap off) exports as is, with its
golden outputs from Python onnxruntime, and passes parity in python, node and chromium."""
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import assert_parity, churn_data, iris_frame, need
from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

runner = CliRunner()


def to_onnx_file(model, initial_types, path, zipmap=False):
    from skl2onnx import to_onnx

    options = {id(model): {"zipmap": False}} if not zipmap and hasattr(model, "classes_") else None
    onx = to_onnx(model, initial_types=initial_types, options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The user's own files: a classifier (label + probabilities), a regressor, a per-column churn pipeline."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
    from sklearn.linear_model import LinearRegression, LogisticRegression

    root = tmp_path_factory.mktemp("own-onnx")
    X, y = iris_frame()
    X.to_csv(root / "iris.csv", index=False)
    clf = LogisticRegression(max_iter=500).fit(X.to_numpy(), y)
    to_onnx_file(clf, [("features", FloatTensorType([None, 4]))], root / "iris.onnx")
    rng = np.random.default_rng(0)
    R = rng.normal(size=(80, 3))
    reg = LinearRegression().fit(R, R @ [1.5, -2.0, 0.5] + 3)
    np.save(root / "reg.npy", R)
    to_onnx_file(reg, [("x", DoubleTensorType([None, 3]))], root / "reg.onnx")
    from edgeport.examples.churn import build_pipeline
    from edgeport.samples import is_string_dtype

    frame, target = churn_data(n=200)
    churn = build_pipeline().fit(frame, target)
    frame.to_csv(root / "churn.csv", index=False)
    types = [(c, StringTensorType([None, 1]) if is_string_dtype(frame[c]) else FloatTensorType([None, 1]))
             for c in frame.columns]
    to_onnx_file(churn, types, root / "churn.onnx")
    return root


def export(args):
    result = runner.invoke(app, ["export", *map(str, args)])
    return result


@pytest.fixture(scope="module")
def bundles(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("own-onnx-bundles")
    made = {}
    import pandas as pd

    gaps = [c for c, missing in pd.read_csv(files / "churn.csv").isna().any().items() if missing]
    assert gaps  # the churn pipeline imputes: its missing values need --nullable
    nullable = {"churn": [arg for column in gaps for arg in ("--nullable", column)]}
    for name, sample in (("iris", "iris.csv"), ("reg", "reg.npy"), ("churn", "churn.csv")):
        result = export([files / f"{name}.onnx", "--sample", files / sample, "--out", out / name,
                         *nullable.get(name, [])])
        assert result.exit_code == 0, result.output
        made[name] = out / name
    return made


def test_classifier_exports_as_is_with_label_and_probabilities(files, bundles):
    manifest = json.loads((bundles["iris"] / "manifest.json").read_text())
    assert manifest["task"] == "classification" and manifest["layout"] == "matrix"
    assert {o["name"]: o["role"] for o in manifest["outputs"]} == {"label": "label", "probabilities": "probabilities"}
    assert manifest["classes"] == [0, 1, 2]  # from the graph's LinearClassifier
    assert manifest["inputs"][0]["columns"] == list(iris_frame()[0].columns)
    assert manifest["inputs"][0]["nullable"] is False
    assert (bundles["iris"] / "model.onnx").read_bytes() == (files / "iris.onnx").read_bytes()
    assert manifest["source"]["framework"] == "onnx" and manifest["source"]["converter"] == "skl2onnx"


def test_classes_name_the_labels_of_a_graph_whose_label_output_holds_indices(files, tmp_path):
    """With --classes, the label is the most probable class named by them in every runtime, not the graph's own
    0..k-1 beside bars named setosa/versicolor/virginica (found by a newcomer's review)."""
    names = ["setosa", "versicolor", "virginica"]
    out = tmp_path / "named"
    result = export([files / "iris.onnx", "--sample", files / "iris.csv", "--out", out, "--classes", ",".join(names)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == names and [o["role"] for o in manifest["outputs"]] == ["probabilities"]
    assert set(json.loads((out / "golden.json").read_text())["outputs"]["label"]) == set(names)
    need(shutil.which("node") is not None, "node is not on PATH")
    checked = runner.invoke(app, ["check", str(out), "-r", "python", "-r", "node", "-r", "server"])
    assert checked.exit_code == 0, checked.output


def test_regressor_and_per_column_pipeline(bundles):
    reg = json.loads((bundles["reg"] / "manifest.json").read_text())
    assert reg["task"] == "regression" and [o["role"] for o in reg["outputs"]] == ["value"]
    churn = json.loads((bundles["churn"] / "manifest.json").read_text())
    assert churn["layout"] == "columns" and len(churn["inputs"]) > 1
    assert {i["dtype"] for i in churn["inputs"]} == {"string", "float32"}  # no double Imputer kernel
    assert all(i["column"] == i["name"] for i in churn["inputs"])
    assert any(i["nullable"] for i in churn["inputs"]) and not all(i["nullable"] for i in churn["inputs"])
    assert churn["classes"] == ["churn", "stay"]  # string labels, from the graph's classifier node


@pytest.mark.browser
@pytest.mark.parametrize("name", ["iris", "reg", "churn"])
def test_parity_in_python_node_and_chromium(name, bundles):
    from edgeport.check import check_bundle

    need(shutil.which("node") is not None, "node is not on PATH (install Node.js 20)")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")
    runtimes = ["python", "server", "node", "browser"]
    assert_parity(check_bundle(bundles[name], runtimes), runtimes)


def test_check_against_the_onnx_file_itself(files, bundles):
    result = runner.invoke(app, ["check", str(bundles["iris"]), "--model", str(files / "iris.onnx"),
                                 "--data", str(files / "iris.csv")])
    assert result.exit_code == 0, result.output


def test_several_tensor_inputs_take_an_npz(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgeport.export import export_model

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    nodes = [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["a", "bf"], ["y"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "two-in", [a, b], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "s.npz", a=rng.normal(size=(12, 2)).astype(np.float32), b=rng.integers(0, 5, size=(12, 2)))
    result = export_model(tmp_path / "two.onnx", tmp_path / "b", sample=tmp_path / "s.npz", task="regression")
    assert_parity(result.report)
    assert result.bundle.manifest.layout == "tensors"
    assert [(i.name, i.dtype) for i in result.bundle.manifest.inputs] == [("a", "float32"), ("b", "int64")]


def test_a_lone_softmax_output_is_probabilities_named_by_classes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgeport.export import export_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 3])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["p"], axis=1)], "soft", [x], [p]),
                                opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "soft.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(20, 3)).astype(np.float32))
    result = export_model(tmp_path / "soft.onnx", tmp_path / "b", sample=tmp_path / "x.npy", classes=["a", "b", "c"])
    assert_parity(result.report)
    manifest = result.bundle.manifest
    assert manifest.task == "classification" and manifest.classes == ("a", "b", "c")
    assert [o.role for o in manifest.outputs] == ["probabilities"]


def _two_float_outputs(path):
    """A graph whose roles can't be told apart: two float [N, 1] outputs."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], np.array([1.0, 2.0], np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Neg", ["a"], ["b"])],
                              "two", [x], [a, b], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_undetectable_roles_need_the_flag_and_the_message_names_it(tmp_path):
    model = _two_float_outputs(tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.arange(20, dtype=np.float32).reshape(10, 2))
    result = export([model, "--sample", tmp_path / "x.npy", "--out", tmp_path / "b"])
    assert result.exit_code == 1, result.output
    assert "--value-output" in result.output and "Traceback" not in result.output
    result = export([model, "--sample", tmp_path / "x.npy", "--out", tmp_path / "b", "--value-output", "b"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [(o["name"], o["role"]) for o in manifest["outputs"]] == [("b", "value")]
    # check --model can't take the flag: it says to check against the golden outputs instead
    result = runner.invoke(app, ["check", str(tmp_path / "b"), "--model", str(model), "--data", str(tmp_path / "x.npy")])
    assert result.exit_code == 1 and "without --model" in result.output, result.output
    assert runner.invoke(app, ["check", str(tmp_path / "b")]).exit_code == 0


def test_zipmap_output_is_refused(tmp_path):
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    X, y = iris_frame()
    model = to_onnx_file(LogisticRegression(max_iter=300).fit(X.to_numpy(), y), [("x", FloatTensorType([None, 4]))],
                         tmp_path / "zipmap.onnx", zipmap=True)
    X.to_csv(tmp_path / "iris.csv", index=False)
    result = export([model, "--sample", tmp_path / "iris.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1, result.output
    assert "zipmap disabled" in result.output and "Traceback" not in result.output


def test_corrupt_onnx_is_one_paragraph(files, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((files / "iris.onnx").read_bytes()[:200])
    result = export([broken, "--sample", files / "iris.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1, result.output
    assert "not a valid ONNX" in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if not line.startswith("·")] == [
        next(line for line in result.output.splitlines() if line.startswith("error:"))]  # one paragraph


def test_custom_op_domain_and_fixed_batch_are_refused(tmp_path, files):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Magic", ["x"], ["y"], domain="com.example")], "custom", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), tmp_path / "c.onnx")
    result = export([tmp_path / "c.onnx", "--sample", files / "iris.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1 and "com.example" in result.output, result.output
    fixed = onnx.load(files / "iris.onnx")
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, tmp_path / "fixed.onnx")
    result = export([tmp_path / "fixed.onnx", "--sample", files / "iris.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1 and "fixed batch dimension of 1" in result.output, result.output


def test_onnx_options_are_refused_for_other_models(iris_model, tmp_path):
    _, model_path, sample_path = iris_model
    result = export([model_path, "--sample", sample_path, "--out", tmp_path / "b", "--label-output", "x"])
    assert result.exit_code == 2 and "onnx" in result.output, result.output


def test_missing_values_need_nullable(files, tmp_path):
    X, _ = iris_frame()
    X.iloc[3, 1] = np.nan
    X.to_csv(tmp_path / "gaps.csv", index=False)
    result = export([files / "iris.onnx", "--sample", tmp_path / "gaps.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1 and "--nullable features" in result.output, result.output


def test_installed_script_exports_an_onnx_file(files, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("edgeport")
    proc = subprocess.run([str(script), "export", str(files / "iris.onnx"), "--sample", str(files / "iris.csv"),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "manifest.json").is_file()


def test_size_limit_and_external_data_are_refused(files, tmp_path, monkeypatch):
    import onnx

    monkeypatch.setenv("EDGEPORT_MAX_MODEL_BYTES", "100")
    result = export([files / "iris.onnx", "--sample", files / "iris.csv", "--out", tmp_path / "b"])
    assert result.exit_code == 1 and "EDGEPORT_MAX_MODEL_BYTES=" in result.output, result.output
    monkeypatch.delenv("EDGEPORT_MAX_MODEL_BYTES")
    onnx.save(onnx.load(_two_float_outputs(tmp_path / "two.onnx")), tmp_path / "ext.onnx",  # MatMul weights
              save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    np.save(tmp_path / "x.npy", np.ones((4, 2), dtype=np.float32))
    result = export([tmp_path / "ext.onnx", "--sample", tmp_path / "x.npy", "--out", tmp_path / "b", "--value-output", "b"])
    assert result.exit_code == 1 and "save_as_external_data=False" in result.output, result.output


def test_an_int32_input_is_fed_as_int32_everywhere(tmp_path):
    """int32 is a manifest dtype (TF.js has no int64); an ONNX file that takes int32 ids is bundled as is."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], np.random.RandomState(0).randn(6).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "W"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)], "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ints.onnx")
    np.save(tmp_path / "ints.npy", np.random.RandomState(1).randint(-1000, 1000, (30, 3)).astype(np.int32))
    result = export([tmp_path / "ints.onnx", "--sample", tmp_path / "ints.npy", "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["inputs"][0]["dtype"] == "int32"
    need(shutil.which("node") is not None, "node is not on PATH")
    checked = runner.invoke(app, ["check", str(tmp_path / "b"), "-r", "python", "-r", "node", "-r", "server"])
    assert checked.exit_code == 0, checked.output
