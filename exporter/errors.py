"""edgeport's exceptions: one tree, each class with its exit code.

    EdgeportError                 exit 1: a domain error with a one-paragraph message
    ├── InputFileError            a model, sample or bundle path is missing or unreadable
    ├── ModelLoadError            a model file can't be loaded safely
    │   ├── PickleRefusedError    a pickle was given without --allow-pickle
    │   ├── UntrustedTypesError   a .skops file holds types nobody trusted
    │   └── UnsafeGraphError      a SavedModel's graph has ops that touch files, Python or the network
    ├── UserCodeError             an --import module or a converter plugin can't be found, or fails as it loads
    ├── SampleError               the sample doesn't fit the model (columns, shape, format)
    │   └── RowValidationError    a row or tensor value doesn't fit the manifest's inputs (decoding.py)
    ├── UnsupportedModelError     no converter for this estimator / (framework, target)
    ├── UnusedOptionError         exit 2: an option the chosen converter doesn't take (never silently ignored)
    ├── ConversionError           the converter failed on a supported model
    ├── BundleError               a bundle can't be written, read or trusted
    │   ├── IntegrityError        a bundle file doesn't match its manifest hash
    │   └── SiteError             a demo site can't be read or trusted (missing, changed, over the size limit)
    ├── RuntimeUnavailableError   node / npm ci / chromium / TensorFlow is missing
    ├── RuntimeFailedError        a runtime ran but gave no outputs (recorded in the report)
    ├── ParityUndecidedError      no numbers differ, but parity wasn't decided: a runtime couldn't run, or none applied
    ├── ParityError               exit 3: the exported model's outputs differ from the reference
    └── DriftDetectedError        exit 4: live data drifted from the training data beyond a threshold (drift.py)

The CLI maps every EdgeportError to its `exit_code` in one place and prints the
message without a traceback (unless --debug). Third-party exceptions are
translated where they are caught, with `raise X(...) from exc`.
"""
from __future__ import annotations


class EdgeportError(Exception):
    """Base of every error edgeport reports to a user. Exit code 1."""

    exit_code = 1


class InputFileError(EdgeportError):
    """Raised when a path the user named does not exist or can't be read."""


class ModelLoadError(EdgeportError):
    """Raised when a model file exists but can't be loaded (corrupt, wrong format)."""


class PickleRefusedError(ModelLoadError):
    """Raised for .pkl/.joblib files unless --allow-pickle was given."""


class UntrustedTypesError(ModelLoadError):
    """Raised when a .skops file holds types that neither skops, edgeport's defaults nor --trust trust."""


class UnsafeGraphError(ModelLoadError):
    """Raised when a SavedModel's graph can run ops that reach outside the model, unless --allow-op names them."""


class UserCodeError(EdgeportError):
    """Raised when an --import module or an `edgeport.converters` plugin can't be found or fails while it loads."""


class SampleError(EdgeportError):
    """Raised when the sample data can't be read or doesn't match the model's inputs."""


class RowValidationError(SampleError):
    """Raised when a row, or an OIP tensor's values, doesn't fit the manifest's inputs.

    `code` says how, with the JS client's codes (rows, row-type, extra-column, missing-column, row-length,
    type, missing-value, range); the message names the row and the column or input at fault.
    """

    def __init__(self, message: str, *, code: str, row: int | None = None, field: str | None = None):
        super().__init__(message)
        self.code, self.row, self.field = code, row, field


class UnsupportedModelError(EdgeportError):
    """Raised when no registered converter handles the model or the target."""


class OptionError(EdgeportError):
    """An option value that can't apply to this model: refused like a usage error (exit 2), naming the option."""

    exit_code = 2


class UnusedOptionError(OptionError):
    """Raised when an option is given that the converter for this model doesn't use (e.g. --classes on a
    scikit-learn model, which knows its classes): refused like a usage error, never swallowed."""


class ConversionError(EdgeportError):
    """Raised when a converter fails on a model it claims to support."""


class BundleError(EdgeportError):
    """Raised when a bundle can't be written, or read back as a valid bundle."""


class IntegrityError(BundleError):
    """Raised when a bundle file's size or sha256 differs from manifest.json."""


class SiteError(BundleError):
    """Raised when a demo site's files don't match its site.json, are missing, or are too big to serve."""


class RuntimeUnavailableError(EdgeportError):
    """Raised when a runtime edgeport needs (node, npm packages, chromium, TF) is missing."""


class ParityError(EdgeportError):
    """Raised when outputs differ from the reference beyond the tolerance; the artifact is kept. Exit code 3.

    Only differing numbers are a parity failure: a runtime that could not run is a ParityUndecidedError."""

    exit_code = 3


class DriftDetectedError(EdgeportError):
    """Raised when a feature's (or the confidence's) PSI against the training data is above its threshold, naming
    each one: `edgeport drift` exits 4, so CI and cron can gate on it. The report is written first."""

    exit_code = 4
    prefix = "drift"  # a verdict the command was asked for, not a failure of the command


class ParityUndecidedError(EdgeportError):
    """Raised when no runtime found differing outputs but the gate decided nothing: a runtime could not run
    (load failure, type error, page error, timeout), or no runtime asked for applies to the bundle. Exit 1."""


class RuntimeFailedError(EdgeportError):
    """Raised when a runtime started but produced no outputs (load failure, page error, timeout).

    `check` records it in that runtime's section of the report, so the other runtimes still run; the
    verdict is then undecided (ParityUndecidedError, exit 1) unless another runtime's numbers differ.
    """

    def __init__(self, message: str, diagnostics: tuple[str, ...] = ()):
        super().__init__(message)
        self.diagnostics = tuple(diagnostics)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to `limit` characters (its type's name when it has none):
    what a one-paragraph error quotes from a third-party exception."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class BatchError(EdgeportError):
    """A batch run that can't go on (a bad row without --rejects, an unreadable file): one paragraph, exit 1."""
