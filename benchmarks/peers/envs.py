"""The peers' virtual environments: one per peer, made once, by the benchmark itself.

    python -m benchmarks.peers.envs triton mlserver kserve ray     # build them ahead (or: all)

``ensure_env(name)`` returns the Python of ``.venv/peers/<name>/``, made on first use from
``benchmarks/peers/requirements/<name>.txt`` (pinned), with this checkout installed into it without
its dependencies (``pip install --no-deps -e <repo>``), so the peer imports convzoo's own code
(``service.runtimes``, ``service.serving.images``) and none of convzoo's pins: they conflict
(PyTriton needs NumPy < 2, convzoo NumPy >= 2).

Idempotent: a stamp file in the environment records the hash of the requirements, the Python and
the checkout; an environment whose stamp matches is used as it is, any other is made anew. Two
processes never build the same environment at once (a lock file). pip's output goes to
``<env>/pip.log``; a failure raises ``EnvError`` naming that log and its last lines.

Why under ``.venv/``: it is gitignored and skipped by ruff and by the tests that read every
source file of the checkout (tests/test_readme.py skips any path with a ``.venv`` part), which
``benchmarks/.venvs/`` would not be. ``CONVZOO_PEER_ENVS`` moves them elsewhere.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
STAMP = ".convzoo-stamp"
LOG = "pip.log"
PIP_TIMEOUT_S = 1800


class EnvError(RuntimeError):
    """A peer's environment could not be made; the message names pip's log."""


def envs_root() -> Path:
    """Where the environments live: ``$CONVZOO_PEER_ENVS``, else ``<repo>/.venv/peers``."""
    return Path(os.environ.get("CONVZOO_PEER_ENVS") or REPO / ".venv" / "peers")


def available() -> list[str]:
    """The environments there are requirements for (``requirements/<name>.txt``)."""
    return sorted(path.stem for path in REQUIREMENTS.glob("*.txt"))


def requirements_file(name: str) -> Path:
    path = REQUIREMENTS / f"{name}.txt"
    if not path.is_file():
        raise EnvError(
            f"no requirements for a peer environment {name!r}; there are: {', '.join(available())}"
        )
    return path


def env_dir(name: str) -> Path:
    return envs_root() / name


def python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


def stamp_text(name: str) -> str:
    """What an up-to-date environment's stamp says: its requirements, Python and checkout."""
    digest = hashlib.sha256(requirements_file(name).read_bytes()).hexdigest()
    version = ".".join(map(str, sys.version_info[:3]))
    return f"requirements sha256 {digest}\npython {version}\ncheckout {REPO}\n"


def is_current(name: str) -> bool:
    folder = env_dir(name)
    stamp = folder / STAMP
    return (
        python_of(folder).exists()
        and stamp.is_file()
        and stamp.read_text(encoding="utf-8") == stamp_text(name)
    )


def ensure_env(name: str, *, quiet: bool = False) -> Path:
    """The Python of the peer environment ``name``, made first if absent or out of date."""
    requirements_file(name)
    if is_current(name):
        return python_of(env_dir(name))
    root = envs_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then look again
        if not is_current(name):
            build(name, quiet=quiet)
    return python_of(env_dir(name))


def build(name: str, *, quiet: bool = False) -> None:
    """Make the environment ``name`` anew (module docstring)."""
    folder = env_dir(name)
    say = (lambda *_: None) if quiet else (lambda text: print(f"peers: {text}", file=sys.stderr, flush=True))
    if folder.exists():
        say(f"{name}: out of date, removing {folder}")
        shutil.rmtree(folder)
    started = time.monotonic()
    say(f"{name}: making a virtual environment in {folder}")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    log = folder / LOG
    python = str(python_of(folder))
    steps = [
        (f"installing {requirements_file(name).relative_to(REPO)}", ["-r", str(requirements_file(name))]),
        ("installing this checkout (--no-deps -e)", ["--no-deps", "-e", str(REPO)]),
    ]
    for what, args in steps:
        say(f"{name}: {what} (log: {log})")
        pip(python, args, log)
    (folder / STAMP).write_text(stamp_text(name), encoding="utf-8")
    say(f"{name}: ready in {time.monotonic() - started:.0f} s, {size_mib(folder):.0f} MiB")


def pip(python: str, args: list[str], log: Path) -> None:
    """``python -m pip install ARGS``, its output appended to ``log``; ``EnvError`` on failure."""
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise EnvError(f"pip install {' '.join(args)} failed ({code}); full log: {log}\n{tail}")


def size_mib(folder: Path) -> float:
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())
    return total / (1024 * 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.envs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", default=["all"], help=f"{', '.join(available())} or all")
    parser.add_argument("--rebuild", action="store_true", help="make them anew even when up to date")
    args = parser.parse_args(argv)
    names = available() if "all" in args.names else args.names
    failed = []
    for name in names:
        try:
            if args.rebuild and env_dir(name).exists():
                (env_dir(name) / STAMP).unlink(missing_ok=True)
            python = ensure_env(name)
            print(f"{name}: {python}")
        except EnvError as error:
            print(f"peers: {name}: {error}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
