"""The file-system model registry: publish, promote, roll back, list; refusals; concurrent CLI calls."""
from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.model_registry import ALIASES, FileRegistry, RegistryError, open_registry


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def copy_bundle(bundle, target):
    shutil.copytree(bundle.path, target)
    return target


def test_publish_promote_rollback_and_the_versions_table(two_versions, tmp_path):
    registry = tmp_path / "registry"
    for version in ("1", "2"):
        result = cli("publish", two_versions[version].path, "--registry", registry)
        assert result.exit_code == 0, result.output
    assert (registry / "registry.json").is_file() and (registry / "iris" / "2" / "model.onnx").is_file()
    assert cli("promote", "iris", "1", "--registry", registry).exit_code == 0
    result = cli("promote", "iris", "2", "--registry", registry)
    assert "iris@production: 1 -> 2" in result.output
    reg = FileRegistry(registry)
    assert reg.resolve("iris") == "2"
    result = cli("rollback", "iris", "--registry", registry)
    assert result.exit_code == 0 and "iris@production: 2 -> 1" in result.output
    assert reg.resolve("iris") == "1"
    table = cli("versions", "iris", "--registry", registry).output.splitlines()
    assert table[0].split()[:3] == ["version", "aliases", "parity"]
    assert [line.split()[:3] for line in table[1:]] == [["1", "production", "passed"], ["2", "-", "passed"]]
    events = json.loads((registry / "iris" / ALIASES).read_text())["events"]
    assert [(e["action"], e["from"], e["to"]) for e in events] == [("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    result = cli("rollback", "iris", "--registry", registry)
    assert result.exit_code == 1 and "no earlier version" in result.output


def test_a_published_version_never_changes(two_versions, tmp_path):
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["1"].path)  # the same files again: nothing to do
    other = copy_bundle(two_versions["2"], tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = "1"  # version 2's files under version 1's number
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="already in the registry with different files"):
        registry.publish(other)
    published = registry.bundle_dir("iris", "1")
    assert (published / "model.onnx").read_bytes() == (two_versions["1"].path / "model.onnx").read_bytes()
    assert not (published / "model.onnx").stat().st_mode & 0o222, "published files are read-only"


def test_a_corrupt_bundle_is_not_published(two_versions, tmp_path):
    bad = copy_bundle(two_versions["1"], tmp_path / "bad")
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:100])
    result = cli("publish", bad, "--registry", tmp_path / "registry")
    assert result.exit_code == 1 and "model.onnx" in result.output
    assert not (tmp_path / "registry" / "iris" / "1").exists()


@pytest.mark.parametrize("damage", ["truncated", "bad hash", "failed parity"])
def test_a_damaged_version_is_not_promoted_without_force(two_versions, tmp_path, damage):
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    registry.promote("iris", "1")
    version_dir = registry.bundle_dir("iris", "2")
    version_dir.chmod(0o755)
    for path in version_dir.iterdir():
        path.chmod(0o644)
    if damage == "truncated":
        model = version_dir / "model.onnx"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "bad hash":
        manifest = json.loads((version_dir / "manifest.json").read_text())
        manifest["files"][0]["sha256"] = "0" * 64
        (version_dir / "manifest.json").write_text(json.dumps(manifest))
    else:
        manifest = json.loads((version_dir / "manifest.json").read_text())
        manifest["parity"]["passed"] = False
        (version_dir / "manifest.json").write_text(json.dumps(manifest))
    result = cli("promote", "iris", "2", "--registry", registry.root)
    assert result.exit_code == 1 and "can't be promoted" in result.output and "--force" in result.output
    assert registry.resolve("iris") == "1"
    assert registry.versions("iris")[1].problem
    result = cli("promote", "iris", "2", "--force", "--registry", registry.root)
    assert result.exit_code == 0, result.output
    assert registry.resolve("iris") == "2"


@pytest.mark.parametrize("args, fault", [
    (("promote", "../etc", "1"), "model name '../etc'"),
    (("promote", "iris", "1", "--alias", "a/b"), "alias 'a/b'"),
    (("promote", "iris", "9"), "no version '9'"),
    (("versions", "nope"), "no model 'nope'"),
])
def test_bad_names_are_refused_naming_them(two_versions, tmp_path, args, fault):
    FileRegistry(tmp_path / "registry").publish(two_versions["1"].path)
    result = cli(*args, "--registry", tmp_path / "registry")
    assert result.exit_code == 1 and fault in result.output, result.output
    assert "Traceback" not in result.output


def _promote_many(root: str, versions: list[str]) -> None:
    registry = FileRegistry(root)
    for version in versions:
        registry.promote("iris", version)


def test_concurrent_promotes_lose_no_update(two_versions, tmp_path):
    """Two processes promote 30 times each: with the lock, every promote is in the history and the file is whole."""
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_promote_many, args=(str(registry.root), [v] * 30)) for v in ("1", "2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    document = json.loads((registry.root / "iris" / ALIASES).read_text())
    assert len(document["events"]) == 60, "an alias update was lost"
    assert document["aliases"]["production"] == document["history"]["production"][-1]


def test_the_registry_location_comes_from_the_option_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPORT_REGISTRY", str(tmp_path / "from-env"))
    assert open_registry().root == tmp_path / "from-env"
    assert open_registry(tmp_path / "given").root == tmp_path / "given"
    monkeypatch.delenv("EDGEPORT_REGISTRY")
    assert str(open_registry().root) == "registry"


def test_a_version_the_server_could_not_serve_is_not_promoted(two_versions, tmp_path):
    """Its hashes are fine, but its golden rows aren't listed: the server's warm-up would fail, so promote refuses."""
    bundle = copy_bundle(two_versions["2"], tmp_path / "no-golden")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "golden.json"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "golden.json").unlink()
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(bundle)
    with pytest.raises(RegistryError, match="can't be promoted"):
        registry.promote("iris", "2")


def test_a_publish_killed_before_its_rename_leaves_nothing_visible_and_is_cleared(two_versions, tmp_path):
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(two_versions["1"].path)
    stale = tmp_path / "registry" / "iris" / ".2.staging-999999"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    assert registry.version_names("iris") == ["1"]
    registry.publish(two_versions["2"].path)
    assert registry.version_names("iris") == ["1", "2"] and not stale.exists()


def test_a_registry_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cli("versions", "iris", "--registry", tmp_path / "afile")
    assert result.exit_code == 1 and "is a file" in result.output
