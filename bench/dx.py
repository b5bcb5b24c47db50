"""Developer experience (issue 14): what a new developer waits for, on a fresh clone. One command:

    .venv/bin/python -m bench.dx                       # run, cli, test-fast (a few minutes)
    .venv/bin/python -m bench.dx --steps run,cli,test-fast,test   # the whole suite too
    .venv/bin/python -m bench.dx --source /path/to/other/checkout  # "before": an older commit

Every step works in a fresh `git clone` of --source (default: this checkout's HEAD) under a
temporary directory, on the embedded default (DATABASE_URL, REDIS_URL and the broker unset):

- run: `make run` from nothing until `/ready` answers 200. Reported as the whole wait, the
  install part (until the install stamp appears), and `/ready` after gunicorn started (its
  first prefixed output line). `--cold-cache` gives uv an empty cache (a first install ever).
- cli: the median of `--reps` calls each of `flask --help`, `flask db current`, `flask cache stats`.
- test-fast / test: `make test-fast` and `make test` wall time (after the development install,
  timed apart as "install-dev").

Results are printed as a table and, with --record, written to bench/RESULTS.md's DX section.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.dx: start -->"
SECTION_END = "<!-- bench.dx: end -->"
SERVER_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
CLI_CALLS = (("--help",), ("db", "current"), ("cache", "stats"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_env(clone: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env.pop("VIRTUAL_ENV", None)
    env.update(APP_ENV="development", INSTANCE_PATH=str(clone / "instance"), **extra)
    return env


def clone_of(source: Path, into: Path) -> Path:
    clone = into / "clone"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    return clone


def newest_stamp(clone: Path) -> float | None:
    """When the install finished: the Makefile touches a stamp under .venv at its end."""
    stamps = [p.stat().st_mtime for p in (clone / ".venv").glob(".*stamp*")]
    return max(stamps) if stamps else None


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure_run(clone: Path, *, cold_cache: bool, timeout: float = 600) -> dict[str, float]:
    """`make run` from a fresh clone until /ready is 200, then Ctrl-C."""
    port = free_port()
    env = embedded_env(clone, PORT=str(port), WEB_CONCURRENCY="2", CELERY_CONCURRENCY="1")
    if cold_cache:
        env["UV_CACHE_DIR"] = str(clone.parent / "uv-cache")
    log = (clone.parent / "make-run.log").open("w+")
    start = time.time()
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    web_started: float | None = None
    try:
        while time.time() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"make run exited {proc.returncode}; see {log.name}")
            if web_started is None and "web.1" in Path(log.name).read_text(errors="replace"):
                web_started = time.time()
            if ready(port):
                done = time.time()
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"/ready not 200 within {timeout:.0f}s; see {log.name}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    stamp = newest_stamp(clone)
    return {
        "make run until /ready 200": done - start,
        "  of which install": (stamp - start) if stamp else float("nan"),
        "  /ready after gunicorn started": done - (web_started or done),
    }


def measure_cli(clone: Path, reps: int) -> dict[str, float]:
    env = embedded_env(clone, FLASK_APP="wsgi")
    if not (clone / ".venv/bin/flask").exists():
        subprocess.run(["make", "migrate"], cwd=clone, env=env, check=True, capture_output=True)
    out: dict[str, float] = {}
    for args in CLI_CALLS:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            subprocess.run(
                [str(clone / ".venv/bin/flask"), *args],
                cwd=clone,
                env=env,
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t)
        out[f"flask {' '.join(args)} (median of {reps})"] = statistics.median(times)
    return out


def timed(label: str, command: list[str], clone: Path) -> dict[str, float]:
    t = time.perf_counter()
    subprocess.run(
        command, cwd=clone, env=embedded_env(clone), check=True, stdout=subprocess.DEVNULL
    )
    return {label: time.perf_counter() - t}


def record(
    rows: dict[str, float], before: dict[str, float] | None, args: argparse.Namespace
) -> None:
    load = os.getloadavg()[0]
    command = f".venv/bin/python -m bench.dx --steps {args.steps}" + (
        " --cold-cache" if args.cold_cache else ""
    )
    if args.before is not None:
        command += " --before <checkout of the older commit>"
    if before is None:
        table = ["| step | seconds |", "|---|---|"]
        table += [f"| {k.strip()} | {v:.1f} |" for k, v in rows.items()]
    else:
        table = ["| step | before (s) | after (s) | after / before |", "|---|---|---|---|"]
        for k, v in rows.items():
            old = before.get(k)
            ratio = f"{v / old:.2f}" if old else "n/a"
            shown = f"{old:.1f}" if old is not None else "n/a"
            table.append(f"| {k.strip()} | {shown} | {v:.1f} | {ratio} |")
    lines = [
        SECTION_START,
        f"## Developer experience (issue #14) — {date.today().isoformat()}",
        "",
        "```",
        command,
        "```",
        "",
        f"Fresh clones, embedded default, this 2-core machine (1-min load {load:.1f} at the end)"
        + ("; before and after measured step by step, in turn, in one run." if before else "."),
        "",
        *table,
        SECTION_END,
    ]
    text = RESULTS.read_text()
    if SECTION_START in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + "\n".join(lines) + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    RESULTS.write_text(text)


def plan_for(
    clone: Path, args: argparse.Namespace
) -> list[tuple[str, Callable[[], dict[str, float]]]]:
    return [
        ("run", lambda: measure_run(clone, cold_cache=args.cold_cache)),
        ("cli", lambda: measure_cli(clone, args.reps)),
        ("test-fast", lambda: timed("install-dev (make install)", ["make", "install"], clone)),
        (
            "test-fast",
            lambda: timed("make test-fast", ["make", "test-fast", "PYTEST_ARGS=-q"], clone),
        ),
        ("test", lambda: timed("make test", ["make", "test", "PYTEST_ARGS=-q"], clone)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to clone")
    parser.add_argument(
        "--before", type=Path, default=None, help="an older checkout, measured step by step in turn"
    )
    parser.add_argument("--steps", default="run,cli,test-fast")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--cold-cache", action="store_true", help="uv starts with an empty cache")
    parser.add_argument("--record", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    rows: dict[str, float] = {}
    before: dict[str, float] | None = {} if args.before is not None else None
    with tempfile.TemporaryDirectory(prefix="pb-dx-") as tmp:
        clone = clone_of(args.source, Path(tmp) / "after")
        plans = [("after", plan_for(clone, args), rows)]
        if before is not None:
            old = clone_of(args.before, Path(tmp) / "before")
            plans.insert(0, ("before", plan_for(old, args), before))
        for index in range(len(plans[0][1])):
            for label, plan, into in plans:
                step, run = plan[index]
                if step not in steps:
                    continue
                result = run()
                into.update(result)
                for k, v in result.items():
                    print(f"{label:<7} {k:<45} {v:8.1f} s", flush=True)
    if args.record:
        record(rows, before, args)


if __name__ == "__main__":
    main()
