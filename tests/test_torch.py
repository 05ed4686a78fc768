"""PyTorch: tiny seeded modules saved as torch.export programs (.pt2), TorchScript and pickles, exported with
torch.onnx.export(dynamo=True); python parity against the torch model itself for each, a dynamic batch, the task
read from the model's last operator or set with --task/--classes, node, Chromium and the fallback server for one
model, and the refusals (a pickle without --allow-pickle, a state_dict, --to tfjs, a batch fixed by the model's
code, a damaged or pickle-carrying .pt2), each with its message."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import IN_CI, ExportOnce, assert_parity, iris_frame, need

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnxscript") is None:  # CI never skips
    (pytest.fail if IN_CI else pytest.skip)("the torch extra is not installed (pip install -e '.[torch]')",
                                            **({"pytrace": False} if IN_CI else {"allow_module_level": True}))

import torch  # noqa: E402 - after the extra check

runner = CliRunner()
# TorchScript is deprecated in torch 2.13 (in favour of torch.export), and still what many teams have saved
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")


class Classifier(torch.nn.Module):
    """An MLP whose forward ends in a softmax, as many do for inference."""

    def __init__(self, features=4, classes=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class Logits(Classifier):
    """The same MLP returning logits, as models trained with CrossEntropyLoss do."""

    def forward(self, x):
        return self.net(x)


class LogSoftmax(Classifier):
    def forward(self, x):
        return torch.log_softmax(self.net(x), dim=-1)


class Binary(torch.nn.Module):
    """One sigmoid unit: the probability of the positive class."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


class TwoInputs(torch.nn.Module):
    """Numbers and token ids (int64, into an Embedding) → a price."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(3 + 4 * 5, 1)

    def forward(self, numbers, ids):
        return self.head(torch.cat([numbers, self.embed(ids).flatten(1)], dim=1))


class FlattensTheBatch(torch.nn.Module):
    """A classic bug: torch.flatten(x) folds the batch into the features, so only one batch size works."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16 * 4, 3)

    def forward(self, x):
        return torch.softmax(self.linear(torch.flatten(x)).reshape(1, 3), dim=1)


def _iris():
    X, y = iris_frame()
    return X.astype(np.float32), y.to_numpy()


def _fit(model, X, y, loss, steps=150):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs, target = torch.from_numpy(np.array(X, np.float32)), torch.from_numpy(np.array(y))
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model(inputs), target).backward()
        optimizer.step()
    return model.eval()


def _save_pt2(model, args, path, dynamic=True):
    shapes = {name: {0: torch.export.Dim("batch")} for name in _arg_names(model)} if dynamic else None
    torch.export.save(torch.export.export(model, args, dynamic_shapes=shapes), str(path))
    return path


def _arg_names(model):
    import inspect

    return list(inspect.signature(model.forward).parameters)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Seeded models, each saved the ways users save them, with their samples."""
    root = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    X, y = _iris()
    X.to_csv(root / "iris.csv", index=False)
    example = (torch.from_numpy(X.to_numpy()[:8].copy()),)
    nll = lambda out, target: torch.nn.functional.nll_loss(torch.log(out + 1e-9), target)  # noqa: E731
    classifier = _fit(Classifier(), X.to_numpy(), y, nll)
    _save_pt2(classifier, example, root / "classifier.pt2")
    torch.jit.script(classifier).save(str(root / "classifier-ts.pt"))
    torch.save(classifier, root / "classifier-pickle.pt")
    torch.save(classifier.state_dict(), root / "classifier-weights.pth")
    logits = _fit(Logits(), X.to_numpy(), y, torch.nn.functional.cross_entropy)
    _save_pt2(logits, example, root / "logits.pt2")
    log_softmax = _fit(LogSoftmax(), X.to_numpy(), y, torch.nn.functional.nll_loss)
    _save_pt2(log_softmax, example, root / "log-softmax.pt2")
    binary = _fit(Binary(), X.to_numpy(), (y == 2).astype(np.float32).reshape(-1, 1),
                  torch.nn.functional.binary_cross_entropy)
    _save_pt2(binary, example, root / "binary.pt2")
    _save_pt2(classifier, example, root / "static.pt2", dynamic=False)  # traced with a fixed batch of 8
    torch.export.save(torch.export.export(FlattensTheBatch(), (torch.randn(16, 4),)), str(root / "flatten.pt2"))
    torch.save(FlattensTheBatch(), root / "flatten-pickle.pt")

    rng = np.random.default_rng(0)
    R = rng.normal(size=(120, 3)).astype(np.float32)
    target = (R @ np.array([1.5, -2.0, 0.5], np.float32) + 3).reshape(-1, 1)
    regressor = _fit(Regressor(), R, target, torch.nn.functional.mse_loss)
    np.save(root / "reg.npy", R)
    _save_pt2(regressor, (torch.from_numpy(R[:8]),), root / "regressor.pt2")
    torch.jit.script(regressor).save(str(root / "regressor-ts.pt"))
    torch.save(regressor, root / "regressor-pickle.pt")
    import joblib

    joblib.dump(regressor, root / "regressor.joblib")  # a module pickled the scikit-learn way

    two = TwoInputs().eval()
    numbers, ids = rng.normal(size=(60, 3)).astype(np.float32), rng.integers(0, 10, size=(60, 5)).astype(np.int64)
    np.savez(root / "two.npz", numbers=numbers, ids=ids)
    _save_pt2(two, (torch.from_numpy(numbers[:8]), torch.from_numpy(ids[:8])), root / "two.pt2")
    return root


@pytest.fixture(scope="module")
def exported(files, tmp_path_factory):
    """exported(model file, sample, **options) -> ExportResult, each exported once per module."""
    export = ExportOnce(tmp_path_factory.mktemp("torch-bundles"))
    return lambda model, sample, **options: export(files / model, files / sample, **options)


CASES = [("classifier.pt2", "iris.csv", {}), ("classifier-ts.pt", "iris.csv", {}),
         ("classifier-pickle.pt", "iris.csv", {"allow_pickle": True}),
         ("regressor.pt2", "reg.npy", {}), ("regressor-ts.pt", "reg.npy", {}),
         ("regressor-pickle.pt", "reg.npy", {"allow_pickle": True}),
         ("regressor.joblib", "reg.npy", {"allow_pickle": True})]


@pytest.mark.parametrize("model,sample,options", CASES, ids=[c[0] for c in CASES])
def test_exports_and_passes_python_parity(model, sample, options, exported):
    result = exported(model, sample, **options)
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert manifest["source"]["framework"] == "torch"
    width = 4 if sample == "iris.csv" else 3
    assert [i["shape"] for i in manifest["inputs"]] == [[None, width]]  # a dynamic batch, fixed features
    if model.startswith("classifier"):
        assert manifest["task"] == "classification" and manifest["classes"] == [0, 1, 2]
        assert [(o["name"], o["role"], o["shape"]) for o in manifest["outputs"]] == [
            ("probabilities", "probabilities", [None, 3])]
        assert manifest["inputs"][0]["columns"] == list(iris_frame()[0].columns)
    else:
        assert manifest["task"] == "regression" and manifest.get("classes") is None
        assert [(o["name"], o["role"]) for o in manifest["outputs"]] == [("value", "value")]


@pytest.mark.parametrize("model,rows", [("classifier.pt2", 1), ("classifier.pt2", 97), ("regressor-ts.pt", 1),
                                        ("regressor-ts.pt", 64)])
def test_the_onnx_graph_takes_any_batch(model, rows, exported, files):
    import onnxruntime as ort

    sample = "iris.csv" if model.startswith("classifier") else "reg.npy"
    bundle = exported(model, sample).bundle
    session = ort.InferenceSession(str(bundle.path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(rows).normal(size=(rows, session.get_inputs()[0].shape[1])).astype(np.float32)
    original = torch.jit.load(str(files / model)) if model.endswith("-ts.pt") else torch.export.load(
        str(files / model)).module()
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == expected.shape == (rows, expected.shape[1])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_logits_need_task_or_classes(exported, files, tmp_path):
    from edgeport.errors import SampleError
    from edgeport.export import export_model

    with pytest.raises(SampleError, match="--task classification"):
        export_model(files / "logits.pt2", tmp_path / "x", sample=files / "iris.csv")
    result = exported("logits.pt2", "iris.csv", task="classification")
    assert_parity(result.report)
    golden = result.bundle.golden()["outputs"]
    probabilities = np.asarray(golden["probabilities"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)  # the bundle's head made them
    with torch.no_grad():
        logits = torch.export.load(str(files / "logits.pt2")).module()(
            torch.tensor(result.bundle.golden()["rows"], dtype=torch.float32)).numpy()
    assert golden["label"] == logits.argmax(axis=1).tolist()  # the same class as the logits' argmax
    named = exported("logits.pt2", "iris.csv", classes=["setosa", "versicolor", "virginica"])
    assert_parity(named.report)
    assert named.bundle.manifest.task == "classification"
    assert set(named.bundle.golden()["outputs"]["label"]) <= {"setosa", "versicolor", "virginica"}
    regression = exported("logits.pt2", "iris.csv", task="regression")
    assert_parity(regression.report)
    assert [o.shape for o in regression.bundle.manifest.outputs] == [(None, 3)]


@pytest.mark.parametrize("model", ["log-softmax.pt2", "binary.pt2"])
def test_log_softmax_and_sigmoid_heads_are_classifiers(model, exported):
    result = exported(model, "iris.csv")
    assert_parity(result.report)
    manifest = result.bundle.manifest
    assert manifest.task == "classification"
    assert list(manifest.classes) == ([0, 1] if model == "binary.pt2" else [0, 1, 2])
    probabilities = np.asarray(result.bundle.golden()["outputs"]["probabilities"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)


def test_two_inputs_with_int64_token_ids(exported):
    result = exported("two.pt2", "two.npz")
    assert_parity(result.report)
    manifest = result.bundle.manifest.to_dict()
    assert manifest["layout"] == "tensors" and manifest["task"] == "regression"
    assert {i["name"]: (i["dtype"], i["shape"]) for i in manifest["inputs"]} == {
        "numbers": ("float32", [None, 3]), "ids": ("int64", [None, 5])}


def test_an_id_past_the_vocabulary_is_a_400_from_the_server_not_a_500(exported):
    """The manifest can't know an Embedding's size: the graph's Gather refuses the id, and that refusal is the
    values' fault (found by an adversarial review: it was a 500 and an 'error' in the metrics)."""
    from fastapi.testclient import TestClient

    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    result = exported("two.pt2", "two.npz")
    client = TestClient(create_app(Repository(result.bundle.path)))
    body = lambda ids: {"inputs": [{"name": "numbers", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.3]},
                                   {"name": "ids", "datatype": "INT64", "shape": [1, 5], "data": ids}]}
    assert client.post("/v2/models/two/infer", json=body([1, 2, 3, 4, 5])).status_code == 200
    refused = client.post("/v2/models/two/infer", json=body([1, 2, 3, 4, 999]))
    assert refused.status_code == 400, refused.text
    assert "vocabulary" in refused.json()["error"] and "999" in refused.json()["error"], refused.text
    assert 'outcome="error"' not in client.get("/metrics").text


def test_a_pt2_with_a_fixed_batch_is_exported_again_with_a_dynamic_one(exported):
    result = exported("static.pt2", "iris.csv")
    assert_parity(result.report)
    assert result.bundle.manifest.inputs[0].shape == (None, 4)


@pytest.mark.parametrize("model,options", [("flatten.pt2", {}), ("flatten-pickle.pt", {"allow_pickle": True})])
def test_a_model_that_fixes_the_batch_is_refused(model, options, files, tmp_path):
    from edgeport.errors import UnsupportedModelError
    from edgeport.export import export_model

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
    with pytest.raises(UnsupportedModelError, match=r"torch\.flatten\(x, 1\)") as refused:
        export_model(files / model, tmp_path / "b", sample=tmp_path / "x.npy", **options)
    assert "batch" in str(refused.value)


class TwoOutputs(Regressor):
    def forward(self, x):
        y = self.net(x)
        return y, -y


def test_wrong_class_count_and_several_outputs_are_refused(files, tmp_path):
    from edgeport.errors import SampleError, UnsupportedModelError
    from edgeport.export import export_model

    with pytest.raises(SampleError, match="--classes names 2 classes, but the model outputs 3"):
        export_model(files / "classifier.pt2", tmp_path / "a", sample=files / "iris.csv", classes=["a", "b"])
    _save_pt2(TwoOutputs().eval(), (torch.randn(8, 3),), tmp_path / "two-outputs.pt2")
    with pytest.raises(UnsupportedModelError, match="returns 2 values"):
        export_model(tmp_path / "two-outputs.pt2", tmp_path / "b", sample=files / "reg.npy")


def test_check_against_the_torch_model_itself(exported, files):
    for model, options in (("classifier.pt2", {}), ("logits.pt2", {"task": "classification"})):
        bundle = exported(model, "iris.csv", **options).bundle
        result = runner.invoke(app, ["check", str(bundle.path), "--model", str(files / model),
                                     "--data", str(files / "iris.csv")])
        assert result.exit_code == 0, result.output


def test_pickled_module_needs_allow_pickle(files, tmp_path):
    result = runner.invoke(app, ["export", str(files / "classifier-pickle.pt"), "--sample", str(files / "iris.csv"),
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "--allow-pickle" in result.output and "torch.export.save" in result.output
    assert "Traceback" not in result.output


def test_a_state_dict_is_refused_with_how_to_save_the_model(files, tmp_path):
    from edgeport.errors import ModelLoadError
    from edgeport.loading import load_model

    with pytest.raises(ModelLoadError, match="holds a state_dict") as refused:
        load_model(files / "classifier-weights.pth", allow_pickle=True)
    assert "torch.export.save" in str(refused.value)


def test_to_tfjs_is_refused_onnx_is_the_target(files, tmp_path):
    result = runner.invoke(app, ["export", str(files / "classifier.pt2"), "--sample", str(files / "iris.csv"),
                                 "--out", str(tmp_path / "b"), "--to", "tfjs"])
    assert result.exit_code == 1, result.output
    assert "ONNX is the target for PyTorch" in result.output and "--to onnx" in result.output
    assert not (tmp_path / "b").exists()


def test_a_damaged_pt2_is_a_load_error(files, tmp_path):
    from edgeport.errors import ModelLoadError
    from edgeport.loading import load_model

    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes((files / "classifier.pt2").read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="truncated.pt2"):
        load_model(truncated)
    text = tmp_path / "text.pt2"
    text.write_text("not a model\n")
    with pytest.raises(ModelLoadError, match="not a torch.export archive"):
        load_model(text)
    for name in ("classifier-ts.pt", "classifier-pickle.pt"):
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes((files / name).read_bytes()[:3000])
        with pytest.raises(ModelLoadError, match="damaged zip archive"):
            load_model(cut, allow_pickle=True)
    missing_program = tmp_path / "no-program.pt2"
    with zipfile.ZipFile(files / "classifier.pt2") as source, zipfile.ZipFile(missing_program, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("models/model.json"):
                target.writestr(item, source.read(item.filename))
    with pytest.raises(ModelLoadError, match="could not load no-program.pt2 with torch.export.load"):
        load_model(missing_program)


class _RunsCode:
    def __reduce__(self):
        return (print, ("a pickle ran code",))  # harmless here; os.system in a real attack


def test_a_pt2_carrying_a_code_running_pickle_is_refused(files, tmp_path, capsys):
    from edgeport.errors import PickleRefusedError
    from edgeport.loading import load_model

    hostile = tmp_path / "hostile.pt2"
    with zipfile.ZipFile(files / "classifier.pt2") as source, zipfile.ZipFile(hostile, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if "/data/sample_inputs/" in item.filename:  # torch.export.load falls back to a full unpickle here
                import io

                buffer = io.BytesIO()
                torch.save(((_RunsCode(),), {}), buffer)
                data = buffer.getvalue()
            target.writestr(item, data)
    with pytest.raises(PickleRefusedError, match="--allow-pickle") as refused:
        load_model(hostile)
    assert "sample_inputs" in str(refused.value)
    assert "a pickle ran code" not in capsys.readouterr().out


def _crafted(files, tmp_path, name, change):
    """classifier.pt2 with its weights config and members changed by `change(config, members)`."""
    import json

    with zipfile.ZipFile(files / "classifier.pt2") as source:
        members = {item.filename: source.read(item.filename) for item in source.infolist()}
    config_name = next(n for n in members if n.endswith("_weights_config.json"))
    config = json.loads(members[config_name])
    change(config["config"], members, config_name.rsplit("/", 1)[0])
    members[config_name] = json.dumps(config).encode()
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as target:
        for member, data in members.items():
            target.writestr(member, data)
    return path


def _runs_code() -> bytes:
    import pickle

    return pickle.dumps(_RunsCode(), protocol=2)


def _json_suffix(config, members, folder):  # the audit once skipped members ending in .json
    config["extra"] = {"path_name": "evil.json", "is_param": True, "use_pickle": True, "tensor_meta": None}
    members[f"{folder}/evil.json"] = _runs_code()


def _aotinductor_path(config, members, folder):  # ... and anything under data/aotinductor/
    config["extra"] = {"path_name": "x/data/aotinductor/evil", "is_param": True, "use_pickle": True, "tensor_meta": None}
    members[f"{folder}/x/data/aotinductor/evil"] = _runs_code()


def _legacy_format(config, members, folder):  # no archive_format: torch's pre-2.7 path retries with a full unpickle
    for name in [n for n in members if n.endswith("archive_format")]:
        del members[name]


@pytest.mark.parametrize("change", [_json_suffix, _aotinductor_path, _legacy_format])
@pytest.mark.parametrize("audit", ["on", "off"])
def test_crafted_pt2_files_run_no_code_without_allow_pickle(files, tmp_path, capsys, monkeypatch, change, audit):
    """Found by an adversarial review: where edgeport's member audit and torch's own reading of the archive
    disagreed, a .pt2 ran code. Every torch.load inside torch.export.load is now weights-only too, so each layer
    holds alone (audit off: only the weights-only load stands)."""
    import edgeport.torch_loading as torch_loading
    from edgeport.errors import ModelLoadError, PickleRefusedError
    from edgeport.loading import load_model

    if audit == "off":
        monkeypatch.setattr(torch_loading, "_refuse_unsafe_pickles", lambda path: None)
        if change is _legacy_format:
            monkeypatch.setattr(torch_loading, "_refuse_legacy_archive", lambda path: None)
    hostile = _crafted(files, tmp_path, f"{change.__name__}.pt2", change)
    with pytest.raises((PickleRefusedError, ModelLoadError)) as refused:
        load_model(hostile)
    assert "a pickle ran code" not in capsys.readouterr().out, refused.value
    if audit == "on":
        assert isinstance(refused.value, PickleRefusedError) and "--allow-pickle" in str(refused.value)


def test_missing_torch_names_the_extra(files, monkeypatch):
    from edgeport.errors import RuntimeUnavailableError
    from edgeport.loading import load_model

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"torch extra .*\[torch\]"):
        load_model(files / "classifier.pt2")


def test_cli_help_imports_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from edgeport.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['export', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'onnxscript') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.browser
@pytest.mark.parametrize("model,sample", [("classifier.pt2", "iris.csv"), ("two.pt2", "two.npz")])
def test_node_chromium_and_the_fallback_server(model, sample, exported):
    from edgeport.check import check_bundle
    from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

    need(shutil.which("node") is not None, "node is not on PATH (install Node.js 20)")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")
    runtimes = ["python", "server", "node", "browser"]
    assert_parity(check_bundle(exported(model, sample).bundle.path, runtimes), runtimes)


class _Ids32(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 3)
        self.head = torch.nn.Linear(3, 1)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(dim=1))


def test_int32_token_ids_stay_int32(tmp_path):
    from edgeport.export import export_model

    torch.manual_seed(0)
    ids = torch.randint(0, 20, (16, 4), dtype=torch.int32)
    path = _save_pt2(_Ids32().eval(), (ids,), tmp_path / "ids32.pt2")
    np.save(tmp_path / "ids.npy", np.random.RandomState(0).randint(0, 20, (40, 4)).astype(np.int32))
    result = export_model(path, tmp_path / "b", sample=tmp_path / "ids.npy", runtimes=["python", "server", "node"])
    assert_parity(result.report, runtimes=("python", "server", "node"))
    assert result.bundle.inputs[0].dtype == "int32"
