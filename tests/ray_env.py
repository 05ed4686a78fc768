"""Ray Serve in a venv of its own, layered over the test venv: for tests/test_ray_serve.py's real deployment.

Ray can't join edgeport's venv: ray[serve] 2.60 needs packaging >= 24 where tensorflowjs 4.22 pins packaging~=23.1,
and left alone its resolver takes protobuf 7 where TensorFlow needs protobuf < 6. So the test runs Ray in
bench/.venv-ray, a venv whose site-packages end with the test venv's (a .pth line: site.addsitedir), so edgeport
and its dependencies come from there, and that holds only what Ray adds or needs newer: ray[serve] 2.60 with
protobuf held below 6, packaging 26 (shadowing 23 in this venv only; nothing here imports tensorflowjs). About
20 s to install from pip's cache, once (side_venv.py).
"""
from __future__ import annotations

from pathlib import Path

from side_venv import side_venv

ROOT = Path(__file__).resolve().parent.parent
RAY_VENV = ROOT / "bench" / ".venv-ray"
RAY_PACKAGES = ("ray[serve]==2.60.0", "protobuf<6")


def ray_python() -> tuple[str | None, str]:
    """(the Ray venv's python, "") once it is installed, else (None, why it could not be)."""
    return side_venv(RAY_VENV, RAY_PACKAGES, "Ray", overlay=True)
