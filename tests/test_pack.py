"""edgeport pack: a bundle as an npm package, its types checked by the real tsc and its index.js run by Node."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from conftest import REPO, IRIS_NAMES, need
from edgeport.bundle import GOLDEN, MANIFEST, InputSpec, OutputSpec, read_bundle
from edgeport.errors import BundleError
from edgeport.pack import fetched_files, index_d_ts, index_js, pack, package_name, package_version

runner = CliRunner()
WEB_DEMO = REPO / "web_demo"
TSC = WEB_DEMO / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="module")
def packed(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    return {name: pack(bundle.path, root / name) for name, bundle in bundles.items()}


@pytest.fixture(scope="module")
def project(packed, bundles, tmp_path_factory):
    """A JS project with each model installed from the tarball `npm pack` made, the client and onnxruntime-web
    linked from web_demo, and a third package holding only the types generated for a tensors-layout regressor."""
    need(shutil.which("npm") is not None and shutil.which("node") is not None, "node and npm are not on PATH")
    root = tmp_path_factory.mktemp("project")
    modules = root / "node_modules"
    modules.mkdir()
    (modules / "edgeport-client").symlink_to(WEB_DEMO / "client", target_is_directory=True)
    if (WEB_DEMO / "node_modules" / "onnxruntime-web").is_dir():
        (modules / "onnxruntime-web").symlink_to(WEB_DEMO / "node_modules" / "onnxruntime-web", target_is_directory=True)
    tarballs = {}
    for name, result in packed.items():
        run = subprocess.run(["npm", "pack", "--pack-destination", str(root), "--json"], cwd=result.path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        tarballs[name] = root / json.loads(run.stdout)[0]["filename"]
        with tarfile.open(tarballs[name]) as archive:  # what `npm install ./x.tgz` unpacks
            archive.extractall(root / "unpacked" / name, filter="data")
        (root / "unpacked" / name / "package").rename(modules / result.name)
    synthetic = modules / "synthetic"
    synthetic.mkdir()
    (synthetic / "package.json").write_text(json.dumps({"name": "synthetic", "type": "module", "types": "./index.d.ts"}))
    (synthetic / "index.d.ts").write_text(index_d_ts(tensors_regressor(bundles["churn"].manifest)))
    return root, tarballs


def tensors_regressor(manifest):
    """A manifest of another shape than the exported ones: two named tensor inputs (one nullable, one with number
    categories), a regressor with three targets. Only its types are generated; nothing runs it."""
    return replace(manifest, layout="tensors", task="regression", classes=None,
                   inputs=(InputSpec("image", "float32", (None, 2, 2)),
                           InputSpec("level", "int64", (None, 1), nullable=True, categories=(1, 2, 3))),
                   outputs=(OutputSpec("value", "float32", (None, 3), "value"),))


def tsc(root: Path, *files: str) -> subprocess.CompletedProcess:
    need(TSC.is_file(), "typescript is not installed in web_demo (run make setup)")
    (root / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
                            "moduleResolution": "bundler", "lib": ["es2022", "dom"], "types": [], "skipLibCheck": False},
        "files": list(files)}))
    return subprocess.run([str(TSC), "-p", str(root)], cwd=root, capture_output=True, text=True, timeout=300)


def test_pack_writes_the_bundle_the_manifest_inline_and_a_url_per_fetched_file(bundles, packed):
    bundle, result = bundles["churn"], packed["churn"]
    assert (result.name, result.version, result.assets) == ("churn", "1.0.0", ("model.onnx",))
    out = result.path
    shipped = sorted(p.relative_to(out / "bundle").as_posix() for p in (out / "bundle").rglob("*") if p.is_file())
    assert shipped == sorted([MANIFEST, *(f.path for f in bundle.manifest.files)])
    for entry in bundle.manifest.files:
        assert (out / "bundle" / entry.path).read_bytes() == (bundle.path / entry.path).read_bytes()
    assert read_bundle(out / "bundle").manifest == bundle.manifest  # the copy is a bundle that verifies

    source = (out / "index.js").read_text()
    assert source.startswith("// churn version 1") and 'import { loadModel } from "edgeport-client";' in source
    inline = re.search(r"^export const manifest = (\{.*?^\});$", source, re.S | re.M)
    assert inline and json.loads(inline[1]) == bundle.manifest.to_dict()
    assert re.findall(r"new URL\(([^,]+), import\.meta\.url\)", source) == ['"./bundle/model.onnx"']
    assert "fetch(" not in source and "manifest.json" not in source

    package = json.loads((out / "package.json").read_text())
    assert {k: package[k] for k in ("name", "version", "type", "types", "sideEffects", "peerDependencies")} == {
        "name": "churn", "version": "1.0.0", "type": "module", "types": "./index.d.ts", "sideEffects": False,
        "peerDependencies": {"edgeport-client": "^0.1.0"}}
    assert package["exports"]["."] == {"types": "./index.d.ts", "default": "./index.js"}
    assert "churn" in package["description"] and "classification" in package["description"]
    assert "npm install ./churn-1.0.0.tgz ./edgeport-client-0.1.0.tgz onnxruntime-web@" in (out / "README.md").read_text()


def test_the_generated_types(packed):
    churn = (packed["churn"].path / "index.d.ts").read_text()
    assert '"plan": "basic" | "premium" | "standard" | null;' in churn
    assert '"tenure_months": number | null;' in churn
    assert 'export type Label = "churn" | "stay";' in churn
    iris = (packed["iris"].path / "index.d.ts").read_text()
    assert '"sepal length (cm)": number;' in iris and "| readonly [number, number, number, number];" in iris


def test_npm_pack_makes_a_tarball_with_the_model_and_its_module(project, packed):
    _, tarballs = project
    with tarfile.open(tarballs["churn"]) as archive:
        names = set(archive.getnames())
    assert {"package/package.json", "package/index.js", "package/index.d.ts", "package/README.md",
            "package/bundle/model.onnx", "package/bundle/manifest.json", "package/bundle/golden.json"} <= names


def test_typescript_accepts_rows_the_model_takes_and_refuses_the_rest(project, bundles):
    root, _ = project
    churn_classes, iris_classes = (" | ".join(json.dumps(c) for c in bundles[n].manifest.classes) for n in ("churn", "iris"))
    (root / "good.ts").write_text(f"""
import {{ load, type Prediction, type Row }} from 'churn';
import * as iris from 'iris';
import type {{ Model as Regressor }} from 'synthetic';

export async function usage(regressor: Regressor): Promise<void> {{
  const model = await load({{ fallbackUrl: null, timeoutMs: 500 }});
  const rows: Row[] = [{{ tenure_months: 12, monthly_charges: null, support_calls: 1, plan: 'basic', region: 'north' }}];
  const [p]: Prediction[] = await model.predict(rows);
  const label: {churn_classes} = p.label;
  const confidence: number = p.confidence;
  const servedBy: 'browser' | 'server' = p.served_by;
  const flowers = await (await iris.load()).predict([[5.1, 3.5, 1.4, 0.2],
    {{ 'sepal length (cm)': 5.1, 'sepal width (cm)': 3.5, 'petal length (cm)': 1.4, 'petal width (cm)': 0.2 }}]);
  const species: {iris_classes} = flowers[0].label;
  const [r] = await regressor.predict([{{ image: [[0, 1], [2, 3]], level: [null] }}, {{ image: [0, 1, 2, 3], level: [2] }}]);
  const values: number[] = r.value;
  void label; void confidence; void servedBy; void species; void values;
}}
""")
    result = tsc(root, "good.ts")
    assert result.returncode == 0, result.stdout + result.stderr

    mistakes = {
        "nope.ts": ("const m = await (await import('churn')).load();\nawait m.predict([{ nope: 'x' }]);\n",
                    "'nope' does not exist in type 'Row'"),
        "category.ts": ("import { load } from 'churn';\nawait (await load()).predict([{ tenure_months: 1, "
                        "monthly_charges: 1, support_calls: 1, plan: 'gold', region: 'north' }]);\n",
                        "Type '\"gold\"' is not assignable"),
        "missing.ts": ("import { load } from 'churn';\nawait (await load()).predict([{ tenure_months: 1 }]);\n",
                       "monthly_charges"),
        "label.ts": (f"import {{ load }} from 'iris';\nconst [p] = await (await load()).predict([[1, 2, 3, 4]]);\n"
                     f"const l: {json.dumps(bundles['iris'].manifest.classes[0])} = p.label;\n",
                     "is not assignable to type"),
        "width.ts": ("import { load } from 'iris';\nawait (await load()).predict([[1, 2, 3]]);\n",
                     "is not assignable to type"),
        "tensor.ts": ("import type { Model } from 'synthetic';\n"
                      "export const f = (m: Model) => m.predict([{ image: 'x', level: 4 }]);\n",
                      "is not assignable to type"),
        "no_label.ts": ("import type { Prediction } from 'synthetic';\nexport const f = (p: Prediction) => p.label;\n",
                        "Property 'label' does not exist"),
    }
    for file, (code, _) in mistakes.items():
        (root / file).write_text(code + "export {};\n")
    result = tsc(root, *mistakes)
    assert result.returncode != 0, result.stdout
    errors = {file: [line for line in result.stdout.splitlines() if line.startswith(f"{file}(")] for file in mistakes}
    for file, (_, expected) in mistakes.items():
        assert errors[file] and any(expected in line for line in errors[file]), (file, result.stdout)


def test_node_loads_the_installed_package_and_matches_the_golden_outputs(project, bundles, packed):
    need((WEB_DEMO / "node_modules" / "onnxruntime-web" / "package.json").is_file(),
         "web_demo/node_modules is missing (run make setup)")
    root, _ = project
    bundle = bundles["churn"]
    golden = bundle.golden()
    (root / "rows.json").write_text(json.dumps(golden["rows"]))
    (root / "run.mjs").write_text(
        "import { readFile } from 'node:fs/promises';\nimport { load } from 'churn';\n"
        "const model = await load({ fallbackUrl: null });\n"
        "const results = await model.predict(JSON.parse(await readFile('rows.json', 'utf8')));\n"
        "await model.release();\nprocess.stdout.write(JSON.stringify(results));\n")
    run = subprocess.run(["node", "run.mjs"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert {r["served_by"] for r in results} == {"browser"}
    assert [r["label"] for r in results] == golden["outputs"]["label"]
    tolerance = bundle.manifest.tolerance
    np.testing.assert_allclose([r["probabilities"] for r in results], golden["outputs"]["probabilities"],
                               atol=tolerance["atol"], rtol=tolerance["rtol"])


def test_cli_pack(bundles, tmp_path):
    result = runner.invoke(app, ["pack", str(bundles["iris"].path), "--out", str(tmp_path / "pkg"),
                                 "--name", "@acme/iris-model", "--version", "2.1"])
    assert result.exit_code == 0, result.output
    assert "@acme/iris-model@2.1.0" in result.output
    package = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert (package["name"], package["version"]) == ("@acme/iris-model", "2.1.0")


def assert_refused(args, *fragments, code=1):
    result = runner.invoke(app, ["pack", *map(str, args)])
    assert result.exit_code == code, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in message, message


def test_a_tampered_bundle_is_refused_naming_the_file(bundles, tmp_path):
    copy = shutil.copytree(bundles["churn"].path, tmp_path / "bundle")
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    assert_refused([copy, "--out", tmp_path / "pkg"], "model.onnx", "changed after export")
    assert not (tmp_path / "pkg").exists()


def test_an_unverified_bundle_is_refused_unless_allowed(bundles, tmp_path):
    copy = shutil.copytree(bundles["churn"].path, tmp_path / "bundle")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["parity"]["passed"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert_refused([copy, "--out", tmp_path / "pkg"], "did not pass its parity check", "--allow-unverified")
    result = runner.invoke(app, ["pack", str(copy), "--out", str(tmp_path / "pkg"), "--allow-unverified"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["Churn", "_churn", "churn model", "@acme/", "edgeport-client", "a" * 215])
def test_a_bad_name_is_refused_naming_the_option(bundles, tmp_path, name):
    assert_refused([bundles["churn"].path, "--out", tmp_path / "pkg", "--name", name], "--name", repr(name))
    assert not (tmp_path / "pkg").exists()


def test_a_version_that_is_no_semver_is_refused(bundles, tmp_path):
    assert_refused([bundles["churn"].path, "--out", tmp_path / "pkg", "--version", "2024-06-01"], "--version", "semver")


def test_out_over_other_files_is_refused_even_with_force(bundles, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_refused([bundles["churn"].path, "--out", out], "--force", "non-empty")
    assert_refused([bundles["churn"].path, "--out", out, "--force"], "notes.txt")
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_pack_force_replaces_a_package_it_made_but_not_one_with_a_file_added(bundles, tmp_path):
    out = tmp_path / "pkg"
    first = pack(bundles["churn"].path, out)
    assert_refused([bundles["iris"].path, "--out", out], "--force", "non-empty")
    assert pack(bundles["iris"].path, out, force=True).name == "iris" != first.name
    assert json.loads((out / "package.json").read_text())["name"] == "iris"
    (out / "mine.js").write_text("// mine")
    assert_refused([bundles["churn"].path, "--out", out, "--force"], "mine.js")
    assert (out / "mine.js").is_file()


def test_out_inside_the_bundle_is_refused(bundles):
    assert_refused([bundles["churn"].path, "--out", bundles["churn"].path / "pkg"], "inside the bundle")
    assert not (bundles["churn"].path / "pkg").exists()


def test_package_names_and_versions():
    assert package_name("Churn Model v2!") == "churn-model-v2"
    assert package_name("__iris.") == "iris"
    with pytest.raises(BundleError, match="--name"):
        package_name("???")
    assert [package_version(v) for v in ("3", "1.2", "v2.0.1", "07", "1.0.0-rc.1+build.5")] == [
        "3.0.0", "1.2.0", "2.0.1", "7.0.0", "1.0.0-rc.1+build.5"]
    with pytest.raises(BundleError, match="the bundle's version 'baseline'.*--version"):
        package_version("baseline")


def test_a_tfjs_bundle_references_its_weight_shards_and_runtime(bundles):
    manifest = replace(bundles["churn"].manifest, format="tfjs-graph", model_file="tfjs/model.json")
    model_json = {"weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": []}]}
    files = {"tfjs/model.json": json.dumps(model_json).encode(), "tfjs/group1-shard1of2.bin": b"",
             "tfjs/group1-shard2of2.bin": b"", "model.onnx": b"", GOLDEN: b""}
    assets = fetched_files(manifest, files)
    assert assets == ("tfjs/model.json", "tfjs/group1-shard1of2.bin", "tfjs/group1-shard2of2.bin")
    source = index_js(manifest, assets)
    assert 'import { tfjsRuntime } from "edgeport-client/tfjs";' in source
    assert "runtimes: [...(options.runtimes ?? []), tfjsRuntime]" in source
    assert source.count("import.meta.url") == 3 and "./bundle/model.onnx" not in source  # the server's twin
    del files["tfjs/group1-shard2of2.bin"]
    with pytest.raises(BundleError, match="tfjs/group1-shard2of2.bin"):
        fetched_files(manifest, files)
