"""A venv beside the test venv, for a server that can't share its pins (MLServer, Ray): created once, under a lock
in the temp directory (a bench and a test may ask at once); .installed marks it done, and --clear restarts one
that a killed run left half-installed. `overlay`: the venv's site-packages end with the test venv's (a .pth line,
site.addsitedir), so it holds only what the server adds or needs in another version."""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


def side_venv(venv: Path, packages: tuple[str, ...], what: str, *, overlay: bool = False) -> tuple[str | None, str]:
    """(the venv's python, "") once `packages` are installed in it, else (None, why they could not be)."""
    python = venv / "bin" / "python"
    lock_name = f"edgeport-venv-{hashlib.sha256(bytes(venv)).hexdigest()[:12]}.lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".installed").exists():
            return str(python), ""
        try:
            base = getattr(sys, "_base_executable", sys.executable) if overlay else sys.executable
            subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
            if overlay:
                site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      check=True, capture_output=True, text=True).stdout.strip()
                ours = sysconfig.get_paths()["purelib"]
                Path(site, "zz_edgeport_test_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True, capture_output=True,
                           text=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = (getattr(exc, "stderr", "") or "").strip()
            return None, f"{what} did not install: {detail.splitlines()[-1][:160] if detail else exc}"
        (venv / ".installed").touch()
    return str(python), ""
