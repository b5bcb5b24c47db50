"""Load generation for the benchmarks on this 2-core machine: wrk when it is installed (a C
client: one thread, a Lua script picking a random path per request, so the server gets nearly
all the CPU), else a small closed-loop Python client.

The Python client: threads with keep-alive connections (http.client) send GETs as fast as the
server answers; it costs the server CPU that wrk does not, so use wrk for figures you record
(`apt-get install wrk` on Debian). Returns throughput and
latency percentiles. Used by the bench/*.py scripts, which interleave the variants they compare
in the same run.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    # Set when wrk measured the run: its own percentiles (it keeps no per-request list).
    percentiles: dict[float, float] = field(default_factory=dict)
    tool: str = "python"

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if self.percentiles:
            return self.percentiles[p]
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k]


def run(
    port: int,
    paths: Sequence[str] | Callable[[random.Random], str],
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> Result:
    """Hammer 127.0.0.1:`port` for `seconds` with `connections` keep-alive clients."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    count = 0

    def worker(seed: int) -> None:
        nonlocal errors, count
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            path = paths(rng) if callable(paths) else rng.choice(paths)
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            mine.append((time.perf_counter() - started) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors += bad
            count += len(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(count, time.monotonic() - started, latencies, errors)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# BENCH_LOADGEN=python forces the Python client (to compare the two).
WRK = None if os.environ.get("BENCH_LOADGEN") == "python" else shutil.which("wrk")

# wrk's Lua side: a random path from a file per request, the method, headers and body from the
# environment; the summary as one JSON line.
_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
local headers = {}
for line in (os.getenv("WRK_HEADERS") or ""):gmatch("[^\\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  headers[name] = value
end
request = function()
  return wrk.format(method, paths[math.random(#paths)], headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %f, "p99_us": %f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(
    port: int,
    paths: Sequence[str],
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> Result:
    """The same measurement as `run`, by wrk (one thread): far less client CPU."""
    assert WRK, "wrk is not installed"
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "random.lua"
        script.write_text(_WRK_SCRIPT)
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths) + "\n")
        env = {"WRK_PATHS": str(listing), "PATH": "/usr/bin:/bin", "WRK_METHOD": method}
        env["WRK_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
        if body is not None:
            env["WRK_BODY"] = body
        out = subprocess.run(
            [
                WRK,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return Result(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        latencies_ms=[],
        errors=summary["errors"],
        percentiles={50: summary["p50_us"] / 1000, 99: summary["p99_us"] / 1000},
        tool="wrk",
    )


def measure(
    port: int,
    paths: Sequence[str],
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> Result:
    """wrk when installed, else the Python client."""
    if WRK:
        return run_wrk(port, paths, seconds=seconds, connections=connections, headers=headers)
    return run(port, paths, seconds=seconds, connections=connections, headers=headers)
