"""Iris: StandardScaler + LogisticRegression on a DataFrame with named columns."""
from __future__ import annotations

from . import Example


def train() -> Example:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris(as_frame=True)
    X = data.frame[data.feature_names]
    # string class names, so the label output and the demo speak "setosa", not 0
    y = data.target.map(dict(enumerate(data.target_names)))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    return Example("iris", model, X.sample(frac=1.0, random_state=0), "iris species from 4 flower measurements")
