"""The `node` runtime: the JS client (web_demo/client/edgeport.js) with onnxruntime-web under Node.js."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from ..bundle import Bundle
from ..errors import RuntimeFailedError
from ..webassets import WEB_DEMO, require_js_packages, require_node
from . import RuntimeOutput

TIMEOUT_S = 180


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    node = require_node()
    require_js_packages()
    with tempfile.TemporaryDirectory(prefix="edgeport-node-") as tmp:
        rows_file = Path(tmp) / "rows.json"
        rows_file.write_text(json.dumps({"rows": rows}, allow_nan=False))
        try:
            proc = subprocess.run(
                [node, str(WEB_DEMO / "runner" / "run-bundle.mjs"), str(bundle.path.resolve()), str(rows_file)],
                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=WEB_DEMO,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailedError(f"the node runner did not finish within {TIMEOUT_S}s") from exc
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeFailedError(f"the node runner crashed (exit {proc.returncode}): {' | '.join(tail)}") from None
    if "error" in result:
        raise RuntimeFailedError(f"the JS client failed under node: {result['error']}")
    noise = tuple(line for line in proc.stderr.splitlines() if line.strip())
    return RuntimeOutput(result["outputs"], diagnostics=noise[:20], timings=result.get("timings", {}))
