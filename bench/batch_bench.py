"""edgeport predict against a plain onnxruntime loop, over the same million-row CSV.

The churn example (numbers with holes, two string columns; one graph input per column) is trained on 2,000 seeded
rows and exported (python parity); its rows are then made again, BATCH_ROWS of them (default 1,000,000, a new seed),
and written as CSV. Each run is a process of its own, so its peak memory (VmHWM, read in that process) is its own,
imports included:
  edgeport predict   predict_file, CSV → CSV, --workers 1 and 2: the server's artifact and decoder, every row checked
  plain onnxruntime  pandas.read_csv in chunks of the same size → numpy arrays of the graph's dtypes → session.run
                     on the bundle's model.onnx → CSV; no checks at all
ROUNDS interleaved rounds (the load on a shared 2-core machine drifts), the median kept. Then the 1-worker run's
predictions are read back beside the plain loop's: labels equal, probabilities within the bundle's tolerance.
Runnable alone: .venv/bin/python bench/batch_bench.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, save, table

ROWS = int(os.environ.get("BATCH_ROWS", "1000000"))
ROUNDS = int(os.environ.get("BATCH_ROUNDS", "3"))
CHUNK_ROWS = 20_000  # edgeport predict's default (batch.DEFAULT_CHUNK_ROWS), for both
TARGET = 0.8  # edgeport's rows/s ÷ the plain loop's (issue 13)
PLAIN = "plain onnxruntime loop"
ONNX_DTYPES = {"tensor(string)": object, "tensor(double)": "float64", "tensor(float)": "float32",
               "tensor(int64)": "int64", "tensor(int32)": "int32"}


def churn_data(root: Path) -> tuple[Path, Path]:
    """The churn bundle, and ROWS fresh rows of its columns as CSV."""
    from conftest import save_model
    from edgeport.examples.churn import build_pipeline, make_frame
    from edgeport.export import export_model

    frame, target = make_frame(n=2000, seed=0)
    model_path, sample_path = save_model(build_pipeline().fit(frame, target), root, "churn", frame.head(200))
    bundle = export_model(model_path, root / "bundle", sample=sample_path, runtimes=["python"]).bundle.path
    data = root / "rows.csv"
    make_frame(n=ROWS, seed=1)[0].to_csv(data, index=False)
    return bundle, data


# ---------------------------------------------------------------- the runs, each in a process of its own

def edgeport_run(bundle: str, data: str, out: str, workers: str) -> dict:
    import onnxruntime  # noqa: F401  imported before the clock starts, as the plain run does
    import pandas  # noqa: F401

    from edgeport.batch import predict_file

    start = time.perf_counter()
    result = predict_file(bundle, data, out, workers=int(workers), chunk_rows=CHUNK_ROWS)
    return {"rows": result.predicted, "seconds": time.perf_counter() - start}


def plain_run(bundle: str, data: str, out: str) -> dict:
    """What a team writes without edgeport: read, cast to the graph's dtypes, run, write."""
    import onnxruntime as ort
    import pandas as pd

    start = time.perf_counter()
    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs, names = session.get_inputs(), [o.name for o in session.get_outputs()]
    rows = 0
    with open(out, "w", newline="") as handle:
        for frame in pd.read_csv(data, chunksize=CHUNK_ROWS):
            feeds = {i.name: frame[i.name].to_numpy(dtype=ONNX_DTYPES[i.type]).reshape(-1, 1) for i in inputs}
            columns = {}
            for name, value in zip(names, session.run(names, feeds)):
                flat = value.reshape(len(value), -1)
                columns.update({name: flat[:, 0]} if flat.shape[1] == 1 else
                               {f"{name}_{j}": flat[:, j] for j in range(flat.shape[1])})
            pd.DataFrame(columns).to_csv(handle, index=False, header=rows == 0)
            rows += len(frame)
    return {"rows": rows, "seconds": time.perf_counter() - start}


def measure(kind: str, *args: object) -> dict:
    """One run in a fresh interpreter: rows, seconds, rows/s and the process's peak resident memory."""
    done = subprocess.run([sys.executable, __file__, "--run", kind, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT / "bench")
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} run failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    return {**result, "rows_per_s": result["rows"] / result["seconds"]}


# ---------------------------------------------------------------- the comparison

def compare(bundle_dir: Path, edgeport_out: Path, plain_out: Path) -> dict:
    """The edgeport run's labels and probabilities against the plain loop's, row by row."""
    import numpy as np
    import pandas as pd

    from edgeport.bundle import read_bundle

    manifest = read_bundle(bundle_dir).manifest
    ours, plain = pd.read_csv(edgeport_out), pd.read_csv(plain_out)
    classes = list(manifest.classes)
    theirs = plain[[f"probabilities_{j}" for j in range(len(classes))]].to_numpy()  # in the classes' order
    diff = np.abs(ours[[f"probability_{c}" for c in classes]].to_numpy() - theirs)
    atol, rtol = manifest.tolerance["atol"], manifest.tolerance["rtol"]
    return {"rows": len(ours), "plain_rows": len(plain), "labels_equal": int((ours["label"] == plain["label"]).sum()),
            "max_abs_diff": float(diff.max()), "atol": atol, "rtol": rtol,
            "within_tolerance": bool(len(ours) == len(plain) and (diff <= atol + rtol * np.abs(theirs)).all())}


def format_table(runs: dict[str, dict], match: dict) -> str:
    plain = runs[PLAIN]
    rows = []
    for name, r in runs.items():
        ratio = r["rows_per_s"] / plain["rows_per_s"]
        rows.append([name, f"{r['rows_per_s']:,.0f}", f"{ratio:.2f}x", f"{r['peak_mb']:.0f}",
                     f"{r['peak_mb'] / plain['peak_mb']:.2f}x", r["seconds"],
                     "" if name == PLAIN else ("yes" if ratio >= TARGET else "NO")])
    verdict = (f"\n{match['rows']:,}-row run (1 worker) vs the plain loop: labels equal on {match['labels_equal']:,} of "
               f"{match['plain_rows']:,} rows, probabilities max |diff| {match['max_abs_diff']:.2g} "
               f"({'within' if match['within_tolerance'] else 'OUTSIDE'} atol {match['atol']:g}, rtol {match['rtol']:g})")
    return table(f"batch: {ROWS:,}-row churn CSV → CSV, {CHUNK_ROWS:,} rows a chunk, median of {ROUNDS} interleaved rounds",
                 ["", "rows/s", "vs plain", "peak MB", "vs plain", "seconds", f"≥ {TARGET}x"], rows) + verdict


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, data = churn_data(root)
        kinds = {"edgeport predict, 1 worker": ("edgeport", bundle, data, root / "edgeport.csv", 1),
                 "edgeport predict, 2 workers": ("edgeport", bundle, data, root / "edgeport-2.csv", 2),
                 PLAIN: ("plain", bundle, data, root / "plain.csv")}
        rounds: dict[str, list[dict]] = {name: [] for name in kinds}
        for _ in range(ROUNDS):
            for name, args in kinds.items():
                rounds[name].append(measure(*args))
        runs = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
                for name, results in rounds.items()}
        match = compare(bundle, root / "edgeport.csv", root / "plain.csv")
    save("batch", {"rows": ROWS, "chunk_rows": CHUNK_ROWS, "rounds": rounds, "median": runs, "match": match})
    return format_table(runs, match)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        kind, args = sys.argv[2], sys.argv[3:]
        result = {"edgeport": edgeport_run, "plain": plain_run}[kind](*args)
        from edgeport.batch import peak_memory_mb

        print(json.dumps({**result, "peak_mb": peak_memory_mb()}))
    else:
        print(main())
