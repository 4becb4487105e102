"""Reading docker/ without Docker: Dockerfiles, lock files, and what code imports.

The helpers of tests/docker/test_images.py: a Dockerfile's stages with its ARGs
substituted, a lock's pins with their hashes, and the third-party modules a set
of entry modules reaches through the project's own modules (``ast``, nothing
imported).
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "docker" / "requirements"
#: The project's top-level packages (pyproject.toml's packages.find).
PROJECT_PACKAGES = frozenset({"falaj", "functions", "inference", "training", "eventing"})
#: Packages a lock may carry under another name than .venv's (the same module).
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime"}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:\S+)*)")


# --- Dockerfiles -------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def values(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


def _instructions(text: str) -> Iterator[Instruction]:
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):  # also inside a continued instruction
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        if logical.strip():
            keyword, _, value = logical.strip().partition(" ")
            yield Instruction(keyword.upper(), " ".join(value.split()))
        logical = ""


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def parse_dockerfile(path: Path, build_args: dict[str, str]) -> list[Stage]:
    """The stages of a Dockerfile, with ARG defaults (or build_args) substituted."""
    args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for instruction in _instructions(path.read_text()):
        value = _substitute(instruction.value, args)
        if instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key] = build_args.get(key, _substitute(default, args))
        elif instruction.keyword == "FROM":
            words = value.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((words[0], alias, []))
        elif stages:
            stages[-1][2].append(Instruction(instruction.keyword, value))
    assert stages, f"{path.name} has no FROM"
    return [Stage(base, alias, tuple(body)) for base, alias, body in stages]


def pip_installs(stage: Stage) -> list[str]:
    commands = []
    for run in stage.values("RUN"):
        for command in re.split(r"&&|;", run):
            if re.search(r"\bpip\b.*\binstall\b", command):
                commands.append(command.strip())
    return commands


def copied_sources(stage: Stage) -> set[str]:
    sources: set[str] = set()
    for value in stage.values("COPY"):
        words = [w for w in value.split() if not w.startswith("--")]
        sources.update(word.rstrip("/") for word in words[:-1])
    return sources


# --- lock files --------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def read_lock(lock: str) -> dict[str, Pin]:
    text = (LOCKS / f"{lock}.txt").read_text()
    pins: dict[str, Pin] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry or entry.startswith("--"):
            continue
        match = PIN.fullmatch(entry)
        assert match, f"{lock}.txt: expected 'name==version --hash=sha256:...', got {entry!r}"
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})\b", match[3]))
        pins[canonical(match[1])] = Pin(canonical(match[1]), match[2], hashes)
    return pins


def public(version: str) -> str:
    return version.split("+", 1)[0]


@cache
def project_pins() -> dict[str, str]:
    """Package -> version for every ``name[extras]==version`` of pyproject's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", requirement.strip())
        if match:
            pins[canonical(match[1])] = match[2]
    return pins


@cache
def venv_versions() -> dict[str, str]:
    """The versions installed in this interpreter's site-packages (.venv).

    Read from site-packages itself: Ray puts its vendored copies (psutil, ...) on
    sys.path once imported, and importlib.metadata.version would find those.
    """
    site = sysconfig.get_paths()["purelib"]
    return {
        canonical(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions(path=[site])
    }


# --- what an image's code imports --------------------------------------------


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> Iterator[str]:
    """Every module ``module`` imports, at any depth, except under TYPE_CHECKING."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))


@dataclass(frozen=True)
class ImportScan:
    #: The project's modules the entry modules load.
    modules: frozenset[str]
    #: Third-party top-level module -> the project modules importing it.
    third_party: dict[str, frozenset[str]]


@cache
def scan(entry_modules: tuple[str, ...]) -> ImportScan:
    seen: set[str] = set()
    third_party: dict[str, set[str]] = {}
    todo = list(entry_modules)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if path is None:  # an attribute of a module, not a module
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for name in _imports(path, module):
            top = name.split(".", 1)[0]
            if top in PROJECT_PACKAGES:
                todo.append(name)
            elif top and top not in stdlib:
                third_party.setdefault(top, set()).add(module)
    return ImportScan(frozenset(seen), {k: frozenset(v) for k, v in third_party.items()})


@cache
def _distributions_of_modules() -> dict[str, list[str]]:
    return {
        module: [canonical(dist) for dist in dists]
        for module, dists in metadata.packages_distributions().items()
    }


def providers(lock: str, module: str) -> list[str]:
    """The lock's packages that install top-level module ``module``."""
    dists = _distributions_of_modules().get(module, [])
    pins = read_lock(lock)
    found = [dist for dist in dists if dist in pins]
    found += [alias for alias, same in SAME_MODULE.items() if same in dists and alias in pins]
    return found
