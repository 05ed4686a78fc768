"""The estimator zoo: small seeded models on datasets scikit-learn ships. Shared by tests and bench."""
from __future__ import annotations

import functools


@functools.cache
def zoo() -> dict:
    """name -> (fitted model, sample DataFrame). Deterministic; about a second to build, so built once per
    process: callers read the models and never refit them."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, HistGradientBoostingClassifier,
                                  HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor)
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    from edgeport.examples.churn import build_pipeline, make_frame

    def frame(loader):
        data = loader(as_frame=True)
        return data.frame[data.feature_names], data.target

    iris, wine, cancer, diabetes = frame(load_iris), frame(load_wine), frame(load_breast_cancer), frame(load_diabetes)
    specs = {
        "logistic": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), iris),
        # SVM with probabilities: SVC(probability=True) is deprecated in scikit-learn 1.9 in favour of this
        "svc-proba": (make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(), ensemble=False)), wine),
        # no predict_proba: a label only (its skl2onnx converter takes no zipmap option)
        "linear-svc": (make_pipeline(StandardScaler(), LinearSVC()), wine),
        "knn": (make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)), wine),
        "decision-tree": (DecisionTreeClassifier(max_depth=6, random_state=0), cancer),
        "random-forest": (RandomForestClassifier(n_estimators=40, random_state=0), cancer),
        "gradient-boosting": (GradientBoostingClassifier(n_estimators=40, random_state=0), cancer),
        "hist-gradient-boosting": (HistGradientBoostingClassifier(max_iter=40, random_state=0), wine),
        "mlp": (make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=800, random_state=0)), iris),
        "linear-regression": (LinearRegression(), diabetes),
        "ridge": (make_pipeline(StandardScaler(), Ridge(alpha=1.0)), diabetes),
        "random-forest-regressor": (RandomForestRegressor(n_estimators=30, random_state=0), diabetes),
        "hist-gradient-boosting-regressor": (HistGradientBoostingRegressor(max_iter=40, random_state=0), diabetes),
        "gradient-boosting-regressor": (GradientBoostingRegressor(n_estimators=40, random_state=0), diabetes),
    }
    fitted = {name: (model.fit(*data), data[0]) for name, (model, data) in specs.items()}
    churn_frame, churn_target = make_frame(n=400, seed=1)
    fitted["mixed-churn-pipeline"] = (build_pipeline().fit(churn_frame, churn_target), churn_frame)
    fitted["text-column-pipeline"] = text_column_pipeline()
    return fitted


def text_column_pipeline():
    """A review's text (TF-IDF with bigrams) beside a number and a category, in one ColumnTransformer."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = reviews(n=240, seed=2)
    columns = ColumnTransformer([
        ("text", TfidfVectorizer(ngram_range=(1, 2), max_df=0.6), "review"),
        ("stars", StandardScaler(), ["stars"]),
        ("channel", OneHotEncoder(handle_unknown="ignore"), ["channel"]),
    ])
    return make_pipeline(columns, LogisticRegression(max_iter=1000)).fit(frame, target), frame


POSITIVE = "good great loved fun wonderful excellent superb charming café naïve".split()
NEGATIVE = "bad terrible hated boring awful dull worst clumsy".split()
FILLER = "the movie film plot acting it was so very a I this über Straße ταινία 2024 x_y".split()


def reviews(n: int = 200, seed: int = 0):
    """Seeded short reviews (a DataFrame with review, stars, channel) and their 0/1 sentiment. Mixed case,
    accented and Greek words (no capital sigma: see README), one-letter words, numbers, punctuation and empty texts: what a tokenizer can
    get wrong."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, size=n)
    texts = []
    for label in target:
        words = list(rng.choice(POSITIVE if label else NEGATIVE, size=rng.integers(1, 4)))
        words += list(rng.choice(FILLER, size=rng.integers(0, 9)))
        rng.shuffle(words)
        words = [w.upper() if rng.random() < 0.15 else w.capitalize() if rng.random() < 0.15 else w for w in words]
        texts.append(" ".join(words) + str(rng.choice(["", ".", "!", ", really?"])))
    texts[::37] = [""] * len(texts[::37])
    frame = pd.DataFrame({"review": texts, "stars": np.round(rng.uniform(1, 5, n) + target, 1),
                          "channel": rng.choice(["web", "app", "store"], n)})
    return frame, target
