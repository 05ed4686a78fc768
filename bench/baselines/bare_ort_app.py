"""Baseline: the least a FastAPI + onnxruntime server can do. Loads the bundle's model.onnx into one
onnxruntime session and runs it per request, with no checks, no limits and no metrics; speaks just
enough OIP v2 (the same request, the same outputs) for the same load to hit it. The figure edgeport's
validation, limits and metrics are measured against.

Run: uvicorn bare_ort_app:app --app-dir bench/baselines  (with BARE_MODEL=path/to/model.onnx)
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
session = ort.InferenceSession(os.environ["BARE_MODEL"], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
output_names = [o.name for o in session.get_outputs()]


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.json()
    tensor = body["inputs"][0]
    X = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    values = session.run(output_names, {input_name: X})
    outputs = []
    for output_name, value in zip(output_names, values):
        value = np.asarray(value)
        if value.dtype.kind in "OUS":
            outputs.append({"name": output_name, "shape": list(value.shape), "datatype": "BYTES",
                            "data": [str(v) for v in value.ravel()]})
        else:
            outputs.append({"name": output_name, "shape": list(value.shape), "datatype": "FP64",
                            "data": value.ravel().tolist()})
    return JSONResponse({"model_name": name, "outputs": outputs})
