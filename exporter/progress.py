"""Progress: how long work reports what it is doing.

A `Progress` is any callable taking one line of text. The CLI prints each line to stderr as `· message`;
library callers pass their own, or nothing (`quiet`).
"""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str], None]


def quiet(_message: str) -> None:
    """A Progress that says nothing."""
