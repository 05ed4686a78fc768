"""The fallback server: Open Inference Protocol v2 over HTTP, plus the demo site and bundle files.

    repository.py   the bundles being served, read once, verified and loaded into onnxruntime sessions
    static.py       the start-up snapshot of bundle files and the demo site (only listed files and variants)
    oip.py          OIP v2 pydantic schemas, each model's request budget, and the checks that make tensors
    app.py          create_app(): routes, errors as {"error": ...}, metrics
    http.py         ASGI pieces: the body-size cap, security headers, the JSON error shape
    connections.py  uvicorn's protocol wrapped: header and body deadlines, idle close, the connection cap
    metrics.py      Prometheus metrics in a registry of the app's own
"""
