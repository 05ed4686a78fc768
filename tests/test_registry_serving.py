"""`edgeport serve REGISTRY`: aliases followed at run time by a real server under load, pinned versions, a
damaged version refused with a 4xx while the others keep serving, and the cache headers browsers rely on."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ServerProcess, run_node_client
from edgeport.model_registry import FileRegistry
from edgeport.server.repository import ModelUnavailable, RegistryRepository

ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 2.9, 5.6, 1.8]}]}


@pytest.fixture
def registry(two_versions, tmp_path):
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(two_versions["1"].path)
    registry.publish(two_versions["2"].path)
    registry.promote("iris", "1")
    return registry


@pytest.fixture
def server(registry):
    process = ServerProcess(registry.root)
    yield process
    process.stop()


def test_promote_and_rollback_under_load_fail_no_request(registry, server):
    """16 clients infer without pause while the alias moves 1 -> 2 -> 1 three times: every request is answered
    200 by version 1 or 2, and from 1 s after the last rollback every answer comes from version 1."""
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                response = client.post("/v2/models/iris/infer", json=ROW)
                version = response.json().get("model_version") if response.status_code == 200 else response.text
                answers.append((sent, response.status_code, version))

    with ThreadPoolExecutor(16) as pool:
        for _ in range(16):
            pool.submit(load)
        time.sleep(0.5)
        for _ in range(3):
            registry.promote("iris", "2")
            time.sleep(0.6)
            registry.rollback("iris")
            time.sleep(0.6)
        last_rollback = time.monotonic()
        time.sleep(1.6)
        stop.set()
    failed = [a for a in answers if a[1] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    assert len(answers) >= 1000, f"only {len(answers)} requests: the load loop did not load the server"
    assert {v for _, _, v in answers} == {"1", "2"}, "both versions answered while the alias moved"
    late = [v for sent, _, v in answers if sent > last_rollback + 1.0]
    assert late and set(late) == {"1"}, f"after the last rollback: {sorted(set(late))}"


def test_a_pinned_version_answers_whatever_the_alias(registry, server):
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/v2/models/iris/versions/2/infer", json=ROW).json()["model_version"] == "2"
        assert client.post("/v2/models/iris/infer", json=ROW).json()["model_version"] == "1"
        assert client.get("/v2/models/iris").json()["versions"] == ["1", "2"]


def test_a_forced_damaged_version_gets_a_4xx_and_the_others_keep_serving(registry, server):
    version_dir = registry.bundle_dir("iris", "2")
    version_dir.chmod(0o755)
    model = version_dir / "model.onnx"
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:100])  # truncated after publishing
    registry.promote("iris", "2", force=True)
    time.sleep(0.5)  # the alias is read again within RegistryRepository.alias_ttl_s
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            refused = client.post("/v2/models/iris/infer", json=ROW)
            assert refused.status_code == 409 and "iris version 2 can't be served" in refused.json()["error"]
        assert client.post("/v2/models/iris/versions/1/infer", json=ROW).json()["model_version"] == "1"
        assert client.get("/v2/health/ready").status_code == 200
    registry.rollback("iris")
    time.sleep(0.5)
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=ROW).json()["model_version"] == "1"
    assert server.output().count("iris version 2 can't be served") == 1, "one log line for the damaged version"


def test_aliases_are_revalidated_and_versions_cached_for_good(registry, server):
    with httpx.Client(base_url=server.url) as client:
        aliases = client.get("/bundles/iris/_aliases.json")
        assert aliases.headers["cache-control"] == "no-cache"
        assert aliases.json() == {"name": "iris", "aliases": {"production": "1"}, "versions": ["1", "2"]}
        manifest = client.get("/bundles/iris/2/manifest.json")
        assert "immutable" in manifest.headers["cache-control"] and json.loads(manifest.text)["version"] == "2"
        assert client.get("/bundles/nope/_aliases.json").status_code == 404


NODE_CLIENT = """
import { loadModel, resolveModel } from '../client/edgeport.js';
const [registryUrl, reference] = process.argv.slice(2);
const model = await loadModel(await resolveModel(registryUrl, reference), { worker: false });
const [answer] = await model.predict([[6.3, 2.9, 5.6, 1.8]]);
process.stdout.write(JSON.stringify({ version: answer.model_version, label: answer.label, served_by: answer.served_by }));
"""


def test_the_client_resolves_the_alias_on_each_load(registry, server):
    """The real client under Node, against the real server: NAME follows the alias from one load to the next."""
    def load(reference: str) -> dict:
        return run_node_client(NODE_CLIENT, f"{server.url}/bundles/", reference)

    assert load("iris")["version"] == "1"
    registry.promote("iris", "2")
    time.sleep(0.5)  # the server reads the alias again within RegistryRepository.alias_ttl_s (0.25 s)
    second = load("iris")
    assert second["version"] == "2" and second["served_by"] == "browser"
    registry.rollback("iris")
    time.sleep(0.5)
    assert load("iris@production")["version"] == "1"


def test_versions_load_on_first_use_into_an_lru_cache(registry):
    repository = RegistryRepository(registry, max_bytes=1)  # room for one version at a time
    assert repository.all() == []
    assert repository.get("iris").version == "1"
    assert repository.get("iris", "2").version == "2"
    assert [m.version for m in repository.all()] == ["2"], "the least recently used version left the cache"
    assert repository.get("iris", "9") is None and repository.get("../etc") is None
    version_dir = registry.bundle_dir("iris", "1")
    version_dir.chmod(0o755)
    (version_dir / "model.onnx").chmod(0o644)
    (version_dir / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable, match="iris version 1 can't be served"):
        repository.get("iris", "1")
    assert repository.get("iris", "2").version == "2"


def test_a_damaged_alias_document_is_a_409_for_the_alias_and_pinned_versions_still_answer(registry, server):
    (registry.root / "iris" / "_aliases.json").write_text("{ not json")
    time.sleep(0.5)
    with httpx.Client(base_url=server.url) as client:
        refused = client.post("/v2/models/iris/infer", json=ROW)
        assert refused.status_code == 409 and "_aliases.json" in refused.json()["error"]
        assert client.get("/bundles/iris/_aliases.json").status_code == 409
        assert client.post("/v2/models/iris/versions/2/infer", json=ROW).json()["model_version"] == "2"


@pytest.mark.parametrize("document, says", [
    ({"aliases": {}}, "iris@production is not set"),
    ({"aliases": {"production": "9"}}, "points at version 9, which the registry hasn't got"),
    ([], "_aliases.json is damaged"),
    ({"aliases": {"production": 2}}, "_aliases.json is damaged"),
])
def test_an_unset_dangling_or_misshapen_alias_is_a_409_saying_so(registry, document, says):
    """Never a 5xx, and never a silent fall back to some other version."""
    (registry.root / "iris" / "_aliases.json").write_text(json.dumps(document))
    repository = RegistryRepository(registry)
    with pytest.raises(ModelUnavailable, match=says):
        repository.get("iris")
    assert repository.get("iris", "2").version == "2"


def test_a_slow_registry_never_stalls_a_request(registry):
    """A registry that takes seconds to answer (MLflow's database, locked) is read in the background: requests use
    what was last read, and see the new alias once the read is done."""
    class Slow:
        def __init__(self, inner):
            self.inner, self.delay = inner, 0.0

        def __getattr__(self, name):
            method = getattr(self.inner, name)

            def slowly(*args):
                time.sleep(self.delay)
                return method(*args)
            return slowly

    slow = Slow(registry)
    repository = RegistryRepository(slow, alias_ttl_s=0.05)
    assert repository.get("iris").version == "1"
    slow.delay = 1.0
    registry.promote("iris", "2")
    time.sleep(0.1)
    started = time.monotonic()
    for _ in range(20):
        assert repository.get("iris").version == "1"  # what was last read, while the new read takes its second
    assert time.monotonic() - started < 0.5
    time.sleep(1.2)
    assert repository.get("iris").version == "2"
