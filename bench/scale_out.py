"""The scale-out drill's figures (issue #19): one gunicorn instance against two, each run with two
Celery workers and two beats on one PostgreSQL, Redis and RabbitMQ, under the drill's load
(tests/support/scale_out.py: writers through one instance reading through the other, a rate-limit
probe, a worker killed mid-task). Reports requests/s per instance and the CPU each process and
each shared server used, as a share of one core: what docs/scaling.md sizes a deployment from.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_bench \\
    REDIS_URL=redis://127.0.0.1:6379/12 RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672// \\
        .venv/bin/python -m bench.scale_out [--seconds 60] [--no-record]

Both cores of this machine serve the clients, the instances and the servers at once, so the
total cannot grow with instances here: the per-instance figures and the servers' shares are
what carry over to a machine of its own per tier.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.scale_out import Record, run_drill, running_topology

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- scale-out:start -->"
SECTION_END = "<!-- scale-out:end -->"


def measure(webs: int, seconds: float) -> Record:
    with (
        tempfile.TemporaryDirectory(prefix="postboard-scale-out-") as work,
        running_topology(
            os.environ["DATABASE_URL"],
            os.environ["REDIS_URL"],
            os.environ["RABBITMQ_URL"],
            Path(work),
            webs=webs,
        ) as (topology, send),
    ):
        return run_drill(topology, send, seconds=seconds)


def report(records: dict[int, Record], seconds: float) -> str:
    lines = [
        f"## Scale-out (issue #19) — {time.strftime('%Y-%m-%d')}",
        "",
        "`python -m bench.scale_out` (bench/scale_out.py): the scale-out drill's load for "
        f"{seconds:.0f} s on 1 and then 2 gunicorn instances (2 sync workers each), with 2 Celery "
        "workers (prefork, 2 each; one killed mid-run) and 2 beats, on one PostgreSQL, Redis and "
        "RabbitMQ. The client (4 Python writer threads) shares the 2 cores.",
        "",
        "| instances | requests/s, each | requests/s, total | stale reads | errors |",
        "|---|---|---|---|---|",
    ]
    for webs, record in records.items():
        each = ", ".join(f"{record.rps(i):.1f}" for i in sorted(record.requests))
        total = sum(record.rps(i) for i in record.requests)
        lines.append(
            f"| {webs} | {each} | {total:.1f} | {len(record.stale_reads)} | {len(record.errors)} |"
        )
    lines += ["", "CPU used during the load, as a share of one core:", ""]
    names = sorted({name for record in records.values() for name in record.cpu})
    lines += ["| process | " + " | ".join(f"{w} instance(s)" for w in records) + " |"]
    lines += ["|---|" + "---|" * len(records)]
    for name in names:
        cells = [
            f"{record.cpu[name]:.2f}" if name in record.cpu else "-" for record in records.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    records = {webs: measure(webs, args.seconds) for webs in (1, 2)}
    text = report(records, args.seconds)
    print(text)
    if args.no_record:
        return
    block = f"{SECTION_START}\n{text}\n{SECTION_END}\n"
    current = RESULTS.read_text()
    if SECTION_START in current and SECTION_END in current:
        head, rest = current.split(SECTION_START, 1)
        RESULTS.write_text(head + block + rest.split(SECTION_END, 1)[1].lstrip("\n"))
    else:
        RESULTS.write_text(current.rstrip() + "\n\n" + block)


if __name__ == "__main__":
    main()
