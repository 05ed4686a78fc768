"""The zoo: export time, ONNX size, parity time, and single-row latency of the original vs onnxruntime.

The latency ratio is measured in one run, side by side: scikit-learn's predict/predict_proba on one
row against onnxruntime's session.run on the same row (the `python` runtime, and what the server runs).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import median_ms, save, table


def main() -> str:
    import onnxruntime as ort

    from conftest import save_model
    from edgeport.check import check_bundle
    from edgeport.export import export_model
    from edgeport.decoding import feeds_from_rows
    from edgeport.samples import rows_from_table
    from zoo import zoo

    rows, data = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, sample) in zoo().items():
            model_path, sample_path = save_model(model, Path(tmp), name, sample)
            start = time.perf_counter()
            result = export_model(model_path, Path(tmp) / f"{name}-b", sample=sample_path)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            check_bundle(result.bundle.path, ["python"])
            parity_s = time.perf_counter() - start
            one = sample.iloc[:1]
            session = ort.InferenceSession(str(result.bundle.model_path), providers=["CPUExecutionProvider"])
            layout = result.bundle.manifest.layout
            feeds = feeds_from_rows(result.bundle.inputs, layout, rows_from_table(one, result.bundle.inputs, layout))
            predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
            sk_ms = median_ms(lambda: predict(one))
            ort_ms = median_ms(lambda: session.run(None, feeds))
            size_kb = result.bundle.model_path.stat().st_size / 1024
            rows.append([name, result.bundle.manifest.source["precision"], export_s, size_kb, parity_s, sk_ms, ort_ms,
                         f"{sk_ms / ort_ms:.1f}x"])
            data.append(dict(zip(["model", "precision", "export_s", "onnx_kb", "parity_s", "sklearn_ms", "ort_ms"], rows[-1])))
    save("zoo", data)
    return table("zoo: export and single-row latency (median of 200; ratio = sklearn / onnxruntime)",
                 ["model", "precision", "export s", "onnx KB", "parity s", "sklearn ms", "onnxrt ms", "speedup"], rows)


if __name__ == "__main__":
    print(main())
