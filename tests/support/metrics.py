"""Reading GET /metrics: parse Prometheus text (strictly), sum samples by name and labels; and
writing multiprocess samples from another process, as a worker would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.paths import ROOT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """{(sample name, labels): value}; the parser rejects anything Prometheus would."""
    samples: Samples = {}
    names: list[str] = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert len(names) == len(set(names)), f"a metric family appears twice: {sorted(names)}"
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples) -> set[str]:
    return {v for (_, labels) in samples for _, v in labels}


def scrape(client: FlaskClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.get_data(as_text=True))


def route_of(app: Flask, path: str, method: str = "GET") -> str:
    rule, _ = app.url_map.bind("localhost").match(path, method=method, return_rule=True)
    return rule.rule


REQUESTS = "postboard_http_requests_total"


LATENCY_COUNT = "postboard_http_request_duration_seconds_count"


def write_samples(directory: Path, code: str) -> None:
    """Run `code` in a new process writing its samples to `directory` (as a worker would)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
