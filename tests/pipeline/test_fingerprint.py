"""Cache keys: editing a model file used by the Trainer changes the Trainer's key and nothing
upstream; editing an unrelated model does not; params and inputs change keys."""
from __future__ import annotations

import shutil

import pytest

from pipeline import fingerprint as fp
from pipeline.config import load_pipeline
from pipeline.runner import Runner, compute_key
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    for pkg in fp.PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fp, "PROJECT_ROOT", tmp_path)
    fp._module_file.cache_clear()
    yield tmp_path
    fp._module_file.cache_clear()


def keys():
    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml")
    return {cid: k[0] for cid, k in Runner._keys(_Fake(p)).items()}  # keys only: no store, no tracking


class _Fake:
    def __init__(self, p):
        self.pipeline = p


def test_editing_the_trainers_model_changes_trainer_and_downstream_only(project_copy):
    before = keys()
    with open(project_copy / "models" / "signs_cnn.py", "a") as f:
        f.write("\n# an edit\n")
    fp._module_file.cache_clear()
    after = keys()
    changed = {c for c in before if before[c] != after[c]}
    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml")
    assert changed == {"signs_train"} | p.downstream("signs_train")
    assert {"signs_eval", "signs_push"} <= changed and "faces_train" not in changed and "shapes_train" not in changed
    assert before["signs_gen"] == after["signs_gen"]


def test_editing_an_unrelated_model_changes_nothing_of_the_signs_branch(project_copy):
    before = keys()
    target = project_copy / "models" / "happy.py"
    target.write_text(target.read_text() + "\n# unrelated edit\n")
    fp._module_file.cache_clear()
    after = keys()
    assert {c: before[c] for c in before if c.startswith("signs_")} == {c: after[c] for c in after if c.startswith("signs_")}


def test_editing_a_data_reader_changes_examplegen_and_everything_after(project_copy):
    before = keys()
    target = project_copy / "data" / "synthetic_signs.py"
    target.write_text(target.read_text() + "\n# edit\n")
    fp._module_file.cache_clear()
    after = keys()
    assert all(before[c] != after[c] for c in before if c.startswith("signs_"))


def test_params_and_inputs_change_the_key():
    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml")
    params = p.components["signs_train"].params
    k1 = compute_key("Trainer", params, {"examples": "a"})[0]
    k2 = compute_key("Trainer", params, {"examples": "b"})[0]
    k3 = compute_key("Trainer", params.model_copy(update={"epochs": params.epochs + 1}), {"examples": "a"})[0]
    assert len({k1, k2, k3}) == 3
    assert k1 == compute_key("Trainer", params, {"examples": "a"})[0]


def test_a_generated_source_is_a_cache_hit_on_the_second_run(tmp_path):
    """A synthetic source's key is its options and code, not the folder it writes: the folder
    appearing after the first run must not make the second run a miss. A real folder's
    files still count."""
    import yaml

    cfg = {"name": "gen-cache", "root": str(tmp_path / "root"), "components": {"gen": {
        "type": "ExampleGen", "params": {
            "source": {"format": "synthetic_faces", "path": str(tmp_path / "raw"),
                       "options": {"num_identities": 4, "images_per_identity": 3, "size": 32}},
            "image_size": [32, 32], "split_by": "identity"}}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = Runner(load_pipeline(path), show_progress=False, tracking=False).run()
    second = Runner(load_pipeline(path), show_progress=False, tracking=False).run()
    assert first.executions["gen"].status == "done" and second.executions["gen"].status == "cached"
    assert (tmp_path / "raw").is_dir()

    # the generated folder read as real identity folders: editing a file changes the key
    cfg["components"]["gen"]["params"]["source"] = {"format": "identity_folders", "path": str(tmp_path / "raw")}
    path.write_text(yaml.safe_dump(cfg))
    key = lambda: compute_key("ExampleGen", load_pipeline(path).components["gen"].params, {})[0]  # noqa: E731
    before = key()
    img = next((tmp_path / "raw").rglob("*.png"))
    img.write_bytes(img.read_bytes() + b"\0")
    assert key() != before


def test_code_closure_follows_imports_without_importing_them():
    import subprocess
    import sys

    code = ("import sys; from pipeline import fingerprint as fp; _, m = fp.code_fingerprint(['components.trainer', 'components.tasks.classification']); "
            "print(sorted(m)); print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    mods, imported = out.strip().splitlines()
    assert "'data.tfrecord'" in mods and "'models.preprocessing'" in mods and "'components.training'" in mods
    assert "tensorflow" not in mods
    assert imported == "False False"


def test_external_fingerprint_covers_files_as_pathlib_lists_them(tmp_path):
    """The os.scandir walk gives the same fingerprint as the pathlib definition it replaced
    (sorted rglob, files only, symlinked files followed, symlinked folders not entered), so
    caches keyed before the change stay valid; and it moves when a file changes."""
    import hashlib
    import os
    from pathlib import Path

    def by_pathlib(paths):
        h = hashlib.sha256()
        for p in sorted(set(paths)):
            root = Path(p)
            files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
            for f in files:
                st = f.stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    root = tmp_path / "data"
    for rel in ("a/b/1.jpg", "a-c/2.jpg", "a/3.png", ".hidden", "x/y.txt", "z/deep/er/4.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    os.symlink(root / "x", root / "linked_folder")
    os.symlink(root / "x" / "y.txt", root / "linked_file")
    os.symlink(tmp_path / "nowhere", root / "broken")
    single = tmp_path / "one.txt"
    single.write_text("1")
    before = fp.external_fingerprint([str(root), str(single)])
    assert before == by_pathlib([str(root), str(single)])
    (root / "a" / "3.png").write_bytes(b"changed, longer")
    assert fp.external_fingerprint([str(root), str(single)]) != before
