"""environment.yml and pyproject.toml name the same dependencies and the same Python.

pyproject.toml is what `make setup` installs (base + extras lab and test); environment.yml
is the same thing for conda users. Names are compared normalised (PEP 503: `PyYAML` and
`pyyaml` are one package), then extras, version specifiers and markers.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("lab", "test")  # what `make setup` installs besides the base dependencies
# conda packages that are programs rather than pyproject.toml's Python packages
CONDA_TOOLS = {"graphviz"}  # the `dot` program (Debian's graphviz in `make setup`)
SELF = "-e ."  # the pip line that installs labkit itself


def load() -> tuple[dict[str, Any], dict[str, Any]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    return pyproject, env


def _key(req: Requirement) -> tuple[frozenset[str], SpecifierSet, str]:
    return frozenset(req.extras), req.specifier, str(req.marker or "")


def _index(lines: list[str], where: str, problems: list[str]) -> dict[str, Requirement]:
    found: dict[str, Requirement] = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{where}: {line!r} is not a requirement: {exc}")
            continue
        name = canonicalize_name(req.name)
        if name in found:
            problems.append(f"{where}: {name} is listed twice ({found[name]}, {req})")
        found[name] = req
    return found


def pyproject_requirements(pyproject: dict[str, Any], problems: list[str]) -> list[str]:
    project = pyproject.get("project", {})
    lines = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for extra in EXTRAS:
        if extra not in extras:
            problems.append(f"pyproject.toml has no extra {extra!r}")
        lines += extras.get(extra, [])
    return lines


def conda_parts(env: dict[str, Any], problems: list[str]) -> tuple[str | None, list[str]]:
    """environment.yml's Python version (as X.Y) and its pip lines."""
    python = None
    pip_lines: list[str] = []
    has_pip = False
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            if set(dep) != {"pip"}:
                problems.append(f"environment.yml: unexpected dependency section {dep!r}")
            pip_lines += [str(line).strip() for line in dep.get("pip") or []]
            continue
        dep = str(dep).strip()
        name = re.split(r"[\s=<>!~]", dep, maxsplit=1)[0].lower()
        if name == "python":
            match = re.fullmatch(r"python\s*==?\s*(\d+\.\d+)(\.\*)?", dep)
            if match is None:
                problems.append(f"environment.yml: write Python as python=X.Y, not {dep!r}")
            else:
                python = match.group(1)
        elif name == "pip":
            has_pip = True
        elif name not in CONDA_TOOLS:
            problems.append(f"environment.yml: conda package {dep!r} is not in pyproject.toml; "
                            "list Python packages in the pip section")
    if python is None and not any("Python" in p for p in problems):
        problems.append("environment.yml does not name a Python version (python=X.Y)")
    if not has_pip:
        problems.append("environment.yml does not install pip, which its pip section needs")
    return python, pip_lines


def differences(pyproject: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """Every way the two files disagree, as sentences; empty when they agree."""
    problems: list[str] = []

    wanted = _index(pyproject_requirements(pyproject, problems), "pyproject.toml", problems)
    python, pip_lines = conda_parts(env, problems)
    if SELF not in pip_lines:
        problems.append(f"environment.yml's pip section does not install labkit itself "
                        f"({SELF!r})")
    options = [line for line in pip_lines if line.startswith("-") and line != SELF]
    problems += [f"environment.yml: unexpected pip option {line!r}" for line in options]
    have = _index([line for line in pip_lines if not line.startswith("-")],
                  "environment.yml", problems)

    for name in sorted(wanted.keys() - have.keys()):
        problems.append(f"{wanted[name]} is in pyproject.toml but not in environment.yml")
    for name in sorted(have.keys() - wanted.keys()):
        problems.append(f"{have[name]} is in environment.yml but not in pyproject.toml")
    for name in sorted(wanted.keys() & have.keys()):
        if _key(wanted[name]) != _key(have[name]):
            problems.append(f"{name}: pyproject.toml says {wanted[name]}, "
                            f"environment.yml says {have[name]}")

    requires = pyproject.get("project", {}).get("requires-python")
    if requires is None:
        problems.append("pyproject.toml has no requires-python")
    elif python is not None:
        spec = SpecifierSet(requires)
        floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
        if not spec.contains(f"{python}.0") and not spec.contains(python):
            problems.append(f"environment.yml's python={python} is outside pyproject.toml's "
                            f"requires-python {requires!r}")
        elif floors and Version(python) != max(floors):
            problems.append(f"environment.yml's python={python} is not the oldest Python "
                            f"pyproject.toml supports ({requires!r}): make them the same")
    return problems


def test_environment_yml_matches_pyproject() -> None:
    pyproject, env = load()
    assert env.get("name") == "labkit"
    problems = differences(pyproject, env)
    assert not problems, "environment.yml and pyproject.toml disagree:\n  " + \
        "\n  ".join(problems)


# The check itself, on altered copies of the real files: each change must be caught.

def _pip(env: dict[str, Any]) -> list[str]:
    return next(dep for dep in env["dependencies"] if isinstance(dep, dict))["pip"]


def _replace(lines: list[str], old: str, new: str | None) -> None:
    i = lines.index(old)
    if new is None:
        del lines[i]
    else:
        lines[i] = new


def drop_from_env(py: dict, env: dict) -> str:
    _replace(_pip(env), "httpx>=0.27", None)
    return "httpx"


def drop_test_extra_from_env(py: dict, env: dict) -> str:
    _replace(_pip(env), "playwright>=1.45", None)
    return "playwright"


def add_to_env(py: dict, env: dict) -> str:
    _pip(env).append("requests>=2.31")
    return "requests"


def add_to_pyproject_lab(py: dict, env: dict) -> str:
    py["project"]["optional-dependencies"]["lab"].append("pandas>=2.0")
    return "pandas"


def change_specifier(py: dict, env: dict) -> str:
    _replace(_pip(env), "sqlalchemy>=2.0", "sqlalchemy>=1.4")
    return "sqlalchemy"


def drop_extra(py: dict, env: dict) -> str:
    _replace(_pip(env), "uvicorn[standard]>=0.30", "uvicorn>=0.30")
    return "uvicorn"


def other_python(py: dict, env: dict) -> str:
    _replace(env["dependencies"], "python=3.11", "python=3.12")
    return "python=3.12"


def other_requires_python(py: dict, env: dict) -> str:
    py["project"]["requires-python"] = ">=3.12"
    return "python=3.11"


def no_self(py: dict, env: dict) -> str:
    _replace(_pip(env), SELF, None)
    return SELF


def conda_package(py: dict, env: dict) -> str:
    env["dependencies"].insert(0, "numpy>=1.26")
    return "numpy"


@pytest.mark.parametrize("change", [
    drop_from_env, drop_test_extra_from_env, add_to_env, add_to_pyproject_lab,
    change_specifier, drop_extra, other_python, other_requires_python, no_self, conda_package,
], ids=lambda f: f.__name__)
def test_a_disagreement_is_caught(change) -> None:
    pyproject, env = copy.deepcopy(load())
    culprit = change(pyproject, env)
    problems = differences(pyproject, env)
    assert problems, f"{change.__name__} went unnoticed"
    assert any(culprit in p for p in problems), problems


def test_spelling_does_not_matter() -> None:
    """Names are normalised and specifiers compared as sets, not as text."""
    pyproject, env = copy.deepcopy(load())
    _replace(_pip(env), "pyyaml>=6.0", "PyYAML >= 6.0")
    _replace(_pip(env), "python-openstackclient>=7.0", "Python_OpenStackClient>=7.0")
    assert differences(pyproject, env) == []
