"""Breast cancer: a random forest on 30 numeric features (exported in float32, see the converter)."""
from __future__ import annotations

from . import Example


def train() -> Example:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer(as_frame=True)
    X = data.frame[data.feature_names]
    y = data.target.map(dict(enumerate(data.target_names)))
    model = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0).fit(X, y)
    return Example("breast-cancer-forest", model, X.sample(n=200, random_state=0), "malignant or benign tumour, 50-tree forest")
