"""Text pipelines: TfidfVectorizer / CountVectorizer on one text column or on the texts themselves, exported
with one string input, running without any particular system locale in python, node and Chromium, and the
text steps ONNX can't match refused before conversion with what to do instead."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import assert_parity, need, save_model, wait_for_browser_runtime
from zoo import reviews

runner = CliRunner()


def _root_pipeline(vectorizer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    frame, target = reviews(n=200, seed=5)
    return make_pipeline(vectorizer, LogisticRegression(max_iter=1000)).fit(frame["review"], target), frame[["review"]]


@pytest.fixture(scope="module")
def root_bundle(tmp_path_factory):
    """TfidfVectorizer + LogisticRegression fit on a plain Series of texts; the sample is one text column."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("text")
    model, sample = _root_pipeline(TfidfVectorizer(ngram_range=(1, 2), max_df=0.5, sublinear_tf=True))
    model_path, sample_path = save_model(model, root, "reviews", sample)
    return model, sample, export_model(model_path, root / "bundles" / "reviews", sample=sample_path)


def test_a_pipeline_fit_on_texts_exports_with_one_string_input(root_bundle):
    model, sample, result = root_bundle
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["layout"] == "columns"
    assert manifest["inputs"] == [{"name": "review", "dtype": "string", "shape": [None, 1], "nullable": False,
                                   "column": "review", "kind": "text"}]
    # the golden outputs are the model's on the texts themselves (a DataFrame would hand it the column name)
    golden = result.bundle.golden()
    assert golden["outputs"]["label"] == model.predict(sample["review"]).tolist()
    # free text: lengths, never the texts, in the public manifest
    stats = manifest["feature_stats"]["review"]
    assert set(stats) == {"count", "missing", "min_length", "mean_length", "max_length"} and stats["min_length"] == 0


def test_the_graph_needs_no_en_us_locale(root_bundle):
    import locale

    import onnx

    with pytest.raises(locale.Error):  # this machine has no en_US.UTF-8, as slim images don't
        locale.setlocale(locale.LC_ALL, "en_US.UTF-8")
    graph = onnx.load(str(root_bundle[2].bundle.model_path)).graph
    locales = [a.s.decode() for n in graph.node if n.op_type == "StringNormalizer" for a in n.attribute if a.name == "locale"]
    assert locales == ["C.UTF-8"]


def test_text_bundle_passes_in_node_chromium_and_the_server(root_bundle):
    """(The zoo's text-column-pipeline, a text column in a ColumnTransformer, runs there in test_js_runtimes.)"""
    from edgeport.check import check_bundle
    from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

    need(shutil.which("node") is not None and (ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "node and npm ci needed")
    need(shutil.which("chromium") is not None, "chromium is not on PATH")
    report = check_bundle(root_bundle[2].bundle.path, ["node", "browser", "server"])
    assert_parity(report, ("node", "browser", "server"))


def test_new_text_and_edge_cases_match_in_python(root_bundle, tmp_path):
    """Texts the sample never had: unknown words only, empty, punctuation, one-letter words, unicode."""
    import pandas as pd

    model, _, result = root_bundle
    data = tmp_path / "new.csv"
    pd.DataFrame({"review": ["", "!!!", "a b c", "zzz qqq", "GREAT great Great", "café naïve über", "Über CAFÉ",
                             "good movie, bad plot", "loved it\nhated it", "x_y 2024 ταινία"]}).to_csv(data, index=False)
    model_path, _ = save_model(model, tmp_path, "again", pd.read_csv(data))
    result = runner.invoke(app, ["check", str(result.bundle.path), "--model", str(model_path), "--data", str(data)])
    assert result.exit_code == 0, result.output


def test_count_vectorizer_with_max_features_and_trigrams(tmp_path):
    """Vocabularies that skl2onnx used to mis-split: n-grams whose first word was cut by max_features, and no
    trigram left in the vocabulary at all (which onnxruntime refused to load)."""
    from sklearn.feature_extraction.text import CountVectorizer

    from edgeport.export import export_model

    for i, vectorizer in enumerate([CountVectorizer(ngram_range=(1, 3), max_features=40),
                                    CountVectorizer(ngram_range=(1, 3), max_features=300, max_df=0.2, binary=True),
                                    CountVectorizer(stop_words=["the", "a", "was"], lowercase=False)]):
        model, sample = _root_pipeline(vectorizer)
        model_path, sample_path = save_model(model, tmp_path, f"cv{i}", sample)
        assert_parity(export_model(model_path, tmp_path / f"b{i}", sample=sample_path).report)


def test_a_numeric_looking_text_column_stays_text(tmp_path):
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from edgeport.export import export_model

    frame = pd.DataFrame({"code": ["10 20", "20 30", "30 40", "10 40"] * 10, "x": np.arange(40.0)})
    model = make_pipeline(ColumnTransformer([("t", CountVectorizer(), "code"), ("n", "passthrough", ["x"])]),
                          LogisticRegression(max_iter=1000)).fit(frame, [0, 1, 1, 0] * 10)
    sample = frame.assign(code=["10", "20", "30", "40"] * 10)  # read back from CSV, this column is all numbers
    model_path, sample_path = save_model(model, tmp_path, "codes", sample)
    result = export_model(model_path, tmp_path / "b", sample=sample_path)
    assert_parity(result.report)
    assert result.bundle.inputs[0].dtype == "string" and result.bundle.inputs[0].kind == "text"


def test_a_missing_locale_is_named_not_blamed_on_custom_code(root_bundle, tmp_path, monkeypatch):
    from edgeport.converters import sklearn_text

    monkeypatch.setattr(sklearn_text, "TEXT_LOCALE", "xx_XX.UTF-8")
    model, sample, _ = root_bundle
    model_path, sample_path = save_model(model, tmp_path, "m", sample)
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "could not build the locale 'xx_XX.UTF-8'" in result.output and "lowercase=False" in result.output
    assert "custom code" not in result.output


def test_a_texts_sample_with_more_columns_is_refused(root_bundle, tmp_path):
    model, sample, _ = root_bundle
    model_path, sample_path = save_model(model, tmp_path, "m", sample.assign(label=1))
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "takes one text per row" in result.output and "'label'" in result.output


def _shout(text):
    return text.upper()


def _split(text):
    return text.split()


@pytest.mark.parametrize("vectorizer, says", [
    ("HashingVectorizer()", "skl2onnx has no converter for it"),
    ("TfidfVectorizer(analyzer='char_wb', ngram_range=(2, 3))", "no equivalent of scikit-learn's character n-grams"),
    ("CountVectorizer(analyzer='char')", "analyzer='char'"),
    ("TfidfVectorizer(token_pattern=r'(?u)\\b[a-z]\\w+\\b')", "onnxruntime tokenizes with RE2"),
    ("TfidfVectorizer(tokenizer=_split, token_pattern=None)", "a custom tokenizer is Python code"),
    ("TfidfVectorizer(preprocessor=_shout)", "a custom preprocessor is Python code"),
    ("TfidfVectorizer(strip_accents='unicode')", "can lowercase but not strip accents"),
    ("CountVectorizer(stop_words='english', ngram_range=(1, 2))", "drops stop words before it forms n-grams"),
])
def test_text_steps_onnx_cannot_match_are_refused_before_conversion(vectorizer, says, tmp_path, monkeypatch):
    import warnings

    import skl2onnx
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer  # noqa: F401

    from edgeport.errors import UnsupportedModelError
    from edgeport.export import export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, sample = _root_pipeline(eval(vectorizer))
    monkeypatch.setattr(skl2onnx, "to_onnx", lambda *a, **k: pytest.fail("refused only after converting"))
    model_path, sample_path = save_model(model, tmp_path, "m", sample)
    with pytest.raises(UnsupportedModelError) as info:
        export_model(model_path, tmp_path / "b", sample=sample_path, trust=["tests.test_text._shout",
                                                                             "tests.test_text._split",
                                                                             "test_text._shout", "test_text._split"])
    assert says in str(info.value)


@pytest.mark.browser
def test_the_demo_shows_a_text_box_and_predicts_what_is_typed(root_bundle):
    import tempfile

    from playwright.sync_api import sync_playwright

    from conftest import ARTIFACTS, ServerProcess
    from edgeport.runtimes.browser import launch

    need(shutil.which("chromium") is not None, "chromium is not on PATH")
    model, _, result = root_bundle
    server = ServerProcess(result.bundle.path.parent)
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            context = launch(pw, profile)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{server.url}/?model=reviews")
            wait_for_browser_runtime(page)
            assert page.locator("#form select").count() == 0  # not a dropdown of the sample's texts
            text = "What a WONDERFUL, charming film: loved the café scene"
            page.fill("textarea[name='review']", text)
            page.click("#predict")
            page.wait_for_selector("#result:not([hidden])")
            assert page.text_content("#served-by") == "browser"
            assert page.text_content("#label") == str(model.predict([text])[0])
            ARTIFACTS.joinpath("demo").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo" / "8-text-box.png"))
            context.close()
    finally:
        server.stop()
