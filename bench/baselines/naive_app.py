"""Baseline: the naive server the article warns about. Loads the sklearn model with joblib and
calls predict_proba per request. Speaks just enough OIP v2 for the same load to hit it.

Run: uvicorn naive_app:app --app-dir bench/baselines  (with NAIVE_MODEL=path/to/model.joblib)
"""
import os

import joblib
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request

app = FastAPI()
model = joblib.load(os.environ["NAIVE_MODEL"])
columns = list(getattr(model, "feature_names_in_", []))


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.json()
    tensor = body["inputs"][0]
    X = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    frame = pd.DataFrame(X, columns=columns) if columns else X
    probabilities = model.predict_proba(frame)
    return {"model_name": name, "outputs": [
        {"name": "label", "shape": [len(X)], "datatype": "BYTES", "data": [str(v) for v in model.predict(frame)]},
        {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP64", "data": probabilities.ravel().tolist()},
    ]}
