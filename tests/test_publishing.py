"""Publishing bundles and sites: atomic, never over the user's own files, readable by a web server, and
only verified bundles reach users."""
from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from cli import app
from conftest import REPO, rehash_bundle

runner = CliRunner()
DEAD_PID = 9_999_999  # above Linux's largest pid_max (4,194,304): never a running process


def _export(model_path, sample_path, out, *extra):
    return runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(out), *extra])


# a child process that exports, and dies (as with SIGKILL: no cleanup) the moment a rename leaves no bundle at --out
KILL_WHEN_GONE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    out = Path({out!r})
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if not (out / "manifest.json").is_file():
            os._exit(137)

    os.replace = replace
    if {no_exchange!r}:
        import edgeport.publish as publish
        publish._exchange = lambda a, b: False  # a platform without renameat2(RENAME_EXCHANGE)
    from edgeport.export import export_model
    export_model({model!r}, out, sample={sample!r}, name="iris", version="2", force=True)
""")


def _reexport_and_die(iris_model, out, no_exchange: bool) -> int:
    _, model_path, sample_path = iris_model
    code = KILL_WHEN_GONE.format(repo=str(REPO), out=str(out), model=str(model_path), sample=str(sample_path),
                                 no_exchange=no_exchange)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode


def test_a_reexport_never_leaves_the_bundle_missing(iris_bundle, iris_model):
    from edgeport.bundle import read_bundle

    assert _reexport_and_die(iris_model, iris_bundle.path, no_exchange=False) == 0, "the bundle went missing mid-publish"
    assert read_bundle(iris_bundle.path).version == "2"
    assert not [p for p in iris_bundle.path.parent.iterdir() if p.name.startswith(".")], "staging left behind"


def test_without_an_atomic_exchange_a_kill_mid_publish_is_undone_by_the_next_run(iris_bundle, iris_model):
    from edgeport.bundle import read_bundle
    from edgeport.publish import clean_stale

    assert _reexport_and_die(iris_model, iris_bundle.path, no_exchange=True) == 137  # died between the two renames
    assert not iris_bundle.path.exists()
    clean_stale(iris_bundle.path)  # what the next export or site build does first
    assert read_bundle(iris_bundle.path).version == "1"


def test_staging_directories_are_never_served_and_stale_ones_are_cleaned(iris_bundle, iris_model):
    import shutil

    from edgeport.server.repository import Repository

    stale = iris_bundle.path.with_name(f".bundle.staging-{DEAD_PID}-abc123")
    shutil.copytree(iris_bundle.path, stale)  # a killed export's leftovers: the same name and version
    repository = Repository(iris_bundle.path.parent)
    assert [m.bundle.path for m in repository.all()] == [iris_bundle.path]

    _, model_path, sample_path = iris_model
    assert _export(model_path, sample_path, iris_bundle.path, "--force").exit_code == 0
    assert not stale.exists(), "the next export removes a dead process's staging directory"


def test_force_replaces_only_what_edgeport_wrote(iris_bundle, iris_model, tmp_path):
    _, model_path, sample_path = iris_model
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    result = _export(model_path, sample_path, mine, "--force")
    assert result.exit_code == 1 and "notes.txt" in result.output and "did not write" in result.output, result.output
    assert (mine / "notes.txt").read_text() == "precious"

    (iris_bundle.path / "README.md").write_text("my notes about this bundle")  # a file the manifest doesn't list
    result = _export(model_path, sample_path, iris_bundle.path, "--force")
    assert result.exit_code == 1 and "README.md" in result.output, result.output
    assert (iris_bundle.path / "README.md").is_file()

    (iris_bundle.path / "README.md").unlink()
    assert _export(model_path, sample_path, iris_bundle.path, "--force").exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(model_path, sample_path, empty).exit_code == 0


def test_demo_force_does_not_delete_a_folder_of_other_files(iris_bundle, tmp_path):
    site = tmp_path / "public"
    site.mkdir()
    (site / "index.html").write_text("<h1>my own site</h1>")
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(site), "--force"])
    assert result.exit_code == 1 and "index.html" in result.output, result.output
    assert (site / "index.html").read_text() == "<h1>my own site</h1>"


def test_bundles_and_sites_respect_the_umask(iris_model, tmp_path):
    from edgeport.export import export_model
    from edgeport.site import build_site

    _, model_path, sample_path = iris_model
    previous = os.umask(0o022)
    try:
        bundle = export_model(model_path, tmp_path / "bundle", sample=sample_path).bundle
        site = build_site([bundle.path], tmp_path / "site").path
    finally:
        os.umask(previous)
    for root in (bundle.path, site):
        assert stat.S_IMODE(root.stat().st_mode) == 0o755, root
        for path in root.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.parametrize("field,value", [
    ("server_model_file", "../weak.onnx"),
    ("server_model_file", "/tmp/weak.onnx"),
    ("model_file", "sub/../../weak.onnx"),
    ("server_model_file", "unlisted.onnx"),
])
def test_manifest_paths_stay_inside_the_bundle_and_are_hashed(iris_bundle, field, value):
    from edgeport.bundle import read_bundle
    from edgeport.errors import BundleError
    from edgeport.server.repository import Repository

    weak = iris_bundle.path.parent / "weak.onnx"
    weak.write_bytes((iris_bundle.path / "model.onnx").read_bytes())
    (iris_bundle.path / "unlisted.onnx").write_bytes(weak.read_bytes())
    manifest_path = iris_bundle.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[field] = value
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "unlisted.onnx"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=field):
        read_bundle(iris_bundle.path)
    with pytest.raises(BundleError, match=field):
        Repository(iris_bundle.path)
    result = runner.invoke(app, ["check", str(iris_bundle.path)])
    assert result.exit_code == 1 and field in result.output, result.output
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(iris_bundle.path.parent / "site")])
    assert result.exit_code == 1 and field in result.output, result.output


@pytest.mark.parametrize("parity", [{"passed": False}, {"passed": False, "pending": True}])
def test_bundles_that_did_not_pass_parity_are_refused_unless_allowed(iris_bundle, tmp_path, parity):
    from edgeport.errors import BundleError
    from edgeport.server.repository import Repository
    from edgeport.site import build_site

    manifest = json.loads((iris_bundle.path / "manifest.json").read_text())
    (iris_bundle.path / "manifest.json").write_text(json.dumps({**manifest, "parity": parity}))
    rehash_bundle(iris_bundle.path)
    with pytest.raises(BundleError, match="--allow-unverified"):
        Repository(iris_bundle.path)
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(tmp_path / "site")])
    assert result.exit_code == 1 and "parity" in result.output and "--allow-unverified" in result.output
    assert Repository(iris_bundle.path, allow_unverified=True).get("iris") is not None
    assert build_site([iris_bundle.path], tmp_path / "site2", allow_unverified=True).models == ("iris",)


def test_a_report_on_a_full_disk_leaves_the_old_report_whole(iris_bundle, tmp_path):
    report = tmp_path / "reports" / "report.json"
    report.parent.mkdir()
    report.write_text('{"old": true}\n')

    def small_files_only():  # the disk "fills" after 64 bytes: writes past that fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    script = REPO / ".venv" / "bin" / "edgeport"
    result = subprocess.run([str(script), "check", str(iris_bundle.path), "--report", str(report)],
                            preexec_fn=small_files_only, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
    assert report.read_text() == '{"old": true}\n'
    assert [p.name for p in report.parent.iterdir()] == ["report.json"], "a temporary file was left behind"
