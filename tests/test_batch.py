"""edgeport predict: files in, files or a database table out, by the server's artifact and decoder."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from edgeport.batch import predict_file
from edgeport.bundle import GOLDEN
from edgeport.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def golden_table(bundle) -> tuple[pd.DataFrame, dict]:
    """The bundle's golden rows as a table (keyed by column) and the outputs the Python original gave for them."""
    golden = json.loads((bundle.path / GOLDEN).read_text())
    rows = golden["rows"]
    if rows and isinstance(rows[0], list):
        rows = [dict(zip(bundle.manifest.inputs[0].columns, row)) for row in rows]
    return pd.DataFrame(rows), golden["outputs"]


def assert_golden(bundle, predicted: pd.DataFrame, outputs: dict) -> None:
    tolerance = bundle.manifest.tolerance
    assert predicted["label"].tolist() == outputs["label"]
    probabilities = predicted[[f"probability_{c}" for c in bundle.manifest.classes]].to_numpy()
    np.testing.assert_allclose(probabilities, outputs["probabilities"], atol=tolerance["atol"], rtol=tolerance["rtol"])


@pytest.mark.parametrize("name", ["churn", "iris"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_predictions_match_the_originals_golden_outputs(bundles, tmp_path, name, suffix):
    bundle = bundles[name]
    table, outputs = golden_table(bundle)
    data = tmp_path / f"rows{suffix}"
    {".csv": lambda: table.to_csv(data, index=False), ".parquet": lambda: table.to_parquet(data),
     ".jsonl": lambda: table.to_json(data, orient="records", lines=True)}[suffix]()
    out = tmp_path / f"predictions{suffix}"
    result = cli("predict", bundle.path, data, "--out", out, "--chunk-rows", "7")  # several chunks, one partial
    assert result.exit_code == 0, result.output
    predicted = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](out)
    assert predicted["row"].tolist() == list(range(len(table)))
    assert_golden(bundle, predicted, outputs)


def test_bad_rows_go_to_the_rejects_file_with_their_number_and_reason(bundles, tmp_path):
    bundle = bundles["churn"]
    table, outputs = golden_table(bundle)
    table = table.astype(object)
    table.insert(0, "customer", [f"c{i}" for i in range(len(table))])
    table.loc[3, "tenure_months"] = "twelve"
    table.loc[8, "plan"] = "x\x00y"
    data = tmp_path / "rows.csv"
    table.to_csv(data, index=False)
    result = cli("predict", bundle.path, data, "--out", tmp_path / "out.csv", "--id", "customer", "--rejects",
                 tmp_path / "rejects.csv", "--chunk-rows", "5")
    assert result.exit_code == 0, result.output
    assert "2 rejected" in result.output
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["row", "field", "code"]].values.tolist() == [[3, "tenure_months", "type"], [8, "plan", "type"]]
    assert rejects["customer"].tolist() == ["c3", "c8"] and "twelve" in rejects["error"][0]
    predicted = pd.read_csv(tmp_path / "out.csv")
    kept = [i for i in range(len(table)) if i not in (3, 8)]
    assert predicted["customer"].tolist() == [f"c{i}" for i in kept]
    assert predicted["label"].tolist() == [outputs["label"][i] for i in kept]


def test_without_rejects_the_first_bad_row_stops_the_run_and_nothing_is_written(bundles, tmp_path):
    bundle = bundles["iris"]
    table, _ = golden_table(bundle)
    table.loc[4, table.columns[1]] = None
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv")
    assert result.exit_code == 1
    assert "row 4" in result.output and table.columns[1] in result.output and "--rejects" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"], "no output, and no partial file left"


def test_workers_give_the_same_output_in_the_same_order(bundles, tmp_path):
    bundle = bundles["churn"]
    table, _ = golden_table(bundle)
    big = pd.concat([table] * 40, ignore_index=True)
    big.to_parquet(tmp_path / "rows.parquet")
    one = predict_file(bundle.path, tmp_path / "rows.parquet", str(tmp_path / "one.parquet"), chunk_rows=50)
    four = predict_file(bundle.path, tmp_path / "rows.parquet", str(tmp_path / "four.parquet"), chunk_rows=50, workers=4)
    assert one.predicted == four.predicted == len(big)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "four.parquet"))


def test_a_database_table_is_upserted_by_key_and_version(bundles, tmp_path):
    bundle = bundles["iris"]
    table, outputs = golden_table(bundle)
    table.insert(0, "flower", [f"f{i}" for i in range(len(table))])
    table.to_csv(tmp_path / "rows.csv", index=False)
    url = f"sqlite:///{tmp_path / 'preds.db'}"
    for _ in range(2):
        result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", url, "--table", "iris_scores", "--id", "flower")
        assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "preds.db") as db:
        count, distinct = db.execute("select count(*), count(distinct flower) from iris_scores").fetchone()
        labels = [r[0] for r in db.execute("select label from iris_scores order by rowid")]
        keys = db.execute("select distinct model, version from iris_scores").fetchall()
    assert count == distinct == len(table), "the second run updated the rows instead of adding them again"
    assert labels == outputs["label"] and keys == [(bundle.name, bundle.version)]


def test_a_killed_run_leaves_no_half_file(bundles, tmp_path):
    bundle = bundles["iris"]
    table, _ = golden_table(bundle)
    pd.concat([table] * 4000, ignore_index=True).to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "out.csv"
    out.write_text("the previous run's predictions\n")
    script = Path(sys.executable).with_name("edgeport")
    process = subprocess.Popen([str(script), "predict", str(bundle.path), str(tmp_path / "rows.csv"), "--out", str(out),
                                "--chunk-rows", "50"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.csv.partial-*")):
        assert process.poll() is None and time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert out.read_text() == "the previous run's predictions\n", "the old file stays whole"
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == len(table) * 4000
    assert not list(tmp_path.glob(".out.csv.partial-*")), "the killed run's partial file is cleared away"


@pytest.mark.parametrize("args, message", [
    (("--out", "{tmp}/out.xlsx"), "can't tell its format"),
    (("--out", "{tmp}/nowhere/out.csv"), "does not exist"),
    (("--out", "{tmp}/out.csv", "--table", "t"), "--table t is for a database"),
    (("--out", "{tmp}/out.csv", "--id", "nope"), "--id nope"),
    (("--out", "postgresql+nodriver://x/y"), "SQLAlchemy can't open it"),
    (("--out", "{tmp}/out.csv", "--rejects", "{tmp}/out.csv"), "--rejects {tmp}/out.csv is the same file as --out"),
    (("--out", "{tmp}/rows.csv"), "--out {tmp}/rows.csv is the same file as DATA"),
    (("--out", "{tmp}/out.csv", "--rejects", "{tmp}/../{name}/rows.csv"), "is the same file as DATA"),
    (("--out", "sqlite://"), "a database in memory"),
    (("--out", "sqlite:///{tmp}/p.db", "--table", ""), "--table needs a name"),
    (("--out", "{tmp}/out.csv", "--rejects", "{tmp}/nowhere/r.csv"), "--rejects {tmp}/nowhere/r.csv: its directory"),
    (("--out", "{tmp}/dir.csv"), "--out {tmp}/dir.csv is a directory"),
    (("--out", "{tmp}/" + "a" * 250 + ".csv"), "the name is too long"),
])
def test_bad_options_are_one_paragraph_errors_naming_the_option(bundles, tmp_path, args, message):
    table, _ = golden_table(bundles["iris"])
    table.to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "dir.csv").mkdir()
    before = (tmp_path / "rows.csv").read_bytes()
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.csv",
                 *[a.format(tmp=tmp_path, name=tmp_path.name) for a in args])
    assert result.exit_code in (1, 2) and message.format(tmp=tmp_path) in result.output, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.csv", "rows.csv"], "nothing written"
    assert (tmp_path / "rows.csv").read_bytes() == before


# ---------------------------------------------------------------- reading as the server would

WORDS = ["NA", "N/A", "null", "None", "nan", "EU"]  # pandas' missing words, here real categories


@pytest.fixture(scope="module")
def words_bundle(tmp_path_factory):
    """A model whose string input's categories are pandas' missing words, and whose label is the category itself."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from conftest import save_model
    from edgeport.export import export_model

    rng = np.random.default_rng(3)
    X = pd.DataFrame({"region": rng.choice(WORDS, 300), "x": rng.normal(size=300)})
    model = Pipeline([("pre", ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), ["region"])],
                                                remainder="passthrough")), ("m", LogisticRegression(C=100))])
    root = tmp_path_factory.mktemp("words")
    # the sample keeps to a word no reader takes for missing: the export reads it with pandas' defaults
    model_path, sample_path = save_model(model.fit(X, X.region), root, "words", X[X.region == "EU"].head(20))
    return export_model(model_path, root / "bundle", sample=sample_path).bundle


def test_csv_text_in_a_string_column_and_the_ids_stay_as_written(words_bundle, tmp_path):
    ids = ["00123", "9007199254740993", "9007199254740992", "1e3", "007", "5"]
    lines = ["id,region,x"] + [f"{i},{w},0.5" for i, w in zip(ids, WORDS)]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    result = cli("predict", words_bundle.path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv", "--id", "id")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert out["id"].tolist() == ids, "ids kept exactly as written"
    assert out["label"].tolist() == WORDS, "NA, null, None... are categories here, as the server reads them"
    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = cli("predict", words_bundle.path, tmp_path / "rows.csv", "--out", url, "--id", "id")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("select id, label from predictions order by rowid").fetchall() == list(zip(ids, WORDS))


def test_an_empty_cell_is_missing_in_a_string_column_and_na_words_in_a_numeric_one(bundles, tmp_path):
    churn = bundles["churn"]
    table, _ = golden_table(churn)
    table = table.head(3).astype(object)
    string = next(s.key for s in churn.inputs if s.dtype == "string" and s.nullable)
    table.loc[0, string] = None  # written as an empty cell: missing, which this column allows
    table.to_csv(tmp_path / "churn.csv", index=False)
    result = predict_file(churn.path, tmp_path / "churn.csv", str(tmp_path / "churn-out.csv"))
    assert result.predicted == 3
    iris = bundles["iris"]
    table, _ = golden_table(iris)
    table = table.head(3).astype(object)
    table.loc[1, table.columns[2]] = "NA"
    table.to_csv(tmp_path / "iris.csv", index=False)
    result = cli("predict", iris.path, tmp_path / "iris.csv", "--out", tmp_path / "out.csv", "--rejects",
                 tmp_path / "rejects.csv")
    assert result.exit_code == 0, result.output
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["row", "field", "code"]].values.tolist() == [[1, table.columns[2], "missing-value"]]


@pytest.mark.parametrize("id_column, out, clash", [
    ("label", "out.csv", "'label'"), ("confidence", "out.parquet", "'confidence'"),
    ("probability_setosa", "out.jsonl", "'probability_setosa'"), ("label", "sqlite:///{tmp}/p.db", "'label'"),
    ("model", "sqlite:///{tmp}/p.db", "'model'"), ("Version", "sqlite:///{tmp}/p.db", "'version'"),
    ("predicted_at", "sqlite:///{tmp}/p.db", "'predicted_at'"),
])
def test_an_id_named_like_an_output_column_is_refused_up_front(bundles, tmp_path, id_column, out, clash):
    bundle = bundles["iris"]
    table, _ = golden_table(bundle)
    table.insert(0, id_column, [f"f{i}" for i in range(len(table))])
    table.to_csv(tmp_path / "rows.csv", index=False)
    out = out.format(tmp=tmp_path) if "://" in out else tmp_path / out
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", out, "--id", id_column)
    assert result.exit_code == 1 and f"--id {id_column}" in result.output and clash in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"], "nothing written"


def test_a_model_column_is_a_fine_id_for_a_file(bundles, tmp_path):
    bundle = bundles["iris"]
    table, _ = golden_table(bundle)
    table.insert(0, "model", [f"m{i}" for i in range(len(table))])
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv", "--id", "model")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "out.csv")["model"].tolist() == table["model"].tolist()


# ---------------------------------------------------------------- empty chunks, ids

def churn_rows(bundle, n=None):
    table, outputs = golden_table(bundle)
    table = table.astype(object)
    table.insert(0, "customer", [f"c{i}" for i in range(len(table))])
    return (table if n is None else table.head(n)), outputs


def test_a_chunk_without_good_rows_types_the_outputs_as_real_rows_would(bundles, tmp_path):
    import pyarrow.parquet as pq

    bundle = bundles["churn"]
    table, outputs = churn_rows(bundle, 6)
    table.loc[[0, 1], "tenure_months"] = "twelve"  # the first chunk of 2: every row rejected
    table.to_csv(tmp_path / "rows.csv", index=False)
    table.head(0).to_csv(tmp_path / "header.csv", index=False)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    for out in (tmp_path / "out.parquet", url):
        result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", out, "--id", "customer", "--rejects",
                     tmp_path / "rejects.csv", "--chunk-rows", "2")
        assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "out.parquet")["label"].tolist() == outputs["label"][2:6]
    assert str(pq.read_schema(tmp_path / "out.parquet").field("label").type) == "string"
    result = cli("predict", bundle.path, tmp_path / "header.csv", "--out", tmp_path / "empty.parquet")
    assert result.exit_code == 0, result.output
    schema = pq.read_schema(tmp_path / "empty.parquet")
    assert str(schema.field("label").type) == "string" and str(schema.field("confidence").type) == "float"
    # a header-only file makes the table, typed, and a later run writes into it
    for data in ("header.csv", "rows.csv"):
        result = cli("predict", bundle.path, tmp_path / data, "--out", url, "--table", "later", "--id", "customer",
                     "--rejects", tmp_path / "rejects.csv")
        assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "p.db") as db:
        for name in ("predictions", "later"):
            types = {row[1]: row[2] for row in db.execute(f"pragma table_info({name})")}
            assert types["label"] == "VARCHAR" and types["customer"] == "VARCHAR", types
            labels = [r[0] for r in db.execute(f"select label from {name} order by customer")]
            assert labels == outputs["label"][2:6]


@pytest.mark.parametrize("out", ["out.csv", "out.parquet", "out.jsonl", "sqlite:///{tmp}/p.db"])
def test_a_missing_or_repeated_id_is_a_row_fault_for_every_output(bundles, tmp_path, out):
    bundle = bundles["churn"]
    table, outputs = churn_rows(bundle, 9)
    table.loc[1, "customer"] = None  # an empty cell
    table.loc[3, "customer"] = "c0"  # a repeat within the chunk
    table.loc[7, "customer"] = "c2"  # a repeat of an earlier chunk's id
    table.to_csv(tmp_path / "rows.csv", index=False)
    out = out.format(tmp=tmp_path) if "://" in out else tmp_path / out
    args = ("predict", bundle.path, tmp_path / "rows.csv", "--out", out, "--id", "customer", "--chunk-rows", "4")
    result = cli(*args)
    assert result.exit_code == 1 and "row 1" in result.output and "the id is missing" in result.output, result.output
    result = cli(*args, "--rejects", tmp_path / "rejects.csv")
    assert result.exit_code == 0, result.output
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["row", "code"]].values.tolist() == [[1, "missing-id"], [3, "duplicate-id"], [7, "duplicate-id"]]
    if "://" in str(out):
        with sqlite3.connect(tmp_path / "p.db") as db:
            got = db.execute("select customer, label from predictions order by rowid").fetchall()
    else:
        read = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}
        got = [tuple(r) for r in read[out.suffix](out)[["customer", "label"]].values.tolist()]
    kept = [0, 2, 4, 5, 6, 8]
    assert got == [(f"c{i}", outputs["label"][i]) for i in kept]


def test_many_ids_are_told_apart_in_little_memory():
    from edgeport.batch import SeenKeys

    seen = SeenKeys()
    rng = np.random.default_rng(0)
    hashes = rng.permutation(np.arange(10_000, dtype=np.uint64) * 7919)
    for part in np.array_split(hashes, 37):
        assert not seen.found(part).any()
        seen.add(part)
    assert seen.found(hashes).all() and not seen.found(hashes + 1).any()
    assert sum(run.nbytes for run in seen.runs) == 8 * len(hashes) and len(seen.runs) <= 8


# ---------------------------------------------------------------- models whose inputs name no columns

@pytest.fixture(scope="module")
def unnamed_matrix(bundles, tmp_path_factory):
    """iris, its input's column names taken out of the manifest: a matrix [None, 4], like a Keras Dense input."""
    import shutil

    from conftest import rehash_bundle
    from edgeport.bundle import MANIFEST, read_bundle

    path = tmp_path_factory.mktemp("unnamed") / "iris"
    shutil.copytree(bundles["iris"].path, path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["inputs"][0].pop("columns")
    (path / MANIFEST).write_text(json.dumps(manifest))
    rehash_bundle(path)
    return read_bundle(path)


def test_json_lines_rows_are_what_the_server_takes_for_a_matrix_without_column_names(unnamed_matrix, tmp_path):
    golden = unnamed_matrix.golden()
    rows = golden["rows"]
    lines = [json.dumps(r) for r in rows] + ['{"sepal length (cm)": 1}', "[1, 2]"]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("predict", unnamed_matrix.path, tmp_path / "rows.jsonl", "--out", tmp_path / "out.csv",
                 "--rejects", tmp_path / "rejects.jsonl")
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert predicted["label"].tolist() == golden["outputs"]["label"]
    rejects = pd.read_json(tmp_path / "rejects.jsonl", lines=True)
    assert rejects[["row", "code"]].values.tolist() == [[len(rows), "row-type"], [len(rows) + 1, "row-length"]]
    assert json.loads(rejects["json"][1]) == [1, 2], "the bad row as it was read"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_for_a_model_without_column_names_is_refused_up_front(unnamed_matrix, tmp_path, suffix):
    table = pd.DataFrame(unnamed_matrix.golden()["rows"], columns=list("abcd"))
    data = tmp_path / f"rows{suffix}"
    table.to_csv(data, index=False) if suffix == ".csv" else table.to_parquet(data)
    result = cli("predict", unnamed_matrix.path, data, "--out", tmp_path / "out.csv", "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 1 and "give JSON lines" in result.output and "[None, 4]" in result.output, result.output
    assert result.output.count("\n") <= 2 and sorted(p.name for p in tmp_path.iterdir()) == [data.name]


# ---------------------------------------------------------------- what a run says when it can't go on

def test_a_password_in_the_query_string_is_never_printed(bundles, tmp_path):
    from edgeport.batch_sinks import _redacted

    table, _ = golden_table(bundles["iris"])
    table.to_csv(tmp_path / "rows.csv", index=False)
    url = "postgresql+psycopg://bob:UserPW@127.0.0.1:1/db?password=S3cretPW&sslmode=disable"
    assert "S3cretPW" not in _redacted(url) and "UserPW" not in _redacted(url) and "sslmode=disable" in _redacted(url)
    pytest.importorskip("psycopg")
    result = CliRunner().invoke(app, ["predict", str(bundles["iris"].path), str(tmp_path / "rows.csv"), "--out", url])
    assert result.exit_code == 1 and "127.0.0.1" in result.output, result.output
    assert "S3cretPW" not in result.output and "UserPW" not in result.output


def test_json_values_the_server_refuses_are_row_faults(bundles, tmp_path):
    bundle = bundles["churn"]
    table, outputs = churn_rows(bundle, 3)
    rows = table.to_dict("records")
    string = next(s.key for s in bundle.inputs if s.dtype == "string")
    number = next(s.key for s in bundle.inputs if s.dtype != "string")
    lines = [json.dumps({**rows[0], string: "b\ud800x"}), json.dumps(rows[1]),
             json.dumps(rows[2]).replace(f'"{number}": {json.dumps(rows[2][number])}', f'"{number}": 1{"0" * 400}')]
    assert "0" * 400 in lines[2] and "\\ud800" in lines[0]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    for rejects in ("rejects.csv", "rejects.parquet", "rejects.jsonl"):
        result = cli("predict", bundle.path, tmp_path / "rows.jsonl", "--out", tmp_path / "out.csv", "--rejects",
                     tmp_path / rejects)
        assert result.exit_code == 0, result.output
        assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == [outputs["label"][1]]
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["row", "field", "code"]].values.tolist() == [[0, string, "type"], [2, number, "range"]]
    assert rejects[string][0] == "b\\ud800x", "the lone surrogate written escaped"


def test_rejects_in_parquet_write_whatever_each_chunk_held(bundles, tmp_path):
    bundle = bundles["iris"]
    table, _ = golden_table(bundle)
    table = table.head(4).astype(object)
    column = table.columns[0]
    table.loc[0, column] = "inf"  # read as the number inf
    table.loc[2, column] = "abc"  # read as a word
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv", "--rejects",
                 tmp_path / "rejects.parquet", "--chunk-rows", "2")
    assert result.exit_code == 0, result.output
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert rejects["row"].tolist() == [0, 2] and rejects[column].tolist() == ["inf", "abc"]


def test_a_database_run_that_stops_says_what_it_committed(bundles, tmp_path):
    bundle = bundles["churn"]
    table, _ = churn_rows(bundle)
    table.loc[len(table) - 1, "tenure_months"] = "twelve"
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", f"sqlite:///{tmp_path / 'p.db'}", "--id",
                 "customer", "--chunk-rows", "10")
    assert result.exit_code == 1, result.output
    committed = (len(table) - 1) // 10 * 10
    assert f"the {committed} rows before it were committed" in result.output and "upserts" in result.output
    assert "nothing was written" not in result.output
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("select count(*) from predictions").fetchone()[0] == committed


@pytest.mark.parametrize("content, message", [
    (b"PAR1 half a file", "is not a Parquet file this can read"),
    (b"plan\nbasic\n", "is not a Parquet file this can read"),
])
def test_a_damaged_parquet_file_is_one_paragraph(bundles, tmp_path, content, message):
    (tmp_path / "rows.parquet").write_bytes(content)
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.parquet", "--out", tmp_path / "out.csv")
    assert result.exit_code == 1 and message in result.output and "unexpected" not in result.output, result.output


def test_a_truncated_parquet_file_is_one_paragraph(bundles, tmp_path):
    table, _ = golden_table(bundles["iris"])
    table.to_parquet(tmp_path / "whole.parquet")
    whole = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "rows.parquet").write_bytes(whole[:len(whole) // 2])
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.parquet", "--out", tmp_path / "out.csv")
    assert result.exit_code == 1 and "is not a Parquet file" in result.output, result.output


def test_a_full_disk_is_one_paragraph_and_leaves_no_partial_file(bundles, tmp_path, monkeypatch):
    import errno

    from edgeport import batch_sinks

    table, _ = golden_table(bundles["iris"])
    table.to_csv(tmp_path / "rows.csv", index=False)

    def full(self, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch_sinks.FileSink, "_write", full)  # ENOSPC on the first write, as a full disk gives
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv")
    assert result.exit_code == 1 and "--out" in result.output and "the disk is full" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


@pytest.mark.parametrize("text, message", [
    ("{0},{1},{2},{3}\n1,2,3,4,5\n", "more fields than the header's 4"),
    ("{0},{1},{2},{3}\n1,2,3,4,\n", "more fields than the header's 4"),
    ("{0},{1},{2},{0}\n1,2,3,4\n", "the header names {0!r} more than once"),
])
def test_a_csv_that_does_not_match_its_header_is_refused(bundles, tmp_path, text, message):
    columns = bundles["iris"].manifest.inputs[0].columns
    (tmp_path / "rows.csv").write_text(text.format(*columns))
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.csv", "--out", tmp_path / "out.csv")
    assert result.exit_code == 1 and message.format(*columns) in result.output, result.output
    assert "Warning" not in result.output


def test_rejects_keep_data_columns_named_like_their_own_and_a_malformed_id_is_a_row_fault(bundles, tmp_path):
    bundle = bundles["churn"]
    table, outputs = churn_rows(bundle, 3)
    table.insert(1, "error", ["e0", "e1", "e2"])  # a column of the data's own, named like the rejects' reason
    rows = table.to_dict("records")
    rows[1]["customer"] = "c\ud800"
    rows[2]["tenure_months"] = "twelve"
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = cli("predict", bundle.path, tmp_path / "rows.jsonl", "--out", tmp_path / "out.csv", "--id", "customer",
                 "--rejects", tmp_path / "rejects.csv")
    assert result.exit_code == 0, result.output
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["row", "field", "code"]].values.tolist() == [[1, "customer", "type"], [2, "tenure_months", "type"]]
    assert rejects["data_error"].tolist() == ["e1", "e2"] and "twelve" in rejects["error"][1]
    assert pd.read_csv(tmp_path / "out.csv")["customer"].tolist() == ["c0"]


def test_a_table_an_earlier_run_keyed_by_integers_takes_csv_ids_as_integers(bundles, tmp_path):
    """Runs before ids were read as text made an integer key from a numeric id column: such a table goes on."""
    bundle = bundles["iris"]
    table, outputs = golden_table(bundle)
    table.insert(0, "flower", range(100, 100 + len(table)))
    table.to_csv(tmp_path / "rows.csv", index=False)
    probabilities = ", ".join(f'"probability_{c}" FLOAT' for c in bundle.manifest.classes)
    with sqlite3.connect(tmp_path / "p.db") as db:
        db.execute(f"create table scores (flower BIGINT, model VARCHAR, version VARCHAR, predicted_at DATETIME, label "
                   f"VARCHAR, {probabilities}, confidence FLOAT, primary key (flower, model, version))")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    for _ in range(2):
        result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", url, "--table", "scores", "--id", "flower")
        assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("select count(*), min(typeof(flower)), max(typeof(flower)) from scores").fetchone() == (
            len(table), "integer", "integer")
    table["flower"] = table["flower"].astype(object)
    table.loc[3, "flower"] = "A3"
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundle.path, tmp_path / "rows.csv", "--out", url, "--table", "scores", "--id", "flower")
    assert result.exit_code == 1 and "keeps its ids as integers" in result.output and "'A3'" in result.output


def test_json_lines_ids_are_kept_by_value_across_chunks(bundles, tmp_path):
    """An adversary's ids: 5 in an integer chunk and again in a mixed one (written twice, before), 9007199254740993
    beside 2.5 (rewritten as a float), and a list id (an unexpected crash). Ids are compared by value, written as
    the file has them, and a list is a bad row."""
    table, _ = golden_table(bundles["churn"])
    rows = table.head(6).to_dict(orient="records")
    ids = [5, 6, "x", 5, 9007199254740993, 2.5]
    lines = [json.dumps({"cid": i, **{k: (None if v != v else v) for k, v in row.items()}}) for i, row in zip(ids, rows)]
    lines.append(json.dumps({"cid": [1], **{k: (None if v != v else v) for k, v in rows[0].items()}}))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("predict", bundles["churn"].path, tmp_path / "rows.jsonl", "--out", tmp_path / "out.csv", "--id", "cid",
                 "--chunk-rows", "2", "--rejects", tmp_path / "bad.csv")
    assert result.exit_code == 0, result.output
    written = (tmp_path / "out.csv").read_text()
    assert "9007199254740993" in written and "e+15" not in written
    rejects = pd.read_csv(tmp_path / "bad.csv")
    assert rejects[["row", "code"]].values.tolist() == [[3, "duplicate-id"], [6, "type"]], rejects
