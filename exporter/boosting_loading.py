"""Native XGBoost, LightGBM and CatBoost model files, loaded as the library's scikit-learn estimator.

These files are data (JSON, UBJSON, LightGBM's text format, CatBoost's flatbuffers), not code, so they
load without --allow-pickle. Whether a file holds a classifier or a regressor is read from its objective.
The libraries are imported here, on demand; a missing one is an error naming the boosting extra.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .extras import require
from .model_file import LoadedModel, sha256_of

NATIVE_SUFFIXES = {".json": "xgboost", ".ubj": "xgboost", ".txt": "lightgbm", ".cbm": "catboost"}
CATBOOST_CLASSIFIER_LOSSES = ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll")


def load_native(path: Path) -> LoadedModel:
    """Load a native boosting model file; the framework is the library's name."""
    library = NATIVE_SUFFIXES[path.suffix.lower()]
    require(library, "boosting", f"loading {path.name}")
    loader = {"xgboost": _load_xgboost, "lightgbm": _load_lightgbm, "catboost": _load_catboost}[library]
    try:
        model = loader(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # each library raises its own error type for a damaged or foreign file
        first = (str(exc).strip().splitlines() or ["no details"])[0][:300]
        raise ModelLoadError(f"could not load {path.name} as a {library} model ({type(exc).__name__}: {first}). "
                             f"Save it with the library's own save_model, or pass a .skops/.joblib file.") from exc
    return LoadedModel(library, model, path, sha256_of(path), f"{library}-native")


def _load_xgboost(path: Path) -> Any:
    import xgboost

    booster = xgboost.Booster(model_file=str(path))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective.startswith("rank:"):
        raise ModelLoadError(f"{path.name} is an XGBoost ranking model ({objective}); edgeport exports classifiers "
                             "and regressors")
    classifier = objective.startswith(("binary:", "multi:"))
    model = xgboost.XGBClassifier() if classifier else xgboost.XGBRegressor()
    model.load_model(str(path))
    return model


def _load_lightgbm(path: Path) -> Any:
    import lightgbm
    import numpy as np
    from sklearn.preprocessing import LabelEncoder

    booster = lightgbm.Booster(model_file=str(path))
    objective = str(booster.params.get("objective") or _lightgbm_objective(path))
    if objective.startswith(("lambdarank", "rank_xendcg")):
        raise ModelLoadError(f"{path.name} is a LightGBM ranking model; edgeport exports classifiers and regressors")
    classifier = objective.split()[0] in ("binary", "multiclass", "multiclassova", "softmax", "ova", "ovr",
                                          "cross_entropy", "xentropy")
    # lightgbm's scikit-learn wrappers have no public way to adopt a Booster; these are the attributes fit() sets
    model = lightgbm.LGBMClassifier() if classifier else lightgbm.LGBMRegressor()
    n_features = booster.num_feature()
    model._Booster = booster
    model.fitted_ = True
    model._n_features = model.n_features_in_ = n_features
    model._fitted_with_feature_names = False
    model._best_iteration, model._best_score, model._evals_result = booster.best_iteration, {}, {}
    model._objective = objective.split()[0]
    model._class_weight = None
    if classifier:
        n_classes = max(2, int(booster.params.get("num_class") or _lightgbm_num_class(path)))
        model._n_classes = n_classes
        model._le = LabelEncoder().fit(np.arange(n_classes))
        model._classes = model._le.classes_
    return model


def _lightgbm_header(path: Path) -> dict[str, str]:
    """key=value lines at the top of a LightGBM text model (before the first tree)."""
    header = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("Tree="):
                break
            key, sep, value = line.strip().partition("=")
            if sep:
                header[key] = value
    return header


def _lightgbm_objective(path: Path) -> str:
    return _lightgbm_header(path).get("objective", "regression")


def _lightgbm_num_class(path: Path) -> int:
    return int(_lightgbm_header(path).get("num_class", "1"))


def _load_catboost(path: Path) -> Any:
    import catboost

    probe = catboost.CatBoost().load_model(str(path))
    loss = str(probe.get_all_params().get("loss_function", "RMSE")).split(":")[0]
    model = catboost.CatBoostClassifier() if loss in CATBOOST_CLASSIFIER_LOSSES else catboost.CatBoostRegressor()
    return model.load_model(str(path))
