"""Shared fixtures: tiny seeded models saved as .skops, and the one parity assertion helper."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, why: str) -> None:
    """Skip with a reason locally; in CI the browser and TensorFlow tests must run, so fail instead."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {why}")
        pytest.skip(why)


def save_model(model, directory: Path, name: str, sample) -> tuple[Path, Path]:
    """Save a fitted model as .skops and its sample as CSV (or .npy for arrays)."""
    model_path = directory / f"{name}.skops"
    sio.dump(model, model_path)
    if isinstance(sample, np.ndarray):
        sample_path = directory / f"{name}.npy"
        np.save(sample_path, sample)
    else:
        sample_path = directory / f"{name}.csv"
        sample.to_csv(sample_path, index=False)
    return model_path, sample_path


def assert_parity(report, runtimes=("python",)) -> None:
    """The one parity assertion: every runtime named ran, compared rows, and passed."""
    from edgeport.formatting import format_report

    by_name = {r.runtime: r for r in report.runtimes}
    for name in runtimes:
        assert name in by_name, f"runtime {name} missing from the report"
        result = by_name[name]
        assert result.status == "passed", format_report(report)
        assert result.rows > 0 and result.outputs, f"{name} compared nothing"
    assert report.passed, format_report(report)


class ExportOnce:
    """export(model_path, sample_path, **options) -> ExportResult, each distinct export done once (module or session
    fixtures hand one out): tests that only read a bundle share it. The options are part of the key."""

    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def __call__(self, model_path: Path, sample_path: Path, **options: Any):
        from edgeport.export import export_model

        key = (str(model_path), str(sample_path), json.dumps(options, sort_keys=True, default=str))
        if key not in self.done:
            self.done[key] = export_model(model_path, self.root / f"bundle-{len(self.done)}", sample=sample_path,
                                          **options)
        return self.done[key]


def iris_frame():
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    return data.frame[data.feature_names], data.target


@pytest.fixture
def iris_model(tmp_path):
    """A fitted iris pipeline saved as .skops with a CSV sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = iris_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    model_path, sample_path = save_model(model, tmp_path, "iris", X)
    return model, model_path, sample_path


@pytest.fixture
def iris_bundle(iris_model, tmp_path):
    from edgeport.export import export_model

    _, model_path, sample_path = iris_model
    return export_model(model_path, tmp_path / "bundle", sample=sample_path).bundle


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """iris version 1 (logistic regression) and version 2 (a decision tree): their answers differ."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("versions")
    X, y = iris_frame()
    bundles = {}
    for version, model in (("1", LogisticRegression(max_iter=500)), ("2", DecisionTreeClassifier(max_depth=2, random_state=0))):
        (root / version).mkdir()
        model_path, sample_path = save_model(model.fit(X, y), root / version, "iris", X.sample(30, random_state=0))
        bundles[version] = export_model(model_path, root / f"bundle-{version}", sample=sample_path, version=version).bundle
    return bundles


def churn_data(n=400, seed=0):
    from edgeport.examples.churn import make_frame

    return make_frame(n=n, seed=seed)


@pytest.fixture
def churn_model(tmp_path):
    from edgeport.examples.churn import build_pipeline

    frame, target = churn_data()
    model = build_pipeline().fit(frame, target)
    model_path, sample_path = save_model(model, tmp_path, "churn", frame.head(200))
    return model, model_path, sample_path


IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two small bundles, exported per module (python parity): churn (columns layout, string categories,
    nullable columns, classes churn/stay) and iris (one matrix input with column names, classes named by species)."""
    from sklearn.linear_model import LogisticRegression

    from edgeport.examples.churn import build_pipeline
    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("small-bundles")
    frame, target = churn_data(n=300)
    churn = save_model(build_pipeline().fit(frame, target), root, "churn", frame.head(40))
    X, y = iris_frame()
    iris = save_model(LogisticRegression(max_iter=500).fit(X, IRIS_NAMES[y]), root, "iris", X.sample(40, random_state=0))
    return {name: export_model(model, root / f"{name}-bundle", sample=sample).bundle
            for name, (model, sample) in (("churn", churn), ("iris", iris))}


def rehash_bundle(bundle_dir: Path) -> None:
    """Rewrite manifest hashes after a deliberate change, as an attacker or a sloppy script would."""
    from edgeport.bundle import MANIFEST, Manifest, write_manifest

    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    write_manifest(bundle_dir, Manifest.from_dict(manifest))


def artifact_dir(name: str) -> Path:
    path = ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_node_client(script: str, *args: str, timeout: float = 60) -> Any:
    """Run `script`, an ES module that imports the real JS client as '../client/edgeport.js', under Node and return
    what it printed, parsed as JSON. It is written beside web_demo/node_modules (web_demo/test/), where its
    imports resolve, and removed after the run."""
    import subprocess
    import tempfile

    from edgeport.webassets import NODE_MODULES

    need((NODE_MODULES / "onnxruntime-web").is_dir(), "web_demo/node_modules is missing (run make setup)")
    fd, path = tempfile.mkstemp(prefix=".node-client-", suffix=".mjs", dir=REPO / "web_demo" / "test")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(script)
        done = subprocess.run(["node", path, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_mark(page, name):
    """Wait until the page has set performance.mark(name): the demo's edgeport:ready, edgeport:runtime-ready..."""
    page.wait_for_function("(name) => performance.getEntriesByName(name).length > 0", arg=name)


def wait_for_browser_runtime(page):
    """The demo enables Predict as soon as the manifest is read (it hedges with the server while the runtime
    loads): a test that wants the browser's own answer waits for the runtime too."""
    page.wait_for_selector("#predict:not([disabled])")
    wait_for_mark(page, "edgeport:runtime-ready")


class ServerProcess:
    """`edgeport serve` as a real process on a free loopback port."""

    def __init__(self, path, *args, log_dir=None):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).with_name("edgeport")
        self.log = open(Path(log_dir or Path(path).parent) / f"serve-{self.port}.log", "w+")
        args = tuple(map(str, args))
        if "--drain-seconds" not in args:  # stopping a test server needn't wait for a load balancer
            args += ("--drain-seconds", "0")
        self.proc = subprocess.Popen([str(script), "serve", str(path), "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout=60):
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
        self.log.close()


@dataclass(frozen=True)
class QuickstartRun:
    root: Path
    cli: Any  # the CliRunner result of `edgeport quickstart`
    returned: Any  # what the command's run_quickstart returned, or None if it never returned


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """`edgeport quickstart --no-serve -r python` run once per session: it trains and exports every example
    (~40 s). test_quickstart checks what the command did; example_bundles hands the same run's result to the
    server, site and demo tests. The command's run_quickstart is wrapped only to keep what it returns."""
    from typer.testing import CliRunner

    import edgeport.quickstart as quickstart
    from cli import app

    root = tmp_path_factory.mktemp("examples")
    real, returned = quickstart.run_quickstart, []

    def keep(*args, **kwargs):
        returned.append(real(*args, **kwargs))
        return returned[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quickstart, "run_quickstart", keep)
        result = CliRunner().invoke(app, ["quickstart", "--out", str(root), "--no-serve", "--runtime", "python"])
    return QuickstartRun(root, result, returned[0] if returned else None)


@pytest.fixture(scope="session")
def example_bundles(quickstart_run):
    """The quickstart's example models, exported once per test session (python parity only)."""
    assert quickstart_run.returned is not None, quickstart_run.cli.output
    return quickstart_run.returned


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """zoo_export(name) -> (model, sample, ExportResult): each zoo model exported once per session (python
    parity), so test_zoo and the node and browser runs read the same bundles. Readers never modify them."""
    from edgeport.export import export_model
    from zoo import zoo

    root = tmp_path_factory.mktemp("zoo")
    done = {}

    def export(name):
        if name not in done:
            model, sample = zoo()[name]
            model_path, sample_path = save_model(model, root, name, sample)
            done[name] = (model, sample, export_model(model_path, root / f"{name}-bundle", sample=sample_path))
        return done[name]

    return export


# Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) each group runs on one worker, so its session-
# and module-scoped fixtures are built once. A file is a group, but the tests that share the example models
# (trained and exported once, ~40 s) are one group, and so are those that share the zoo's bundles. The slowest
# groups are handed out first, so the two workers finish together instead of one waiting on a late long group.
SLOW_GROUPS_FIRST = ("tests/test_keras.py", "tests/test_keras_inputs.py", "examples", "zoo", "tests/test_wheel.py",
                     "tests/test_interop_mlserver.py", "tests/test_examples.py", "tests/test_distributed.py",
                     "tests/test_user_code.py", "tests/test_torch.py", "tests/test_boosting.py", "tests/test_ray_serve.py")


def xdist_group_of(item) -> str:
    if "quickstart_run" in item.fixturenames:  # example_bundles too
        return "examples"
    if "zoo_export" in item.fixturenames:
        return "zoo"
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    # xdist's workers see --dist loadgroup as the `loadgroup` option (their own `dist` is "no")
    if not (config.getoption("loadgroup", default=False) or config.getoption("dist", default="no") == "loadgroup"):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
    rank = {group: i for i, group in enumerate(SLOW_GROUPS_FIRST)}
    items.sort(key=lambda item: rank.get(xdist_group_of(item), len(rank)))  # stable: file order otherwise
