"""Customer churn: a synthetic, seeded DataFrame with numbers, strings and missing values.

The pipeline imputes and scales the numbers and one-hot encodes the strings in
a ColumnTransformer, so the exported graph has one input per column and the
preprocessing ships inside the model.
"""
from __future__ import annotations

from . import Example

NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["plan", "region"]


def make_frame(n: int = 600, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "tenure_months": rng.integers(1, 72, n).astype(float),
        "monthly_charges": rng.normal(60, 20, n).round(2),
        "support_calls": rng.poisson(1.5, n).astype(float),
        "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2]),
        "region": rng.choice(["north", "south", "east", "west"], n),
    })
    logit = (-0.05 * frame.tenure_months + 0.03 * frame.monthly_charges + 0.6 * frame.support_calls
             + frame.plan.map({"basic": 0.8, "standard": 0.0, "premium": -0.7}) - 1.2)
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    # real exports have holes; the pipeline imputes them inside the graph
    for column, rate in (("monthly_charges", 0.05), ("support_calls", 0.08)):
        frame.loc[rng.random(n) < rate, column] = np.nan
    return frame, np.where(churned, "churn", "stay")


def build_pipeline(scaler=None, classifier=None):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", scaler or StandardScaler())])
    # unknown categories (a new plan name in production) become all-zero rows, in sklearn and in ONNX alike
    categorical = OneHotEncoder(handle_unknown="ignore")
    pre = ColumnTransformer([("num", numeric, NUMERIC), ("cat", categorical, CATEGORICAL)])
    return Pipeline([("pre", pre), ("clf", classifier or LogisticRegression(max_iter=1000))])


def train() -> Example:
    frame, target = make_frame()
    model = build_pipeline().fit(frame, target)
    return Example("churn", model, frame.head(300), "customer churn from plan, region, tenure and usage")
