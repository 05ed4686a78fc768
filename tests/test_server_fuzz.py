"""Generated requests against the OIP v2 endpoint: whatever arrives, the answer is 2xx or 4xx, never 5xx."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    # the edges of every dtype: beyond float64, int64 and float32
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 3.5e38, -1e308, 1e-320]),
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
    from exporter.server.app import create_app
    from exporter.server.repository import Repository

    return TestClient(create_app(Repository(example_bundles.bundles_dir)), raise_server_exceptions=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(["iris", "churn", "breast-cancer-forest"]), payload=body)
def test_generated_requests_never_get_a_5xx(client, model, payload):
    response = client.post(f"/v2/models/{model}/infer", content=json.dumps(payload, allow_nan=True),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (payload, response.text)
    assert response.status_code == 200 or "error" in response.json()
