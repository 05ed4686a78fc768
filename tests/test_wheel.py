"""The wheel a user installs: its contents, its core requirements, and every command run from a fresh venv.

Nothing here imports the checkout: the wheel is built from a copy of the sources, installed (not editable)
into a new virtualenv, and its `edgeport` script runs with the working directory in tmp_path.
"""
from __future__ import annotations

import email
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, free_port, need

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "exporter", "models", "web_demo")
SKIP = shutil.ignore_patterns("node_modules", "__pycache__", "*.egg-info", "build", "dist", "test")
EXPECTED = (
    "edgeport/cli.py", "edgeport/manifest.schema.json", "edgeport/runtimes/browser.py", "edgeport/examples/churn.py",
    "edgeport/web_demo/package.json", "edgeport/web_demo/package-lock.json", "edgeport/web_demo/client/edgeport.js",
    "edgeport/web_demo/client/edgeport.d.ts", "edgeport/web_demo/demo/index.html", "edgeport/web_demo/demo/app.js",
    "edgeport/web_demo/runner/run-bundle.mjs", "edgeport/web_demo/harness/index.html",
)
OPTIONAL = ("fastapi", "uvicorn", "playwright", "brotli")

TRAIN = """
import numpy as np, pandas as pd, skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(0)
X = pd.DataFrame(rng.normal(size=(120, 4)), columns=["a", "b", "c", "d"])
y = (X["a"] + 0.5 * X["b"] - X["c"] > 0).astype(int) + (X["d"] > 1).astype(int)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
sio.dump(model, "tiny.skops")
X.head(40).to_csv("tiny.csv", index=False)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once for this module."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so setuptools' build/ and egg-info never land in the shared checkout.

    The copy gets a node_modules of its own, to prove the package-data globs leave it out.
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name, **({"ignore": SKIP} if (REPO / name).is_dir() else {}))
    sentinel = src / "web_demo" / "node_modules" / "onnxruntime-web"
    sentinel.mkdir(parents=True)
    (sentinel / "package.json").write_text("{}")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)], tmp_path, timeout=300)
    wheels = list((tmp_path / "dist").glob("edgeport-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def run(args, cwd: Path, *, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def clean_env(venv: Path) -> dict:
    """The environment of a user who activated the venv: no checkout on sys.path, no redirected web_demo."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EDGEPORT_WEB_DEMO")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_contents_and_core_requirements(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = [line.split(",")[0] for line in zf.read(f"{dist_info}/RECORD").decode().splitlines() if line]
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()

    assert {n.split("/")[0] for n in record} == {"edgeport", dist_info}, sorted({n.split("/")[0] for n in record})
    assert not [n for n in names if "node_modules" in n]
    assert not [n for n in names if "/test/" in n or n.endswith(".pyc")]
    assert [n for n in EXPECTED if n not in names] == []
    assert "edgeport = edgeport.cli:app" in entry_points

    requires = metadata.get_all("Requires-Dist") or []
    core = [r for r in requires if "extra ==" not in r]
    assert core, requires
    assert not [r for r in core for name in OPTIONAL if r.lower().startswith(name)], core
    for extra, needs in {"serve": ("fastapi", "uvicorn"), "browser": ("playwright", "brotli")}.items():
        listed = [r for r in requires if f'extra == "{extra}"' in r]
        assert all(any(r.startswith(n) for r in listed) for n in needs), (extra, listed)
    # TF 2.19 and tensorflow-decision-forests 1.12 (which tensorflowjs 4.22 needs) have cp311/cp312 wheels only
    tensorflow = [r for r in requires if 'extra == "tensorflow"' in r]
    assert tensorflow and all('python_version < "3.13"' in r for r in tensorflow), tensorflow


@pytest.mark.timeout(900)  # a cold pip or npm cache downloads everything once
def test_wheel_in_a_fresh_venv_runs_every_command(wheel, tmp_path):
    """Install `edgeport[serve,browser]` (not editable) into a new venv and drive the installed script:
    install-js, export, check in python/node/browser, demo, and serve answering one OIP infer.

    Cost, measured on the shared 2-core machine with warm pip and npm caches: 97 s for this file at a load
    average of 3 (4 s to build the wheel; 42 s for pip to resolve and unpack the wheel and ~60 dependencies,
    --no-compile already; 25 s for npm ci, overlapped with training and export; 18 s for check and demo;
    7 s for serve), and about 190 s at a load average of 6. The full install stays: reusing a venv between
    runs, or installing --no-deps over the dev venv's packages, would stop proving that the wheel's
    Requires-Dist is complete, which is what this test is for. A cold cache downloads everything once (hence
    the long timeout).
    """
    need(shutil.which("node") is not None and shutil.which("npm") is not None, "node and npm are not on PATH")
    need(shutil.which("chromium") is not None or bool(os.environ.get("EDGEPORT_CHROMIUM")), "chromium is not on PATH")
    timings = {}
    venv = tmp_path / "venv"
    started = time.monotonic()
    run([sys.executable, "-m", "venv", venv], tmp_path)
    env = clean_env(venv)
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile", f"{wheel}[serve,browser]"],
        tmp_path, timeout=900, env=env)
    timings["pip install"] = time.monotonic() - started
    print(f"\nwheel test: pip install took {timings['pip install']:.0f}s", file=sys.stderr)
    edgeport = venv / "bin" / "edgeport"

    def cli(*args, timeout=300):
        return run([edgeport, *args], tmp_path, timeout=timeout, env=env)

    # the installed package is the one that runs, not the checkout
    where = run([venv / "bin" / "python", "-c", "import edgeport, sys; print(edgeport.__file__)"], tmp_path, env=env)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout, where.stdout

    # npm ci is mostly disk and network: it runs while the model is trained and exported, which need no JS
    started = time.monotonic()
    npm = subprocess.Popen([str(edgeport), "install-js"], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run([venv / "bin" / "python", "-c", TRAIN], tmp_path, env=env)
        exported = cli("export", "tiny.skops", "--sample", "tiny.csv", "--out", "bundle")
        assert "PASSED" in exported.stdout, exported.stdout
        out, err = npm.communicate(timeout=900)
    finally:
        if npm.poll() is None:
            npm.kill()
    timings["install-js, export"] = time.monotonic() - started
    print(f"wheel test: install-js beside training and export took {timings['install-js, export']:.0f}s", file=sys.stderr)
    assert npm.returncode == 0, f"edgeport install-js exited {npm.returncode}\n{out}\n{err}"
    assert str(venv) in out and "node_modules" in out, out + err

    started = time.monotonic()
    checked = cli("check", "bundle", "-r", "python", "-r", "node", "-r", "browser")
    assert all(r in checked.stdout for r in ("python", "node", "browser")), checked.stdout
    cli("demo", "bundle", "--out", "site")
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "site.json").is_file()
    timings["check, demo"] = time.monotonic() - started
    print(f"wheel test: check and demo took {timings['check, demo']:.0f}s", file=sys.stderr)

    started = time.monotonic()
    serve_and_infer(edgeport, tmp_path, env)
    timings["serve"] = time.monotonic() - started
    print("wheel test timings:", {k: f"{v:.0f}s" for k, v in timings.items()}, file=sys.stderr)
    shutil.rmtree(venv)  # ~1 GB with node_modules; pytest keeps three runs' tmp dirs, and a passing one needs none of it


def serve_and_infer(edgeport: Path, tmp_path: Path, env: dict) -> None:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([str(edgeport), "serve", "bundle", "--port", str(port), "--drain-seconds", "0"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.flush()
        return (tmp_path / "serve.log").read_text()

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{output()}"
            assert time.monotonic() < deadline, f"serve not ready after 60s:\n{output()}"
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
        (spec,) = manifest["inputs"]
        row = (tmp_path / "tiny.csv").read_text().splitlines()[1].split(",")
        body = {"inputs": [{"name": spec["name"], "shape": [1, len(row)], "datatype": "FP64",
                            "data": [float(v) for v in row]}]}
        response = httpx.post(f"{url}/v2/models/{manifest['name']}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert {o["name"] for o in response.json()["outputs"]} >= {"label", "probabilities"}, response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log.close()
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is the clean exit
    assert code in (0, -signal.SIGTERM), f"serve exited {code} on SIGTERM:\n{(tmp_path / 'serve.log').read_text()}"
