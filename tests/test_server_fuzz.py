"""Generated requests against the OIP v2 endpoint: whatever arrives, the answer is 2xx or 4xx, never 5xx."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# the edges of every dtype: beyond float64, int64 and float32
edges = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 3.5e38, -1e308, 1e-320])
numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), edges)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), edges,
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=40)
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "INT32", "BOOL", "FP16", "STRING", "", "fp32"])
names = st.sampled_from(["input", "plan", "tenure_months", "region", "x", "", "../x"])
shapes = st.lists(st.integers(min_value=-2, max_value=6), min_size=0, max_size=4)
tensor = st.fixed_dictionaries({"name": names, "shape": shapes, "datatype": datatypes, "data": st.lists(values, max_size=30)})
body = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=6)},
                          optional={"outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=3),
                                    "id": st.one_of(st.text(max_size=5), st.integers()),
                                    "parameters": st.dictionaries(st.text(max_size=5), scalars, max_size=3)}),
    values,
)


@pytest.fixture(scope="module")
def client(example_bundles):
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    return TestClient(create_app(Repository(example_bundles.bundles_dir)), raise_server_exceptions=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(["iris", "churn", "breast-cancer-forest"]), payload=body)
def test_generated_requests_never_get_a_5xx(client, model, payload):
    response = client.post(f"/v2/models/{model}/infer", content=json.dumps(payload, allow_nan=True),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (payload, response.text)
    assert response.status_code == 200 or "error" in response.json()


@st.composite
def nearly_valid(draw, manifest):
    """Requests that pass every structural check, so the element values are what gets tested."""
    from edgeport.server.oip import DATATYPE_OF

    rows = draw(st.integers(min_value=1, max_value=3))
    inputs = []
    for spec in manifest["inputs"]:
        shape = [rows, *[d or 1 for d in spec["shape"][1:]]]
        size = 1
        for d in shape:
            size *= d
        datatype = draw(st.sampled_from([DATATYPE_OF[spec["dtype"]], "FP32", "FP64", "INT64", "BYTES"]))
        # mostly well-typed values, so a bad one deep in the list is reached rather than an early type error
        elements = st.text(max_size=6) if datatype == "BYTES" else draw(st.sampled_from([numbers, numbers, scalars]))
        data = draw(st.lists(elements, min_size=size, max_size=size))
        inputs.append({"name": spec["name"], "shape": shape, "datatype": datatype, "data": data})
    return {"inputs": inputs}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_nearly_valid_requests_never_get_a_5xx(client, example_bundles, data):
    model = data.draw(st.sampled_from([m for m in example_bundles.models if m.name != "digits-cnn"]))
    payload = data.draw(nearly_valid(model.export.bundle.manifest.to_dict()))
    response = client.post(f"/v2/models/{model.name}/infer", content=json.dumps(payload, allow_nan=True),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (payload, response.text)
