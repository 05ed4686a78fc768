"""Keras models in every runtime, side by side: Keras itself, onnxruntime, onnxruntime-web and TF.js.

For the digits CNN: single-row latency and a batch of 256 in Keras (eager call), onnxruntime (Python),
onnxruntime-web and TF.js (the JS client under Node and in Chromium); and the bytes each bundle ships:
ONNX, TF.js float32, TF.js float16, TF.js uint8 (raw and gzipped).
"""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np

from common import median_ms, save, table
from runtime_bench import browser_timings, node_timings, python_timings


def model_bytes(bundle) -> tuple[int, int]:
    """Bytes of the model files the browser fetches (not golden/parity/manifest), raw and gzipped."""
    files = [e.path for e in bundle.manifest.files if e.path.endswith((".onnx", ".json", ".bin"))
             and e.path not in ("golden.json", "parity.json")
             and not (bundle.manifest.format == "tfjs-graph" and e.path == "model.onnx")]
    data = [(bundle.path / f).read_bytes() for f in files]
    return sum(map(len, data)), sum(len(gzip.compress(d, 6)) for d in data)


def main() -> str:
    from edgeport.bundle import read_bundle
    from edgeport.export import export_model
    from edgeport.keras_loading import import_tensorflow
    from edgeport.examples import write_example
    from edgeport.examples.digits_cnn import train

    import_tensorflow()
    example = train()
    model = example.model
    rows = example.sample
    one, batch = rows[:1], np.resize(rows, (256, *rows.shape[1:]))
    out, sizes, data = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model_path, sample_path = write_example(example, tmp)
        bundles = {}
        for label, to, quantize, tol in (("onnx", "onnx", None, {}), ("tfjs", "tfjs", None, {}),
                                         ("tfjs float16", "tfjs", "float16", {"atol": 1e-2, "rtol": 1e-1}),
                                         ("tfjs uint8", "tfjs", "uint8", {"atol": 5e-2, "rtol": 2e-1})):
            result = export_model(model_path, Path(tmp) / label.replace(" ", "-"), to=to, sample=sample_path,
                                  quantize=quantize, **tol)
            bundles[label] = read_bundle(result.bundle.path)
            raw, gz = model_bytes(bundles[label])
            sizes.append([label, raw / 1024, gz / 1024])
        keras_single = median_ms(lambda: model(one, training=False), repeats=100)
        keras_batch = median_ms(lambda: model(batch, training=False), repeats=20)
        out.append(["Keras (eager call)", "-", keras_single, keras_batch, 1.0])
        timings = {
            "onnxruntime (Python)": python_timings(bundles["onnx"]),
            "onnxruntime-web, Node": node_timings(bundles["onnx"]),
            "TF.js (cpu), Node": node_timings(bundles["tfjs"]),
            "onnxruntime-web, Chromium": browser_timings(bundles["onnx"], cold_runs=1),
            "TF.js, Chromium": browser_timings(bundles["tfjs"], cold_runs=1),
        }
        for name, t in timings.items():
            out.append([name, t["load_ms"], t["single_row_ms"], t["batch_256_ms"], f"{keras_single / t['single_row_ms']:.1f}x"])
        data = {"latency": {k: v for k, v in timings.items()}, "keras": {"single_row_ms": keras_single, "batch_256_ms": keras_batch},
                "bytes": {s[0]: {"kb": s[1], "kb_gzip": s[2]} for s in sizes}}
    save("keras", data)
    return "\n".join([
        table("Keras digits CNN: latency by runtime (ms; speedup = Keras single row / runtime single row)",
              ["runtime", "load", "1 row", "256 rows", "speedup"], out),
        table("Keras digits CNN: model bytes the browser fetches", ["bundle", "KB", "KB gzip"], sizes),
    ])


if __name__ == "__main__":
    print(main())
