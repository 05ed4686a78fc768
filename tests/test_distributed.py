"""Dask and Spark: the same predictions as `edgeport predict` on the same file, on a real local cluster."""
from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest

from conftest import churn_data, need
from edgeport import distributed
from edgeport.batch import BatchError, predict_file
from edgeport.distributed import predict_dask, spark_predict

dd = pytest.importorskip("dask.dataframe", reason="needs the dask extra: pip install -e '.[dask]'")
pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def churn_csv(tmp_path_factory):
    """300 churn rows with a key column, two of them bad (a word for a number, a NUL in a category)."""
    frame = churn_data(n=300, seed=1)[0].astype(object)
    frame.insert(0, "customer", [f"c{i:03d}" for i in range(len(frame))])
    frame.loc[17, "tenure_months"] = "twelve"
    frame.loc[230, "plan"] = "x\x00y"
    path = tmp_path_factory.mktemp("dask") / "churn.csv"
    frame.to_csv(path, index=False)
    return path


def read_csv(path, dtype=None):
    """Several partitions, read as `edgeport predict` reads CSV: the model's string inputs as text."""
    ddf = dd.read_csv(path, blocksize=2500, dtype={"plan": str, "region": str, **(dtype or {})})
    assert ddf.npartitions >= 3
    return ddf


def test_dask_gives_edgeport_predicts_outputs_and_rejects(bundles, churn_csv, client, tmp_path):
    bundle = bundles["churn"]
    result = predict_file(bundle.path, churn_csv, str(tmp_path / "out.csv"), id_column="customer",
                          rejects=tmp_path / "rejects.csv")
    expected = pd.read_csv(tmp_path / "out.csv")
    every = predict_dask(bundle.path, read_csv(churn_csv, {"customer": str, "tenure_months": object}),
                         id_column="customer", text=True, rejects=True).compute()

    predicted = every[every.error.isna()].drop(columns="error").sort_values("customer").reset_index(drop=True)
    assert len(predicted) == result.predicted == 298
    pd.testing.assert_frame_equal(predicted, expected, check_dtype=False, check_exact=False, atol=1e-6, rtol=0)
    bad = every[every.error.notna()].sort_values("customer")
    assert bad.customer.tolist() == ["c017", "c230"]
    assert bad.label.isna().all() and bad.probability_churn.isna().all()
    assert "twelve" in bad.error.iloc[0] and "plan" in bad.error.iloc[1]


def test_without_a_key_rows_are_numbered_through_the_frame_and_a_bad_row_stops_it(bundles, churn_csv, client,
                                                                                  tmp_path):
    bundle = bundles["churn"]
    good = tmp_path / "good.csv"
    pd.read_csv(churn_csv).drop(index=[17, 230]).to_csv(good, index=False)
    predict_file(bundle.path, good, str(tmp_path / "out.parquet"))
    expected = pd.read_parquet(tmp_path / "out.parquet")
    predicted = predict_dask(bundle.path, read_csv(good), text=True).compute()
    assert predicted.row.is_monotonic_increasing  # partitions come back in order, rows numbered from 0 across them
    pd.testing.assert_frame_equal(predicted.reset_index(drop=True), expected, check_dtype=False, check_exact=True)

    # whichever partition fails first: its row is numbered through the frame, as edgeport predict numbers it
    with pytest.raises(BatchError, match=r"^row (17\b.*twelve|230\b.*U\+0000).*rejects=True"):
        predict_dask(bundle.path, read_csv(churn_csv, {"tenure_months": object}),
                     text=True).compute()


def test_each_worker_loads_the_model_once_and_again_when_the_bundle_changes(bundles, client, tmp_path):
    bundle = tmp_path / "iris"
    shutil.copytree(bundles["iris"].path, bundle)
    iris = pd.DataFrame(bundles["iris"].golden()["rows"] * 20, columns=bundles["iris"].manifest.inputs[0].columns)
    ddf = dd.from_pandas(iris, npartitions=4)
    for _ in range(2):
        predict_dask(bundle, ddf).compute()

    def loaded(path=str(bundle.resolve())):
        return sum(key[0] == path for key in distributed._MODELS)

    counts = list(client.run(loaded).values())  # per worker: 1 if it ran a partition, else 0
    assert 1 in counts and set(counts) <= {0, 1}
    (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text() + "\n")  # same files, new hash
    predict_dask(bundle, ddf).compute()
    counts = list(client.run(loaded).values())
    assert 1 in counts and set(counts) <= {0, 1}, "the old model was kept beside the new one"


def churn_batches(n=60, size=25):
    frame = churn_data(n=n, seed=2)[0]
    frame.insert(0, "customer", [f"k{i}" for i in range(n)])
    return frame, [frame.iloc[i:i + size] for i in range(0, n, size)]


def test_the_spark_function_is_a_map_over_pandas_batches(bundles, tmp_path):
    """What Spark's mapInPandas calls: the function on an iterator of pandas DataFrames, one frame out for each."""
    bundle = bundles["churn"]
    frame, batches = churn_batches()
    function, schema = spark_predict(bundle.path, "customer")
    assert schema.startswith("`customer` string, `label` string, `probability_churn` float")
    out = pd.concat(list(function(iter(batches))), ignore_index=True)
    frame.to_parquet(tmp_path / "rows.parquet")
    predict_file(bundle.path, tmp_path / "rows.parquet", str(tmp_path / "out.parquet"), id_column="customer")
    pd.testing.assert_frame_equal(out, pd.read_parquet(tmp_path / "out.parquet"), check_dtype=False, check_exact=True)
    with pytest.raises(BatchError, match="id_column"):
        spark_predict(bundle.path, None)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas", "ignore:The copy keyword is deprecated")
def test_spark_local_mode_gives_the_same_predictions(bundles, tmp_path, monkeypatch):
    need(shutil.which("java") is not None, "Spark needs Java: apt-get install default-jre-headless (make jre)")
    pyspark = pytest.importorskip("pyspark", reason="needs the spark extra: pip install -e '.[spark]'")
    from pyspark.sql import SparkSession

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this venv's, with edgeport
    bundle = bundles["churn"]
    frame, _ = churn_batches(n=120)
    frame.to_parquet(tmp_path / "rows.parquet")
    predict_file(bundle.path, tmp_path / "rows.parquet", str(tmp_path / "out.parquet"), id_column="customer")
    spark = (SparkSession.builder.master("local[2]").appName("edgeport-test").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        sdf = spark.read.parquet(str(tmp_path / "rows.parquet")).repartition(3)
        function, schema = spark_predict(bundle.path, "customer")
        out = sdf.mapInPandas(function, schema).toPandas()
    finally:
        spark.stop()
    assert pyspark.__version__
    expected = pd.read_parquet(tmp_path / "out.parquet")
    out = out.sort_values("customer").reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected.sort_values("customer").reset_index(drop=True), check_dtype=False,
                                  check_exact=True)


@pytest.mark.parametrize("rejects", [False, True])
def test_dask_predictions_write_to_parquet(bundles, churn_csv, client, tmp_path, rejects):
    """README's example: scores.to_parquet(...). The meta's text columns are a string dtype Arrow can type."""
    bundle = bundles["churn"]
    frame = pd.read_csv(churn_csv, dtype={"customer": str, "tenure_months": object})
    if not rejects:
        frame = frame.drop(index=[17, 230])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    scores = predict_dask(bundle.path, read_csv(tmp_path / "rows.csv", {"customer": str, "tenure_months": object}),
                          id_column="customer", text=True, rejects=rejects)
    scores.to_parquet(tmp_path / "scores")
    written = dd.read_parquet(tmp_path / "scores").compute().sort_values("customer").reset_index(drop=True)
    computed = scores.compute().sort_values("customer").reset_index(drop=True)
    pd.testing.assert_frame_equal(written, computed, check_dtype=False)
    assert written["label"].notna().sum() == 298
    if rejects:
        assert written["error"].notna().sum() == 2


def test_a_key_named_like_an_output_column_is_refused_up_front(bundles, churn_csv):
    bundle = bundles["churn"]
    frame = pd.read_csv(churn_csv, dtype={"customer": str}).rename(columns={"customer": "label"})
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(BatchError, match="id_column label: the output has a column 'label'"):
        predict_dask(bundle.path, ddf, id_column="label")
    with pytest.raises(BatchError, match="id_column error: .*'error'"):
        predict_dask(bundle.path, ddf.rename(columns={"label": "error"}), id_column="error", rejects=True)
    with pytest.raises(BatchError, match="id_column confidence"):
        spark_predict(bundle.path, "confidence")


def test_a_missing_key_is_a_bad_row_in_dask_too(bundles, churn_csv, client, tmp_path):
    bundle = bundles["churn"]
    frame = pd.read_csv(churn_csv, dtype={"customer": str}).head(40).drop(index=[17])
    frame.loc[5, "customer"] = None
    ddf = dd.from_pandas(frame.reset_index(drop=True), npartitions=2)
    every = predict_dask(bundle.path, ddf, id_column="customer", text=True, rejects=True).compute()
    assert every["error"].notna().sum() == 1 and "the id is missing" in every["error"].dropna().iloc[0]
    with pytest.raises(BatchError, match="the id is missing"):
        predict_dask(bundle.path, ddf, id_column="customer", text=True).compute()
