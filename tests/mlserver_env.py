"""MLServer with its scikit-learn runtime, in a venv of its own: for the interop test and the server bench.

Not part of `make setup`: only tests/test_interop_mlserver.py and bench/server_bench.py need it, and the first
of them to run creates it (about 35 s from the package index on a 2-core machine). It is a venv of its own
because MLServer pins what edgeport's venv can't share, and uvloop 0.21: 0.23 crashes its inference worker.

    bench/.venv-mlserver/   created once, under a lock in the temp directory (the bench and a test may ask at
                            once); .installed marks it done
"""
from __future__ import annotations

import json
from pathlib import Path

from side_venv import side_venv

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER_PACKAGES = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
MLSERVER = "MLServer 1.7.1 (sklearn runtime)"


def mlserver_python() -> tuple[str | None, str]:
    """(MLServer's venv python, "") once it is installed, else (None, why it could not be)."""
    return side_venv(MLSERVER_VENV, MLSERVER_PACKAGES, "MLServer")


def mlserver_command(python: str, root: Path, name: str, model_file: Path, *, http_port: int, grpc_port: int,
                     metrics_port: int, extra: dict | None = None) -> list[str]:
    """Write an MLServer model repository at `root` serving the joblib `model_file` as NAME with the scikit-learn
    runtime (no version: MLServer serves it as the default), and return the command that starts it."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "model.joblib").write_bytes(Path(model_file).read_bytes())
    (root / "settings.json").write_text(json.dumps(
        {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "parallel_workers": 0}))
    parameters = {"uri": "./model.joblib", **({"extra": extra} if extra else {})}
    (model_dir / "model-settings.json").write_text(json.dumps(
        {"name": name, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": parameters}))
    return [str(Path(python).with_name("mlserver")), "start", str(root)]
