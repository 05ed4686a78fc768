"""MLflow's Model Registry as edgeport's registry, against a local SQLite store: publish, promote, roll back,
list, refusals, and the downloaded copy the server serves from."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import need, rehash_bundle
from edgeport.bundle import read_bundle
from edgeport.cli import app
from edgeport.errors import RuntimeUnavailableError
from edgeport.model_registry import RegistryError, open_registry

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
# MLflow 3.17's SQL store uses an SQLAlchemy loader that 2.1 deprecates; nothing edgeport can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A SQLite store with MLflow's tables (creating them takes seconds; copying the file, none)."""
    need(HAVE_MLFLOW, "the mlflow extra is not installed (pip install -e '.[mlflow]')")
    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    open_registry(f"mlflow:sqlite:///{database}").names()
    return database


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """`mlflow:sqlite:///…` for a fresh store in tmp_path; its artifacts and edgeport's cache stay there too."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no network in tests
    monkeypatch.setenv("EDGEPORT_CACHE", str(tmp_path / "cache"))
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def artifacts_of(registry, version: str) -> Path:
    """Where MLflow keeps a version's files (a local directory for a SQLite store)."""
    mv = registry._version("iris", version)
    return Path(mv.source.removeprefix("file://"))


def test_publish_promote_rollback_and_the_versions_table(two_versions, store, tmp_path):
    for version in ("1", "2"):
        result = cli("publish", two_versions[version].path, "--registry", store)
        assert result.exit_code == 0, result.output
        assert f"published iris version {version} (parity passed)" in result.output
    assert (tmp_path / "mlartifacts").is_dir(), "artifacts go beside the SQLite database"
    result = cli("promote", "iris", "1", "--registry", store)
    assert result.exit_code == 0 and "iris@production: (unset) -> 1" in result.output, result.output
    result = cli("promote", "iris", "2", "--registry", store)
    assert result.exit_code == 0 and "iris@production: 1 -> 2" in result.output, result.output
    registry = open_registry(store)
    assert registry.resolve("iris") == "2" and registry.resolve("iris", "staging") is None
    assert registry.resolve("nope") is None
    assert registry.names() == ["iris"]
    result = cli("rollback", "iris", "--registry", store)
    assert result.exit_code == 0 and "iris@production: 2 -> 1" in result.output, result.output
    assert registry.resolve("iris") == "1"
    mlflow_model = registry.client.get_registered_model("iris")
    assert mlflow_model.aliases == {"production": int(registry._version("iris", "1").version)}, "a real MLflow alias"
    table = cli("versions", "iris", "--registry", store).output.splitlines()
    assert table[0].split()[:3] == ["version", "aliases", "parity"]
    assert [line.split()[:3] for line in table[1:]] == [["1", "production", "passed"], ["2", "-", "passed"]]
    events = json.loads(mlflow_model.tags["edgeport.aliases"])["events"]
    assert [(e["action"], e["from"], e["to"]) for e in events] == [("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    result = cli("rollback", "iris", "--registry", store)
    assert result.exit_code == 1 and "no earlier version" in result.output


def test_a_move_made_in_mlflow_itself_is_rolled_back_from(two_versions, store):
    registry = open_registry(store)
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    registry.promote("iris", "1")
    registry.client.set_registered_model_alias("iris", "production", registry._version("iris", "2").version)  # MLflow's UI
    assert registry.resolve("iris") == "2"
    move = registry.rollback("iris")
    assert (move.previous, move.version) == ("2", "1")


def _promote_many(uri: str, versions: list[str]) -> None:
    registry = open_registry(uri)
    for version in versions:
        registry.promote("iris", version)


def test_concurrent_promotes_on_a_sqlite_store_lose_no_update(two_versions, store):
    """Two processes promote 8 times each: the lock beside the database keeps every promote in the history tag."""
    registry = open_registry(store)
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_promote_many, args=(store, [v] * 8)) for v in ("1", "2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    document = json.loads(registry.client.get_registered_model("iris").tags["edgeport.aliases"])
    assert len(document["events"]) == 16, "an alias update was lost"
    assert registry.resolve("iris") == document["history"]["production"][-1]


def test_a_published_version_never_changes(two_versions, store, tmp_path):
    registry = open_registry(store)
    registry.publish(two_versions["1"].path)
    messages = []
    registry.publish(two_versions["1"].path, progress=messages.append)  # the same files again: nothing to do
    assert "already in MLflow" in messages[0] and "with the same files" in messages[0]
    assert len(registry.client.search_model_versions("name = 'iris'")) == 1
    other = shutil.copytree(two_versions["2"].path, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = "1"  # version 2's files under version 1's number
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="already in MLflow .* with different files"):
        registry.publish(other)
    assert len(registry.client.search_model_versions("name = 'iris'")) == 1


def test_bundle_dir_is_a_checked_local_copy(two_versions, store, tmp_path):
    registry = open_registry(store)
    registry.publish(two_versions["1"].path)
    path = registry.bundle_dir("iris", "1")
    assert path.is_relative_to(tmp_path / "cache" / "mlflow") and path.parts[-2:] == ("iris", "1")
    assert read_bundle(path).manifest.version == "1"  # every hash checked
    assert (path / "model.onnx").read_bytes() == (two_versions["1"].path / "model.onnx").read_bytes()
    assert not (path / "model.onnx").stat().st_mode & 0o222, "the cached copy is read-only"
    inode = path.stat().st_ino
    assert registry.bundle_dir("iris", "1").stat().st_ino == inode, "downloaded once"
    assert [p.name for p in path.parent.iterdir()] == ["1"], "no download directories left behind"
    with pytest.raises(RegistryError, match="no version '7'.*it has 1"):
        registry.bundle_dir("iris", "7")


@pytest.mark.parametrize("damage", ["truncated", "rehashed"])
def test_a_damaged_version_is_not_promoted_without_force(two_versions, store, damage):
    registry = open_registry(store)
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    registry.promote("iris", "1")
    files = artifacts_of(registry, "2")
    model = files / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    if damage == "rehashed":  # consistent again, but not the files that were published
        rehash_bundle(files)
    result = cli("promote", "iris", "2", "--registry", store)
    assert result.exit_code == 1 and "can't be promoted" in result.output and "--force" in result.output, result.output
    assert "Traceback" not in result.output
    assert registry.resolve("iris") == "1"
    assert registry.versions("iris")[1].problem
    with pytest.raises(RegistryError, match="fails its check"):
        registry.bundle_dir("iris", "2")
    result = cli("promote", "iris", "2", "--force", "--registry", store)
    assert result.exit_code == 0, result.output
    assert registry.resolve("iris") == "2"
    assert read_bundle(registry.bundle_dir("iris", "1")).manifest.version == "1", "the others still serve"


def test_an_unknown_model_or_a_reserved_alias_is_one_paragraph(two_versions, store):
    open_registry(store).publish(two_versions["1"].path)
    for args, fault in ((("versions", "nope"), "no model 'nope'"), (("promote", "iris", "9"), "no version '9'"),
                        (("promote", "iris", "1", "--alias", "latest"), "latest")):
        result = cli(*args, "--registry", store)
        assert result.exit_code == 1 and fault in result.output and "Traceback" not in result.output, result.output


def test_without_mlflow_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"mlflow extra .*\[mlflow\]"):
        open_registry(f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}").names()


def test_the_cli_loads_mlflow_only_when_asked(store):
    code = ("import sys; from typer.testing import CliRunner; from edgeport.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    script = Path(sys.executable).with_name("edgeport")
    result = subprocess.run([str(script), "versions", "iris", "--registry", store], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no model 'iris' in the MLflow registry" in result.stdout + result.stderr


def test_edgeport_serve_follows_mlflow_aliases(two_versions, store, tmp_path):
    """A real `edgeport serve mlflow:…` process: NAME answers with the alias's version, and follows a promote."""
    import time

    import httpx

    from conftest import ServerProcess

    registry = open_registry(store)
    for version in ("1", "2"):
        registry.publish(two_versions[version].path)
    registry.promote("iris", "1")
    row = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 2.9, 5.6, 1.8]}]}
    server = ServerProcess(store, log_dir=tmp_path)
    try:
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=row).json()["model_version"] == "1"
        assert httpx.get(f"{server.url}/bundles/iris/_aliases.json").json()["aliases"] == {"production": "1"}
        registry.promote("iris", "2")
        deadline = time.monotonic() + 5
        while httpx.post(f"{server.url}/v2/models/iris/infer", json=row).json()["model_version"] != "2":
            assert time.monotonic() < deadline, "the server never followed the promote"
            time.sleep(0.1)
        assert httpx.post(f"{server.url}/v2/models/iris/versions/1/infer", json=row).json()["model_version"] == "1"
    finally:
        server.stop()
