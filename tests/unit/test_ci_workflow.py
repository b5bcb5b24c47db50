"""The GitHub Actions workflow (for forks) runs what `.ci/run` runs: the same make targets, on
both backends, against PostgreSQL and Redis service containers that are healthy first."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support.paths import ROOT

WORKFLOW: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
JOBS: dict[str, dict[str, Any]] = WORKFLOW["jobs"]
MAKE = re.compile(r"(?:^|[;&|(]\s*|\s)make\s+([a-z][a-z-]*)")


def make_targets(script: str) -> set[str]:
    """The make targets a shell script calls, comments left out."""
    lines = (line.split("#", 1)[0] for line in script.splitlines())
    return {target for line in lines for target in MAKE.findall(line)}


def steps() -> list[dict[str, Any]]:
    return [step for job in JOBS.values() for step in job["steps"]]


def test_the_workflow_runs_the_make_targets_of_ci_run() -> None:
    ci_run = make_targets((ROOT / ".ci" / "run").read_text())
    assert {"install", "lint", "audit", "fuzz", "test"} <= ci_run, "the scan reads .ci/run"
    workflow = set().union(*(make_targets(step.get("run", "")) for step in steps()))
    assert workflow == ci_run


def test_it_runs_on_pushes_and_pull_requests() -> None:
    # YAML 1.1 reads the bare key `on` as True.
    triggers = WORKFLOW.get("on", WORKFLOW.get(True))
    assert {"push", "pull_request"} <= set(triggers)


def test_every_job_uses_python_3_11_and_keeps_the_uv_cache() -> None:
    for name, job in JOBS.items():
        uses = {step.get("uses", "").split("@")[0]: step for step in job["steps"]}
        assert uses["actions/setup-python"]["with"]["python-version"] == "3.11", name
        cache = uses["actions/cache"]["with"]
        assert cache["path"] == "~/.cache/uv", name
        assert "hashFiles('uv.lock')" in cache["key"], name


def test_tests_run_on_both_backends_against_healthy_services() -> None:
    test = JOBS["test"]
    assert test["strategy"]["matrix"]["backend"] == ["embedded", "postgres+redis"]
    services = test["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    for service in services.values():
        assert "--health-cmd" in service["options"]
    # Only the postgres+redis leg names the servers: the other runs on the embedded default.
    pointing = [step for step in test["steps"] if "DATABASE_URL=" in step.get("run", "")]
    assert len(pointing) == 1
    assert pointing[0]["if"] == "matrix.backend == 'postgres+redis'"
    for variable in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        assert f"{variable}=" in pointing[0]["run"]
    assert "DATABASE_URL" not in str(WORKFLOW.get("env")) + str(test.get("env"))


def test_a_test_run_that_ran_nothing_fails() -> None:
    """As in .ci/run: pipefail (explicit bash) and a check for pytest's 'N passed'."""
    assert WORKFLOW["defaults"]["run"]["shell"] == "bash"
    test_step = next(step for step in JOBS["test"]["steps"] if "make test" in step.get("run", ""))
    assert "[0-9]+ passed" in test_step["run"]
