"""`edgeport quickstart --no-serve`: the main job on the embedded default, stopping before it serves."""
import json

from typer.testing import CliRunner

from cli import app
from conftest import need
from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST


def test_quickstart_trains_exports_checks_and_builds_the_site(quickstart_run):
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    # the session's one run (conftest.quickstart_run): the example models the server and demo tests use
    result, out = quickstart_run.cli, quickstart_run.root
    assert result.exit_code == 0, result.output
    assert "all example models pass parity in every runtime" in result.output
    for name in ("iris", "breast-cancer-forest", "churn"):
        assert f"\n{name} " in result.output
        assert (out / "bundles" / name / "manifest.json").is_file()
        assert (out / "site" / "models" / name / "model.onnx").is_file()
        # the fallback server's path is in every example's gate: real OIP requests through its app
        report = json.loads((out / "bundles" / name / "parity.json").read_text())
        assert {r["runtime"]: r["status"] for r in report["runtimes"]}["server"] == "passed", report
    assert (out / "site" / "index.html").is_file()
    assert "serving" not in result.output


def test_a_taken_port_is_reported_before_any_work(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1 and "Pass --port" in result.output, result.output
    assert not (tmp_path / "bundles").exists()
