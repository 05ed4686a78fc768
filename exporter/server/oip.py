"""Open Inference Protocol v2: the request/response schemas and the checks against the manifest.

A request is checked in full against the bundle's manifest before anything
runs: input names, datatypes, shapes, data length, element types, missing
values, the batch cap. Each failure is an InferInputError (HTTP 400) whose
message names the input at fault.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..bundle import Bundle

DATATYPE_OF = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "string": "BYTES"}
NUMPY_OF = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
# numeric datatypes a client may send for a numeric input; values are cast to the model's dtype
NUMERIC_DATATYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class InferInputError(ValueError):
    """A request that doesn't fit the model: answered with 400 and this message."""


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Optional[dict[str, Any]] = None
    data: list[Any]


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: Optional[dict[str, Any]] = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Optional[StrictStr] = None
    parameters: Optional[dict[str, Any]] = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: Optional[list[RequestOutput]] = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Optional[dict[str, Any]] = None


def tensor_metadata(specs: list[dict]) -> list[TensorMetadata]:
    return [TensorMetadata(name=s["name"], datatype=DATATYPE_OF[s["dtype"]], shape=[-1 if d is None else d for d in s["shape"]])
            for s in specs]


def feeds_from_request(bundle: Bundle, request: InferRequest, max_batch: int) -> dict[str, np.ndarray]:
    """Check every input against the manifest and build onnxruntime feeds."""
    specs = {s["name"]: s for s in bundle.inputs}
    given = [i.name for i in request.inputs]
    unknown = [n for n in given if n not in specs]
    if unknown:
        raise InferInputError(f"unknown input {unknown[0]!r}; the model takes {', '.join(specs)}")
    duplicated = sorted({n for n in given if given.count(n) > 1})
    if duplicated:
        raise InferInputError(f"input {duplicated[0]!r} is given more than once")
    missing = [n for n in specs if n not in given]
    if missing:
        raise InferInputError(f"input {missing[0]!r} is missing; the model takes {', '.join(specs)}")
    feeds, batch = {}, None
    for item in request.inputs:
        spec = specs[item.name]
        array = _tensor(item, spec, max_batch)
        if batch is not None and array.shape[0] != batch:
            raise InferInputError(f"input {item.name!r} has batch size {array.shape[0]}, but other inputs have {batch}")
        batch = array.shape[0]
        feeds[item.name] = array
    return feeds


def _tensor(item: RequestInput, spec: dict, max_batch: int) -> np.ndarray:
    name, dtype = item.name, spec["dtype"]
    expected = DATATYPE_OF[dtype]
    if dtype == "string" and item.datatype != "BYTES":
        raise InferInputError(f"input {name!r} has datatype {item.datatype}, expected BYTES (strings)")
    if dtype != "string" and item.datatype not in NUMERIC_DATATYPES:
        raise InferInputError(f"input {name!r} has datatype {item.datatype}, expected {expected}")
    want = spec["shape"]
    if len(item.shape) != len(want):
        raise InferInputError(f"input {name!r} has shape {item.shape}, expected rank {len(want)} like "
                              f"{[-1 if d is None else d for d in want]}")
    if any(d < 0 for d in item.shape):
        raise InferInputError(f"input {name!r} has a negative dimension in shape {item.shape}")
    for axis, (got, need) in enumerate(zip(item.shape, want)):
        if axis > 0 and need not in (None, -1) and got != need:
            raise InferInputError(f"input {name!r} has shape {item.shape}, expected dimension {axis} to be {need}")
    if item.shape[0] < 1:
        raise InferInputError(f"input {name!r} has no rows")
    if item.shape[0] > max_batch:
        raise InferInputError(f"input {name!r} has {item.shape[0]} rows; this server takes at most {max_batch} per request")
    flat = _flatten(item.data)
    if len(flat) != math.prod(item.shape):
        raise InferInputError(f"input {name!r} has {len(flat)} values, but shape {item.shape} needs {math.prod(item.shape)}")
    if dtype == "string":
        bad = next((i for i, v in enumerate(flat) if not isinstance(v, str)), None)
        if bad is not None:
            raise InferInputError(f"input {name!r} expects strings (BYTES), got {type(flat[bad]).__name__} at index {bad}")
        return np.array(flat, dtype=object).reshape(item.shape)
    nullable = spec.get("nullable", False)
    values = []
    for index, value in enumerate(flat):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not nullable or dtype == "int64":
                raise InferInputError(f"input {name!r} has a missing value (null/NaN) at index {index}, "
                                      "and this model does not accept missing values there")
            values.append(math.nan)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InferInputError(f"input {name!r} expects numbers ({expected}), got {type(value).__name__} "
                                  f"{value!r:.40} at index {index}")
        elif isinstance(value, float) and math.isinf(value):
            raise InferInputError(f"input {name!r} has an infinite value at index {index}")
        else:
            if not _fits(value, dtype):
                raise InferInputError(f"input {name!r} has a value at index {index} that does not fit {expected}")
            values.append(value)
    if dtype == "int64" and any(not float(v).is_integer() for v in values):
        raise InferInputError(f"input {name!r} expects integers (INT64)")
    return np.array(values, dtype=NUMPY_OF[dtype]).reshape(item.shape)


def _fits(value: int | float, dtype: str) -> bool:
    """A JSON number the model's dtype can hold (Python ints are unbounded; float32 tops out at 3.4e38)."""
    if dtype == "int64":
        return not isinstance(value, int) or -(2**63) <= value < 2**63
    try:
        magnitude = abs(float(value))
    except OverflowError:
        return False
    return magnitude <= float(np.finfo(NUMPY_OF[dtype]).max)


def _flatten(data: list) -> list:
    """OIP allows nested (row-major) or flat data."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def response_outputs(bundle: Bundle, names: list[str], values: list[np.ndarray]) -> list[ResponseOutput]:
    specs = {o["name"]: o for o in bundle.outputs}
    outputs = []
    for name, value in zip(names, values):
        value = np.asarray(value)
        dtype = specs[name]["dtype"]
        if dtype == "string":
            data = [v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel()]
        else:
            data = value.ravel().tolist()
        outputs.append(ResponseOutput(name=name, shape=list(value.shape), datatype=DATATYPE_OF[dtype], data=data))
    return outputs
