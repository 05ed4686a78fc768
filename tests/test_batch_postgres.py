"""edgeport predict into PostgreSQL: a real server (Debian's postgresql binaries), a throwaway cluster per module.

The cluster is this test's own process tree: initdb into a fresh directory, pg_ctl start on a free loopback port with
its unix socket in that directory (not /var/run/postgresql), trust authentication, fsync off; stopped and removed
after the module. No system service is used. PostgreSQL refuses to run as root, so as root the binaries run as the
`postgres` user (runuser), in a directory made under /tmp and handed to that user: pytest's tmp_path lives in
/tmp/pytest-of-root, which only root may enter. Skipped with the reason (failed in CI, by need()) where
postgresql or psycopg isn't installed: `make setup` installs both.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, need
from test_batch import assert_golden, cli, golden_table


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_postgres() -> list[str]:
    """The prefix that runs a server binary as a user PostgreSQL accepts (not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        need(False, "running as root and there is no postgres user to run PostgreSQL as (apt-get install -y postgresql)")
    need(shutil.which("runuser") is not None, "running as root without runuser to start PostgreSQL as postgres")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres_url():
    """A postgresql+psycopg:// URL to an empty database in a cluster started for this module."""
    bin_dir = _binaries()
    need(bin_dir is not None, "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                              "apt-get install -y postgresql, or make setup as root")
    try:
        import psycopg
    except ImportError:
        need(False, "psycopg is not installed: pip install -e '.[db]'")
    prefix = _as_postgres()
    root = Path(tempfile.mkdtemp(prefix="edgeport-pg-"))
    if prefix:
        shutil.chown(root, "postgres", "postgres")
    data, log, port = root / "data", root / "server.log", free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)

    def reason(step: str, done: subprocess.CompletedProcess) -> str:
        server_log = log.read_text()[-1500:] if log.exists() else ""
        return f"PostgreSQL could not be started ({step} exited {done.returncode}): {done.stderr[-1500:]}{server_log}"

    try:
        done = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync")
        need(done.returncode == 0, reason("initdb", done))
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        done = run(str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", options)
        need(done.returncode == 0, reason("pg_ctl start", done))
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as db:
                db.execute("CREATE DATABASE edgeport")
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/edgeport"
        finally:
            run(str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def read_table(url: str, query: str) -> pd.DataFrame:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:  # not pandas.read_sql: pandas 3.1 reads rows by row.values(), a column
            result = connection.execute(sa.text(query))  # lookup on SQLAlchemy 2.1's Row
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    finally:
        engine.dispose()


def write_rows(bundle, path: Path) -> tuple[pd.DataFrame, dict]:
    """The bundle's golden rows with an integer key column `flower`, as CSV at `path`."""
    table, outputs = golden_table(bundle)
    table.insert(0, "flower", range(100, 100 + len(table)))
    table.to_csv(path, index=False)
    return table, outputs


def test_a_second_run_updates_the_rows_instead_of_adding_them(two_versions, postgres_url, tmp_path):
    bundle = two_versions["1"]
    table, outputs = write_rows(bundle, tmp_path / "rows.csv")
    for _ in range(2):
        result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", postgres_url, "--table", "iris_scores",
                     "--id", "flower", "--chunk-rows", "7")
        assert result.exit_code == 0, result.output
        assert f"predicted {len(table)} of {len(table)} rows" in result.output
    counts = read_table(postgres_url, "select count(*) as n, count(distinct flower) as keys from iris_scores")
    assert counts.values.tolist() == [[len(table), len(table)]], "the second run updated the rows, none added twice"
    # ids from CSV are text, as written in the file: ordered as numbers here to line up with the table's rows
    predicted = read_table(postgres_url, "select * from iris_scores order by flower::int")
    assert predicted["flower"].tolist() == table["flower"].astype(str).tolist()
    assert_golden(bundle, predicted, outputs)
    assert predicted[["model", "version"]].drop_duplicates().values.tolist() == [[bundle.name, bundle.version]]
    assert predicted["predicted_at"][0].tzinfo is not None, "timestamps are stored with their time zone"


def test_a_second_version_adds_its_rows_beside_the_firsts(two_versions, postgres_url, tmp_path):
    rows = {}
    for version in ("1", "2"):
        bundle = two_versions[version]
        rows[version] = len(write_rows(bundle, tmp_path / f"rows-{version}.csv")[0])
        result = cli("predict", bundle.path, tmp_path / f"rows-{version}.csv", "--out", postgres_url, "--table",
                     "versions", "--id", "flower")
        assert result.exit_code == 0, result.output
    predicted = read_table(postgres_url, "select * from versions order by version, flower")
    assert predicted.groupby("version").size().to_dict() == rows
    for version, written in predicted.groupby("version"):  # version 2's run left version 1's rows as they were
        assert_golden(two_versions[version], written.reset_index(drop=True), golden_table(two_versions[version])[1])
