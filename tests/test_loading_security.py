"""Loading a model never runs code the user did not trust: hostile .skops files, zip bombs, SavedModel side effects."""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import IN_CI, iris_frame, save_model

runner = CliRunner()


def assert_clean_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in message, message


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


# -- hand-built .skops files, as skops writes them -----------------------------------------------------------------

def skops_file(path: Path, schema: dict, members: dict[str, bytes] | None = None, **zip_options) -> Path:
    """A .skops archive: schema.json (with skops' protocol and version) plus any other members."""
    import skops
    from skops.io._protocol import PROTOCOL

    with zipfile.ZipFile(path, "w", **zip_options) as archive:
        archive.writestr("schema.json", json.dumps({**schema, "protocol": PROTOCOL, "_skops_version": skops.__version__}))
        for name, content in (members or {}).items():
            archive.writestr(name, content)
    return path


def json_node(value) -> dict:
    return {"__class__": type(value).__name__, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def call_node(dotted: str, *args) -> dict:
    """A node skops builds by calling `dotted(*args)` (how it restores objects whose __reduce__ is their type)."""
    module, name = dotted.rsplit(".", 1)
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": [json_node(a) for a in args]}}


def function_node(dotted: str) -> dict:
    module, name = dotted.rsplit(".", 1)
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}


def write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('this ran')"


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.csv"
    iris_frame()[0].to_csv(path, index=False)
    return path


@pytest.mark.parametrize("builtin", ["builtins.exec", "builtins.eval"])
def test_a_skops_file_that_calls_a_builtin_runs_nothing_in_export_or_check(builtin, iris_model, sample, tmp_path):
    from edgeport.export import export_model

    marker = tmp_path / "ran.txt"
    hostile = skops_file(tmp_path / "hostile.skops", call_node(builtin, write_marker_code(marker)))
    _, model_path, _ = iris_model
    bundle = export_model(model_path, tmp_path / "bundle", sample=sample).bundle

    exported = invoke("export", hostile, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(exported, "hostile.skops", builtin, f"--trust {builtin}")
    checked = invoke("check", bundle.path, "--model", hostile, "--data", sample)
    assert_clean_error(checked, "hostile.skops", builtin, f"--trust {builtin}")
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_trusting_the_builtin_by_name_is_the_only_way_through(sample, tmp_path):
    marker = tmp_path / "ran.txt"
    hostile = skops_file(tmp_path / "hostile.skops", call_node("builtins.exec", write_marker_code(marker)))
    refused = invoke("export", hostile, "--out", tmp_path / "b", "--sample", sample, "--trust", "builtins.eval")
    assert_clean_error(refused, "builtins.exec")
    assert not marker.exists()
    # named, skops builds it, and the payload runs: proof that the refusal above is what protected this machine
    invoke("export", hostile, "--out", tmp_path / "b", "--sample", sample, "--trust", "builtins.exec")
    assert marker.read_text() == "this ran"


@pytest.mark.parametrize("node", [
    function_node("builtins.getattr"),
    function_node("builtins.__import__"),
    function_node("numpy.save"),             # functions under a trusted package are still functions
    function_node("numpy.fromfile"),
    function_node("sklearn.utils.estimator_checks.check_estimator"),
    call_node("numpy.memmap", "MARKER", "uint8", "w+", 0, [8]),  # a numpy class that creates files
    call_node("numpy.lib.npyio.DataSource", "MARKER"),
    call_node("scipy.io.netcdf_file", "MARKER", "w"),
    call_node("os.system", "touch MARKER"),
], ids=lambda node: f"{node['__module__']}.{node['__class__']}")
def test_functions_and_file_touching_classes_need_trust(node, tmp_path):
    from edgeport.errors import UntrustedTypesError
    from edgeport.loading import load_model

    marker = tmp_path / "ran"
    hostile = skops_file(tmp_path / "hostile.skops", json.loads(json.dumps(node).replace("MARKER", str(marker))))
    with pytest.raises(UntrustedTypesError, match=f"--trust {node['__module__']}.{node['__class__']}"):
        load_model(hostile)
    assert not marker.exists()


def _real_models() -> dict:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    from edgeport.examples import recipes

    X, y = iris_frame()
    frame = pd.DataFrame({"city": ["a", "b", None, "a"] * 5, "age": [1.0, np.nan, 3.0, 4.0] * 5})
    column_transformer = ColumnTransformer([
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), ["city"]),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
    ])
    texts = ["apple banana", "banana cherry", "cherry date", "apple date"] * 3
    models = {
        "scaler-logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y),
        "random-forest": RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y),
        "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=5).fit(X, y),
        "knn-kdtree": KNeighborsClassifier(algorithm="kd_tree").fit(X, y),
        "knn-balltree": KNeighborsClassifier(algorithm="ball_tree").fit(X, y),
        "column-transformer": make_pipeline(column_transformer, LogisticRegression()).fit(frame, [0, 1] * 10),
        "log1p": make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=500)).fit(X, y),
        "tfidf": make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [0, 1] * 6),
    }
    models.update({f"example-{name}": make().model for name, make in recipes(include_keras=False).items()})
    return models


def test_real_pipelines_and_the_example_models_load_without_trust(tmp_path):
    import skops.io as sio

    from edgeport.loading import load_model

    for name, model in _real_models().items():
        path = tmp_path / f"{name}.skops"
        sio.dump(model, path)
        assert type(load_model(path).model) is type(model), name


def test_what_is_trusted_by_default():
    from edgeport.loading import trusted_by_default

    for name in ["sklearn.tree._tree.Tree", "sklearn.neighbors._kd_tree.KDTree", "numpy.dtype", "numpy.log1p",
                 "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", "scipy.sparse._csr.csr_matrix"]:
        assert trusted_by_default(name), name
    for name in ["builtins.exec", "builtins.eval", "builtins.open", "builtins.compile", "builtins.getattr", "os.system",
                 "numpy.save", "numpy.load", "numpy.memmap", "numpy.lib.npyio.savetxt", "sklearn.base.clone",
                 "scipy.io.savemat", "sklearn.tree._tree.Tree.apply", "sklearn.nope.Nothing", "numpy..x", "",
                 "sklearn.utils._testing.TempMemmap", "numpy.f2py.__main__.main"]:
        assert not trusted_by_default(name), name


# -- memory bombs and damaged schemas --------------------------------------------------------------------------------

def ndarray_node(member: str) -> dict:
    return {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
            "file": member}


def zeros_member(archive: zipfile.ZipFile, name: str, size: int) -> None:
    """Stream `size` zero bytes into a deflated member: a few kB on disk, `size` bytes when read."""
    chunk = bytes(1 << 20)
    with archive.open(name, "w", force_zip64=True) as member:  # deflated: the archive's compression
        for start in range(0, size, len(chunk)):
            member.write(chunk[: size - start])


def test_a_zip_bomb_is_refused_before_skops_reads_it(sample, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_MAX_MODEL_BYTES", str(10 << 20))
    bomb = skops_file(tmp_path / "bomb.skops", ndarray_node("big.npy"), compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        zeros_member(archive, "big.npy", 50 << 20)
    assert bomb.stat().st_size < 1 << 20
    started = time.perf_counter()
    result = invoke("export", bomb, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(result, "bomb.skops", "50.0 MiB", "10.0 MiB", "EDGEPORT_MAX_MODEL_BYTES")
    assert time.perf_counter() - started < 5


def test_one_member_read_many_times_counts_each_time(tmp_path, monkeypatch):
    from edgeport.errors import ModelLoadError
    from edgeport.loading import load_model

    monkeypatch.setenv("EDGEPORT_MAX_MODEL_BYTES", str(10 << 20))
    schema = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
              "content": [{**ndarray_node("a.npy"), "__id__": i} for i in range(8)]}
    path = skops_file(tmp_path / "repeat.skops", schema, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        zeros_member(archive, "a.npy", 2 << 20)
    with pytest.raises(ModelLoadError, match="16.0 MiB"):
        load_model(path)


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    from edgeport.errors import ModelLoadError
    from edgeport.loading import load_model

    monkeypatch.setenv("EDGEPORT_MAX_MODEL_MEMBERS", "5")
    path = skops_file(tmp_path / "many.skops", json_node(1), {f"{i}.bin": b"" for i in range(10)})
    with pytest.raises(ModelLoadError, match="11 files.*EDGEPORT_MAX_MODEL_MEMBERS"):
        load_model(path)


def _nested_lists(depth: int) -> dict:
    node = json_node(1)
    for _ in range(depth):
        node = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": [node]}
    return node


@pytest.mark.parametrize("schema", [
    _nested_lists(400),  # parses as JSON, but skops' recursive walk runs out of stack
    {"__class__": 5, "__module__": [], "__loader__": "ConstructorFromReduceNode", "content": 3},
    {"__class__": "list", "__module__": "builtins", "__loader__": ["ListNode"], "content": []},
    {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": {"a": None}},
    {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy", "file": 7},
], ids=["deep", "wrong-types", "unhashable-loader", "dict-for-list", "file-not-a-name"])
def test_a_damaged_or_hostile_schema_is_a_one_paragraph_error(schema, sample, tmp_path):
    path = skops_file(tmp_path / "damaged.skops", schema)
    result = invoke("export", path, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(result, "damaged.skops", "not a valid .skops file", "skops.io.dump")


def test_a_schema_nested_past_what_json_can_parse(sample, tmp_path):
    path = tmp_path / "deep.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", "[" * 100_000 + "]" * 100_000)
    assert_clean_error(invoke("export", path, "--out", tmp_path / "b", "--sample", sample), "not a valid .skops file")


def test_a_bad_limit_is_explained(iris_model, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_MAX_MODEL_BYTES", "a lot")
    _, model_path, _ = iris_model
    assert_clean_error(invoke("export", model_path, "--out", tmp_path / "b", "--sample", sample),
                       "EDGEPORT_MAX_MODEL_BYTES", "positive whole number")


# -- SavedModels with side effects ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    if IN_CI:
        import tensorflow
    else:
        tensorflow = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    return tensorflow


def _save_writer(tf, directory: Path, marker: Path, width: int = 3) -> Path:
    """A SavedModel whose serving signature writes `marker` and returns x * 2."""

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32, name="x")])
        def serve(self, x):
            tf.io.write_file(str(marker), "this ran")
            return {"y": x * 2.0}

    module = Writer()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


@pytest.mark.tensorflow
def test_a_savedmodel_that_writes_a_file_is_refused_before_it_runs(tf, tmp_path):
    marker = tmp_path / "ran.txt"
    directory = _save_writer(tf, tmp_path / "writer", marker)
    assert not marker.exists()  # saving traced the function; it did not run it
    sample = tmp_path / "x.npy"
    np.save(sample, np.ones((4, 3), dtype=np.float32))

    result = invoke("export", directory, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(result, "WriteFile", "--allow-op WriteFile", "__inference_serve")
    assert not marker.exists()
    assert not (tmp_path / "b").exists()

    allowed = invoke("export", directory, "--out", tmp_path / "b", "--sample", sample, "--allow-op", "WriteFile")
    assert "refusing" not in allowed.output and "--allow-op" not in allowed.output, allowed.output


@pytest.mark.tensorflow
def test_check_with_a_savedmodel_model_is_audited_too(tf, iris_bundle, sample, tmp_path):
    marker = tmp_path / "ran.txt"
    directory = _save_writer(tf, tmp_path / "writer", marker, width=4)  # iris: it would run on the data
    result = invoke("check", iris_bundle.path, "--model", directory, "--data", sample)
    assert_clean_error(result, "WriteFile", "--allow-op WriteFile")
    assert not marker.exists()


@pytest.mark.tensorflow
def test_an_initializer_that_reads_a_file_is_refused(tf, tmp_path):
    """Table initializers run while the model loads, before any signature is called."""
    from edgeport.errors import UnsafeGraphError
    from edgeport.keras_loading import audit_saved_model

    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a\nb\n")

    class Lookup(tf.Module):
        def __init__(self):
            initializer = tf.lookup.TextFileInitializer(
                str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(initializer, -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, x):
            return {"y": self.table.lookup(x)}

    module = Lookup()
    tf.saved_model.save(module, str(tmp_path / "lookup"), signatures={"serving_default": module.serve})
    with pytest.raises(UnsafeGraphError, match="InitializeTableFromTextFileV2"):
        audit_saved_model(tmp_path / "lookup")
    audit_saved_model(tmp_path / "lookup", allow_ops=["InitializeTableFromTextFileV2"])


@pytest.mark.tensorflow
def test_ordinary_keras_savedmodels_pass_the_audit(tf, tmp_path):
    """The saver's SaveV2/RestoreV2 functions are in every SavedModel; they must not count against it."""
    import keras

    from edgeport.keras_loading import audit_saved_model

    inputs = keras.Input((6, 4))
    hidden = keras.layers.LSTM(3)(keras.layers.Normalization()(inputs))  # a While loop with body functions
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dropout(0.1)(hidden)))
    model.export(str(tmp_path / "keras"), format="tf_saved_model", verbose=False)
    audit_saved_model(tmp_path / "keras")
