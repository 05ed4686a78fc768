"""The converter registry: keyed by (framework, target), no silent overwrite, helpful misses."""
import pytest

from edgeport.errors import UnsupportedModelError
from edgeport.registry import get_converter, register, registered


def test_builtin_converters_are_registered():
    assert {("sklearn", "onnx"), ("keras", "onnx"), ("keras", "tfjs")} <= set(registered())


def test_registering_a_key_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register("sklearn", "onnx")(type("Another", (), {}))


def test_an_unknown_key_lists_what_is_supported():
    with pytest.raises(UnsupportedModelError) as info:
        get_converter("sklearn", "tfjs")
    assert "sklearn → onnx" in str(info.value) and "keras → tfjs" in str(info.value)
