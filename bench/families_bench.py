"""One row per model family: export time, bundle bytes, and single-row latency in the model's own library
against edgeport's two runtimes, onnxruntime (Python) and onnxruntime-web in headless Chromium, in one run.

Each family is a small seeded model built by the tests' own helpers (tests/zoo.py, test_boosting.py,
test_onnx_file.py, test_keras.py, test_torch.py, test_text.py) on scikit-learn's bundled datasets or seeded
numpy data, never downloaded.
A family whose extra isn't installed, or whose converter this checkout lacks, gets a row saying so.

- export s: export_model, parity included (in the converter's own runtimes: python; Keras → TF.js: node, server)
- model KB: the model files the browser fetches; bundle KB: every file in the bundle directory
- original: median single-row predict in the model's own library (predict_proba, an eager Keras call, a torch
  module under no_grad; for a bring-your-own ONNX file, onnxruntime on the file as given)
- onnxrt: median session.run on one golden row (runtime_bench.python_timings)
- browser: the JS client in Chromium, one cold page per bundle, mean per row (runtime_bench.browser_timings)
- ratios: original / runtime, so above 1× the edgeport runtime is the faster one
"""
from __future__ import annotations

import importlib.util
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common import median_ms, save, table
from runtime_bench import browser_timings, python_timings

# test_torch's _fit hands torch a read-only array; the warning is about the tests' training, not the results
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class Case:
    """A family's model on disk, and its own library's single-row predict."""

    family: str
    model: str
    model_path: Path
    sample_path: Path
    original: Callable[[], object]
    targets: tuple[str, ...] = ("onnx",)
    options: dict = field(default_factory=dict)  # export_model keywords


class Unavailable(Exception):
    """This family can't run here; the message is the row's reason."""


def installed(extra: str, *modules: str) -> None:
    """Refuse the family, naming the extra, unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(f"not installed ({', '.join(missing)}): pip install -e '.[{extra}]'")


def supported(framework: str, target: str = "onnx") -> None:
    """Refuse the family unless this checkout registers a converter for (framework, target)."""
    from edgeport.registry import registered

    if (framework, target) not in registered():
        raise Unavailable(f"not supported in this checkout (no {framework} → {target} converter)")


def sklearn_pipeline(root: Path) -> Case:
    from conftest import save_model
    from zoo import zoo

    model, sample = zoo()["mixed-churn-pipeline"]
    model_path, sample_path = save_model(model, root, "churn", sample)
    one = sample.iloc[:1]
    return Case("scikit-learn", "churn: ColumnTransformer + LogisticRegression", model_path, sample_path,
                lambda: model.predict_proba(one))


def boosting(family: str, label: str) -> Callable[[Path], Case]:
    def build(root: Path) -> Case:
        installed("boosting", "onnxmltools", family)
        from test_boosting import _build, _data  # the test module skips itself without onnxmltools: checked above

        model, path, sample = _build(family, "binary", "alone", root)
        one = _data("binary")[0].iloc[:1]
        return Case(label, "binary, 20 trees (breast cancer, 8 features)", path, sample,
                    lambda: model.predict_proba(one), options={"allow_pickle": True})

    return build


def onnx_file(root: Path) -> Case:
    import onnxruntime as ort
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    from conftest import iris_frame
    from test_onnx_file import to_onnx_file

    X, y = iris_frame()
    clf = LogisticRegression(max_iter=500).fit(X.to_numpy(), y)
    path = to_onnx_file(clf, [("features", FloatTensorType([None, 4]))], root / "iris.onnx")
    X.to_csv(root / "iris.csv", index=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"features": X.to_numpy(np.float32)[:1]}
    return Case("own ONNX file", "skl2onnx LogisticRegression (iris)", path, root / "iris.csv",
                lambda: session.run(None, feed))


def keras_mlp(root: Path) -> Case:
    installed("tensorflow", "tensorflow", "tf2onnx", "tensorflowjs")
    from edgeport.keras_loading import import_tensorflow

    import_tensorflow()
    import test_keras

    test_keras.keras.utils.set_random_seed(0)
    model, X = test_keras.mlp_classifier()
    model_path, sample_path = test_keras.save(model, X, root, "mlp")
    one = X[:1]
    return Case("Keras", "iris MLP 4-16-3", model_path, sample_path, lambda: model(one, training=False),
                targets=("onnx", "tfjs"))


def torch_mlp(root: Path) -> Case:
    installed("torch", "torch", "onnxscript")
    supported("torch")
    import torch
    from test_torch import Classifier, _fit, _iris, _save_pt2  # the test module skips itself without torch: checked

    X, y = _iris()
    model = _fit(Classifier(), X.to_numpy(), y, lambda out, target: torch.nn.functional.nll_loss(torch.log(out + 1e-9), target))
    path = _save_pt2(model, (torch.from_numpy(X.to_numpy()[:8]),), root / "classifier.pt2")
    X.to_csv(root / "iris.csv", index=False)
    one = torch.from_numpy(X.to_numpy()[:1])

    def original():
        with torch.no_grad():
            return model(one)

    return Case("PyTorch", "iris MLP 4-16-3 + softmax (.pt2, dynamic batch)", path, root / "iris.csv", original)


def text_tfidf(root: Path) -> Case:
    if importlib.util.find_spec("edgeport.converters.sklearn_text") is None:
        raise Unavailable("not supported in this checkout (no TF-IDF text converter)")
    from sklearn.feature_extraction.text import TfidfVectorizer

    from conftest import save_model
    from test_text import _root_pipeline

    model, sample = _root_pipeline(TfidfVectorizer(ngram_range=(1, 2), max_df=0.5, sublinear_tf=True))
    model_path, sample_path = save_model(model, root, "reviews", sample)
    one = sample["review"].iloc[:1]  # the pipeline was fit on texts, not on a one-column frame
    return Case("text", "TfidfVectorizer (1-2 grams) + LogisticRegression", model_path, sample_path,
                lambda: model.predict_proba(one))


FAMILIES: dict[str, Callable[[Path], Case]] = {
    "scikit-learn": sklearn_pipeline,
    "XGBoost": boosting("xgboost", "XGBoost"),
    "LightGBM": boosting("lightgbm", "LightGBM"),
    "CatBoost": boosting("catboost", "CatBoost"),
    "own ONNX file": onnx_file,
    "Keras": keras_mlp,
    "PyTorch": torch_mlp,
    "text": text_tfidf,
}
HEADERS = ["family", "model", "parity", "export s", "model KB", "bundle KB", "original ms", "onnxrt ms", "browser ms",
           "onnxrt vs orig", "browser vs orig"]


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name)


def measure(case: Case, target: str, original_ms: float, root: Path) -> dict:
    """Export the case to `target` and time one row in each edgeport runtime that runs the bundle."""
    from edgeport.bundle import read_bundle
    from edgeport.export import export_model

    start = time.perf_counter()
    result = export_model(case.model_path, root / f"{slug(case.family)}-{target}", to=target,
                          sample=case.sample_path, **case.options)
    export_s = time.perf_counter() - start
    bundle = read_bundle(result.bundle.path)
    manifest = bundle.manifest
    onnx = manifest.format == "onnx"
    # what the browser fetches for the model: the ONNX file, or TF.js's model.json and weight shards
    model_kb = sum(f.bytes for f in manifest.files if f.path == manifest.model_file
                   or (not onnx and f.path.endswith(".bin"))) / 1024
    return {"family": case.family, "model": case.model + ("" if target == "onnx" else f" → {target} (TF.js in Chromium)"),
            "parity": result.report.verdict, "export_s": export_s,
            "model_kb": model_kb,
            "bundle_kb": sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file()) / 1024,
            "original_ms": original_ms, "onnxrt_ms": python_timings(bundle)["single_row_ms"] if onnx else None,
            "browser_ms": browser_timings(bundle, cold_runs=1)["single_row_ms"]}


def row(m: dict) -> list:
    def ratio(ms):
        if ms is None:
            return "-"
        r = m["original_ms"] / ms
        return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"

    if "reason" in m:
        return [m["family"], m["reason"], *["-"] * (len(HEADERS) - 2)]
    return [m["family"], m["model"], m["parity"], m["export_s"], m["model_kb"], m["bundle_kb"], m["original_ms"],
            "-" if m["onnxrt_ms"] is None else m["onnxrt_ms"], m["browser_ms"], ratio(m["onnxrt_ms"]),
            ratio(m["browser_ms"])]


def main() -> str:
    data = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, build in FAMILIES.items():
            root = Path(tmp) / slug(family)
            root.mkdir()
            try:
                case = build(root)
                original_ms = median_ms(case.original, repeats=100)
                for target in case.targets:
                    data.append(measure(case, target, original_ms, root))
            except Unavailable as exc:
                data.append({"family": family, "reason": str(exc)})
            except Exception as exc:  # a converter still being written, a runtime missing: the row says which
                data.append({"family": family, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
    save("families", data)
    return table("model families: export, bytes and single-row latency (ms; original / runtime, above 1x edgeport "
                 "is faster; browser: one cold Chromium page per bundle, mean of 200 rows)", HEADERS, [row(m) for m in data])


if __name__ == "__main__":
    print(main())
