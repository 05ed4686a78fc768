"""Keras models through both targets, parity-checked in every runtime that applies. Marked `tensorflow`."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import IN_CI, ExportOnce, assert_parity, need

pytestmark = [pytest.mark.tensorflow]
runner = CliRunner()
keras = pytest.importorskip("keras", reason="the tensorflow extra is not installed") if not IN_CI else __import__("keras")


@pytest.fixture(scope="module", autouse=True)
def seeded():
    keras.utils.set_random_seed(0)


def _fit(model, x, y, loss):
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


def mlp_classifier():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype("float32")
    inputs = keras.Input((4,), name="features")
    x = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    return _fit(model, X, y, "sparse_categorical_crossentropy"), X


def cnn_classifier():
    from edgeport.examples.digits_cnn import train

    example = train(epochs=2)
    return example.model, example.sample[:120]


def normalized_regressor():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True, scaled=False)
    X = X.astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(X)  # the preprocessing lives inside the model
    inputs = keras.Input((X.shape[1],), name="patient")
    x = keras.layers.Dense(16, activation="relu")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    return _fit(model, X, y.astype("float32"), "mse"), X[:150]


def two_input_model():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 5)).astype("float32")
    b = rng.normal(size=(300, 3)).astype("float32")
    y = (a.sum(1) > b.sum(1)).astype("int64")
    in_a, in_b = keras.Input((5,), name="left"), keras.Input((3,), name="right")
    x = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(in_a), keras.layers.Dense(8, activation="relu")(in_b)])
    model = keras.Model([in_a, in_b], keras.layers.Dense(2, activation="softmax")(x))
    return _fit(model, [a, b], y, "sparse_categorical_crossentropy"), {"left": a[:100], "right": b[:100]}


MODELS = {"mlp": mlp_classifier, "cnn": cnn_classifier, "normalized-regressor": normalized_regressor,
          "two-inputs": two_input_model}


def save(model, sample, directory, name):
    model_path = directory / f"{name}.keras"
    model.save(model_path)
    if isinstance(sample, dict):
        sample_path = directory / f"{name}.npz"
        np.savez(sample_path, **sample)
    else:
        sample_path = directory / f"{name}.npy"
        np.save(sample_path, sample)
    return model_path, sample_path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    return {name: save(*build(), root, name) for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    """export(name, target): each Keras model exported once per target (a tfjs export is two TF subprocesses,
    ~30 s); the tests that only read the bundle share it."""
    export = ExportOnce(tmp_path_factory.mktemp("keras-bundles"))
    return lambda name, target: export(*saved[name], to=target)


def js_ready():
    from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

    need(shutil.which("node") is not None, "node is not on PATH")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH")


@pytest.mark.browser
@pytest.mark.parametrize("target", ["onnx", "tfjs"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras_model_exports_and_passes_everywhere(name, target, saved, exported):
    from edgeport.check import check_bundle

    js_ready()
    model_path, _ = saved[name]
    result = exported(name, target)
    assert_parity(result.report, ("server", "node") if target == "tfjs" else ("python",))
    manifest = result.bundle.manifest.to_dict()
    assert manifest["format"] == ("tfjs-graph" if target == "tfjs" else "onnx")
    if target == "tfjs":
        assert manifest["model_file"] == "tfjs/model.json" and manifest["server_model_file"] == "model.onnx"
    report = check_bundle(result.bundle.path, ["python", "server", "node", "browser"])
    applies = ("server", "node", "browser") if target == "tfjs" else ("python", "server", "node", "browser")
    assert_parity(report, applies)
    if target == "tfjs":
        python = next(r for r in report.runtimes if r.runtime == "python")
        assert python.status == "not_applicable" and "tfjs bundle" in python.error
    # golden outputs come from Keras itself
    golden = result.bundle.golden()
    from edgeport.samples import table_from_rows

    table = table_from_rows(golden["rows"][:5], result.bundle.inputs, result.bundle.manifest.layout)
    x = [table[i["name"]] for i in manifest["inputs"]] if isinstance(table, dict) else table
    expected = keras.models.load_model(model_path).predict(x, verbose=0)
    role = "probabilities" if manifest["task"] == "classification" else "value"
    np.testing.assert_allclose(np.asarray(golden["outputs"][role][:5]).reshape(expected.shape), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.browser
def test_a_differently_trained_keras_model_is_caught_against_a_tfjs_bundle(saved, exported, tmp_path):
    js_ready()
    _, sample_path = saved["mlp"]
    out = exported("mlp", "tfjs").bundle.path  # checking only reads the bundle
    other, _ = mlp_classifier()  # same architecture, trained again: other weights
    other_path = tmp_path / "other.keras"
    other.save(other_path)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(out), "-r", "node", "-r", "server", "--model", str(other_path),
                                 "--data", str(sample_path), "--report", str(report)])
    assert result.exit_code == 3, result.output
    sections = {r["runtime"]: r for r in json.loads(report.read_text())["runtimes"]}
    for runtime in ("node", "server"):
        assert not next(o for o in sections[runtime]["outputs"] if o["role"] == "probabilities")["passed"]


@pytest.mark.browser
def test_quantized_tfjs_states_its_cost_and_runs_in_chromium(saved, tmp_path):
    js_ready()
    model_path, sample_path = saved["cnn"]
    out = tmp_path / "q"
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--to", "tfjs", "--quantize", "uint8",
                                 "--atol", "0.05", "--rtol", "0.1", "--out", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "quantized uint8" in result.output and "labels agree" in result.output
    cost = json.loads(report.read_text())["meta"]["quantization"]
    assert cost["quantized_weight_bytes"] < cost["float_weight_bytes"] / 2
    assert cost["against_float_model"]["node"]["max_abs_diff_vs_float"] > 0  # uint8 weights do change the outputs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "uint8"
    checked = runner.invoke(app, ["check", str(out), "-r", "browser", "--atol", "0.05", "--rtol", "0.1"])
    assert checked.exit_code == 0, checked.output
    # python alone does not apply to a tfjs bundle: a gate that checked nothing must not pass
    vacuous = runner.invoke(app, ["check", str(out), "-r", "python"])
    assert vacuous.exit_code == 1 and "no runtime that applies" in vacuous.output, vacuous.output
    assert "nothing was compared" in vacuous.output, vacuous.output
    default = runner.invoke(app, ["check", str(out)])  # defaults to the runtimes that apply: server and node
    assert "server" in default.output and "node" in default.output
    # at the float tolerances the quantized model is (honestly) not the float model
    strict = runner.invoke(app, ["check", str(out), "-r", "node", "--atol", "1e-5", "--rtol", "1e-4"])
    assert strict.exit_code == 3, strict.output


def test_onnx_int8_quantization_reports_its_cost(saved, tmp_path):
    import onnx
    from onnx import numpy_helper

    model_path, sample_path = saved["mlp"]
    out, report = tmp_path / "q", tmp_path / "r.json"
    # atol 0.05 is realistic: exact int8 arithmetic on this model differs from float by ~0.024 (weights alone ~0.015)
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--quantize", "int8",
                                 "--atol", "0.05", "--rtol", "0.2", "--out", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "quantized int8" in result.output and "labels agree" in result.output
    cost = json.loads(report.read_text())["meta"]["quantization"]
    python = cost["against_float_model"]["python"]
    assert 0 < python["max_abs_diff_vs_float"] < 0.05  # int8 does change the outputs, a little
    assert python["label_agreement"] >= 0.95
    # 7-bit weights: uint8·int8 pair sums stay below int16 saturation in onnxruntime's non-VNNI x86 kernel
    # (full-range int8 weights gave max abs diff 0.21 on an AVX2 CPU); checked on the graph, so on any CPU
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)
    # sizes are whole model.onnx files; 4→16→3 has 112 weights, too few for int8 to pay for its extra nodes
    assert cost["bytes_saved"] < 0 and "larger than the float one" in cost["note"]
    # a bigger model is a warning that says what to do, not "saved -2%"
    assert "saved -" not in result.output and "made the weights bigger" in result.output
    assert "Export it without --quantize" in result.output
    # at the float tolerances the quantized model is (honestly) not the float model
    strict = runner.invoke(app, ["check", str(out), "-r", "python", "--atol", "1e-5", "--rtol", "1e-4"])
    assert strict.exit_code == 3, strict.output


def test_a_savedmodel_directory_exports_like_a_keras_file(saved, tmp_path):
    model_path, sample_path = saved["normalized-regressor"]
    directory = tmp_path / "saved_model"
    keras.models.load_model(model_path).export(str(directory), format="tf_saved_model", verbose=False)
    result = runner.invoke(app, ["export", str(directory), "--sample", str(sample_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["name"] == "saved_model" and manifest["inputs"][0]["shape"] == [None, 10]


def test_a_directory_that_is_not_a_savedmodel_is_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "junk"), "--sample", str(tmp_path / "x.npy"), "--out", str(tmp_path / "b")])
    assert_clean(result, "not a TensorFlow SavedModel")


def test_classes_name_the_labels(saved, tmp_path):
    model_path, sample_path = saved["mlp"]
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--classes", "setosa,versicolor,virginica",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    golden = json.loads((tmp_path / "b" / "golden.json").read_text())
    assert set(golden["outputs"]["label"]) <= {"setosa", "versicolor", "virginica"}


# ------------------------------------------------------------ bad input: exit 1, one paragraph

def assert_clean(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_sample_shape_that_does_not_match_the_input(saved, tmp_path):
    model_path, _ = saved["cnn"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 8, 8), dtype="float32"))
    assert_clean(runner.invoke(app, ["export", str(model_path), "--sample", str(wrong), "--out", str(tmp_path / "b")]),
                 "input 'pixels'", "(10, 8, 8)", "(None, 8, 8, 1)")


def test_two_input_model_needs_an_npz(saved, tmp_path):
    model_path, _ = saved["two-inputs"]
    single = tmp_path / "one.npy"
    np.save(single, np.zeros((4, 5), dtype="float32"))
    assert_clean(runner.invoke(app, ["export", str(model_path), "--sample", str(single), "--out", str(tmp_path / "b")]),
                 "2 inputs", ".npz")


def test_unsupported_op_is_translated(tmp_path):
    import tensorflow as tf

    from edgeport.errors import ConversionError
    from edgeport.loading import LoadedModel
    from edgeport.registry import get_converter

    class LogGamma(keras.layers.Layer):
        def call(self, x):  # Lgamma: TF.js has no kernel for it
            return tf.math.lgamma(x + 1.0)

    inputs = keras.Input((6,), name="codes")
    model = keras.Model(inputs, keras.layers.Dense(1)(LogGamma()(inputs)))
    sample = np.random.default_rng(0).uniform(0, 4, (20, 6)).astype("float32")
    loaded = LoadedModel("keras", model, tmp_path, "0" * 64, "keras")
    with pytest.raises(ConversionError) as info:
        get_converter("keras", "tfjs").convert(loaded, sample, lambda m: None)
    message = str(info.value)
    assert "tensorflowjs_converter failed" in message and "Lgamma" in message and "--to onnx" in message
    assert "Traceback" not in message and "\n" not in message.strip()


def test_tensorflow_not_installed_is_a_clear_error(saved, tmp_path, monkeypatch):
    model_path, sample_path = saved["mlp"]
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now raises ImportError
    assert_clean(runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(tmp_path / "b")]),
                 "TensorFlow", "pip install -e '.[tensorflow]'")


def test_help_still_does_not_import_tensorflow():
    import subprocess

    from conftest import REPO

    code = "import sys, cli; from typer.testing import CliRunner; CliRunner().invoke(cli.app, ['export', '--help']); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
