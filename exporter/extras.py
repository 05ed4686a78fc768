"""Optional dependencies: a missing extra is a one-paragraph error naming the pip command, not an ImportError.

The core install (export, the python parity runtime) needs none of these; each extra brings what one
feature imports:

    serve       fastapi, uvicorn, prometheus-client, httpx   edgeport serve, check -r server
    browser     playwright (and brotli, optional)            check -r browser (brotli: .br copies in demo sites)
    tensorflow  tensorflow, tensorflowjs, tf2onnx           Keras / SavedModel export (keras_loading.INSTALL_HINT)
    boosting    xgboost, lightgbm, catboost, onnxmltools    XGBoost / LightGBM / CatBoost export and native files
    torch       torch (CPU wheel), onnxscript                 PyTorch export (torch_loading.py)
    mlflow      mlflow-skinny, sqlalchemy, alembic           --registry mlflow:URI (mlflow_registry.py)
    db          sqlalchemy, psycopg[binary]                  predict --out sqlite:///... or postgresql+psycopg://... (batch.py)
    dask        dask[dataframe], distributed                 distributed.predict_dask
    spark       pyspark (and a JRE: make jre)                distributed.spark_predict (mapInPandas)
    ray         ray[serve] (not in all: it clashes with TF)  ray_serve.py
    explain     shap                                         /v2/models/NAME/explain, edgeport explain (explain.py)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .errors import RuntimeUnavailableError

# an editable checkout installs its extras with make setup (pip install -e '.[all,dev]')
_CHECKOUT = (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()


def install_hint(extra: str) -> str:
    """The command that installs `extra`, for this kind of install."""
    if _CHECKOUT:
        return f"pip install -e '.[{extra}]' (make setup installs every extra)"
    return f"pip install 'edgeport[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import and return `module`, or raise RuntimeUnavailableError saying that `what` needs `extra`.

    Call it where a feature starts, before the imports it depends on: `require("uvicorn", "serve", "edgeport serve")`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        why = f"{missing} is not installed" if isinstance(exc, ModuleNotFoundError) else f"{module} failed to import: {exc}"
        raise RuntimeUnavailableError(f"{what} needs the {extra} extra ({why}): {install_hint(extra)}") from exc
