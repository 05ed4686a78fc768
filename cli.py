"""`python cli.py ...` from a checkout: the same CLI as the `edgeport` command.

The commands live in exporter/cli.py, which installs as `edgeport.cli` (the wheel maps exporter/ to the one
package name `edgeport`, so no generic top-level name like `cli` lands in site-packages).
"""
from edgeport.cli import app

if __name__ == "__main__":
    app()
