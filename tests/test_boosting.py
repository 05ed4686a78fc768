"""XGBoost, LightGBM and CatBoost: alone (joblib), inside a Pipeline with a ColumnTransformer (joblib), and from
each library's native file; binary, multi-class and regression; python parity at the default tolerances, and
node, Chromium and the fallback server for one model of each library."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import IN_CI, assert_parity, need

if importlib.util.find_spec("onnxmltools") is None:  # the boosting extra (make setup installs it); CI never skips
    (pytest.fail if IN_CI else pytest.skip)("the boosting extra is not installed (pip install -e '.[boosting]')",
                                            **({"pytrace": False} if IN_CI else {"allow_module_level": True}))

FAMILIES = ("xgboost", "lightgbm", "catboost")
TASKS = ("binary", "multiclass", "regression")
FORMS = ("alone", "pipeline", "native")
NATIVE_SUFFIX = {"xgboost": ".json", "lightgbm": ".txt", "catboost": ".cbm"}


def _data(task):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    loader = {"binary": load_breast_cancer, "multiclass": load_wine, "regression": load_diabetes}[task]
    data = loader(as_frame=True)
    X = data.frame[data.feature_names].iloc[:, :8].copy()  # 8 features: enough for real trees, quick to convert
    X.columns = [f"f{i}" for i in range(X.shape[1])]  # LightGBM's text format rewrites names with spaces
    return X, data.target


def _estimator(family, task):
    small = {"n_estimators": 20, "random_state": 0}
    if family == "xgboost":
        import xgboost

        cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        return cls(max_depth=3, n_jobs=1, **small)
    if family == "lightgbm":
        import lightgbm

        cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        return cls(num_leaves=8, n_jobs=1, verbose=-1, **small)
    import catboost

    cls = catboost.CatBoostRegressor if task == "regression" else catboost.CatBoostClassifier
    return cls(iterations=20, depth=3, thread_count=1, verbose=0, random_seed=0, allow_writing_files=False)


def _with_strings(X):
    X = X.copy()
    X["region"] = np.where(X["f0"] > X["f0"].median(), "north", "south")
    X.loc[X.index % 5 == 0, "region"] = "east"
    return X


def _pipeline(family, task):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, _ = _data(task)
    numbers = list(X.columns)
    prep = ColumnTransformer([("num", StandardScaler(), numbers),
                              ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["region"])])
    return Pipeline([("prep", prep), ("model", _estimator(family, task))])


def _build(family, task, form, root):
    """Fit, save as the form says, and return (fitted model, model path, sample path)."""
    import joblib

    X, y = _data(task)
    if form == "pipeline":
        X = _with_strings(X)
        model = _pipeline(family, task).fit(X, y)
    else:
        model = _estimator(family, task).fit(X, y)
    stem = root / f"{family}-{task}-{form}"
    sample = stem.with_suffix(".csv")
    X.head(120).to_csv(sample, index=False)
    if form == "native":
        path = stem.with_suffix(NATIVE_SUFFIX[family])
        if family == "lightgbm":
            model.booster_.save_model(str(path))
        else:
            model.save_model(str(path))
    else:
        path = stem.with_suffix(".joblib")
        joblib.dump(model, path)
    return model, path, sample


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(family, task, form) -> (model, model path, sample, ExportResult), each exported once per module."""
    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("boosting")
    done = {}

    def export(family, task, form):
        key = (family, task, form)
        if key not in done:
            model, path, sample = _build(family, task, form, root)
            result = export_model(path, root / "-".join(key), sample=sample, allow_pickle=form != "native")
            done[key] = (model, path, sample, result)
        return done[key]

    return export


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_exports_and_passes_parity(family, task, form, exported):
    model, _, sample, result = exported(family, task, form)
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert manifest["task"] == ("regression" if task == "regression" else "classification")
    if task != "regression":
        assert [str(c) for c in manifest["classes"]] == [str(c) for c in model.classes_]
        roles = {o["role"] for o in manifest["outputs"]}
        assert roles == {"label", "probabilities"}
    if form == "pipeline":
        by_name = {i["name"]: i for i in manifest["inputs"]}
        assert by_name["region"]["dtype"] == "string"
        assert by_name["region"]["categories"] == ["east", "north", "south"]
        assert manifest["source"]["precision"] == "float64"  # preprocessing in double, trees behind a Cast
    if form == "native":
        assert manifest["source"]["model_file"].endswith(NATIVE_SUFFIX[family])
        assert manifest["source"]["framework"] == family


@pytest.mark.parametrize("suffix", [".ubj"])
def test_xgboost_ubj(suffix, tmp_path):
    from edgeport.export import export_model

    X, y = _data("multiclass")
    model = _estimator("xgboost", "multiclass").fit(X, y)
    path = tmp_path / f"m{suffix}"
    model.save_model(str(path))
    X.to_csv(tmp_path / "s.csv", index=False)
    assert_parity(export_model(path, tmp_path / "b", sample=tmp_path / "s.csv").report)


@pytest.mark.parametrize("family", FAMILIES)
def test_native_classes_option_names_the_labels(family, exported, tmp_path):
    """(CatBoost's multi-class predict gives [n, 1] labels: with --classes that was a KeyError '[0]'.)"""
    from edgeport.check import check_bundle
    from edgeport.export import export_model

    _, path, sample, _ = exported(family, "multiclass", "native")
    result = export_model(path, tmp_path / "named", sample=sample, classes=["barolo", "grignolino", "barbera"])
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["classes"] == ["barolo", "grignolino", "barbera"]
    assert set(result.bundle.golden()["outputs"]["label"]) <= {"barolo", "grignolino", "barbera"}
    # check --model reads the native file again and names its labels with the bundle's classes
    assert_parity(check_bundle(result.bundle.path, ["python"], model=path, data=sample))


def test_classes_option_refused_for_joblib_and_wrong_count(exported, tmp_path):
    from edgeport.errors import SampleError, UnusedOptionError
    from edgeport.export import export_model

    _, path, sample, _ = exported("xgboost", "binary", "alone")
    with pytest.raises(UnusedOptionError):
        export_model(path, tmp_path / "x", sample=sample, allow_pickle=True, classes=["a", "b"])
    _, path, sample, _ = exported("xgboost", "binary", "native")
    with pytest.raises(SampleError, match="names 3 classes"):
        export_model(path, tmp_path / "y", sample=sample, classes=["a", "b", "c"])


def test_joblib_needs_allow_pickle_native_does_not(exported):
    from edgeport.errors import PickleRefusedError
    from edgeport.loading import load_model

    _, path, _, _ = exported("catboost", "regression", "alone")
    with pytest.raises(PickleRefusedError):
        load_model(path)
    for family in FAMILIES:
        _, path, _, _ = exported(family, "binary", "native")
        assert load_model(path).framework == family


def test_missing_library_names_the_extra(tmp_path, monkeypatch):
    from edgeport.errors import RuntimeUnavailableError
    from edgeport.loading import load_model

    path = tmp_path / "model.cbm"
    path.write_bytes(b"not a model")
    monkeypatch.setitem(sys.modules, "catboost", None)  # import catboost now raises ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"boosting"):
        load_model(path)


def test_cli_help_imports_no_boosting_library():
    code = ("import sys; from typer.testing import CliRunner; from edgeport.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('xgboost', 'lightgbm', 'catboost', 'onnxmltools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


JS_CASES = [("xgboost", "multiclass", "pipeline"), ("lightgbm", "binary", "native"), ("catboost", "regression", "alone")]


@pytest.mark.browser
@pytest.mark.parametrize("family,task,form", JS_CASES)
def test_node(family, task, form, exported):
    from edgeport.check import check_bundle
    from edgeport.webassets import ORT_DIST, ORT_BROWSER_FILES

    need(shutil.which("node") is not None, "node is not on PATH (install Node.js 20)")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    report = check_bundle(exported(family, task, form)[3].bundle.path, ["python", "node"])
    assert_parity(report, ("python", "node"))


@pytest.mark.browser
@pytest.mark.parametrize("family,task,form", JS_CASES)
def test_chromium_and_the_fallback_server(family, task, form, exported):
    from edgeport.check import check_bundle
    from edgeport.webassets import ORT_DIST, ORT_BROWSER_FILES

    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")
    report = check_bundle(exported(family, task, form)[3].bundle.path, ["browser", "server"])
    assert_parity(report, ("browser", "server"))


def test_cli_exports_a_native_file_with_classes(exported, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _, path, sample, _ = exported("xgboost", "binary", "native")
    result = CliRunner().invoke(app, ["export", str(path), "--out", str(tmp_path / "b"), "--sample", str(sample),
                                      "--classes", "malignant,benign"])
    assert result.exit_code == 0, result.output
    _, pickled, sample, _ = exported("xgboost", "binary", "alone")
    refused = CliRunner().invoke(app, ["export", str(pickled), "--out", str(tmp_path / "c"), "--sample", str(sample)])
    assert refused.exit_code == 1 and "--allow-pickle" in refused.output


@pytest.mark.parametrize("family,task", [("lightgbm", "binary"), ("catboost", "multiclass")])
def test_string_class_labels_in_a_pipeline(family, task, tmp_path):
    import joblib

    from edgeport.export import export_model

    X, y = _data(task)
    X = _with_strings(X)
    y = np.array(["no", "yes", "maybe"])[y.to_numpy()]
    joblib.dump(_pipeline(family, task).fit(X, y), tmp_path / "m.joblib")
    X.head(100).to_csv(tmp_path / "s.csv", index=False)
    result = export_model(tmp_path / "m.joblib", tmp_path / "b", sample=tmp_path / "s.csv", allow_pickle=True)
    assert_parity(result.report)
    assert list(result.bundle.manifest.classes) == sorted(set(y))


@pytest.mark.parametrize("suffix", [".json", ".txt", ".cbm"])
def test_a_damaged_native_file_is_a_load_error(suffix, tmp_path):
    from edgeport.errors import ModelLoadError
    from edgeport.loading import load_model

    path = tmp_path / f"model{suffix}"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelLoadError, match=f"could not load model{suffix}"):
        load_model(path)


def test_xgboost_softmax_is_refused_with_the_fix_that_works(tmp_path):
    import xgboost

    from edgeport.errors import UnsupportedModelError
    from edgeport.export import export_model

    X, y = _data("multiclass")
    xgboost.XGBClassifier(n_estimators=10, max_depth=3, objective="multi:softmax", n_jobs=1).fit(X, y).save_model(
        str(tmp_path / "softmax.json"))
    X.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(UnsupportedModelError, match="multi:softprob"):
        export_model(tmp_path / "softmax.json", tmp_path / "b", sample=tmp_path / "s.csv")
    model = xgboost.XGBClassifier()
    model.load_model(str(tmp_path / "softmax.json"))
    model.set_params(objective="multi:softprob")
    model.save_model(str(tmp_path / "softprob.json"))
    assert_parity(export_model(tmp_path / "softprob.json", tmp_path / "c", sample=tmp_path / "s.csv").report)


@pytest.mark.parametrize("form", ["native", "joblib"])
def test_xgboost_fit_on_named_columns_exports(form, tmp_path):
    """XGBoost models are usually fit on a DataFrame: the booster then names its features by column, and
    onnxmltools expected f<index> ('Unable to interpret 'mean radius'')."""
    import joblib
    from sklearn.datasets import load_breast_cancer

    from edgeport.export import export_model

    data = load_breast_cancer(as_frame=True)
    X = data.frame[data.feature_names].iloc[:, :6]  # real names, with spaces
    model = _estimator("xgboost", "binary").fit(X, data.target)
    if form == "native":
        path = tmp_path / "named.json"
        model.save_model(path)
    else:
        path = tmp_path / "named.joblib"
        joblib.dump(model, path)
    sample = tmp_path / "rows.csv"
    X.to_csv(sample, index=False)
    result = export_model(path, tmp_path / "bundle", sample=sample, allow_pickle=form == "joblib")
    assert_parity(result.report)
