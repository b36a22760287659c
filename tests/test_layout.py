"""The service's floors are folders (docs/design.md, "Layout"), and these tests keep them so: the
contract (``config``, ``repository/``, ``runtimes``, ``answers``: what ``training`` imports too)
imports nothing above it; ``serving/`` (the data plane) knows nothing of HTTP or of the protocols;
``http/`` (the edge) knows no protocol and of ``serving/`` only its errors, metrics and activity;
the protocols (``protocols/``) share only ``tensors`` and own no request life cycle; no module is
over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"
CONTRACT = ("service.config", "service.repository", "service.runtimes", "service.answers")
EDGE_MAY_USE = ("service.serving.errors", "service.serving.metrics", "service.serving.activity")


def modules() -> dict[str, Path]:
    found = {}
    for path in SERVICE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every ``service...`` module ``path`` imports, at any level of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    known = modules()
    return {name for name in found if name in known}


def inside(name: str, *floors: str) -> bool:
    return any(name == floor or name.startswith(floor + ".") for floor in floors)


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_floor_imports_only_what_is_below_it(name):
    used = imports(modules()[name]) - {name, "service"}
    if inside(name, *CONTRACT):
        assert all(inside(u, *CONTRACT) for u in used), used
    elif inside(name, "service.serving"):
        assert not any(inside(u, "service.http", "service.protocols", "service.service") for u in used), used
    elif inside(name, "service.http"):
        assert not any(inside(u, "service.protocols", "service.service") for u in used), used
        assert all(not inside(u, "service.serving") or inside(u, *EDGE_MAY_USE) for u in used), used
    elif inside(name, "service.protocols"):
        others = {u for u in used if inside(u, "service.protocols")} - {"service.protocols.tensors"}
        assert not others and "service.service" not in used, used


def test_no_service_module_is_over_400_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > 400} == {}


def test_the_adapters_have_no_request_life_cycle():
    """The protocols translate; holding a version, timing and counting a request belong to the
    data plane (``service.serving.dataplane.DataPlane.infer``)."""
    for path in (SERVICE / "protocols").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for word in (".hold(", "perf_counter", "record(", "failed("):
            assert word not in text, f"{path.name} has {word}"


def test_importing_the_service_runs_no_program(tmp_path):
    """``service.service`` reads its settings at import (BentoML's decorator needs them): that is a
    read of the environment and a directory listing, no program of ours (it used to run
    ``nvidia-smi -L`` with a 10 s timeout wherever one was on the PATH: here, a stand-in)."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    fake.chmod(0o755)
    code = (
        "import sys\n"
        "started = []\n"
        "def hook(event, args):\n"
        "    if event == 'subprocess.Popen':\n"
        "        started.append(args)\n"
        "sys.addaudithook(hook)\n"
        "import service.service\n"
        "print(repr(started))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", BENTOML_DO_NOT_TRACK="true")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    started = done.stdout.strip().splitlines()[-1]
    assert "nvidia-smi" not in started, started  # (a library's ``ldconfig -p`` may remain: not ours)
