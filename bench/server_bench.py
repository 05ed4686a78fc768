"""Server fallback: time to ready, throughput and latency under concurrency, with wrk as the load generator.

Side by side in one run, on the same iris model and the same single-row infer request:
  edgeport serve            onnxruntime behind the OIP v2 endpoint (validation, limits, metrics, demo site)
  bare FastAPI+onnxruntime  the reference: the same model.onnx in one session, no checks (baselines/bare_ort_app.py)
  naive FastAPI+joblib      sklearn predict per request, no checks (baselines/naive_app.py)
  MLServer 1.7.1            with its sklearn runtime, in a venv of its own (skipped, with the reason, if it can't install)
Each server runs as its own process with one worker; wrk runs 2 threads, 16 then 64 connections, BENCH_SECONDS
(default 10) each. Time to ready is from the process's start to its first 200 on its readiness URL, the median of
STARTS starts; edgeport's is with its site cache warm (its first, cold start is reported beside it). edgeport and
the bare app are loaded in ROUNDS interleaved rounds (the load on a small shared machine drifts), the median kept.
Servers may write bytecode caches (PYTHONDONTWRITEBYTECODE is cleared for them), as an installed package has them:
otherwise a checkout's edited modules are compiled again at every start, and time to ready measures that.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, save, table
from mlserver_env import MLSERVER, mlserver_command, mlserver_python  # tests/, on the path by common

DURATION_S = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 16
MORE_CONNECTIONS = 64
STARTS = 3
ROUNDS = 2
BARE = "bare FastAPI + onnxruntime"
EDGEPORT = "edgeport serve (onnxruntime)"
ROW = [5.1, 3.5, 1.4, 0.2]
HOSTILE_CLIENTS = 2
ATTACK_ROUNDS = 2
HOSTILE_DEPTH = 8


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
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


def run_server(cmd: list[str], ready_url: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd)
    wait_ready(ready_url, proc)
    return proc


class Server:
    """How to start one server on a port of its own, and where to ask it."""

    def __init__(self, name: str, cmd: list[str], ready_path: str, env: dict | None = None):
        self.name, self.cmd, self.ready_path = name, cmd, ready_path
        self.env = {"PYTHONDONTWRITEBYTECODE": "", **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/iris/infer"

    def start(self) -> float:
        """Start the server; the seconds from the process's start to its first 200 on its readiness URL."""
        started = time.perf_counter()
        self.proc = subprocess.Popen([c.replace("{port}", str(self.port)) for c in self.cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**os.environ, **self.env})
        wait_ready(f"http://127.0.0.1:{self.port}{self.ready_path}", self.proc)
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def main() -> str:
    import joblib

    from edgeport.quickstart import run_quickstart
    from edgeport.examples.iris import train

    if not shutil.which("wrk"):
        return "\n## server fallback\nskipped: wrk is not installed (apt-get install -y wrk; make bench does this as root)"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        quick = run_quickstart(tmp / "q", runtimes=("python",))
        model = train().model
        joblib.dump(model, tmp / "iris.joblib")
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
        iris = quick.bundles_dir / "iris"
        servers = [
            Server(EDGEPORT, [str(Path(sys.executable).with_name("edgeport")), "serve", str(iris), "--port", "{port}"],
                   "/v2/health/ready", env={"EDGEPORT_CACHE": str(tmp / "cache")}),
            Server(BARE, [sys.executable, "-m", "uvicorn", "bare_ort_app:app", "--port", "{port}", "--log-level", "warning",
                          "--app-dir", str(ROOT / "bench" / "baselines")], "/v2/health/ready",
                   env={"BARE_MODEL": str(iris / "model.onnx")}),
            Server("naive FastAPI + joblib (sklearn)",
                   [sys.executable, "-m", "uvicorn", "naive_app:app", "--port", "{port}", "--log-level", "warning",
                    "--app-dir", str(ROOT / "bench" / "baselines")], "/docs", env={"NAIVE_MODEL": str(tmp / "iris.joblib")}),
        ]
        python, why = mlserver_python()
        if python:
            servers.append(_mlserver(python, tmp))
        results = compare(servers, body)
        if not python:
            results[MLSERVER] = {"skipped": why}
        attack = under_attack(quick.bundles_dir, body, tmp / "cache")
    save("server", {**results, "under attack": attack})
    return comparison_table(results) + "\n" + attack_table(attack)


def compare(servers: list[Server], body: dict) -> dict:
    """Each server's time to ready, then its throughput at CONNECTIONS and MORE_CONNECTIONS; edgeport and the bare
    app in ROUNDS interleaved rounds, both running (the idle one costs nothing)."""
    results: dict[str, dict] = {}
    edgeport = next(s for s in servers if s.name == EDGEPORT)
    cold = edgeport.start()  # builds the site cache: every later start is warm
    edgeport.stop()
    ready = {s.name: [] for s in servers}
    for _ in range(STARTS):  # interleaved too: a slow second on the machine hits every server alike
        for server in servers:
            ready[server.name].append(server.start())
            server.stop()
    for server in servers:
        results[server.name] = {"ready_s": statistics.median(ready[server.name]), "ready_runs_s": ready[server.name]}
    results[EDGEPORT]["ready_cold_s"] = cold
    paired = [s for s in servers if s.name in (EDGEPORT, BARE)]
    runs: dict[str, dict[int, list[dict]]] = {s.name: {CONNECTIONS: [], MORE_CONNECTIONS: []} for s in servers}
    try:
        for server in paired:
            server.start()
        paired = [server for server in paired if _answers(server, body, results)]
        for _ in range(ROUNDS):
            for connections in (CONNECTIONS, MORE_CONNECTIONS):
                for server in paired:
                    runs[server.name][connections].append(wrk(server.infer_url, body, connections=connections))
        for server in paired:
            results[server.name]["peak_rss_mb"] = peak_rss_mb(server.proc.pid)
    finally:
        for server in paired:
            server.stop()
    for server in servers:
        if server in paired:
            continue
        server.start()
        try:
            if _answers(server, body, results):
                for connections in (CONNECTIONS, MORE_CONNECTIONS):
                    runs[server.name][connections].append(wrk(server.infer_url, body, connections=connections))
                results[server.name]["peak_rss_mb"] = peak_rss_mb(server.proc.pid)
        finally:
            server.stop()
    for server in servers:
        if "skipped" in results[server.name]:
            continue
        low, high = runs[server.name][CONNECTIONS], runs[server.name][MORE_CONNECTIONS]
        results[server.name].update({
            "rps_c16": statistics.median(r["rps"] for r in low), "rps_c64": statistics.median(r["rps"] for r in high),
            "p50_ms_c16": statistics.median(r["p50_ms"] for r in low),
            "p99_ms_c16": statistics.median(r["p99_ms"] for r in low),
            "errors": sum(r["errors"] + r["socket_errors"] for r in low + high), "runs": {"c16": low, "c64": high}})
    return results


def _answers(server: Server, body: dict, results: dict) -> bool:
    probe = httpx.post(server.infer_url, json=body, timeout=10)
    if probe.status_code != 200:
        results[server.name] = {"skipped": f"answered {probe.status_code}: {probe.text[:120]}"}
    return probe.status_code == 200


def comparison_table(results: dict) -> str:
    bare = results.get(BARE, {})

    def ratio(r: dict, key: str) -> str:
        return f"{r[key] / bare[key]:.2f}x" if key in bare and key in r else "-"

    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, *["-"] * 10, r["skipped"]])
            continue
        ready = f"{r['ready_s']:.2f}" + (f" (cold {r['ready_cold_s']:.2f})" if "ready_cold_s" in r else "")
        rows.append([name, ready, ratio(r, "ready_s"), r["rps_c16"], ratio(r, "rps_c16"), r["rps_c64"],
                     ratio(r, "rps_c64"), r["p99_ms_c16"], ratio(r, "p99_ms_c16"), r["p50_ms_c16"],
                     f"{r['peak_rss_mb']:.0f}", f"{r['errors']} non-2xx/socket errors"])
    edge = results.get(EDGEPORT, {})
    verdict = ""
    if "rps_c16" in edge and "rps_c16" in bare:
        checks = [("time to ready <= 1.2x", edge["ready_s"] <= 1.2 * bare["ready_s"]),
                  ("c16 req/s >= 0.95x", edge["rps_c16"] >= 0.95 * bare["rps_c16"]),
                  ("c64 req/s >= 0.95x", edge["rps_c64"] >= 0.95 * bare["rps_c64"]),
                  ("p99 c16 <= 1.2x", edge["p99_ms_c16"] <= 1.2 * bare["p99_ms_c16"])]
        verdict = "\nedgeport against the bare app: " + "; ".join(f"{what} {'met' if ok else 'MISSED'}" for what, ok in checks)
    return table(f"server fallback: single-row iris infer, wrk 2 threads x {CONNECTIONS} / {MORE_CONNECTIONS} connections x "
                 f"{DURATION_S}s, one worker each; time to ready: median of {STARTS} starts; ratios against the bare app",
                 ["server", "ready s", "vs bare", "req/s c16", "vs bare", "req/s c64", "vs bare", "p99 ms c16", "vs bare",
                  "p50 ms c16", "peak RSS MB", "notes"], rows) + verdict


def hostile_body(megabytes: int = 2) -> str:
    """Finding 10's attack: an iris request whose data is ~2 MB of deeply nested lists."""
    block = "[" * HOSTILE_DEPTH + ",".join(["1.0"] * 4) + "]" * HOSTILE_DEPTH
    data = ",".join([block] * (megabytes * 1_000_000 // (len(block) + 1)))
    return '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[' + data + "]}]}"


def under_attack(bundles_dir: Path, body: dict, cache: Path) -> dict:
    """Good single-row traffic on edgeport alone, then while two clients send hostile bodies without pause;
    ATTACK_ROUNDS times, interleaved, since on a small shared machine the load drifts between runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
    proc = run_server([str(Path(sys.executable).with_name("edgeport")), "serve", str(bundles_dir), "--port", str(port)],
                      f"http://127.0.0.1:{port}/v2/health/ready", env={"EDGEPORT_CACHE": str(cache)})
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


def _mlserver(python: str, tmp: Path) -> Server:
    # MLServer's sklearn runtime takes a plain numeric tensor; names don't matter to it
    server = Server(MLSERVER, [], "/v2/models/iris/ready")
    # predict_proba, as edgeport returns probabilities; MLServer's default is predict only
    server.cmd = mlserver_command(python, tmp / "mlserver", "iris", tmp / "iris.joblib", http_port=server.port,
                                  grpc_port=free_port(), metrics_port=free_port(), extra={"predict_fn": "predict_proba"})
    return server


if __name__ == "__main__":
    print(main())
