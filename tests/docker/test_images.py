"""docker/: each image's Dockerfile and lock, checked without Docker.

What ships is what is tested here: every lock pins the versions pyproject.toml
pins and this test run imports (.venv), a warning names the packages where the
lock and .venv drifted apart, and every third-party module an image's entry
point imports, through the project's own modules, is a package of that image's
lock. The Dockerfiles pin their base images by digest, run as a numeric
non-root user, and install nothing but hash-checked lock files and the project.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker.build_files import (
    LOCKS,
    PROJECT_PACKAGES,
    ROOT,
    SAME_MODULE,
    Stage,
    canonical,
    copied_sources,
    parse_dockerfile,
    pip_installs,
    project_pins,
    providers,
    public,
    read_lock,
    scan,
    venv_versions,
)

DOCKER = ROOT / "docker"
#: What an image may copy besides the packages: data its code reads by path.
DATA_FOLDERS = frozenset({"feature_repo", "manifests/base"})
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cc)\b")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
NOT_ON_CPU = re.compile(r"torch|triton|nvidia-.*|cuda-.*")


@dataclass(frozen=True)
class Image:
    """One deployable: its Dockerfile, its locks, and what it runs."""

    name: str
    dockerfile: str
    #: The values each build argument of the Dockerfile may take.
    build_args: dict[str, tuple[str, ...]]
    locks: tuple[str, ...]
    #: The modules its containers start (manifests/base's commands).
    entry_modules: tuple[str, ...]
    #: What it reads by path beside the packages.
    data: frozenset[str]


IMAGES = (
    Image(
        name="falaj-functions",
        dockerfile="Dockerfile.functions",
        build_args={},
        locks=("functions",),
        entry_modules=(
            "functions.ingest.main",
            "functions.drift.main",
            "functions.rollout.main",
            "functions.training_launcher.main",
            "eventing.storage_source",
            "eventing.ping_source",
            "eventing.rabbitmq_source",
            # python -m falaj.control (manifests/base/control.yaml)
            "falaj.control.__main__",
        ),
        data=frozenset({"feature_repo", "manifests/base"}),
    ),
    Image(
        name="falaj-inference",
        dockerfile="Dockerfile.inference",
        build_args={},
        locks=("inference-cpu",),
        entry_modules=("inference.server",),
        data=frozenset({"feature_repo"}),
    ),
    Image(
        name="falaj-inference-gpu",
        dockerfile="Dockerfile.inference-gpu",
        build_args={},
        locks=("inference-gpu",),
        entry_modules=("inference.server",),
        data=frozenset({"feature_repo"}),
    ),
    Image(
        name="falaj-training",
        dockerfile="Dockerfile.training",
        build_args={"TORCH_VARIANT": ("cpu", "gpu")},
        locks=("training-cpu", "training-gpu"),
        entry_modules=("training.job",),
        data=frozenset({"feature_repo"}),
    ),
)
#: Every lock an image installs, and the build stage's tools.
ALL_LOCKS = (*(lock for image in IMAGES for lock in image.locks), "build")


def _variants(image: Image) -> Iterator[dict[str, str]]:
    """Each combination of the image's build arguments (one for most images)."""
    combos: list[dict[str, str]] = [{}]
    for key, values in image.build_args.items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    yield from combos


def _stages(image: Image) -> Iterator[tuple[dict[str, str], list[Stage]]]:
    for variant in _variants(image):
        yield variant, parse_dockerfile(DOCKER / image.dockerfile, variant)


# --- tests -------------------------------------------------------------------

IDS = [image.name for image in IMAGES]


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_every_base_image_is_pinned_by_digest(image: Image) -> None:
    # A `# syntax=` directive pulls a frontend image before any FROM.
    first = (DOCKER / image.dockerfile).read_text().splitlines()[0]
    assert not first.startswith("# syntax=") or DIGEST.search(first), first
    for variant, stages in _stages(image):
        names = {stage.name for stage in stages if stage.name}
        for stage in stages:
            assert stage.base in names or DIGEST.search(stage.base), (
                f"{image.dockerfile} {variant}: FROM {stage.base} is neither an earlier stage "
                "nor pinned by digest (expected image:tag@sha256:<64 hex>)"
            )


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_the_final_stage_runs_as_a_numeric_non_root_user(image: Image) -> None:
    for variant, stages in _stages(image):
        final = stages[-1]
        users = final.values("USER")
        assert users, f"{image.dockerfile} {variant}: the final stage has no USER (runs as root)"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0, f"expected a numeric non-zero uid, got {users[-1]}"
        assert not gid or (gid.isdigit() and int(gid) != 0), f"expected a numeric gid: {users[-1]}"
        # manifests/base's securityContext says runAsUser: 65532.
        assert int(uid) == 65532
        assert final.instructions[-1].keyword in {"USER", "CMD", "EXPOSE", "WORKDIR", "ENTRYPOINT"}
        keywords = [i.keyword for i in final.instructions]
        assert "RUN" not in keywords[keywords.index("USER") :], "a RUN after USER runs as the user"


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_pip_installs_only_hash_checked_locks_and_the_project(image: Image) -> None:
    for variant, stages in _stages(image):
        for stage in stages:
            copied = copied_sources(stage)
            for command in pip_installs(stage):
                if "--require-hashes" in command:
                    files = re.findall(r"-r\s+(\S+)", command)
                    assert files, f"{image.dockerfile}: {command!r} names no lock file"
                    for file in files:
                        lock = Path(file).name
                        assert f"docker/requirements/{lock}" in copied, (
                            f"{image.dockerfile} {variant}: {file} is not a lock of "
                            f"docker/requirements/ copied into the stage ({sorted(copied)})"
                        )
                        assert (LOCKS / lock).is_file()
                    assert "--only-binary=:all:" in command, f"{command!r} may build an sdist"
                else:
                    # The project itself: nothing from an index, nothing beyond it.
                    assert "--no-deps" in command and "--no-index" in command, (
                        f"{image.dockerfile} {variant}: {command!r} installs without "
                        "--require-hashes from a lock file"
                    )


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_the_image_installs_its_locks(image: Image) -> None:
    installed: set[str] = set()
    for _, stages in _stages(image):
        for stage in stages:
            for command in pip_installs(stage):
                installed.update(Path(f).stem for f in re.findall(r"-r\s+(\S+)", command))
    assert installed == set(image.locks) | {"build"}


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_the_final_stage_is_slim(image: Image) -> None:
    for variant, stages in _stages(image):
        final = stages[-1]
        env = " ".join(final.values("ENV"))
        assert "PYTHONDONTWRITEBYTECODE=1" in env
        for run in final.values("RUN"):
            assert "pip install" not in run, f"{image.dockerfile}: pip belongs in the build stage"
            installs = re.findall(r"apt-get install (.*?)(?:&&|$)", run)
            for packages in installs:
                assert not COMPILERS.search(packages), (
                    f"{image.dockerfile} {variant}: a compiler in the final image: {packages}"
                )
            assert not installs or "rm -rf /var/lib/apt/lists/*" in run


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_only_the_packages_the_image_runs_are_copied_in(image: Image) -> None:
    needed = {module.split(".", 1)[0] for module in scan(image.entry_modules).modules}
    for variant, stages in _stages(image):
        copied = set().union(*(copied_sources(stage) for stage in stages))
        assert copied & PROJECT_PACKAGES == needed, f"{image.dockerfile} {variant}"
        assert copied & DATA_FOLDERS == image.data, f"{image.dockerfile} {variant}"


@pytest.mark.parametrize("lock", ALL_LOCKS)
def test_every_requirement_of_a_lock_has_a_hash(lock: str) -> None:
    pins = read_lock(lock)
    assert pins
    assert [pin.name for pin in pins.values() if not pin.hashes] == []
    # Regenerated from its .in by compile.sh, and every direct requirement is there.
    text = (LOCKS / f"{lock}.txt").read_text()
    assert f"docker/requirements/compile.sh {lock}" in text
    for line in (LOCKS / f"{lock}.in").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name = canonical(re.split(r"[\[=<>~! ]", requirement, maxsplit=1)[0])
            assert name in pins, f"{lock}.in asks for {name}; {lock}.txt lacks it: recompile"


def _mismatches(lock: str) -> dict[str, str]:
    """Package -> "lock X, .venv Y" where the lock and this test run's .venv differ."""
    mismatched = {}
    for pin in read_lock(lock).values():
        tested = venv_versions().get(SAME_MODULE.get(pin.name, pin.name))
        if tested is None:
            continue
        # The CUDA build of torch is the tested version, without the +cpu label.
        same = public(pin.version) == public(tested) if "+" in tested else pin.version == tested
        if not same:
            mismatched[pin.name] = f"lock {pin.version}, .venv {tested}"
    return mismatched


@pytest.mark.parametrize("lock", ALL_LOCKS)
def test_every_lock_pins_the_versions_pyproject_pins(lock: str) -> None:
    pinned = project_pins()
    mismatched = {name: why for name, why in _mismatches(lock).items() if name in pinned}
    mismatched |= {
        pin.name: f"lock {pin.version}, pyproject.toml {pinned[pin.name]}"
        for pin in read_lock(lock).values()
        if pin.name in pinned and public(pin.version) != pinned[pin.name]
    }
    assert mismatched == {}, "recompile the lock (docker/requirements/README.md)"


@pytest.mark.parametrize("lock", ALL_LOCKS)
def test_every_lock_pins_the_versions_tested_here(lock: str) -> None:
    # pyproject.toml pins what the code uses directly; what those bring is resolved
    # when .venv is made, so a fresh .venv may meet a newer release of one of them
    # than the lock has. That is said, not failed: recompile to ship what is tested.
    drift = {n: why for n, why in _mismatches(lock).items() if n not in project_pins()}
    if drift:
        warnings.warn(
            f"{lock}.txt and .venv differ on packages pyproject.toml does not pin: {drift}; "
            "recompile the lock (docker/requirements/README.md)",
            stacklevel=1,
        )


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_every_third_party_import_is_in_the_lock(image: Image) -> None:
    imports = scan(image.entry_modules).third_party
    for lock in image.locks:
        missing = {
            module: sorted(importers)[:3]
            for module, importers in imports.items()
            if not providers(lock, module)
        }
        assert missing == {}, f"{lock}.txt lacks what these modules import (module: importers)"


def test_the_cpu_serving_image_carries_onnxruntime_and_no_torch() -> None:
    pins = read_lock("inference-cpu")
    assert pins["onnxruntime"].version == venv_versions()["onnxruntime"]
    assert "onnxruntime-gpu" not in pins
    assert [name for name in pins if NOT_ON_CPU.fullmatch(name)] == []
    imports = scan(("inference.server",)).third_party
    assert "torch" not in imports, f"inference.server reaches torch via {imports.get('torch')}"


def test_the_gpu_serving_image_carries_onnxruntime_gpu_and_no_torch() -> None:
    pins = read_lock("inference-gpu")
    assert pins["onnxruntime-gpu"].version == venv_versions()["onnxruntime"]
    # Both install the module onnxruntime: one would overwrite the other's files.
    assert "onnxruntime" not in pins
    assert [name for name in pins if name in {"torch", "triton"}] == []


def test_training_carries_torch_2_13_0() -> None:
    cpu, gpu = read_lock("training-cpu"), read_lock("training-gpu")
    assert cpu["torch"].version == "2.13.0+cpu"
    assert [name for name in cpu if name.startswith("nvidia-")] == []
    assert gpu["torch"].version == "2.13.0"
    assert "nvidia-cudnn-cu13" in gpu
    assert (
        (LOCKS / "training-cpu.txt")
        .read_text()
        .startswith("--extra-index-url https://download.pytorch.org/whl/cpu\n")
    )


def test_functions_carry_neither_torch_nor_a_model_runtime() -> None:
    pins = read_lock("functions")
    assert {"torch", "onnxruntime", "onnxruntime-gpu", "kserve"} & set(pins) == set()
