"""Loading an ONNX file someone made elsewhere ("bring your own ONNX").

An `.onnx` file is data (a protobuf), not code: reading it runs nothing. It is
still checked before anything else touches it:

- its size on disk is at most the model limit (1 GiB, `EDGEPORT_MAX_MODEL_BYTES`);
- `onnx.checker.check_model` accepts it;
- every tensor is inside the file: external data (weights in side files, named
  by path) is refused, so the bundle's one model.onnx is the whole model and no
  path in the file is ever opened;
- every node's domain is one onnxruntime (and onnxruntime-web) implements: the
  standard ops (`ai.onnx`), the ML ops (`ai.onnx.ml`) and onnxruntime's own
  contrib ops (`com.microsoft`), or a function defined in the file itself.
  Custom-op domains need a custom-op library the browser can't load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, first_line as _first_line
from .model_file import LoadedModel, sha256_of

# domains onnxruntime's default build runs ("" is ai.onnx)
RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class OnnxModel:
    """A checked ONNX file: its exact bytes and the parsed graph. `roles` (output name -> role) is filled by the
    converter with the roles it settled on, so that its reference outputs use the same ones."""

    content: bytes
    proto: Any  # onnx.ModelProto
    roles: dict = field(default_factory=dict)


def load_onnx_model(path: Path) -> LoadedModel:
    """Read and check an .onnx file (see the module docstring), or raise ModelLoadError in one paragraph."""
    from .loading import DEFAULT_MAX_MODEL_BYTES, MAX_MODEL_BYTES_ENV, _limit, _size

    max_bytes = _limit(MAX_MODEL_BYTES_ENV, DEFAULT_MAX_MODEL_BYTES)
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(
            f"refusing to load {path.name}: it is {_size(size)}, over edgeport's limit of {_size(max_bytes)}. If you "
            f"trust the file and the model really is that big, raise the limit with the environment variable "
            f"{MAX_MODEL_BYTES_ENV}={size}.")
    import onnx

    content = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(content)
    except Exception as exc:  # DecodeError and friends
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX file: protobuf could not parse it ({type(exc).__name__}: "
            f"{_first_line(exc)}). The file may be truncated or not ONNX at all; export it again "
            "(onnx.save(model, 'model.onnx')).") from exc
    _refuse_external_data(proto, path)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx.checker.ValidationError
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model: onnx.checker refused it ({_first_line(exc)}). "
            "Export it again with the converter that made it, or fix the graph it names.") from exc
    _refuse_custom_domains(proto, path)
    return LoadedModel("onnx", OnnxModel(content, proto), path, sha256_of(path), "onnx")


def _refuse_external_data(proto: Any, path: Path) -> None:
    from onnx import external_data_helper

    for tensor in external_data_helper._get_all_tensors(proto):  # initializers, and tensors in attributes
        if external_data_helper.uses_external_data(tensor):
            raise ModelLoadError(
                f"refusing {path.name}: tensor {tensor.name!r} keeps its data in a separate file, and a bundle ships "
                "one self-contained model.onnx (nor does edgeport open paths named inside a model). Save it with "
                "the weights inside: onnx.save(onnx.load('model.onnx'), 'whole.onnx', save_as_external_data=False).")


def _refuse_custom_domains(proto: Any, path: Path) -> None:
    local = {(f.domain, f.name) for f in proto.functions}
    found: dict[str, str] = {}
    for node in _nodes(proto):
        if node.domain not in RUNNABLE_DOMAINS and (node.domain, node.op_type) not in local:
            found.setdefault(node.domain, node.op_type)
    if found:
        listed = ", ".join(f"{domain} (e.g. {op})" for domain, op in sorted(found.items()))
        raise ModelLoadError(
            f"refusing {path.name}: it uses custom-op domain(s) {listed}, which onnxruntime and onnxruntime-web can "
            "run only with a custom-op library that a browser can't load. Export the model with standard ONNX ops "
            "(ai.onnx, ai.onnx.ml), e.g. a lower opset or the converter's option to avoid custom ops.")


def _nodes(proto: Any):
    """Every node, in the main graph, in subgraphs (If, Loop, Scan) and in local functions."""
    from onnx import AttributeProto

    pending = [list(proto.graph.node)] + [list(f.node) for f in proto.functions]
    while pending:
        for node in pending.pop():
            yield node
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    pending.append(list(attribute.g.node))
                elif attribute.type == AttributeProto.GRAPHS:
                    pending.extend(list(g.node) for g in attribute.graphs)
