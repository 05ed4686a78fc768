"""Ray Serve in a venv of its own, layered over the test venv: for tests/test_ray_serve.py's real deployment.

Ray can't join edgeport's venv: ray[serve] 2.60 needs packaging >= 24 where tensorflowjs 4.22 pins packaging~=23.1,
and left alone its resolver takes protobuf 7 where TensorFlow needs protobuf < 6. So the test runs Ray in
bench/.venv-ray, a venv whose site-packages end with the test venv's (a .pth line: site.addsitedir), so edgeport
and its dependencies come from there, and that holds only what Ray adds or needs newer: ray[serve] 2.60 with
protobuf held below 6, packaging 26 (shadowing 23 in this venv only; nothing here imports tensorflowjs). About
20 s to install from pip's cache, once; created under a lock, .installed marks it done.
"""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY_VENV = ROOT / "bench" / ".venv-ray"
RAY_PACKAGES = ("ray[serve]==2.60.0", "protobuf<6")


def ray_python() -> tuple[str | None, str]:
    """(the Ray venv's python, "") once it is installed, else (None, why it could not be)."""
    python = RAY_VENV / "bin" / "python"
    lock_name = f"edgeport-ray-{hashlib.sha256(bytes(RAY_VENV)).hexdigest()[:12]}.lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (RAY_VENV / ".installed").exists():
            return str(python), ""
        try:  # --clear: a venv left half-installed by a killed run starts over
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", "--clear", str(RAY_VENV)], check=True, capture_output=True)
            site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           check=True, capture_output=True, text=True).stdout.strip()
            ours = sysconfig.get_paths()["purelib"]
            Path(site_packages, "zz_edgeport_test_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
            subprocess.run([str(python), "-m", "pip", "install", "-q", *RAY_PACKAGES], check=True,
                           capture_output=True, text=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = (getattr(exc, "stderr", "") or "").strip()
            return None, f"Ray did not install: {detail.splitlines()[-1][:160] if detail else exc}"
        (RAY_VENV / ".installed").touch()
    return str(python), ""
