"""Server fallback throughput and latency under concurrency, with wrk as the load generator.

Side by side in one run, on the same single-row iris infer request:
  edgeport serve         onnxruntime behind the OIP v2 endpoint (validation, metrics, limits)
  naive FastAPI+joblib   the baseline: sklearn predict per request, no checks
  MLServer 1.7.1         with its sklearn runtime, in a venv of its own (skipped, with the reason, if it can't install)
Each server runs as its own process with one worker; wrk runs 2 threads and 16 connections for 10 s.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, save, table

DURATION_S = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 16
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
ROW = [5.1, 3.5, 1.4, 0.2]
HOSTILE_CLIENTS = 2
ATTACK_ROUNDS = 2
HOSTILE_DEPTH = 8


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not ready: {url}")


def wrk(url: str, body: dict, threads: int = 2, connections: int = CONNECTIONS) -> dict:
    """POST `body` to `url` from `connections` connections for DURATION_S; throughput, latency, errors."""
    with wrk_running(url, json.dumps(body), threads, connections) as proc:
        return wrk_result(proc.communicate()[0])


@contextlib.contextmanager
def wrk_running(url: str, body: str, threads: int, connections: int, seconds: int = DURATION_S):
    """wrk in the background, POSTing `body` (ASCII JSON without backslashes: a valid Lua string as is)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                             script.name, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.unlink(script.name)


def wrk_result(out: str) -> dict:
    if "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {out[-300:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), children included where the server forks workers."""
    import glob

    total = 0.0
    for status in [f"/proc/{pid}/status", *glob.glob(f"/proc/{pid}/task/*/children")]:
        if status.endswith("children"):
            for child in open(status).read().split():
                total += _vm_hwm(f"/proc/{child}/status")
        else:
            total += _vm_hwm(status)
    return total


def _vm_hwm(path: str) -> float:
    try:
        for line in open(path):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def load_test(cmd: list[str], ready_url: str, infer_url: str, body: dict, env: dict | None = None) -> dict:
    """Start a server, check it answers the request, load it with wrk, read its peak memory, stop it."""
    proc = run_server(cmd, ready_url, env=env)
    try:
        probe = httpx.post(infer_url, json=body, timeout=10)
        if probe.status_code != 200:
            return {"skipped": f"answered {probe.status_code}: {probe.text[:120]}"}
        return {**wrk(infer_url, body), "peak_rss_mb": peak_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait()


def run_server(cmd: list[str], ready_url: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd)
    wait_ready(ready_url, proc)
    return proc


def mlserver_python() -> tuple[str | None, str]:
    """MLServer's own venv: uvloop 0.21 because 0.23 crashes its inference worker (see DESIGN.md)."""
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / ".installed").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "mlserver==1.7.1", "mlserver-sklearn==1.7.1",
                            "uvloop==0.21.0"], check=True, capture_output=True, text=True, timeout=900)
            (MLSERVER_VENV / ".installed").touch()
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            return None, f"MLServer did not install: {detail.strip().splitlines()[-1][:160] if detail.strip() else exc}"
    return str(python), ""


def main() -> str:
    import joblib

    from edgeport.quickstart import run_quickstart
    from edgeport.examples.iris import train

    if not shutil.which("wrk"):
        return "\n## server fallback\nskipped: wrk is not installed (apt-get install -y wrk; make bench does this as root)"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        quick = run_quickstart(tmp / "q", runtimes=("python",))
        model = train().model
        joblib.dump(model, tmp / "iris.joblib")
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}

        port = free_port()
        results["edgeport serve (onnxruntime)"] = load_test(
            [str(Path(sys.executable).with_name("edgeport")), "serve", str(quick.bundles_dir), "--port", str(port)],
            f"http://127.0.0.1:{port}/v2/health/ready", f"http://127.0.0.1:{port}/v2/models/iris/infer", body)
        port = free_port()
        results["naive FastAPI + joblib (sklearn)"] = load_test(
            [sys.executable, "-m", "uvicorn", "naive_app:app", "--port", str(port), "--log-level", "warning",
             "--app-dir", str(ROOT / "bench" / "baselines")],
            f"http://127.0.0.1:{port}/docs", f"http://127.0.0.1:{port}/v2/models/iris/infer", body,
            env={"NAIVE_MODEL": str(tmp / "iris.joblib")})

        attack = under_attack(quick.bundles_dir, body)
        python, why = mlserver_python()
        if python:
            results["MLServer 1.7.1 (sklearn runtime)"] = _mlserver(python, tmp, body)
        else:
            results["MLServer 1.7.1 (sklearn runtime)"] = {"skipped": why}
    save("server", {**results, "under attack": attack})
    base = results["edgeport serve (onnxruntime)"].get("rps", float("nan"))
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "-", "-", "-", "-", "-", r["skipped"]])
        else:
            rows.append([name, r["rps"], r["p50_ms"], r["p99_ms"], f"{r['rps'] / base:.2f}x", f"{r['peak_rss_mb']:.0f}",
                         f"{r['errors']} non-2xx"])
    return table(f"server fallback: single-row infer, wrk 2 threads x {CONNECTIONS} connections x {DURATION_S}s, one worker each",
                 ["server", "req/s", "p50 ms", "p99 ms", "vs edgeport", "peak RSS MB", "notes"], rows) + "\n" + attack_table(attack)


def hostile_body(megabytes: int = 2) -> str:
    """Finding 10's attack: an iris request whose data is ~2 MB of deeply nested lists."""
    block = "[" * HOSTILE_DEPTH + ",".join(["1.0"] * 4) + "]" * HOSTILE_DEPTH
    data = ",".join([block] * (megabytes * 1_000_000 // (len(block) + 1)))
    return '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[' + data + "]}]}"


def under_attack(bundles_dir: Path, body: dict) -> dict:
    """Good single-row traffic on edgeport alone, then while two clients send hostile bodies without pause;
    ATTACK_ROUNDS times, interleaved, since on a small shared machine the load drifts between runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
    proc = run_server([str(Path(sys.executable).with_name("edgeport")), "serve", str(bundles_dir), "--port", str(port)],
                      f"http://127.0.0.1:{port}/v2/health/ready")
    rounds = []
    try:
        for _ in range(ATTACK_ROUNDS):
            alone = wrk(url, body)
            # the attackers start first and stop last, so that every second of the good run is under attack
            with wrk_running(url, hostile_body(), threads=1, connections=HOSTILE_CLIENTS, seconds=DURATION_S + 2) as attackers:
                time.sleep(0.5)
                attacked = wrk(url, body)
                hostile = wrk_result(attackers.communicate()[0])
            rounds.append({"alone": alone, "attacked": attacked, "hostile": hostile})
        return {"rounds": rounds}
    finally:
        proc.terminate()
        proc.wait()


def attack_table(attack: dict) -> str:
    rounds = attack["rounds"]

    def mean(phase: str, key: str) -> float:
        return sum(r[phase][key] for r in rounds) / len(rounds)

    ratios = ", ".join(f"{r['attacked']['rps'] / r['alone']['rps']:.2f}x" for r in rounds)
    hostile = (f"{mean('hostile', 'rps'):.0f} req/s, {sum(r['hostile']['errors'] for r in rounds)} non-2xx, "
               f"{sum(r['hostile']['socket_errors'] for r in rounds)} socket errors")
    rows = [["good traffic alone", mean("alone", "rps"), mean("alone", "p50_ms"), mean("alone", "p99_ms"), "1.00x", "-"],
            [f"with {HOSTILE_CLIENTS} hostile senders", mean("attacked", "rps"), mean("attacked", "p50_ms"),
             mean("attacked", "p99_ms"), f"{mean('attacked', 'rps') / mean('alone', 'rps'):.2f}x (rounds: {ratios})",
             hostile]]
    return table(f"edgeport under hostile traffic: single-row infer (wrk 2 x {CONNECTIONS} x {DURATION_S}s, mean of "
                 f"{len(rounds)} interleaved rounds) while {HOSTILE_CLIENTS} clients POST ~2 MB bodies of lists nested "
                 f"{HOSTILE_DEPTH} deep", ["good traffic", "req/s", "p50 ms", "p99 ms", "vs alone", "hostile senders"], rows)


def _mlserver(python: str, tmp: Path, body: dict) -> dict:
    import joblib

    model_dir = tmp / "mlserver" / "iris"
    model_dir.mkdir(parents=True)
    joblib.dump(joblib.load(tmp / "iris.joblib"), model_dir / "model.joblib")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (tmp / "mlserver" / "settings.json").write_text(json.dumps(
        {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "parallel_workers": 0}))
    # predict_proba, as edgeport returns probabilities; MLServer's default is predict only
    (model_dir / "model-settings.json").write_text(json.dumps(
        {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
         "parameters": {"uri": "./model.joblib", "extra": {"predict_fn": "predict_proba"}}}))
    mlserver = str(Path(python).with_name("mlserver"))
    # MLServer's sklearn runtime takes a plain numeric tensor; names don't matter to it
    return load_test([mlserver, "start", str(tmp / "mlserver")], f"http://127.0.0.1:{http_port}/v2/models/iris/ready",
                     f"http://127.0.0.1:{http_port}/v2/models/iris/infer", body)

if __name__ == "__main__":
    print(main())
