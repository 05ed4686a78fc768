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
])
def test_bad_options_are_one_paragraph_errors_naming_the_option(bundles, tmp_path, args, message):
    table, _ = golden_table(bundles["iris"])
    table.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", bundles["iris"].path, tmp_path / "rows.csv", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output


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
