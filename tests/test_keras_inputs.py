"""Keras beyond float inputs and softmax heads: integer token ids, a sigmoid binary head, RNN layers, a softmax
classifier read from a SavedModel, a sequence input and its demo form. Marked `tensorflow` (and `browser` where
Chromium runs); in CI they run, never skip.

Two tiny seeded models cover the cases, each built and exported once for the module (TF exports are the cost):
  tokens    int64 token ids -> Embedding -> LSTM -> one sigmoid unit, a .keras file (--to tfjs and --to onnx)
  sequence  [batch, 5 steps, 3 features] -> GRU -> softmax over 3, a SavedModel directory (--to tfjs)
"""
from __future__ import annotations

import json
import shutil
import tempfile

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import IN_CI, ExportOnce, ServerProcess, artifact_dir, assert_parity, need, wait_for_browser_runtime

pytestmark = [pytest.mark.tensorflow]
runner = CliRunner()
keras = pytest.importorskip("keras", reason="the tensorflow extra is not installed") if not IN_CI else __import__("keras")
CLASSES = ["negative", "positive"]


def js_ready():
    from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

    need(shutil.which("node") is not None, "node is not on PATH")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (model path, sample path)}: the models, trained a little (seeded) and saved as users save them."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("keras-inputs")
    rng = np.random.default_rng(0)
    out = {}

    ids = rng.integers(1, 20, size=(160, 6)).astype("int64")
    label = (ids[:, :3].sum(axis=1) > ids[:, 3:].sum(axis=1)).astype("float32")
    tokens = keras.Input((6,), dtype="int64", name="tokens")
    x = keras.layers.LSTM(4)(keras.layers.Embedding(20, 4)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(ids, label, epochs=2, batch_size=32, verbose=0)
    model.save(root / "tokens.keras")
    np.save(root / "tokens.npy", ids[:40])
    out["tokens"] = (root / "tokens.keras", root / "tokens.npy")

    steps = rng.normal(size=(160, 5, 3)).astype("float32")
    classes = steps[:, :, 0].sum(axis=1).round().clip(-1, 1).astype("int64") + 1  # 0, 1, 2
    seq = keras.Input((5, 3), name="steps")
    model = keras.Model(seq, keras.layers.Dense(3, activation="softmax")(keras.layers.GRU(4)(seq)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(steps, classes, epochs=10, batch_size=32, verbose=0)  # sure enough of some rows to answer in the browser
    model.export(str(root / "sequence"), format="tf_saved_model", verbose=False)
    np.save(root / "sequence.npy", steps[:40])
    out["sequence"] = (root / "sequence", root / "sequence.npy")

    features = keras.Input((4,), name="features")  # a linear head around 5: no probabilities
    model = keras.Model(features, keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(5.0))(features))
    model.save(root / "regressor.keras")
    np.save(root / "regressor.npy", rng.normal(size=(30, 4)).astype("float32") * 0.01)
    out["regressor"] = (root / "regressor.keras", root / "regressor.npy")
    return out


@pytest.fixture(scope="module")
def bundles(saved, tmp_path_factory):
    """export(name, target, **options): each bundle exported once for the module; the tests only read them."""
    export = ExportOnce(tmp_path_factory.mktemp("keras-inputs-bundles"))
    return lambda name, target, **options: export(*saved[name], to=target, **options)


def keras_probabilities(model_path, rows, dtype):
    predictions = keras.models.load_model(model_path).predict(np.asarray(rows, dtype=dtype), verbose=0)
    return np.concatenate([1 - predictions, predictions], axis=1)


# ------------------------------------------------------------ integer inputs and a sigmoid head

@pytest.mark.browser
@pytest.mark.parametrize("target", ["tfjs", "onnx"])
def test_token_ids_stay_int32_and_a_sigmoid_head_is_a_binary_classifier(target, saved, bundles):
    import onnx

    from edgeport.check import check_bundle

    js_ready()
    result = bundles("tokens", target, classes=CLASSES)
    manifest = result.bundle.manifest
    # the contract: int32 in the manifest, in the ONNX graph (python, server) and in the TF.js graph (node, browser)
    assert [(i.name, i.dtype, i.shape) for i in manifest.inputs] == [("tokens", "int32", (None, 6))]
    onnx_input = onnx.load(str(result.bundle.path / manifest.server_model_file)).graph.input[0]
    assert onnx_input.type.tensor_type.elem_type == onnx.TensorProto.INT32
    if target == "tfjs":
        signature = json.loads((result.bundle.path / "tfjs" / "model.json").read_text())["signature"]
        assert signature["inputs"]["tokens"]["dtype"] == "DT_INT32"  # TF.js has no int64
    # one sigmoid unit is a binary classifier: probabilities [1 - p, p], labels named by --classes
    assert manifest.task == "classification" and manifest.classes == tuple(CLASSES)
    assert [(o.role, o.shape) for o in manifest.outputs] == [("probabilities", (None, 2))]
    golden = result.bundle.golden()
    expected = keras_probabilities(saved["tokens"][0], golden["rows"], "int64")
    np.testing.assert_allclose(golden["outputs"]["probabilities"], expected, rtol=1e-6, atol=1e-7)
    assert golden["outputs"]["label"] == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert set(golden["outputs"]["label"]) == set(CLASSES)  # the sample has both answers: labels are compared
    assert_parity(result.report, ("server", "node") if target == "tfjs" else ("python",))
    applies = ("server", "node", "browser") if target == "tfjs" else ("python", "server", "node", "browser")
    assert_parity(check_bundle(result.bundle.path, list(applies)), applies)


def test_integer_rows_out_of_int32_are_refused_by_the_bundle(bundles):
    """A token id past int32 is a RowValidationError naming it, in the decoder the server and python share."""
    from edgeport.decoding import feeds_from_rows
    from edgeport.errors import RowValidationError

    bundle = bundles("tokens", "onnx", classes=CLASSES).bundle
    feeds = feeds_from_rows(bundle.inputs, "matrix", [[1, 2, 3, 4, 5, 6.0]])
    assert feeds["tokens"].dtype == np.int32
    with pytest.raises(RowValidationError, match="does not fit int32") as caught:
        feeds_from_rows(bundle.inputs, "matrix", [[1, 2, 3, 4, 5, 2**31]])
    assert caught.value.code == "range" and caught.value.field == "tokens"


def test_a_sample_that_is_not_integers_is_refused_for_an_integer_input(saved, tmp_path):
    model_path, _ = saved["tokens"]
    floats = tmp_path / "floats.npy"
    np.save(floats, np.full((4, 6), 1.5, dtype="float32"))
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(floats), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "takes integers (int32" in result.output and "1.5" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------ a SavedModel, a GRU and a sequence input

@pytest.mark.browser
def test_a_softmax_savedmodel_with_a_gru_is_a_classifier_in_every_runtime(saved, bundles):
    from edgeport.check import check_bundle

    js_ready()
    result = bundles("sequence", "tfjs")
    manifest = result.bundle.manifest
    assert manifest.task == "classification" and manifest.classes == (0, 1, 2)  # the graph's Softmax says so
    assert [(i.name, i.dtype, i.shape, i.kind) for i in manifest.inputs] == [("steps", "float32", (None, 5, 3), "sequence")]
    assert_parity(result.report, ("server", "node"))
    assert_parity(check_bundle(result.bundle.path, ["server", "node", "browser"]), ("server", "node", "browser"))
    golden = result.bundle.golden()
    assert len(set(golden["outputs"]["label"])) > 1


def test_task_and_classes_decide_over_the_head(saved):
    """--task overrides what the head says; --classes must fit the classes the head gives."""
    from edgeport.converters.keras_contract import keras_task
    from edgeport.errors import SampleError, UnusedOptionError
    from edgeport.keras_loading import load_keras_model

    tokens = keras.models.load_model(saved["tokens"][0])
    assert keras_task(tokens, None) == ("classification", [0, 1])
    assert keras_task(tokens, None, "regression") == ("regression", None)
    with pytest.raises(SampleError, match="one sigmoid unit: a binary classifier, so name 2 classes"):
        keras_task(tokens, ["a", "b", "c"])
    sequence = load_keras_model(saved["sequence"][0]).model
    assert keras_task(sequence, ["down", "flat", "up"]) == ("classification", ["down", "flat", "up"])
    regressor = keras.models.load_model(saved["regressor"][0])
    assert keras_task(regressor, None) == ("regression", None)
    with pytest.raises(UnusedOptionError):
        keras_task(regressor, ["a", "b"])


# ------------------------------------------------------------ refusals: before any conversion, with what to do

def test_classes_on_a_regressor_are_refused_not_ignored(saved, tmp_path):
    model_path, sample_path = saved["regressor"]
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--classes", "a,b",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "exported as a regressor" in result.output and "--task classification" in result.output
    assert not (tmp_path / "b").exists()


def test_task_classification_on_outputs_that_are_not_probabilities_is_refused(saved, tmp_path):
    model_path, sample_path = saved["regressor"]
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--task", "classification",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "not probabilities" in result.output and "outside [0, 1]" in result.output and "softmax" in result.output
    assert "Traceback" not in result.output


def test_a_string_input_is_refused_with_what_to_do(tmp_path):
    from edgeport.errors import UnsupportedModelError
    from edgeport.loading import LoadedModel
    from edgeport.registry import get_converter

    text = keras.Input((1,), dtype="string", name="text")
    ids = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="one_hot")(text)
    model = keras.Model(text, keras.layers.Dense(1)(keras.layers.Flatten()(ids)))
    loaded = LoadedModel("keras", model, tmp_path, "0" * 64, "keras")
    with pytest.raises(UnsupportedModelError, match="takes string values") as caught:
        get_converter("keras", "tfjs").convert(loaded, np.array([["a"]]), lambda m: None)
    assert "token ids" in str(caught.value)


# ------------------------------------------------------------ the demo: a grid for a sequence, fields for ids

@pytest.mark.browser
def test_the_demo_asks_for_a_sequence_as_steps_by_features_and_for_token_ids_as_integers(bundles, tmp_path):
    from playwright.sync_api import sync_playwright

    from edgeport.runtimes.browser import PageLog, launch

    js_ready()
    served = tmp_path / "bundles"
    for name in ("sequence", "tokens"):
        shutil.copytree(bundles(name, "tfjs", **({"classes": CLASSES} if name == "tokens" else {})).bundle.path,
                        served / name)
    server = ServerProcess(served)
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            context = launch(pw, profile)
            try:
                page = context.new_page()
                page.log = PageLog()
                page.log.attach(page)
                page.set_default_timeout(30_000)
                _sequence_page(page, server.url, bundles("sequence", "tfjs").bundle.golden())
                _tokens_page(page, server.url, bundles("tokens", "tfjs", classes=CLASSES).bundle.golden())
                assert not [line for line in page.log.lines if "Content Security Policy" in line or
                            line.startswith("page error")], page.log.lines
            finally:
                context.close()
    finally:
        server.stop()


def _predict(page):
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden]), #error-state:not([hidden])")


def _sequence_page(page, url, golden):
    page.goto(f"{url}/?model=sequence")
    wait_for_browser_runtime(page)
    assert not page.locator("#canvas").count()  # not an image
    grid = page.locator("textarea[name='steps']")
    assert grid.is_visible() and "5 steps" in page.text_content("#form") and "3 features" in page.text_content("#form")
    row = int(np.argmax(np.max(golden["outputs"]["probabilities"], axis=1)))
    grid.fill("\n".join(", ".join(repr(v) for v in step) for step in golden["rows"][row]))
    _predict(page)
    assert page.text_content("#served-by") == "browser", page.text_content("#notice")
    assert page.text_content("#label") == str(golden["outputs"]["label"][row])
    assert page.locator("#bars .prob").count() == 3
    page.screenshot(path=str(artifact_dir("demo") / "7-keras-sequence-grid.png"), full_page=True)
    grid.fill("1, 2, 3\n4, 5")  # a ragged step: the client's message, nothing sent
    _predict(page)
    assert page.is_visible("#error-state") and "steps" in page.text_content("#error-text")


def _tokens_page(page, url, golden):
    probabilities = np.asarray(golden["outputs"]["probabilities"])
    unsure = int(np.argmin(probabilities.max(axis=1)))  # under the 0.6 threshold? ask for more below
    page.goto(f"{url}/?model=tokens&threshold=1")  # every answer is low-confidence: the server is asked
    wait_for_browser_runtime(page)
    fields = page.locator("#form input")
    assert fields.count() == 6 and fields.first.get_attribute("step") == "1"
    for i, value in enumerate(golden["rows"][unsure]):
        page.fill(f"input[name='f{i}']", str(int(value)))
    _predict(page)
    assert page.text_content("#served-by") == "server"
    assert page.get_attribute("#notice", "data-reason") == "low-confidence"
    assert page.text_content("#label") == golden["outputs"]["label"][unsure]
    assert "confident" in page.text_content("#confidence")
