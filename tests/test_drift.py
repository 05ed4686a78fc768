"""Drift against the training data: the manifest's bins, PSI, sketches, and `edgeport drift` (table, JSON, HTML,
exit 4 on drift)."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import churn_data, rehash_bundle, save_model
from edgeport.cli import app
from edgeport.errors import SampleError

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    """A churn bundle exported on 400 rows (seed 0), and 3000 live rows from the same process (seed 1)."""
    from edgeport.examples.churn import build_pipeline
    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("drift")
    frame, target = churn_data(n=600, seed=0)
    model, sample = save_model(build_pipeline().fit(frame, target), root, "churn", frame.head(400))
    bundle = export_model(model, root / "bundle", sample=sample).bundle
    live, _ = churn_data(n=3000, seed=1)
    return bundle, frame.head(400), live, root


def write(frame, path):
    frame.to_csv(path, index=False)
    return path


def report_of(result, path):
    assert "Traceback" not in result.output, result.output
    return {f["name"]: f for f in json.loads(path.read_text())["features"]}


def test_the_manifest_records_quantile_bins_of_the_sample(churn):
    bundle, sample, _, _ = churn
    for column in ("tenure_months", "monthly_charges", "support_calls"):
        bins = bundle.manifest.feature_stats[column]["bins"]
        edges, counts, values = np.array(bins["edges"]), bins["counts"], sample[column].dropna().to_numpy()
        assert np.all(np.diff(edges) > 0) and 2 <= len(edges) <= 11
        if len(np.unique(values)) > 10:
            assert edges[0] == values.min() and edges[-1] == values.max()
        else:  # tied values (support_calls: 0 to 4): buckets below the least, at the greatest and above it too
            assert edges[0] == np.nextafter(values.min(), -np.inf) and edges[-2] == np.nextafter(values.max(), np.inf)
        expected = [int(((values >= a) & (values < b)).sum()) for a, b in zip(edges[:-2], edges[1:-1])]
        expected.append(int((values >= edges[-2]).sum()))  # the last bin is closed on the right
        assert counts == expected and sum(counts) == len(values)
    assert "bins" not in bundle.manifest.feature_stats["plan"]


def test_values_outside_the_edges_fall_in_the_first_and_last_bins():
    from edgeport.drift import Distribution

    d = Distribution("x", "numeric", edges=(0.0, 1.0, 2.0, 3.0))
    d.add_values([-5, 0, 0.99, 1, 2.5, 3, 7, None, float("nan"), "text"])
    assert d.counts.tolist() == [3, 1, 3, 3]  # [0, 1), [1, 2), [2, 3], missing


def test_psi_floors_empty_buckets_at_epsilon():
    from edgeport.drift import EPSILON, Distribution, psi

    training = Distribution("x", "numeric", edges=(0.0, 1.0, 2.0), counts=[50, 50, 0])
    live = Distribution("x", "numeric", edges=(0.0, 1.0, 2.0), counts=[100, 0, 0])
    expected = (1 - 0.5) * math.log(1 / 0.5) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert psi(training, live) == pytest.approx(expected)
    assert psi(training, training) == 0.0
    assert psi(training, live.empty()) is None


def test_the_same_distribution_is_no_drift(churn, tmp_path):
    bundle, _, live, _ = churn
    result = run("drift", bundle.path, "--data", write(live, tmp_path / "live.csv"), "--json", tmp_path / "r.json",
                 "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    features = report_of(result, tmp_path / "r.json")
    assert sorted(features) == sorted(FEATURES)
    assert all(f["verdict"] == "ok" and f["psi"] < 0.1 for f in features.values()), features
    confidence = json.loads((tmp_path / "r.json").read_text())["confidence"]
    assert confidence["verdict"] == "ok" and confidence["psi"] < 0.1
    assert "no drift" in result.output and "monthly_charges" in result.output


def test_one_shifted_numeric_feature_drifts_alone_and_exits_4(churn, tmp_path):
    bundle, _, live, _ = churn
    shifted = live.assign(monthly_charges=live.monthly_charges + 3 * bundle.manifest.feature_stats["monthly_charges"]["std"])
    result = run("drift", bundle.path, "--data", write(shifted, tmp_path / "live.csv"), "--json", tmp_path / "r.json")
    assert result.exit_code == 4, result.output
    features = report_of(result, tmp_path / "r.json")
    assert features["monthly_charges"]["psi"] > 0.2 and features["monthly_charges"]["verdict"] == "drift"
    assert all(f["psi"] < 0.2 for name, f in features.items() if name != "monthly_charges"), features
    error = result.output.split("drift: ")[1]
    assert "monthly_charges" in error and not any(name in error for name in FEATURES if name != "monthly_charges")


def test_a_category_shift_is_detected(churn, tmp_path):
    bundle, _, live, _ = churn
    result = run("drift", bundle.path, "--data", write(live.assign(plan="premium"), tmp_path / "live.csv"),
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 4, result.output
    features = report_of(result, tmp_path / "r.json")
    assert features["plan"]["verdict"] == "drift" and features["region"]["verdict"] == "ok"
    assert features["plan"]["live"][features["plan"]["buckets"].index("premium")] == len(live)


def test_thresholds_per_feature_and_for_the_confidence(churn, tmp_path):
    bundle, _, live, _ = churn
    data = write(live.assign(plan="premium"), tmp_path / "live.csv")
    result = run("drift", bundle.path, "--data", data, "--threshold-for", "plan=50", "--threshold-for", "confidence=50")
    assert result.exit_code == 0, result.output
    assert run("drift", bundle.path, "--data", data, "--threshold", "50").exit_code == 0
    assert run("drift", bundle.path, "--data", data, "--threshold-for", "region=50").exit_code == 4


def test_an_old_manifest_without_bins_is_unknown_not_an_error(churn, tmp_path):
    bundle, _, live, _ = churn
    old = shutil.copytree(bundle.path, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    for stats in manifest["feature_stats"].values():
        stats.pop("bins", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    rehash_bundle(old)
    result = run("drift", old, "--data", write(live, tmp_path / "live.csv"), "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    features = report_of(result, tmp_path / "r.json")
    assert features["tenure_months"]["verdict"] == "unknown" and features["tenure_months"]["psi"] is None
    assert "re-export" in features["tenure_months"]["reason"]
    assert features["plan"]["verdict"] == "ok"
    assert re.search(r"tenure_months .*unknown: the manifest has no bins", result.output)


def test_the_html_page_has_a_panel_per_feature_and_nothing_from_elsewhere(churn, tmp_path):
    bundle, _, live, _ = churn
    shifted = live.assign(tenure_months=live.tenure_months + 100)
    result = run("drift", bundle.path, "--data", write(shifted, tmp_path / "live.csv"), "--html", tmp_path / "r.html")
    assert result.exit_code == 4, result.output
    page = (tmp_path / "r.html").read_text()
    panels = re.findall(r'<section class="panel (\w+)" data-feature="([^"]+)">', page)
    verdicts = dict((name, verdict) for verdict, name in panels)
    assert verdicts["tenure_months"] == "drift"
    # drifted features first, then the rest in the manifest's order
    assert [name for _, name in panels] == sorted([*FEATURES, "confidence"], key=lambda n: verdicts[n] != "drift")
    assert panels[0] == ("drift", "tenure_months")
    assert page.count("<svg") == len(panels)
    assert not re.search(r"https?:|//[a-z]|<script|<link|src=", page, re.IGNORECASE)


def test_sketches_count_like_values_and_bad_ones_add_nothing(churn):
    from edgeport.drift import Profile, compare

    bundle, _, live, _ = churn
    training = Profile.training(bundle)
    from_rows = training.empty()
    from_rows.add_table(live)
    sketch = json.loads(json.dumps(from_rows.to_sketch()))  # what a browser would send, through JSON
    assert "tenure_months" in sketch["features"] and not any(isinstance(v, list) and len(v) > 20
                                                              for v in sketch["features"].values())
    halves = training.empty(), training.empty()
    halves[0].add_table(live.iloc[:1000])
    halves[1].add_table(live.iloc[1000:])
    from_sketch = training.empty()
    from_sketch.add_sketch(halves[0].merge(halves[1]).to_sketch())
    for name in FEATURES:
        assert from_sketch.features[name].counts.tolist() == from_rows.features[name].counts.tolist(), name
    assert compare(training, from_sketch).features[0].psi == compare(training, from_rows).features[0].psi

    before = from_sketch.features["plan"].counts.tolist()
    for bad, field in (({"features": {"plan": {"counts": {"gold": 1}}}}, "gold"),
                       ({"features": {"tenure_months": {"counts": [1, 2]}}}, "tenure_months"),
                       ({"features": {"plan": {"counts": {}, "missing": -1}}}, "missing"),
                       ({"features": {"plan": {"counts": {"basic": 1}}, "age": {}}}, "age")):
        with pytest.raises(SampleError, match=field):
            from_sketch.add_sketch(bad)
    assert from_sketch.features["plan"].counts.tolist() == before


@pytest.mark.parametrize("args, code, message", [
    (["--threshold-for", "salary=0.3"], 2, "salary"),
    (["--threshold-for", "plan"], 2, "COL=X"),
    (["--threshold-for", "plan=high"], 2, "plan=high"),
    (["--threshold", "0"], 2, "--threshold"),
])
def test_bad_options_are_one_paragraph_naming_the_field(churn, tmp_path, args, code, message):
    bundle, _, live, _ = churn
    result = run("drift", bundle.path, "--data", write(live, tmp_path / "live.csv"), *args)
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_missing_column_is_named(churn, tmp_path):
    bundle, _, live, _ = churn
    result = run("drift", bundle.path, "--data", write(live.drop(columns="region"), tmp_path / "live.csv"))
    assert result.exit_code == 1 and 'no column "region"' in result.output, result.output
    assert "Traceback" not in result.output


def test_a_few_rows_are_not_a_verdict_and_the_open_ended_buckets_say_so(churn, tmp_path):
    """Ten training rows scored as live: every PSI is large by chance, so below --min-rows the verdict is unknown
    (exit 0, saying why); and a value past training's range counts in a bucket labelled open-ended."""
    bundle, _, live, _ = churn
    few = run("drift", bundle.path, "--data", write(live.head(10), tmp_path / "few.csv"), "--json", tmp_path / "f.json")
    assert few.exit_code == 0, few.output
    features = report_of(few, tmp_path / "f.json")
    assert {f["verdict"] for f in features.values()} == {"unknown"}
    assert all("too few" in f["reason"] for f in features.values() if f["psi"] is not None)
    assert "too few" in few.output
    shifted = live.assign(tenure_months=live.tenure_months + 1000)
    result = run("drift", bundle.path, "--data", write(shifted, tmp_path / "far.csv"), "--json", tmp_path / "r.json")
    tenure = report_of(result, tmp_path / "r.json")["tenure_months"]
    assert tenure["buckets"][0].startswith("< ") and tenure["buckets"][-2].startswith(">= ")
    assert tenure["live"][-2] == int(shifted.tenure_months.notna().sum())


def test_a_column_of_tied_values_still_shows_drift(churn, tmp_path):
    """An adversary's column, 90% zeros (and a constant one): the quantiles collapsed to one bucket, so a live mean
    moving from 0.2 to 100 was PSI 0. Values above training's greatest now have a bucket of their own."""
    from edgeport.drift import Distribution, numeric_bins, psi

    for training_values, live_values in ((np.r_[np.zeros(90), np.linspace(0.1, 4, 10)], np.full(100, 100.0)),
                                         (np.full(50, 7.0), np.full(50, -1000.0)), (np.full(50, 7.0), np.full(50, 8.0))):
        bins = numeric_bins(training_values)
        training = Distribution("x", "numeric", edges=tuple(bins["edges"]), counts=[*bins["counts"], 0])
        live = training.empty()
        live.add_values(live_values)
        assert psi(training, live) > 1, (bins, live.counts)
        same = training.empty()
        same.add_values(training_values)
        assert psi(training, same) < 0.01
