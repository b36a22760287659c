"""Build the service's container image: ``bentoml build`` + ``bentoml containerize`` (``make container``).

    python deploy/container.py [--bentofile FILE] [--base-image IMAGE] [--host-ca] [--tag TAG]

Tags the image ``convzoo:<model version>`` and ``convzoo:latest`` (``--image NAME`` changes
``convzoo``), with the model the service would serve (``CONVZOO_MODEL``, ``CONVZOO_MODELS_DIR``)
inside, running as BentoML's non-root user ``bentoml`` (uid 1034). Settings (also as ``make``
variables, docs/operations.md, "Containers"):

- ``--base-image``: BentoML's ``docker.base_image``. Default: BentoML's own choice (a
  ``python:3.11-slim`` from Docker Hub). Without Docker Hub, ``deploy/base-image/build.sh`` builds a
  Debian 12 base from Debian's packages (``convzoo-base:bookworm``).
- ``--host-ca``: behind a TLS-intercepting proxy, add this host's CA certificates
  (``/usr/local/share/ca-certificates/*.crt``, or ``--ca-dir``) to the base image first, so that
  pip and uv inside the build trust the proxy.
- ``--bentofile FILE``: the recipe. ``bentofile.yaml`` (default) is the CPU image: OpenVINO serves,
  no TensorFlow inside. ``bentofile.gpu.yaml`` is the GPU image: ``tensorflow[and-cuda]`` on
  BentoML's CUDA base (its ``docker.cuda_version``), tagged ``...-gpu``.
- ``--packages FILE``: the image's Python packages (a requirements file) instead of the recipe's.
- ``--cuda VERSION``: BentoML's CUDA base (``docker.cuda_version``), overriding the recipe's.

Docker is called through ``bentoml containerize`` with ``DOCKER_BUILDKIT=0`` (BentoML's BuildKit
Dockerfile needs a frontend image from Docker Hub) and ``/usr/bin/docker`` first on ``PATH`` when
present (the classic builder of the Debian package). Prints the image, its size and its tags.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BENTOML_DEFAULT_BASE = "python:3.11-slim"
"""What BentoML builds on for ``python_version: "3.11"`` on Debian (its ``python_debian`` template)."""
BENTOML = str(Path(sys.executable).with_name("bentoml"))
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-image", default=os.environ.get("BASE_IMAGE") or None)
    parser.add_argument("--host-ca", action="store_true", default=os.environ.get("HOST_CA") == "1")
    parser.add_argument("--ca-dir", type=Path, default=Path("/usr/local/share/ca-certificates"))
    parser.add_argument(
        "--bentofile", type=Path, default=Path(os.environ.get("BENTOFILE") or "bentofile.yaml")
    )
    parser.add_argument("--packages", type=Path, default=os.environ.get("PACKAGES") or None)
    parser.add_argument("--cuda", default=os.environ.get("CUDA_VERSION") or None)
    parser.add_argument("--image", default=os.environ.get("IMAGE") or "convzoo")
    parser.add_argument("--tag", help="image tag (default: the model version, '-gpu' with --cuda)")
    parser.add_argument("--no-latest", action="store_true", help="do not also tag it :latest")
    args = parser.parse_args(argv)
    try:
        image = build(args)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(image)
    return 0


class BuildError(RuntimeError):
    pass


def docker_env() -> dict[str, str]:
    """The environment for docker and bentoml: the classic builder, the Debian client first."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    if Path("/usr/bin/docker").exists():
        env["PATH"] = "/usr/bin:" + env.get("PATH", "")
    return env


def docker() -> str:
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def check_docker() -> None:
    if shutil.which("docker", path=docker_env()["PATH"]) is None:
        raise BuildError("docker not found: install Docker (Debian: apt-get install -y docker.io)")
    ready = subprocess.run([docker(), "info"], capture_output=True, text=True, env=docker_env())
    if ready.returncode != 0:
        raise BuildError(
            "docker not running: start dockerd (e.g. `dockerd > /tmp/dockerd.log 2>&1 &`) "
            f"and wait for `docker info`\n{ready.stderr.strip()[-500:]}"
        )


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, env=docker_env(), **kwargs)


def with_host_ca(base: str, ca_dir: Path) -> str:
    """``base`` plus this host's CA certificates (a one-layer image ``<base repo>-hostca:<tag>``)."""
    certificates = sorted(ca_dir.glob("*.crt"))
    if not certificates:
        raise BuildError(f"--host-ca: no *.crt in {ca_dir}")
    repository, _, tag = base.rpartition(":") if ":" in base.split("/")[-1] else (base, "", "latest")
    derived = f"{re.sub(r'[^a-z0-9._/-]', '-', repository.lower())}-hostca:{tag}"
    with tempfile.TemporaryDirectory() as context:
        for certificate in certificates:
            shutil.copy(certificate, context)
        Path(context, "Dockerfile").write_text(
            f"FROM {base}\nUSER root\nCOPY *.crt /usr/local/share/ca-certificates/\n"
            "RUN update-ca-certificates\n"
            f"ENV SSL_CERT_FILE={CA_BUNDLE} REQUESTS_CA_BUNDLE={CA_BUNDLE} PIP_CERT={CA_BUNDLE} "
            "UV_NATIVE_TLS=1\n"
        )
        run([docker(), "build", "-q", "-t", derived, context])
    print(f"base image with {len(certificates)} host CA certificate(s): {derived}")
    return derived


def bentofile(args: argparse.Namespace, base_image: str | None) -> dict:
    """``bentofile.yaml`` with this build's settings."""
    recipe = yaml.safe_load((REPO / args.bentofile).read_text())
    docker_options = recipe.setdefault("docker", {})
    if base_image:
        docker_options["base_image"] = base_image
    if args.cuda:
        docker_options["cuda_version"] = args.cuda
    # BENTOML_HOME under /tmp, so that a read-only root filesystem works (see the template)
    docker_options["dockerfile_template"] = "deploy/Dockerfile.template"
    if args.packages:
        lines = Path(args.packages).read_text().splitlines()
        recipe["python"]["packages"] = [
            line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()
        ]
    return recipe


def build(args: argparse.Namespace) -> str:
    check_docker()
    sys.path.insert(0, str(REPO))
    from service.config import load_config
    from service.serving.model_store import resolve_model

    model_tag = str(resolve_model(load_config()))  # imported into the BentoML store if missing
    version = model_tag.partition(":")[2]
    gpu = bool(
        args.cuda
        or (yaml.safe_load((REPO / args.bentofile).read_text()).get("docker") or {}).get("cuda_version")
    )
    tag = args.tag or (f"{version}-gpu" if gpu else version)
    latest = "latest-gpu" if gpu else "latest"
    base_image = args.base_image
    if args.host_ca:
        base_image = with_host_ca(base_image or BENTOML_DEFAULT_BASE, args.ca_dir)

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="bentofile-", delete=False) as f:
        yaml.safe_dump(bentofile(args, base_image), f, sort_keys=False)
    try:
        built = run(
            [BENTOML, "build", "-f", f.name, "--output", "tag", str(REPO)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    except subprocess.CalledProcessError as error:
        raise BuildError(f"bentoml build failed:\n{error.stdout}\n{error.stderr}") from None
    finally:
        os.unlink(f.name)
    bento = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(f"bento {bento} (model {model_tag})")
    image = f"{args.image}:{tag}"
    # cwd: BentoML 1.4 exports the Bento to a temporary folder and then refuses to read its
    # docker.dockerfile_template from "outside of the current working directory".
    try:
        tags = ["-t", image] + ([] if args.no_latest else ["-t", f"{args.image}:{latest}"])
        run([BENTOML, "containerize", bento, "--backend", "docker", *tags], cwd=tempfile.gettempdir())
    except subprocess.CalledProcessError:
        raise BuildError(f"bentoml containerize {bento} failed (its output is above)") from None
    size = subprocess.run(
        [docker(), "image", "inspect", "-f", "{{.Size}}", image],
        env=docker_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        f"image {image}: {int(size) / 1e6:,.0f} MB, bento {bento}, "
        f"model {model_tag}, base {base_image or 'BentoML default'}"
    )
    return image


if __name__ == "__main__":
    sys.exit(main())
