"""Missing extras and `edgeport install-js`: one-paragraph errors that name the command to run, never a traceback.

npm is replaced by a script on PATH, so these run in a second without the registry.
"""
from __future__ import annotations

import os
import sys

import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.errors import RuntimeUnavailableError
from edgeport.extras import require

runner = CliRunner()


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "serve", "x").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(RuntimeUnavailableError, match=r"edgeport serve needs the serve extra \(fastapi is not installed\)"):
        require("fastapi", "serve", "edgeport serve")


def test_serve_without_the_serve_extra(iris_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = runner.invoke(app, ["serve", str(iris_bundle.path), "--port", "1"])
    assert result.exit_code == 1, result.output
    assert "serve extra (uvicorn is not installed)" in result.output and "[serve]" in result.output, result.output
    assert "Traceback" not in result.output


def test_browser_runtime_without_the_browser_extra(iris_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "browser"])
    assert result.exit_code == 1, result.output
    assert "browser extra" in result.output and "[browser]" in result.output, result.output


def fake_npm(tmp_path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("npm", script), ("node", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_install_js_copies_web_demo_into_an_empty_dir_and_runs_npm_ci(tmp_path, monkeypatch):
    fake_npm(tmp_path, monkeypatch, 'test "$1" = ci || exit 9\nmkdir -p node_modules/onnxruntime-web/dist\n'
                                    'echo "added 2 packages in 1s"')
    target = tmp_path / "js"
    result = runner.invoke(app, ["install-js", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "package-lock.json").is_file() and (target / "client" / "edgeport.js").is_file()
    assert (target / "node_modules" / "onnxruntime-web" / "dist").is_dir()
    assert "npm: added 2 packages" in result.output and f"EDGEPORT_WEB_DEMO={target}" in result.output, result.output


def test_install_js_reports_npm_failing_with_its_last_lines(tmp_path, monkeypatch):
    fake_npm(tmp_path, monkeypatch, 'echo "npm ERR! code ENOTFOUND" >&2\nexit 1')
    result = runner.invoke(app, ["install-js", "--dir", str(tmp_path / "js")])
    assert result.exit_code == 1, result.output
    assert "npm ci failed" in result.output and "ENOTFOUND" in result.output and "Traceback" not in result.output


def test_install_js_without_node_or_npm(monkeypatch):
    monkeypatch.setattr("edgeport.webassets.shutil.which", lambda name: None)
    result = runner.invoke(app, ["install-js"])
    assert result.exit_code == 1, result.output
    assert "Node.js 20" in result.output and "npm" in result.output and "apt-get install" in result.output


def test_install_js_into_a_directory_it_cannot_write(tmp_path, monkeypatch):
    fake_npm(tmp_path, monkeypatch, "exit 0")
    real_access = os.access  # root can write anywhere: refuse the one directory npm would write in
    monkeypatch.setattr("edgeport.webassets.os.access", lambda path, mode: str(path) != str(tmp_path) and real_access(path, mode))
    result = runner.invoke(app, ["install-js", "--dir", str(tmp_path / "js")])
    assert result.exit_code == 1, result.output
    assert "not writable" in result.output and "EDGEPORT_WEB_DEMO" in result.output, result.output


def test_install_js_refuses_a_directory_of_other_files(tmp_path, monkeypatch):
    fake_npm(tmp_path, monkeypatch, "exit 0")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["install-js", "--dir", str(tmp_path / "js")])
    assert result.exit_code == 1, result.output
    assert "nor empty" in result.output and (tmp_path / "js" / "notes.txt").read_text() == "mine"
