"""The server under hostile traffic: bodies that cost more than they may, slow and idle connections, a connection
flood, SIGTERM with traffic queued, parameters and options nobody checked, and a schema-driven fuzzer.

Real-process tests use small configured timeouts and generous margins: they assert what happens, not how fast.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from unittest import mock

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from conftest import ServerProcess


@pytest.fixture(scope="module", autouse=True)
def site_cache(tmp_path_factory):
    """The servers started here keep their demo sites in a cache of this module's own, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPORT_CACHE", str(tmp_path_factory.mktemp("edgeport-cache")))
        yield

HEADER_TIMEOUT_S = 1
KEEP_ALIVE_S = 3
GOOD = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


@pytest.fixture(scope="module")
def bundles(example_bundles):
    return example_bundles.bundles_dir


@pytest.fixture(scope="module")
def client(bundles):
    """Ten rows at most: iris's budget is then 10 x 4 values, about 68 KB, far below the 4 MB server-wide cap."""
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    return TestClient(create_app(Repository(bundles), max_batch=10), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def server(bundles):
    process = ServerProcess(bundles, "--header-timeout", HEADER_TIMEOUT_S, "--keep-alive", KEEP_ALIVE_S,
                            "--drain-seconds", 0)
    yield process
    process.stop()


class LimitedServer(ServerProcess):
    """A server process that may open only `open_files` files: enough idle sockets exhaust it quickly."""

    def __init__(self, path, *args, open_files: int):
        import resource
        import subprocess

        popen = subprocess.Popen

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        def limited(*popen_args, **kwargs):
            return popen(*popen_args, preexec_fn=limit, **kwargs)

        with mock.patch.object(subprocess, "Popen", limited):
            super().__init__(path, *args)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def closed_after(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes `sock` (sending `trickle` every 0.2 s meanwhile), or None if it stays open."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


def read_all(sock: socket.socket, seconds: float = 10) -> bytes:
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def server_output(server) -> str:
    try:
        return server.output()
    except ValueError:  # stop() closed the log: read it again by name
        return open(server.log.name).read()


def infer_head(length: int) -> bytes:
    return (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def nested(depth: int) -> str:
    data = "[" * depth + "1" + "]" * depth
    return '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":' + data + "}]}"


# finding 10: cheap bad requests must not starve good ones (throughput: bench/server_bench.py)

def test_a_body_larger_than_the_model_can_need_is_refused_before_it_is_sent(server):
    with connect(server) as sock:
        sock.sendall(infer_head(2_000_000))  # and not one byte of the body
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in head.lower()
    assert "larger than" in json.loads(body)["error"] and "iris" in json.loads(body)["error"]


@pytest.mark.parametrize("body,words", [
    (nested(100), ["deeper than 6 levels"]),
    (json.dumps({"inputs": [{**GOOD["inputs"][0], "data": [1.0] * 5000}]}), ["5", "values", "at most 1104"]),
], ids=["nested 100 deep", "5,000 values for 40"])
def test_costly_bodies_are_refused_before_they_are_parsed(client, body, words, monkeypatch):
    from edgeport.server.oip import InferRequest

    monkeypatch.setattr(InferRequest, "model_validate_json", mock.Mock(side_effect=AssertionError("parsed")))
    response = client.post("/v2/models/iris/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"]


def test_big_bodies_are_parsed_off_the_event_loop_and_small_ones_inline(client, monkeypatch):
    import asyncio

    import edgeport.server.app as app_module

    on_loop = []

    def prepare(*args):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return prepare_for_real(*args)

    prepare_for_real = app_module._prepare
    monkeypatch.setattr(app_module, "_prepare", prepare)
    rows = [[5.1, 3.5, 1.4, 0.2]] * 10
    pretty = json.dumps({"inputs": [{"name": "input", "shape": [10, 4], "datatype": "FP64", "data": rows}]}, indent=100)
    assert len(pretty) > app_module.INLINE_BODY_BYTES
    assert client.post("/v2/models/iris/infer", json=GOOD).status_code == 200
    big = client.post("/v2/models/iris/infer", content=pretty, headers={"content-type": "application/json"})
    assert big.status_code == 200
    assert on_loop == [True, False]


# finding 11: idle and half-open connections

def test_a_slowloris_connection_is_closed_after_the_header_timeout(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        elapsed = closed_after(sock, 10, trickle=b"X-Slow: y\r\n")
    assert elapsed is not None, "a connection trickling its headers stayed open"
    assert HEADER_TIMEOUT_S * 0.5 < elapsed < HEADER_TIMEOUT_S + 4, elapsed
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=10).status_code == 200


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server):
    with connect(server) as sock:
        elapsed = closed_after(sock, KEEP_ALIVE_S + 6)
    assert elapsed is not None, "a connection that never sent a byte stayed open"
    assert KEEP_ALIVE_S * 0.5 < elapsed < KEEP_ALIVE_S + 4, elapsed


def test_a_kept_alive_connection_serves_request_after_request(server):
    with httpx.Client(timeout=10) as http:
        answers = [http.post(f"{server.url}/v2/models/iris/infer", json=GOOD) for _ in range(3)]
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle longer than a head may take, shorter than keep-alive
        answers.append(http.post(f"{server.url}/v2/models/iris/infer", json=GOOD))
    assert [a.status_code for a in answers] == [200] * 4


def test_past_the_connection_cap_idle_connections_make_room_and_the_cap_holds(bundles):
    # 150 open files: without a cap, 300 idle sockets exhaust them and accept() stops for everyone
    server = LimitedServer(bundles, "--max-connections", 20, "--drain-seconds", 0, open_files=150)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.5)
        response = httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=10)
        assert response.status_code in (200, 503), response.text
        assert response.status_code == 200  # idle connections are there to make room
        open_files = len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))
        assert open_files <= 20 + 100, open_files
        for sock in idle:
            sock.close()
        idle.clear()
        time.sleep(0.3)
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    assert "Traceback" not in server_output(server)


def test_past_the_cap_with_every_connection_busy_a_newcomer_gets_a_503_and_a_slow_body_a_408(bundles):
    server = ServerProcess(bundles, "--max-connections", 2, "--timeout", 2, "--drain-seconds", 0)
    try:
        busy = [connect(server) for _ in range(2)]
        for sock in busy:  # a request in flight each: the head is in, the body never completes
            sock.sendall(infer_head(1000) + b'{"inputs":')
        time.sleep(0.5)
        with connect(server) as newcomer:
            answer = read_all(newcomer)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer[:300]
        assert "connections" in json.loads(body)["error"]
        for sock in busy:  # the body timeout frees them
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
            assert "did not arrive within 2s" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            sock.close()
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=10).status_code == 200
    finally:
        server.stop()



def test_the_connection_cap_fits_the_open_file_limit(monkeypatch):
    import resource

    from edgeport.errors import EdgeportError
    from edgeport.serving import DEFAULT_MAX_CONNECTIONS, RESERVED_FILES, connection_cap

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (512, 512))
    monkeypatch.setattr(resource, "setrlimit", mock.Mock(side_effect=ValueError("not above the hard limit")))
    assert connection_cap(None) == 512 - RESERVED_FILES < DEFAULT_MAX_CONNECTIONS  # the default shrinks to fit
    assert connection_cap(300) == 300
    with pytest.raises(EdgeportError, match="--max-connections 412 or less"):
        connection_cap(1000)  # asked for: an error, not a server that stops accepting at 412


# finding 12: SIGTERM drains before it stops accepting

def test_sigterm_drains_while_traffic_keeps_coming_and_then_stops_accepting(bundles):
    server = ServerProcess(bundles, "--drain-seconds", 3)
    outcomes, stop = [], threading.Event()

    def traffic():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{server.url}/v2/models/iris/infer", json=GOOD)
                    outcomes.append((response.status_code, response.headers.get("connection")))
                except httpx.HTTPError as exc:
                    outcomes.append((type(exc).__name__, None))

    sender = threading.Thread(target=traffic)
    try:
        sender.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        sent_before = len(outcomes)
        time.sleep(0.5)
        ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
        time.sleep(1.5)  # still inside the 3 s drain
        stop.set()
        sender.join()
        during = outcomes[sent_before:]
        refused_at = None
        deadline = time.monotonic() + 10
        while refused_at is None and time.monotonic() < deadline:
            try:
                httpx.get(f"{server.url}/v2/health/live", timeout=1)
                time.sleep(0.1)
            except httpx.ConnectError:
                refused_at = time.monotonic()
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM), server.output()
    finally:
        stop.set()
        server.stop()
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    failures = [o for o in outcomes if o[0] != 200]
    assert failures == [] and len(during) >= 10, (failures[:5], len(during))
    assert ("200", "close") in {(str(s), c) for s, c in during}  # during the drain, clients are told to reconnect
    assert refused_at is not None, "the server kept accepting after the drain"


# finding 13: no bad input turns into a 5xx; a last resort answers JSON

def test_an_unexpected_error_is_a_json_500_and_one_log_line(client, monkeypatch, caplog):
    import edgeport.server.app as app_module

    monkeypatch.setattr(app_module, "response_outputs", mock.Mock(side_effect=RuntimeError("boom\nsecond line")))
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        response = client.post("/v2/models/iris/infer", json=GOOD)
    assert response.status_code == 500 and "RuntimeError" in response.json()["error"]
    records = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None and "second line" not in records[0].getMessage()


def test_tritonclient_style_parameters_are_accepted_and_counted(client):
    body = {**GOOD, "parameters": {"fallback_reason": "timeout", "binary_data_output": False, "content_type": "np"},
            "inputs": [{**GOOD["inputs"][0], "parameters": {"content_type": "np"}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    assert 'edgeport_fallback_requests_total{model="iris",reason="timeout"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("value", [1e300, 9.3e18, -9.3e18, 2**63, -(2**63) - 1])
def test_a_number_beyond_int64_is_a_400_even_as_a_float(value):
    from types import SimpleNamespace

    from edgeport.bundle import InputSpec
    from edgeport.server.oip import InferInputError, InferRequest, feeds_from_request

    bundle = SimpleNamespace(inputs=[InputSpec(name="visits", dtype="int64", shape=(None, 1))])
    request = InferRequest.model_validate(
        {"inputs": [{"name": "visits", "shape": [1, 1], "datatype": "INT64", "data": [value]}]})
    with pytest.raises(InferInputError, match="does not fit int64"):
        feeds_from_request(bundle, request, max_batch=10)


# finding 14: bad options, a client that goes away mid-body

@pytest.mark.parametrize("option", [
    ["--max-body-bytes", "0"], ["--timeout", "-5"], ["--timeout", "0"], ["--max-batch", "-1"],
    ["--site", "/no/such/site"],
    ["--port", "70000"], ["--port", "-1"], ["--header-timeout", "0"], ["--max-connections", "0"],
    ["--drain-seconds", "-1"], ["--keep-alive", "nan"],
], ids=lambda o: " ".join(o))
def test_bad_server_options_are_usage_errors(option, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    # a PATH that doesn't exist: if the option were accepted, serve would fail with exit 1 instead of starting
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-bundles"), *option])
    assert result.exit_code == 2, result.output
    assert option[0] in result.output


def test_a_client_that_goes_away_mid_body_leaves_one_log_line(server):
    with connect(server) as sock:
        sock.sendall(infer_head(100_000) + b'{"inputs":')
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while "went away" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.output()
    assert "went away" in log and "Traceback" not in log, log[-2000:]
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=10).status_code == 200


# finding 15: the infer body in /openapi.json, and a schema-driven fuzzer

def test_openapi_describes_the_infer_request_body(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
    schemas = spec["components"]["schemas"]
    assert {"inputs", "outputs", "parameters", "id"} <= set(schemas["InferRequest"]["properties"])
    assert schemas["RequestParameters"]["properties"]["fallback_reason"]["anyOf"][0]["enum"][0] == "no-wasm"


@pytest.fixture(scope="module")
def api(bundles, tmp_path_factory):
    """The whole app as schemathesis sees it, with a one-page site at / (the demo site's build is tested elsewhere);
    in process, so that no connection is closed under it by the short timeouts of the real-process tests."""
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    site = tmp_path_factory.mktemp("site")
    (site / "index.html").write_text("<h1>edgeport</h1>")
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(Repository(bundles), site_dir=site, max_batch=10))


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_driven_fuzzing_finds_no_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])

