"""uv.lock is what every install uses (`make`, CI, the Dockerfile: `uv sync --locked`), so it must
match pyproject.toml, name only public PyPI sources a fresh machine can reach, keep the dev tools
out of the runtime install, and the Makefile must re-install when either file changes."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYPI = "https://pypi.org/simple"
# Tools only development needs: none may be reachable from the runtime dependencies.
DEV_ONLY = {"pytest", "pytest-xdist", "ruff", "mypy", "hypothesis", "schemathesis", "pre-commit",
            "pip-audit", "bandit", "import-linter", "openapi-python-client"}  # fmt: skip


def _uv() -> str | None:
    """The uv the Makefile bootstraps (.tools/uv-VERSION), else one on PATH."""
    version = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert version, "the Makefile pins UV_VERSION"
    bootstrapped = ROOT / ".tools" / f"uv-{version.group(1)}" / "bin" / "uv"
    return str(bootstrapped) if bootstrapped.exists() else shutil.which("uv")


UV = _uv()

needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed: `make install` adds it")


def test_the_image_builds_with_the_makefiles_uv() -> None:
    """The lock format belongs to a uv version: the image and `make` use the same one."""
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert makefile
    assert dockerfile
    assert makefile.group(1) == dockerfile.group(1)


def _lock_check(directory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    assert UV is not None
    return subprocess.run(
        [UV, "lock", "--check", *flags],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_uv
def test_the_lock_matches_pyproject() -> None:
    # --offline: the check is static while the lock still satisfies pyproject.toml.
    result = _lock_check(ROOT, "--offline")
    assert result.returncode == 0, f"uv.lock is stale; run `make lock LOCK_ARGS=`\n{result.stderr}"


@needs_uv
def test_a_stale_lock_is_caught(tmp_path: Path) -> None:
    """The check above can fail: drop a dependency from a copy of pyproject.toml."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '    "pybreaker>=1.4,<2",\n' in pyproject
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('    "pybreaker>=1.4,<2",\n', ""))
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    result = _lock_check(tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr


def test_the_lock_names_only_pypi() -> None:
    """uv ignores pip's configuration, but a lock made where uv is configured otherwise would
    carry that machine's indexes; a fresh clone must resolve every pin from public PyPI."""
    text = (ROOT / "uv.lock").read_text()
    assert "file://" not in text
    for package in LOCK["package"]:
        source = package["source"]
        if package["name"] == PYPROJECT["project"]["name"]:
            assert source == {"editable": "."}
            continue
        assert source == {"registry": PYPI}, f"{package['name']} comes from {source}"
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{package['name']} has no file to install"
        for file in files:
            assert file["url"].startswith("https://files.pythonhosted.org/"), file["url"]
            assert file["hash"].startswith("sha256:")


def _closure(names: set[str]) -> set[str]:
    """Every package the given ones pull in, by the lock's own dependency lists."""
    by_name = {package["name"]: package for package in LOCK["package"]}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [dependency["name"] for dependency in by_name[name].get("dependencies", [])]
    return seen


def test_the_runtime_install_carries_no_dev_tool() -> None:
    project = next(p for p in LOCK["package"] if p["name"] == PYPROJECT["project"]["name"])
    runtime = _closure({d["name"] for d in project["dependencies"]})
    image = runtime | _closure({d["name"] for d in project["optional-dependencies"]["monitoring"]})
    assert {"flask", "celery", "gunicorn"} <= runtime
    assert "flower" in image
    assert "flower" not in runtime
    assert not image & DEV_ONLY, f"dev tools in the runtime install: {sorted(image & DEV_ONLY)}"
    dev = {d["name"] for d in project["dev-dependencies"]["dev"]}
    assert not DEV_ONLY - dev, f"dev tools not in the dev group: {sorted(DEV_ONLY - dev)}"


MAKE = shutil.which("make")


def _dry_run(*arguments: str) -> str:
    """What make would run (-n) if the named file had just changed (-W)."""
    assert MAKE is not None
    result = subprocess.run(
        [MAKE, "-n", "--no-print-directory", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(MAKE is None, reason="needs GNU make")
@pytest.mark.parametrize("changed", ["pyproject.toml", "uv.lock"])
def test_make_reinstalls_when_the_lock_or_pyproject_changes(changed: str) -> None:
    runtime = _dry_run("-W", changed, "migrate")
    dev = _dry_run("-W", changed, "install")
    assert re.search(r"uv sync --locked .*--no-dev --inexact", runtime), runtime
    assert "--extra monitoring" not in runtime
    assert re.search(r"uv sync --locked .*--extra monitoring", dev), dev
    assert "--no-dev" not in dev
    assert "--inexact" not in dev
    for plan in (runtime, dev):
        assert "--compile-bytecode" in plan
        assert "compileall -q -j 0 app worker migrations wsgi.py" in plan
