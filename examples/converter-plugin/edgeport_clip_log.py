"""ClipLog: log1p of each column clipped to [0, the largest value seen in fit].

A custom scikit-learn transformer that skl2onnx can't know, and the converter that teaches it, registered
the way skl2onnx documents (`update_registered_converter`: a shape calculator and a converter). `register()`
is this package's `edgeport.converters` entry point.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class ClipLog(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        self.upper_ = np.asarray(X, dtype=np.float64).max(axis=0)
        return self

    def transform(self, X):
        return np.log1p(np.clip(np.asarray(X, dtype=np.float64), 0, self.upper_))


def _shape(operator):
    features = operator.inputs[0]
    operator.outputs[0].type = features.type.__class__([features.get_first_dimension(), features.type.shape[1]])


def _convert(scope, operator, container):
    from skl2onnx.algebra.onnx_ops import OnnxAdd, OnnxLog, OnnxMax, OnnxMin
    from skl2onnx.common.data_types import guess_numpy_type

    opv = container.target_opset
    features = operator.inputs[0]
    dtype = guess_numpy_type(features.type)
    upper = operator.raw_operator.upper_.astype(dtype)
    clipped = OnnxMax(OnnxMin(features, upper, op_version=opv), np.array([0], dtype=dtype), op_version=opv)
    result = OnnxLog(OnnxAdd(clipped, np.array([1], dtype=dtype), op_version=opv), op_version=opv,
                     output_names=operator.outputs[:1])
    result.add_to(scope, container)


def register() -> None:
    """Teach skl2onnx to convert ClipLog (edgeport calls this once, before it converts anything)."""
    from skl2onnx import update_registered_converter

    update_registered_converter(ClipLog, "EdgeportExampleClipLog", _shape, _convert)
