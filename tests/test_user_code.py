"""User code on purpose: --import modules and `edgeport.converters` plugins (exporter/plugins.py).

The exports run as real `edgeport` processes, so what a module or plugin makes possible is what a fresh
process finds, not what this test process happened to import.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO, iris_frame, need, save_model
from edgeport.cli import app

runner = CliRunner()
EDGEPORT = Path(sys.executable).with_name("edgeport")

# a custom transformer, and the skl2onnx converter its module registers when imported
HALVING = textwrap.dedent('''
    import numpy as np
    from sklearn.base import BaseEstimator, TransformerMixin
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxMul
    from skl2onnx.common.data_types import guess_numpy_type


    class Halver(TransformerMixin, BaseEstimator):
        def fit(self, X, y=None):
            return self

        def transform(self, X):
            return np.asarray(X, dtype=np.float64) * 0.5


    def _shape(operator):
        features = operator.inputs[0]
        operator.outputs[0].type = features.type.__class__([features.get_first_dimension(), features.type.shape[1]])


    def _convert(scope, operator, container):
        features = operator.inputs[0]
        half = np.array([0.5], dtype=guess_numpy_type(features.type))
        OnnxMul(features, half, op_version=container.target_opset,
                output_names=operator.outputs[:1]).add_to(scope, container)


    update_registered_converter(Halver, "TestHalver", _shape, _convert)
''')


def edgeport(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEPORT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _import_from(directory: Path, name: str):
    """Import `name` from `directory` in this process (to fit and save a model that uses its classes)."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def halving_model(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    (tmp_path / "halving.py").write_text(HALVING)
    halving = _import_from(tmp_path, "halving")
    X, y = iris_frame()
    model_path, sample = save_model(make_pipeline(halving.Halver(), LogisticRegression(max_iter=500)).fit(X, y),
                                    tmp_path, "halved", X)
    return model_path, sample


def test_import_loads_a_custom_transformer_and_its_converter_and_trusts_only_its_classes(halving_model, tmp_path):
    model_path, sample = halving_model
    # without --import, skops refuses the unknown class and says how to let it in
    plain = edgeport("export", model_path, "--sample", sample, "--out", tmp_path / "a", cwd=tmp_path)
    assert plain.returncode == 1, plain.stderr
    assert "--trust halving.Halver" in plain.stderr and "--import MODULE" in plain.stderr, plain.stderr
    assert "Traceback" not in plain.stderr
    # trusted by name but not importable in the process: the message names the module and --import,
    # not "damaged"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    trusted = edgeport("export", model_path, "--sample", sample, "--out", tmp_path / "b", "--trust", "halving.Halver",
                       cwd=cwd)
    assert trusted.returncode == 1, trusted.stderr
    assert "needs the module 'halving'" in trusted.stderr and "--import" in trusted.stderr, trusted.stderr
    assert "damaged" not in trusted.stderr
    # --import: the class loads (trusted because the module defines it) and its converter is registered
    imported = edgeport("export", model_path, "--sample", sample, "--out", tmp_path / "c", "--import", "halving",
                        cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["runtimes"]["python"] == "passed"
    # a .py path works from anywhere
    by_path = edgeport("export", model_path, "--sample", sample, "--out", tmp_path / "d", "--import",
                       tmp_path / "halving.py", cwd=cwd)
    assert by_path.returncode == 0, by_path.stderr


def test_import_trusts_classes_the_module_defines_not_what_it_imports(tmp_path):
    from edgeport.plugins import defined_in

    (tmp_path / "steps_mod.py").write_text("import os\nfrom collections import OrderedDict\n\nclass Step:\n    pass\n")
    module = _import_from(tmp_path, "steps_mod")
    assert defined_in("steps_mod.Step", [module])
    for borrowed in ("steps_mod.os.system", "steps_mod.OrderedDict", "steps_mod.os", "steps_mod.Missing", "other.Step"):
        assert not defined_in(borrowed, [module]), borrowed
    # --import numpy grants nothing beyond numpy's own rules: numpy.memmap (file-backed memory) stays out
    import numpy

    assert not defined_in("numpy.memmap", [numpy])


def test_import_errors_are_one_paragraph(iris_model, tmp_path, monkeypatch):
    _, model_path, sample = iris_model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raises.py").write_text("raise RuntimeError('this module is broken')\n")
    cases = {
        "no_such_module_here": "no module named 'no_such_module_here'",
        "raises": "importing it raised RuntimeError: this module is broken",
        str(tmp_path / "missing.py"): "no such file",
        "not a name": "not a module name",
    }
    for name, words in cases.items():
        result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample), "--out",
                                     str(tmp_path / "b"), "--import", name])
        assert result.exit_code == 1 and words in result.output, (name, result.output)
        assert not (tmp_path / "b").exists()
    # check runs no original without --model, so --import has nothing to do there: refused, not ignored
    checked = runner.invoke(app, ["check", str(tmp_path), "--import", "raises"])
    assert checked.exit_code == 2 and "--import applies to an original --model" in checked.output, checked.output


def test_a_pickle_whose_class_is_gone_names_it_and_import(tmp_path):
    import pickle

    (tmp_path / "gone_mod.py").write_text("class Thing:\n    pass\n")
    module = _import_from(tmp_path, "gone_mod")
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(module.Thing()))
    (tmp_path / "gone_mod.py").write_text("# Thing was removed\n")
    sys.modules.pop("gone_mod")
    result = runner.invoke(app, ["export", str(path), "--allow-pickle", "--sample", str(path), "--out",
                                 str(tmp_path / "b"), "--import", str(tmp_path / "gone_mod.py")])
    assert result.exit_code == 1, result.output
    assert "the class gone_mod.Thing, which its module does not define here" in result.output, result.output
    sys.modules.pop("gone_mod", None)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """examples/converter-plugin installed (not editable) into a directory of its own."""
    target = tmp_path_factory.mktemp("plugin")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(REPO / "examples" / "converter-plugin")], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    return target


def test_a_converter_plugin_from_its_entry_point_exports_a_custom_transformer(plugin_dir, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    sys.path.insert(0, str(plugin_dir))
    try:
        from edgeport_clip_log import ClipLog
    finally:
        sys.path.remove(str(plugin_dir))
    X, y = iris_frame()
    model_path, sample = save_model(make_pipeline(ClipLog(), LogisticRegression(max_iter=500)).fit(X, y),
                                    tmp_path, "cliplog", X)
    args = ("export", model_path, "--sample", sample, "--out", tmp_path / "b", "--trust", "edgeport_clip_log.ClipLog")
    # the class alone is not enough: skl2onnx has no converter for it until the plugin's entry point is there
    module_only = tmp_path / "module-only"
    module_only.mkdir()
    (module_only / "edgeport_clip_log.py").write_text((plugin_dir / "edgeport_clip_log.py").read_text())
    without = edgeport(*args, cwd=tmp_path, env={"PYTHONPATH": str(module_only)})
    assert without.returncode == 1 and "ClipLog" in without.stderr, without.stderr
    exported = edgeport(*args, cwd=tmp_path, env={"PYTHONPATH": str(plugin_dir)})
    assert exported.returncode == 0, exported.stderr
    need(Path(REPO / "web_demo" / "node_modules").is_dir(), "web_demo/node_modules is missing (make setup)")
    checked = edgeport("check", tmp_path / "b", "-r", "python", "-r", "node", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_plugin_that_fails_to_load_stops_the_export_naming_its_package(iris_model, tmp_path):
    _, model_path, sample = iris_model
    site = tmp_path / "site"
    info = site / "broken_plugin-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[edgeport.converters]\nbroken = broken_plugin:register\n")
    (site / "broken_plugin.py").write_text("def register():\n    raise ImportError('needs skl2onnx 9')\n")
    result = edgeport("export", model_path, "--sample", sample, "--out", tmp_path / "b", cwd=tmp_path,
                      env={"PYTHONPATH": str(site)})
    assert result.returncode == 1, result.stderr
    for words in ("converter plugin 'broken'", "broken-plugin 0.3", "needs skl2onnx 9", "pip uninstall broken-plugin"):
        assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.tensorflow
def test_import_loads_a_registered_custom_keras_layer(tmp_path):
    need(importlib.util.find_spec("tensorflow") is not None, "the tensorflow extra is not installed")
    (tmp_path / "my_layers.py").write_text(textwrap.dedent('''
        import keras


        @keras.saving.register_keras_serializable(package="my_layers")
        class Scale(keras.layers.Layer):
            def build(self, input_shape):
                self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones")

            def call(self, x):
                return x * self.factor
    '''))
    layers = _import_from(tmp_path, "my_layers")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(layers.Scale()(inputs)))
    model.save(tmp_path / "scaled.keras")
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(32, 4)).astype("float32"))
    result = edgeport("export", tmp_path / "scaled.keras", "--sample", tmp_path / "rows.npy", "--out",
                      tmp_path / "b", "--import", "my_layers", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"]["passed"]
