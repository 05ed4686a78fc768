"""At least 10 estimators export and pass parity in Python at the default tolerances."""
import numpy as np
import pytest

from conftest import assert_parity, save_model
from zoo import zoo

ZOO = zoo()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_exports_and_passes_parity(name, zoo_export):
    model, sample, result = zoo_export(name)
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}  # never loosened per model
    golden = result.bundle.golden()
    # the sample's first 256 rows, then one row per nullable input with that value missing (export.missing_value_rows)
    nullable = [i for i in result.bundle.inputs if i.nullable]
    extra = len(nullable) if result.bundle.manifest.layout == "columns" else int(bool(nullable))
    assert len(golden["rows"]) == min(len(sample), 256) + extra
    # golden outputs are the ORIGINAL model's, not the exported one's
    n = min(len(sample), 256)
    head, outputs = sample.iloc[:n], {role: values[:n] for role, values in golden["outputs"].items()}
    if manifest["task"] == "classification":
        assert [str(v) for v in outputs["label"]] == [str(v) for v in model.predict(head)]
        if hasattr(model, "predict_proba"):
            np.testing.assert_allclose(outputs["probabilities"], model.predict_proba(head), rtol=0, atol=1e-12)
        else:  # a label only (LinearSVC): decision scores are no probabilities, so no output claims they are
            assert "probabilities" not in outputs and [o.role for o in result.bundle.outputs] == ["label"]
    else:
        np.testing.assert_allclose(np.ravel(outputs["value"]), model.predict(head), rtol=1e-12)


def test_mixed_pipeline_has_one_input_per_column_with_categories(zoo_export):
    _, sample, result = zoo_export("mixed-churn-pipeline")
    assert sample.isna().any().any(), "the churn sample must have missing numbers"
    manifest = result.bundle.manifest.to_dict()
    by_name = {i["name"]: i for i in manifest["inputs"]}
    assert set(by_name) == set(sample.columns)
    assert by_name["plan"]["dtype"] == "string"
    assert by_name["plan"]["categories"] == sorted(sample["plan"].unique())
    assert by_name["tenure_months"]["dtype"] in ("float32", "float64")
    assert manifest["feature_stats"]["plan"]["frequencies"] == sample["plan"].value_counts().to_dict()
    assert manifest["feature_stats"]["monthly_charges"]["missing"] == int(sample["monthly_charges"].isna().sum())


def test_matrix_sample_from_npy_and_parquet(tmp_path):
    from edgeport.export import export_model

    model, sample = ZOO["random-forest"]
    model_path, _ = save_model(model, tmp_path, "rf", sample)
    parquet = tmp_path / "sample.parquet"
    sample.to_parquet(parquet)
    result = export_model(model_path, tmp_path / "pq", sample=parquet)
    assert_parity(result.report)
    assert list(result.bundle.inputs[0].columns) == list(sample.columns)
    npy = tmp_path / "sample.npy"
    np.save(npy, sample.to_numpy())
    assert_parity(export_model(model_path, tmp_path / "npy", sample=npy).report)
