"""Loading Keras models (.keras files, SavedModel directories). Imports TensorFlow, so only on demand.

A SavedModel's graph is read as a protobuf and its op types checked before
TensorFlow loads or runs any of it: see `audit_saved_model` and `UNSAFE_OPS`.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import ModelLoadError, RuntimeUnavailableError, UnsafeGraphError
from .extras import install_hint
from .model_file import LoadedModel, sha256_of

INSTALL_HINT = "install the tensorflow extra: " + install_hint("tensorflow")

# Ops that reach outside the model: they read, write, list or delete files, run Python, log to a path, or talk
# to the network. A model from someone else could hide one in its serving function or its initializers, and
# loading or running the model would then do that on this machine. Inference never needs any of them.
UNSAFE_OPS = frozenset({
    # files
    "WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration", "RecordInput",
    "LoadAndRemapMatrix", "GenerateVocabRemapping", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "DecodeProtoV2", "EncodeProto",  # descriptor_source may name a file
    # checkpoints: the saver's own functions hold these, but a serving function or initializer must not
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    # Python and printing (PrintV2's output_stream can be a file:// path)
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2",
    # summary writers
    "SummaryWriter", "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteRawProtoSummary",
    "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter", "StatsAggregatorSetSummaryWriter",
    # debugger ops write to their debug_urls (file:// or grpc://)
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    # file readers
    "TFRecordReader", "TFRecordReaderV2", "TextLineReader", "TextLineReaderV2", "WholeFileReader",
    "WholeFileReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    # datasets over files or the network; DatasetFromGraph runs a serialized graph this check can't see into
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "SqlDataset", "ExperimentalSqlDataset", "MatchingFilesDataset",
    "ExperimentalMatchingFilesDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset", "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord", "CacheDataset", "CacheDatasetV2", "SnapshotDataset", "SnapshotDatasetV2",
    "SnapshotDatasetReader", "SnapshotNestedDatasetReader", "SnapshotChunkDataset", "ListSnapshotChunksDataset",
    "DistributedSave", "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3",
    "DataServiceDatasetV4", "RegisterDataset", "RegisterDatasetV2", "DatasetFromGraph",
    # remote procedure calls
    "Rpc", "TryRpc", "RpcClient", "RpcServer", "RpcServerStart", "RpcServerRegister", "RpcCall",
})
# The checkpoint restore op (saver_def) runs when a TF1-style SavedModel loads, and reading the checkpoint is its job.
RESTORE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice"})
# Collections whose ops a TF1-style SavedModel runs as it loads.
INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer")


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what TensorFlow's C++ side writes to fd 2 (absl logs before TF_CPP_MIN_LOG_LEVEL applies)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> Any:
    """TensorFlow, quietly, or a clear error saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    try:
        with quiet_native_stderr():
            import tensorflow as tf
    except ImportError as exc:
        raise RuntimeUnavailableError(f"this needs TensorFlow, which is not installed: {INSTALL_HINT}") from exc
    return tf


def load_keras_model(path: Path, *, allow_ops: Sequence[str] = ()) -> LoadedModel:
    """A .keras file (safe mode: no arbitrary code from Lambda layers) or a SavedModel directory.

    A SavedModel is audited first (`audit_saved_model`); `allow_ops` names the unsafe ops the user accepts.
    """
    import_tensorflow()
    import keras

    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path} is a directory but not a TensorFlow SavedModel (no saved_model.pb)")
        audit_saved_model(path, allow_ops=allow_ops)
        try:
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
            model = _wrap_saved_model(keras, layer)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load the SavedModel at {path}: {str(exc).splitlines()[0][:300]}") from exc
        # the wrapper's last layer is the whole SavedModel: whether it ends in a softmax or a sigmoid (a classifier)
        # is read from the graph instead
        model._edgeport_head = saved_model_head(path)
        return LoadedModel("keras", model, path, sha256_of(path), "savedmodel")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path.name} with Keras ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
            "If the model uses custom layers, import the module that registers them before exporting."
        ) from exc
    return LoadedModel("keras", model, path, sha256_of(path), "keras")


def audit_saved_model(path: Path, *, allow_ops: Sequence[str] = ()) -> None:
    """Refuse a SavedModel whose graph can run an op in UNSAFE_OPS, before TensorFlow loads or runs any of it.

    Only `saved_model.pb` is parsed (protobuf; nothing executes). The ops checked are those reachable from what
    loading and serving run: every signature (serving_default, the others and `__saved_model_init_op`), the
    TF1 init collections, every function the object graph restores (resource initializers run during loading),
    and the checkpoint restore op, where reading the checkpoint is allowed. Function calls are followed
    transitively, through ops named after a library function and `func` / `list(func)` attrs (StatefulPartitionedCall,
    While and If bodies, datasets' map functions). The saver's own save function is never run, so it isn't checked.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    except (DecodeError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"{path / 'saved_model.pb'} is not a valid SavedModel ({type(exc).__name__}: {exc}); "
                             "export the model again") from exc
    allowed = frozenset(allow_ops)
    found: dict[str, set[str]] = {}
    for meta_graph in saved_model.meta_graphs:
        signature_tensors = [name for signature in meta_graph.signature_def.values()
                             for info in (*signature.inputs.values(), *signature.outputs.values())
                             for name in _tensor_names(info)]
        init_nodes = [name for key in INIT_COLLECTIONS if key in meta_graph.collection_def
                      for name in meta_graph.collection_def[key].node_list.value]
        restored_functions = list(meta_graph.object_graph_def.concrete_functions)
        _merge(found, _unsafe_ops(meta_graph.graph_def, signature_tensors + init_nodes, restored_functions,
                                  UNSAFE_OPS - allowed))
        if meta_graph.saver_def.restore_op_name:
            _merge(found, _unsafe_ops(meta_graph.graph_def, [meta_graph.saver_def.restore_op_name], [],
                                      UNSAFE_OPS - RESTORE_OPS - allowed))
    if found:
        ops = sorted(found)
        places = "; ".join(f"{op} (in {', '.join(sorted(found[op]))})" for op in ops)
        raise UnsafeGraphError(
            f"refusing to load the SavedModel at {path}: its graph runs ops that reach outside the model "
            f"(files, Python, or the network), so loading or running it would do that on this machine: {places}. "
            "Inference doesn't need them; export the model again without them, or, if you trust where it came "
            "from, allow each one with " + " ".join(f"--allow-op {op}" for op in ops) + "."
        )


# ops that hand a tensor on unchanged, and ops that call a library function, between a signature's output and
# the op that computed it
PASS_THROUGH_OPS = frozenset({"Identity", "IdentityN", "Snapshot", "StopGradient", "PreventGradient"})
CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
HEAD_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}


def saved_model_head(path: Path) -> str:
    """'softmax' or 'sigmoid' where the serving signature's one output is computed by that op (through identities
    and function calls), else ''. Read from saved_model.pb, like the audit: nothing runs."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        signature = meta_graph.signature_def.get("serving_default")
        if signature is None or len(signature.outputs) != 1:
            continue
        (info,) = signature.outputs.values()
        if info.WhichOneof("encoding") == "name":
            return HEAD_OPS.get(_producing_op(meta_graph.graph_def, info.name), "")
    return ""


def _producing_op(graph_def: Any, tensor: str) -> str:
    """The type of the op that computes `tensor` ("node:index" in the graph), seen through PASS_THROUGH_OPS and
    into the functions CALL_OPS call ("node:output_arg:index" inside them); '' where the trail is lost."""
    library = {function.signature.name: function for function in graph_def.library.function}
    nodes = {node.name: node for node in graph_def.node}
    for _ in range(1000):  # a malformed graph could loop
        name, _, rest = tensor.lstrip("^").partition(":")
        index = int(rest.rsplit(":", 1)[-1]) if rest else 0
        node = nodes.get(name)
        if node is None:
            return ""
        if node.op in PASS_THROUGH_OPS:
            tensor = node.input[index if node.op == "IdentityN" else 0]
        elif node.op in CALL_OPS and node.attr["f"].func.name in library:
            function = library[node.attr["f"].func.name]
            if index >= len(function.signature.output_arg):
                return ""
            tensor = function.ret[function.signature.output_arg[index].name]
            nodes = {inner.name: inner for inner in function.node_def}
        else:
            return node.op
    return ""


def _tensor_names(info: Any) -> list[str]:
    """The graph tensor names behind a signature's TensorInfo (dense, sparse or composite)."""
    encoding = info.WhichOneof("encoding")
    if encoding == "name":
        return [info.name]
    if encoding == "coo_sparse":
        sparse = info.coo_sparse
        return [sparse.values_tensor_name, sparse.indices_tensor_name, sparse.dense_shape_tensor_name]
    if encoding == "composite_tensor":
        return [name for component in info.composite_tensor.components for name in _tensor_names(component)]
    return []


def _unsafe_ops(graph_def: Any, node_names: Iterable[str], function_names: Iterable[str],
                refused: frozenset[str]) -> dict[str, set[str]]:
    """{op: {where}} for ops in `refused` reachable from graph nodes (by their inputs) and library functions."""
    nodes = {node.name: node for node in graph_def.node}
    library = {function.signature.name: function for function in graph_def.library.function}
    found: dict[str, set[str]] = {}
    pending_nodes = [_node_name(name) for name in node_names]
    pending_functions = list(function_names)
    seen_nodes: set[str] = set()
    seen_functions: set[str] = set()

    def visit(node: Any, where: str) -> None:
        if node.op in refused:
            found.setdefault(node.op, set()).add(where)
        if node.op in library:
            pending_functions.append(node.op)
        for value in node.attr.values():
            if value.HasField("func"):
                pending_functions.append(value.func.name)
            pending_functions.extend(function.name for function in value.list.func)

    while pending_nodes or pending_functions:
        if pending_nodes:
            name = pending_nodes.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            visit(nodes[name], "the graph")
            pending_nodes.extend(_node_name(source) for source in nodes[name].input)
            continue
        name = pending_functions.pop()
        if name in seen_functions or name not in library:
            continue
        seen_functions.add(name)
        for node in library[name].node_def:  # every node: a function's stateful ops run even if no output uses them
            visit(node, name)
    return found


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _merge(found: dict[str, set[str]], more: dict[str, set[str]]) -> None:
    for op, places in more.items():
        found.setdefault(op, set()).update(places)


def _wrap_saved_model(keras: Any, layer: Any) -> Any:
    """A Keras model around a SavedModel's serving signature (single input, single output)."""
    signature = layer._endpoint_signatures if hasattr(layer, "_endpoint_signatures") else None
    function = layer.call_endpoint_fn if hasattr(layer, "call_endpoint_fn") else None
    specs = None
    for candidate in (function, signature):
        if candidate is not None and hasattr(candidate, "structured_input_signature"):
            specs = candidate.structured_input_signature[1]
            break
    if not specs or len(specs) != 1:
        raise ModelLoadError("edgeport loads SavedModels whose serving signature has exactly one input; "
                             "export the Keras model as .keras instead")
    (name, spec), = specs.items()
    inputs = keras.Input(shape=tuple(spec.shape[1:]), name=name, dtype=spec.dtype.name)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelLoadError("edgeport loads SavedModels with exactly one output")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)
