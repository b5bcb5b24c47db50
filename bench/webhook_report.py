"""The drill's report (bench/webhooks.py): the figures as a Markdown section, printed and kept
in bench/RESULTS.md between its markers."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from datetime import date
from typing import Any

from bench.limiter_overhead import ROOT
from bench.loadgen import median
from bench.webhook_targets import (
    FAILING,
    POSTS,
    REFUSING,
    SLOW,
    SLOW_SECONDS,
    USERS,
    Receivers,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.webhooks: start -->"
SECTION_END = "<!-- bench.webhooks: end -->"


def percentile(values: list[float], p: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))]


def report(
    args: argparse.Namespace,
    idle: list[dict[str, Any]],
    drill: list[dict[str, Any]],
    lags: list[float],
    receivers: Receivers,
    checks: dict[int, dict[str, Any]],
    bad: int,
    delivered: bool,
    finished: float,
    statuses: list[tuple[str, str, int]],
    breakers: Counter[str],
) -> None:
    by_kind: dict[str, list[int]] = {}
    for index, kind in enumerate(receivers.kinds):
        by_kind.setdefault(kind, []).append(index)
    healthy = [checks[i] for i in by_kind["healthy"]]
    url_kind = {receivers.urls[n]: kind for n, kind in enumerate(receivers.kinds)}
    status_table: dict[str, Counter[str]] = {}
    for url, status, count in statuses:
        status_table.setdefault(url_kind[url], Counter())[status] += count
    events = USERS * POSTS * args.rounds

    rows = []
    for kind in ("writes", "reads"):
        for p in (50, 99):
            pooled_idle = percentile([v for run in idle for v in run[kind]], p)
            pooled_drill = percentile([v for run in drill for v in run[kind]], p)
            pairs = [
                percentile(d[kind], p) / percentile(i[kind], p)
                for i, d in zip(idle, drill, strict=True)
            ]
            rows.append(
                f"| {kind} p{p} | {pooled_idle:.1f} | {pooled_drill:.1f} | "
                f"**{median(pairs):.2f}x** | {', '.join(f'{r:.2f}' for r in pairs)} |"
            )
    slow = [checks[i]["received"] for i in by_kind["slow"]]
    loads = ", ".join(
        f"{run['load']:.1f}" for pair in zip(idle, drill, strict=True) for run in pair
    )
    errors = Counter[str]()
    for run in [*idle, *drill]:
        errors.update(run["errors"])
    lines = [
        f"## Webhooks (issue #16) — {date.today().isoformat()}",
        "",
        "```",
        "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_wh_del \\",
        "REDIS_URL=redis://127.0.0.1:6379/8 CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\",
        "CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/9 .venv/bin/python -m bench.webhooks"
        + f" --rounds {args.rounds} --rate {args.rate:g}",
        "```",
        "",
        f"50 targets: {len(by_kind['healthy'])} healthy, {SLOW} answering in {SLOW_SECONDS:g} s, "
        f"{REFUSING} refusing connections, {FAILING} answering 500; {events:,} events "
        f"(post.updated, {USERS} users x {POSTS} posts x {args.rounds} rounds) written at "
        f"{args.rate:g} writes/s (4 writer threads) beside a prober reading a post 20 times a "
        "second. Processes as in the Procfile: gunicorn 3 workers, 1 relay, the worker "
        "(2 processes), the webhooks worker (16 threads, `nice -n 10`); PostgreSQL + Redis; the "
        "receivers in a process of their own at nice 19 (they stand for remote machines). "
        "Rounds interleave an idle run (the same load, "
        "every webhook disabled) and the drill; load average after each run: "
        f"{loads} (2 cores, shared with other sessions).",
        "",
        f"- Every healthy target got all its events: **{'yes' if delivered else 'NO'}** "
        f"({sum(c['distinct'] for c in healthy):,} of {len(healthy) * POSTS * args.rounds:,}; "
        f"duplicates {sum(c['duplicates'] for c in healthy)}); in order per aggregate: "
        f"**{'yes' if all(c['in_order'] for c in healthy) else 'NO'}**; bad signatures: {bad}.",
        "- Time to deliver: the last healthy delivery of a drill round came "
        + ", ".join(f"{lag:.1f}" for lag in lags)
        + " s after the round's last write (each round's writes took "
        + ", ".join(f"{run['ended'] - run['started']:.0f}" for run in drill)
        + " s).",
        f"- Slow targets (9 s an answer, one at a time per target) had received {sorted(slow)} "
        f"events when the run ended, {finished - drill[0]['started']:.0f} s after the first drill "
        "write; deliveries by status: "
        + "; ".join(
            f"{kind} {dict(sorted(status_table.get(kind, Counter()).items()))}"
            for kind in ("healthy", "slow", "refusing", "failing")
        )
        + f". Breakers at the end (state:target): {dict(sorted(breakers.items()))}.",
        f"- Non-200 answers: {dict(errors) or 'none'}.",
        "",
        "CPU seconds per run, median (idle / drill): "
        + ", ".join(
            f"{name} {median([r['cpu'][name] for r in idle]):.1f} / "
            f"{median([r['cpu'][name] for r in drill]):.1f}"
            for name in drill[0]["cpu"]
        )
        + ".",
        "",
        "| API latency, ms | idle (pooled) | drill (pooled) | drill / idle, median of rounds "
        "(target <= 1.2x) | each round |",
        "|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_record:
        return
    section = f"{SECTION_START}\n{text}\n{SECTION_END}"
    current = RESULTS.read_text()
    if SECTION_START in current:
        pattern = re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END)
        current = re.sub(pattern, lambda _m: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(current)
