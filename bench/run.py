"""make bench: every benchmark, printed as tables. Figures to beat, not assertions."""
from __future__ import annotations

import platform
import sys

import batch_bench
import families_bench
import keras_bench
import page_bench
import runtime_bench
import server_bench
import zoo_bench



def main() -> None:
    sections = sys.argv[1:] or ["zoo", "runtimes", "keras", "families", "server", "page", "batch"]
    print(f"# edgeport bench on {platform.node()} ({platform.machine()}, python {platform.python_version()})")
    benches = {"zoo": zoo_bench.main, "runtimes": runtime_bench.main, "keras": keras_bench.main,
               "families": families_bench.main, "server": server_bench.main, "page": page_bench.main,
               "batch": batch_bench.main}
    for name in sections:
        print(benches[name](), flush=True)


if __name__ == "__main__":
    main()
