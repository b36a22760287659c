"""The BentoML model store never shadows the repository: a stale copy under the same tag is replaced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def import_model(models_dir: Path, tag: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "CONVZOO_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [sys.executable, "-m", "service.import_model", tag, "--models-dir", str(models_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_reimport_replaces_a_different_model_under_the_same_tag(exported_model, tmp_path):
    name = exported_model.parent.name
    version = exported_model.name
    tag = f"{name}:{version}"
    home = tmp_path / "bentoml_home"

    first = tmp_path / "first" / name / version
    shutil.copytree(exported_model, first)
    result = import_model(first.parents[1], tag, home)
    assert result.returncode == 0, result.stderr
    stored = home / "models" / name / version

    # Same name and version, another export (here: its metadata differs, as a re-training's would).
    second = tmp_path / "second" / name / version
    shutil.copytree(exported_model, second)
    metadata = json.loads((second / "metadata.json").read_text())
    metadata["created"] = "2000-01-01T00:00:00+00:00"
    (second / "metadata.json").write_text(json.dumps(metadata))

    result = import_model(second.parents[1], tag, home)
    assert result.returncode == 0, result.stderr
    assert "differs" in result.stderr + result.stdout
    assert json.loads((stored / "metadata.json").read_text())["created"] == metadata["created"]

    # Importing the same export again keeps the store's copy as it is.
    result = import_model(second.parents[1], tag, home)
    assert result.returncode == 0 and "differs" not in result.stderr + result.stdout
