"""Open Inference Protocol v2: the request/response schemas and the checks against the manifest.

A request is checked in full against the bundle's manifest before anything
runs: input names, datatypes, shapes, data length and nesting, element types,
missing values, parameters, the batch cap. Each failure is an InferInputError
(HTTP 400) whose message names the input or parameter at fault.

The cost of a request is bounded before it is parsed: a RequestBudget, known
from the manifest, caps the body's bytes, its JSON nesting and its number of
values at what the largest legitimate request for that model can need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from ..bundle import Bundle, InputSpec, OutputSpec
from ..decoding import tensor_from_values
from ..errors import RowValidationError
from .metrics import FALLBACK_REASONS

DATATYPE_OF = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "string": "BYTES"}
# what each narrow datatype can carry: (lowest, highest, whole numbers only); FP32/FP64 carry any finite number
DATATYPE_RANGES = {
    "INT8": (-2**7, 2**7 - 1, True), "INT16": (-2**15, 2**15 - 1, True), "INT32": (-2**31, 2**31 - 1, True),
    "INT64": (-2**63, 2**63 - 1, True), "UINT8": (0, 2**8 - 1, True), "UINT16": (0, 2**16 - 1, True),
    "UINT32": (0, 2**32 - 1, True), "UINT64": (0, 2**64 - 1, True), "FP16": (-65504.0, 65504.0, False),
}
# numeric datatypes a client may send for a numeric input; values are cast to the model's dtype
NUMERIC_DATATYPES = {*DATATYPE_RANGES, "FP32", "FP64"}


# what the largest legitimate request can spend per value: "-1.2345678901234567e-308, " pretty-printed and indented
BYTES_PER_NUMBER = 64
BYTES_PER_STRING = 1024
SLACK_BYTES = 64 * 1024  # names, parameters, whitespace
SLACK_SEPARATORS = 1024
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
AS_LIST_BRACKETS = bytes.maketrans(b"{}", b"[]")  # for depth, an object nests like a list
FallbackReason = Literal[FALLBACK_REASONS]
BINARY_REFUSED = "binary tensor data is not supported by this server: send tensors as JSON (binary_data=false)"


class InferInputError(ValueError):
    """A request that doesn't fit the model: answered with 400 and this message."""


def _refuse_binary(value: Any) -> Any:
    if value:  # binary_data(_output)=true, or a binary_data_size: both mean binary tensors follow the JSON
        raise ValueError(BINARY_REFUSED)
    return value


class Parameters(BaseModel):
    """OIP parameters this server knows; any other name is refused (400 naming it), never silently ignored."""
    model_config = ConfigDict(extra="forbid")
    # tritonclient and KServe send it; the tensors are JSON whatever it says
    content_type: Optional[StrictStr] = Field(None, max_length=64)


class RequestParameters(Parameters):
    fallback_reason: Optional[FallbackReason] = None  # the JS client says why the browser didn't answer
    binary_data_output: Optional[StrictBool] = None  # tritonclient: false, or true when no outputs are named

    _binary = field_validator("binary_data_output")(_refuse_binary)


class InputParameters(Parameters):
    binary_data_size: Optional[StrictInt] = None  # the binary tensor extension: refused unless 0

    _binary = field_validator("binary_data_size")(_refuse_binary)


class OutputParameters(Parameters):
    binary_data: Optional[StrictBool] = None  # tritonclient's InferRequestedOutput sends it, false for JSON

    _binary = field_validator("binary_data")(_refuse_binary)


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Optional[InputParameters] = None
    data: list[Any]


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: Optional[OutputParameters] = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Optional[StrictStr] = None
    parameters: Optional[RequestParameters] = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: Optional[list[RequestOutput]] = None


class ErrorResponse(BaseModel):
    error: str


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


def tensor_metadata(specs: Sequence[InputSpec | OutputSpec]) -> list[TensorMetadata]:
    return [TensorMetadata(name=s.name, datatype=DATATYPE_OF[s.dtype], shape=[-1 if d is None else d for d in s.shape])
            for s in specs]


@dataclass(frozen=True)
class RequestBudget:
    """What the largest legitimate infer request for one model can cost, known from its manifest.

    max_bytes: the body (a tighter bound than the server-wide cap when every input has a fixed row size);
    max_separators: commas outside strings, which bound the number of JSON values together with max_depth;
    max_depth: JSON nesting, {"inputs": [{"data": [...]}]} plus the inputs' rank, plus one.
    """
    max_bytes: int
    max_separators: Optional[int]
    max_depth: int
    rows: int

    @classmethod
    def for_bundle(cls, bundle: Bundle, max_batch: int, max_body_bytes: int) -> RequestBudget:
        rank = max((len(s.shape) for s in bundle.inputs), default=1)
        depth = max(4, 3 + rank) + 1  # parameters objects sit at depth 4
        inner = [s.shape[1:] for s in bundle.inputs]
        if any(d in (None, -1) for dims in inner for d in dims):  # a row's size isn't known: only the server-wide caps
            return cls(max_body_bytes, None, depth, max_batch)
        per_row = [(math.prod(dims), s.dtype) for dims, s in zip(inner, bundle.inputs)]
        per_value = {"string": BYTES_PER_STRING}
        text = max_batch * sum(n * per_value.get(dtype, BYTES_PER_NUMBER) for n, dtype in per_row)
        values = max_batch * sum(n for n, _ in per_row)
        return cls(min(max_body_bytes, text + SLACK_BYTES), 2 * values + SLACK_SEPARATORS, depth, max_batch)


def parse_request(body: bytes, budget: RequestBudget) -> InferRequest:
    """The request, after cheap scans of the raw body have refused whatever would cost more to parse than it may."""
    structure = _outside_strings(body)
    separators = structure.count(b",")
    if budget.max_separators is not None and separators > budget.max_separators:
        raise InferInputError(f"request body holds about {separators} values; the largest request this model takes "
                              f"({budget.rows} rows) needs at most {budget.max_separators}")
    brackets = structure.translate(AS_LIST_BRACKETS, NOT_BRACKETS)
    if len(brackets) > 2 * budget.max_depth and _nests_deeper(brackets, budget.max_depth):  # fewer can't nest deeper
        raise InferInputError(f"request body nests JSON deeper than {budget.max_depth} levels; "
                              "the data of each input nests at most as deep as its shape")
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InferInputError(validation_message(exc)) from exc


def validation_message(exc: ValidationError) -> str:
    """pydantic's first error, in a sentence that names the field or parameter at fault."""
    errors = exc.errors()
    if not errors:
        return f"invalid request: {exc}"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}"
    loc = [str(p) for p in first.get("loc", ())]
    where = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden" and len(loc) >= 2 and loc[-2] == "parameters":
        known = RequestParameters if len(loc) == 2 else OutputParameters if loc[0] == "outputs" else InputParameters
        return f"invalid request: unknown parameter {where!r}; this server knows {', '.join(known.model_fields)}"
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    return f"invalid request: field {where}: {message}"


def _outside_strings(body: bytes) -> bytes:
    """The body without the contents of its JSON strings: numbers, literals and punctuation are left."""
    if b"\\" in body:
        # every backslash in a string starts an escape: drop escaped backslashes, then escaped quotes
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(body.split(b'"')[0::2])


def _nests_deeper(brackets: bytes, limit: int) -> bool:
    """Whether a string of "[" and "]" nests deeper than limit: each pass strips exactly the innermost level."""
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced: not JSON, and the parser says so
        brackets = shorter
    return b"[]" in brackets


def feeds_from_request(bundle: Bundle, request: InferRequest, max_batch: int) -> dict[str, np.ndarray]:
    """Check every input against the manifest and build onnxruntime feeds."""
    specs = {s.name: s for s in bundle.inputs}
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


def _tensor(item: RequestInput, spec: InputSpec, max_batch: int) -> np.ndarray:
    name, dtype = item.name, spec.dtype
    expected = DATATYPE_OF[dtype]
    if dtype == "string" and item.datatype != "BYTES":
        raise InferInputError(f"input {name!r} has datatype {item.datatype}, expected BYTES (strings)")
    if dtype != "string" and item.datatype not in NUMERIC_DATATYPES:
        raise InferInputError(f"input {name!r} has datatype {item.datatype}, expected {expected}")
    want = spec.shape
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
    try:
        tensor = tensor_from_values(spec, item.shape, _values(name, item.data, item.shape))
    except RowValidationError as exc:
        raise InferInputError(str(exc)) from exc
    _within_datatype(name, item.datatype, tensor)
    return tensor


def _within_datatype(name: str, datatype: str, tensor: np.ndarray) -> None:
    """Values the declared datatype can't hold (INT8 carrying 1000 or 1.5, UINT64 carrying -1, FP16 past 65504)
    are a malformed request, whatever the model's dtype: a client that mislabels its data gets told."""
    bounds = DATATYPE_RANGES.get(datatype)
    if bounds is None or tensor.dtype.kind not in "fiu" or tensor.size == 0:
        return
    low, high, whole = bounds
    values = tensor.astype(np.float64, copy=False)
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if whole:
        bad |= np.isfinite(values) & (np.mod(values, 1) != 0)
    if bad.any():
        index = int(np.argmax(bad.ravel()))
        kind = "whole numbers" if whole else "numbers"
        raise InferInputError(f"input {name!r} has datatype {datatype}, but value {index} is "
                              f"{values.ravel()[index]:g}: {datatype} holds {kind} from {low:g} to {high:g}")


def _values(name: str, data: list, shape: list[int]) -> list:
    """The values in row-major order. OIP allows flat data, or data nested exactly as the shape (never ragged)."""
    if not any(isinstance(v, list) for v in data):
        if len(data) != math.prod(shape):
            raise InferInputError(f"input {name!r} has {len(data)} values, but shape {shape} needs {math.prod(shape)}")
        return data
    level = [data]
    for axis, size in enumerate(shape):
        below: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                found = (f"{len(item)} item{'s' * (len(item) != 1)}" if isinstance(item, list)
                         else f"a value ({type(item).__name__})")
                raise InferInputError(f"input {name!r} has nested data that does not match shape {shape}: "
                                      f"{found} at depth {axis}, where the shape needs a list of {size}")
            below.extend(item)
        level = below
    if any(isinstance(v, list) for v in level):
        raise InferInputError(f"input {name!r} has data nested deeper than its shape {shape}")
    return level


def response_outputs(bundle: Bundle, names: list[str], values: list[np.ndarray]) -> list[ResponseOutput]:
    specs = {o.name: o for o in bundle.outputs}
    outputs = []
    for name, value in zip(names, values):
        value = np.asarray(value)
        dtype = specs[name].dtype
        if dtype == "string":
            data = [v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel()]
        else:
            data = value.ravel().tolist()
        outputs.append(ResponseOutput(name=name, shape=list(value.shape), datatype=DATATYPE_OF[dtype], data=data))
    return outputs
