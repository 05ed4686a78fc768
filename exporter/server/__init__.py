"""The fallback server: Open Inference Protocol v2 over HTTP, plus the demo site and bundle files.

    repository.py  the bundles being served, verified and loaded into onnxruntime sessions
    oip.py         OIP v2 pydantic schemas and the checks that turn a request into tensors
    app.py         create_app(): routes, errors as {"error": ...}, metrics
    http.py        ASGI pieces: the body-size cap, precompressed static files
"""
