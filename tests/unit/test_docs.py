"""The documentation keeps up with the code.

- every environment variable the code reads is in `.env.example` and in the settings table of
  `docs/operations.md`, and that table lists nothing the code does not read;
- every `flask` command the app registers is in the operator CLI list of `docs/operations.md`
  (tests/api/test_cli_docs.py: it needs the app);
- README stays the front door: short, with the two commands, every make target and a map of
  every page under `docs/`; every relative link in README and `docs/` resolves; and no page
  carries the section markers or session narration of the work that wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.docs import DOCS, OPERATIONS, README, section
from tests.support.paths import ROOT

README_MAX_BYTES = 15 * 1024

# Read from the environment by the code besides Settings (app/settings), in several forms.
_ENV_PATTERNS = (
    r"os\.environ(?:\.get)?[\(\[]\s*[\"']([A-Z][A-Z0-9_]+)[\"']",  # os.environ["X"], .get("X")
    r'os\.getenv\(\s*"([A-Z][A-Z0-9_]+)"',
)
# Set for Python itself or by the test/bench harness, not settings an operator chooses.
_NOT_SETTINGS = {"PYTHONPATH", "PATH", "HOME", "CI"}
# Pages linked from the docs that a parallel change of the same issue adds (issue #12, item 6).


def variables_read_by_the_code() -> set[str]:
    """Every variable read by the app, the worker, gunicorn's config and the Procfile."""
    names: set[str] = set()
    files = [ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]
    files += list((ROOT / "app").rglob("*.py")) + list((ROOT / "worker").rglob("*.py"))
    for path in files:
        text = path.read_text()
        for pattern in _ENV_PATTERNS:
            names |= set(re.findall(pattern, text))
    # The Procfile's shell expansions (`${CELERY_CONCURRENCY:-2}`): what `make run` reads.
    names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)[:}]", (ROOT / "Procfile").read_text()))
    return (names | Settings.variables()) - _NOT_SETTINGS


def settings_table() -> set[str]:
    """The variables in the first column of docs/operations.md's settings table."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section(OPERATIONS, "Settings"), re.M)
    assert len(rows) == len(set(rows)), "a variable is listed twice in the settings table"
    return set(rows)


def test_every_variable_is_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    missing = sorted(variables_read_by_the_code() - documented)
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_every_variable_is_in_the_settings_table() -> None:
    missing = sorted(variables_read_by_the_code() - settings_table())
    assert not missing, f"read by the code but not in docs/operations.md's settings: {missing}"


def test_the_settings_table_lists_only_what_the_code_reads() -> None:
    stale = sorted(settings_table() - variables_read_by_the_code())
    assert not stale, f"in docs/operations.md's settings but read by nothing: {stale}"


def test_the_scan_finds_the_contract_variables() -> None:
    """Guards the scan itself: the contract's own list must be found by it."""
    contract = {
        "APP_ENV",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "SECRET_KEY",
        "JWT_SECRET_KEY",
        "PORT",
        "WEB_CONCURRENCY",
        "LOG_LEVEL",
        "CORS_ORIGINS",
        "RATELIMIT_ENABLED",
        "RATELIMIT_ANONYMOUS",
        "RATELIMIT_AUTHENTICATED",
        "RATELIMIT_LOGIN",
        "RATELIMIT_REGISTER",
        "CACHE_ENABLED",
        "CACHE_TTL_SECONDS",
    }
    assert contract <= variables_read_by_the_code()
    assert contract <= settings_table()


def test_readme_is_short() -> None:
    size = len(README.encode())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_gives_the_two_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block, "README starts with a shell block"
    assert re.search(r"^make run\b", block.group(1), re.M)
    assert re.search(r"^make test\b", block.group(1), re.M)


def test_readme_lists_every_make_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony, "the Makefile declares its targets as .PHONY"
    targets = phony.group(1).split()
    assert {"run", "test", "lint", "format", "audit", "fuzz"} <= set(targets)
    table = section(README, "Make targets")
    missing = [t for t in targets if not re.search(rf"^\| `make {t}\b", table, re.M)]
    assert not missing, f"make targets missing from README's table: {missing}"


def test_readme_maps_every_page_of_docs() -> None:
    pages = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))
    assert {"docs/architecture.md", "docs/api.md", "docs/operations.md"} <= set(pages)
    missing = [page for page in pages if f"]({page})" not in README]
    assert not missing, f"docs pages README does not point to: {missing}"
    assert "](docs/decisions/)" in README


def test_the_decisions_index_lists_every_decision() -> None:
    decisions = sorted(p.name for p in (DOCS / "decisions").glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert len(decisions) >= 10
    index = (DOCS / "decisions" / "README.md").read_text()
    missing = [name for name in decisions if f"]({name})" not in index]
    assert not missing, f"decisions missing from docs/decisions/README.md: {missing}"
    numbers = [name[:4] for name in decisions]
    assert len(numbers) == len(set(numbers)), "two decisions share a number"


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue  # external, or an anchor within the page
        target = (page.parent / link.split("#", 1)[0]).resolve()
        if not target.exists():
            broken.append(link)
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_narrates_the_work_that_wrote_it(page: Path) -> None:
    text = page.read_text()
    markers = re.findall(
        r"<!--.*?-->|\((?:issue|issues) #?\d+[^)]*\)|\b(?:first|second|third|fourth) session\b",
        text,
        re.I | re.S,
    )
    assert not markers, f"{page.relative_to(ROOT)} carries work markers: {markers}"
